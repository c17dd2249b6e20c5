"""relax_passes.tir_stack_scratch: small scratch buffers of llvm kernels become stack allocas.

The property that matters for speed (no workspace-pool round trip per parallel task) is checked on the
generated code; the property that matters for correctness (same results) on a run; the limits (large
buffers, C targets) on the generated code too.
"""

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

from relax_passes.tir_stack_scratch import StackScratch, register_pipeline  # noqa: E402


def _scratch_kernel(n_rows: int, width: int, scope: str):
    """``Y[r, i] = 2 * X[r, i] + 1`` through a per-row scratch buffer in ``scope``, rows in parallel."""
    from tvm import s_tir
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def func(X: T.Buffer((n_rows, width), "int32"), Y: T.Buffer((n_rows, width), "int32")):
        T.func_attr({"global_symbol": "main", "tirx.noalias": True})
        S = T.sblock_alloc_buffer((n_rows, width), "int32")
        for r, i in T.grid(n_rows, width):
            with T.sblock("twice"):
                vr, vi = T.axis.remap("SS", [r, i])
                S[vr, vi] = X[vr, vi] * 2
        for r, i in T.grid(n_rows, width):
            with T.sblock("plus1"):
                vr, vi = T.axis.remap("SS", [r, i])
                Y[vr, vi] = S[vr, vi] + 1

    sch = s_tir.Schedule(func)
    p1 = sch.get_sblock("plus1")
    r = sch.get_loops(p1)[0]
    sch.parallel(r)
    sch.compute_at(sch.get_sblock("twice"), r)
    sch.set_scope(sch.get_sblock("twice"), 0, scope)
    return sch.mod


def _source(lib, fmt):
    return (lib.mod if hasattr(lib, "mod") else lib).inspect_source(fmt)


@pytest.mark.parametrize("scope", ["local", "global"])
def test_llvm_scratch_leaves_workspace_pool(scope):
    # 2048 bytes per row: over LowerTVMBuiltin's own 1024-byte stack limit, so TVM alone uses the pool
    mod = _scratch_kernel(8, 512, scope)
    tgt = tvm.target.Target({"kind": "llvm"})
    base = tvm.compile(mod, target=tgt)
    ours = tvm.compile(mod, target=tgt, tir_pipeline=register_pipeline())
    assert "TVMBackendAllocWorkspace" in _source(base, "ll")
    assert "TVMBackendAllocWorkspace" not in _source(ours, "ll")
    x = np.random.default_rng(0).integers(-1000, 1000, (8, 512)).astype(np.int32)
    outs = []
    for lib in (base, ours):
        y = tvm.runtime.empty((8, 512), "int32")
        lib["main"](tvm.runtime.tensor(x), y)
        outs.append(y.numpy())
    np.testing.assert_array_equal(outs[0], 2 * x + 1)
    np.testing.assert_array_equal(outs[1], 2 * x + 1)


def test_large_scratch_stays_in_pool():
    mod = _scratch_kernel(2, 8192, "local")  # 32 KiB per row > the 16 KiB default limit
    lib = tvm.compile(mod, target=tvm.target.Target({"kind": "llvm"}), tir_pipeline=register_pipeline())
    assert "TVMBackendAllocWorkspace" in _source(lib, "ll")


def test_c_target_untouched():
    # C targets (Cortex-M firmware: small stacks) keep TVM's allocation policy
    mod = _scratch_kernel(8, 512, "local")
    lib = tvm.compile(mod, target=tvm.target.Target({"kind": "c"}), tir_pipeline=register_pipeline())
    assert "TVMBackendAllocWorkspace" in _source(lib, "c")


def test_pass_in_sequential_is_idempotent():
    # the pass alone, in a user's Sequential, before host finalisation: applying it twice changes nothing
    from tvm.s_tir import pipeline as s_tir_pipeline

    tgt = tvm.target.Target({"kind": "llvm"})
    mod = tvm.tirx.transform.BindTarget(tgt.with_host(tgt))(_scratch_kernel(4, 512, "local"))
    lower, _, _ = s_tir_pipeline.default_s_tir_pipeline()
    lowered = lower(mod)
    once = StackScratch()(lowered)
    twice = StackScratch()(once)
    assert "disable_lower_builtin" in once.script()
    assert "disable_lower_builtin" not in lowered.script()
    tvm.ir.assert_structural_equal(once, twice)


def test_x86_kernels_use_no_workspace_pool():
    from zsq_tvm.backends.x86 import depthwise as dw
    from zsq_tvm.backends.x86 import pointwise as pw

    libs = [dw.build(dw.DepthwiseSpec(64, 100, 33, pad_l=16, pad_r=16)),
            pw.build(pw.PointwiseSpec(T=100, K=64, M=32, layout="ncw"))]
    for lib in libs:
        assert "TVMBackendAllocWorkspace" not in _source(lib, "ll")
