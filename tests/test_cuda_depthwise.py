"""CUDA int8 depthwise conv1d kernel and the CUDA graph rewrites, checked without a GPU.

* the kernel's schedule (tiling, shared-memory staging, zero padding, register accumulators, fused
  requantize) run on llvm without thread bindings, bit-exact with the numpy integer reference;
* the sm_75 build: integer-only CUDA source and SASS, the input window in shared memory;
* the whole QuartzNet-tiny graph after ``CudaInt8Pointwise`` + ``CudaInt8Depthwise`` (their ``gpu=False``
  kernels) equals the numpy reference of the quantized model bit for bit: the rewrite's weights, biases,
  layouts and argument order are right.  Running the GPU build itself is ``tools/gpu_check.sh``.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

pytest.importorskip("tvm")

from zsq_tvm.backends.cuda import depthwise as dw  # noqa: E402
from zsq_tvm.backends.cuda import int8_gemm as g  # noqa: E402

NVCC = shutil.which("nvcc")
CUOBJDUMP = g.find_cuobjdump()

I16 = dict(out_dtype="int16", qmin=-32767, qmax=32767)
I32 = dict(out_dtype="int32", qmin=-(2**30), qmax=2**30 - 1)
SPECS = {
    "qn_k33": dict(C=6, Tin=600, K=33, pad_l=16, pad_r=16),  # Tout > one tile of the default 512
    "tile_128x4_cb2": dict(C=5, Tin=300, K=33, pad_l=16, pad_r=16, tx=128, vt=4, cb=2),  # C not a multiple of cb
    "stride2_int8": dict(C=4, Tin=201, K=33, stride=2, pad_l=16, pad_r=16, a_dtype="int8"),  # QuartzNet's C1
    "stride4": dict(C=3, Tin=97, K=9, stride=4, pad_l=4, pad_r=3),
    "dilation2": dict(C=3, Tin=120, K=87, dilation=2, pad_l=86, pad_r=86),  # the K=87 dilated layer
    "k1_u8out": dict(C=5, Tin=70, K=1, out_dtype="uint8", qmin=0, qmax=255),
    "int16": dict(C=2, Tin=50, K=7, pad_l=3, pad_r=3, **I16),
    "int32_valid": dict(C=3, Tin=40, K=5, **I32),  # no padding: Tout < Tin
    "tile_params": dict(C=7, Tin=130, K=11, pad_l=5, pad_r=5, tx=32, vt=3, cb=4),
}


@pytest.mark.parametrize("name", sorted(SPECS))
def test_schedule_semantics_on_llvm(name):
    spec = dw.DwSpec(**SPECS[name])
    X, W, bias, Mul, Sh = dw.random_problem(spec, 2)
    want = dw.reference(spec, X, W, bias, Mul, Sh).astype(np.int64)
    assert want.shape == (1, spec.C, spec.Tout)
    # the outputs are spread over the clip range, so a wrong tap or a wrong shift shows
    assert np.unique(want).size > min(50, want.size // 4)
    assert dw.run_llvm_check(spec, seed=2)


def test_reference_is_the_integer_conv():
    """The oracle against a direct loop (catches a padding or stride convention error in both)."""
    spec = dw.DwSpec(C=2, Tin=23, K=5, stride=2, dilation=2, pad_l=3, pad_r=1, a_dtype="int8", **I32)
    X, W, bias, Mul, Sh = dw.random_problem(spec, 4)
    Mul = np.full(spec.C, 1, np.int64)
    Sh = np.full(spec.C, 1, np.int64)  # (acc + bias + 1) >> 1
    got = dw.reference(spec, X, W, bias, Mul, Sh)
    xp = np.pad(X[0].astype(np.int64), ((0, 0), (spec.pad_l, spec.pad_r)))
    for c in range(spec.C):
        for t in range(spec.Tout):
            acc = sum(int(xp[c, t * spec.stride + k * spec.dilation]) * int(W[c, k]) for k in range(spec.K))
            assert got[0, c, t] == (acc + int(bias[c]) + 1) >> 1


def test_bad_specs_are_refused():
    with pytest.raises(AssertionError):
        dw.DwSpec(C=4, Tin=10, K=20)  # no output
    with pytest.raises(AssertionError):
        dw.DwSpec(C=4, Tin=10, K=3, a_dtype="int16")


# the default tile (one channel per block) and one with several channels per block (threadIdx.y)
@pytest.fixture(scope="module", params=[{}, dict(tx=128, vt=4, cb=2)], ids=["default_tile", "cb2"])
def cuda_dw(request, tmp_path_factory):
    spec = dw.DwSpec(C=64, Tin=500, K=51, pad_l=25, pad_r=25, **request.param)
    src = g.cuda_source(g.build(dw.schedule(spec)))
    text = None
    if NVCC and CUOBJDUMP:
        text = g.sass(g.nvcc_cubin(src, str(tmp_path_factory.mktemp("dw"))), CUOBJDUMP)
    return src, text, spec


def test_cuda_source_is_integer_only_and_staged(cuda_dw):
    src, _, spec = cuda_dw
    assert "__global__" in src and g.kernel_float_types(src) == []
    assert "__shared__" in src and "__syncthreads()" in src
    assert "blockIdx.y" in src and "threadIdx.x" in src
    assert ("threadIdx.y" in src) == (spec.cb > 1)  # a unit thread axis is dropped from the source


@pytest.mark.skipif(NVCC is None or CUOBJDUMP is None, reason="needs nvcc and cuobjdump (nvidia-cuda-cuobjdump)")
def test_cuda_sass_has_no_float(cuda_dw):
    _, text, _ = cuda_dw
    assert "LDS" in text  # taps read from shared memory
    assert g.sass_float_ops(text) == []


@pytest.fixture(scope="module")
def tiny_q():
    import zsq_tvm

    return zsq_tvm.quantize("quartznet-tiny", zsq_tvm.QuantConfig(frames=64, num_batches=1, time_mask=False))


def test_cuda_rewrites_are_bit_exact_on_llvm(tiny_q):
    """Both CUDA kernel passes with their CPU-runnable kernels: the rewritten graph == the numpy reference."""
    import tvm

    from zsq_tvm.backends.cuda.offload_depthwise import offload_depthwise
    from zsq_tvm.backends.cuda.offload_pointwise import offload_pointwise
    from relax_passes.lowering import lower
    from relax_passes.reference import run_reference

    q = tiny_q
    pmod, pw = offload_pointwise(q.mod, gpu=False)
    mod, dw = offload_depthwise(pmod, gpu=False)
    assert len(pw) >= 10 and len(dw) >= 10
    assert {r["kernel"] for r in pw} == {"wmma", "dp4a"}
    main = mod["main"].script()
    assert "R.nn.conv1d" not in main  # every conv of the model is on a kernel
    target = tvm.target.Target("llvm")
    with target:
        low = lower(mod)
    ex = tvm.compile(low, target=target)
    vm = tvm.relax.VirtualMachine(ex, tvm.cpu())
    rng = np.random.default_rng(0)
    for _ in range(2):
        x = rng.normal(0, 1, (1, 64, 64)).astype(np.float32)
        got = vm["main"](tvm.runtime.tensor(x))
        got = got[0] if isinstance(got, (list, tuple)) or type(got).__name__ == "Array" else got
        want = run_reference(q.mod, x)
        want = want[0] if isinstance(want, tuple) else want
        np.testing.assert_array_equal(got.numpy(), want)
