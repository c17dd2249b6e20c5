"""Quantize: BN-folded float Relax module -> integer-only Relax module (paper §2.1-2.2, W8A8).

Before (after :class:`FoldBatchNorm`; ``R.nn.dropout`` may still be there)::

    lv  = R.nn.conv1d(mel, W0)              ; lv1 = R.add(lv, b0)      ; lv2 = R.nn.relu(lv1)
    lv3 = R.nn.conv1d(lv2, W1, groups=C)    ; lv4 = R.nn.conv1d(lv3, W2); lv5 = R.add(lv4, b2)
    lv6 = R.nn.conv1d(lv2, Wr)              ; lv7 = R.add(lv6, br)
    lv8 = R.add(lv5, lv7)                   ; lv9 = R.nn.relu(lv8)                 # residual block
    gv  = R.add(R.nn.conv1d(lv9, Wd), bd)                                          # logits

After (every tensor between the two marked kernels is an integer)::

    q0  = R.call_tir(zsq_input_quantize, (mel,))   # int8, the only float op before: eq. 1
    a0  = R.add(R.nn.conv1d(q0, W0q, out_dtype="int32"), b0q)          # int8 x int8 -> int32
    u0  = requant(a0, M, s, 0, 255) -> uint8                           # ReLU = clamp into [0, 255]
    a1  = R.nn.conv1d(u0, W1q, groups=C, out_dtype="int32")            # uint8 x int8 -> int32
    ...
    r5  = requant(a5, M5, s5, -2^30, 2^30-1) -> int32                  # residual branches rescaled
    r7  = requant(a7, M7, s7, -2^30, 2^30-1) -> int32                  #   into the common scale,
    u9  = astype(clip(R.add(r5, r7), 0, 255), "uint8")                 #   added, clamped (+ReLU)
    ad  = R.add(R.nn.conv1d(u9, Wdq, out_dtype="int32"), bdq)
    gq  = requant(ad, Md, sd, -127, 127) -> int8
    gv  = R.call_tir(zsq_output_dequantize, (gq,))   # float32 = S_out * q, the only float op after

where ``requant(acc, M, s, lo, hi)`` is emitted as the plain Relax integer ops of
:func:`zsq_tvm.core.intmath.requantize`: ``astype int64 -> multiply M -> add 2^(s-1) -> right_shift s ->
clip -> astype``, so FuseOps folds it into the conv as an epilogue.

Scheme: symmetric everywhere (zero point 0).  Weights per output channel (``wbits``, stored int8),
activations per tensor (``abits``) with clipping values ``ranges[name]["alpha"]`` from
:func:`zsq_tvm.calibrate.calibrate`; post-ReLU activations use the unsigned range
``[0, 2^abits - 1]`` (uint8), others ``[-(2^(abits-1)-1), 2^(abits-1)-1]`` (int8).  Biases become
int32 in the accumulator scale ``S_x S_w[c]``.  Requantization multipliers ``S_in/S_out`` become
dyadic ``(M, s)`` pairs (:func:`zsq_tvm.core.intmath.dyadic`).  Dropout is removed; a trailing
``softmax``/``log_softmax`` (monotone per frame; CTC greedy decoding needs only the argmax) is
dropped when ``drop_output_softmax`` (recorded in the metadata).

Conventions other tools rely on:

* the input quantize and output dequantize are ``R.call_tir`` of PrimFuncs named
  ``zsq_input_quantize``/``zsq_output_dequantize`` with function attributes ``"zsq.role"``
  (``"input_quantize"``/``"output_dequantize"``), ``"zsq.scale"``, ``"zsq.alpha"`` (input only),
  ``"zsq.bits"``, ``"zsq.unsigned"`` and ``"op_pattern": 8`` (opaque: FuseOps never merges them);
* ``main`` gets attributes ``"zsq.quantized": 1``, ``"zsq.input_scale"``, ``"zsq.output_scale"``;
* all scales, multipliers and shifts are in the metadata :func:`quantize_module` returns (JSON-serialisable).

Overflow is proved, not hoped for: every int32 accumulation (conv1d incl. depthwise, matmul, bias add,
residual sum) and every int64 requantize product gets its exact worst case from the quantized weights
(:mod:`zsq_tvm.core.overflow`); the margins go to ``metadata["overflow"]`` and a layer whose bound can pass
2^31-1 is refused with :class:`zsq_tvm.core.overflow.AccumulatorOverflowError` (layer, bound, fix).

Conformer/Transformer ops (``nn.conv2d``, ``sigmoid`` incl. Swish/GLU products, attention ``matmul``
of two activations, ``nn.softmax``, ``nn.layer_norm``, ``nn.gelu``, ``split``, ``concat`` with zeros,
scalar ``multiply``/``divide``) are handled by :mod:`relax_passes.quantize_conformer` (its docstring shows
that IR before and after).

Each op is one handler in the op table :mod:`relax_passes.quantize_registry` (supported?, emit): the
handlers below and the Conformer's register themselves there, :data:`SUPPORTED_OPS` lists them, and the
driver (:meth:`_Quantizer.run`) emits each binding with the one handler that claims it.  Ops no handler
supports are reported all at once (op and binding var) as :class:`zsq_tvm.core.errors.UnsupportedOpsError`
before anything is built.

Usage::

    qmod, metadata = quantize_module(folded_mod, ranges, wbits=8, abits=8)
    qmod = Quantize(ranges, wbits=8, abits=8)(folded_mod)       # the same as a module pass
"""

