#!/usr/bin/env bash
# Rebuilds assets/tiny-model/ from nothing with `spr` itself (about 13
# minutes on 2 CPU cores): synthetic scenes → SFT rows → tokenizer + random
# weights → full supervised fine-tuning → evaluation on the demo project.
#
# Usage: scripts/make_tiny_model.sh [WORK_DIR]   (default target/tiny-model)
# The work folder keeps the data, the run (events.jsonl, checkpoints) and
# the evaluation. Matrix products run on several threads, so a rebuild on
# another machine gives a model of the same quality, not the same bits.
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-target/tiny-model}
rm -rf "$work"
mkdir -p "$work"
cargo build --release
spr=target/release/spr

$spr tiny data --out "$work/data" --scenes 300 --seed 7
$spr tiny init --corpus "$work/data/corpus.txt" --out "$work/init" --seed 0
$spr train --model "$work/init" --data "$work/data/sft.jsonl" --run "$work/sft" \
  --objective sft --tune full --lr 1e-3 --warmup 50 --min-lr-ratio 0.1 \
  --steps 1500 --batch 8 --max-len 400 --checkpoint-every 250 --seed 42

rm -rf assets/tiny-model
cp -r "$work/sft/model" assets/tiny-model
cp "$work/sft/events.jsonl" assets/tiny-model/sft_events.jsonl
$spr tiny eval --model assets/tiny-model --project assets/demo --limit 76 \
  --out "$work/eval_demo.jsonl"
