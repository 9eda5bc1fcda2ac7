#!/usr/bin/env python3
"""Shows that the tiny demo model is a complete llava-hf folder: transformers
loads it with AutoProcessor + LlavaForConditionalGeneration (as it loads
llava-hf/llava-1.5-7b-hf) and generates a grounded description of a demo
region crop.

    python scripts/tiny_model_transformers.py [MODEL_DIR] [PROJECT_DIR] [--regions 3] [--json OUT]

Prints, per region, transformers' greedy answer to the project's export
prompt on the region's crop (the region x1.5, as `spr generate` shows it).
With --json the answers are written to a file `spr` can be compared with.
Needs torch, transformers and pillow; nothing is downloaded.
"""
import argparse
import json
import math
from pathlib import Path

import torch
from PIL import Image
from transformers import AutoProcessor, LlavaForConditionalGeneration

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "Describe this image region in detail. Give the bounding box of every object you mention."


def crop_box(crop, width, height):
    # As spr's crop_rgb: floor the start, ceil the end, inside the image.
    x1 = min(max(math.floor(crop[0]), 0), width - 1)
    y1 = min(max(math.floor(crop[1]), 0), height - 1)
    x2 = min(max(math.ceil(crop[2]), x1 + 1), width)
    y2 = min(max(math.ceil(crop[3]), y1 + 1), height)
    return x1, y1, x2, y2


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", nargs="?", default=str(ROOT / "assets/tiny-model"))
    ap.add_argument("project", nargs="?", default=str(ROOT / "assets/demo"))
    ap.add_argument("--regions", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=160)
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.manual_seed(0)
    processor = AutoProcessor.from_pretrained(args.model)
    model = LlavaForConditionalGeneration.from_pretrained(args.model, dtype=torch.float32).eval()
    project = Path(args.project)
    regions = [json.loads(l) for l in (project / "regions.jsonl").read_text().splitlines() if l.strip()]
    conv = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}]
    text = processor.apply_chat_template(conv, add_generation_prompt=True)
    print(f"chat prompt: {text!r}")
    out = []
    for r in regions[: args.regions]:
        image = Image.open(project / "images" / r["file_name"]).convert("RGB")
        crop = image.crop(crop_box(r["crop"], image.width, image.height))
        inputs = processor(images=crop, text=text, return_tensors="pt")
        with torch.inference_mode():
            ids = model.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False)
        new = ids[0, inputs["input_ids"].shape[1]:]
        answer = processor.decode(new, skip_special_tokens=True).strip()
        print(f"{r['id']}: {answer}")
        out.append({"query_id": r["id"], "text": answer, "tokens": new.tolist()})
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
