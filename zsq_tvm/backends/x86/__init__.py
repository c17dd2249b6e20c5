"""x86 integer kernels: hand TIR schedules for AVX-512 VNNI (a working ``vpdpbusd`` intrinsic for TVM 0.27,
:mod:`.vnni`) and for AVX2 without VNNI (exact ``vpmaddwd`` on int16 pairs, :mod:`.avx2`): pointwise / full
conv1d and linear layers (:mod:`.pointwise`), depthwise conv1d (:mod:`.depthwise`) and the attention's
activation x activation matmuls (:mod:`.bmm`), each with the dyadic requantize fused."""

from zsq_tvm.backends.x86 import target as _target  # noqa: E402,F401  (registers host, x86-avx2, ...)
