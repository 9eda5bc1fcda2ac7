#!/usr/bin/env python3
"""The peer of `spr bench score`: the same semantic score with transformers'
`CLIPModel` on the same checkpoint, regions and candidates, timed the same
way (every candidate scored; model loading not counted), and checked
against the project's `scores.jsonl`.

    python scripts/bench/score_transformers.py [PROJECT] [--threads 2]

For each region (as `spr score`): the crop (region ×1.5, clamped) padded to
a square with CLIP's mean colour → image embedding; the whole image padded
to a square → the last block's class-token attention restricted to the
patches whose centres lie in the region → region embedding; each
candidate's text with its Ferret boxes stripped → text embedding (texts
longer than the context split into pieces that fit, embeddings averaged).
S_sem = ½·(cos crop + cos local). Prints one JSON line: candidates/s, peak
RSS, and the largest difference from `scores.jsonl`'s semantic scores.
Needs torch, transformers, pillow, tokenizers; nothing is downloaded.
"""
import argparse
import json
import math
import re
import resource
import time
import tomllib
from pathlib import Path

import torch
from PIL import Image
from transformers import CLIPImageProcessor, CLIPModel, PreTrainedTokenizerFast

ROOT = Path(__file__).resolve().parents[2]
BOX = re.compile(r"\s*\[\d+, \d+, \d+, \d+\]")


def crop_box(crop, width, height):
    x1 = min(max(math.floor(crop[0]), 0), width - 1)
    y1 = min(max(math.floor(crop[1]), 0), height - 1)
    x2 = min(max(math.ceil(crop[2]), x1 + 1), width)
    y2 = min(max(math.ceil(crop[3]), y1 + 1), height)
    return x1, y1, x2, y2


