#!/usr/bin/env python3
"""Reference numbers for the preference objectives in `src/train/objectives.rs`.

Plain PyTorch (float64, autograd) implementing the formulas of TRL's
`DPOTrainer.dpo_loss` (TRL 0.x: sigmoid with label smoothing = cDPO, robust,
hinge, IPO on per-token average log-probs) and of fDPO as written in the
project's DESIGN.md §3 (SpatialReasoner-R1, arXiv 2506.21656):

    F_s   = [log pi/ref](chosen_s) - [log pi/ref](rejected_s)
    w_s   = softmax_s(lambda_f * dR_s)
    beta_s = beta * (1 + alpha * (2 w_s - 1))
    L     = -log sigmoid(sum_s beta_s F_s)

It writes `src/train/testdata/objectives_reference.json` (inputs, expected
loss and TRL-named metrics, and gradients of the loss with respect to the
policy chosen / rejected log-probs). The Rust tests read that file; rerun
this script only when the cases change:

    pip install torch
    python3 scripts/objectives/reference.py

TRL is not imported (it is not needed and pins many packages); the formulas
are transcribed here, each next to the TRL expression it mirrors.
"""

import json
import math
import os
import sys

import torch
import torch.nn.functional as F

torch.set_default_dtype(torch.float64)

OUT = os.path.join(
    os.path.dirname(os.path.abspath(__file__)),
    "..",
    "..",
    "src",
    "train",
    "testdata",
    "objectives_reference.json",
)

# --------------------------------------------------------------------------
# Sequence-level objectives (inputs: summed log-probs [B] and token counts).
# --------------------------------------------------------------------------


def sequence_objective(objective, beta, eps, pc, pr, rc, rr, nc, nr):
    """Loss (scalar) and per-pair rewards, as TRL computes them."""
    if objective == "ipo":
        # TRL 0.x: concatenated_forward(..., average_log_prob=loss_type == "ipo")
        pc, pr, rc, rr = pc / nc, pr / nr, rc / nc, rr / nr
    logits = (pc - pr) - (rc - rr)  # pi_logratios - ref_logratios
    if objective == "dpo":  # TRL "sigmoid" (label smoothing = cDPO)
        losses = -F.logsigmoid(beta * logits) * (1 - eps) - F.logsigmoid(-beta * logits) * eps
    elif objective == "robust":
        losses = (-F.logsigmoid(beta * logits) * (1 - eps) + F.logsigmoid(-beta * logits) * eps) / (1 - 2 * eps)
    elif objective == "hinge":
        losses = torch.relu(1 - beta * logits)
    elif objective == "ipo":
        losses = (logits - 1 / (2 * beta)) ** 2
    elif objective == "sft":
        # Token-level mean NLL of the chosen responses over the whole batch,
        # as F.cross_entropy over the masked chosen tokens (TRL "sft").
        loss = -pc.sum() / nc.sum()
        losses = None
    else:
        raise ValueError(objective)
    if losses is not None:
        loss = losses.mean()
    chosen_rewards = beta * (pc - rc).detach()
    rejected_rewards = beta * (pr - rr).detach()
    return loss, chosen_rewards, rejected_rewards, pc.detach(), pr.detach()


def fdpo_objective(beta, alpha, lam, pc, pr, rc, rr, gaps):
    """fDPO over per-segment summed log-probs [B, S] and reward gaps [B, S]."""
    w = torch.softmax(lam * gaps, dim=1)
    beta_s = beta * (1 + alpha * (2 * w - 1))
    f = (pc - rc) - (pr - rr)  # F_s
    margin = (beta_s * f).sum(dim=1)
    loss = (-F.logsigmoid(margin)).mean()
    chosen_rewards = (beta_s * (pc - rc)).sum(dim=1).detach()
    rejected_rewards = (beta_s * (pr - rr)).sum(dim=1).detach()
    return loss, chosen_rewards, rejected_rewards, pc.sum(dim=1).detach(), pr.sum(dim=1).detach(), beta_s


