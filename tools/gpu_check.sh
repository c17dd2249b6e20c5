#!/usr/bin/env bash
# GPU check on a lent machine WITHOUT TVM (Python 3.12 + numpy + CUDA driver): the whole quantized
# QuartzNet-5x5 and Conformer-CTC-small (CUDA builds: int8 WMMA/dp4a pointwise and int8 depthwise kernels +
# dlight) bit-exact vs the numpy reference, the int8 kernels alone (checked, timed, schedule variants), a
# per-kernel profile, and INT8 vs FP32 speed of QuartzNet-5x5/10x5/15x5 at T=1000, plain and with CUDA graphs.
#
# 1) here (full TVM + nvcc):  bash tools/make_gpu_runtime_bundle.sh     -> .gpu_rt/bundle.tar.xz (gitignored)
#    (it prints a note with the fix when the tracked files + bundle exceed the device tool's 64 MiB carry)
# 2) device tool:  run(command="bash tools/gpu_check.sh", carry=[".gpu_rt"], timeout_s=260)
#    -> prints GPU/driver, OK/FAIL per check, INT8 vs FP32 ms; writes $OUT/gpu_check.json, $OUT/log.txt.
#    Exit 0 all bit-exact, 1 a mismatch/failed check, 2 no bundle / wrong Python / no GPU, 124 timeout.
# Hard limit: GPU_CHECK_TIMEOUT (default 200 s) for the Python part; speed cases stop being started
# after GPU_CHECK_BUDGET (150 s).  Local tests without a GPU: `bash tools/gpu_check.sh check-load` (loads every
# library; needs a libcuda), or a bundle built with ARCH=llvm and GPU_CHECK_DEVICE=cpu (runs it all on the CPU).
set -uo pipefail
cd "$(dirname "$0")/.."
B=${GPU_RT:-.gpu_rt}/bundle.tar.xz
OUT=${OUT:-$PWD/gpu_check_out}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/log.txt") 2>&1
[ -f "$B" ] || { echo "error: $B missing: run bash tools/make_gpu_runtime_bundle.sh here and carry .gpu_rt" >&2; exit 2; }
cat "${GPU_RT:-.gpu_rt}/INFO" 2>/dev/null
PY=${PYTHON:-python3}
want=$(sed -n 's/^python=\([0-9.]*\).*/\1/p' "${GPU_RT:-.gpu_rt}/INFO" 2>/dev/null)
have=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [ -n "$want" ] && [ "$want" != "$have" ]; then
  echo "error: bundle is for Python $want, $PY is $have: rebuild with PY=$have bash tools/make_gpu_runtime_bundle.sh" >&2
  exit 2
fi
X=$(mktemp -d); trap 'rm -rf "$X"' EXIT
t0=$(date +%s)
tar xJf "$B" -C "$X" || exit 2
echo "bundle unpacked in $(( $(date +%s) - t0 )) s: $(du -sh "$X" | cut -f1)"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader 2>/dev/null || echo "(no nvidia-smi)"
export TVM_USE_RUNTIME_LIB=1 PYTHONPATH="$X/rt${PYTHONPATH:+:$PYTHONPATH}"
MODE=${1:-run}
if [ "$MODE" = check-load ]; then
  timeout -k 5 "${GPU_CHECK_TIMEOUT:-200}" "$PY" -m tools.gpu_check check-load "$X/art"
  exit $?
fi
timeout -k 5 "${GPU_CHECK_TIMEOUT:-200}" "$PY" -m tools.gpu_check run "$X/art" --out "$OUT" \
  --runs "${GPU_CHECK_RUNS:-30}" --budget-s "${GPU_CHECK_BUDGET:-150}" --device "${GPU_CHECK_DEVICE:-cuda}"
rc=$?
echo "gpu_check exit $rc after $(( $(date +%s) - t0 )) s; JSON: $OUT/gpu_check.json"
exit $rc
