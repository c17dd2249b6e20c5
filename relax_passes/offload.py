"""The one offload mechanism: replace int8 producer + requantize chains by calls of hand-written kernels.

A backend registers its kernels as :class:`KernelRule` s -- which producer pattern
(:data:`relax_passes.patterns.PRODUCERS`) and final dtypes, which check and kernel (``lower``: a matched
:class:`~relax_passes.patterns.Chain` -> :class:`Offload`, or None to keep the default lowering), which emitter
(the ``call_tir`` and any layout glue) -- and calls :func:`offload`.  The mechanism matches the rules
(:func:`relax_passes.patterns.requantize_chains`), lets an optional ``join`` merge accepted chains (x86's residual
epilogue), adds each kernel's PrimFunc to the module once per name, puts the emitted call in place of the chain's
final binding and drops the bindings nothing uses any more.  It runs on the quantized, not yet lowered module;
everything it does not replace keeps the default lowering.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple

import numpy as np
import tvm
from tvm import relax

from relax_passes._util import copy_module, finish_rewrite
from relax_passes.patterns import Chain, requantize_chains

__all__ = ["KernelRule", "Offload", "offload", "kernel_args", "kernel_prim_func"]


class Offload(NamedTuple):
    """How one accepted chain becomes a kernel call."""

    x: object  # the kernel's activation input, as in the graph
    spec: object  # the kernel spec: what the emitter and the replaced-layer record read
    kernel: tuple  # (global name, builder of the PrimFunc): built once per name
    W: np.ndarray | None
    B: np.ndarray | None  # int32 bias as the kernel takes it
    Mul: np.ndarray  # int64 per output channel
    Sh: np.ndarray  # int64 per output channel
    extra: tuple = ()  # further graph inputs (a fused residual, a second activation)


@dataclass(frozen=True)
class KernelRule:
    """One kernel a backend offers (module doc)."""

    kind: str  # a relax_passes.patterns.PRODUCERS key
    out_dtypes: tuple  # final casts the kernel writes
    lower: Callable[[Chain], Offload | None]
    emit: Callable  # (rewriter, Offload, kernel GlobalVar, x, *extra) -> the expression replacing the chain
    describe: Callable[[object], dict]  # spec -> the replaced-layer record (with "var" added)
    symbolic: bool = False  # takes a symbolic length (a symbolic-T module's time axis); else such chains are left


def offload(mod: tvm.IRModule, rules, func_name: str = "main", join=None) -> tuple[tvm.IRModule, list[dict]]:
    """``(module with the chains replaced, [record per replaced chain])`` (module doc); ``mod`` is not changed.
    ``join(func, plan) -> plan`` may rewrite the plan (final var -> ``(rule, Offload)``) before it is applied."""
    gv = mod.get_global_var(func_name)
    func = mod[gv]
    plan = {}
    for rule in rules:
        for chain in requantize_chains(func, rule.kind, rule.out_dtypes):
            if not rule.symbolic and not all(isinstance(v, (int, str, float)) for v in chain.spec.values()):
                continue  # a symbolic size this kernel cannot take: the default lowering keeps it
            off = rule.lower(chain)
            if off is not None:
                plan[chain.final] = (rule, off)
    if join is not None:
        plan = join(func, plan)
    replaced = [{"var": str(var.name), **rule.describe(off.spec)} for var, (rule, off) in plan.items()]
    if not plan:
        return copy_module(mod), replaced
    return finish_rewrite(_KernelCalls(copy_module(mod), plan), func, gv), replaced


def kernel_args(x, W, B, Mul, Sh) -> list:
    """The argument list every fused int8 conv kernel takes: activation, packed weights (int8 values; stored
    as int8, as int16 or as int32 words of two int16 halves where the kernel multiplies int16 pairs: x86
    AVX2), int32 bias, int64 dyadic multiplier and shift (per output channel)."""
    wd = str(np.asarray(W).dtype)
    assert wd in ("int8", "int16", "int32"), wd  # relax.const would convert the values, not keep the bits
    return [x, relax.const(W, wd), relax.const(B, "int32"), relax.const(Mul, "int64"),
            relax.const(Sh, "int64")]


def kernel_prim_func(sch, name: str, kernel: str, scheduled: bool = False):
    """The PrimFunc of a hand-scheduled kernel as the Relax graph calls it: exported as ``name``, opaque to
    fusion (``op_pattern`` 8), tagged ``zsq.kernel`` (tuning skips it) and, where the target pipeline would
    otherwise schedule it again (CUDA's dlight rules), ``tirx.is_scheduled``."""
    f = sch.mod["main"].with_attr("global_symbol", name).with_attr("op_pattern", 8).with_attr("zsq.kernel", kernel)
    return f.with_attr("tirx.is_scheduled", True) if scheduled else f


@relax.expr_functor.mutator
class _KernelCalls(relax.PyExprMutator):
    """Puts each planned chain's kernel call in place of its final binding; the chain's other bindings are
    left for dead-code elimination.  Emitters build on :meth:`emit` and add helper kernels with :meth:`kernel`."""

    def __init__(self, mod, plan):
        super().__init__(mod)
        self.plan = plan
        self.gvars = {}

    def emit(self, expr):
        return self.builder_.emit(expr)

    def kernel(self, name, build):
        gv = self.gvars.get(name)
        if gv is None:
            gv = self.gvars[name] = self.builder_.add_func(build(), name)
        return gv

    def visit_var_binding_(self, binding):
        p = self.plan.get(binding.var)
        if p is None:
            return super().visit_var_binding_(binding)
        rule, off = p
        gv = self.kernel(*off.kernel)
        new = rule.emit(self, off, gv, self.visit_expr(off.x), *[self.visit_expr(e) for e in off.extra])
        self.builder_.emit_normalized(relax.VarBinding(binding.var, self.builder_.normalize(new)))
