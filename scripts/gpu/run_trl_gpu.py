#!/usr/bin/env python3
"""TRL's DPOTrainer + PEFT LoRA on a llava-hf checkpoint on the GPU, in bf16,
timed the way `spr bench train` times itself: tokens per step are the
unpadded prompt + response tokens of every chosen and rejected row, image
tokens included; throughput is the mean over the steps after the warm-up.

    python3 run_trl_gpu.py MODEL PAIRS_DIR [--steps 8] [--warmup 2] [--batch 2] [--lora-r 128]

PAIRS_DIR is the shared TRL benchmark's layout (pairs.jsonl + images/).
Last stdout line: one JSON object with the figures (and peak GPU memory).
"""
import argparse
import json
import re
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("pairs_dir")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--lora-r", type=int, default=128)
    ap.add_argument("--cpu", action="store_true", help="run on the CPU in fp32 (to try the plumbing)")
    args = ap.parse_args()

    from datasets import Dataset, Image, List
    from peft import LoraConfig
    from PIL import Image as PILImage
    from transformers import AutoProcessor, LlavaForConditionalGeneration, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    pairs_dir = Path(args.pairs_dir).resolve()
    rows = [json.loads(l) for l in (pairs_dir / "pairs.jsonl").read_text().splitlines() if l.strip()]
    rows = rows[: args.steps * args.batch]
    for r in rows:
        r["images"] = [str(pairs_dir / p) for p in r["images"]]
    processor = AutoProcessor.from_pretrained(args.model)

    # Tokens per row, as spr counts them (chat template, image tokens expanded).
    def n_tokens(r, side):
        text = processor.apply_chat_template(r["prompt"] + r[side])
        image = PILImage.open(r["images"][0]).convert("RGB")
        ids = processor(images=[image], text=[text], return_tensors="pt", add_special_tokens=False)["input_ids"]
        return int(ids.shape[1])

    tokens = [n_tokens(r, "chosen") + n_tokens(r, "rejected") for r in rows]
    per_step = [sum(tokens[i * args.batch:(i + 1) * args.batch]) for i in range(args.steps)]

    dataset = Dataset.from_list(rows).cast_column("images", List(Image()))
    dtype = torch.float32 if args.cpu else torch.bfloat16
    model = LlavaForConditionalGeneration.from_pretrained(args.model, dtype=dtype)
    if not args.cpu:
        model = model.to("cuda")
    lora = LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, lora_dropout=0.0, bias="none",
                      target_modules=r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)",
                      task_type="CAUSAL_LM")
    config = DPOConfig(
        output_dir=str(Path("/tmp") / "trl-gpu-check"), max_steps=args.steps,
        per_device_train_batch_size=args.batch, gradient_accumulation_steps=1, learning_rate=1e-5,
        lr_scheduler_type="linear", warmup_steps=0, max_grad_norm=1.0, beta=0.1, loss_type=["sigmoid"],
        bf16=not args.cpu, fp16=False, gradient_checkpointing=False, activation_checkpointing=False,
        logging_steps=1, use_cpu=args.cpu, report_to="none", save_strategy="no", dataloader_num_workers=0,
        train_sampling_strategy="sequential", seed=42, disable_tqdm=True,
    )

    times = []

    class Timer(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            if not args.cpu:
                torch.cuda.synchronize()
            self.t = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            if not args.cpu:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - self.t)

    if not args.cpu:
        torch.cuda.reset_peak_memory_stats()
    trainer = DPOTrainer(model=model, args=config, train_dataset=dataset, processing_class=processor,
                         peft_config=lora, callbacks=[Timer()])
    trainer.train()
    w = min(args.warmup, len(times) - 1)
    rates = [per_step[i] / times[i] for i in range(w, len(times))]
    logs = [l for l in trainer.state.log_history if "loss" in l]
    print(json.dumps({
        "trainer": "trl", "steps": len(times), "measured_steps": len(rates), "batch": args.batch,
        "lora_r": args.lora_r, "dtype": str(dtype).replace("torch.", ""),
        "tokens_per_step": sum(per_step[w:]) / max(1, len(rates)),
        "tokens_per_s": sum(rates) / max(1, len(rates)),
        "s_per_step": sum(times[w:]) / max(1, len(rates)),
        "step1_logps": {k: logs[0].get(k) for k in ("logps/chosen", "logps/rejected")} if logs else None,
        "peak_gpu_mb": None if args.cpu else torch.cuda.max_memory_allocated() / 2**20,
    }))


if __name__ == "__main__":
    main()
