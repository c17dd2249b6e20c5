"""x86 AVX-512 VNNI kernels (zsq_tvm.backends.x86): the corrected intrinsic and the pointwise GEMM kernel.

Bit-exact against the numpy oracle (intmath.conv1d_int + intmath.requantize) on QuartzNet-like and
awkward shapes (K % 4 != 0, M % 16 != 0, T not a tile multiple), u8 and int8 (+128 shift)
activations, both layouts.  Compiling needs only LLVM; running needs avx512_vnni, else skipped.
"""

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

from zsq_tvm.backends.x86 import pointwise as pw  # noqa: E402
from zsq_tvm.backends.x86.vnni import check_vnni_asm, register  # noqa: E402
from zsq_tvm.backends.x86.cpu import has_vnni  # noqa: E402

needs_vnni = pytest.mark.skipif(not has_vnni(), reason="CPU lacks avx512_vnni (/proc/cpuinfo flags)")


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
    # ncw (time steps in the VNNI lanes): K < 4 (only the K % 4 tail group), one time step,
    # odd T with uint8/int32 outputs, an explicit (rm=3 channels x 2 vectors) tile with M % 3 != 0
    pw.PointwiseSpec(1, 3, 5, layout="ncw"),
    pw.PointwiseSpec(33, 3, 40, a_dtype="int8", out_dtype="uint8", qmin=0, qmax=255, layout="ncw"),
    pw.PointwiseSpec(77, 66, 19, out_dtype="int32", qmin=-(2**30), qmax=2**30 - 1, layout="ncw"),
    pw.PointwiseSpec(101, 45, 23, a_dtype="int8", out_dtype="int32", qmin=-(2**30), qmax=2**30 - 1, layout="ncw"),
    pw.PointwiseSpec(64, 8, 20, rt=2, rm=3, layout="ncw"),
    # int16 outputs (a trained QuartzNet's classifier logits), both layouts
    pw.PointwiseSpec(53, 132, 29, out_dtype="int16", qmin=-32767, qmax=32767, layout="ncw"),
    pw.PointwiseSpec(37, 30, 29, a_dtype="int8", out_dtype="int16", qmin=-32767, qmax=32767),
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


RESIDUAL_SPECS = [
    # QuartzNet block join: u8 in, requant clip +-2^30, residual add, ReLU clip to u8
    pw.PointwiseSpec(77, 66, 19, out_dtype="uint8", qmin=0, qmax=255, layout="ncw", residual=True,
                     req_qmin=-(2**30), req_qmax=2**30 - 1),
    # int8 in, K < 4, int8 out
    pw.PointwiseSpec(33, 3, 40, a_dtype="int8", out_dtype="int8", qmin=-127, qmax=127, layout="ncw", residual=True,
                     req_qmin=-(2**30), req_qmax=2**30 - 1),
    # int32 out with a narrower final clip, odd T, M % tile != 0
    pw.PointwiseSpec(101, 45, 23, a_dtype="int8", out_dtype="int32", qmin=-5000, qmax=7000, layout="ncw",
                     residual=True, req_qmin=-(2**20), req_qmax=2**20),
]


@needs_vnni
@pytest.mark.parametrize("spec", RESIDUAL_SPECS, ids=lambda s: f"res-{s.a_dtype}-T{s.T}K{s.K}M{s.M}-{s.out_dtype}")
def test_pointwise_residual_bit_exact(spec):
    """Fused residual join == requantize (clip req_qmin..req_qmax) + R, clip qmin..qmax, cast (numpy)."""
    X, W, b, Mul, Sh = _case(spec)
    rng = np.random.default_rng(11)
    R = rng.integers(-600, 600, (spec.M, spec.T)).astype(np.int32)
    R[0, :] = spec.req_qmax  # extremes: the int32 sums reach the clip bounds on both sides
    R[-1, :] = spec.req_qmin
    k = pw.PointwiseKernel(spec, W, b, Mul, Sh)
    y = k(X, R)
    ref = pw.reference(spec, X, W, b, Mul, Sh, R)
    assert y.dtype == ref.dtype and y.shape == (spec.M, spec.T)
    np.testing.assert_array_equal(y, ref)
    assert (ref == spec.qmax).any() and (ref == spec.qmin).any() and len(np.unique(ref)) > 3
    # the residual really is added: a zero residual gives a different result
    assert not np.array_equal(k(X, np.zeros_like(R)), y)


def test_residual_join_needs_int32_safe_bounds():
    """residual_joins only fuses when the int32 add of the two requantized branches cannot wrap."""
    from tvm.script import relax as R

    from relax_passes.patterns import residual_joins

    @R.function
    def f(a: R.Tensor((1, 8, 5), "int32"), b: R.Tensor((1, 8, 5), "int32")):
        with R.dataflow():
            s = R.add(a, b)
            c = R.clip(s, 0, 255)
            y = R.astype(c, "uint8")
            R.output(y)
        return y

    kw = dict(M=8, T=5, out_dtype="int32", layout="ncw")
    safe = {f.params[0]: dict(kw, qmin=-(2**30), qmax=2**30 - 1), f.params[1]: dict(kw, qmin=-(2**30), qmax=2**30 - 1)}
    # the function parameters stand in for the two chains' final vars; only b (its only user is the add) is fused
    got = residual_joins(f, safe)
    assert len(got) == 1
    (fused, res, lo, hi, od), = got.values()
    assert (lo, hi, od) == (0, 255, "uint8") and {fused, res} == set(f.params)
    wide = {v: dict(kw, qmin=-(2**31), qmax=2**31 - 1) for v in f.params}
    assert residual_joins(f, wide) == {}
    narrow_out = {v: dict(d, out_dtype="int8") for v, d in safe.items()}
    assert residual_joins(f, narrow_out) == {}
    time_major = {v: dict(d, layout="tk") for v, d in safe.items()}  # linear layers: no residual epilogue
    assert residual_joins(f, time_major) == {}
