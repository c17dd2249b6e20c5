"""x86 integer kernels: a working AVX-512 VNNI intrinsic for TVM 0.27 and hand TIR schedules."""
