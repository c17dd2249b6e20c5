"""TimeMask: a fixed-length integer model gets a ``length`` input and zeroes the frames past it before every
time-mixing convolution (NeMo's ``MaskedConv1d``), so padding a short utterance no longer changes its output.

Why: a build has a static number of frames ``T``; a shorter utterance is zero-padded.  Without a mask, the
padded frames do not stay zero -- every conv adds its (BN-folded) bias and the residual sums carry it -- and
the convolutions with kernel ``K > 1`` mix those values back into the last valid frames.  On our QuartzNet-5x5
that costs 3.4 WER points at T = 700 (docs/results.md).  NeMo trains with the mask; with it the valid output
frames are exactly those of the unpadded utterance (a conv's zero padding at the end of the unpadded input
*is* the masked zeros).

Before (the integer module of :class:`relax_passes.Quantize`; ``B`` batch, ``T`` frames)::

    def main(mel: R.Tensor((B, F, T), "float32")):
        q  = R.call_tir(zsq_input_quantize, (mel,))
        a  = R.nn.conv1d(q, W0, strides=[2], padding=[16, 16])             # K = 33: mixes frames
        ...
        u  = R.astype(R.clip(..), "uint8")
        d  = R.nn.conv1d(u, W1, groups=C, padding=[16, 16])                # depthwise, K = 33
        p  = R.nn.conv1d(d', W2)                                            # K = 1: left alone

After (the valid length follows every stride: ``L' = (L + pl + pr - dil (K - 1) - 1) // s + 1``)::

    def main(mel: R.Tensor((B, F, T), "float32"), length: R.Tensor((B,), "int32")):
        L0 = R.reshape(length, (B, 1, 1))
        m0 = R.astype(R.clip(R.subtract(L0, iota_T), 0, 1), "int8")        # 1 on frames t < L, else 0
        a  = R.nn.conv1d(R.multiply(q, m0), W0, strides=[2], padding=[16, 16])
        L1 = R.add(R.floor_divide(R.add(L0, -1), 2), 1)                     # the length after stride 2
        m1 = R.astype(R.clip(R.subtract(L1, iota_T2), 0, 1), "uint8")
        d  = R.nn.conv1d(R.multiply(u, m1), W1, groups=C, padding=[16, 16])

Integer-only (subtract, clip, cast, a multiply by 0/1); one mask per (resolution, dtype), shared by every conv
that needs it.  ``length`` counts valid input frames, ``0 <= length <= T`` (``T``: no frame masked, the output
equals the unmasked model's bit for bit).  A model whose time axis the pass cannot follow to a ``K > 1`` conv
(attention, reshapes: the Conformer) raises :class:`TimeMaskError` naming the op; its own masking is not done.
``pass_obj.masked`` lists the masked convs.  Usable in any ``tvm.transform.Sequential`` after ``Quantize``
(``zsq quantize --time-mask``, ``QuantConfig(time_mask=True)``).
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, tirx

from ._util import call_op_name, const, copy_module, shape_of

__all__ = ["TimeMask", "TimeMaskError", "LENGTH_INPUT"]

LENGTH_INPUT = "length"

# ops that keep an NCW tensor's time axis frame for frame (elementwise on the activation)
_FRAMEWISE = {"astype", "add", "subtract", "multiply", "right_shift", "left_shift", "clip", "maximum", "minimum",
              "nn.relu", "floor_divide"}


class TimeMaskError(ValueError):
    """The pass cannot follow the time axis of this model to one of its time-mixing convolutions."""


def _kernel_size(call) -> int:
    w = shape_of(call.args[1])
    return int(w[-1]) if w else 1


@relax.expr_functor.mutator
class _Masker(relax.PyExprMutator):
    def __init__(self, mod, length_var, batch: int):
        super().__init__(mod)
        self.length_var = length_var
        self.batch = batch
        self.lengths: dict = {}   # old var -> (new Relax var of the valid length [B, 1, 1] int32, frames T)
        self.masks: dict = {}     # (length var, T, dtype) -> mask var
        self.masked: list = []
        self.len0 = None

    # ------------------------------------------------------------------ lengths
    def _input_length(self):
        if self.len0 is None:
            self.len0 = self.builder_.emit(relax.op.reshape(self.length_var, (self.batch, 1, 1)))
        return self.len0

    def _length_of(self, expr):
        """``(length var, T)`` of an old activation, or None when it does not carry the input's time axis."""
        if isinstance(expr, relax.Var):
            return self.lengths.get(expr)
        return None

    def _conv_length(self, call, src):
        L, T = src
        at = call.attrs
        K = _kernel_size(call)
        s, d = int(at.strides[0]), int(at.dilation[0])
        pl, pr = int(at.padding[0]), int(at.padding[-1])
        T_out = int(shape_of(call)[-1]) if shape_of(call) else None
        if s == 1 and pl + pr == d * (K - 1):
            return L, T_out
        bb = self.builder_
        off = pl + pr - d * (K - 1) - 1
        v = bb.emit(relax.op.add(L, const(off, "int32"))) if off else L
        v = bb.emit(relax.op.floor_divide(v, const(s, "int32"))) if s != 1 else v
        return bb.emit(relax.op.add(v, const(1, "int32"))), T_out

    def _track(self, old_var, value):
        """Record the valid length of ``old_var`` (bound to the old ``value``) when it has the input's time axis."""
        shp = shape_of(old_var)
        op = call_op_name(value)
        if isinstance(value, relax.Call) and op in (None, "call_tir") and len(value.args) >= 2:  # input quantize
            args = value.args[1]
            if isinstance(args, relax.Tuple) and len(args.fields) == 1 and args.fields[0].same_as(self.mel):
                self.lengths[old_var] = (self._input_length(), int(shp[-1]))
            return
        if op == "nn.conv1d" and str(value.attrs.data_layout) == "NCW":
            src = self._length_of(value.args[0])
            if src is not None:
                self.lengths[old_var] = self._conv_length(value, src)
            return
        if op in _FRAMEWISE and shp is not None and len(shp) == 3:
            for a in value.args:
                src = self._length_of(a)
                if src is not None and src[1] == int(shp[-1]):
                    self.lengths[old_var] = src
                    return

    # ------------------------------------------------------------------ masks
    def _mask(self, L, T: int, dtype: str):
        key = (L, T, dtype)
        m = self.masks.get(key)
        if m is None:
            bb = self.builder_
            iota = const(np.arange(T, dtype=np.int32).reshape(1, 1, T), "int32")
            v = bb.emit(relax.op.subtract(L, iota))  # > 0 exactly on the valid frames
            v = bb.emit(relax.op.clip(v, relax.prim_value(tirx.IntImm("int64", 0)),
                                      relax.prim_value(tirx.IntImm("int64", 1))))
            m = self.masks[key] = bb.emit(relax.op.astype(v, dtype))
        return m

    def visit_var_binding_(self, binding):
        value = binding.value
        if call_op_name(value) == "nn.conv1d" and _kernel_size(value) > 1:
            x = value.args[0]
            src = self._length_of(x)
            if src is None:
                raise TimeMaskError(f"the input of the time-mixing conv1d {str(binding.var.name)!r} (kernel "
                                    f"{_kernel_size(value)}) is not a frame-wise function of the model input "
                                    "that the time mask can follow (only conv1d and elementwise ops are)")
            L, T = src
            xd = str(x.ty.dtype)
            xm = self.builder_.emit(relax.op.multiply(self.visit_expr(x), self._mask(L, T, xd)))
            new = relax.Call(value.op, [xm] + [self.visit_expr(a) for a in value.args[1:]], value.attrs)
            self.builder_.emit_normalized(relax.VarBinding(binding.var, self.builder_.normalize(new)))
            self.masked.append({"var": str(binding.var.name), "T": T, "K": _kernel_size(value), "dtype": xd})
        else:
            super().visit_var_binding_(binding)
        self._track(binding.var, value)


