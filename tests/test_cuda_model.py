"""Whole-model CUDA build (``--target t4``): the quantized QuartzNet graph on int8 kernels, integer-only.

No GPU needed: the shipped QuartzNet-tiny (same block structure as QuartzNet-5x5, narrower) is quantized
at a short T, built for sm_75, its CUDA source compiled with nvcc and disassembled.  Running it on a GPU
and comparing with the numpy reference bit for bit is ``tools/gpu_check.sh``.
"""

from __future__ import annotations

import shutil

import pytest

pytest.importorskip("tvm")

from zsq_tvm.backends.cuda import int8_gemm as g  # noqa: E402
from zsq_tvm.backends.cuda import pipeline as P  # noqa: E402

NVCC = shutil.which("nvcc")
CUOBJDUMP = g.find_cuobjdump()


@pytest.fixture(scope="module")
def t4(tmp_path_factory):
    import zsq_tvm

    # default out_bits (16): the decoder's pointwise conv writes int16 logits, on the dp4a kernel
    q = zsq_tvm.quantize("quartznet-tiny", zsq_tvm.QuantConfig(frames=64, num_batches=1))
    b = zsq_tvm.compile(q, target="t4")
    src = g.cuda_source(b._ex)
    sass = None
    if NVCC and CUOBJDUMP:
        sass = g.sass(g.nvcc_cubin(src, str(tmp_path_factory.mktemp("t4")), arch="sm_75"), CUOBJDUMP)
    return q, b, src, sass


def test_pointwise_convs_use_int8_kernels(t4):
    from relax_passes.patterns import requantize_chains
    from zsq_tvm.backends.cuda.offload_pointwise import CUDA_OUT_DTYPES, offload_pointwise

    q, b, src, _ = t4
    assert q.metadata["out_bits"] == 16 and q.metadata["output"][0]["dtype"] == "int16"
    n_pw = len(requantize_chains(q.mod["main"], out_dtypes=CUDA_OUT_DTYPES))
    _, replaced = offload_pointwise(q.mod)
    assert n_pw >= 10 and len(replaced) == n_pw  # every pointwise conv + requantize chain
    kinds = {r["kernel"] for r in replaced}
    assert kinds == {"wmma", "dp4a"}  # wide layers on tensor cores, the 29-class decoder on dp4a
    # the logits layer runs on the int8 dp4a kernel too (not a generic dlight conv) and stores int16 itself
    assert [(r["kernel"], r["M"]) for r in replaced if r["out_dtype"] == "int16"] == [("dp4a", 29)]
    kernels = P.cuda_kernels(src)
    assert sum(n.startswith("zsq_cuda_wmma_ncw_pw_") for n in kernels) >= 5
    assert any(n.startswith("zsq_cuda_dp4a_tk_pw_") and "_int16_m32767_32767" in n for n in kernels)
    dec = next(body for n, body in kernels.items() if n.startswith("zsq_cuda_dp4a_tk_pw_") and "_int16_" in n)
    assert "short* __restrict__" in dec and "__dp4a(" in dec  # int16 store from the dp4a kernel
    assert "wmma::mma_sync" in src and "__dp4a(" in src
    assert b.manifest["target"] == "t4" and '"arch":"sm_75"' in b.manifest["tvm_target"].replace(" ", "")


def test_depthwise_convs_use_the_int8_kernel_and_no_transposes_are_left(t4):
    from relax_passes.patterns import requantize_chains
    from zsq_tvm.backends.cuda.offload_depthwise import offload_depthwise
    from zsq_tvm.backends.cuda.offload_pointwise import CUDA_OUT_DTYPES

    q, _, src, _ = t4
    n_dw = len(requantize_chains(q.mod["main"], kind="depthwise", out_dtypes=CUDA_OUT_DTYPES))
    _, replaced = offload_depthwise(q.mod)
    assert n_dw >= 10 and len(replaced) == n_dw  # every depthwise conv + requantize chain
    kernels = P.cuda_kernels(src)
    dw = [n for n in kernels if n.startswith("zsq_cuda_dw_")]
    assert dw and all("__shared__" in kernels[n] for n in dw)
    # nothing is left on dlight's generic reduction (the depthwise convs were its only users)
    assert not [n for n in kernels if "conv1d" in n]
    # the ncw WMMA kernels read and write the graph's layout: the only transposes left are the dp4a
    # decoder's and the output's, in at most two fused copy kernels
    assert len([n for n in kernels if "transpose" in n]) <= 2, sorted(kernels)


def test_integer_region_has_no_float_in_source(t4):
    _, b, src, _ = t4
    rep = P.integer_region_report(src)
    assert rep["ok"], rep["float_in_source"]
    assert rep["boundary_kernels"] == ["zsq_input_quantize_kernel", "zsq_output_dequantize_kernel"]
    kernels = P.cuda_kernels(src)
    # the scan does see float: the two boundary kernels are float by design
    assert all("float" in g.kernel_float_types(kernels[n]) for n in rep["boundary_kernels"])
    assert b.integer_only["ok"] is True


@pytest.mark.skipif(NVCC is None or CUOBJDUMP is None, reason="needs nvcc and cuobjdump (nvidia-cuda-cuobjdump)")
def test_sass_int8_instructions_and_no_float(t4):
    _, _, src, sass = t4
    rep = P.integer_region_report(src, sass)
    assert rep["ok"], (rep["float_in_source"], rep.get("float_in_sass"))
    assert rep["sass_functions"] == rep["kernels"]
    assert rep["int8_ops"].get("IMMA.8816.S8.S8", 0) > 0, rep["int8_ops"]
    assert rep["int8_ops"].get("IDP.4A.U8.S8", 0) > 0, rep["int8_ops"]
    funcs = P.sass_functions(sass)
    assert g.sass_float_ops(funcs["zsq_input_quantize_kernel"])  # the scanner flags real float code


def test_zsq_check_on_cuda_build(t4, tmp_path):
    import zsq_tvm

    _, b, _, _ = t4
    out = b.save(tmp_path / "b")
    rep = zsq_tvm.check(str(out))  # re-lowers module.json with the CUDA target's prepare pass
    assert rep["ok"] is True
    loaded = zsq_tvm.load(str(out))
    assert loaded.target == "t4"


def test_cuda_target_names():
    from zsq_tvm.core.errors import TargetError
    from zsq_tvm.targets import get_target, list_targets

    assert {"t4", "cuda", "cuda-sm_90"} <= set(list_targets())
    assert str(get_target("cuda-sm_90").make().attrs["arch"]) == "sm_90"
    assert get_target("t4").device == "cuda"
    import zsq_tvm.backends.cuda.target as tc

    if tc.local_gpu_arch() is None:
        with pytest.raises(TargetError):
            get_target("cuda").make()
