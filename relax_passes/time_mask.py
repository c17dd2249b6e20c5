"""TimeMask: a fixed-length integer model gets a ``length`` input and masks the frames past it wherever frames
mix (NeMo's masked convolutions and attention), so padding a short utterance no longer changes its output.

Why: a build has a static number of frames ``T``; a shorter utterance is zero-padded.  Without a mask, the
padded frames do not stay zero -- every conv adds its (BN-folded) bias and the residual sums carry it -- and
whatever mixes frames (a conv with a kernel > 1 along time, attention) brings those values back into the valid
frames.  Unmasked, that costs 3.4 WER points on our QuartzNet-5x5 at T = 700 and 4.6 on the Conformer
(docs/results.md).  NeMo trains with these masks; with them the valid output frames are those of the unpadded
utterance (a conv's zero padding at the end of the unpadded input *is* the masked zeros; a masked key gets
attention weight 0).

Before (the integer module of :class:`relax_passes.Quantize`; ``B`` batch, ``T`` frames)::

    def main(mel: R.Tensor((B, F, T), "float32")):
        q  = R.call_tir(zsq_input_quantize, (mel,))
        a  = R.nn.conv1d(q, W0, strides=[2], padding=[16, 16])             # K = 33: mixes frames
        ...
        d  = R.nn.conv1d(u, W1, groups=C, padding=[16, 16])                # depthwise, K = 33
        p  = R.nn.conv1d(d', W2)                                            # K = 1: left alone

After (the valid length follows every stride: ``L' = (L + pl + pr - dil (K - 1) - 1) // s + 1``)::

    def main(mel: R.Tensor((B, F, T), "float32"), length: R.Tensor((B,), "int32")):
        L0 = R.reshape(length, (B, 1, 1))
        m0 = R.astype(R.clip(R.subtract(L0, iota_T), 0, 1), "int8")        # 1 on frames t < L, else 0
        q' = R.multiply(q, m0)                                              # the input, masked once
        a  = R.nn.conv1d(q', W0, strides=[2], padding=[16, 16])
        L1 = R.add(R.floor_divide(R.add(L0, -1), 2), 1)                     # the length after stride 2
        m1 = R.astype(R.clip(R.subtract(L1, iota_T2), 0, 1), "uint8")
        d  = R.nn.conv1d(R.multiply(u, m1), W1, groups=C, padding=[16, 16])

Masked sites: the quantized input, once, in its own layout; the input of every other conv1d (NCW) with a kernel
> 1 and of every NCHW conv2d, on the axis that carries the input frames (the Conformer's subsampling: followed
through ``permute_dims``/``expand_dims``/elementwise ops), unless it is the masked input itself seen through
``permute_dims``/``expand_dims``/``astype``; and every integer softmax over attention keys that :func:`relax_passes.integer_nonlinear.emit_i_softmax`
spelled out, at the frame count its keys have: the row max skips masked keys (``x - 2^40`` there), their
``exp`` is multiplied by 0 (weight exactly 0, as NeMo's ``masked_fill``), and the sum is kept >= 1 (``length
0``).  Integer-only (subtract, clip, cast, multiply by 0/1); one mask per (frame count, dtype, rank, axis).
``length`` counts valid input frames, ``0 <= length <= T``; at ``T`` nothing is masked and the output equals
the unmasked model's bit for bit.  A time-mixing op whose time axis the pass cannot follow raises
:class:`TimeMaskError` naming it.  :func:`time_mask` returns the masked sites with the module.  Usable in any
``tvm.transform.Sequential`` after ``Quantize`` (what ``zsq quantize`` runs by default,
``QuantConfig(time_mask=True)``; ``--no-time-mask`` skips it).
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, tirx

from relax_passes._util import bindings, call_op_name, const, const_value, copy_module, shape_of

__all__ = ["TimeMask", "TimeMaskError", "LENGTH_INPUT", "time_mask"]

LENGTH_INPUT = "length"

# ops that keep a tensor's time axis frame for frame (elementwise on the activation)
_FRAMEWISE = {"astype", "add", "subtract", "multiply", "right_shift", "left_shift", "clip", "maximum", "minimum",
              "nn.relu", "floor_divide"}
# ops that map a tensor whose padded frames are 0 to one whose padded frames are 0 (no bias, no mixing)
_ZERO_KEEPING = {"permute_dims", "expand_dims", "astype"}  # the ones whose time axis is followed
_SOFTMAX_ONE = 1 << 54  # relax_passes.integer_nonlinear's softmax normaliser: F = 2^54 // sum(e)
_BIG = 1 << 40          # pushes masked scores below every real one (|score| < 2^31) for the row max


class TimeMaskError(ValueError):
    """The pass cannot follow the time axis of this model to one of its time-mixing ops."""


def _kernel_size(call, axis: int = -1) -> int:
    w = shape_of(call.args[1])
    return int(w[axis]) if w else 1


def _ints(v) -> list:
    return [int(i) for i in v]


def _softmax_sites(func):
    """``(max vars, exp vars, sum vars)`` of the integer softmaxes over the last axis of rank-4 tensors (attention)
    that :func:`relax_passes.integer_nonlinear.emit_i_softmax` spelled out: ``m = max(x, -1)``, ``d = x - m``,
    ``e = exp(d)``, ``s = sum(e, -1)``, ``F = 2^54 // s``.  Each ``m`` is paired with the ``e`` that follows it."""

    bs = list(bindings(func))
    value = {b.var: b.value for b in bs}
    pos = {b.var: i for i, b in enumerate(bs)}
    maxes, exps, sums = {}, {}, {}
    for b in bs:
        v = b.value
        if call_op_name(v) != "floor_divide":
            continue
        one = const_value(v.args[0])
        if one is None or one.size != 1 or int(one.reshape(-1)[0]) != _SOFTMAX_ONE or v.args[1] not in value:
            continue
        s = v.args[1]
        sv = value[s]
        if call_op_name(sv) != "sum" or not sv.attrs.keepdims or len(shape_of(sv.args[0]) or ()) != 4:
            continue
        e = sv.args[0]
        if _ints(sv.attrs.axis) not in ([-1], [3]):
            continue
        shp = shape_of(e)
        cands = [b2.var for b2 in bs[:pos[e]] if call_op_name(b2.value) == "max" and b2.value.attrs.keepdims
                 and _ints(b2.value.attrs.axis) in ([-1], [3]) and shape_of(b2.value.args[0]) == shp]
        if not cands:
            continue
        m = cands[-1]
        maxes[m], exps[e], sums[s] = int(shp[-1]), int(shp[-1]), int(shp[-1])
    return maxes, exps, sums


