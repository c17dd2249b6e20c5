"""CUDA sm_75 (T4) int8 GEMM schedules: nvcc cubin, SASS evidence, integer-only, llvm bit-exactness.

No GPU is needed: the CUDA source is compiled with nvcc to a cubin and disassembled with
cuobjdump.  Running on a GPU and comparing bit-exactly is ``tools/gpu_check.sh``.
"""

from __future__ import annotations

import dataclasses
import re
import shutil

import numpy as np
import pytest

pytest.importorskip("tvm")

from zsq_tvm.backends.cuda import int8_gemm as g  # noqa: E402

NVCC = shutil.which("nvcc")
CUOBJDUMP = g.find_cuobjdump()
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc not on PATH: cannot compile CUDA to cubin")
needs_cuobjdump = pytest.mark.skipif(
    CUOBJDUMP is None, reason="cuobjdump not found (pip install nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm)")

SPEC = g.GemmSpec(T=100, K=64, M=64, a_dtype="uint8")  # T not a tile multiple: pad_einsum path


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """{schedule: (cuda source, sass text)} for both schedules (compiled once per module)."""
    out = {}
    for name, fn, spec in (("dp4a", g.schedule_dp4a, SPEC), ("wmma", g.schedule_wmma, SPEC),
                           ("wmma_ncw", g.schedule_wmma, dataclasses.replace(SPEC, layout="ncw"))):
        src = g.cuda_source(g.build(fn(spec)))
        text = None
        if NVCC and CUOBJDUMP:
            d = tmp_path_factory.mktemp(name)
            text = g.sass(g.nvcc_cubin(src, str(d)), CUOBJDUMP)
        out[name] = (src, text)
    return out


def test_sources_are_integer_only(built):
    for name, (src, _) in built.items():
        assert "__global__" in src
        assert g.kernel_float_types(src) == [], name
    assert "__dp4a(" in built["dp4a"][0]
    assert "wmma::mma_sync" in built["wmma"][0]
    # ncw: A = W (row-major), B = X[K, T] row-major (not the transposed load of the tk kernel)
    ncw = built["wmma_ncw"][0]
    assert "wmma::mma_sync" in ncw and "matrix_b, 16, 16, 16, signed char, nvcuda::wmma::row_major" in ncw
    assert "matrix_b, 16, 16, 16, signed char, nvcuda::wmma::col_major" in built["wmma"][0]


@needs_nvcc
@needs_cuobjdump
def test_dp4a_sass(built):
    text = built["dp4a"][1]
    counts = g.sass_counts(text)
    assert counts.get("IDP.4A.U8.S8", 0) > 0, counts  # uint8 activations: mixed-sign dp4a
    assert not any(k.startswith("IMMA") for k in counts)
    assert g.sass_float_ops(text) == []


@needs_nvcc
@needs_cuobjdump
@pytest.mark.parametrize("name", ["wmma", "wmma_ncw"])
def test_wmma_sass(built, name):
    text = built[name][1]
    counts = g.sass_counts(text)
    assert counts.get("IMMA.8816.S8.S8", 0) > 0, counts
    assert g.sass_float_ops(text) == []


@needs_nvcc
@needs_cuobjdump
def test_float_kernel_is_caught(tmp_path):
    """The integer-only scans do flag a float GEMM (so a pass above means something)."""
    import tvm
    from tvm import s_tir
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def fgemm(A: T.Buffer((64, 64), "float32"), B: T.Buffer((64, 64), "float32"),
              C: T.Buffer((64, 64), "float32")):
        T.func_attr({"global_symbol": "main", "tirx.noalias": True})
        for i, j, k in T.grid(64, 64, 64):
            with T.sblock("C"):
                vi, vj, vk = T.axis.remap("SSR", [i, j, k])
                with T.init():
                    C[vi, vj] = T.float32(0)
                C[vi, vj] = C[vi, vj] + A[vi, vk] * B[vj, vk]

    sch = s_tir.Schedule(fgemm)
    i, j, _ = sch.get_loops(sch.get_sblock("C"))
    sch.bind(i, "blockIdx.x")
    sch.bind(j, "threadIdx.x")
    src = g.cuda_source(g.build(sch))
    assert "float" in g.kernel_float_types(src)
    text = g.sass(g.nvcc_cubin(src, str(tmp_path)), CUOBJDUMP)
    assert g.sass_float_ops(text), "float GEMM not detected in SASS"


@pytest.mark.parametrize("schedule,layout", [("dp4a", "tk"), ("wmma", "tk"), ("wmma", "ncw")])
@pytest.mark.parametrize("a_dtype", ["uint8", "int8"])
@pytest.mark.parametrize("out", [("int8", -127, 127), ("int16", -32768, 32767)], ids=["int8", "int16"])
def test_schedule_semantics_on_llvm(schedule, layout, a_dtype, out):
    """Same pad/tiling/u8-shift/epilogue without the tensor intrinsics, bit-exact vs numpy; int16 is the
    logits layer at out_bits=16 (clip over the whole int16 range)."""
    od, qmin, qmax = out
    spec = g.GemmSpec(T=100, K=48, M=72, a_dtype=a_dtype, out_dtype=od, qmin=qmin, qmax=qmax, layout=layout)
    X, W, bias, Mul, Sh = g.random_problem(spec, 1)
    want = g.reference(spec, X, W, bias, Mul, Sh).astype(np.int64)
    # the problem exercises the whole output range: both clip bounds hit, values past the int8 range when wider
    assert (want == qmin).any() and (want == qmax).any() and ((want > qmin) & (want < qmax)).mean() > 0.3
    if od == "int16":
        assert (np.abs(want) > 127).mean() > 0.5
    assert g.run_llvm_check(spec, schedule, seed=1)


