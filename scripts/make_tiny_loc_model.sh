#!/usr/bin/env bash
# Rebuilds assets/tiny-loc/, the tiny base model that can localize (the
# experiment's base, experiments/tiny.toml), from nothing but the demo's
# tiny OWLv2 with `spr` itself (about 25 minutes on 2 CPU cores):
# synthetic scenes (seed 7) → SFT rows on region crops and whole scenes →
# tokenizer + LLaVA config whose vision tower is the tiny OWLv2's backbone
# (168 px, trained to find the shapes) → full supervised fine-tuning with
# the tower unfrozen → REC evaluation on the demo's REC set.
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

$spr tiny data --out "$work/data" --scenes 300 --seed 7 --whole-scenes
$spr tiny init --corpus "$work/data/corpus.txt" --out "$work/init" --seed 0 \
  --vision-from assets/demo/models/owlv2
$spr train --model "$work/init" --data "$work/data/sft.jsonl" --run "$work/sft" \
  --objective sft --tune full-vision --lr 1e-3 --warmup 50 --min-lr-ratio 0.1 \
  --steps 1200 --batch 8 --max-len 400 --checkpoint-every 300 --seed 42 \
  --eval-data assets/demo/rec/finetune_demo_val.json --eval-profile tiny --eval-every 300

rm -rf assets/tiny-loc
cp -r "$work/sft/model" assets/tiny-loc
cp "$work/sft/events.jsonl" assets/tiny-loc/sft_events.jsonl
$spr eval --model assets/tiny-loc --data assets/demo/rec/finetune_demo_val.json \
  --profile tiny --out "$work/eval_demo_rec"
