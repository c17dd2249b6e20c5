"""CUDA (sm_75 / T4) schedules for the integer-only kernels."""
