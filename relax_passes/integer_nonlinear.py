"""Emit the integer non-linearities of :mod:`zsq_tvm.intnonlinear` as plain Relax integer ops.

Like :meth:`relax_passes.quantize._Quantizer.requant`, every kernel is spelled out op by op
(``astype``/``add``/``subtract``/``multiply``/``floor_divide``/``right_shift``/``maximum``/
``minimum``/``clip``, int64 inside), so FuseOps can fuse it and :func:`zsq_tvm.reference.run_reference`
interprets it; the numpy kernels ``_k_*`` are the specification, and the TVM build must equal them
bit for bit (``tests/test_intnonlinear.py``).  Left shifts are multiplications by ``2^k`` (exact,
the reference has no ``left_shift``).

Emitters: i-exp, sigmoid, Swish/GLU, softmax, GELU, LayerNorm (with the integer square root).
:class:`relax_passes.quantize.Quantize` calls them (via :mod:`relax_passes.quantize_conformer`) where
the float module has ``R.sigmoid`` (alone or in ``x * sigmoid(x)`` / GLU's ``a * sigmoid(b)``),
``R.nn.softmax``, ``R.nn.gelu`` and ``R.nn.layer_norm``.  Example, softmax of an int16 row
``q`` at scale ``S`` (before: ``R.nn.softmax(x, axis=-1)`` on float32)::

    x  = astype(q, "int64") ; m = max(x, axis=-1, keepdims) ; d = x - m
    e  = <i-exp ops on d>   ; T = sum(e, axis=-1, keepdims)
    F  = floor_divide(2^54, T) ; y = (e * (F * 255) + 2^53) >> 54 ; astype(y, "uint8")   # S_out = 1/255
"""

from __future__ import annotations

import numpy as np
from tvm import relax, tirx

from zsq_tvm import intmath
from zsq_tvm import intnonlinear as inl

from ._util import const

__all__ = ["emit_i_exp", "emit_i_sigmoid", "emit_i_glu", "emit_i_swish", "emit_i_softmax", "emit_i_gelu",
           "emit_i_layernorm", "emit_isqrt", "emit_bit_length"]


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
    # floor(-x / q_ln2) as the exact multiply-shift of _k_exp (an int64 division per element does not vectorise)
    z = bb.emit(relax.op.right_shift(bb.emit(relax.op.multiply(bb.emit(relax.op.subtract(_c(0), x)), _c(c["z_mul"]))),
                                     _c(c["z_shift"])))
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


def _op(bb, name, *args, **kw):
    return bb.emit(getattr(relax.op, name)(*args, **kw))


def emit_i_softmax(bb: relax.BlockBuilder, x: relax.Expr, S: float, axis: int = -1, out_bits: int = 8):
    """:func:`zsq_tvm.intnonlinear.i_softmax` (``_k_softmax``): returns ``(uint<out_bits> expr, 1/qmax)``."""
    c = inl._exp_consts(float(S))
    c.pop("S_out")
    qmax = intmath.qrange(out_bits, unsigned=True)[1]
    x64 = bb.emit(relax.op.astype(x, "int64"))
    m = _op(bb, "max", x64, axis=[axis], keepdims=True)
    e = _exp_ops(bb, _op(bb, "subtract", x64, m), c)
    total = _op(bb, "sum", e, axis=[axis], keepdims=True)
    factor = _op(bb, "floor_divide", _c(1 << inl._SOFTMAX_K), total)
    y = _op(bb, "multiply", e, _op(bb, "multiply", factor, _c(qmax)))
    y = _op(bb, "right_shift", _op(bb, "add", y, _c(1 << (inl._SOFTMAX_K - 1))), _c(inl._SOFTMAX_K))
    return bb.emit(relax.op.astype(y, intmath.storage_dtype(out_bits, True))), 1.0 / qmax


def _requant_ops(bb, acc64, M, s, qmin, qmax, shape=()):
    """:func:`zsq_tvm.intmath.requantize` on an int64 expr (``M``/``s`` scalars or arrays of ``shape``)."""
    M = np.asarray(M, dtype=np.int64).reshape(shape)
    s = np.asarray(s, dtype=np.int64).reshape(shape)
    y = _op(bb, "add", _op(bb, "multiply", acc64, const(M, "int64")), const(np.int64(1) << (s - 1), "int64"))
    return _clip(bb, _op(bb, "right_shift", y, const(s, "int64")), qmin, qmax)