def metrics(loss, chosen_rewards, rejected_rewards, logps_c, logps_r):
    return {
        "loss": loss.item(),
        "rewards/chosen": chosen_rewards.mean().item(),
        "rewards/rejected": rejected_rewards.mean().item(),
        "rewards/margins": (chosen_rewards - rejected_rewards).mean().item(),
        "rewards/accuracies": (chosen_rewards > rejected_rewards).double().mean().item(),
        "logps/chosen": logps_c.mean().item(),
        "logps/rejected": logps_r.mean().item(),
    }


# Summed log-probs of four pairs; pair 2 prefers the rejected answer, pair 3
# has a large margin (hinge saturates there).
SEQ = {
    "policy_chosen": [-12.5, -30.25, -7.0, -22.0],
    "policy_rejected": [-14.0, -28.5, -9.75, -40.0],
    "reference_chosen": [-13.0, -29.0, -7.5, -23.0],
    "reference_rejected": [-13.25, -29.5, -9.0, -26.0],
    "chosen_tokens": [10.0, 24.0, 5.0, 18.0],
    "rejected_tokens": [12.0, 20.0, 6.0, 15.0],
}

SEQ_CASES = [
    ("dpo", "dpo", 0.1, 0.0),
    ("dpo_label_smoothing", "dpo", 0.25, 0.1),
    ("ipo", "ipo", 0.1, 0.0),
    ("hinge", "hinge", 0.1, 0.0),
    ("robust", "robust", 0.1, 0.1),
    ("robust_beta_half", "robust", 0.5, 0.2),
    ("sft", "sft", 0.1, 0.0),
]

# Per-segment summed log-probs, [B=3, S=2] (segment 0 = text / description,
# segment 1 = box / reasoning) and reward gaps chosen - rejected.
SEG2 = {
    "policy_chosen": [[-8.0, -4.5], [-20.0, -10.25], [-5.0, -2.0]],
    "policy_rejected": [[-9.5, -3.0], [-18.0, -12.0], [-6.5, -2.5]],
    "reference_chosen": [[-8.5, -4.0], [-19.5, -11.0], [-5.25, -2.25]],
    "reference_rejected": [[-9.0, -3.5], [-19.0, -11.5], [-6.0, -2.75]],
    "chosen_tokens": [[8.0, 4.0], [16.0, 8.0], [4.0, 4.0]],
    "rejected_tokens": [[9.0, 4.0], [15.0, 8.0], [5.0, 4.0]],
    "reward_gaps": [[0.0, 0.6], [0.35, -0.2], [1.5, 0.9]],
}

SEG3 = {
    "policy_chosen": [[-3.0, -5.5, -1.0], [-7.25, -2.0, -4.0]],
    "policy_rejected": [[-4.0, -5.0, -2.5], [-6.0, -3.5, -4.75]],
    "reference_chosen": [[-3.5, -5.0, -1.5], [-7.0, -2.5, -4.25]],
    "reference_rejected": [[-3.75, -5.25, -2.0], [-6.5, -3.0, -4.5]],
    "chosen_tokens": [[3.0, 5.0, 1.0], [7.0, 2.0, 4.0]],
    "rejected_tokens": [[4.0, 5.0, 2.0], [6.0, 3.0, 4.0]],
    "reward_gaps": [[0.2, -0.4, 1.0], [0.0, 0.8, 0.3]],
}

FDPO_CASES = [
    ("fdpo_2seg", SEG2, 0.1, 0.3, 0.6),
    ("fdpo_2seg_strong", SEG2, 0.5, 0.8, 2.0),
    ("fdpo_3seg", SEG3, 0.1, 0.3, 0.6),
]


def tensors(inputs, keys):
    return {k: torch.tensor(inputs[k], requires_grad=k.startswith("policy")) for k in keys}


def grad_list(t):
    """The gradient of a leaf, zeros where the loss does not depend on it."""
    return (t.grad if t.grad is not None else torch.zeros_like(t)).tolist()


