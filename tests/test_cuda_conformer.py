"""CUDA build of the integer Conformer, without a GPU.

dlight's GPU rules inline every block first; in the integer LayerNorm's square root (a Newton iteration
reading its previous step twice) that multiplies the expression at every step, and the Conformer's CUDA build
never finished.  ``zsq_tvm.cuda.pipeline.LinearInlineFallback`` takes those kernels instead.  Checked here:
the rule keeps the LayerNorm bit-exact (its unbound form run on llvm), it is picked for exactly the kernels
that need it, and a whole (tiny) Conformer builds for sm_75 quickly, integer-only in its TIR and CUDA C, with
its depthwise convs on the int8 kernel; in its SASS the one float use is nvcc's expansion of division by a
data-dependent divisor (pinned down exactly below).  Running it on a GPU bit for bit is ``bench/gpu_check.sh``
(the trained Conformer).
"""

from __future__ import annotations

import shutil
import time

import numpy as np
import pytest

pytest.importorskip("tvm")

from zsq_tvm.cuda import int8_gemm as g  # noqa: E402
from zsq_tvm.cuda import pipeline as P  # noqa: E402

NVCC = shutil.which("nvcc")
CUOBJDUMP = g.find_cuobjdump()


def test_linear_inline_keeps_the_integer_layernorm_exact():
    import tvm
    from tvm import relax, s_tir, tirx

    from relax_passes import integer_nonlinear as rin
    from zsq_tvm import intnonlinear as inl
    from zsq_tvm.lowering import lower

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.integers(-127, 128, (6, 144)), np.full((1, 144), 7)]).astype(np.int8)
    gamma, beta = rng.uniform(-2, 2, 144), rng.uniform(-1, 1, 144)
    want, _ = inl.i_layernorm(x, 3.0 / 127, gamma, beta, out_scale=6.0 / 127)
    bb = relax.BlockBuilder()
    v = relax.Var("l", relax.TensorType(x.shape, "int8"))
    with bb.function("main", [v]):
        with bb.dataflow():
            y, _ = rin.emit_i_layernorm(bb, v, 3.0 / 127, x.shape, gamma, beta, out_scale=6.0 / 127)
            gv = bb.emit_output(y)
        bb.emit_func_output(gv)
    low = lower(bb.get())
    target = tvm.target.Target("llvm")
    big = [gv for gv, f in low.functions_items()
           if isinstance(f, tirx.PrimFunc) and P.inlined_size(s_tir.Schedule(f)) > P.INLINE_SIZE_LIMIT]
    assert big, "the LayerNorm kernel no longer needs the rule: drop it or the test"
    for gv in big:
        sch = P.LinearInlineFallback(bind=False).apply(low[gv], target)
        n_blocks = len(sch.get_child_blocks(sch.get_sblock("root")))
        assert n_blocks < 40  # ~96 blocks before; the chains are inlined
        low[gv] = sch.mod["main"]
    vm = relax.VirtualMachine(tvm.compile(low, target=target), tvm.cpu())
    np.testing.assert_array_equal(vm["main"](tvm.runtime.tensor(x)).numpy(), want)


@pytest.fixture(scope="module")
def tiny_conformer_t4(tmp_path_factory):
    import onnx

    import zsq_tvm
    from tests.test_conformer_int import _tiny_conformer
    from zsq_tvm.nets.export import export_onnx

    p = export_onnx(_tiny_conformer(), tmp_path_factory.mktemp("conf") / "tiny.onnx", frames=32)
    q = zsq_tvm.quantize(onnx.load(str(p)), zsq_tvm.QuantConfig(frames=32, num_batches=1))
    t = time.time()
    b = zsq_tvm.compile(q, target="t4")
    return q, b, time.time() - t


def test_tiny_conformer_builds_for_t4(tiny_conformer_t4):
    import tvm
    from tvm import tirx

    from zsq_tvm.lowering import lower

    q, b, seconds = tiny_conformer_t4
    assert seconds < 300
    target = tvm.target.Target(g.SM75, host="llvm")
    with target:
        low = lower(P.prepare(q.mod))
    sched = P.schedule_module(low, target)
    rules = {gv.name_hint: str(f.attrs.get("zsq.gpu_rule")) for gv, f in sched.functions_items()
             if isinstance(f, tirx.PrimFunc) and f.attrs is not None and f.attrs.get("zsq.gpu_rule")}
    linear = [n for n, r in rules.items() if r == "LinearInlineFallback"]
    assert linear and len(linear) < len(rules)  # the LayerNorm kernels only, dlight for the rest
    src = g.cuda_source(b._ex)
    kernels = P.cuda_kernels(src)
    assert any(n.startswith("zsq_cuda_dw_") for n in kernels)  # the conv module's depthwise conv
    rep = P.integer_region_report(src)
    assert rep["ok"], rep["float_in_source"]
    assert b.integer_only["ok"] is True


def _divides_by_data(func) -> bool:
    """True when a PrimFunc has an integer floordiv/floormod whose divisor reads a buffer."""
    import tvm_ffi
    from tvm import tirx
    from tvm.ir.expr import TensorLoad

    found = [False]

    def reads(expr):
        hit = [False]
        tvm_ffi.structural_walk(expr, lambda n: hit.__setitem__(0, hit[0] or isinstance(n, TensorLoad)))
        return hit[0]

    def visit(node):
        if isinstance(node, (tirx.FloorDiv, tirx.FloorMod)) and not isinstance(node.b, tirx.IntImm) and reads(node.b):
            found[0] = True

    tvm_ffi.structural_walk(func.body, visit)
    return found[0]


@pytest.mark.skipif(NVCC is None or CUOBJDUMP is None, reason="needs nvcc and cuobjdump (nvidia-cuda-cuobjdump)")
def test_tiny_conformer_sass_float_is_only_nvccs_integer_division(tiny_conformer_t4, tmp_path):
    """A known limit, pinned down exactly: the GPU has no integer divider, so nvcc expands a division by a
    *data-dependent* divisor (the LayerNorm's Newton square root ``v // x``, the softmax's ``exp // sum``) into a
    float-reciprocal estimate with integer corrections (``I2F``, ``MUFU.RCP``, ``F2I``): exact, but on the float
    units.  The CUDA C has no float type; in the SASS, float appears only in kernels of PrimFuncs that divide by
    data, and only as those three instructions.  QuartzNet and Jasper have no such division (their SASS test
    is float-free, ``tests/test_cuda_model.py``)."""
    import tvm
    from tvm import tirx

    from zsq_tvm.lowering import lower

    q, b, _ = tiny_conformer_t4
    src = g.cuda_source(b._ex)
    sass = g.sass(g.nvcc_cubin(src, str(tmp_path), arch="sm_75"), CUOBJDUMP)
    rep = P.integer_region_report(src, sass)
    assert rep["float_in_source"] == {}
    assert rep["sass_functions"] == rep["kernels"]
    with tvm.target.Target(g.SM75, host="llvm"):
        low = lower(P.prepare(q.mod))
    dividers = {gv.name_hint for gv, f in low.functions_items() if isinstance(f, tirx.PrimFunc) and _divides_by_data(f)}
    assert dividers
    assert rep["float_in_sass"], "no float left: the division limit is gone -- make this test demand rep['ok']"
    for kernel, ops in rep["float_in_sass"].items():
        assert set(ops) <= {"I2F", "F2I", "MUFU"}, (kernel, ops)
        assert kernel.split("_kernel")[0] in dividers, kernel