from __future__ import annotations

import json

import numpy as np
import tvm
import tvm_ffi
from tvm import relax, te, tirx

from zsq_tvm.core import intmath, intops
from zsq_tvm.core.errors import BitWidthError, UnsupportedOpsError
from zsq_tvm.core.overflow import (AccumulatorOverflowError, OverflowLedger, bias_overflow_error, dot_interval,
                              requant_interval)

from relax_passes._util import bindings, call_op_name, const, dtype_of, main_function, resolve_const, shape_of, tensor_names
from relax_passes.quantize_conformer import SOFTMAX_IN_BITS, adds_constant_to_one_scale, positive_scalar, split_item
from relax_passes.quantize_registry import Accumulator, HANDLERS, QTensor, claiming_handler, register, supported_ops

__all__ = ["Quantize", "quantize_module", "QuantizeUnsupportedOps", "AccumulatorOverflowError", "SUPPORTED_OPS",
           "INPUT_QUANTIZE", "OUTPUT_DEQUANTIZE", "ROLE_ATTR"]

ROLE_ATTR = "zsq.role"
INPUT_QUANTIZE = "input_quantize"
OUTPUT_DEQUANTIZE = "output_dequantize"


def input_quantize_te(alpha: float, scale: float, qmin: int, qmax: int, dtype: str):
    """``x -> codes``: :func:`zsq_tvm.core.intmath.quantize` in float32 (rint(clip(x, -a, a) / S), clipped to the
    code range) as a ``te`` compute over any shape -- the input boundary kernel (also of a symbolic-T module)."""
    a32, s32 = float(np.float32(alpha)), float(np.float32(scale))

    def fq(x):
        def body(*i):
            v = tirx.max(tirx.min(x(*i), tirx.const(a32, "float32")), tirx.const(-a32, "float32"))
            r = tirx.nearbyint(v / tirx.const(s32, "float32"))
            r = tirx.max(tirx.min(r, tirx.const(float(qmax), "float32")), tirx.const(float(qmin), "float32"))
            return tirx.Cast(dtype, r)
        return te.compute(x.shape, body, name="q")
    return fq


def output_dequantize_te(scale: float):
    """``codes -> float32(codes) * float32(scale)`` as a ``te`` compute over any shape: the output boundary kernel."""
    s32 = float(np.float32(scale))
    return lambda x: te.compute(x.shape, lambda *i: tirx.Cast("float32", x(*i)) * tirx.const(s32, "float32"), name="dq")
# residual branches are rescaled into int32 but clipped to +-2^30 so the int32 sum cannot wrap
RESIDUAL_RANGE = (-(2**30), 2**30 - 1)

_SHAPE_OPS = ("reshape", "permute_dims", "squeeze", "expand_dims", "strided_slice")
_SOFTMAX_OPS = ("nn.softmax", "nn.log_softmax")


class QuantizeUnsupportedOps(UnsupportedOpsError):
    """UnsupportedOpsError that survives TVM's pass FFI (re-created there from its message)."""

    def __init__(self, unsupported, supported=None):
        if isinstance(unsupported, str):  # re-raised by tvm_ffi from the message
            Exception.__init__(self, unsupported)
            self.unsupported, self.cause, self.fix = {}, unsupported, None
        else:
            super().__init__(unsupported, supported or ())


try:  # a Python pass raising inside TVM crosses the FFI; keep the error's class on the way back
    tvm_ffi.register_error("QuantizeUnsupportedOps", QuantizeUnsupportedOps)
except Exception:  # pragma: no cover - already registered
    pass


def _dyadic_product_var(bb, requantized):
    """The var of :func:`zsq_tvm.core.intops.dyadic_product` inside ``requantized`` = ``clip(product >> s)``."""
    shifted = bb.lookup_binding(requantized).args[0]
    return bb.lookup_binding(shifted).args[0]


