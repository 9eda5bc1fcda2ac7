"""A probe, not part of the recipe: makes the tiny base model's hand-set
gather head (layer 0, head 3, set by scripts/tiny_pick_heads.py) prefer the
most recent name (README "The experiment on the 46.8 % base").

The gather head's score between a position and a name-word token comes
from RoPE's slowest pair, so it hardly depends on distance: in a region
description ("a red square [..] at the top, a blue circle [..] ...") every
box's position gathers all the names written so far, and the match head
then looks for a mixture of objects. This adds the same query/key product
on a faster pair (index 14: θ = 10000^(-28/64) ≈ 0.0178, so cos(θΔ) falls
monotonically over the first ~176 tokens) scaled by A, and scales the slow
pair by B (> A, so a name still beats a non-name token at any distance):
score ≈ s·(B + A·cos(θΔ)). With A = 2, B = 3 a name 25 tokens older than
the current one weighs about e^4 less (a rough figure: the norms are estimated, not measured). The rest of the model was trained
with the old head, so training has to continue after this step: on
assets/tiny-loc, then 1,500 + 2,500 steps on a mix with 6,000 more region
descriptions, the descriptions' boxes improved and REC fell below 40 %
(README).

Usage: python scripts/diag/tiny_recent_name.py MODEL_DIR OUT_DIR [A [B]]
"""
import json
import shutil
import sys

import torch
from safetensors.torch import load_file, save_file

src, dst = sys.argv[1], sys.argv[2]
A = float(sys.argv[3]) if len(sys.argv) > 3 else 2.0
B = float(sys.argv[4]) if len(sys.argv) > 4 else 3.0
HEAD, PAIR = 3, 14  # the gather head of tiny_pick_heads.py; the faster RoPE pair
text = json.load(open(src + "/config.json"))["text_config"]
hd = text["hidden_size"] // text["num_attention_heads"]
half = hd // 2
sd = load_file(src + "/model.safetensors")
p = "language_model.model.layers.0.self_attn."
q = sd[p + "q_proj.weight"].clone()
k = sd[p + "k_proj.weight"].clone()
row = HEAD * hd
slow = row + half - 1
assert q[slow].abs().max() > 0, "no gather head here: run scripts/tiny_pick_heads.py first"
assert q[row + PAIR].abs().max() == 0 and k[row + PAIR].abs().max() == 0, "pair already in use"
q[row + PAIR] = q[slow] * A
k[row + PAIR] = k[slow]
q[slow] = q[slow] * B
sd[p + "q_proj.weight"] = q
sd[p + "k_proj.weight"] = k
shutil.copytree(src, dst, dirs_exist_ok=True)
save_file(sd, dst + "/model.safetensors", metadata={"format": "pt"})
print("gather head: recency pair %d (A %.1f, B %.1f) → %s" % (PAIR, A, B, dst))
