"""x86 AVX-512 VNNI full conv1d (groups=1, k > 1, any dilation / zero padding / stride): the ncw kernel of
zsq_tvm.backends.x86.pointwise with a tap reduction axis, and its use by the host-vnni rewrite on Jasper.

Bit-exact against the numpy oracle (intmath.conv1d_int + intmath.requantize [+ residual add, clip]) on
awkward shapes: K % 4 != 0 (including K < 4), odd T, dilation 2 and 3, asymmetric and zero pads, int8
input (+128 shift: the pads become 128 and the folded bias covers every tap), uint8/int8/int32 outputs,
a fused residual join.  End to end: jasper-dr-small (whose blocks are full convs) compiled for
host-vnni equals relax_passes.reference.run_reference bit for bit and passes the integer-only check.
Running needs avx512_vnni, else skipped.
"""

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

from zsq_tvm.backends.x86 import pointwise as pw  # noqa: E402
from zsq_tvm.backends.x86.vnni import check_vnni_asm  # noqa: E402
from zsq_tvm.backends.x86.cpu import has_vnni  # noqa: E402

needs_vnni = pytest.mark.skipif(not has_vnni(), reason="CPU lacks avx512_vnni (/proc/cpuinfo flags)")

I32 = dict(out_dtype="int32", qmin=-(2**30), qmax=2**30 - 1)
U8 = dict(out_dtype="uint8", qmin=0, qmax=255)
SPECS = [
    pw.PointwiseSpec(128, 128, 128, layout="ncw", taps=11, pad_l=5, pad_r=5, **U8),  # Jasper block conv
    pw.PointwiseSpec(61, 30, 21, a_dtype="int8", layout="ncw", taps=5, pad_l=3, pad_r=1, dilation=2),
    pw.PointwiseSpec(40, 7, 9, a_dtype="int8", layout="ncw", taps=3, **I32),  # no padding: Tout = T - 2
    pw.PointwiseSpec(37, 3, 17, layout="ncw", taps=4, dilation=3, pad_l=9, pad_r=0, **U8),  # K < 4
    pw.PointwiseSpec(9, 12, 5, layout="ncw", taps=1, pad_l=2, pad_r=3),  # k=1 with padding
    pw.PointwiseSpec(70, 24, 40, layout="ncw", taps=29, dilation=2, pad_l=28, pad_r=28, rt=1, rm=3),
    # strided (Jasper's prolog: int8 mel, k 11, stride 2): columns stored by phase
    pw.PointwiseSpec(200, 64, 48, a_dtype="int8", layout="ncw", taps=11, pad_l=5, pad_r=5, stride=2, **U8),
    pw.PointwiseSpec(61, 30, 21, a_dtype="int8", layout="ncw", taps=5, pad_l=3, pad_r=1, dilation=2, stride=2),
    pw.PointwiseSpec(40, 7, 9, layout="ncw", taps=3, stride=3, **I32),  # K < 8, stride 3, unread input tail
    pw.PointwiseSpec(35, 16, 8, layout="ncw", taps=1, stride=2),  # k = 1 with a stride
]


def _case(spec, seed=0):
    rng = np.random.default_rng(seed)
    lo, hi = (-128, 128) if spec.a_dtype == "int8" else (0, 256)
    X = rng.integers(lo, hi, (spec.K, spec.T)).astype(spec.a_dtype)
    X[0] = hi - 1  # an extreme row
    W = rng.integers(-127, 128, (spec.M, spec.K, spec.taps)).astype(np.int8)
    W[0] = 127
    W[-1] = -127
    b = rng.integers(-30000, 30000, spec.M).astype(np.int32)
    Mul = rng.integers(2**30, 2**31, spec.M).astype(np.int64)
    Sh = rng.integers(34, 46, spec.M).astype(np.int64)
    return X, W, b, Mul, Sh


