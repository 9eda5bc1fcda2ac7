#!/usr/bin/env python3
"""Check that transformers and PEFT load what the Rust side writes.

`cargo test --test model_parity -- --ignored write_interop` (with
`SPR_INTEROP_DIR` set) writes a random tiny LLaVA with
`spr_workbench::model::llava::save_model`, a LoRA adapter with
`Llava::save_adapter`, and the logits candle computed. This script loads the
model with `LlavaForConditionalGeneration.from_pretrained` and the adapter with
`PeftModel.from_pretrained`, and compares logits (max abs diff < 1e-4).

    python scripts/parity/check_interop.py /tmp/interop
"""

import sys

import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import LlavaForConditionalGeneration

TOL = 1e-4


def main(folder: str) -> int:
    ref = load_file(f"{folder}/interop.safetensors")
    model = LlavaForConditionalGeneration.from_pretrained(folder).eval()
    with torch.no_grad():
        base = model(input_ids=ref["input_ids"], pixel_values=ref["pixel_values"]).logits
    peft_model = PeftModel.from_pretrained(model, f"{folder}/adapter").eval()
    with torch.no_grad():
        lora = peft_model(input_ids=ref["input_ids"], pixel_values=ref["pixel_values"]).logits
    d_base = (base - ref["base_logits"]).abs().max().item()
    d_lora = (lora - ref["lora_logits"]).abs().max().item()
    effect = (ref["lora_logits"] - ref["base_logits"]).abs().max().item()
    print(f"base logits: max abs diff {d_base:.2e} (max |logit| {ref['base_logits'].abs().max().item():.2f})")
    print(f"LoRA logits: max abs diff {d_lora:.2e} (adapter effect {effect:.2f})")
    ok = d_base < TOL and d_lora < TOL and effect > 1e-2
    print("OK" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "/tmp/interop"))
