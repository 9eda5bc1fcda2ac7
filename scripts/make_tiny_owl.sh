#!/usr/bin/env bash
# Rebuilds the demo's tiny OWLv2 detector (assets/demo/models/owlv2) with
# `spr` itself (about an hour on 2 CPU cores): its backbone and text tower
# start from the demo's tiny CLIP (assets/demo/models/clip), its heads from
# nothing; 240 synthetic scenes (seed 17) give region crops with every object
# boxed and named; 2,000 steps of the OWL-ViT set loss (Hungarian matching,
# focal class loss, L1 + GIoU boxes, objectness) at 168 px; then a report on
# 30 held-out scenes (seed 19): AP@0.5, AP@0.75, precision and recall at the
# score threshold. The demo project is regenerated so its scores use it.
#
# Usage: scripts/make_tiny_owl.sh [WORK_DIR]   (default target/tiny-owl)
# Matrix products run on several threads, so a rebuild on another machine
# gives a model of the same quality, not the same bits.
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-target/tiny-owl}
rm -rf "$work"
cargo build --release
spr=target/release/spr

$spr tiny owl --out "$work" --clip assets/demo/models/clip --scenes 240 --seed 17 \
  --steps 2000 --batch 16 --lr 3e-4 --image-size 168 --eval-scenes 30
rm -rf assets/demo/models/owlv2
mkdir -p assets/demo/models
cp -r "$work/model" assets/demo/models/owlv2
$spr demo --out assets/demo