def pad_square(img, fill):
    side = max(img.width, img.height)
    out = Image.new("RGB", (side, side), fill)
    out.paste(img, ((side - img.width) // 2, (side - img.height) // 2))
    return out


def local_embed(model, pixel_values, allowed):
    vm = model.vision_model
    h = vm.pre_layrnorm(vm.embeddings(pixel_values))
    for layer in vm.encoder.layers[:-1]:
        h = layer(h, None)
    last = vm.encoder.layers[-1]
    attn = last.self_attn
    x = last.layer_norm1(h)
    b, t, d = x.shape
    nh = attn.num_heads
    hd = d // nh
    q = (attn.q_proj(x[:, :1]) * attn.scale).view(1, 1, nh, hd).transpose(1, 2)
    k = attn.k_proj(x).view(1, t, nh, hd).transpose(1, 2)
    v = attn.v_proj(x).view(1, t, nh, hd).transpose(1, 2)
    scores = (q @ k.transpose(-1, -2)).masked_fill(~allowed.view(1, 1, 1, t), float("-inf"))
    o = (scores.softmax(-1) @ v).transpose(1, 2).reshape(1, 1, d)
    cls = h[:, :1] + attn.out_proj(o)
    cls = cls + last.mlp(last.layer_norm2(cls))
    e = model.visual_projection(vm.post_layernorm(cls[:, 0]))
    return e / e.norm(dim=-1, keepdim=True)


def pieces(tok, text, max_len):
    ids = tok(text)["input_ids"]
    if len(ids) <= max_len:
        return [ids]
    out, cur = [], ""
    for w in text.split():
        nxt = f"{cur} {w}".strip()
        if cur and len(tok(nxt)["input_ids"]) > max_len:
            out.append(tok(cur)["input_ids"])
            cur = w
        else:
            cur = nxt
    if cur:
        out.append(tok(cur)["input_ids"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("project", nargs="?", default=str(ROOT / "assets/demo"))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    project = Path(args.project)
    cfg = tomllib.loads((project / "spr.toml").read_text())
    model_dir = project / cfg["scoring"]["semantic_model"]
    images = project / cfg["dataset"]["image_root"]
    model = CLIPModel.from_pretrained(model_dir, dtype=torch.float32).eval()
    tok = PreTrainedTokenizerFast(tokenizer_file=str(model_dir / "tokenizer.json"))
    proc = CLIPImageProcessor.from_pretrained(model_dir)
    fill = tuple(round(m * 255) for m in proc.image_mean)
    max_len = model.config.text_config.max_position_embeddings
    eos = model.config.text_config.eos_token_id
    vc = model.config.vision_config
    g, p, side = vc.image_size // vc.patch_size, vc.patch_size, vc.image_size
    regions = [json.loads(l) for l in (project / "regions.jsonl").read_text().splitlines() if l.strip()]
    cands = [json.loads(l) for l in (project / "candidates.jsonl").read_text().splitlines() if l.strip()]
    by_query = {}
    for c in cands:
        by_query.setdefault(c["query_id"], []).append(c)
    ours = {}
    scores_file = project / "scores.jsonl"
    if scores_file.exists():
        for l in scores_file.read_text().splitlines():
            if l.strip():
                s = json.loads(l)
                ours[s["candidate_id"]] = s.get("semantic")
    started = time.perf_counter()
    worst, n = 0.0, 0
    with torch.inference_mode():
        for r in regions:
            group = by_query.get(r["id"], [])
            if not group:
                continue
            img = Image.open(images / r["file_name"]).convert("RGB")
            crop = pad_square(img.crop(crop_box(r["crop"], img.width, img.height)), fill)
            px = proc(images=crop, return_tensors="pt")["pixel_values"]
            crop_e = model.visual_projection(model.vision_model(pixel_values=px).pooler_output)
            crop_e = crop_e / crop_e.norm(dim=-1, keepdim=True)
            whole = proc(images=pad_square(img, fill), return_tensors="pt")["pixel_values"]
            s_side = max(img.width, img.height)
            scale = side / s_side
            ox, oy = (s_side - img.width) / 2, (s_side - img.height) / 2
            x1, y1, x2, y2 = [(v + o) * scale for v, o in zip(r["region"], (ox, oy, ox, oy))]
            mask = [False] * (g * g)
            for i in range(g):
                for j in range(g):
                    cx, cy = (j + 0.5) * p, (i + 0.5) * p
                    mask[i * g + j] = x1 <= cx <= x2 and y1 <= cy <= y2
            if not any(mask):
                cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
                mask[min(int(cy / p), g - 1) * g + min(int(cx / p), g - 1)] = True
            local_e = local_embed(model, whole, torch.tensor([True] + mask))
            rows, counts = [], []
            for c in group:
                ps = pieces(tok, BOX.sub("", c["text"]), max_len)
                counts.append(len(ps))
                rows.extend(ps)
            t = max(len(x) for x in rows)
            ids = torch.tensor([x + [x[-1]] * (t - len(x)) for x in rows])
            te = model.text_projection(model.text_model(input_ids=ids).pooler_output)
            te = te / te.norm(dim=-1, keepdim=True)
            at = 0
            for c, k in zip(group, counts):
                e = te[at : at + k].mean(0, keepdim=True)
                e = e / e.norm(dim=-1, keepdim=True)
                at += k
                sem = 0.5 * (float(e @ crop_e.T) + float(e @ local_e.T))
                n += 1
                if ours.get(c["id"]) is not None:
                    worst = max(worst, abs(sem - ours[c["id"]]))
    seconds = time.perf_counter() - started
    import transformers

    print(
        json.dumps(
            {
                "side": "transformers",
                "transformers": transformers.__version__,
                "torch": torch.__version__,
                "candidates": n,
                "seconds": round(seconds, 3),
                "candidates_per_s": round(n / seconds, 1),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                "max_abs_diff_vs_scores_jsonl": worst,
                "eos_token_id": eos,
            }
        )
    )


if __name__ == "__main__":
    main()
