#!/usr/bin/env bash
# The GPU check, in one device call of at most 10 minutes; results under
# $OUT (summary.json, check.log and one file per step). Build first, on a
# machine without a GPU: scripts/gpu/build.sh. Then, through the device
# tool: command "scripts/gpu/check.sh", carry [".gpu"], timeout_s 600.
#
# Steps (each under its own time limit, so nothing hangs):
#   1. the shared TRL benchmark's tiny LLaVA and 64 pairs, built there;
#   2. parity: step-1 DPO log-probs of `spr train` on the GPU (bf16)
#      against the same binary on the CPU (SPR_DEVICE=cpu, f32), within
#      1 % (bf16 keeps 8 bits of mantissa: ~0.4 % per value);
#   3. a LLaVA-1.5-7B-shaped model with random weights, made on the GPU;
#   4. `spr bench train` on it: DPO, LoRA r128/α256 as SPR trains, bf16,
#      tokens/s, and the GPU memory peak sampled by nvidia-smi;
#   5. `spr bench generate` on it (batches 1 and 8);
#   6. TRL + PEFT on the same model and pairs, same GPU (run_trl_gpu.py).
#
# SPR_GPU_CHECK_CPU=1 runs the same plumbing on a CPU with the tiny shapes
# and an ordinary `spr` (SPR_BIN), to try the script without a GPU.
set -uo pipefail
cd "$(dirname "$0")/../.."
: "${OUT:?OUT must name the folder for the results (the device tool sets it)}"
mkdir -p "$OUT"
exec > >(tee "$OUT/check.log") 2>&1
here=$(pwd)
work=${SPR_GPU_WORK:-/tmp/spr-gpu-check}
mkdir -p "$work"
cpu_only=${SPR_GPU_CHECK_CPU:-0}

fail() {
  echo "gpu check FAILED: $*"
  python3 -c 'import json,sys; print(json.dumps({"ok": False, "why": sys.argv[1]}))' "$*" > "$OUT/summary.json"
  exit 1
}

# ---- the machine ---------------------------------------------------------
if [ "$cpu_only" = 1 ]; then
  spr=${SPR_BIN:-target/release/spr}
  [ -x "$spr" ] || fail "SPR_GPU_CHECK_CPU=1 needs an spr binary at SPR_BIN (now $spr)"
  shape=tiny
  export SPR_DEVICE=cpu   # a CUDA build too: this run tries the plumbing
