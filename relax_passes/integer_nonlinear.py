"""The integer non-linearities of :mod:`zsq_tvm.core.intnonlinear` emitted as plain Relax integer ops.

Each ``emit_i_*`` runs the core function with :class:`zsq_tvm.core.intops.RelaxOps`: the same definition
that computes the numpy reference emits the graph, op by op (``astype``/``add``/``subtract``/``multiply``/
``floor_divide``/``left_shift``/``right_shift``/``maximum``/``minimum``/``clip``/``sum``/``max``, int64
inside), so FuseOps can fuse it, :func:`relax_passes.reference.run_reference` interprets it, and the TVM
build equals the numpy functions bit for bit (``tests/test_intnonlinear.py``).

:class:`relax_passes.quantize.Quantize` calls them (via :mod:`relax_passes.quantize_conformer`) where
the float module has ``R.sigmoid`` (alone or in ``x * sigmoid(x)`` / GLU's ``a * sigmoid(b)``),
``R.nn.softmax``, ``R.nn.gelu`` and ``R.nn.layer_norm``.  Example, softmax of an int16 row
``q`` at scale ``S`` (before: ``R.nn.softmax(x, axis=-1)`` on float32)::

    x  = astype(q, "int64") ; m = max(x, axis=-1, keepdims) ; d = x - m
    e  = <i-exp ops on d>   ; T = sum(e, axis=-1, keepdims)
    F  = floor_divide(2^54, T) ; y = (e * (F * 255) + 2^53) >> 54 ; astype(y, "uint8")   # S_out = 1/255

Every emitter returns ``(expr, S_out)`` like its numpy twin returns ``(array, S_out)``.
"""

from __future__ import annotations

from tvm import relax

from zsq_tvm.core import intnonlinear as inl
from zsq_tvm.core.intops import RelaxOps

__all__ = ["emit_i_exp", "emit_i_sigmoid", "emit_i_glu", "emit_i_swish", "emit_i_softmax", "emit_i_gelu",
           "emit_i_layernorm"]


def emit_i_exp(bb: relax.BlockBuilder, x: relax.Expr, S: float):
    """:func:`zsq_tvm.core.intnonlinear.i_exp`: ``(int64 expr, S_out)``."""
    return inl.i_exp(x, S, ops=RelaxOps(bb))


def emit_i_sigmoid(bb: relax.BlockBuilder, x: relax.Expr, S: float, out_bits: int = 8):
    """:func:`zsq_tvm.core.intnonlinear.i_sigmoid`: ``(uint<out_bits> expr, 1/(2^out_bits-1))``."""
    return inl.i_sigmoid(x, S, out_bits=out_bits, ops=RelaxOps(bb))


def emit_i_glu(bb: relax.BlockBuilder, a: relax.Expr, Sa: float, b: relax.Expr, Sb: float,
               out_scale: float | None = None, out_bits: int = 8):
    """:func:`zsq_tvm.core.intnonlinear.i_glu` (``|a| <= 2^15 - 1`` is the caller's to guarantee, e.g.
    8/16-bit storage): ``(int<out_bits> expr, S_out)``."""
    return inl.i_glu(a, Sa, b, Sb, out_scale=out_scale, out_bits=out_bits, ops=RelaxOps(bb))


def emit_i_swish(bb: relax.BlockBuilder, x: relax.Expr, S: float, out_scale: float | None = None, out_bits: int = 8):
    """:func:`zsq_tvm.core.intnonlinear.i_swish`: ``(int<out_bits> expr, S_out)``."""
    return inl.i_swish(x, S, out_scale=out_scale, out_bits=out_bits, ops=RelaxOps(bb))


def emit_i_softmax(bb: relax.BlockBuilder, x: relax.Expr, S: float, axis: int = -1, out_bits: int = 8):
    """:func:`zsq_tvm.core.intnonlinear.i_softmax`: ``(uint<out_bits> expr, 1/qmax)``."""
    return inl.i_softmax(x, S, axis=axis, out_bits=out_bits, ops=RelaxOps(bb))


def emit_i_gelu(bb: relax.BlockBuilder, x: relax.Expr, S: float, out_scale: float | None = None, out_bits: int = 8,
                in_bits: int = 8):
    """:func:`zsq_tvm.core.intnonlinear.i_gelu` (``|q| <= 2^(in_bits-1)`` is the caller's to guarantee):
    ``(int<out_bits> expr, S_out)``."""
    return inl.i_gelu(x, S, out_scale=out_scale, out_bits=out_bits, in_bits=in_bits, ops=RelaxOps(bb))


def emit_i_layernorm(bb: relax.BlockBuilder, x: relax.Expr, S: float, gamma, beta, eps: float = 1e-5,
                     out_scale: float | None = None, out_bits: int = 8):
    """:func:`zsq_tvm.core.intnonlinear.i_layernorm` over the last axis of ``x`` (static shape):
    ``(int<out_bits> expr, S_out)``."""
    return inl.i_layernorm(x, S, gamma, beta, eps=eps, out_scale=out_scale, out_bits=out_bits, ops=RelaxOps(bb))
