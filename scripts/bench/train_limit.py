#!/usr/bin/env python3
"""How fast could one DPO + LoRA step on the shared tiny LLaVA be on this
machine? Counts the matrix-product FLOPs of a step (forward of the chosen
and rejected rows, backward to the LoRA weights: input gradients through
every frozen layer, weight gradients for the adapters only; the CLIP tower's
features are cached, as `spr train` does) and times torch's matmul on the
very shapes of the step with the given threads, so the bound is what this
machine's best dense kernels could do, not a data-sheet figure.

    python scripts/bench/train_limit.py [--threads 2] [--rows 4] [--row-len 163] [--completion 76]

Defaults: the shared TRL bench's model (hidden 256, 4 layers, MLP 688,
vocab 4096, 64 image tokens from a 128-wide tower) and its measured batch-2
step (652 tokens in 4 rows, 305 of them completion tokens).
"""
import argparse
import time

import torch


def rate(m: int, k: int, n: int, reps: int = 200) -> float:
    a, b = torch.randn(m, k), torch.randn(k, n)
    for _ in range(10):
        a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * m * k * n * reps / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", type=int, default=4)
    ap.add_argument("--row-len", type=int, default=163)
    ap.add_argument("--completion", type=int, default=76)
    ap.add_argument("--lora-r", type=int, default=16)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    d, ff, layers, vocab, r = 256, 688, 4, 4096, args.lora_r
    L, C = args.row_len, args.completion
    # (m, k, n, times per row, passes): passes 2 = forward + input gradient.
    shapes = [
        (L, d, d, 4 * layers, 2),        # q, k, v, o
        (L, d, ff, 2 * layers, 2),       # gate, up
        (L, ff, d, layers, 2),           # down
        (L, d, L, 2 * layers, 3),        # scores and attention × V (fwd + 2 bwd)
        (C, d, vocab, 1, 2),             # lm_head on the completion
        (64, 128, d, 1, 1),              # projector (frozen, no gradient)
        (64, d, d, 1, 1),
        (L, d, r, 7 * layers, 3),        # LoRA A (fwd, input grad, weight grad)
        (L, r, d, 5 * layers, 3),        # LoRA B onto d-wide outputs
        (L, r, ff, 2 * layers, 3),       # LoRA B onto the MLP's wide outputs
    ]
    flops = 0.0
    seconds = 0.0
    print(f"{'shape (m×k×n)':>18} {'GFLOP/step':>11} {'GFLOP/s':>8}")
    for m, k, n, times, passes in shapes:
        f = 2 * m * k * n * times * passes * args.rows
        g = rate(m, k, n)
        flops += f
        seconds += f / g
        print(f"{m:>6}×{k:>4}×{n:>5} {f / 1e9:>11.3f} {g / 1e9:>8.1f}")
    tokens = args.rows * L
    big = rate(2048, 2048, 2048, reps=5)
    print(f"step: {flops / 1e9:.2f} GFLOP for {tokens} tokens")
    print(f"bound at torch's rate on these shapes ({args.threads} threads): {seconds:.3f} s/step = "
          f"{tokens / seconds:,.0f} tokens/s")
    print(f"bound at the 2048³ rate ({big / 1e9:.0f} GFLOP/s): {flops / big:.3f} s/step = "
          f"{tokens * big / flops:,.0f} tokens/s")


if __name__ == "__main__":
    main()
