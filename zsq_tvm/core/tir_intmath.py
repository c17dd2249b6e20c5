"""TIR form of :func:`zsq_tvm.core.intops.requantize`, for hand-written kernels (x86 VNNI, CUDA dp4a/WMMA).

The expression is built by the same definition as the numpy reference and the Relax graph (through
:data:`zsq_tvm.core.intops.TIR`), so a kernel's epilogue cannot drift from them.  Call it inside TVMScript
(``T.prim_func``) bodies: TVMScript evaluates a plain Python call on TIR expressions.
"""
from __future__ import annotations

from zsq_tvm.core import intops


def requantize_expr(acc, mul, shift, qmin: int, qmax: int, dtype: str):
    """``clip((int64(acc) * M + 2^(s-1)) >> s, qmin, qmax)`` cast to ``dtype`` — :func:`intops.requantize`.

    ``acc`` is the int32 accumulator (bias already added), ``mul``/``shift`` the int64 dyadic
    multiplier and right shift of its output channel; round half up, saturating.
    """
    o = intops.TIR
    return o.cast(intops.requantize(o, o.cast(acc, "int64"), mul, shift, qmin, qmax), dtype)