def _bcast_shape(ndim, axis, c):
    shape = [1] * ndim
    shape[axis] = c
    return shape


class _Quantizer:
    """One quantization run over ``func``: the state every op handler gets as ``q`` (float var -> QTensor /
    Accumulator / constant, calibration names, overflow ledger, metadata) and the helpers they share."""

    def __init__(self, func, ranges, wbits, abits, out_bits, drop_output_softmax, dequantize_output):
        self.func = func
        self.ranges = ranges
        self.wbits, self.abits, self.out_bits = wbits, abits, out_bits
        self.drop_output_softmax = drop_output_softmax
        self.dequantize_output = dequantize_output
        self.binds = bindings(func)
        self.values = {b.var: b.value for b in self.binds}
        self.names = tensor_names(func)
        self.users: dict = {}
        for b in self.binds:
            relax.analysis.post_order_visit(b.value, lambda e, v=b.var: self.users.setdefault(e, []).append(v)
                                            if isinstance(e, relax.Var) else None)
        self.outputs = self._output_vars(func.body.body)
        self.state: dict = {}     # original var -> QTensor | Accumulator | np.ndarray (constant) | handler state
        self.alias: dict = {}     # removed op result -> its input var
        self.skip: set = set()    # bindings already emitted by a fused pattern
        self.dropouts: set = set()  # removed dropouts (their TupleGetItem [0] aliases the input)
        self.memo_q: dict = {}
        self.ledger = OverflowLedger()
        self.meta = {"version": 1, "wbits": wbits, "abits": abits, "out_bits": out_bits, "input": [],
                     "output": [], "layers": [], "requantize": [], "dropped_ops": []}

    # ---------------------------------------------------------------- analysis
    @staticmethod
    def _output_vars(ret):
        if isinstance(ret, relax.Tuple):
            return [f for f in ret.fields]
        return [ret]

    def label(self, var):
        nm = self.names.get(var)
        return f"{var.name} ({nm})" if nm else var.name

    def layer(self, var):
        """Layer name for messages/metadata: the ONNX tensor name when known, else the Relax var."""
        nm = self.names.get(var)
        return f"{nm} ({var.name})" if nm else var.name

    def flows_to_output_only(self, var, depth=0):
        if any(var.same_as(o) for o in self.outputs):
            return True
        us = self.users.get(var, [])
        return bool(us) and depth < 8 and all(
            call_op_name(self.values.get(u)) in _SHAPE_OPS and self.flows_to_output_only(u, depth + 1) for u in us)

    def drops_output_softmax(self, var) -> bool:
        """A softmax/log_softmax that only feeds the output is dropped (argmax-preserving) when asked to."""
        return bool(self.drop_output_softmax) and self.flows_to_output_only(var)

    def act_bits(self, var, depth=0):
        """Bits for the integer tensor of ``var``: :data:`SOFTMAX_IN_BITS` when it only feeds a softmax
        (directly or through a positive scalar multiply/divide), else ``abits``."""
        us = self.users.get(var, [])
        if len(us) == 1 and depth < 4:
            op = call_op_name(self.values.get(us[0]))
            if op == "nn.softmax":
                return SOFTMAX_IN_BITS
            if op in ("multiply", "divide") and any(positive_scalar(resolve_const(x, self.values))
                                                    for x in self.values[us[0]].args):
                return self.act_bits(us[0], depth + 1)
        return self.abits

    def check_supported(self):
        bad: dict[str, list[str]] = {}
        dropouts = {b.var for b in self.binds if call_op_name(b.value) == "nn.dropout"}
        for b in self.binds:
            v = b.value
            op = call_op_name(v)
            if resolve_const(v, self.values) is not None:
                continue
            if isinstance(v, relax.TupleGetItem):
                if v.tuple_value not in self.values and not (v.tuple_value in dropouts and v.index == 0):
                    bad.setdefault("TupleGetItem", []).append(self.label(b.var))
                continue  # items of a tuple-producing op: that op is reported at its own binding
            if isinstance(v, relax.Var):
                continue
            ok = any(h.supported(self, v, b.var) for h in HANDLERS.get(op, ()))
            if not (dtype_of(b.var) or "float").startswith("float") and op not in _SHAPE_OPS:
                ok = False
            if not ok:
                bad.setdefault(op or type(v).__name__, []).append(self.label(b.var))
        if bad:
            raise QuantizeUnsupportedOps(bad, supported_ops())

    # ---------------------------------------------------------------- helpers
    def root(self, var):
        while var in self.alias:
            var = self.alias[var]
        return var

    def alpha(self, var):
        var = self.root(var)
        name = self.names.get(var)
        if name is None or name not in self.ranges:
            raise KeyError(f"no calibration range for tensor {self.label(var)}: calibrate the same "
                           f"(BN-folded) module that is quantized")
        return float(self.ranges[name]["alpha"])

    def get(self, expr):
        """State of an operand: QTensor/Accumulator for activations, numpy array for constants."""
        if isinstance(expr, relax.Var):
            expr = self.root(expr)
            if expr in self.state:
                return self.state[expr]
        c = resolve_const(expr, self.values)
        if c is not None:
            return c
        if isinstance(expr, relax.Var) and any(expr.same_as(p) for p in self.func.params):
            return self.input_quantize(expr)
        raise KeyError(f"operand {expr} has no quantized value")

    def requant(self, acc_expr, m, qmin, qmax, dtype, axis, ndim, tag, lo, hi):
        """Emit :func:`zsq_tvm.core.intops.requantize` as Relax ops; ``m`` scalar or per-channel vector of S_in/S_out.

        ``[lo, hi]``: range of the accumulator; the int64 product is proved in range (the ledger).
        Returns ``(expr, out_lo, out_hi)`` with the exact range of the clipped result.
        """
        m = np.asarray(m, dtype=np.float64).reshape(-1)
        M, s = intmath.dyadic_vector(m)
        rec = self.ledger.requantize(tag, lo, hi, M, s)
        out_lo, out_hi = requant_interval(lo, hi, M, s, qmin, qmax)
        if m.size == 1:
            shape = []
        else:
            shape = _bcast_shape(ndim, axis, m.size)
        o = self.ops
        x = intops.requantize(o, o.cast(acc_expr, "int64"), M.reshape(shape), s.reshape(shape), qmin, qmax)
        rec["var"] = _dyadic_product_var(self.bb, x).name  # the int64 acc*M + 2^(s-1) (what the bound is about)
        self.meta["requantize"].append({"at": tag, "M": M.tolist(), "s": s.tolist(), "qmin": int(qmin),
                                        "qmax": int(qmax), "dtype": dtype})
        return o.cast(x, dtype), out_lo, out_hi

    def to_q(self, st, var, unsigned=False, bits=None, alpha=None, tag=None):
        """Integer tensor of ``var`` with one scale (requantizing an accumulator if needed)."""
        if isinstance(st, QTensor):
            return st
        bits = bits or self.abits
        a = self.alpha(var) if alpha is None else alpha
        scale = intmath.symmetric_scale(a, bits, unsigned)
        qmin, qmax = intmath.qrange(bits, unsigned)
        expr, _, _ = self.requant(st.expr, st.scale / scale, qmin, qmax, intmath.storage_dtype(bits, unsigned),
                                  st.axis, st.ndim, tag or self.names.get(self.root(var), var.name), st.lo, st.hi)
        return QTensor(expr, scale, bits, unsigned)

    def quantize_bias(self, var, arg, c, scale):
        """:func:`intmath.quantize_bias` of the float bias ``c`` that ``var`` adds to the accumulator ``arg``
        (scale ``scale``).  A bias past int32 (a near-zero activation or weight scale) raises
        :class:`zsq_tvm.core.overflow.BiasOverflowError` naming the layer, the scales and the fix, not numpy's
        bare ValueError from deep inside the pass."""
        try:
            return intmath.quantize_bias(c, scale)
        except ValueError:
            pass
        src = self.names.get(self.root(arg)) if isinstance(arg, relax.Var) else None
        rec = next((r for r in reversed(self.meta["layers"]) if src is not None and r.get("tensor") == src
                    and "x_scale" in r), None)  # the conv/matmul that produced the accumulator
        xs = ws = alpha = None
        if rec is not None and np.allclose(np.multiply(rec["x_scale"], rec["w_scale"]), scale, rtol=1e-9, atol=0):
            xs, ws = rec["x_scale"], rec["w_scale"]
            unsigned = str(rec.get("x_dtype", "int8")).startswith("uint")
            alpha = float(xs) * intmath.qrange(self.abits, unsigned)[1]
        where = self.layer(var) + (f" (the bias add after {src})" if src and src != self.names.get(var) else "")
        raise bias_overflow_error(where, c, scale, xs, ws, alpha)

    def ensure_q(self, var):
        key = self.root(var) if isinstance(var, relax.Var) else var
        if key in self.memo_q:
            return self.memo_q[key]
        st = self.get(var)
        if isinstance(st, np.ndarray):
            raise TypeError("constant where an activation was expected")
        q = self.to_q(st, key)
        self.memo_q[key] = q
        return q

    def as_acc(self, st, var):
        if isinstance(st, Accumulator):
            return st
        shape = shape_of(var)
        c = int(shape[1]) if len(shape) > 1 else 1
        expr = self.bb.emit(relax.op.astype(st.expr, "int32"))
        return Accumulator(expr, np.full(c, st.scale), 1, len(shape), np.full(c, st.qmin, np.int64),
                    np.full(c, st.qmax, np.int64))

    # ---------------------------------------------------------------- boundary kernels
    def input_quantize(self, param):
        a = self.alpha(param)
        bits = self.abits
        scale = intmath.symmetric_scale(a, bits)
        qmin, qmax = intmath.qrange(bits)
        dtype = intmath.storage_dtype(bits)

        fq = input_quantize_te(a, scale, qmin, qmax, dtype)

        attrs = {ROLE_ATTR: INPUT_QUANTIZE, "zsq.scale": float(scale), "zsq.alpha": float(a), "zsq.bits": bits,
                 "zsq.unsigned": 0, "op_pattern": 8}
        expr = self.bb.emit(self.bb.call_te(fq, param, primfunc_name_hint="zsq_input_quantize", primfunc_attrs=attrs))
        q = QTensor(expr, scale, bits, False)
        self.state[param] = q
        self.meta["input"].append({"name": param.name, "tensor": self.names[param], "scale": scale, "alpha": a,
                                   "bits": bits, "dtype": dtype})
        return q

    def output(self, var):
        st = self.get(var)
        if isinstance(st, Accumulator):
            q = self.to_q(st, var, bits=self.out_bits, tag=f"output:{self.names.get(self.root(var))}")
        else:
            q = st
        rec = {"tensor": self.names.get(self.root(var)), "scale": q.scale, "bits": q.bits,
               "dtype": intmath.storage_dtype(q.bits, q.unsigned), "dequantized": bool(self.dequantize_output)}
        self.meta["output"].append(rec)
        if not self.dequantize_output:
            return q.expr, q

        fdq = output_dequantize_te(q.scale)

        attrs = {ROLE_ATTR: OUTPUT_DEQUANTIZE, "zsq.scale": float(q.scale), "zsq.bits": q.bits,
                 "zsq.unsigned": int(q.unsigned), "op_pattern": 8}
        return self.bb.call_te(fdq, q.expr, primfunc_name_hint="zsq_output_dequantize", primfunc_attrs=attrs), q

    # ---------------------------------------------------------------- ops
    def conv_weights(self, var, call, op: str):
        """Quantize a conv's weights per output channel and record its int32 accumulation bound in the
        overflow ledger (shared by conv1d and the Conformer's conv2d).
        Returns ``(x, wq, sw, lo, hi, x_dtype, ledger_record)``."""
        x = self.ensure_q(call.args[0])
        w = resolve_const(call.args[1], self.values)
        wq, sw = intmath.quantize_per_channel(w, self.wbits, axis=0)
        lo, hi = dot_interval(wq, 0, x.qmin, x.qmax)
        x_dtype = intmath.storage_dtype(x.bits, x.unsigned)
        rec = self.ledger.accumulate(self.layer(var), op, lo, hi, {
            "x_dtype": x_dtype, "x_range": [x.qmin, x.qmax], "taps": int(np.prod(wq.shape[1:])),
            "sum_abs_w": np.abs(wq.astype(np.int64)).reshape(wq.shape[0], -1).sum(axis=1).tolist()})
        return x, wq, sw, lo, hi, x_dtype, rec

    # ---------------------------------------------------------------- driver
    def run(self, bb: relax.BlockBuilder, name: str):
        self.bb = bb
        self.ops = intops.RelaxOps(bb)
        params = list(self.func.params)
        attrs = dict(self.func.attrs) if self.func.attrs is not None else {}
        with bb.function(name, params):
            with bb.dataflow():
                for b in self.binds:
                    var, v = b.var, b.value
                    if var in self.skip or resolve_const(v, self.values) is not None:
                        continue
                    if isinstance(v, relax.TupleGetItem) and v.tuple_value in self.dropouts:
                        self.alias[var] = self.alias[v.tuple_value]
                    elif isinstance(v, relax.TupleGetItem) and split_item(self, var, v):
                        pass
                    elif isinstance(v, relax.Var):
                        self.alias[var] = v
                    else:  # check_supported ran first: exactly one handler claims the op
                        claiming_handler(self, call_op_name(v), v, var).emit(self, var, v)
                outs = []
                out_qs = []
                for o in self.outputs:
                    e, q = self.output(o)
                    outs.append(bb.emit_output(e))
                    out_qs.append(q)
            ret = outs[0] if len(outs) == 1 and not isinstance(self.func.body.body, relax.Tuple) else relax.Tuple(outs)
            gv = bb.emit_func_output(ret)
        self.meta["overflow"] = self.ledger.to_json()
        in_scale = self.meta["input"][0]["scale"] if self.meta["input"] else 1.0
        attrs.update({"zsq.quantized": 1, "zsq.input_scale": float(in_scale),
                      "zsq.output_scale": float(out_qs[0].scale)})
        return gv, attrs


