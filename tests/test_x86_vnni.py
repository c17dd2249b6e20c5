"""x86 AVX-512 VNNI kernels (zsq_tvm.x86): the corrected intrinsic and the pointwise GEMM kernel.

Bit-exact against the numpy oracle (intmath.conv1d_int + intmath.requantize) on QuartzNet-like and
awkward shapes (K % 4 != 0, M % 16 != 0, T not a tile multiple), u8 and int8 (+128 shift)
activations, both layouts.  Compiling needs only LLVM; running needs avx512_vnni, else skipped.
"""

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

from zsq_tvm.x86 import pointwise as pw  # noqa: E402
from zsq_tvm.x86.vnni import check_vnni_asm, has_avx512_vnni, register  # noqa: E402

needs_vnni = pytest.mark.skipif(not has_avx512_vnni(), reason="CPU lacks avx512_vnni (/proc/cpuinfo flags)")


def _case(spec, seed=0):
    rng = np.random.default_rng(seed)
    xs = (spec.K, spec.T) if spec.layout == "ncw" else (spec.T, spec.K)
    if spec.a_dtype == "uint8":
        X = rng.integers(0, 256, xs).astype(np.uint8)
    else:
        X = rng.integers(-127, 128, xs).astype(np.int8)
    X.flat[:3] = [0, X.max(), X.min()] if X.size >= 3 else X.flat[:3]
    W = rng.integers(-127, 128, (spec.M, spec.K)).astype(np.int8)
    W[0] = 127  # extreme rows: sign pattern that maximises |acc|
    W[-1] = -127
    b = rng.integers(-30000, 30000, spec.M).astype(np.int32)
    Mul = rng.integers(2**30, 2**31, spec.M).astype(np.int64)
    # shifts spread so results both saturate and land inside the range
    Sh = rng.integers(34, 46, spec.M).astype(np.int64)
    return X, W, b, Mul, Sh


SHAPES = [
    pw.PointwiseSpec(500, 256, 256),
    pw.PointwiseSpec(500, 512, 512, layout="ncw"),
    pw.PointwiseSpec(500, 256, 512, out_dtype="uint8", qmin=0, qmax=255, layout="ncw"),
    pw.PointwiseSpec(37, 30, 45, out_dtype="uint8", qmin=0, qmax=255),  # K%4, M%16, T%rt
    pw.PointwiseSpec(1, 3, 1),  # degenerate
    pw.PointwiseSpec(123, 70, 29, layout="ncw"),
    pw.PointwiseSpec(50, 64, 40, a_dtype="int8"),  # first layer: +128 shift and folded bias
    pw.PointwiseSpec(61, 129, 33, a_dtype="int8", layout="ncw"),
    pw.PointwiseSpec(64, 96, 80, rt=6, rm=2),  # explicit tiles, padded T
]


def test_intrinsic_registers_and_emits_vpdpbusd():
    """Compiles on any x86-64 host (LLVM only): vpdpbusd must be in the asm (the LLVM 22 fix)."""
    assert register("local") and register("global")
    lib = pw.build(pw.PointwiseSpec(20, 16, 32))
    assert check_vnni_asm(lib) > 0


@needs_vnni
@pytest.mark.parametrize("spec", SHAPES, ids=lambda s: f"{s.layout}-{s.a_dtype}-T{s.T}K{s.K}M{s.M}-{s.out_dtype}")
def test_pointwise_bit_exact(spec):
    X, W, b, Mul, Sh = _case(spec)
    k = pw.PointwiseKernel(spec, W, b, Mul, Sh)
    y = k(X)
    ref = pw.reference(spec, X, W, b, Mul, Sh)
    assert y.dtype == ref.dtype and y.shape == ref.shape
    np.testing.assert_array_equal(y, ref)
    # the case is not trivial: some outputs saturate, others are interior
    assert len(np.unique(ref)) > min(3, ref.size - 1) or ref.size < 4
    # rerun with a fresh input: no state carried between calls
    X2 = _case(spec, seed=7)[0]
    np.testing.assert_array_equal(k(X2), pw.reference(spec, X2, W, b, Mul, Sh))


def test_fold_bias_is_exact_integer_algebra():
    """sum x w == sum (x+128) w - 128 rowsum(w), checked in int64 on random data."""
    spec = pw.PointwiseSpec(9, 33, 17, a_dtype="int8")
    rng = np.random.default_rng(3)
    X = rng.integers(-128, 128, (spec.T, spec.K)).astype(np.int64)
    W = rng.integers(-127, 128, (spec.M, spec.K)).astype(np.int8)
    b = rng.integers(-100, 100, spec.M)
    lhs = X @ W.T.astype(np.int64) + b
    rhs = (X + 128) @ W.T.astype(np.int64) + pw.fold_bias(W, b, spec).astype(np.int64)
    np.testing.assert_array_equal(lhs, rhs)


def test_pack_weights_layout():
    spec = pw.PointwiseSpec(4, 10, 20)
    W = np.arange(200, dtype=np.int64).reshape(20, 10).astype(np.int8)
    Wp = pw.pack_weights(W, spec)
    assert Wp.shape == (spec.Mp // 16, spec.Kp // 4, 16, 4)
    for m in range(spec.Mp):
        for k in range(spec.Kp):
            want = W[m, k] if m < 20 and k < 10 else 0
            assert Wp[m // 16, k // 4, m % 16, k % 4] == want
