#!/usr/bin/env bash
# Rebuilds the demo's tiny CLIP (assets/demo/models/clip) from nothing with
# `spr` itself (about 30 minutes on 2 CPU cores): 160 synthetic scenes (seed
# 11) → region, object and scene crops with their texts and one-word hard
# negatives → tokenizer + random weights → 1,200 contrastive steps → a
# report on 30 held-out scenes (seed 13). Then the demo project is
# regenerated so its scores use the new model.
#
# Usage: scripts/make_tiny_clip.sh [WORK_DIR]   (default target/tiny-clip)
# Matrix products run on several threads, so a rebuild on another machine
# gives a model of the same quality, not the same bits.
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-target/tiny-clip}
rm -rf "$work"
cargo build --release
spr=target/release/spr

$spr tiny clip --out "$work" --scenes 160 --seed 11 --steps 1200 --batch 64 --lr 1e-3 \
  --eval-scenes 30
rm -rf assets/demo/models/clip
mkdir -p assets/demo/models
cp -r "$work/model" assets/demo/models/clip
$spr demo --out assets/demo