@tvm.transform.module_pass(opt_level=0, name="TimeMask")
class TimeMask:
    """Module pass: add the ``length`` input and mask every time-mixing conv1d's input (module doc)."""

    def __init__(self, func_name: str = "main"):
        self.func_name = func_name
        self.masked: list[dict] = []

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        gv = mod.get_global_var(self.func_name)
        func = mod[gv]
        if any(str(p.name) == LENGTH_INPUT for p in func.params):
            raise TimeMaskError(f"{self.func_name} already has a {LENGTH_INPUT!r} input (time mask applied twice?)")
        if len(func.params) != 1 or shape_of(func.params[0]) is None or len(shape_of(func.params[0])) != 3:
            raise TimeMaskError("the time mask needs one [B, F, T] mel input")
        mel = func.params[0]
        B = int(shape_of(mel)[0])
        length = relax.Var(LENGTH_INPUT, relax.TensorType((B,), "int32"))
        rw = _Masker(copy_module(mod), length, B)
        rw.mel = mel
        body = rw.visit_expr(func.body)
        if not rw.masked:
            raise TimeMaskError("no time-mixing conv1d (kernel > 1) follows the input frame for frame: nothing to "
                                "mask (is this a convolutional CTC model?)")
        new = relax.Function([mel, length], body, func.ret_ty, func.is_pure, func.attrs)
        if func.attrs is not None and "num_input" in func.attrs:
            new = new.with_attr("num_input", int(func.attrs["num_input"]) + 1)
        out = rw.builder_.get()
        out[gv] = new
        self.masked = rw.masked
        return relax.transform.DeadCodeElimination([gv.name_hint])(out)