else
  command -v nvidia-smi >/dev/null 2>&1 \
    || fail "no nvidia-smi here: this machine has no NVIDIA driver; run the check on the lent GPU machine"
  timeout 30 nvidia-smi -L | grep -q GPU || fail "nvidia-smi lists no GPU"
  [ -f .gpu/spr.xz ] || fail "no .gpu/spr.xz: run scripts/gpu/build.sh first and carry .gpu"
  xz -dc .gpu/spr.xz > "$work/spr" && chmod +x "$work/spr" || fail "cannot unpack .gpu/spr.xz"
  spr="$work/spr"
  shape=7b
  # cuBLAS, cuRAND and NVRTC from the wheels PyTorch brought, and libcuda.
  libs=$(python3 -c 'import glob, os, nvidia
print(":".join(sorted({os.path.dirname(p) for d in nvidia.__path__ for p in glob.glob(os.path.join(d, "**", "lib*.so*"), recursive=True)})))')
  export LD_LIBRARY_PATH="$libs:/usr/local/nvidia/lib64:/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi
[ -d .gpu/trl ] || fail "no .gpu/trl (the shared TRL benchmark's scripts): run scripts/gpu/build.sh"
if [ "$cpu_only" != 1 ]; then
  # The shared TRL bench's versions (transformers, PEFT, TRL) over the
  # image's, without touching anything else.
  [ -d .gpu/wheels ] || fail "no .gpu/wheels: run scripts/gpu/build.sh"
  python3 -m pip install -q --no-index --no-deps .gpu/wheels/*.whl \
    || fail "cannot install the wheels in .gpu/wheels"
fi
python3 -c 'import trl, transformers, peft; print("trl", trl.__version__, "transformers", transformers.__version__, "peft", peft.__version__)' \
  || fail "TRL, transformers or PEFT cannot be imported"
"$spr" --version || fail "the spr binary does not start (see above: a missing library?)"

# step NAME SECONDS CMD...: runs CMD under a time limit, output to $OUT/NAME.txt.
step() {
  local name=$1 limit=$2; shift 2
  echo "== $name (limit ${limit}s)"
  local t0; t0=$(date +%s.%N)
  timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1
  local rc=$?
  local dt; dt=$(python3 -c "import time; print(f'{time.time() - $t0:.1f}')")
  echo "$name: exit $rc in ${dt}s"
  tail -n 5 "$OUT/$name.txt"
  echo "{\"step\": \"$name\", \"exit\": $rc, \"seconds\": $dt}" >> "$OUT/steps.jsonl"
  return $rc
}

# ---- 1. tiny model and pairs ---------------------------------------------
step tiny_model 120 python3 .gpu/trl/make_tiny_llava.py "$work/tiny" || fail "tiny model not built"
step pairs 60 python3 .gpu/trl/make_pairs.py "$work/pairs" 64 || fail "pairs not built"

# ---- 2. parity: GPU bf16 against CPU f32, same binary --------------------
for dev in cpu gpu; do
  rm -rf "$work/runs/$dev"
  if [ "$dev" = cpu ]; then env_dev=cpu; else env_dev=cuda; fi
  [ "$cpu_only" = 1 ] && env_dev=cpu
  step "parity_$dev" 120 env SPR_DEVICE=$env_dev "$spr" train --model "$work/tiny" \
    --data "$work/pairs/pairs.jsonl" --run "$work/runs/$dev" --objective dpo --steps 1 --batch 2
done
step parity 30 python3 - "$work/runs/cpu/events.jsonl" "$work/runs/gpu/events.jsonl" <<'PY'
import json, sys
def first(p):
    for l in open(p):
        e = json.loads(l)
        if "logps/chosen" in e:
            return e
a, b = first(sys.argv[1]), first(sys.argv[2])
worst = 0.0
for k in ("logps/chosen", "logps/rejected", "loss"):
    rel = abs(a[k] - b[k]) / max(abs(a[k]), 1e-9)
    worst = max(worst, rel) if k != "loss" else worst
    print(f"{k}: cpu {a[k]:.4f}  gpu {b[k]:.4f}  relative difference {rel:.2e}")
print(json.dumps({"parity_worst_relative": worst, "tolerance": 0.01, "ok": worst <= 0.01}))
sys.exit(0 if worst <= 0.01 else 1)
PY

# ---- 3-6. the 7B-shaped model: spr and TRL on the same GPU ---------------
gpu_mem() {  # sample the GPU memory in use while a step runs
  [ "$cpu_only" = 1 ] && return
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 250 > "$OUT/gpu_mem_$1.csv" &
  echo $!
}
step model_7b 240 python3 scripts/gpu/make_llava_7b.py "$work/llava" --trl-bench .gpu/trl \
  --shape $shape $([ "$cpu_only" = 1 ] && echo --device cpu) || fail "7B-shaped model not built"
sampler=$(gpu_mem bench_train)
step bench_train 240 "$spr" bench train --model "$work/llava" --data "$work/pairs/pairs.jsonl" \
  --steps 6 --warmup 2 --batch 2 --lora-r 128
[ -n "${sampler:-}" ] && kill "$sampler"
sampler=$(gpu_mem bench_generate)
step bench_generate 180 "$spr" bench generate --model "$work/llava" --images "$work/pairs/images" \
  --count 8 --new-tokens 32 --batches 1,8
[ -n "${sampler:-}" ] && kill "$sampler"
step trl 300 python3 scripts/gpu/run_trl_gpu.py "$work/llava" "$work/pairs" --steps 6 --warmup 2 \
  --batch 2 --lora-r 128 $([ "$cpu_only" = 1 ] && echo --cpu)

# ---- summary -------------------------------------------------------------
python3 - "$OUT" <<'PY'
import json, os, re, sys
out = sys.argv[1]
def text(name):
    p = os.path.join(out, name + ".txt")
    return open(p).read() if os.path.exists(p) else ""
def last_json(name):
    for l in reversed(text(name).splitlines()):
        if l.startswith("{"):
            return json.loads(l)
def number(pattern, s):
    m = re.search(pattern, s)
    return float(m.group(1)) if m else None
def peak(name):
    p = os.path.join(out, f"gpu_mem_{name}.csv")
    if not os.path.exists(p):
        return None
    vals = [float(v) for v in open(p).read().split() if v.strip().replace(".", "").isdigit()]
    return max(vals) if vals else None
steps = [json.loads(l) for l in open(os.path.join(out, "steps.jsonl"))]
spr_tps = number(r"throughput: ([0-9.]+) tokens/s", text("bench_train"))
spr_sps = number(r"tokens/s, ([0-9.]+) s/step", text("bench_train"))
trl = last_json("trl") or {}
summary = {
    "ok": all(s["exit"] == 0 for s in steps),
    "steps": steps,
    "parity": last_json("parity"),
    "spr_bench_train": {"tokens_per_s": spr_tps, "s_per_step": spr_sps, "peak_gpu_mb_sampled": peak("bench_train"),
                        "peak_rss_mb": number(r"peak RSS: ([0-9.]+) MB", text("bench_train"))},
    "spr_bench_generate": {"lines": [l for l in text("bench_generate").splitlines() if "tokens/s" in l],
                           "peak_gpu_mb_sampled": peak("bench_generate")},
    "trl": trl,
    # The same pairs in the same order, so the same work per step: the
    # step-time ratio is the fair one (the two count tokens slightly
    # differently: see the README).
    "speedup_spr_over_trl_by_step_time": (trl["s_per_step"] / spr_sps) if spr_sps and trl.get("s_per_step") else None,
    "ratio_spr_over_trl_tokens_per_s": (spr_tps / trl["tokens_per_s"]) if spr_tps and trl.get("tokens_per_s") else None,
}
json.dump(summary, open(os.path.join(out, "summary.json"), "w"), indent=2)
print(json.dumps(summary, indent=2))
PY