@needs_nvcc
@needs_cuobjdump
@pytest.mark.parametrize("schedule,M,op", [("dp4a", 29, "IDP.4A.U8.S8"), ("wmma", 64, "IMMA.8816.S8.S8")])
def test_int16_logits_sass(tmp_path, schedule, M, op):
    """int16 logits (out_bits=16) from both kernels -- the 29-class decoder on dp4a, a >= 64-class one on WMMA:
    the int8 dot-product instruction, a 16-bit global store, no float."""
    spec = g.GemmSpec(T=64, K=256, M=M, a_dtype="uint8", out_dtype="int16", qmin=-32767, qmax=32767)
    src = g.cuda_source(g.build((g.schedule_dp4a if schedule == "dp4a" else g.schedule_wmma)(spec)))
    assert "short* __restrict__ Y" in src and g.kernel_float_types(src) == []
    text = g.sass(g.nvcc_cubin(src, str(tmp_path)), CUOBJDUMP)
    assert g.sass_counts(text).get(op, 0) > 0
    assert re.search(r"\bSTG\.E\.U?16\b", text), "no 16-bit global store"
    assert g.sass_float_ops(text) == []


def test_u8_shift_fold_identity():
    import numpy as np

    spec = g.GemmSpec(T=7, K=20, M=5)
    X, W, bias, _, _ = g.random_problem(spec, 3)
    xs = X.astype(np.int64) - 128
    lhs = xs @ W.astype(np.int64).T + g.fold_u8_shift(W, bias).astype(np.int64)
    rhs = X.astype(np.int64) @ W.astype(np.int64).T + bias.astype(np.int64)
    assert np.array_equal(lhs, rhs)


def test_ncw_layout_is_the_same_gemm():
    """The ncw oracle is the tk one transposed (same sums, per-row requantize), and the dp4a schedule refuses it."""
    tk = g.GemmSpec(T=30, K=40, M=20)
    ncw = dataclasses.replace(tk, layout="ncw")
    X, W, bias, Mul, Sh = g.random_problem(tk, 5)
    y_tk = g.reference(tk, X, W, bias, Mul, Sh)
    y_ncw = g.reference(ncw, X.T.reshape(1, 40, 30), W, bias, Mul, Sh)
    assert y_ncw.shape == (1, 20, 30) and np.array_equal(y_ncw[0], y_tk.T)
    with pytest.raises(ValueError, match="time-major"):
        g.schedule_dp4a(ncw)


@pytest.mark.parametrize("layout", ["tk", "ncw"])
@pytest.mark.parametrize("K", [96, 128], ids=["bk32", "bk64"])
def test_wmma_k_tiles_on_llvm(layout, K):
    """The 32- and 64-deep k-tiles (several 16-deep WMMA steps per shared-memory tile) keep the GEMM exact."""
    spec = g.GemmSpec(T=100, K=K, M=72, layout=layout)
    assert g.wmma_k_tile(K) == {96: 32, 128: 64}[K]
    assert g.run_llvm_check(spec, "wmma", seed=3)


@pytest.mark.parametrize("layout", ["tk", "ncw"])
@pytest.mark.parametrize("frags", [(1, 2), (2, 2), (1, 1)], ids=["32x64", "64x64", "32x32"])
def test_wmma_block_tiles_on_llvm(layout, frags):
    """Other block tiles than the default 64 x 32 (more or fewer fragments per warp): exact, rows and
    columns padded to their own tile sizes."""
    spec = g.GemmSpec(T=100, K=128, M=72, layout=layout)
    assert g.run_llvm_check(spec, "wmma", seed=4, frags=frags)


@needs_nvcc
@pytest.mark.parametrize("frags", [(1, 2), (2, 2)], ids=["32x64", "64x64"])
def test_wmma_block_tiles_build_with_nvcc(tmp_path, frags):
    """A QuartzNet 512 x 512 layer (T = 500, ncw) with the other block tiles: tensor cores, no float."""
    spec = g.GemmSpec(T=500, K=512, M=512, layout="ncw")
    src = g.cuda_source(g.build(g.schedule_wmma(spec, frags=frags)))
    assert g.kernel_float_types(src) == []
    if CUOBJDUMP:
        text = g.sass(g.nvcc_cubin(src, str(tmp_path)), CUOBJDUMP)
        assert g.sass_counts(text).get("IMMA.8816.S8.S8", 0) > 0 and g.sass_float_ops(text) == []


@needs_nvcc
@pytest.mark.parametrize("layout", ["tk", "ncw"])
@pytest.mark.parametrize("a_dtype", ["uint8", "int8"])
@pytest.mark.parametrize("T,K", [(64, 256), (500, 256), (37, 80)], ids=["whole", "padded_T", "padded_K"])
def test_wmma_builds_with_nvcc_for_every_tiling(tmp_path, layout, a_dtype, T, K):
    """Every vector width the schedule picks (16-byte loads of whole tiles, 4-byte loads of zero-padded or
    u8-shifted ones) compiles: TVM's CUDA codegen rejects some int8 vectors, nvcc others."""
    spec = g.GemmSpec(T=T, K=K, M=64, a_dtype=a_dtype, layout=layout)
    src = g.cuda_source(g.build(g.schedule_wmma(spec)))
    assert g.kernel_float_types(src) == []
    cubin = g.nvcc_cubin(src, str(tmp_path))
    if CUOBJDUMP:
        text = g.sass(cubin, CUOBJDUMP)
        assert g.sass_counts(text).get("IMMA.8816.S8.S8", 0) > 0 and g.sass_float_ops(text) == []
