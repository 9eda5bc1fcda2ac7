#!/usr/bin/env python3
"""The peer of `spr bench generate`: transformers' `generate` on the same
llava-hf checkpoint and images, with the same settings (greedy, exactly
N new tokens per image: EOS is ignored so both sides decode the same
number of tokens), at batch 1 and at a larger batch.

    python scripts/bench/generate_transformers.py MODEL_DIR IMAGE_DIR \
        [--images 16] [--new-tokens 64] [--batches 1,8] [--threads 2]

Prints one JSON line per batch size: new tokens/s (new tokens / wall time
of the generate calls, preprocessing included as `spr bench generate`
includes it) and the peak RSS of the process so far (ru_maxrss).
Needs torch, transformers and pillow; nothing is downloaded.
"""
import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch
from PIL import Image
from transformers import AutoProcessor, LlavaForConditionalGeneration

PROMPT = "Describe this image region in detail. Give the bounding box of every object you mention."


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("images")
    ap.add_argument("--images", dest="n_images", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    files = sorted(p for p in Path(args.images).iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    files = files[: args.n_images]
    if not files:
        sys.exit(f"{args.images}: no images")
    processor = AutoProcessor.from_pretrained(args.model)
    processor.tokenizer.padding_side = "left"
    model = LlavaForConditionalGeneration.from_pretrained(args.model, dtype=torch.float32).eval()
    conv = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}]
    text = processor.apply_chat_template(conv, add_generation_prompt=True)
    images = [Image.open(f).convert("RGB") for f in files]
    for batch in [int(b) for b in args.batches.split(",")]:
        new_tokens = 0
        started = time.perf_counter()
        for i in range(0, len(images), batch):
            chunk = images[i : i + batch]
            inputs = processor(images=chunk, text=[text] * len(chunk), return_tensors="pt", padding=True)
            with torch.inference_mode():
                out = model.generate(
                    **inputs,
                    max_new_tokens=args.new_tokens,
                    min_new_tokens=args.new_tokens,
                    do_sample=False,
                )
            new_tokens += (out.shape[1] - inputs["input_ids"].shape[1]) * out.shape[0]
        seconds = time.perf_counter() - started
        print(
            json.dumps(
                {
                    "side": "transformers",
                    "transformers": __import__("transformers").__version__,
                    "torch": torch.__version__,
                    "batch": batch,
                    "images": len(images),
                    "new_tokens": new_tokens,
                    "seconds": round(seconds, 3),
                    "new_tokens_per_s": round(new_tokens / seconds, 1),
                    "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
