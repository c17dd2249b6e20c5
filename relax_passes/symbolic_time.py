"""SymbolicTime: a quantized module of fixed length ``T`` becomes one of any length -- the time axis of its input
turns into a shape variable and every shape after it is derived again (Relax symbolic shapes).

Why after quantization: calibration and quantization need concrete tensors (the mels they run have some length),
but nothing they decide depends on that length -- scales and multipliers are per channel, the weights do not see
time.  So the model is quantized at the calibration length and then generalized; the integer arithmetic of every
op is untouched, only the shapes change.

Before (the integer module of :class:`relax_passes.Quantize` at ``T = 997``)::

    def main(mel: R.Tensor((1, 64, 997), "float32")) -> R.Tensor((1, 499, 29), "float32"):
        q  = R.call_tir(zsq_input_quantize, (mel,), out_ty=R.Tensor((1, 64, 997), "int8"))
        a  = R.nn.conv1d(q, W0, strides=[2], padding=[16, 16])               # (1, 256, 499) int32
        ...
        y  = R.call_tir(zsq_output_dequantize, (c,), out_ty=R.Tensor((1, 499, 29), "float32"))

After::

    def main(mel: R.Tensor((1, 64, "T"), "float32")) -> R.Tensor((1, "(T - 1) // 2 + 1", 29), "float32"):
        q  = R.call_tir(zsq_input_quantize, (mel,), out_ty=R.Tensor((1, 64, T), "int8"))    # any-shape kernel
        a  = R.nn.conv1d(q, W0, strides=[2], padding=[16, 16])               # (1, 256, (T - 1) // 2 + 1)
        ...
        y  = R.call_tir(zsq_output_dequantize, (c, T), out_ty=R.Tensor((1, (T - 1) // 2 + 1, 29), "float32"))

Every binding is emitted again through the block builder, which infers its shape from its operands; the two
boundary kernels are regenerated over the symbolic shape from the attributes they carry (their arithmetic is
:func:`relax_passes.quantize.input_quantize_te` / ``output_dequantize_te``, the same code that made them).

Which graphs: those whose ops are all shape-polymorphic along time -- convolutions, elementwise integer ops whose
constant operands do not span the time axis, clip, casts, axis permutations (the QuartzNet / Jasper family).  A
graph with an op whose attributes or constants fix the length (a reshape to a constant shape, a concatenation
with a time-sized constant, a slice, a reduction, attention over the time axis: the Conformer as exported today)
raises :class:`SymbolicTimeError` naming those ops.  As a proof that the generalization is right, every derived
shape is checked to equal the original one when the variable is set back to ``T``.
"""

from __future__ import annotations

import tvm
from tvm import relax, tirx

from zsq_tvm.core.errors import ConfigError

from relax_passes._util import bindings, call_op_name, const_value, is_tensor_const, main_function
from relax_passes.quantize import (INPUT_QUANTIZE, OUTPUT_DEQUANTIZE, ROLE_ATTR, input_quantize_te,
                                   output_dequantize_te)

__all__ = ["SymbolicTime", "symbolic_time", "SymbolicTimeError", "TIME_VAR", "SHAPE_POLYMORPHIC_OPS"]

TIME_VAR = "T"
#: ops whose output shape follows their operands' along any length (given constants that do not span time)
SHAPE_POLYMORPHIC_OPS = frozenset({
    "nn.conv1d", "nn.conv2d", "add", "subtract", "multiply", "right_shift", "left_shift", "maximum", "minimum",
    "floor_divide", "bitwise_and", "bitwise_or", "clip", "astype", "permute_dims", "expand_dims", "nn.relu",
})


class SymbolicTimeError(ConfigError):
    """The graph fixes its length somewhere: it cannot take any T."""


def _check(func) -> None:
    bad = {}
    for b in bindings(func):
        v = b.value
        op = call_op_name(v)
        if op == "call_tir":
            continue
        if op is None and isinstance(v, (relax.Var, relax.Tuple, relax.TupleGetItem)):
            continue
        if op not in SHAPE_POLYMORPHIC_OPS:
            bad.setdefault(op or type(v).__name__, []).append(str(b.var.name))
    if bad:
        parts = [f"{k} ({', '.join(v[:3])}{', ...' if len(v) > 3 else ''})" for k, v in sorted(bad.items())]
        raise SymbolicTimeError(
            "the graph fixes its length in " + "; ".join(parts),
            "quantize it with a fixed length (--frames T, e.g. 1000); `zsq transcribe` runs such a build over "
            "audio of any length in overlapping windows")


