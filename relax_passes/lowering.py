"""Lowering helpers: the Relax -> TIR pipeline the integer-only check inspects, host build + run.

``lower(mod)`` applies the same phases ``tvm.compile``'s default Relax pipeline applies before
VM code generation (LegalizeOps, AnnotateTIROpPattern, FoldConstant, FuseOps, FuseTIR,
DeadCodeElimination), so :class:`relax_passes.IntegerOnlyCheck` sees the PrimFuncs that will run.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

__all__ = ["lower", "host_target", "compile_module", "run_module"]


def lower(mod: tvm.IRModule) -> tvm.IRModule:
    """Legalize every Relax op to TIR and fuse (requantize epilogues into their conv)."""
    seq = tvm.transform.Sequential([
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
        relax.transform.DeadCodeElimination(),
    ])
    return seq(mod)


def host_target() -> tvm.target.Target:
    """``llvm`` for this machine's CPU (``mcpu`` from LLVM's host detection)."""
    return tvm.target.Target({"kind": "llvm", "mcpu": tvm.target.codegen.llvm_get_system_cpu()})


def compile_module(mod: tvm.IRModule, target=None):
    """``tvm.compile`` for the host (or ``target``) and wrap in a CPU ``relax.VirtualMachine``."""
    ex = tvm.compile(mod, target=target if target is not None else host_target())
    return relax.VirtualMachine(ex, tvm.cpu())


def run_module(vm, *inputs, func_name: str = "main"):
    """Run ``main`` on numpy inputs; returns numpy (tuple for tuple outputs)."""
    res = vm[func_name](*[tvm.runtime.tensor(np.ascontiguousarray(x)) for x in inputs])

    def conv(r):
        return r.numpy() if hasattr(r, "numpy") else tuple(conv(x) for x in r)
    return conv(res)
