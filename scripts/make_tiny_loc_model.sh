#!/usr/bin/env bash
# Status (2026-12-05): does NOT yet meet the target (demo REC Acc@0.5 6.4 %,
# 40-85 % wanted): stage 1 reads a box off one-object scenes (held-out
# Acc@0.5 93 %), the later stages do not learn to pick the named object
# among several; README "The experiment", tries 12-13.
#
# Rebuilds assets/tiny-loc/, the tiny base model for the experiment
# (experiments/tiny.toml), with `spr` (and python3 for the row mixes), in
# stages (about 1 h 45 min on 2 CPU cores):
#
# 0. the 112-px tower (sine-cosine positions) is pretrained per patch on
#    scenes of 8-16 objects (`spr tiny tower`), then stays frozen; the
#    projector starts as an objectness-gated read-out of object edges
#    (`spr tiny gate`, src/demo/tiny_gate.rs).
# 1. one-object scenes (seed 7): the language model learns to read a box
#    off the image tokens: 1,200 steps, then 4,000 more (a new schedule).
#    It "clicks" late: held-out Acc@0.5 3 % at 1,000 of the 4,000, 62 %
#    at 2,500, 93 % at 4,000 (README, "The experiment", try 12).
# 2. scenes of 2-4 objects (seed 12) with one-object rows (seed 13): it
#    must now pick the named object, 3,000 steps.
# 3. scenes of 8-16 objects (seed 8: whole-scene and region-crop REC rows,
#    grounded region descriptions) with the 2-4-object and one-object rows,
#    3,000 steps; then 6,000 new such scenes (seed 14), 4,000 steps.
#
# Evaluation on the demo's REC set (assets/demo/rec) every 500 steps of the
# last stages and at the end.
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
$spr tiny data --out "$work/few" --scenes 3000 --seed 12 --whole-scenes --objects 2-4 --rec-scenes 60
$spr tiny data --out "$work/one_more" --scenes 20000 --seed 13 --whole-scenes --objects 1-1
$spr tiny data --out "$work/many_more" --scenes 6000 --seed 14 --whole-scenes
$spr tiny init --corpus "$work/many/corpus.txt" --out "$work/init" --seed 0
# The tower learns each patch's object (category and box) on the
# many-object scenes (100 held out), then the projector gate is fitted on it.
$spr tiny tower --model "$work/init" --scenes "$work/many/scenes" --max-scenes 1500 \
  --eval-scenes 100 --steps 1500 --batch 32 --lr 1e-3
$spr tiny gate --model "$work/init" --scenes "$work/many/scenes" --max-scenes 1500

common=(--objective sft --tune full --lr 1e-3 --warmup 50 --min-lr-ratio 0.1
  --batch 16 --max-len 400 --eval-profile tiny)
one_rec="$work/one/scenes/rec/finetune_demo_val.json"
$spr train --model "$work/init" --data "$work/one/sft.jsonl" --run "$work/stage1a" \
  "${common[@]}" --seed 42 --steps 1200 --checkpoint-every 400 --eval-data "$one_rec" --eval-every 300
$spr train --model "$work/stage1a/model" --data "$work/one/sft.jsonl" --run "$work/stage1b" \
  "${common[@]}" --seed 42 --steps 4000 --checkpoint-every 1000 --eval-data "$one_rec" --eval-every 500

# The row mixes: image paths made relative to the folder of the mix.
python3 - "$work" <<'PY'
import json, random, sys
w = sys.argv[1]
def rows(d):
    return open(f"{w}/{d}/sft.jsonl").readlines()
def moved(lines, d):
    return [l.replace('"scenes/', f'"../{d}/scenes/') for l in lines]
one = rows("one_more")
open(f"{w}/few/mix.jsonl", "w").writelines(rows("few") + moved(one[:3000], "one_more"))
open(f"{w}/many/stage3.jsonl", "w").writelines(
    rows("many") + moved(rows("few"), "few") + moved(one[:2000], "one_more"))
many = rows("many_more")
def kind(l):
    crop = '"crops/' in l
    return ("crop" if crop else "scene") + ("-desc" if "Describe" in l else "-rec")
random.seed(0)
out = [l for l in many if kind(l) == "scene-rec"]
out += random.sample([l for l in many if kind(l) == "crop-desc"], 3000)
out += random.sample([l for l in many if kind(l) == "crop-rec"], 4000)
out += moved(rows("few"), "few") + moved(one[5000:8000], "one_more")
open(f"{w}/many_more/stage4.jsonl", "w").writelines(out)
PY
$spr train --model "$work/stage1b/model" --data "$work/few/mix.jsonl" --run "$work/stage2" \
  "${common[@]}" --seed 42 --steps 3000 --checkpoint-every 1000 \
  --eval-data "$work/few/scenes/rec/finetune_demo_val.json" --eval-every 500
$spr train --model "$work/stage2/model" --data "$work/many/stage3.jsonl" --run "$work/stage3a" \
  "${common[@]}" --seed 42 --steps 3000 --checkpoint-every 500 --eval-data "$demo_rec" --eval-every 500
$spr train --model "$work/stage3a/model" --data "$work/many_more/stage4.jsonl" --run "$work/stage3b" \
  "${common[@]}" --seed 43 --steps 4000 --checkpoint-every 500 --eval-data "$demo_rec" --eval-every 500

rm -rf assets/tiny-loc
cp -r "$work/stage3b/model" assets/tiny-loc
for s in stage1a stage1b stage2 stage3a stage3b; do
  cp "$work/$s/events.jsonl" "assets/tiny-loc/${s}_events.jsonl"
done
$spr eval --model assets/tiny-loc --data "$demo_rec" --profile tiny --out "$work/eval_demo_rec"
