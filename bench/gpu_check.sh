#!/usr/bin/env bash
# GPU bit-exactness check of the sm_75 int8 GEMM kernels (dp4a + WMMA), see bench/gpu_check.py.
#
# 1) here (full TVM, no GPU):   bash bench/gpu_check.sh prepare
#      -> bench/results/gpu_check/{kernels/*.so,*.npz, tvm_rt/ (runtime-only tvm copy)}
#      Also put the cp312 apache-tvm-ffi wheel (GPU machine has Python 3.12) in
#      bench/results/gpu_check/wheels/ (pip download apache-tvm-ffi==<same version> --python-version 3.12
#      --only-binary=:all: --no-deps -d ...). Keep the folder under 64 MiB (facts.md).
# 2) on the lent GPU (device tool `run`, carry bench/results/gpu_check):
#      bash bench/gpu_check.sh run
#      prints OK/FAIL per kernel (+ median ms), exit 1 on any mismatch. T4 = sm_75 (IMMA.8816);
#      an H100/H200 runs the same source (IMMA.16816) - same integer results expected.
set -euo pipefail
cd "$(dirname "$0")/.."
D=bench/results/gpu_check
case "${1:-}" in
  prepare)
    mkdir -p "$D/kernels"
    python bench/gpu_check.py prepare "$D/kernels"
    SRC=$(python -c 'import tvm,os;print(os.path.dirname(tvm.__file__))')
    rm -rf "$D/tvm_rt" && mkdir -p "$D/tvm_rt"
    rsync -a --exclude libtvm_compiler.so --exclude src/ --exclude include/ --exclude 3rdparty/ \
      --exclude __pycache__ "$SRC" "$D/tvm_rt/"
    du -sh "$D"
    ;;
  run)
    if ls "$D"/wheels/*.whl >/dev/null 2>&1; then pip install -q --no-deps "$D"/wheels/*.whl; fi
    export TVM_USE_RUNTIME_LIB=1 PYTHONPATH="$PWD/$D/tvm_rt:${PYTHONPATH:-}"
    # NVRTC needs cuda-bindings (present there); else: export TVM_CUDA_COMPILE_MODE=nvcc
    nvidia-smi --query-gpu=name --format=csv,noheader || true
    python bench/gpu_check.py run "$D/kernels"
    ;;
  *) echo "usage: $0 prepare|run" >&2; exit 2 ;;
esac
