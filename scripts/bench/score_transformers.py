#!/usr/bin/env python3
"""The peer of `spr bench score`: the same semantic score with transformers'
`CLIPModel`, and the same detector queries with `Owlv2ForObjectDetection`,
on the same checkpoints, regions and candidates, timed the same way (every
candidate scored; model loading not counted), and checked against the
project's `scores.jsonl`.

    python scripts/bench/score_transformers.py [PROJECT] [--threads 2]

For each region (as `spr score`): the crop (region ×1.5, clamped) padded to
a square with CLIP's mean colour → image embedding; the whole image padded
to a square → the last block's class-token attention restricted to the
patches whose centres lie in the region → region embedding; each
candidate's text with its Ferret boxes stripped → text embedding (texts
longer than the context split into pieces that fit, embeddings averaged).
S_sem = ½·(cos crop + cos local).

With `[scoring] detector_model` set (as `spr score`): the crop padded to a
square at its bottom and right with grey 0.5 (OWLv2's padding), resized to
the model's input, normalised; the distinct phrases of the region's
candidates (lower-cased; each phrase is the words before a box, from the
last determiner, as the workbench's Ferret parser takes them) as text
queries; sigmoid of the class logits ≥ the threshold, NMS at IoU 0.5, at
most 8 boxes per phrase.

Prints one JSON line: candidates/s, peak RSS, the largest difference from
`scores.jsonl`'s semantic scores and how many detector boxes differ in
count per candidate.
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
from transformers import CLIPImageProcessor, CLIPModel, Owlv2ForObjectDetection, PreTrainedTokenizerFast

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


DETERMINERS = set(
    "a an the this that these those some any another each every several many few both one two "
    "three four five six seven eight nine ten my your his her its our their".split()
)
FUNCTION_WORDS = set(
    "and or but nor then while whereas also with without of on in at to from by for into onto under "
    "over above below behind beside beneath near between among inside outside around is are was were "
    "be there here shows show showing contains has have see".split()
)


def phrases(text):
    """The phrase before each Ferret box (the workbench's rule, 8 words at most)."""
    out, last = [], 0
    for m in re.finditer(r"\[\d+, \d+, \d+, \d+\]", text):
        before = text[last : m.start()]
        last = m.end()
        cut = max(before.rfind(ch) for ch in ".,;:!?\n")
        words = before[cut + 1 :].split()[-8:]
        if not words:
            continue
        det = [i for i, w in enumerate(words) if w.lower() in DETERMINERS or w.isdigit()]
        if det:
            k = det[-1]
        else:
            k = 0
            while k + 1 < len(words) and words[k].lower() in FUNCTION_WORDS:
                k += 1
        out.append(" ".join(words[k:]))
    return out


def nms(dets, limit):
    kept = []
    for score, box in sorted(dets, key=lambda d: -d[0]):
        if all(iou(box, k[1]) <= limit for k in kept):
            kept.append((score, box))
    return kept


def iou(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


class Detector:
    """OWLv2 as `spr score` runs it on a region's crop."""

    def __init__(self, model_dir, threshold):
        self.model = Owlv2ForObjectDetection.from_pretrained(model_dir, dtype=torch.float32).eval()
        self.tok = PreTrainedTokenizerFast(tokenizer_file=str(model_dir / "tokenizer.json"))
        pre = json.loads((model_dir / "preprocessor_config.json").read_text())
        self.mean = torch.tensor(pre.get("image_mean", [0.48145466, 0.4578275, 0.40821073])).view(3, 1, 1)
        self.std = torch.tensor(pre.get("image_std", [0.26862954, 0.26130258, 0.27577711])).view(3, 1, 1)
        self.side = self.model.config.vision_config.image_size
        self.max_len = self.model.config.text_config.max_position_embeddings
        self.threshold = threshold

    def detect(self, img, crop, texts):
        x1, y1, x2, y2 = crop_box(crop, img.width, img.height)
        region = img.crop((x1, y1, x2, y2))
        s = max(region.width, region.height)
        square = Image.new("RGB", (s, s), (128, 128, 128))
        square.paste(region, (0, 0))
        square = square.resize((self.side, self.side), Image.BICUBIC)
        px = torch.tensor(list(square.getdata()), dtype=torch.float32).view(self.side, self.side, 3)
        px = ((px.permute(2, 0, 1) / 255.0 - self.mean) / self.std).unsqueeze(0)
        rows = []
        for t in texts:
            ids = self.tok(t)["input_ids"]
            if len(ids) > self.max_len:
                ids = ids[: self.max_len - 1] + ids[-1:]
            rows.append(ids)
        t = max(len(r) for r in rows)
        ids = torch.tensor([r + [r[-1]] * (t - len(r)) for r in rows])
        out = self.model(input_ids=ids, pixel_values=px)
        probs = out.logits[0].sigmoid()  # patches × queries
        boxes = out.pred_boxes[0]
        found = []
        for q in range(len(texts)):
            dets = []
            for p in (probs[:, q] >= self.threshold).nonzero().flatten().tolist():
                cx, cy, w, h = boxes[p].tolist()
                b = ((cx - w / 2) * s + x1, (cy - h / 2) * s + y1, (cx + w / 2) * s + x1, (cy + h / 2) * s + y1)
                if b[2] > b[0] and b[3] > b[1]:
                    dets.append((float(probs[p, q]), b))
            found.append(nms(dets, 0.5)[:8])
        return found


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
    ours, our_boxes = {}, {}
    scores_file = project / "scores.jsonl"
    if scores_file.exists():
        for l in scores_file.read_text().splitlines():
            if l.strip():
                s = json.loads(l)
                ours[s["candidate_id"]] = s.get("semantic")
                our_boxes[s["candidate_id"]] = len(s.get("detections", []))
    det_dir = cfg["scoring"].get("detector_model")
    detector = None
    if det_dir:
        detector = Detector(project / det_dir, cfg["scoring"].get("detector_threshold", 0.3))
    box_mismatch, det_boxes = 0, 0
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
            if detector is not None:
                cand_phrases = [phrases(c["text"]) for c in group]
                distinct = list(dict.fromkeys(p.strip().lower() for ps in cand_phrases for p in ps if p.strip()))
                found = dict(zip(distinct, detector.detect(img, r["crop"], distinct))) if distinct else {}
                for c, ps in zip(group, cand_phrases):
                    k = sum(len(found.get(p.strip().lower(), [])) for p in ps)
                    det_boxes += k
                    if c["id"] in our_boxes and our_boxes[c["id"]] != k:
                        box_mismatch += 1
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
                "detector": bool(detector),
                "detector_boxes": det_boxes,
                "candidates_whose_box_count_differs_from_scores_jsonl": box_mismatch,
                "eos_token_id": eos,
            }
        )
    )


if __name__ == "__main__":
    main()