# ---------------------------------------------------------------- op handlers
def _conv1d_supported(q, call, var) -> bool:
    a = call.attrs
    return (a.data_layout == "NCW" and a.kernel_layout == "OIW" and a.out_layout == "NCW"
            and resolve_const(call.args[1], q.values) is not None)


@register("nn.conv1d", "nn.conv1d", supported=_conv1d_supported)
def _conv1d(q, var, call):
    x, wq, sw, lo, hi, x_dtype, rec = q.conv_weights(var, call, "conv1d")
    a = call.attrs
    expr = q.bb.emit(relax.op.nn.conv1d(
        x.expr, const(wq, "int8"), strides=a.strides, padding=a.padding, dilation=a.dilation, groups=a.groups,
        data_layout="NCW", kernel_layout="OIW", out_layout="NCW", out_dtype="int32"))
    rec["var"] = expr.name
    q.meta["layers"].append({"tensor": q.names[var], "op": "conv1d", "groups": int(a.groups),
                             "x_scale": x.scale, "w_scale": sw.tolist(),
                             "x_dtype": intmath.storage_dtype(x.bits, x.unsigned)})
    q.state[var] = Accumulator(expr, x.scale * sw, 1, 3, lo, hi)


def _matmul_weight_supported(q, call, var) -> bool:
    w = resolve_const(call.args[1], q.values)
    return w is not None and w.ndim == 2 and resolve_const(call.args[0], q.values) is None


