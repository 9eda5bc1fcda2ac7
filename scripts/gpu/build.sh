#!/usr/bin/env bash
# Prepares .gpu/ (git-ignored) for scripts/gpu/check.sh, on a machine
# without a GPU: a stripped, xz-compressed headless `spr` built with
# CUDA (DESIGN §4's toolchain from PyPI, sm_90 for Hopper), the Python
# wheels the device lacks (TRL and its data libraries), and the shared
# TRL benchmark's scripts. The device tool then carries `.gpu`.
#
#   scripts/gpu/build.sh            # ~12 min on 2 cores the first time (measured here)
#
# Environment: CUDA_VENV (default ~/.cache/spr-cuda-venv), CUDA_TARGET
# (default target/cuda), TRL_BENCH (default ../shared/bench/trl).
set -euo pipefail
cd "$(dirname "$0")/../.."

venv=${CUDA_VENV:-$HOME/.cache/spr-cuda-venv}
if [ ! -x "$venv/bin/pip" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q "nvidia-cuda-nvcc==13.0.*" "nvidia-cuda-runtime==13.0.*" \
  "nvidia-cuda-cccl==13.0.*" "nvidia-cuda-crt==13.0.*" "nvidia-nvvm==13.0.*" \
  "nvidia-cublas==13.*" "nvidia-cuda-nvrtc==13.0.*" "nvidia-curand"
cuda=$(ls -d "$venv"/lib/python3*/site-packages/nvidia/cu13)
chmod +x "$cuda"/bin/* "$cuda"/nvvm/bin/* 2>/dev/null || true
export PATH="$cuda/bin:$PATH" CUDA_ROOT="$cuda" CUDA_PATH="$cuda" CUDA_COMPUTE_CAP=90

# The link needs the CUDA libraries under their plain names, and the
# driver's libcuda, which only an NVIDIA driver installs. The wheels have
# the libraries; for libcuda a stub with the driver functions the crates
# call stands in at link time (the binary then asks for libcuda.so.1, which
# the GPU machine's driver provides). LIBRARY_PATH, unlike RUSTFLAGS, does
# not make cargo rebuild everything.
target=${CUDA_TARGET:-target/cuda}
mkdir -p "$target"
link="$(cd "$target" && pwd)/cuda-link"
mkdir -p "$link"
for lib in cublas cublasLt nvrtc curand cudart; do
  ln -sf "$(ls "$cuda"/lib/lib$lib.so.* | head -n 1)" "$link/lib$lib.so"
done
[ -f "$link/libcuda.so" ] || { printf 'void cuInit(void) {}\n' > "$link/stub.c"; gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$link/libcuda.so" "$link/stub.c"; }
build() { LIBRARY_PATH="$link" CARGO_TARGET_DIR="$target" cargo build --release --no-default-features --features cuda --bin spr; }
if ! build; then
  # First time: the stub lacks the functions; take them from the crates.
  nm -u "$target"/release/deps/lib{cudarc,candle_core,candle_nn,spr_workbench}-*.rlib 2>/dev/null \
    | awk '{print $2}' | grep -E '^cu[A-Z]' | sort -u | awk '{print "void " $1 "(void) {}"}' > "$link/stub.c"
  gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$link/libcuda.so" "$link/stub.c"
  build
fi

mkdir -p .gpu/wheels .gpu/trl
strip -o .gpu/spr "$target/release/spr"
xz -T0 -6 -f .gpu/spr   # → .gpu/spr.xz

# The device has torch, accelerate, pandas and pyarrow (Python 3.12), and
# other versions of transformers and PEFT than the shared TRL bench pins;
# TRL, datasets, dill and multiprocess are missing. All of these travel as
# pure-Python wheels, at the bench's versions.
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --platform manylinux2014_x86_64 --platform any -d .gpu/wheels \
  "trl==1.16.0" "transformers==5.23.0" "peft==0.21.*" "datasets==4.8.5" "dill" "multiprocess"

bench=${TRL_BENCH:-../shared/bench/trl}
cp "$bench"/{make_tiny_llava.py,make_pairs.py,scenes.py,tiny_config.json} .gpu/trl/
du -sh .gpu .gpu/*
echo "ready: run scripts/gpu/check.sh on the device with carry [\".gpu\"]"
