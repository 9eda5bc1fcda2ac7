#!/usr/bin/env bash
# Rebuilds assets/tiny-loc/, the tiny base model for the experiment
# (experiments/tiny.toml): README "The experiment", try 17. About 1 h 50 min
# on 2 CPU cores. Needs `spr` (built here) and a Python with torch,
# transformers and safetensors for one step (e.g. a venv from
# ../shared/bench/trl/requirements.txt: PYTHON=/path/to/venv/bin/python).
#
# 0. the 112-px tower (sine-cosine positions) is pretrained per patch on
#    scenes of 8-16 objects (`spr tiny tower`), then stays frozen; the
#    projector's first 64 units become an objectness-gated read-out of
#    object edges (`spr tiny gate`, src/demo/tiny_gate.rs).
# 1. scripts/tiny_pick_heads.py sets, by hand, how the model picks the
#    named object (ten tries of learning it failed, README): projector units
#    that mark each patch's colour and shape and carry its object's edges,
#    a layer-0 head that gathers the asked name, a layer-1 head that matches
#    it against the patches' marks and copies the matched object's edges.
# 2. `spr train` full SFT in five schedules on the same rows: 4,000 × 16 and
#    3,000 × 16 at lr 1e-3, 1,500 × 16 and 3,000 × 16 at 5e-4, 3,000 × 16
#    at 3e-4 (each warms up and decays to a tenth), on 8-16-object scenes
#    (whole-scene REC, crop REC, region descriptions) with 2-4- and
#    one-object scenes; the hand-set parts stay frozen (`--freeze`:
#    embeddings, projector, layer 0, layer 1's attention), the rest learns
#    to read the edges and write the answer.
#
# Evaluation on the demo's REC set (assets/demo/rec) every 250 steps: Acc@0.5
# at the end of each schedule 17.0 / 27.7 / 31.9 / 39.4 / 46.8 % (target
# 40-85 %; Acc@0.9 0 %). About 1 h 50 min in all.
#
# Usage: scripts/make_tiny_loc_model.sh [WORK_DIR]   (default target/tiny-loc)
# Matrix products run on several threads, so a rebuild on another machine
# gives a model of the same quality, not the same bits.
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-target/tiny-loc}
python=${PYTHON:-python3}
rm -rf "$work"
mkdir -p "$work"
cargo build --release
spr=target/release/spr
demo_rec=assets/demo/rec/finetune_demo_val.json

$spr tiny data --out "$work/many" --scenes 1500 --seed 8 --whole-scenes
$spr tiny data --out "$work/few" --scenes 3000 --seed 12 --whole-scenes --objects 2-4 --rec-scenes 60
$spr tiny data --out "$work/one" --scenes 4000 --seed 7 --whole-scenes --objects 1-1 --rec-scenes 60
$spr tiny data --out "$work/many_more" --scenes 6000 --seed 14 --whole-scenes
$spr tiny data --out "$work/diag" --scenes 40 --seed 99 --whole-scenes
$spr tiny init --corpus "$work/many/corpus.txt" --out "$work/init" --seed 0
# The tower learns each patch's object (category and box) on the
# many-object scenes (100 held out), then the projector gate is fitted on it.
$spr tiny tower --model "$work/init" --scenes "$work/many/scenes" --max-scenes 1500 \
  --eval-scenes 100 --steps 1500 --batch 32 --lr 1e-3
$spr tiny gate --model "$work/init" --scenes "$work/many/scenes" --max-scenes 1500
# The picking heads, fitted on 300 scenes; measured on 40 new ones.
"$python" scripts/tiny_pick_heads.py "$work/init" "$work/pick" "$work/many/scenes" 300 "$work/diag" 0.12

# The row mix: image paths made relative to the folder of the mix.
python3 - "$work" <<'PY'
import random, sys
w = sys.argv[1]
def rows(d):
    return open(f"{w}/{d}/sft.jsonl").readlines()
def moved(lines, d):
    return [l.replace('"scenes/', f'"../{d}/scenes/').replace('"crops/', f'"../{d}/crops/') for l in lines]
many = rows("many_more")
def kind(l):
    crop = '"crops/' in l
    return ("crop" if crop else "scene") + ("-desc" if "Describe" in l else "-rec")
random.seed(0)
out = [l for l in many if kind(l) == "scene-rec"]
out += random.sample([l for l in many if kind(l) == "crop-desc"], 3000)
out += random.sample([l for l in many if kind(l) == "crop-rec"], 4000)
out += moved(rows("few"), "few") + moved(rows("one"), "one")
random.shuffle(out)
open(f"{w}/many_more/pickmix.jsonl", "w").writelines(out)
PY
frozen=(--freeze language_model.model.embed_tokens. --freeze multi_modal_projector.
  --freeze language_model.model.layers.0. --freeze language_model.model.layers.1.self_attn.
  --freeze language_model.model.layers.1.input_layernorm.)
common=(--objective sft --tune full --warmup 50 --min-lr-ratio 0.1 --batch 16
  --max-len 400 --eval-profile tiny --checkpoint-every 500 --eval-data "$demo_rec" --eval-every 250)
# Five schedules on the same rows (as stage 1 of try 12, each one still
# rising at its end): name, steps, lr, seed.
prev="$work/pick"
for stage in a:4000:1e-3:42 b:3000:1e-3:43 c:1500:5e-4:44 d:3000:5e-4:45 e:3000:3e-4:46; do
  IFS=: read -r name steps lr seed <<<"$stage"
  $spr train --model "$prev" --data "$work/many_more/pickmix.jsonl" --run "$work/stage_$name" \
    "${frozen[@]}" "${common[@]}" --lr "$lr" --seed "$seed" --steps "$steps"
  prev="$work/stage_$name/model"
done

rm -rf assets/tiny-loc
cp -r "$prev" assets/tiny-loc
for name in a b c d e; do
  gzip -9 -c "$work/stage_$name/events.jsonl" > "assets/tiny-loc/stage_${name}_events.jsonl.gz"
done
$spr eval --model assets/tiny-loc --data "$demo_rec" --profile tiny --out "$work/eval_demo_rec"
