#!/usr/bin/env python3
"""Build the tiny CLIP parity fixture for `tests/clip_parity.rs`.

Writes `tests/fixtures/tiny-clip/` (about 300 kB):

- a tiny random `CLIPModel` (text: vocab 96, hidden 32, 2 layers, 4 heads,
  16 positions, EOS id 95; vision: 56 px, patch 14 (16 patches), hidden 32,
  2 layers, 4 heads; projection 24), saved by `save_pretrained`
  (`config.json`, `model.safetensors`);
- `reference.safetensors`: inputs (`pixel_values` [2,3,56,56], `input_ids`
  [3,10] with EOS and padding after it) and what transformers computes
  (`text_embeds`, `image_embeds` — both L2-normalised, as `CLIPModel`
  returns them —, `logits_per_image`, `image_pooled` — the vision pooled
  output before projection —) and `local_embeds` [2,3,24]: for each image
  and each of three patch masks, the region embedding of the masked last
  block (DESIGN §3 S_local), computed here in plain PyTorch from the
  model's own modules: the class token's attention row in the last layer
  restricted to itself and the masked-in patches (other rows untouched),
  then the layer's MLP, `post_layernorm` and `visual_projection`. Mask 2
  covers every patch and must equal the plain image embedding.
- `reference.json`: the masks and the library versions.

Weights are drawn with larger scales than transformers' initialisers so
the outputs are O(1) and a 1e-4 tolerance tests something.

Run from the repository root (torch + transformers + safetensors):

    python scripts/parity/make_clip_fixtures.py
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import CLIPConfig, CLIPModel

SEED = 4321
ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "tiny-clip"

# Patch masks over the 4×4 grid (row-major), one per region.
MASKS = [
    [1, 1, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],  # top-left 2×2
    [0, 0, 0, 0, 0, 1, 1, 1, 0, 1, 1, 1, 0, 0, 0, 0],  # middle-right 2×3
    [1] * 16,  # everything: the plain embedding
]


def local_embed(model: CLIPModel, pixel_values: torch.Tensor, mask: list[int]) -> torch.Tensor:
    """S_local's region embedding, from the model's own modules."""
    vm = model.vision_model
    with torch.no_grad():
        h = vm.pre_layrnorm(vm.embeddings(pixel_values))
        for layer in vm.encoder.layers[:-1]:
            h = layer(h, None)
        last = vm.encoder.layers[-1]
        x = last.layer_norm1(h)
        attn = last.self_attn
        b, t, d = x.shape
        nh = attn.num_heads
        hd = d // nh
        q = attn.q_proj(x[:, :1]) * attn.scale
        k = attn.k_proj(x)
        v = attn.v_proj(x)
        q = q.view(b, 1, nh, hd).transpose(1, 2)
        k = k.view(b, t, nh, hd).transpose(1, 2)
        v = v.view(b, t, nh, hd).transpose(1, 2)
        scores = q @ k.transpose(-1, -2)  # [b, nh, 1, t]
        allowed = torch.tensor([1] + mask, dtype=torch.bool)
        scores = scores.masked_fill(~allowed.view(1, 1, 1, t), float("-inf"))
        probs = scores.softmax(-1)
        o = (probs @ v).transpose(1, 2).reshape(b, 1, d)
        cls = h[:, :1] + attn.out_proj(o)
        cls = cls + last.mlp(last.layer_norm2(cls))
        pooled = vm.post_layernorm(cls[:, 0])
        emb = model.visual_projection(pooled)
        return emb / emb.norm(dim=-1, keepdim=True)


def main() -> None:
    torch.manual_seed(SEED)
    cfg = CLIPConfig(
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
            image_size=56,
            patch_size=14,
            hidden_act="quick_gelu",
        ),
        projection_dim=24,
    )
    model = CLIPModel(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("logit_scale"):
                continue
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif name.endswith("bias") or "norm" in name:
                p.copy_(0.1 * torch.randn_like(p))
            else:
                p.copy_(0.3 * torch.randn_like(p))
    OUT.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(OUT)

    pixel_values = torch.randn(2, 3, 56, 56)
    input_ids = torch.tensor(
        [
            [94, 5, 17, 33, 95, 0, 0, 0, 0, 0],
            [94, 60, 61, 62, 63, 64, 65, 66, 67, 95],
            [94, 12, 95, 0, 0, 0, 0, 0, 0, 0],
        ]
    )
    attention_mask = (torch.arange(10)[None, :] <= (input_ids == 95).float().argmax(-1)[:, None]).long()
    with torch.no_grad():
        out = model(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask)
        pooled = model.vision_model(pixel_values=pixel_values).pooler_output
        local = torch.stack([local_embed(model, pixel_values, m) for m in MASKS], dim=1)
    tensors = {
        "pixel_values": pixel_values.contiguous(),
        "input_ids": input_ids.to(torch.int64).contiguous(),
        "text_embeds": out.text_embeds.contiguous(),
        "image_embeds": out.image_embeds.contiguous(),
        "logits_per_image": out.logits_per_image.contiguous(),
        "image_pooled": pooled.contiguous(),
        "local_embeds": local.contiguous(),
    }
    save_file(tensors, str(OUT / "reference.safetensors"))
    import transformers

    (OUT / "reference.json").write_text(
        json.dumps(
            {
                "masks": MASKS,
                "seed": SEED,
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "full_mask_vs_plain_max_abs": float((local[:, 2] - out.image_embeds).abs().max()),
            },
            indent=1,
        )
        + "\n"
    )
    print(f"wrote {OUT}; full mask vs plain: {float((local[:, 2] - out.image_embeds).abs().max()):.2e}")


if __name__ == "__main__":
    main()
