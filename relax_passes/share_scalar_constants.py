"""ShareScalarConstants: pass integer scalar constants to kernels as data, so identical layers share kernels.

Why: Relax's ``LegalizeOps`` turns a 0-d constant operand of a binary op into a literal of the
generated PrimFunc (``_try_convert_to_scalar_const``).  The integer graph is full of such scalars
that differ from layer to layer — dyadic multipliers ``M`` and shifts ``s`` of every requantization,
the i-exp / i-GELU polynomial constants of each scale, the LayerNorm constants — so every Conformer
layer gets its own copy of every fused kernel (``fused_..._multiply52_...`` vs ``..._multiply71_...``):
18 structurally identical layers make ~18x the PrimFuncs, and LLVM code generation time grows with
them.  As 1-element tensors the values reach the kernel as a buffer argument instead; the kernels of
two layers then differ only in their arguments and FuseTIR / the BlockBuilder keep one copy.

Before (quantized ``main``, after Quantize; ``x`` has ndim >= 1)::

    lv7 = R.multiply(lv6, R.const(1518500250, "int64"))          # 0-d: becomes a literal
    lv8 = R.right_shift(R.add(lv7, R.const(1073741824, "int64")), R.const(31, "int64"))

After::

    lv7 = R.multiply(lv6, R.const([1518500250], "int64"))        # shape [1]: a kernel argument
    lv8 = R.right_shift(R.add(lv7, R.const([1073741824], "int64")), R.const([31], "int64"))

Only integer constants, only binary element-wise ops whose *other* operand has ndim >= 1 (so the
broadcast result shape is unchanged: ``[1]`` broadcasts into any shape of rank >= 1).  Every such
value is rewritten, 0 and 1 included: which values repeat across layers is data, and a kernel's code
must not depend on data for the layers to share it.  The arithmetic is unchanged element for element
(same dtype, same values), so results stay bit-exact with :func:`relax_passes.reference.run_reference`,
which interprets the module *before* this pass.

Measured (host build, ``bench/share_constants_compare.py``, ``bench/conformer_large.py``):
conformer-ctc-large (18 layers) 47 kernels instead of 358; conformer-ctc-small (8 layers, T = 640)
46 instead of 176, lower + compile 19 s instead of 87-113 s, run +1-3 % (min of 6 runs, two
measurements: 0.428 vs 0.417 s, 0.439 vs 0.433 s; identical output); a tiny Conformer has 46 kernels
with 1, 2 or 3 layers (50 / 68 / 86 without).  The price is that LLVM no longer sees the values (a
division by a per-layer constant, e.g. the i-exp's ``floor_divide`` by ``q_ln2``, is a real division).

It runs in :func:`zsq_tvm.build.lower` for CPU (``llvm``) targets, before the common lowering, so the
integer-only check (``zsq check`` re-lowers the same way) inspects the very kernels that are compiled;
not in Quantize: the saved quantized module, which the reference interprets, is unchanged.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from relax_passes._util import const, is_tensor_const

__all__ = ["ShareScalarConstants", "share_scalar_constants", "BINARY_OPS"]

#: element-wise binary ops whose 0-d constant operands LegalizeOps would bake into the PrimFunc
BINARY_OPS = frozenset(f"relax.{n}" for n in (
    "add", "subtract", "multiply", "floor_divide", "right_shift", "left_shift", "maximum", "minimum",
    "bitwise_and", "bitwise_or", "bitwise_xor", "equal", "not_equal", "less", "less_equal", "greater",
    "greater_equal"))


def _int_scalar_const(e) -> bool:
    return (is_tensor_const(e) and e.value.ndim == 0 and np.dtype(str(e.value.dtype)).kind in "iu")


def _rank(e):
    ty = e.ty
    return int(ty.ndim) if isinstance(ty, relax.TensorType) and ty.ndim >= 0 else -1


@relax.expr_functor.mutator
class _Rewriter(relax.PyExprMutator):
    def __init__(self, mod):
        super().__init__(mod)
        self.rewritten = 0

    def visit_call_(self, call):
        call = super().visit_call_(call)
        if not (isinstance(call.op, tvm.ir.Op) and call.op.name in BINARY_OPS and len(call.args) == 2):
            return call
        a, b = call.args
        args = list(call.args)
        for i, (c, other) in enumerate(((a, b), (b, a))):
            if _int_scalar_const(c) and not _int_scalar_const(other) and _rank(other) >= 1:
                v = c.value.numpy()
                args[i] = const(v.reshape(1), str(v.dtype))
        if all(x.same_as(y) for x, y in zip(args, call.args)):
            return call
        self.rewritten += 1
        return relax.Call(call.op, args, call.attrs)


def share_scalar_constants(mod: tvm.IRModule) -> tuple[tvm.IRModule, int]:
    """``(rewritten module, how many calls were changed)``: 0-d integer constants of element-wise binary ops ->
    shape-[1] constants (see module doc)."""
    rw = _Rewriter(mod)
    for gv, func in list(mod.functions.items()):
        if isinstance(func, relax.Function):
            new = rw.visit_expr(func)
            rw.builder_.update_func(gv, new)
    return rw.builder_.get(), rw.rewritten


@tvm.transform.module_pass(opt_level=0, name="ShareScalarConstants")
class ShareScalarConstants:
    """Module pass: :func:`share_scalar_constants`."""

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        return share_scalar_constants(mod)[0]
