"""Emit the integer non-linearities of :mod:`zsq_tvm.intnonlinear` as plain Relax integer ops.

Like :meth:`relax_passes.quantize._Quantizer.requant`, every kernel is spelled out op by op
(``astype``/``add``/``subtract``/``multiply``/``floor_divide``/``right_shift``/``maximum``/
``minimum``/``clip``, int64 inside), so FuseOps can fuse it and :func:`zsq_tvm.reference.run_reference`
interprets it; the numpy kernels ``_k_*`` are the specification, and the TVM build must equal them
bit for bit (``tests/test_intnonlinear.py``).  Left shifts are multiplications by ``2^k`` (exact,
the reference has no ``left_shift``).

Status: emitters for sigmoid and Swish/GLU only; the pass that finds ``R.sigmoid``/``R.nn.silu``/
``x * sigmoid(x)`` in the Conformer and calls them is not wired into :class:`Quantize` yet.
"""

from __future__ import annotations

from tvm import relax, tirx

from zsq_tvm import intmath
from zsq_tvm import intnonlinear as inl

from ._util import const

__all__ = ["emit_i_exp", "emit_i_sigmoid", "emit_i_glu", "emit_i_swish"]


def _c(v):
    return const(v, "int64")


def _clip(bb, x, lo, hi):
    return bb.emit(relax.op.clip(x, relax.prim_value(tirx.IntImm("int64", int(lo))),
                                 relax.prim_value(tirx.IntImm("int64", int(hi)))))


def _neg_mask(bb, x):
    """``-(x >> 63)``: 1 where x < 0 (int64)."""
    return bb.emit(relax.op.subtract(_c(0), bb.emit(relax.op.right_shift(x, _c(63)))))


def _exp_ops(bb, x, c: dict):
    """:func:`zsq_tvm.intnonlinear._k_exp` on int64 ``x`` (constants from ``_exp_consts``)."""
    x = bb.emit(relax.op.maximum(bb.emit(relax.op.minimum(x, _c(0))), _c(c["q_floor"])))
    k = c["k"]
    x = bb.emit(relax.op.multiply(x, _c(1 << k))) if k >= 0 else bb.emit(relax.op.right_shift(x, _c(-k)))
    z = bb.emit(relax.op.floor_divide(bb.emit(relax.op.subtract(_c(0), x)), _c(c["q_ln2"])))
    p = bb.emit(relax.op.add(x, bb.emit(relax.op.multiply(z, _c(c["q_ln2"])))))
    pb = bb.emit(relax.op.add(p, _c(c["q_b"])))
    L = bb.emit(relax.op.add(bb.emit(relax.op.multiply(pb, pb)), _c(c["q_c"])))
    if c["sgn"] < 0:
        L = bb.emit(relax.op.subtract(_c(0), L))
    return bb.emit(relax.op.right_shift(L, bb.emit(relax.op.minimum(z, _c(inl._EXP_ZMAX)))))


def emit_i_exp(bb: relax.BlockBuilder, x: relax.Expr, S: float):
    """:func:`zsq_tvm.intnonlinear.i_exp` on an integer tensor: returns ``(int64 expr, S_out)``."""
    c = inl._exp_consts(S)
    S_out = c.pop("S_out")
    return _exp_ops(bb, bb.emit(relax.op.astype(x, "int64")), c), S_out


def _sigmoid_ops(bb, x64, c: dict):
    """``_k_sigmoid`` on int64 ``x64``."""
    neg = _neg_mask(bb, x64)
    a = bb.emit(relax.op.maximum(x64, bb.emit(relax.op.subtract(_c(0), x64))))    # |x|
    e = _exp_ops(bb, bb.emit(relax.op.subtract(_c(0), a)), c["exp_c"])
    one, qmax = c["one"], c["qmax"]
    den = bb.emit(relax.op.add(e, _c(one)))
    num = bb.emit(relax.op.add(den, _c(2 * qmax * one)))                          # 2 qmax one + den
    pos = bb.emit(relax.op.floor_divide(num, bb.emit(relax.op.multiply(den, _c(2)))))
    flip = bb.emit(relax.op.subtract(_c(qmax), bb.emit(relax.op.multiply(pos, _c(2)))))
    return bb.emit(relax.op.add(pos, bb.emit(relax.op.multiply(neg, flip))))


def emit_i_sigmoid(bb: relax.BlockBuilder, x: relax.Expr, S: float, out_bits: int = 8):
    """:func:`zsq_tvm.intnonlinear.i_sigmoid`: returns ``(uint<out_bits> expr, 1/(2^out_bits-1))``."""
    c = inl._sigmoid_consts(float(S), out_bits)
    y = _sigmoid_ops(bb, bb.emit(relax.op.astype(x, "int64")), c)
    return bb.emit(relax.op.astype(y, intmath.storage_dtype(out_bits, True))), 1.0 / c["qmax"]


def emit_i_glu(bb: relax.BlockBuilder, a: relax.Expr, Sa: float, b: relax.Expr, Sb: float,
               out_scale: float | None = None, out_bits: int = 8):
    """:func:`zsq_tvm.intnonlinear.i_glu` (``|a| <= 2^15 - 1`` is the caller's to guarantee, e.g.
    8/16-bit storage): returns ``(int<out_bits> expr, S_out)``."""
    S_out = float(Sa) if out_scale is None else float(out_scale)
    c = inl._sigmoid_consts(float(Sb), inl._GATE_BITS)
    M, s = intmath.dyadic(float(Sa) / c["qmax"] / S_out)
    sig = _sigmoid_ops(bb, bb.emit(relax.op.astype(b, "int64")), c)
    acc = bb.emit(relax.op.multiply(bb.emit(relax.op.astype(a, "int64")), sig))
    y = bb.emit(relax.op.add(bb.emit(relax.op.multiply(acc, _c(M))), _c(1 << (s - 1))))
    y = bb.emit(relax.op.right_shift(y, _c(s)))
    qmin, qmax = intmath.qrange(out_bits)
    return bb.emit(relax.op.astype(_clip(bb, y, qmin, qmax), intmath.storage_dtype(out_bits))), S_out


def emit_i_swish(bb: relax.BlockBuilder, x: relax.Expr, S: float, out_scale: float | None = None, out_bits: int = 8):
    """:func:`zsq_tvm.intnonlinear.i_swish` = :func:`emit_i_glu` ``(x, S, x, S)``."""
    return emit_i_glu(bb, x, S, x, S, out_scale=out_scale, out_bits=out_bits)
