"""Quantize, Conformer part: the ops of a Conformer/Transformer block, integer only.

Op handlers registered into :mod:`relax_passes.quantize_registry` for :class:`relax_passes.quantize.Quantize`
(same state machine: every float var maps to an integer tensor with one scale ``QTensor``, an int32
accumulator ``Accumulator`` or a constant; each handler gets the quantizer ``q``), so the scale
bookkeeping, calibration names, overflow ledger and metadata are shared with the convolutional
models.  The integer non-linearities are emitted by :mod:`relax_passes.integer_nonlinear` from the one
definition in :mod:`zsq_tvm.core.intnonlinear`.

Before (the float module TVM's ONNX importer makes of a NeMo Conformer layer, BN folded; shapes of
conformer-ctc-small at T = 64)::

    lv16 = R.nn.layer_norm(lv15, g, b, axes=[-1])                          # [1, 16, 144]
    lv19 = R.add(R.matmul(lv18, W1), b1) ; lv20 = R.sigmoid(lv19) ; lv21 = R.multiply(lv19, lv20)
    lv25 = R.multiply(lv24, R.const(0.5))                                  # ½ FFN
    lv29 = R.split(R.matmul(lv27, Wqkv), [144, 288], axis=-1)              # q, k, v
    lv44 = R.matmul(lv43, P)                                               # P = linear_pos(pe): a constant
    lv45 = R.concat((zeros, lv44), axis=3) ; ... R.strided_slice(...)      # rel_shift
    lv49 = R.matmul(lv40, lv41)                                            # Q K^T
    lv53 = R.nn.softmax(R.divide(R.add(lv49, lv50), R.const(6.0)), axis=-1)
    lv55 = R.matmul(lv53, lv54)                                            # attention V
    lv67 = R.split(conv1d_out, 2, axis=1) ; lv71 = R.multiply(lv67[0], R.sigmoid(lv67[1]))  # GLU
    R.nn.conv2d(...)                                                       # subsampling

After (integer only; ``S`` are compile-time scales, nothing below is float)::

    ln  = <i_layernorm ops>(int8 residual)                 -> int8    (integer sqrt, dynamic shift)
    sw  = <i_glu ops>(a=int8, b=int8)                      -> int8    (x sigmoid(x) / a sigmoid(b))
    x*c, x/c by a positive scalar                          -> same integers, scale S*c / S/c (free)
    qk  = R.matmul(q_int8, kT_int8, out_dtype="int32")     -> int32 at S_q S_k; the scores' residual
                                                              sum is requantized to int16 (softmax input)
    bd  = R.matmul(q_int8, P_int8, out_dtype="int32")      -> P quantized per column (position)
    sm  = <i_softmax ops>(int16)                           -> uint8 at 1/255
    av  = R.matmul(sm_uint8, v_int8, out_dtype="int32")
    R.concat((int8 zeros, x), ...), R.split, R.strided_slice on the integer tensors; a split of an
    accumulator splits its per-channel scales; GLU/Swish sigmoids are fused into the product.
    R.nn.conv2d(int8, int8, out_dtype="int32")             -> per-output-channel weight scales

Every new int32 accumulation (conv2d, both matmuls, constant adds) gets its exact worst case in the
overflow ledger; the integer non-linearities prove their int64 ranges in their docstrings and the
numpy reference re-checks every value at run time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tvm import relax

from zsq_tvm.core import intmath
from zsq_tvm.core.overflow import dot_interval

from relax_passes import integer_nonlinear as inl
from relax_passes._util import call_op_name, const, resolve_const, shape_of
from relax_passes.quantize_registry import Accumulator, QTensor, register

__all__ = ["SOFTMAX_IN_BITS", "adds_constant_to_one_scale", "positive_scalar", "split_item"]

#: the scores feeding a softmax are kept at 16 bits (an 8-bit score grid of ~0.1 would cost
#: ~10 % relative error in each exp; I-BERT feeds int32 into its softmax)
SOFTMAX_IN_BITS = 16


@dataclass
class _Tuple:
    """Items of a ``split``: one state (``QTensor``/``Accumulator``) per output."""

    items: list


@dataclass
class _Sigmoid:
    """``sigmoid(arg)`` whose users are all products: fused into :func:`emit_i_glu` there."""

    arg: relax.Expr


def positive_scalar(c) -> bool:
    """``c`` (a constant's value or None) is one positive finite number."""
    return c is not None and c.size == 1 and float(c.reshape(())) > 0 and np.isfinite(c).all()


def _out_scale(q, var, bits=None):
    return intmath.symmetric_scale(q.alpha(var), bits or q.abits)


def _rescale(q, var, st, c):
    if isinstance(st, QTensor):
        q.state[var] = QTensor(st.expr, st.scale * c, st.bits, st.unsigned)
    else:
        q.state[var] = Accumulator(st.expr, st.scale * c, st.axis, st.ndim, st.lo, st.hi)


# ------------------------------------------------------------------ scalar multiply / divide, gates
@register("divide", "divide (by a positive scalar)",
          supported=lambda q, call, var: (resolve_const(call.args[0], q.values) is None
                                          and positive_scalar(resolve_const(call.args[1], q.values))))
def _divide(q, var, call):
    c = resolve_const(call.args[1], q.values)
    _rescale(q, var, q.get(call.args[0]), 1.0 / float(c.reshape(())))


def _multiply_supported(q, call, var) -> bool:
    """A positive scalar other than a 0/1 mask (``relax_passes.quantize`` keeps those), or a gate
    ``a * sigmoid(b)``."""
    cs = [resolve_const(x, q.values) for x in call.args]
    if sum(c is not None for c in cs) == 1:
        c = next(c for c in cs if c is not None)
        return positive_scalar(c) and not np.isin(c, (0.0, 1.0)).all()
    return any(call_op_name(q.values.get(x)) == "sigmoid" for x in call.args)


@register("multiply", "multiply (by a positive scalar / by a sigmoid)", supported=_multiply_supported)
def _multiply(q, var, call):
    """Positive scalar (scale fold) or a gate ``a * sigmoid(b)`` (GLU; Swish when ``a`` is ``b``)."""
    cs = [resolve_const(x, q.values) for x in call.args]
    if sum(c is not None for c in cs) == 1:
        c, arg = (cs[0], call.args[1]) if cs[0] is not None else (cs[1], call.args[0])
        _rescale(q, var, q.get(arg), float(c.reshape(())))
        return
    sts = [q.state.get(q.root(x)) if isinstance(x, relax.Var) else None for x in call.args]
    k = next(i for i, s in enumerate(sts) if isinstance(s, _Sigmoid))
    a_var, b_var = call.args[1 - k], sts[k].arg
    qa, qb = q.ensure_q(a_var), q.ensure_q(b_var)
    S_out = _out_scale(q, var)
    expr, _ = inl.emit_i_glu(q.bb, qa.expr, qa.scale, qb.expr, qb.scale, out_scale=S_out, out_bits=q.abits)
    q.state[var] = QTensor(expr, S_out, q.abits, False)
    kind = "swish" if q.root(a_var).same_as(q.root(b_var)) else "glu"
    q.meta["layers"].append({"tensor": q.names.get(var), "op": kind, "a_scale": qa.scale,
                             "b_scale": qb.scale, "out_scale": S_out})


@register("sigmoid", "sigmoid")
def _sigmoid(q, var, call):
    us = q.users.get(var, [])
    if us and all(call_op_name(q.values.get(u)) == "multiply" and len(q.values[u].args) == 2
                  and all(resolve_const(x, q.values) is None for x in q.values[u].args) for u in us) \
            and not any(var.same_as(o) for o in q.outputs):
        q.state[var] = _Sigmoid(call.args[0])
        return
    x = q.ensure_q(call.args[0])
    expr, S = inl.emit_i_sigmoid(q.bb, x.expr, x.scale, out_bits=q.abits)
    q.state[var] = QTensor(expr, S, q.abits, True)


# ------------------------------------------------------------------ softmax, layer norm, gelu
def _last_axis(call, axes) -> bool:
    nd = len(shape_of(call.args[0]))
    return len(axes) == 1 and axes[0] in (-1, nd - 1)


@register("nn.softmax", "nn.softmax (last axis)",
          supported=lambda q, call, var: _last_axis(call, [int(call.attrs.axis)]) and not q.drops_output_softmax(var))
def _softmax(q, var, call):
    st = q.get(call.args[0])
    x = st if isinstance(st, QTensor) else q.to_q(st, call.args[0], bits=SOFTMAX_IN_BITS)
    expr, S = inl.emit_i_softmax(q.bb, x.expr, x.scale, axis=-1, out_bits=q.abits)
    q.state[var] = QTensor(expr, S, q.abits, True)
    q.meta["layers"].append({"tensor": q.names.get(var), "op": "softmax", "in_scale": x.scale, "in_bits": x.bits})


@register("nn.layer_norm", "nn.layer_norm (last axis)",
          supported=lambda q, call, var: (_last_axis(call, [int(a) for a in call.attrs.axes])
                                          and all(resolve_const(x, q.values) is not None for x in call.args[1:3])))
def _layer_norm(q, var, call):
    x = q.ensure_q(call.args[0])
    gamma = resolve_const(call.args[1], q.values)
    beta = resolve_const(call.args[2], q.values)
    S_out = _out_scale(q, var)
    expr, _ = inl.emit_i_layernorm(q.bb, x.expr, x.scale, gamma, beta, eps=float(call.attrs.epsilon),
                                   out_scale=S_out, out_bits=q.abits)
    q.state[var] = QTensor(expr, S_out, q.abits, False)
    q.meta["layers"].append({"tensor": q.names.get(var), "op": "layer_norm", "in_scale": x.scale,
                             "out_scale": S_out})


@register("nn.gelu", "nn.gelu")
def _gelu(q, var, call):
    x = q.ensure_q(call.args[0])
    S_out = _out_scale(q, var)
    expr, _ = inl.emit_i_gelu(q.bb, x.expr, x.scale, out_scale=S_out, out_bits=q.abits,
                              in_bits=x.bits + (1 if x.unsigned else 0))
    q.state[var] = QTensor(expr, S_out, q.abits, False)
    q.meta["layers"].append({"tensor": q.names.get(var), "op": "gelu", "in_scale": x.scale, "out_scale": S_out})


# ------------------------------------------------------------------ split / items / concat
@register("split", "split")
def _split(q, var, call):
    st = q.get(call.args[0])
    shape = shape_of(call.args[0])
    axis = int(call.attrs.axis) % len(shape)
    ind = call.attrs.indices_or_sections
    if isinstance(ind, int) or hasattr(ind, "value"):
        n = int(ind.value if hasattr(ind, "value") else ind)
        bounds = [shape[axis] // n * i for i in range(n + 1)]
    else:
        bounds = [0] + [int(i) for i in ind] + [shape[axis]]
    tup = q.bb.emit(relax.op.split(st.expr, call.attrs.indices_or_sections, axis))
    items = []
    for i in range(len(bounds) - 1):
        e = q.bb.emit(relax.TupleGetItem(tup, i))
        if isinstance(st, QTensor):
            items.append(QTensor(e, st.scale, st.bits, st.unsigned))
            continue
        sl = slice(bounds[i], bounds[i + 1])
        per = st.scale.size > 1 and axis == st.axis % st.ndim
        cut = (lambda a: a[sl] if per and np.asarray(a).size == st.scale.size else a)  # noqa: E731
        items.append(Accumulator(e, cut(st.scale), st.axis, st.ndim, cut(st.lo), cut(st.hi)))
    q.state[var] = _Tuple(items)


def split_item(q, var, v) -> bool:
    """``var = v`` (a TupleGetItem) takes the state of item ``v.index`` of a quantized ``split``; False: ``v``
    is not an item of one."""
    st = q.state.get(v.tuple_value)
    if not isinstance(st, _Tuple):
        return False
    q.state[var] = st.items[int(v.index)]
    return True


def _concat_supported(q, call, var) -> bool:
    fields = call.args[0].fields if isinstance(call.args[0], relax.Tuple) else []
    acts = [f for f in fields if resolve_const(f, q.values) is None]
    zeros = [resolve_const(f, q.values) for f in fields if resolve_const(f, q.values) is not None]
    return len(acts) == 1 and all(not z.any() for z in zeros)  # a zero pad (pads_to_concat)


@register("concat", "concat (with zeros)", supported=_concat_supported)
def _concat(q, var, call):
    fields = list(call.args[0].fields)
    qs = {i: q.ensure_q(f) for i, f in enumerate(fields) if resolve_const(f, q.values) is None}
    first = next(iter(qs.values()))  # exactly one activation, the rest zeros (_concat_supported)
    dtype = intmath.storage_dtype(first.bits, first.unsigned)
    parts = [qs[i].expr if i in qs else const(resolve_const(f, q.values), dtype) for i, f in enumerate(fields)]
    expr = q.bb.emit(relax.op.concat(parts, axis=int(call.attrs.axis)))
    q.state[var] = QTensor(expr, first.scale, first.bits, first.unsigned)


# ------------------------------------------------------------------ conv2d, matmuls, constant adds
def _conv2d_supported(q, call, var) -> bool:
    a = call.attrs
    return (a.data_layout == "NCHW" and a.kernel_layout == "OIHW" and a.out_layout == "NCHW"
            and int(a.groups) == 1 and resolve_const(call.args[1], q.values) is not None)


@register("nn.conv2d", "nn.conv2d", supported=_conv2d_supported)
def _conv2d(q, var, call):
    x, wq, sw, lo, hi, x_dtype, rec = q.conv_weights(var, call, "conv2d")
    a = call.attrs
    expr = q.bb.emit(relax.op.nn.conv2d(
        x.expr, const(wq, "int8"), strides=a.strides, padding=a.padding, dilation=a.dilation, groups=1,
        data_layout="NCHW", kernel_layout="OIHW", out_layout="NCHW", out_dtype="int32"))
    rec["var"] = expr.name
    q.meta["layers"].append({"tensor": q.names[var], "op": "conv2d", "x_scale": x.scale,
                             "w_scale": sw.tolist(), "x_dtype": x_dtype})
    q.state[var] = Accumulator(expr, x.scale * sw, 1, 4, lo, hi)


def _matmul_supported(q, call, var) -> bool:
    """Activation x activation (Q K^T, attention V) or activation x N-d constant (positions); the 2-D weight
    case is ``relax_passes.quantize``'s."""
    w = resolve_const(call.args[1], q.values)
    return resolve_const(call.args[0], q.values) is None and (w is None or w.ndim != 2)


@register("matmul", "matmul (of two activations / by an N-d constant)", supported=_matmul_supported)
def _matmul(q, var, call):
    w = resolve_const(call.args[1], q.values)
    x = q.ensure_q(call.args[0])
    ndim = len(shape_of(var))
    if w is not None:  # per column (last axis) of the constant, e.g. per relative position
        wq, sw = intmath.quantize_per_channel(w, q.wbits, axis=w.ndim - 1)
        lo, hi = dot_interval(wq, w.ndim - 1, x.qmin, x.qmax)  # summed over the batch/head axes too: sound
        rhs, scale, kind = const(wq, "int8"), x.scale * sw, "matmul"
    else:
        y = q.ensure_q(call.args[1])
        K = int(shape_of(call.args[0])[-1])
        ends = [p * r for p in (x.qmin, x.qmax) for r in (y.qmin, y.qmax)]
        lo, hi = np.array([K * min(ends)], np.int64), np.array([K * max(ends)], np.int64)
        rhs, scale, kind = y.expr, np.array([x.scale * y.scale]), "matmul_act"
    rec = q.ledger.accumulate(q.layer(var), kind, lo, hi)
    # both operands widened to int32 first: Relax matmul wants one input dtype (uint8 x int8 here)
    lhs = q.bb.emit(relax.op.astype(x.expr, "int32")) if w is None else x.expr
    if w is None:
        rhs = q.bb.emit(relax.op.astype(rhs, "int32"))
    expr = q.bb.emit(relax.op.matmul(lhs, rhs, out_dtype="int32"))
    rec["var"] = expr.name
    q.meta["layers"].append({"tensor": q.names[var], "op": kind, "x_scale": x.scale,
                             "w_scale": np.asarray(scale / x.scale).tolist()})
    q.state[var] = Accumulator(expr, np.asarray(scale, dtype=np.float64).reshape(-1), ndim - 1, ndim, lo, hi)


def adds_constant_to_one_scale(q, call) -> bool:
    """``add`` of a constant (of any broadcastable shape) to an activation with ONE scale: :func:`_add_constant`
    handles it; a per-channel bias or a residual sum is ``relax_passes.quantize``'s."""
    sa, sb = q.get(call.args[0]), q.get(call.args[1])
    if isinstance(sa, np.ndarray) == isinstance(sb, np.ndarray):
        return False
    st = sb if isinstance(sa, np.ndarray) else sa
    return not (isinstance(st, Accumulator) and st.scale.size > 1)


@register("add", "add (a constant to a one-scale activation)",
          claims=lambda q, call, var: adds_constant_to_one_scale(q, call))
def _add_constant(q, var, call):
    """The constant in the activation's scale, int32 add (e.g. the attention biases ``pos_bias_u/v``
    [heads, d_k])."""
    sa, sb = q.get(call.args[0]), q.get(call.args[1])
    c, st, arg = (sa, sb, call.args[1]) if isinstance(sa, np.ndarray) else (sb, sa, call.args[0])
    if isinstance(st, QTensor):
        expr = q.bb.emit(relax.op.astype(st.expr, "int32"))
        s, lo0, hi0 = st.scale, np.int64(st.qmin), np.int64(st.qmax)
    else:
        expr, s = st.expr, float(st.scale.reshape(-1)[0])
        lo0, hi0 = np.int64(np.min(st.lo)), np.int64(np.max(st.hi))
    cq = q.quantize_bias(var, arg, c, s)  # BiasOverflowError (layer, scales, fix) past int32
    lo, hi = np.array([lo0 + int(cq.min())], np.int64), np.array([hi0 + int(cq.max())], np.int64)
    rec = q.ledger.accumulate(q.layer(var), "bias_add", lo, hi)
    expr = q.bb.emit(relax.op.add(expr, const(cq, "int32")))
    rec["var"] = expr.name
    ndim = len(shape_of(var))
    q.state[var] = Accumulator(expr, np.array([s], dtype=np.float64), ndim - 1, ndim, lo, hi)
