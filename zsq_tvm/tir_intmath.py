"""TIR forms of :mod:`zsq_tvm.intmath`, for hand-written kernels (x86 VNNI, CUDA dp4a/WMMA).

Each function builds the TIR expression of its numpy twin, term for term, so a kernel's epilogue and
the numpy reference cannot drift apart.  Call them inside TVMScript (``T.prim_func``) bodies: TVMScript
evaluates a plain Python call on TIR expressions.
"""
from __future__ import annotations


def requantize_expr(acc, mul, shift, qmin: int, qmax: int, dtype: str):
    """``clip((int64(acc) * M + 2^(s-1)) >> s, qmin, qmax)`` cast to ``dtype`` — :func:`intmath.requantize`.

    ``acc`` is the int32 accumulator (bias already added), ``mul``/``shift`` the int64 dyadic
    multiplier and right shift of its output channel; round half up, saturating.
    """
    from tvm.script import tirx as T

    one = T.int64(1)
    scaled = (T.Cast("int64", acc) * mul + T.shift_left(one, shift - one)) >> shift
    return T.Cast(dtype, T.max(T.min(scaled, T.int64(qmax)), T.int64(qmin)))
