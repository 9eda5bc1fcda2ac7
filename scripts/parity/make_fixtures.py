#!/usr/bin/env python3
"""Build the tiny LLaVA parity fixture for `tests/model_parity.rs`.

What it writes to `tests/fixtures/tiny-llava/` (about 1 MB in all):

- a tiny random `LlavaForConditionalGeneration` (CLIP ViT 56 px / patch 14 /
  2 layers / hidden 32, Llama 2 layers / hidden 64 / 4 heads / 2 KV heads)
  saved with `save_pretrained` exactly as the Hugging Face hub layout has it
  (`config.json`, `model.safetensors`, `generation_config.json`), plus the
  processor files (`tokenizer.json`, `tokenizer_config.json`,
  `processor_config.json`, `chat_template.jinja`, ...) for a tiny BPE
  tokenizer trained here with the `tokenizers` library;
- `adapter/`: a PEFT LoRA (r 4, alpha 8) on the language model's q, v, o, up
  and down projections, with random non-zero B so it changes the outputs,
  written by PEFT's own `save_pretrained`;
- `reference.safetensors`: inputs and the outputs transformers computes for
  them (pixel values, input ids, attention mask, image features, logits for
  every position without and with the adapter, greedy generations);
- `reference.json`: the prompt strings, the library versions and the
  generated token ids, for humans and for the Rust test.

Weights are drawn with larger scales than the transformers initialisers so
logits are O(1..10) and a 1e-4 absolute tolerance actually tests something.

Run (from the repository root):

    python3 -m venv /tmp/parity-venv
    /tmp/parity-venv/bin/pip install torch transformers peft safetensors tokenizers pillow
    /tmp/parity-venv/bin/python scripts/parity/make_fixtures.py

The output is deterministic for fixed library versions (seeded); the
versions used are recorded in `reference.json`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

SEED = 1234
ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "tiny-llava"

# The LLaVA-1.5 chat prompt, as llava-hf's chat template renders one user
# turn with one image and the generation prompt.
PROMPTS = [
    "Describe the region in the box.",
    "Where is the small red cup? Answer with a box.",
]
RESPONSES = [
    " A red cup [0.12, 0.30, 0.45, 0.81] next to a white plate on the table.",
    " [0.50, 0.25, 0.75, 0.60]",
]

CORPUS_WORDS = (
    "the a an of in on at to with and is are near left right top bottom "
    "red green blue yellow black white small large cup plate table chair "
    "person dog cat car bus bicycle bottle book phone laptop window door "
    "box region image describe where what which answer object objects "
    "next behind front under above between two three four sitting standing "
    "holding wearing shirt hat bag tree sky road building sign light"
).split()


def build_tokenizer():
    """A small Llama-style BPE (metaspace) tokenizer with <image> and <pad>."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    rng = np.random.default_rng(SEED)
    lines = []
    for _ in range(3000):
        n = int(rng.integers(4, 14))
        words = [CORPUS_WORDS[int(i)] for i in rng.integers(0, len(CORPUS_WORDS), n)]
        line = " ".join(words)
        if rng.random() < 0.5:
            nums = ", ".join(f"{x:.2f}" for x in rng.random(4))
            line += f" [{nums}]"
        lines.append(line.capitalize() + rng.choice([".", "?", "!", ":"]))
    lines += ["USER: ASSISTANT: " + p + r for p, r in zip(PROMPTS, RESPONSES)]

    tok = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=True)
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="first", split=True)
    alphabet = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,:;!?[]()<>-'\"\n\u2581")
    trainer = trainers.BpeTrainer(
        vocab_size=360,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=alphabet,
        show_progress=False,
    )
    tok.train_from_iterator(lines, trainer)
    tok.add_special_tokens(
        [
            AddedToken("<image>", normalized=False, special=True),
            AddedToken("<pad>", normalized=False, special=True),
        ]
    )
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    return tok


def make_image(height: int, width: int, phase: float) -> "PIL.Image.Image":
    """A smooth synthetic RGB picture (compresses well, resizes predictably)."""
    from PIL import Image

    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    r = 128 + 100 * np.sin(x / 9.0 + phase)
    g = 128 + 100 * np.cos(y / 7.0 - phase)
    b = 255 * (x + y) / (height + width)
    arr = np.stack([r, g, b], axis=-1).clip(0, 255).astype(np.uint8)
    return Image.fromarray(arr, mode="RGB")


