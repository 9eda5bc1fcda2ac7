#!/usr/bin/env python3
"""A LLaVA-1.5-7B-shaped checkpoint with random weights, built on the GPU in
bf16 (nothing downloaded), in the hub layout `spr` and transformers load.

    python3 make_llava_7b.py OUT --trl-bench .gpu/trl [--shape 7b|tiny] [--device cuda]

Shapes are llava-hf/llava-1.5-7b-hf's (CLIP ViT-L/14-336: 24 layers, width
1024, 576 image tokens; Llama: 32 layers, width 4096, MLP 11008, 32 heads)
except the vocabulary: the shared TRL benchmark's tokenizer and its 4,096
rows (the real model has 32,064), so tokenizer, processor and chat template
are the benchmark's, built by its own functions. `--shape tiny` keeps the
benchmark's tiny sizes (for trying the plumbing on a CPU).
"""
import argparse
import json
import sys
from pathlib import Path

import torch

SEVEN_B = {
    "vision": {"image_size": 336, "patch_size": 14, "hidden_size": 1024, "intermediate_size": 4096,
               "num_hidden_layers": 24, "num_attention_heads": 16, "projection_dim": 768},
    "text": {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
             "num_attention_heads": 32, "num_key_value_heads": 32, "max_position_embeddings": 4096},
    "image_processor": {"shortest_edge": 336, "crop_size": 336},
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--trl-bench", required=True, help="folder with make_tiny_llava.py and tiny_config.json")
    ap.add_argument("--shape", choices=["7b", "tiny"], default="7b")
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    sys.path.insert(0, args.trl_bench)
    import make_tiny_llava as tiny  # the shared benchmark's builders

    cfg = json.loads((Path(args.trl_bench) / "tiny_config.json").read_text())
    if args.shape == "7b":
        for part, values in SEVEN_B.items():
            cfg[part].update(values)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = tiny.build_tokenizer(cfg)
    processor = tiny.build_processor(cfg, tokenizer)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device(args.device):
        model = tiny.build_model(cfg, tokenizer).to(torch.bfloat16)
    n = sum(p.numel() for p in model.parameters())
    model.save_pretrained(out, max_shard_size="1000GB")
    del model
    renamed = tiny.rewrite_to_hub_layout(out)
    processor.save_pretrained(out)
    (out / "shape.json").write_text(json.dumps({"shape": args.shape, "parameters": n, **cfg}, indent=2) + "\n")
    print(json.dumps({"parameters": n, "renamed_tensors": renamed, "out": str(out)}))


if __name__ == "__main__":
    main()