@relax.expr_functor.mutator
class _Masker(relax.PyExprMutator):
    """Follows the time axis: ``taxis[var] = axis`` for tensors that carry the input frames on ``axis``; ``res``
    maps a frame count (the input's ``T`` and each one a strided conv makes) to its valid length ``[B, 1, 1]``."""

    def __init__(self, mod, mel, length_var, batch: int, softmax):
        super().__init__(mod)
        self.mel = mel
        self.length_var = length_var
        self.batch = batch
        self.sm_max, self.sm_exp, self.sm_sum = softmax
        self.res: dict = {}      # frames -> length var [B, 1, 1] int32
        self.taxis: dict = {}    # old var -> time axis
        self.masks: dict = {}    # (frames, dtype, rank, axis) -> mask var
        self.shaped: dict = {}   # (frames, rank) -> the length reshaped to [B, 1, ..., 1]
        self.len0 = None         # the input length as [B, 1, 1]
        self.clean: set = set()  # old vars whose padded frames are known to be 0 (the masked input, its views)
        self.masked: list = []

    # ------------------------------------------------------------------ lengths
    def _out_length(self, L, K, s, d, pad):
        off = pad - d * (K - 1) - 1
        if s == 1 and off == -1:
            return L
        bb = self.builder_
        v = bb.emit(relax.op.add(L, const(off, "int32"))) if off else L
        v = bb.emit(relax.op.floor_divide(v, const(s, "int32"))) if s != 1 else v
        return bb.emit(relax.op.add(v, const(1, "int32")))

    def _conv_track(self, var, value, axis, K, s, d, pad):
        x = value.args[0]
        n_in, n_out = int(shape_of(x)[axis]), int(shape_of(var)[axis])
        if n_in in self.res and n_out not in self.res:
            self.res[n_out] = self._out_length(self.res[n_in], K, s, d, pad)
        self.taxis[var] = axis

    def _track(self, var, value):
        shp = shape_of(var)
        op = call_op_name(value)
        if isinstance(value, relax.Call) and op in (None, "call_tir") and len(value.args) >= 2:  # input quantize
            args = value.args[1]
            if isinstance(args, relax.Tuple) and len(args.fields) == 1 and args.fields[0].same_as(self.mel):
                T, axis = int(shp[-1]), len(shp) - 1
                self.res[T] = self._input_length()
                self.taxis[var] = axis
                # mask the input once, in its own layout: the first conv then needs no mask of its own (a mask
                # put after the Conformer's permute/expand_dims would cost the im2col its channels-last path)
                q = self.visit_expr(var)
                self.set_var_remap(var, self.builder_.emit(relax.op.multiply(q, self._mask(T, str(q.ty.dtype),
                                                                                          len(shp), axis))))
                self.clean.add(var)
                self.masked.append({"var": str(var.name), "op": "input", "frames": T, "dtype": str(q.ty.dtype)})
            return
        if not isinstance(value, relax.Call) or not value.args:
            return
        a = self.taxis.get(value.args[0]) if isinstance(value.args[0], relax.Var) else None
        if op in _ZERO_KEEPING and value.args[0] in self.clean:
            self.clean.add(var)
        if op == "nn.conv1d" and str(value.attrs.data_layout) == "NCW" and (a == 2 or a is None):
            at = value.attrs
            if int(shape_of(value.args[0])[2]) in self.res:
                self._conv_track(var, value, 2, _kernel_size(value), int(at.strides[0]), int(at.dilation[0]),
                                 int(at.padding[0]) + int(at.padding[-1]))
        elif op == "nn.conv2d" and str(value.attrs.data_layout) == "NCHW" and a in (2, 3):
            at, i = value.attrs, a - 2
            pad = int(at.padding[i]) + int(at.padding[i + 2])  # [top, left, bottom, right]
            self._conv_track(var, value, a, _kernel_size(value, a), int(at.strides[i]), int(at.dilation[i]), pad)
        elif a is None:
            for arg in value.args[1:]:  # a frame-wise op whose activation is not its first argument
                if op in _FRAMEWISE and isinstance(arg, relax.Var) and arg in self.taxis and shp is not None \
                        and len(shp) == len(shape_of(arg)) and shp[self.taxis[arg]] == shape_of(arg)[self.taxis[arg]]:
                    self.taxis[var] = self.taxis[arg]
        elif op == "permute_dims":
            axes = _ints(value.attrs.axes) if value.attrs.axes is not None else list(range(len(shp)))[::-1]
            self.taxis[var] = axes.index(a)
        elif op == "expand_dims":
            r = len(shp)
            new = sorted(int(i) % r for i in value.attrs.axis)
            kept = [i for i in range(r) if i not in new]
            self.taxis[var] = kept[a]
        elif op in _FRAMEWISE and shp is not None and len(shp) == len(shape_of(value.args[0])) \
                and shp[a] == shape_of(value.args[0])[a]:
            self.taxis[var] = a

    def _input_length(self):
        if self.len0 is None:
            self.len0 = self.builder_.emit(relax.op.reshape(self.length_var, (self.batch, 1, 1)))
        return self.len0

    # ------------------------------------------------------------------ masks
    def _mask(self, frames: int, dtype: str, rank: int, axis: int):
        """0/1 ``dtype`` tensor of ``rank`` dims, ``frames`` long on ``axis``: 1 on the valid frames."""
        key = (frames, dtype, rank, axis)
        m = self.masks.get(key)
        if m is None:
            bb = self.builder_
            L = self.res[frames]
            if rank != 3:
                L = self.shaped.get((frames, rank)) or self.shaped.setdefault(
                    (frames, rank), bb.emit(relax.op.reshape(L, (self.batch,) + (1,) * (rank - 1))))
            shape = [1] * rank
            shape[axis] = frames
            iota = const(np.arange(frames, dtype=np.int32).reshape(shape), "int32")
            v = bb.emit(relax.op.subtract(L, iota))  # > 0 exactly on the valid frames
            v = bb.emit(relax.op.clip(v, relax.prim_value(tirx.IntImm("int64", 0)),
                                      relax.prim_value(tirx.IntImm("int64", 1))))
            m = self.masks[key] = bb.emit(relax.op.astype(v, dtype))
        return m

    def _masked_input(self, binding, x, frames, axis, what):
        xd, rank = str(x.ty.dtype), len(shape_of(x))
        xm = self.builder_.emit(relax.op.multiply(self.visit_expr(x), self._mask(frames, xd, rank, axis)))
        self.masked.append({"var": str(binding.var.name), "op": what, "frames": frames, "dtype": xd})
        return xm

    def _rebind(self, binding, first):
        """``binding``'s call again, with ``first`` (already in the new graph) as its first argument."""
        value = binding.value
        new = relax.Call(value.op, [first] + [self.visit_expr(a) for a in value.args[1:]], value.attrs)
        self.builder_.emit_normalized(relax.VarBinding(binding.var, self.builder_.normalize(new)))

    def _refuse(self, binding, what):
        self.error = TimeMaskError(f"cannot find the time axis of the input of {what} {str(binding.var.name)!r} (the time "
                                   "mask follows conv1d/conv2d, permute_dims, expand_dims and elementwise ops)")
        raise self.error  # TVM re-raises it from inside the mutator as another type: time_mask() raises it again

    def visit_var_binding_(self, binding):
        value, var = binding.value, binding.var
        op = call_op_name(value)
        if op == "nn.conv1d" and _kernel_size(value) > 1:
            x = value.args[0]
            frames = int(shape_of(x)[-1])  # NCW: frames last
            if frames not in self.res or self.taxis.get(x, 2) != 2:
                self._refuse(binding, f"the time-mixing conv1d (kernel {_kernel_size(value)})")
            xm = self.visit_expr(x) if x in self.clean else self._masked_input(binding, x, frames, 2, "conv1d")
            self._rebind(binding, xm)
        elif op == "nn.conv2d":
            x = value.args[0]
            a = self.taxis.get(x)
            if a not in (2, 3):
                self._refuse(binding, "the conv2d")
            if _kernel_size(value, a) > 1 and x not in self.clean:
                self._rebind(binding, self._masked_input(binding, x, int(shape_of(x)[a]), a, "conv2d"))
            else:
                super().visit_var_binding_(binding)
        elif var in self.sm_max:  # the row max over the valid keys only: masked keys get -2^40
            frames = self.sm_max[var]
            if frames not in self.res:
                self._refuse(binding, "the attention softmax")
            x = self.visit_expr(value.args[0])
            m = self._mask(frames, "int64", 4, 3)
            low = self.builder_.emit(relax.op.multiply(self.builder_.emit(relax.op.subtract(m, const(1, "int64"))),
                                                       const(_BIG, "int64")))
            self._rebind(binding, self.builder_.emit(relax.op.add(x, low)))
            self.masked.append({"var": str(var.name), "op": "softmax", "frames": frames, "dtype": "int64"})
        elif var in self.sm_exp:  # exp of a masked key = 0: it adds nothing to the sum and gets probability 0
            super().visit_var_binding_(binding)
            e = self.visit_expr(var)  # the var the block builder bound (remapped or not)
            self.set_var_remap(var, self.builder_.emit(relax.op.multiply(e, self._mask(self.sm_exp[var], "int64", 4, 3))))
        elif var in self.sm_sum:  # length 0 masks every key: keep the divisor >= 1
            super().visit_var_binding_(binding)
            self.set_var_remap(var, self.builder_.emit(relax.op.maximum(self.visit_expr(var), const(1, "int64"))))
        else:
            super().visit_var_binding_(binding)
        self._track(var, value)