@torch.no_grad()
def reinit(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Redraw every parameter with scales that give O(1) activations."""
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            p.copy_(0.1 * torch.randn(p.shape, generator=gen))
        elif "norm" in name or "layrnorm" in name:
            p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
        elif p.dim() == 1:  # class embedding
            p.copy_(torch.randn(p.shape, generator=gen))
        elif "embed_tokens" in name or "position_embedding" in name:
            p.copy_(torch.randn(p.shape, generator=gen))
        else:
            fan_in = math.prod(p.shape[1:])
            p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(fan_in))


def main() -> None:
    import peft
    import safetensors
    import tokenizers
    import transformers
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import save_file
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )

    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED)

    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)

    # --- tokenizer and processor -------------------------------------------
    raw_tok = build_tokenizer()
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=raw_tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        padding_side="right",
    )
    image_size, patch_size = 56, 14
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
    )
    chat_template = (
        "{% for message in messages %}{% if message['role'] != 'system' %}"
        "{{ message['role'].upper() + ': '}}{% endif %}"
        "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
        "{{ '<image>\n' }}{% endfor %}"
        "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
        "{{ content['text'] + ' '}}{% endfor %}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=hf_tok,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        image_token="<image>",
        num_additional_image_tokens=1,
        chat_template=chat_template,
    )

    vocab = len(hf_tok)
    image_token_id = hf_tok.convert_tokens_to_ids("<image>")
    pad_token_id = hf_tok.convert_tokens_to_ids("<pad>")

    # --- model --------------------------------------------------------------
    vision_config = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=32,
        hidden_act="quick_gelu",
    )
    text_config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=vocab,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        max_position_embeddings=256,
        bos_token_id=hf_tok.bos_token_id,
        eos_token_id=hf_tok.eos_token_id,
        pad_token_id=pad_token_id,
    )
    config = LlavaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_index=image_token_id,
        projector_hidden_act="gelu",
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        image_seq_length=(image_size // patch_size) ** 2,
        pad_token_id=pad_token_id,
    )
    model = LlavaForConditionalGeneration(config)
    reinit(model, gen)
    model.eval()
    model.generation_config.pad_token_id = pad_token_id
    model.generation_config.eos_token_id = hf_tok.eos_token_id
    model.generation_config.bos_token_id = hf_tok.bos_token_id
    model.save_pretrained(OUT)
    processor.save_pretrained(OUT)

    # --- inputs ---------------------------------------------------------------
    images = [make_image(64, 80, 0.3), make_image(72, 60, 1.7)]
    images[0].save(OUT / "image0.png")
    prompts = [
        processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": p}]}],
            add_generation_prompt=True,
        )
        for p in PROMPTS
    ]
    texts = [p + r for p, r in zip(prompts, RESPONSES)]
    batch = processor(images=images, text=texts, return_tensors="pt", padding=True)
    input_ids = batch["input_ids"]
    attention_mask = batch["attention_mask"]
    pixel_values = batch["pixel_values"]
    prompt_ids = processor(images=images[:1], text=prompts[:1], return_tensors="pt")["input_ids"]

    with torch.no_grad():
        image_features = model.model.get_image_features(
            pixel_values=pixel_values,
            vision_feature_layer=config.vision_feature_layer,
            vision_feature_select_strategy=config.vision_feature_select_strategy,
        ).pooler_output
        image_features = torch.stack(list(image_features))
        logits = model(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values).logits
        greedy = model.generate(
            input_ids=prompt_ids,
            pixel_values=pixel_values[:1],
            attention_mask=torch.ones_like(prompt_ids),
            max_new_tokens=12,
            do_sample=False,
        )[0, prompt_ids.shape[1]:]

    # --- PEFT LoRA adapter --------------------------------------------------
    lora_config = LoraConfig(
        r=4,
        lora_alpha=8,
        lora_dropout=0.0,
        target_modules=r".*language_model.*\.(q_proj|v_proj|o_proj|up_proj|down_proj)",
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, lora_config)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
    peft_model.eval()
    peft_model.save_pretrained(OUT / "adapter")
    readme = OUT / "adapter" / "README.md"
    if readme.exists():
        readme.unlink()
    with torch.no_grad():
        lora_logits = peft_model(
            input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values
        ).logits
        lora_greedy = peft_model.generate(
            input_ids=prompt_ids,
            pixel_values=pixel_values[:1],
            attention_mask=torch.ones_like(prompt_ids),
            max_new_tokens=12,
            do_sample=False,
        )[0, prompt_ids.shape[1]:]

    # --- references -----------------------------------------------------------
    save_file(
        {
            "pixel_values": pixel_values.contiguous().float(),
            "input_ids": input_ids.to(torch.int64).contiguous(),
            "attention_mask": attention_mask.to(torch.int64).contiguous(),
            "prompt_ids": prompt_ids.to(torch.int64).contiguous(),
            "image_features": image_features.contiguous().float(),
            "logits": logits.contiguous().float(),
            "lora_logits": lora_logits.contiguous().float(),
        },
        OUT / "reference.safetensors",
    )
    meta = {
        "note": "Written by scripts/parity/make_fixtures.py; do not edit by hand.",
        "seed": SEED,
        "versions": {
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
            "tokenizers": tokenizers.__version__,
            "safetensors": safetensors.__version__,
        },
        "user_prompts": PROMPTS,
        "responses": RESPONSES,
        "chat_prompts": prompts,
        "texts": texts,
        "image_token_id": image_token_id,
        "pad_token_id": pad_token_id,
        "eos_token_id": hf_tok.eos_token_id,
        "greedy_tokens": greedy.tolist(),
        "lora_greedy_tokens": lora_greedy.tolist(),
        "max_abs_logit": float(logits.abs().max()),
        "max_abs_lora_effect": float((lora_logits - logits).abs().max()),
    }
    (OUT / "reference.json").write_text(json.dumps(meta, indent=2) + "\n")

    total = sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file())
    print(f"wrote {OUT} ({total / 1e6:.2f} MB)")
    for f in sorted(OUT.rglob("*")):
        if f.is_file():
            print(f"  {f.relative_to(OUT)}  {f.stat().st_size} bytes")
    print(json.dumps(meta, indent=2))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