def symbolic_time(mod: tvm.IRModule, func_name: str = "main") -> tvm.IRModule:
    """``mod`` with the time axis (last axis of ``main``'s first input) symbolic (module doc); ``mod`` unchanged."""
    func = main_function(mod, func_name)
    p0 = func.params[0]
    shape0 = [int(s) for s in p0.ty.shape]
    if len(shape0) != 3:
        raise SymbolicTimeError(f"the model input is {shape0}, not [batch, features, frames]",
                                "quantize it with --frames T")
    if len(func.params) != 1:
        raise SymbolicTimeError("the module has a second input (a length mask)",
                                "quantize without --time-mask: a symbolic-T build runs each input at its own length")
    T_fixed = shape0[2]
    _check(func)
    Tv = tirx.Var(TIME_VAR, "int64")
    bb = relax.BlockBuilder()
    new_p0 = relax.Var(p0.name, relax.TensorType(shape0[:2] + [Tv], p0.ty.dtype))
    vmap = {p0: new_p0}

    def remap(a):
        if isinstance(a, relax.Var):
            return vmap[a]
        if isinstance(a, relax.Tuple):
            return relax.Tuple([remap(x) for x in a.fields])
        if isinstance(a, relax.TupleGetItem):
            return relax.TupleGetItem(remap(a.tuple_value), a.index)
        return a

    with bb.function(func_name, [new_p0], attrs=dict(func.attrs) if func.attrs is not None else None):
        with bb.dataflow():
            for b in bindings(func):
                v = b.value
                if call_op_name(v) == "call_tir":
                    pf = mod[v.args[0]]
                    attrs = dict(pf.attrs) if pf.attrs is not None else {}
                    role = attrs.get(ROLE_ATTR)
                    arg = remap(v.args[1].fields[0])
                    name = v.args[0].name_hint
                    if role == INPUT_QUANTIZE:
                        bits = int(attrs["zsq.bits"])
                        qmax = 2 ** (bits - 1) - 1
                        te_f = input_quantize_te(float(attrs["zsq.alpha"]), float(attrs["zsq.scale"]), -qmax, qmax,
                                                 str(v.ty.dtype))
                    elif role == OUTPUT_DEQUANTIZE:
                        te_f = output_dequantize_te(float(attrs["zsq.scale"]))
                    else:
                        raise SymbolicTimeError(f"call_tir of {name} (not a boundary kernel)",
                                                "generalize the quantized module before any offload or lowering")
                    nv = bb.emit(bb.call_te(te_f, arg, primfunc_name_hint=name, primfunc_attrs=attrs),
                                 name_hint=b.var.name)
                elif isinstance(v, relax.Call):
                    nv = bb.emit(relax.Call(v.op, [remap(a) for a in v.args], v.attrs, v.ty_args), name_hint=b.var.name)
                    if call_op_name(v) not in ("nn.conv1d", "nn.conv2d"):  # their weights do not span time
                        _constants_broadcast(nv, v)
                else:
                    nv = bb.emit(remap(v), name_hint=b.var.name)
                _same_at(b.var, nv, Tv, T_fixed)
                vmap[b.var] = nv
            out = bb.emit_output(remap(func.body.body))
        bb.emit_func_output(out)
    new = bb.get()
    for gv, f in mod.functions.items():  # anything else the module holds (none today) comes along
        if gv.name_hint != func_name and not isinstance(f, tirx.PrimFunc):
            new[gv] = f
    return relax.transform.DeadCodeElimination([func_name])(new)


def _constants_broadcast(new, call) -> None:
    """An elementwise op's constant operands must be of size 1 along every axis whose length now depends on T: a
    constant sized for one length would not fit another."""
    if not isinstance(new.ty, relax.TensorType):
        return
    if new.ty.shape is None:  # the operands' shapes no longer agree: a constant sized for the fixed length
        raise SymbolicTimeError(f"{new.name}: {call_op_name(call)} of operands whose shapes only agree at the fixed "
                                "length (a constant that spans the time axis)",
                                "quantize it with a fixed length (--frames T)")
    out = list(new.ty.shape)
    for a in call.args:
        if not is_tensor_const(a):
            continue
        cs = list(const_value(a).shape)
        for k in range(1, min(len(cs), len(out)) + 1):
            if cs[-k] != 1 and not isinstance(out[-k], tirx.IntImm):
                raise SymbolicTimeError(f"{new.name}: {call_op_name(call)} with a constant of shape {tuple(cs)} "
                                        "that spans the time axis", "quantize it with a fixed length (--frames T)")


def _same_at(old, new, Tv, T_fixed: int) -> None:
    """The derived shape, with ``T`` set back to the fixed length, is the original shape (module doc)."""
    ot, nt = old.ty, new.ty
    if not isinstance(ot, relax.TensorType):
        return
    ana = tvm.sym.Analyzer()
    ana.bind(Tv, tirx.IntImm("int64", T_fixed))
    ns = [int(ana.simplify(s)) for s in nt.shape]
    os_ = [int(s) for s in ot.shape]
    if ns != os_ or str(nt.dtype) != str(ot.dtype):
        raise SymbolicTimeError(f"{old.name}: generalized to {ns} {nt.dtype} at T = {T_fixed}, was {os_} {ot.dtype}",
                                "report this model: quantize it with --frames T meanwhile")


@tvm.transform.module_pass(opt_level=0, name="SymbolicTime")
class SymbolicTime:
    """Module pass: :func:`symbolic_time`."""

    def __init__(self, func_name: str = "main"):
        self.func_name = func_name

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        return symbolic_time(mod, self.func_name)