def test_conv_emits_vpdpbusd():
    assert check_vnni_asm(pw.build(pw.PointwiseSpec(20, 8, 16, layout="ncw", taps=3, pad_l=1, pad_r=1))) > 0


@needs_vnni
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.a_dtype}-T{s.T}K{s.K}M{s.M}k{s.taps}d{s.dilation}"
                         f"p{s.pad_l}_{s.pad_r}-{s.out_dtype}")
def test_conv_bit_exact(spec):
    X, W, b, Mul, Sh = _case(spec)
    k = pw.PointwiseKernel(spec, W, b, Mul, Sh)
    y = k(X)
    ref = pw.reference(spec, X, W, b, Mul, Sh)
    assert y.shape == (spec.M, spec.Tout) and y.dtype == ref.dtype
    np.testing.assert_array_equal(y, ref)
    assert len(np.unique(ref)) > 3  # not a degenerate (all-saturated) case
    X2 = _case(spec, seed=5)[0]  # fresh input: no state left in the padded window buffer
    np.testing.assert_array_equal(k(X2), pw.reference(spec, X2, W, b, Mul, Sh))


@needs_vnni
def test_conv_residual_bit_exact():
    spec = pw.PointwiseSpec(50, 20, 24, a_dtype="int8", layout="ncw", taps=7, pad_l=3, pad_r=3, residual=True,
                            req_qmin=-(2**30), req_qmax=2**30 - 1, **U8)
    X, W, b, Mul, Sh = _case(spec)
    R = np.random.default_rng(2).integers(-400, 400, (spec.M, spec.Tout)).astype(np.int32)
    y = pw.PointwiseKernel(spec, W, b, Mul, Sh)(X, R)
    np.testing.assert_array_equal(y, pw.reference(spec, X, W, b, Mul, Sh, R))


def test_fold_bias_covers_every_tap():
    """int8 input: sum over taps of (x + 128) w, pads read as 128, minus 128 sum(W) == the unshifted conv."""
    from zsq_tvm.core import intmath

    spec = pw.PointwiseSpec(12, 6, 4, a_dtype="int8", layout="ncw", taps=3, pad_l=2, pad_r=1, dilation=2)
    X, W, b, _, _ = _case(spec)
    acc = intmath.conv1d_int(X[None], W, padding=(2, 1), dilation=2)[0].astype(np.int64) + b[:, None]
    xs = np.pad(X.astype(np.int64) + 128, ((0, 0), (2, 1)), constant_values=128)
    shifted = intmath.conv1d_int(xs[None], W, dilation=2)[0].astype(np.int64)
    np.testing.assert_array_equal(shifted + pw.fold_bias(W, b, spec).astype(np.int64)[:, None], acc)


@needs_vnni
def test_jasper_host_vnni_bit_exact_and_integer_only():
    import zsq_tvm
    from relax_passes._util import bindings, call_op_name
    from zsq_tvm.backends.x86.offload_pointwise import offload_pointwise
    from relax_passes.reference import run_reference

    q = zsq_tvm.quantize("jasper-dr-small", zsq_tvm.QuantConfig(frames=96))
    mod, replaced = offload_pointwise(q.mod)
    convs = [bd for bd in bindings(q.mod["main"]) if call_op_name(bd.value) == "nn.conv1d"]
    left = [bd for bd in bindings(mod["main"]) if call_op_name(bd.value) == "nn.conv1d"]
    # every conv goes to the VNNI kernel, the k > 1 ones and the stride-2 prolog included
    assert not left and any(int(bd.value.attrs.strides[0]) == 2 for bd in convs)
    assert len(replaced) == len(convs)
    b = zsq_tvm.compile(q, target="host-vnni")
    assert b.integer_only["ok"] is True
    assert zsq_tvm.check(b)["ok"] is True
    mel = np.random.default_rng(4).standard_normal((1, 64, 96)).astype(np.float32) * 2
    y = b.run(mel)
    ref = run_reference(q.mod, mel)
    assert y.dtype == ref.dtype and np.array_equal(y, ref)
