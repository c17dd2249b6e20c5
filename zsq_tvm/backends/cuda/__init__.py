"""CUDA (sm_75 / T4) schedules for the integer-only kernels."""

from zsq_tvm.backends.cuda import target as _target  # noqa: E402,F401  (registers t4, cuda, cuda-sm_XX)