@register("matmul", "matmul (by a 2-D weight)", supported=_matmul_weight_supported)
def _matmul_weight(q, var, call):
    x = q.ensure_q(call.args[0])
    w = resolve_const(call.args[1], q.values)
    wq, sw = intmath.quantize_per_channel(w, q.wbits, axis=1)
    lo, hi = dot_interval(wq, 1, x.qmin, x.qmax)
    rec = q.ledger.accumulate(q.layer(var), "matmul", lo, hi, {
        "x_dtype": intmath.storage_dtype(x.bits, x.unsigned), "x_range": [x.qmin, x.qmax],
        "taps": int(wq.shape[0]), "sum_abs_w": np.abs(wq.astype(np.int64)).sum(axis=0).tolist()})
    expr = q.bb.emit(relax.op.matmul(x.expr, const(wq, "int8"), out_dtype="int32"))
    rec["var"] = expr.name
    ndim = len(shape_of(var))
    q.meta["layers"].append({"tensor": q.names[var], "op": "matmul", "x_scale": x.scale,
                             "w_scale": sw.tolist()})
    q.state[var] = Accumulator(expr, x.scale * sw, ndim - 1, ndim, lo, hi)


@register("add", "add (bias, residual)", claims=lambda q, call, var: not adds_constant_to_one_scale(q, call))
def _add(q, var, call):
    sa, sb = q.get(call.args[0]), q.get(call.args[1])
    if isinstance(sa, np.ndarray) or isinstance(sb, np.ndarray):
        c, (st, arg) = (sa, (sb, call.args[1])) if isinstance(sa, np.ndarray) else (sb, (sa, call.args[0]))
        acc = q.as_acc(st, arg)
        n = acc.scale.size
        if c.size not in (1, n) or (c.ndim == acc.ndim and c.size == n and c.shape[acc.axis] != n):
            raise ValueError(f"add {q.label(var)}: constant of shape {c.shape} is not a per-channel bias")
        bq = q.quantize_bias(var, arg, np.broadcast_to(c.reshape(-1), (n,)), acc.scale)
        lo, hi = acc.lo + bq.astype(np.int64), acc.hi + bq.astype(np.int64)
        rec = q.ledger.accumulate(q.layer(var), "bias_add", lo, hi)
        expr = q.bb.emit(relax.op.add(acc.expr, const(bq.reshape(_bcast_shape(acc.ndim, acc.axis, n)), "int32")))
        rec["var"] = expr.name
        q.state[var] = Accumulator(expr, acc.scale, acc.axis, acc.ndim, lo, hi)
        return
    # residual add of two activations; fuse a following ReLU (its only user) into the clamp
    us = q.users.get(var, [])
    relu = us[0] if (len(us) == 1 and call_op_name(q.values.get(us[0])) == "nn.relu"
                     and not any(var.same_as(o) for o in q.outputs)) else None
    out_var = relu if relu is not None else var
    unsigned = relu is not None
    a = q.alpha(out_var)
    bits = q.act_bits(out_var)  # abits, or 16 for attention scores feeding a softmax
    s_out = intmath.symmetric_scale(a, bits, unsigned)
    qmin, qmax = intmath.qrange(bits, unsigned)
    dtype = intmath.storage_dtype(bits, unsigned)
    branches = []
    for st, arg in ((sa, call.args[0]), (sb, call.args[1])):
        if isinstance(st, QTensor):
            st = Accumulator(q.bb.emit(relax.op.astype(st.expr, "int32")), np.array([st.scale]), 1,
                      len(shape_of(arg)), np.array([st.qmin], np.int64), np.array([st.qmax], np.int64))
        scale = st.scale if st.scale.size > 1 else st.scale.reshape(())
        expr, blo, bhi = q.requant(st.expr, scale / s_out, *RESIDUAL_RANGE, "int32", st.axis, st.ndim,
                                   f"residual:{q.names[var]}", st.lo, st.hi)
        # RESIDUAL_RANGE clip = the documented mitigation: active when it cuts the branch's range
        mitigated = bool(np.any(blo <= RESIDUAL_RANGE[0]) or np.any(bhi >= RESIDUAL_RANGE[1]))
        branches.append((expr, blo, bhi, mitigated))
    lo, hi = np.broadcast_arrays(branches[0][1] + branches[1][1], branches[0][2] + branches[1][2])
    rec = q.ledger.accumulate(q.layer(var), "residual_sum", lo, hi,
                           {"mitigated": branches[0][3] or branches[1][3]})
    s = q.bb.emit(relax.op.add(branches[0][0], branches[1][0]))
    rec["var"] = s.name
    s = q.bb.emit(relax.op.clip(s, relax.prim_value(tirx.IntImm("int32", qmin)),
                                relax.prim_value(tirx.IntImm("int32", qmax))))
    q.state[out_var] = QTensor(q.bb.emit(relax.op.astype(s, dtype)), s_out, bits, unsigned)
    q.meta["layers"].append({"tensor": q.names[var], "op": "residual_add", "relu": unsigned,
                             "out_scale": s_out})
    if relu is not None:
        q.skip.add(relu)