def seq_case(name, objective, beta, eps):
    t = tensors(SEQ, SEQ.keys())
    loss, cr, rr, lc, lr = sequence_objective(
        objective,
        beta,
        eps,
        t["policy_chosen"],
        t["policy_rejected"],
        t["reference_chosen"],
        t["reference_rejected"],
        t["chosen_tokens"],
        t["rejected_tokens"],
    )
    loss.backward()
    return {
        "name": name,
        "config": {"objective": objective, "beta": beta, "label_smoothing": eps},
        "inputs": SEQ,
        "expected": metrics(loss, cr, rr, lc, lr),
        "grad": {
            "policy_chosen": grad_list(t["policy_chosen"]),
            "policy_rejected": grad_list(t["policy_rejected"]),
        },
    }


def fdpo_case(name, inputs, beta, alpha, lam):
    t = tensors(inputs, inputs.keys())
    loss, cr, rr, lc, lr, beta_s = fdpo_objective(
        beta,
        alpha,
        lam,
        t["policy_chosen"],
        t["policy_rejected"],
        t["reference_chosen"],
        t["reference_rejected"],
        t["reward_gaps"],
    )
    loss.backward()
    return {
        "name": name,
        "config": {
            "objective": "fdpo",
            "beta": beta,
            "label_smoothing": 0.0,
            "fdpo_alpha": alpha,
            "fdpo_lambda": lam,
        },
        "inputs": inputs,
        "expected": metrics(loss, cr, rr, lc, lr),
        "segment_betas": beta_s.detach().tolist(),
        "grad": {
            "policy_chosen": grad_list(t["policy_chosen"]),
            "policy_rejected": grad_list(t["policy_rejected"]),
        },
    }


def logps_case():
    """Per-sequence / per-segment summed log-probs from logits (shift by one)."""
    gen = torch.Generator().manual_seed(20250621)
    b, t, v, s = 2, 7, 5, 2
    logits = torch.randn(b, t, v, generator=gen) * 2.0
    labels = torch.randint(0, v, (b, t), generator=gen)
    # Prompt tokens (0) then response tokens (1), then padding (0).
    loss_mask = torch.tensor([[0, 0, 1, 1, 1, 1, 0], [0, 1, 1, 1, 1, 1, 1]])
    segment_ids = torch.tensor([[0, 0, 0, 1, 1, 0, 0], [0, 0, 1, 1, 0, 1, 1]])
    # logits[:, i] predicts labels[:, i + 1]; mask and segment ids follow the label.
    per_token = torch.gather(F.log_softmax(logits[:, :-1], dim=-1), 2, labels[:, 1:].unsqueeze(2)).squeeze(2)
    mask = loss_mask[:, 1:].double()
    seq_sum = (per_token * mask).sum(1)
    seq_n = mask.sum(1)
    onehot = F.one_hot(segment_ids[:, 1:], s).double()
    seg_sum = torch.einsum("bt,bts->bs", per_token * mask, onehot)
    seg_n = torch.einsum("bt,bts->bs", mask, onehot)
    return {
        "logits": logits.tolist(),
        "labels": labels.tolist(),
        "loss_mask": loss_mask.tolist(),
        "segment_ids": segment_ids.tolist(),
        "n_segments": s,
        "sequence_sum": seq_sum.tolist(),
        "sequence_tokens": seq_n.tolist(),
        "segment_sum": seg_sum.tolist(),
        "segment_tokens": seg_n.tolist(),
    }


def main():
    cases = [seq_case(*c) for c in SEQ_CASES] + [fdpo_case(*c) for c in FDPO_CASES]
    out = {
        "generator": "scripts/objectives/reference.py",
        "torch": torch.__version__,
        "dtype": "float64",
        "cases": cases,
        "logps_from_logits": logps_case(),
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    for c in cases:
        print(f"{c['name']:>22}: loss {c['expected']['loss']:.10f}")
    print(f"wrote {os.path.relpath(OUT)}", file=sys.stderr)
    assert all(math.isfinite(c["expected"]["loss"]) for c in cases)


if __name__ == "__main__":
    main()
