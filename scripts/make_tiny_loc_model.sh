#!/usr/bin/env bash
# Status (2026-12-05): the tower learns each patch's object (held-out
# category 86.7 %), stage 1 learns to point on one-object scenes (Acc@0.5
# 15 % after 1,200 steps), stage 2 does not yet learn to pick the named
# object (demo REC Acc@0.5 0-1.1 %); README "The experiment", tries 6-9.
#
# Rebuilds assets/tiny-loc/, the tiny base model that can localize (the
# experiment's base, experiments/tiny.toml), with `spr` alone, in two
# stages (about 25 minutes on 2 CPU cores):
#
# 1. one-object scenes (seed 7): the language model learns to read a box
#    off the image tokens. The projector starts as an objectness-gated
#    read-out of object edges (`--gate-from`, see src/demo/tiny_gate.rs);
#    without it every try sat on a plateau answering one prior box
#    (README, "The experiment").
# 2. scenes of 8-16 objects (seed 8): whole-scene and region-crop REC rows,
#    grounded region descriptions, and the one-object rows again; it must
#    now pick the named object.
#
# The 112-px tower (sine-cosine positions) is pretrained per patch
# (`spr tiny tower`) and then stays frozen; the language model and the
# projector train. Evaluation on the demo's REC set
# (assets/demo/rec) every 300 steps of stage 2 and at the end.
#
# Usage: scripts/make_tiny_loc_model.sh [WORK_DIR]   (default target/tiny-loc)
# Matrix products run on several threads, so a rebuild on another machine
# gives a model of the same quality, not the same bits.
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-target/tiny-loc}
rm -rf "$work"
mkdir -p "$work"
cargo build --release
spr=target/release/spr
demo_rec=assets/demo/rec/finetune_demo_val.json

$spr tiny data --out "$work/one" --scenes 4000 --seed 7 --whole-scenes --objects 1-1 --rec-scenes 60
$spr tiny data --out "$work/many" --scenes 1500 --seed 8 --whole-scenes
$spr tiny init --corpus "$work/many/corpus.txt" --out "$work/init" --seed 0
# The tower learns each patch's object (category and box) on the
# many-object scenes (100 held out), then the projector gate is fitted on it.
$spr tiny tower --model "$work/init" --scenes "$work/many/scenes" --max-scenes 1500 \
  --eval-scenes 100 --steps 1500 --batch 32 --lr 1e-3
$spr tiny gate --model "$work/init" --scenes "$work/many/scenes" --max-scenes 1500

common=(--objective sft --tune full --lr 1e-3 --warmup 50 --min-lr-ratio 0.1
  --batch 16 --max-len 400 --seed 42 --eval-profile tiny)
$spr train --model "$work/init" --data "$work/one/sft.jsonl" --run "$work/stage1" \
  "${common[@]}" --steps 1200 --checkpoint-every 400 \
  --eval-data "$work/one/scenes/rec/finetune_demo_val.json" --eval-every 300

# Stage 2 rows: the many-object scenes' rows plus the one-object rows (their
# image paths made relative to the many-object folder).
{ cat "$work/many/sft.jsonl"; sed 's#"scenes/#"../one/scenes/#' "$work/one/sft.jsonl"; } \
  > "$work/many/stage2.jsonl"
$spr train --model "$work/stage1/model" --data "$work/many/stage2.jsonl" --run "$work/stage2" \
  "${common[@]}" --steps 1200 --checkpoint-every 300 \
  --eval-data "$demo_rec" --eval-every 300

rm -rf assets/tiny-loc
cp -r "$work/stage2/model" assets/tiny-loc
cp "$work/stage1/events.jsonl" assets/tiny-loc/stage1_events.jsonl
cp "$work/stage2/events.jsonl" assets/tiny-loc/stage2_events.jsonl
$spr eval --model assets/tiny-loc --data "$demo_rec" --profile tiny --out "$work/eval_demo_rec"