@register("nn.relu", "nn.relu")
def _relu(q, var, call):
    st = q.get(call.args[0])
    if isinstance(st, Accumulator):
        q.state[var] = q.to_q(st, var, unsigned=True)
    elif st.unsigned:
        q.state[var] = st
    else:
        hi = relax.prim_value(tirx.IntImm("int64", st.qmax))
        x = q.bb.emit(relax.op.clip(st.expr, relax.prim_value(tirx.IntImm("int64", 0)), hi))
        q.state[var] = QTensor(q.bb.emit(relax.op.astype(x, intmath.storage_dtype(st.bits, True))),
                              st.scale, st.bits, True)


def _is_mask_multiply(q, call, var) -> bool:
    cs = [resolve_const(x, q.values) for x in call.args]
    return sum(c is not None for c in cs) == 1 and all(np.isin(c, (0.0, 1.0)).all() for c in cs if c is not None)


@register("multiply", "multiply (by a 0/1 mask)", supported=_is_mask_multiply)
def _multiply_mask(q, var, call):
    cs = [resolve_const(x, q.values) for x in call.args]
    c, arg = (cs[0], call.args[1]) if cs[0] is not None else (cs[1], call.args[0])
    st = q.get(arg)
    dtype = "int32" if isinstance(st, Accumulator) else intmath.storage_dtype(st.bits, st.unsigned)
    expr = q.bb.emit(relax.op.multiply(st.expr, const(c, dtype)))  # 0/1 mask: exact in integers
    if isinstance(st, Accumulator):  # values are x or 0: the range grows to include 0
        q.state[var] = Accumulator(expr, st.scale, st.axis, st.ndim, np.minimum(st.lo, 0), np.maximum(st.hi, 0))
    else:
        q.state[var] = QTensor(expr, st.scale, st.bits, st.unsigned)


