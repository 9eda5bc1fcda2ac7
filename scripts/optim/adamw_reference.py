"""Reference trajectory of torch.optim.AdamW for the trainer's AdamW test.

Two parameters get fixed, step-dependent gradients for five steps at a
changing learning rate (as a warmup/cosine schedule changes it), with
weight decay; the parameters after every step are written to
src/train/testdata/adamw_reference.json, which `trainer::tests` replays
through our AdamW.

Run: python3 scripts/optim/adamw_reference.py   (needs torch)
"""

import json
import math
from pathlib import Path

import torch

OUT = Path(__file__).resolve().parents[2] / "src/train/testdata/adamw_reference.json"
LRS = [1e-2, 2e-2, 1.5e-2, 5e-3, 1e-3]
BETAS = (0.9, 0.999)
EPS = 1e-8
WEIGHT_DECAY = 0.01


def init(shape, k):
    n = math.prod(shape)
    return torch.tensor([math.sin(0.7 * i + k) for i in range(n)], dtype=torch.float64).reshape(shape)


def grad(shape, k, step):
    n = math.prod(shape)
    return torch.tensor(
        [math.cos(0.3 * i * (step + 1) + k) * (0.5 + step) for i in range(n)], dtype=torch.float64
    ).reshape(shape)


def main():
    shapes = {"a": [3, 4], "b": [5]}
    params = {name: torch.nn.Parameter(init(s, i)) for i, (name, s) in enumerate(shapes.items())}
    initial = {name: p.detach().clone().flatten().tolist() for name, p in params.items()}
    opt = torch.optim.AdamW(
        list(params.values()), lr=LRS[0], betas=BETAS, eps=EPS, weight_decay=WEIGHT_DECAY
    )
    steps = []
    for step, lr in enumerate(LRS):
        for group in opt.param_groups:
            group["lr"] = lr
        grads = {}
        for i, (name, p) in enumerate(params.items()):
            p.grad = grad(shapes[name], i, step)
            grads[name] = p.grad.flatten().tolist()
        opt.step()
        steps.append(
            {
                "lr": lr,
                "grads": grads,
                "params": {name: p.detach().flatten().tolist() for name, p in params.items()},
            }
        )
    OUT.write_text(
        json.dumps(
            {
                "torch": torch.__version__,
                "betas": BETAS,
                "eps": EPS,
                "weight_decay": WEIGHT_DECAY,
                "shapes": shapes,
                "initial": initial,
                "steps": steps,
            },
            indent=1,
        )
        + "\n"
    )
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