def time_mask(mod: tvm.IRModule, func_name: str = "main") -> tuple[tvm.IRModule, list[dict]]:
    """``(module with the ``length`` input and the padding masked, [record per masked site])`` (module doc);
    ``mod`` is not changed.  Each record: ``var``, ``op`` (``"input"``, ``"conv1d"``, ``"softmax"``, ...),
    ``frames`` and ``dtype``."""
    gv = mod.get_global_var(func_name)
    func = mod[gv]
    if any(str(p.name) == LENGTH_INPUT for p in func.params):
        raise TimeMaskError(f"{func_name} already has a {LENGTH_INPUT!r} input (time mask applied twice?)")
    if len(func.params) != 1 or shape_of(func.params[0]) is None or len(shape_of(func.params[0])) != 3:
        raise TimeMaskError("the time mask needs one [B, F, T] mel input")
    mel = func.params[0]
    B = int(shape_of(mel)[0])
    length = relax.Var(LENGTH_INPUT, relax.TensorType((B,), "int32"))
    rw = _Masker(copy_module(mod), mel, length, B, _softmax_sites(func))
    rw.error = None
    try:
        body = rw.visit_expr(func.body)
    except Exception:
        if rw.error is not None:  # the TimeMaskError itself, not TVM's wrapper of it
            raise rw.error from None
        raise
    if not rw.masked:
        raise TimeMaskError("no time-mixing op (conv with a kernel > 1 along time, attention softmax) follows "
                            "the input: nothing to mask")
    new = relax.Function([mel, length], body, func.ret_ty, func.is_pure, func.attrs)
    if func.attrs is not None and "num_input" in func.attrs:
        new = new.with_attr("num_input", int(func.attrs["num_input"]) + 1)
    out = rw.builder_.get()
    out[gv] = new
    return relax.transform.DeadCodeElimination([gv.name_hint])(out), rw.masked


@tvm.transform.module_pass(opt_level=0, name="TimeMask")
class TimeMask:
    """Module pass: :func:`time_mask`."""

    def __init__(self, func_name: str = "main"):
        self.func_name = func_name

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        return time_mask(mod, self.func_name)[0]