def _shape(q, var, call):
    arg = call.args[0]
    st = q.get(arg)
    if q.out_bits != q.abits and isinstance(st, Accumulator) and q.flows_to_output_only(var):
        # logits reach the output through a transpose/reshape: requantize them at out_bits, not abits
        key = q.root(arg) if isinstance(arg, relax.Var) else arg
        x = q.to_q(st, key, bits=q.out_bits, tag=f"output:{q.names.get(key)}")
    else:
        x = q.ensure_q(arg)
    new = relax.Call(call.op, [x.expr] + list(call.args[1:]), call.attrs)
    q.state[var] = QTensor(q.bb.emit(new), x.scale, x.bits, x.unsigned)


for _op in _SHAPE_OPS:
    register(_op, _op)(_shape)


@register("nn.dropout", "nn.dropout")
def _dropout(q, var, call):
    q.dropouts.add(var)
    q.alias[var] = call.args[0]
    q.meta["dropped_ops"].append({"op": "nn.dropout", "var": var.name})


def _drop_output_softmax(q, var, call):
    q.alias[var] = call.args[0]
    q.meta["dropped_ops"].append({"op": call_op_name(call), "var": var.name, "tensor": q.names.get(var)})


for _op in _SOFTMAX_OPS:
    register(_op, "nn.softmax/nn.log_softmax (at the output)",
             supported=lambda q, call, var: q.drops_output_softmax(var))(_drop_output_softmax)


