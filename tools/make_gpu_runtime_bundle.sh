#!/usr/bin/env bash
# Build .gpu_rt/bundle.tar.xz: everything tools/gpu_check.sh needs on a lent GPU machine that has
# Python 3.12 + numpy + a CUDA driver but no TVM, no nvcc and no network:
#   rt/   runtime-only TVM: the tvm package's .py files + lib/libtvm_runtime{,_cuda,_extra}.so (no
#         libtvm_compiler.so, include/, src/, 3rdparty/) and the apache-tvm-ffi wheel for that Python
#         (same version as here), pruned to what `import tvm_ffi` needs;
#   art/  prebuilt libraries + fatbins + reference data (tools/gpu_check.py prepare; see its docstring).
# The device tool carries at most 64 MiB with the tracked files: the script prints the size.
#
#   bash tools/make_gpu_runtime_bundle.sh                 # Python 3.12 (the GPU machine), sm_90 (H100/H200)
#   PY=3.11 DEST=/tmp/rt311 ART=.gpu_rt_work/art bash tools/make_gpu_runtime_bundle.sh   # local test copy
# Env: PY (3.12), ARCH (sm_90), DEST (.gpu_rt), ART (reuse a prepared art/ instead of building it),
#      PREPARE_ARGS (extra args for gpu_check.py prepare, e.g. --skip-speed).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-3.12}
ARCH=${ARCH:-sm_90}
DEST=${DEST:-.gpu_rt}
WORK=${WORK:-.gpu_rt_work}
FFI_VER=$(python -c 'import importlib.metadata as m; print(m.version("apache-tvm-ffi"))')
TVM_DIR=$(python -c 'import os, tvm; print(os.path.dirname(tvm.__file__))')

if [ -z "${ART:-}" ]; then
  ART=$WORK/art
  rm -rf "$WORK" && mkdir -p "$WORK"
  nice -n 10 python -m tools.gpu_check prepare "$WORK" --arch "$ARCH" ${PREPARE_ARGS:-}
fi
[ -f "$ART/manifest.json" ] || { echo "error: $ART/manifest.json missing (prepare failed?)" >&2; exit 1; }

S=$(mktemp -d); trap 'rm -rf "$S"' EXIT
mkdir -p "$S/rt/tvm/lib" "$S/wheel"
# runtime-only tvm: python sources + the three runtime libraries
(cd "$TVM_DIR" && find . -name '*.py' -not -path './3rdparty/*' -not -path './src/*' -not -path './include/*' \
   -not -path '*/__pycache__/*' | tar cf - -T -) | tar xf - -C "$S/rt/tvm"
cp "$TVM_DIR"/lib/libtvm_runtime.so "$TVM_DIR"/lib/libtvm_runtime_cuda.so "$TVM_DIR"/lib/libtvm_runtime_extra.so "$S/rt/tvm/lib/"
# libtvm_runtime_cuda.so links the CUDA runtime (libcudart.so.13, ~0.7 MB); gpu_check.py preloads it from here
CUDART=$(ldd "$TVM_DIR/lib/libtvm_runtime_cuda.so" | awk '/libcudart/{print $3}')
[ -n "$CUDART" ] && [ -f "$CUDART" ] || CUDART=$(ls /usr/local/cuda*/lib*/libcudart.so.1[0-9] 2>/dev/null | head -1)
[ -n "$CUDART" ] || { echo "error: libcudart.so for libtvm_runtime_cuda.so not found" >&2; exit 1; }
cp -L "$CUDART" "$S/rt/tvm/lib/"
# tvm-ffi wheel for the target Python
pip download "apache-tvm-ffi==$FFI_VER" --python-version "$PY" --only-binary=:all: \
  --platform manylinux_2_28_x86_64 --no-deps -q -d "$S/wheel"
python -m zipfile -e "$S"/wheel/*.whl "$S/rt/"
rm -rf "$S"/rt/tvm_ffi/{include,src,3rdparty,share,CMakeLists.txt} "$S"/rt/tvm_ffi/cython/*.pyx "$S"/rt/tvm_ffi/cython/*.pxi \
  2>/dev/null || true  # (core.so links lib/libtvm_ffi_testing.so: keep lib/ whole)
# tvm_ffi's one pure-Python dependency (torch has it too, but do not count on it)
cp "$(python -c 'import typing_extensions as t; print(t.__file__)')" "$S/rt/"
find "$S/rt" -name '__pycache__' -prune -exec rm -rf {} +
cp -r "$ART" "$S/art"
mkdir -p "$DEST"
rm -f "$DEST/bundle.tar.xz"
tar cf - -C "$S" rt art | xz -T2 -6 > "$DEST/bundle.tar.xz"
printf 'python=%s ffi=%s arch=%s built=%s\n' "$PY" "$FFI_VER" "$ARCH" "$(date -u +%FT%TZ)" > "$DEST/INFO"
du -sh "$S/rt" "$S/art"
ls -la "$DEST"
echo "bundle: $(du -b "$DEST/bundle.tar.xz" | cut -f1) bytes ($(du -sh "$DEST" | cut -f1) in $DEST)"
# the device tool carries the tracked files + this bundle, at most 64 MiB in all
tracked=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
total=$(( tracked + $(du -cb "$DEST"/* | tail -1 | cut -f1) ))
if [ "$total" -gt $(( 64 * 1024 * 1024 - 1024 * 1024 )) ]; then
  echo "note: tracked files ($tracked bytes) + bundle = $total bytes, over the device tool's 64 MiB carry."
  echo "      gpu_check needs no model checkpoint on the device: leave them out of the tree for the call with"
  echo "        git rm -q --cached zsq_tvm/zoo/models/*.pt && echo '/zsq_tvm/zoo/models/*.pt' >> .git/info/exclude"
  echo "      and undo both afterwards (git restore --staged zsq_tvm/zoo/models/*.pt; remove the exclude line)."
fi
