"""CUDA build of the integer Conformer, without a GPU.

dlight's GPU rules inline every block first; in the integer LayerNorm's square root (a Newton iteration
reading its previous step twice) that multiplies the expression at every step, and the Conformer's CUDA build
never finished.  ``zsq_tvm.backends.cuda.pipeline.LinearInlineFallback`` takes those kernels instead.  Checked here:
the rule keeps the LayerNorm bit-exact (its unbound form run on llvm), it is picked for exactly the kernels
that need it and makes each of them one GPU kernel, and a whole (tiny) Conformer builds for sm_75 quickly, integer-only in its TIR and CUDA C, with
its depthwise convs on the int8 kernel -- and in its SASS: the divisions by a run-time divisor (LayerNorm,
softmax, sigmoid), which nvcc would expand on the float units, are integer long divisions
(``relax_passes.tir_int_division``), and the whole graph in that form equals the numpy reference on llvm.  Running
it on a GPU bit for bit is ``tools/gpu_check.sh`` (the trained Conformer).
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

pytest.importorskip("tvm")

from zsq_tvm.backends.cuda import int8_gemm as g  # noqa: E402
from relax_passes import tir_int_division as D  # noqa: E402
from zsq_tvm.backends.cuda import pipeline as P  # noqa: E402
from zsq_tvm.backends.cuda.target import CUDA_SOURCE  # noqa: E402
from conftest import reseal  # noqa: E402

NVCC = shutil.which("nvcc")
CUOBJDUMP = g.find_cuobjdump()


def test_linear_inline_keeps_the_integer_layernorm_exact():
    import tvm
    from tvm import relax, s_tir, tirx

    from relax_passes import integer_nonlinear as rin
    from zsq_tvm.core import intnonlinear as inl
    from relax_passes.lowering import lower

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.integers(-127, 128, (6, 144)), np.full((1, 144), 7)]).astype(np.int8)
    gamma, beta = rng.uniform(-2, 2, 144), rng.uniform(-1, 1, 144)
    want, _ = inl.i_layernorm(x, 3.0 / 127, gamma, beta, out_scale=6.0 / 127)
    bb = relax.BlockBuilder()
    v = relax.Var("l", relax.TensorType(x.shape, "int8"))
    with bb.function("main", [v]):
        with bb.dataflow():
            y, _ = rin.emit_i_layernorm(bb, v, 3.0 / 127, gamma, beta, out_scale=6.0 / 127)
            gv = bb.emit_output(y)
        bb.emit_func_output(gv)
    low = lower(bb.get())
    assert sum(D.data_divisions(f) for _, f in low.functions_items() if isinstance(f, tirx.PrimFunc))
    target = tvm.target.Target("llvm")
    big = [gv for gv, f in low.functions_items()
           if isinstance(f, tirx.PrimFunc) and P.inlined_size(s_tir.Schedule(f)) > P.INLINE_SIZE_LIMIT]
    assert big, "the LayerNorm kernel no longer needs the rule: drop it or the test"
    for gv in big:
        sch = P.LinearInlineFallback(bind=False).apply(low[gv], target)
        n_blocks = len(sch.get_child_blocks(sch.get_sblock("root")))
        assert n_blocks < 40  # ~96 blocks before; the chains are inlined
        low[gv] = sch.mod["main"]
    # with the CUDA build's TIR pipeline: its divisions by data become integer long divisions
    vm = relax.VirtualMachine(tvm.compile(low, target=target, tir_pipeline=D.register_pipeline()), tvm.cpu())
    np.testing.assert_array_equal(vm["main"](tvm.runtime.tensor(x)).numpy(), want)


@pytest.fixture(scope="module")
def tiny_conformer_t4(tmp_path_factory):
    import onnx

    import zsq_tvm
    from tests.test_conformer_int import _tiny_conformer
    from zsq_tvm.zoo.nets.export import export_onnx

    p = export_onnx(_tiny_conformer(), tmp_path_factory.mktemp("conf") / "tiny.onnx", frames=32)
    q = zsq_tvm.quantize(onnx.load(str(p)), zsq_tvm.QuantConfig(frames=32, num_batches=1))
    # how long this takes is a benchmark figure (bench/compile_time.py), never an assertion: it fails on a busy machine
    return q, zsq_tvm.compile(q, target="t4")


def test_tiny_conformer_builds_for_t4(tiny_conformer_t4):
    import tvm
    from tvm import tirx

    from relax_passes.lowering import lower

    q, b = tiny_conformer_t4
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
    # each LayerNorm kernel is one GPU kernel (its per-row chain computed per thread), not ~25 launches
    for n in linear:
        assert f"{n}_kernel" in kernels and f"{n}_kernel_1" not in kernels, n
    rep = P.integer_region_report(src)
    assert rep["ok"], rep["float_in_source"]
    assert b.integer_only["ok"] is True


def test_tiny_conformer_cuda_form_is_bit_exact_on_llvm(tiny_conformer_t4):
    """The Conformer as the CUDA build compiles it -- both kernel passes (their CPU-runnable kernels) and the TIR
    pipeline that turns every division by a run-time divisor into an integer long division -- equals the numpy
    reference bit for bit."""
    import tvm
    from tvm import tirx

    from zsq_tvm.backends.cuda.offload_depthwise import CudaInt8Depthwise
    from zsq_tvm.backends.cuda.offload_pointwise import CudaInt8Pointwise
    from relax_passes.lowering import lower
    from relax_passes.reference import run_reference

    q, _ = tiny_conformer_t4
    target = tvm.target.Target("llvm")
    with target:
        low = lower(CudaInt8Depthwise(gpu=False)(CudaInt8Pointwise(gpu=False)(q.mod)))
    dividers = [gv.name_hint for gv, f in low.functions_items() if isinstance(f, tirx.PrimFunc) and D.data_divisions(f)]
    assert len(dividers) >= 3  # LayerNorm, softmax, sigmoid (GLU / Swish)
    vm = tvm.relax.VirtualMachine(tvm.compile(low, target=target, tir_pipeline=D.register_pipeline()), tvm.cpu())
    rng = np.random.default_rng(0)
    for scale, length in ((1.0, 32), (3.0, 20)):  # the model masks its padding (the default): length = valid frames
        x = rng.normal(0, scale, (1, 64, 32)).astype(np.float32)
        n = np.array([length], np.int32)
        got = vm["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(n))
        got = got[0] if isinstance(got, (list, tuple)) or type(got).__name__ == "Array" else got
        want = run_reference(q.mod, x, n)
        want = want[0] if isinstance(want, tuple) else want
        np.testing.assert_array_equal(got.numpy(), want)


@pytest.mark.skipif(NVCC is None or CUOBJDUMP is None, reason="needs nvcc and cuobjdump (nvidia-cuda-cuobjdump)")
def test_zsq_check_of_a_cuda_build_proves_its_sass_integer_only(tiny_conformer_t4, tmp_path, capsys):
    """``zsq check`` on a saved t4 build compiles its stored ``kernels.cu`` for sm_75 with nvcc: no float instruction
    in the SASS of any kernel but the input quantize / output dequantize.  Without ``relax_passes.tir_int_division``
    this failed: a GPU has no integer divider, and nvcc expands a division by a run-time divisor (the LayerNorm's
    square root and normalisation, the softmax's ``2^54 // sum``, the sigmoid) into a float-reciprocal estimate
    (``I2F``, ``MUFU.RCP``, ``F2I``).  A float kernel in that source is reported by name and fails the check."""
    import json

    from zsq_tvm import api
    from zsq_tvm.cli import main

    _, b = tiny_conformer_t4
    out = b.save(tmp_path / "b")
    src = (out / CUDA_SOURCE).read_text()
    assert src == g.cuda_source(b._ex)
    rep = api.check(str(out))
    sa = rep["sass"]
    assert rep["ok"] is True and sa["ok"] is True and sa["arch"] == "sm_75", (sa["float_in_source"], sa["float_in_sass"])
    assert sa["sass_functions"] == sa["kernels"] > 20 and sa["float_in_sass"] == {}
    assert sa["int8_ops"].get("IDP.4A.S8.S8", 0) > 0
    # a float kernel among integer ones (a short source, so nvcc is quick)
    kernels = P.cuda_kernels(src)
    keep = [body for name, body in kernels.items() if name.startswith("zsq_cuda_dw_")][:1]
    assert keep
    (out / CUDA_SOURCE).write_text(src[:src.index('extern "C" __global__')] + keep[0] +
                                       '\nextern "C" __global__ void zsq_scaled_kernel(float* __restrict__ x) '
                                       '{ x[threadIdx.x] *= 0.5f; }\n')
    assert main(["check", str(out)]) == 2  # the changed file no longer matches the manifest's hash
    assert "kernels.cu" in capsys.readouterr().err
    reseal(out)  # as if zsq itself had written the float kernel: the SASS check must find it
    assert main(["check", str(out)]) != 0
    assert "zsq_scaled_kernel" in capsys.readouterr().out
    assert main(["check", str(out), "--json"]) != 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["ok"] is False and set(rep["sass"]["float_in_sass"]) == {"zsq_scaled_kernel"}
    assert any("zsq_scaled_kernel" in v for v in rep["violations"])