SUPPORTED_OPS = supported_ops()


def _check_bits(wbits, abits, out_bits):
    for nm, b, hi in (("wbits", wbits, 8), ("abits", abits, 8), ("out_bits", out_bits, 16)):
        if not isinstance(b, (int, np.integer)) or not 2 <= int(b) <= hi:
            raise BitWidthError(f"{nm}={b} outside 2..{hi}", f"pass {nm} between 2 and {hi}")


def quantize_module(mod: tvm.IRModule, ranges: dict, wbits: int = 8, abits: int = 8, out_bits: int = 8,
                    drop_output_softmax: bool = True, dequantize_output: bool = True,
                    func_name: str = "main") -> tuple[tvm.IRModule, dict]:
    """Integer-only W/A quantization of the BN-folded float ``func_name`` of ``mod`` (see the module docstring).

    Returns ``(qmod, metadata)``: the integer module and its metadata (scales, dyadic multipliers/shifts,
    dropped ops, the overflow ledger; JSON-clean).  Parameters as :class:`Quantize`.
    """
    _check_bits(wbits, abits, out_bits)
    func = main_function(mod, func_name)
    qz = _Quantizer(func, ranges, int(wbits), int(abits), int(out_bits), drop_output_softmax, dequantize_output)
    qz.check_supported()
    others = {gv: f for gv, f in mod.functions.items() if gv.name_hint != func_name}
    bb = relax.BlockBuilder(tvm.IRModule(others))
    gv, attrs = qz.run(bb, func_name)
    out = bb.get()
    out[gv] = out[gv].with_attrs(attrs)
    out = relax.transform.DeadCodeElimination([func_name])(out)
    if mod.attrs is not None:
        for k, v in mod.attrs.items():
            out = out.with_attr(k, v)
    return out, json.loads(json.dumps(qz.meta, default=float))


@tvm.transform.module_pass(opt_level=0, name="Quantize")
class Quantize:
    """:func:`quantize_module` as a module pass (usable in a ``tvm.transform.Sequential``).

    Parameters
    ----------
    ranges : dict
        ``{tensor_name: {"alpha": float, ...}}`` from :func:`zsq_tvm.calibrate.calibrate`.
    wbits, abits : int
        Weight / activation bit widths, 2..8 (stored int8/uint8).
    out_bits : int
        Bits of the requantized logits (2..16; int8 or int16 storage).  8 for this pass alone;
        :class:`zsq_tvm.QuantConfig` (``zsq quantize``) passes its default, 16.
    drop_output_softmax : bool
        Drop a trailing softmax/log_softmax (argmax-preserving) instead of refusing it.
    dequantize_output : bool
        End with the float dequantize kernel; if False ``main`` returns the integer logits.

    A pass returns only the module; the scales, multipliers and overflow proofs come with it from
    :func:`quantize_module`, which returns them as a value.
    """

    def __init__(self, ranges: dict, wbits: int = 8, abits: int = 8, out_bits: int = 8,
                 drop_output_softmax: bool = True, dequantize_output: bool = True, func_name: str = "main"):
        _check_bits(wbits, abits, out_bits)
        self.ranges = ranges
        self.wbits, self.abits, self.out_bits = int(wbits), int(abits), int(out_bits)
        self.drop_output_softmax = drop_output_softmax
        self.dequantize_output = dequantize_output
        self.func_name = func_name

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        out, _ = quantize_module(mod, self.ranges, self.wbits, self.abits, self.out_bits,
                                 self.drop_output_softmax, self.dequantize_output, self.func_name)
        return out