def emit_i_gelu(bb: relax.BlockBuilder, x: relax.Expr, S: float, out_scale: float | None = None, out_bits: int = 8,
                in_bits: int = 8):
    """:func:`zsq_tvm.intnonlinear.i_gelu` (``_k_gelu``): returns ``(int<out_bits> expr, S_out)``."""
    S_out = float(S) if out_scale is None else float(out_scale)
    c = inl._gelu_consts(float(S), 2 ** (in_bits - 1), S_out, out_bits)
    q = bb.emit(relax.op.astype(x, "int64"))
    a = _op(bb, "maximum", q, _op(bb, "subtract", _c(0), q))
    k = c["k"]
    a = _op(bb, "multiply", a, _c(1 << k)) if k >= 0 else _op(bb, "right_shift", a, _c(-k))
    t = _op(bb, "minimum", a, _c(-c["q_b"]))
    tb = _op(bb, "add", t, _c(c["q_b"]))
    L = _op(bb, "subtract", _c(0), _op(bb, "add", _op(bb, "multiply", tb, tb), _c(c["q_c"])))
    q_erf = _op(bb, "subtract", L, _op(bb, "multiply", _op(bb, "multiply", _neg_mask(bb, q), _c(2)), L))
    acc = _op(bb, "multiply", q, _op(bb, "add", q_erf, _c(c["q_1"])))
    y = _requant_ops(bb, acc, c["M"], c["s"], c["qmin"], c["qmax"])
    return bb.emit(relax.op.astype(y, intmath.storage_dtype(out_bits))), S_out


def emit_bit_length(bb: relax.BlockBuilder, n: relax.Expr):
    """``zsq_tvm.intnonlinear._k_bit_length`` on a non-negative int64 expr."""
    bl = None
    x = n
    for s in (32, 16, 8, 4, 2, 1):
        h = _op(bb, "minimum", _op(bb, "right_shift", x, _c(s)), _c(1))
        sh = _op(bb, "multiply", h, _c(s))
        bl = sh if bl is None else _op(bb, "add", bl, sh)
        x = _op(bb, "right_shift", x, sh)
    return _op(bb, "add", bl, _op(bb, "minimum", x, _c(1)))


def emit_isqrt(bb: relax.BlockBuilder, n: relax.Expr):
    """``zsq_tvm.intnonlinear._k_isqrt`` (fixed-step integer Newton) on an int64 expr ``0 <= n < 2^63``."""
    nn = _op(bb, "maximum", n, _c(1))
    e = _op(bb, "right_shift", _op(bb, "add", emit_bit_length(bb, nn), _c(1)), _c(1))
    x = _op(bb, "left_shift", _c(1), e)
    for _ in range(inl._SQRT_ITERS):
        y = _op(bb, "right_shift", _op(bb, "add", x, _op(bb, "floor_divide", nn, x)), _c(1))
        x = _op(bb, "minimum", x, y)
    return _op(bb, "multiply", x, _op(bb, "minimum", n, _c(1)))


def emit_i_layernorm(bb: relax.BlockBuilder, x: relax.Expr, S: float, shape, gamma, beta, eps: float = 1e-5,
                     out_scale: float | None = None, out_bits: int = 8):
    """:func:`zsq_tvm.intnonlinear.i_layernorm` (``_k_layernorm``) over the last axis of ``x`` (static
    ``shape``): returns ``(int<out_bits> expr, S_out)``."""
    C = int(shape[-1])
    c, S_out = inl._ln_consts(float(S), gamma, beta, C, eps, out_scale, out_bits)
    ax = [len(shape) - 1]
    q = bb.emit(relax.op.astype(x, "int64"))
    d = _op(bb, "subtract", _op(bb, "multiply", q, _c(C)), _op(bb, "sum", q, axis=ax, keepdims=True))
    amax = _op(bb, "max", _op(bb, "maximum", d, _op(bb, "subtract", _c(0), d)), axis=ax, keepdims=True)
    k = _op(bb, "minimum", _op(bb, "subtract", _c(c["T"]), emit_bit_length(bb, amax)), _c(c["Kmax"]))
    kp = _op(bb, "maximum", k, _c(0))
    kn = _op(bb, "maximum", _op(bb, "subtract", _c(0), k), _c(0))
    dp = _op(bb, "right_shift", _op(bb, "left_shift", d, kp), kn)
    var = _op(bb, "floor_divide", _op(bb, "sum", _op(bb, "multiply", dp, dp), axis=ax, keepdims=True), _c(C))
    sh = _clip(bb, _op(bb, "subtract", _op(bb, "multiply", k, _c(2)), _c(c["E"])), -62, 62)
    shp = _op(bb, "maximum", sh, _c(0))
    shn = _op(bb, "maximum", _op(bb, "subtract", _c(0), sh), _c(0))
    eps_p = _op(bb, "minimum", _c(c["eps_fix"]), _op(bb, "right_shift", _c(2**61), shp))
    eps_p = _op(bb, "right_shift", _op(bb, "left_shift", eps_p, shp), shn)
    std = _op(bb, "maximum", emit_isqrt(bb, _op(bb, "add", var, eps_p)), _c(1))
    num = _op(bb, "multiply", dp, _c(1 << inl._LN_FRAC))
    n = _op(bb, "floor_divide", _op(bb, "add", _op(bb, "multiply", num, _c(2)), std), _op(bb, "multiply", std, _c(2)))
    n = _op(bb, "multiply", n, const(c["sgn"], "int64"))
    y = _requant_ops(bb, n, c["M"], c["s"], intmath.INT32_MIN, intmath.INT32_MAX, (C,))
    y = _clip(bb, _op(bb, "add", y, const(c["beta_q"], "int64")), c["qmin"], c["qmax"])
    return bb.emit(relax.op.astype(y, intmath.storage_dtype(out_bits))), S_out
