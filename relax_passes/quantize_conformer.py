"""Quantize, Conformer part: the ops of a Conformer/Transformer block, integer only.

A mixin of :class:`relax_passes.quantize._Quantizer` (same state machine: every float var maps to
an integer tensor with one scale ``_QT``, an int32 accumulator ``_Acc`` or a constant), so the scale
bookkeeping, calibration names, overflow ledger and metadata are shared with the convolutional
models.  The integer non-linearities are emitted by :mod:`relax_passes.integer_nonlinear`, whose
``_k_*`` numpy kernels in :mod:`zsq_tvm.intnonlinear` are the specification.

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

from zsq_tvm import intmath
from zsq_tvm.overflow import dot_interval

from . import integer_nonlinear as inl
from ._util import call_op_name, const, resolve_const, shape_of

__all__ = ["ConformerOps", "CONFORMER_OPS", "SOFTMAX_IN_BITS"]

#: ops this mixin adds to Quantize (dispatch name -> handler)
CONFORMER_OPS = {"nn.conv2d": "op_conv2d", "sigmoid": "op_sigmoid", "nn.softmax": "op_int_softmax",
                 "nn.layer_norm": "op_layer_norm", "nn.gelu": "op_gelu", "split": "op_split",
                 "concat": "op_concat", "divide": "op_divide"}
#: the scores feeding a softmax are kept at 16 bits (an 8-bit score grid of ~0.1 would cost
#: ~10 % relative error in each exp; I-BERT feeds int32 into its softmax)
SOFTMAX_IN_BITS = 16


@dataclass
class _Tuple:
    """Items of a ``split``: one state (``_QT``/``_Acc``) per output."""

    items: list


@dataclass
class _Sigmoid:
    """``sigmoid(arg)`` whose users are all products: fused into :func:`emit_i_glu` there."""

    arg: relax.Expr


def _pos_scalar(c):
    return c is not None and c.size == 1 and float(c.reshape(())) > 0 and np.isfinite(c).all()


class ConformerOps:
    """Handlers for the Conformer's ops (mixed into ``_Quantizer``; uses its helpers)."""

    # ------------------------------------------------------------------ support check
    def conformer_supported(self, op, v, var) -> bool:
        vals = self.values
        if op == "nn.conv2d":
            a = v.attrs
            return (a.data_layout == "NCHW" and a.kernel_layout == "OIHW" and a.out_layout == "NCHW"
                    and int(a.groups) == 1 and resolve_const(v.args[1], vals) is not None)
        if op in ("multiply", "divide"):
            cs = [resolve_const(x, vals) for x in v.args]
            if op == "divide":
                return cs[0] is None and _pos_scalar(cs[1])
            if sum(c is not None for c in cs) == 1:
                return _pos_scalar(next(c for c in cs if c is not None))
            return any(call_op_name(vals.get(x)) == "sigmoid" for x in v.args)
        if op == "matmul":
            return resolve_const(v.args[0], vals) is None
        if op in ("nn.softmax", "nn.layer_norm"):
            nd = len(shape_of(v.args[0]))
            axes = [int(v.attrs.axis)] if op == "nn.softmax" else [int(x) for x in v.attrs.axes]
            ok = len(axes) == 1 and axes[0] in (-1, nd - 1)
            if op == "nn.layer_norm":
                ok = ok and all(resolve_const(x, vals) is not None for x in v.args[1:3])
            return ok
        if op in ("sigmoid", "nn.gelu", "split"):
            return True
        if op == "concat":
            fields = v.args[0].fields if isinstance(v.args[0], relax.Tuple) else []
            acts = [f for f in fields if resolve_const(f, vals) is None]
            zeros = [resolve_const(f, vals) for f in fields if resolve_const(f, vals) is not None]
            return len(acts) == 1 and all(not z.any() for z in zeros)  # a zero pad (pads_to_concat)
        return False

    # ------------------------------------------------------------------ helpers
    def act_bits(self, var, depth=0):
        """Bits for the integer tensor of ``var``: :data:`SOFTMAX_IN_BITS` when it only feeds a softmax
        (directly or through a positive scalar multiply/divide), else ``abits``."""
        us = self.users.get(var, [])
        if len(us) == 1 and depth < 4:
            op = call_op_name(self.values.get(us[0]))
            if op == "nn.softmax":
                return SOFTMAX_IN_BITS
            if op in ("multiply", "divide") and any(_pos_scalar(resolve_const(x, self.values))
                                                    for x in self.values[us[0]].args):
                return self.act_bits(us[0], depth + 1)
        return self.abits

    def _out_scale(self, var, bits=None):
        return intmath.symmetric_scale(self.alpha(var), bits or self.abits)

    def _rescale(self, var, st, c):
        from .quantize import _QT, _Acc

        if isinstance(st, _QT):
            self.state[var] = _QT(st.expr, st.scale * c, st.bits, st.unsigned)
        else:
            self.state[var] = _Acc(st.expr, st.scale * c, st.axis, st.ndim, st.lo, st.hi)

    # ------------------------------------------------------------------ scalar multiply / divide, gates
    def op_divide(self, var, call):
        c = resolve_const(call.args[1], self.values)
        self._rescale(var, self.get(call.args[0]), 1.0 / float(c.reshape(())))

    def op_multiply_conf(self, var, call) -> bool:
        """Positive scalar (scale fold) or a gate ``a * sigmoid(b)``; False: leave it to the 0/1 mask path."""
        from .quantize import _QT

        cs = [resolve_const(x, self.values) for x in call.args]
        if sum(c is not None for c in cs) == 1:
            c, arg = (cs[0], call.args[1]) if cs[0] is not None else (cs[1], call.args[0])
            if np.isin(c, (0.0, 1.0)).all():  # 0/1 mask (NeMo's padding masks): op_multiply
                return False
            self._rescale(var, self.get(arg), float(c.reshape(())))
            return True
        sts = [self.state.get(self.root(x)) if isinstance(x, relax.Var) else None for x in call.args]
        k = next(i for i, s in enumerate(sts) if isinstance(s, _Sigmoid))
        a_var, b_var = call.args[1 - k], sts[k].arg
        qa, qb = self.ensure_q(a_var), self.ensure_q(b_var)
        S_out = self._out_scale(var)
        expr, _ = inl.emit_i_glu(self.bb, qa.expr, qa.scale, qb.expr, qb.scale, out_scale=S_out,
                                 out_bits=self.abits)
        self.state[var] = _QT(expr, S_out, self.abits, False)
        kind = "swish" if self.root(a_var).same_as(self.root(b_var)) else "glu"
        self.meta["layers"].append({"tensor": self.names.get(var), "op": kind, "a_scale": qa.scale,
                                    "b_scale": qb.scale, "out_scale": S_out})
        return True

    def op_sigmoid(self, var, call):
        from .quantize import _QT

        us = self.users.get(var, [])
        if us and all(call_op_name(self.values.get(u)) == "multiply" and len(self.values[u].args) == 2
                      and all(resolve_const(x, self.values) is None for x in self.values[u].args) for u in us) \
                and not any(var.same_as(o) for o in self.outputs):
            self.state[var] = _Sigmoid(call.args[0])
            return
        q = self.ensure_q(call.args[0])
        expr, S = inl.emit_i_sigmoid(self.bb, q.expr, q.scale, out_bits=self.abits)
        self.state[var] = _QT(expr, S, self.abits, True)

    # ------------------------------------------------------------------ softmax, layer norm, gelu
    def op_int_softmax(self, var, call):
        from .quantize import _QT

        st = self.get(call.args[0])
        q = st if isinstance(st, _QT) else self.to_q(st, call.args[0], bits=SOFTMAX_IN_BITS)
        expr, S = inl.emit_i_softmax(self.bb, q.expr, q.scale, axis=-1, out_bits=self.abits)
        self.state[var] = _QT(expr, S, self.abits, True)
        self.meta["layers"].append({"tensor": self.names.get(var), "op": "softmax", "in_scale": q.scale,
                                    "in_bits": q.bits})

    def op_layer_norm(self, var, call):
        from .quantize import _QT

        q = self.ensure_q(call.args[0])
        gamma = resolve_const(call.args[1], self.values)
        beta = resolve_const(call.args[2], self.values)
        S_out = self._out_scale(var)
        expr, _ = inl.emit_i_layernorm(self.bb, q.expr, q.scale, shape_of(call.args[0]), gamma, beta,
                                       eps=float(call.attrs.epsilon), out_scale=S_out, out_bits=self.abits)
        self.state[var] = _QT(expr, S_out, self.abits, False)
        self.meta["layers"].append({"tensor": self.names.get(var), "op": "layer_norm", "in_scale": q.scale,
                                    "out_scale": S_out})

    def op_gelu(self, var, call):
        from .quantize import _QT

        q = self.ensure_q(call.args[0])
        S_out = self._out_scale(var)
        expr, _ = inl.emit_i_gelu(self.bb, q.expr, q.scale, out_scale=S_out, out_bits=self.abits,
                                  in_bits=q.bits + (1 if q.unsigned else 0))
        self.state[var] = _QT(expr, S_out, self.abits, False)
        self.meta["layers"].append({"tensor": self.names.get(var), "op": "gelu", "in_scale": q.scale,
                                    "out_scale": S_out})

    # ------------------------------------------------------------------ split / items / concat
    def op_split(self, var, call):
        from .quantize import _QT, _Acc

        st = self.get(call.args[0])
        shape = shape_of(call.args[0])
        axis = int(call.attrs.axis) % len(shape)
        ind = call.attrs.indices_or_sections
        if isinstance(ind, int) or hasattr(ind, "value"):
            n = int(ind.value if hasattr(ind, "value") else ind)
            bounds = [shape[axis] // n * i for i in range(n + 1)]
        else:
            bounds = [0] + [int(i) for i in ind] + [shape[axis]]
        tup = self.bb.emit(relax.op.split(st.expr, call.attrs.indices_or_sections, axis))
        items = []
        for i in range(len(bounds) - 1):
            e = self.bb.emit(relax.TupleGetItem(tup, i))
            if isinstance(st, _QT):
                items.append(_QT(e, st.scale, st.bits, st.unsigned))
                continue
            sl = slice(bounds[i], bounds[i + 1])
            per = st.scale.size > 1 and axis == st.axis % st.ndim
            cut = (lambda a: a[sl] if per and np.asarray(a).size == st.scale.size else a)  # noqa: E731
            items.append(_Acc(e, cut(st.scale), st.axis, st.ndim, cut(st.lo), cut(st.hi)))
        self.state[var] = _Tuple(items)

    def op_tuple_item(self, var, v) -> bool:
        st = self.state.get(v.tuple_value)
        if not isinstance(st, _Tuple):
            return False
        self.state[var] = st.items[int(v.index)]
        return True

    def op_concat(self, var, call):
        from .quantize import _QT

        fields = list(call.args[0].fields)
        qs = {i: self.ensure_q(f) for i, f in enumerate(fields) if resolve_const(f, self.values) is None}
        first = next(iter(qs.values()))  # exactly one activation, the rest zeros (conformer_supported)
        dtype = intmath.storage_dtype(first.bits, first.unsigned)
        parts = [qs[i].expr if i in qs else const(resolve_const(f, self.values), dtype) for i, f in enumerate(fields)]
        expr = self.bb.emit(relax.op.concat(parts, axis=int(call.attrs.axis)))
        self.state[var] = _QT(expr, first.scale, first.bits, first.unsigned)

    # ------------------------------------------------------------------ conv2d, matmuls, constant adds
    def op_conv2d(self, var, call):
        from .quantize import _Acc

        x, wq, sw, lo, hi, x_dtype, rec = self._conv_weights(var, call, "conv2d")
        a = call.attrs
        expr = self.bb.emit(relax.op.nn.conv2d(
            x.expr, const(wq, "int8"), strides=a.strides, padding=a.padding, dilation=a.dilation, groups=1,
            data_layout="NCHW", kernel_layout="OIHW", out_layout="NCHW", out_dtype="int32"))
        rec["var"] = expr.name
        self.meta["layers"].append({"tensor": self.names[var], "op": "conv2d", "x_scale": x.scale,
                                    "w_scale": sw.tolist(), "x_dtype": x_dtype})
        self.state[var] = _Acc(expr, x.scale * sw, 1, 4, lo, hi)

    def op_matmul_conf(self, var, call) -> bool:
        """Activation x activation (Q K^T, attention V) or activation x N-d constant (positions);
        False: the 2-D weight case of ``op_matmul``."""
        from .quantize import _Acc

        w = resolve_const(call.args[1], self.values)
        if w is not None and w.ndim == 2:
            return False
        x = self.ensure_q(call.args[0])
        ndim = len(shape_of(var))
        if w is not None:  # per column (last axis) of the constant, e.g. per relative position
            wq, sw = intmath.quantize_per_channel(w, self.wbits, axis=w.ndim - 1)
            lo, hi = dot_interval(wq, w.ndim - 1, x.qmin, x.qmax)  # summed over the batch/head axes too: sound
            rhs, scale, kind = const(wq, "int8"), x.scale * sw, "matmul"
        else:
            y = self.ensure_q(call.args[1])
            K = int(shape_of(call.args[0])[-1])
            ends = [p * q for p in (x.qmin, x.qmax) for q in (y.qmin, y.qmax)]
            lo, hi = np.array([K * min(ends)], np.int64), np.array([K * max(ends)], np.int64)
            rhs, scale, kind = y.expr, np.array([x.scale * y.scale]), "matmul_act"
        rec = self.ledger.accumulate(self._layer(var), kind, lo, hi)
        # both operands widened to int32 first: Relax matmul wants one input dtype (uint8 x int8 here)
        lhs = self.bb.emit(relax.op.astype(x.expr, "int32")) if w is None else x.expr
        if w is None:
            rhs = self.bb.emit(relax.op.astype(rhs, "int32"))
        expr = self.bb.emit(relax.op.matmul(lhs, rhs, out_dtype="int32"))
        rec["var"] = expr.name
        self.meta["layers"].append({"tensor": self.names[var], "op": kind, "x_scale": x.scale,
                                    "w_scale": np.asarray(scale / x.scale).tolist()})
        self.state[var] = _Acc(expr, np.asarray(scale, dtype=np.float64).reshape(-1), ndim - 1, ndim, lo, hi)
        return True

    def op_add_conf(self, var, call) -> bool:
        """Activation with ONE scale + a constant of any broadcastable shape (e.g. the attention biases
        ``pos_bias_u/v`` [heads, d_k]): the constant in the activation's scale, int32 add.  False:
        per-channel bias / residual paths of ``op_add``."""
        from .quantize import _QT, _Acc

        sa, sb = self.get(call.args[0]), self.get(call.args[1])
        if isinstance(sa, np.ndarray) == isinstance(sb, np.ndarray):
            return False
        c, st, arg = (sa, sb, call.args[1]) if isinstance(sa, np.ndarray) else (sb, sa, call.args[0])
        if isinstance(st, _Acc) and st.scale.size > 1:
            return False
        if isinstance(st, _QT):
            expr = self.bb.emit(relax.op.astype(st.expr, "int32"))
            s, lo0, hi0 = st.scale, np.int64(st.qmin), np.int64(st.qmax)
        else:
            expr, s = st.expr, float(st.scale.reshape(-1)[0])
            lo0, hi0 = np.int64(np.min(st.lo)), np.int64(np.max(st.hi))
        cq = self.quantize_bias(var, arg, c, s)  # BiasOverflowError (layer, scales, fix) past int32
        lo, hi = np.array([lo0 + int(cq.min())], np.int64), np.array([hi0 + int(cq.max())], np.int64)
        rec = self.ledger.accumulate(self._layer(var), "bias_add", lo, hi)
        expr = self.bb.emit(relax.op.add(expr, const(cq, "int32")))
        rec["var"] = expr.name
        ndim = len(shape_of(var))
        self.state[var] = _Acc(expr, np.array([s], dtype=np.float64), ndim - 1, ndim, lo, hi)
        return True
