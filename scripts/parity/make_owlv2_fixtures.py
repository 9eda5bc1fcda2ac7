#!/usr/bin/env python3
"""Build the tiny OWLv2 parity fixture for `tests/owlv2_parity.rs`.

Writes `tests/fixtures/tiny-owlv2/` (about 250 kB):

- a tiny random `Owlv2ForObjectDetection` (text: vocab 96, hidden 32,
  2 layers, 16 positions; vision: 64 px, patch 16 (4×4 patches), hidden 32,
  2 layers; projection 32 = the text width, as the class head needs), saved
  by `save_pretrained`;
- `reference.safetensors`: `pixel_values` [1,3,64,64], `input_ids` [3,6]
  (three queries, end-of-text = the highest id, padding 0 after it) and
  what transformers computes: `logits` [1,16,3], `pred_boxes` [1,16,4]
  (cx, cy, w, h in 0–1 of the input square), `objectness_logits` [1,16],
  `image_embeds` (the feature map [1,4,4,32]) and `text_embeds` [1,3,32].

Weights are drawn with larger scales than the initialisers so outputs are
O(1) and a 1e-4 tolerance tests something. Run from the repository root:

    python scripts/parity/make_owlv2_fixtures.py
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import Owlv2Config, Owlv2ForObjectDetection

SEED = 2468
ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "tiny-owlv2"


def main() -> None:
    torch.manual_seed(SEED)
    cfg = Owlv2Config(
        text_config=dict(
            vocab_size=96,
            hidden_size=32,
            intermediate_size=48,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=16,
            hidden_act="quick_gelu",
            bos_token_id=94,
            eos_token_id=95,
            pad_token_id=0,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=48,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=64,
            patch_size=16,
            hidden_act="quick_gelu",
        ),
        projection_dim=32,
    )
    model = Owlv2ForObjectDetection(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("logit_scale") and p.ndim == 0:
                continue
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif name.endswith("bias") or "norm" in name:
                p.copy_(0.1 * torch.randn_like(p))
            else:
                p.copy_(0.3 * torch.randn_like(p))
    OUT.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(OUT)
    pixel_values = torch.randn(1, 3, 64, 64)
    input_ids = torch.tensor(
        [
            [94, 5, 17, 95, 0, 0],
            [94, 60, 61, 62, 63, 95],
            [94, 12, 95, 0, 0, 0],
        ]
    )
    attention_mask = (input_ids > 0).long()
    attention_mask[:, 0] = 1
    with torch.no_grad():
        out = model(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask)
    tensors = {
        "pixel_values": pixel_values.contiguous(),
        "input_ids": input_ids.to(torch.int64).contiguous(),
        "logits": out.logits.contiguous(),
        "pred_boxes": out.pred_boxes.contiguous(),
        "objectness_logits": out.objectness_logits.contiguous(),
        "image_embeds": out.image_embeds.contiguous(),
        "text_embeds": out.text_embeds.contiguous(),
    }
    save_file(tensors, str(OUT / "reference.safetensors"))
    import transformers

    (OUT / "reference.json").write_text(
        json.dumps({"seed": SEED, "torch": torch.__version__, "transformers": transformers.__version__}, indent=1)
        + "\n"
    )
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
