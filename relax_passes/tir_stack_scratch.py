"""TIR pass: small per-task scratch buffers of CPU kernels live on the stack, not in the workspace pool.

Why: TVM's ``LowerTVMBuiltin`` keeps an allocation on the stack only when its scope is ``"global"``
and it is under 1024 bytes; every other allocation becomes a ``TVMBackendAllocWorkspace`` /
``TVMBackendFreeWorkspace`` pair at the place the buffer is allocated.  Our hand-written x86
kernels (:mod:`zsq_tvm.backends.x86`) allocate their register tiles (``"local"`` accumulators, the per-channel
bias / multiplier / shift scalars) and the depthwise kernel's 2 KB window row *inside* the parallel
loop, so each tile paid 4-5 pool round trips (``WorkspacePool::AllocWorkspace`` + ``Free``): about
12% of QuartzNet-15x5's run time in ``perf``, and 40% of a short depthwise conv.  On the stack the
same buffers cost nothing: LLVM places the ``alloca`` in the parallel lambda's entry block and
promotes the register tiles to registers.

IR before (host function after ``MakePackedAPI``, what ``LowerTVMBuiltin`` receives)::

    for c in T.parallel(512):
        Xw = T.alloc_buffer((32,), "int32x16")          # 2048 B, global -> workspace
        acc_local = T.alloc_local((64,), "int32")       # local -> workspace
        ...

after::

    for c in T.parallel(512):
        Xw = T.alloc_buffer((32,), "int32x16", annotations={"disable_lower_builtin": 1})
        acc_local = T.alloc_local((64,), "int32", annotations={"disable_lower_builtin": 1})
        ...

Only allocations with a constant size of at most ``limit`` bytes (default 16 KiB: threads of TVM's
pool have the 8 MiB default stack) in functions compiled for an ``llvm`` target are annotated; C
targets (Cortex-M firmware, small stacks) and device code are left alone.

Use: ``tvm.compile(mod, target, tir_pipeline=TIR_PIPELINE)`` (the default S-TIR pipeline with this
pass in front of its host finalisation), or the pass alone in any TIR ``Sequential`` that runs
before ``LowerTVMBuiltin``.
"""

from __future__ import annotations

import functools

__all__ = ["StackScratch", "TIR_PIPELINE", "register_pipeline"]

TIR_PIPELINE = "zsq_stack_scratch"
_ANNOTATION = "disable_lower_builtin"  # tvm::tirx::transform::kDisableLowerTVMBuiltin


def _constant_nbytes(buf) -> int | None:
    import tvm

    n = 1
    for extent in buf.ty.shape:
        if not isinstance(extent, tvm.tirx.IntImm):
            return None
        n *= int(extent.value)
    dt = tvm.runtime.DataType(str(buf.ty.dtype))
    return n * dt.bits * dt.lanes // 8


def _is_llvm(func) -> bool:
    tgt = func.attrs.get("target", None) if func.attrs is not None else None
    return tgt is not None and str(tgt.kind.name) == "llvm"


def StackScratch(limit: int = 16384):
    """Module pass: annotate constant-size allocations of at most ``limit`` bytes in llvm-target
    PrimFuncs so ``LowerTVMBuiltin`` leaves them as stack allocas (see the module docstring)."""
    import tvm
    import tvm_ffi
    from tvm import tirx

    def annotate(node):
        ann = dict(node.annotations or {})
        if _ANNOTATION in ann:
            return node
        nbytes = _constant_nbytes(node.buffer)
        if nbytes is None or nbytes > limit:
            return node
        ann[_ANNOTATION] = tirx.IntImm("int32", 1)
        return tirx.AllocBuffer(node.buffer, ann)

    @tvm.transform.module_pass(opt_level=0, name="StackScratch")
    def _pass(mod, _ctx):
        funcs = {}
        changed = False
        for gv, func in mod.functions.items():
            if isinstance(func, tirx.PrimFunc) and _is_llvm(func):
                new = tvm_ffi.structural_map(func, (tirx.AllocBuffer, annotate))
                changed = changed or not new.same_as(func)
                func = new
            funcs[gv] = func
        return tvm.IRModule(funcs, attrs=mod.attrs) if changed else mod

    return _pass


@functools.lru_cache(maxsize=None)
def register_pipeline() -> str:
    """Register :data:`TIR_PIPELINE`: TVM's default S-TIR pipeline, then :func:`StackScratch` ahead of
    the host finalisation (``LowerTVMBuiltin``).  Returns the name for ``tir_pipeline=``."""
    import tvm
    from tvm.s_tir import pipeline as s_tir_pipeline
    from tvm.tirx import compilation_pipeline

    def factory(**_kwargs):
        lower, finalize_host, finalize_device = s_tir_pipeline.default_s_tir_pipeline()
        return lower, (lambda: tvm.transform.Sequential([StackScratch(), finalize_host()])), finalize_device

    compilation_pipeline.register_tir_pipeline(TIR_PIPELINE, factory)
    return TIR_PIPELINE
