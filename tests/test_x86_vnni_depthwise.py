"""x86 AVX-512 VNNI depthwise conv1d kernel (zsq_tvm.backends.x86.depthwise) and its Relax rewrite.

Bit-exact against the numpy oracle (intmath.conv1d_int with groups=C + intmath.requantize) on
QuartzNet shapes and awkward ones: stride 2 and 4, dilation 2 and 3, K % 4 != 0, K = 1, T not a tile
multiple, Tout = 1, int8 input (+128 shift, pads become 128), uint8/int32 outputs, saturation.
Compiling needs only LLVM; running needs avx512_vnni, else skipped.
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

tvm = pytest.importorskip("tvm")

from zsq_tvm.backends.x86 import depthwise as dw  # noqa: E402
from zsq_tvm.backends.x86.vnni import check_vnni_asm  # noqa: E402
from zsq_tvm.backends.x86.cpu import has_vnni  # noqa: E402

needs_vnni = pytest.mark.skipif(not has_vnni(), reason="CPU lacks avx512_vnni (/proc/cpuinfo flags)")

SPECS = [
    dw.DepthwiseSpec(256, 500, 33, pad_l=16, pad_r=16),  # QuartzNet block
    dw.DepthwiseSpec(64, 1000, 33, stride=2, pad_l=16, pad_r=16, a_dtype="int8"),  # C1: mel input, stride 2
    dw.DepthwiseSpec(48, 200, 87, dilation=2, pad_l=86, pad_r=86),  # C2: dilation 2
    dw.DepthwiseSpec(37, 45, 7, pad_l=3, pad_r=3, out_dtype="uint8", qmin=0, qmax=255),
    dw.DepthwiseSpec(20, 61, 5, stride=4, dilation=3, pad_l=0, pad_r=7, a_dtype="int8"),
    dw.DepthwiseSpec(16, 9, 9),  # Tout = 1
    dw.DepthwiseSpec(17, 100, 1, stride=2, out_dtype="int32", qmin=-2**30, qmax=2**30),
    dw.DepthwiseSpec(33, 130, 11, pad_l=2, pad_r=9, rt=2),  # asymmetric pads, other tile
]


def _case(spec, seed=0):
    rng = np.random.default_rng(seed)
    if spec.a_dtype == "uint8":
        X = rng.integers(0, 256, (spec.C, spec.Tin)).astype(np.uint8)
    else:
        X = rng.integers(-128, 128, (spec.C, spec.Tin)).astype(np.int8)
    X[0] = X.max()  # extreme rows
    X[-1] = X.min()
    W = rng.integers(-127, 128, (spec.C, spec.K)).astype(np.int8)
    W[0] = 127
    W[-1] = -127
    b = rng.integers(-30000, 30000, spec.C).astype(np.int32)
    Mul = rng.integers(2**30, 2**31, spec.C).astype(np.int64)
    Sh = rng.integers(34, 46, spec.C).astype(np.int64)  # some saturate, some land inside
    return X, W, b, Mul, Sh


def test_emits_vpdpbusd():
    lib = dw.build(dw.DepthwiseSpec(32, 40, 9, pad_l=4, pad_r=4))
    assert check_vnni_asm(lib) > 0


@needs_vnni
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"C{s.C}T{s.Tin}K{s.K}s{s.stride}d{s.dilation}-{s.a_dtype}-{s.out_dtype}")
def test_depthwise_bit_exact(spec):
    X, W, b, Mul, Sh = _case(spec)
    k = dw.DepthwiseKernel(spec, W, b, Mul, Sh)
    y = k(X)
    ref = dw.reference(spec, X, W, b, Mul, Sh)
    assert y.shape == (spec.C, spec.Tout) and y.dtype == ref.dtype
    assert np.array_equal(y, ref), f"{int((y != ref).sum())} mismatches"
    # saturating case actually exercised on the int8 output specs
    if spec.out_dtype == "int8" and spec.Tout > 8:
        assert (y == spec.qmax).any() or (y == spec.qmin).any()
    # second call, other data: no stale state in the kernel's scratch buffers
    X2 = _case(spec, seed=1)[0]
    assert np.array_equal(k(X2), dw.reference(spec, X2, W, b, Mul, Sh))


def prop_depthwise_vnni(spec, seed: int, extreme: bool) -> None:
    """The VNNI depthwise kernel == the numpy oracle on random (or all-extreme) data, weights, biases and
    dyadic multipliers for one of the SPECS (the compiled kernel is cached per spec, so examples are cheap).
    Shared with the long fuzzing run: ``python3 -m bench.fuzz --kernels depthwise_vnni``."""
    rng = np.random.default_rng(seed)
    lo, hi = (0, 255) if spec.a_dtype == "uint8" else (-128, 127)
    shape = (spec.C, spec.Tin)
    X = (rng.choice([lo, hi], size=shape) if extreme else rng.integers(lo, hi + 1, size=shape)).astype(spec.a_dtype)
    W = (rng.choice([-127, 0, 127], size=(spec.C, spec.K)) if extreme
         else rng.integers(-127, 128, size=(spec.C, spec.K))).astype(np.int8)
    acc = 255 * 127 * spec.K
    b = rng.integers(-acc, acc + 1, spec.C).astype(np.int32)
    Mul = rng.integers(2**30, 2**31, spec.C).astype(np.int64)
    Sh = rng.integers(31, 50, spec.C).astype(np.int64)  # from heavy saturation to outputs near zero
    y = dw.DepthwiseKernel(spec, W, b, Mul, Sh)(X)
    ref = dw.reference(spec, X, W, b, Mul, Sh)
    assert y.dtype == ref.dtype and np.array_equal(y, ref), (spec, seed, extreme, int((y != ref).sum()))


@needs_vnni
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.sampled_from(SPECS), st.integers(0, 2**32 - 1), st.booleans())
def test_depthwise_vnni_fuzz(spec, seed, extreme):
    prop_depthwise_vnni(spec, seed, extreme)


def test_fold_bias_int8_is_exact_algebra():
    spec = dw.DepthwiseSpec(8, 30, 5, pad_l=2, pad_r=2, a_dtype="int8")
    X, W, b, _, _ = _case(spec)
    from zsq_tvm.core import intmath

    acc = intmath.conv1d_int(X[None], W[:, None, :], padding=(2, 2), groups=8)[0].astype(np.int64) + b[:, None]
    xs = np.pad(X.astype(np.int64) + 128, ((0, 0), (2, 2)), constant_values=128)  # shifted pads = 128
    shifted = np.stack([np.convolve(xs[c], W[c, ::-1].astype(np.int64), "valid") for c in range(8)])
    assert np.array_equal(shifted + dw.fold_bias(W, b, spec)[:, None], acc)


def test_relax_rewrite_replaces_every_depthwise_conv():
    import zsq_tvm
    from relax_passes._util import bindings, call_op_name
    from zsq_tvm.backends.x86.offload_depthwise import offload_depthwise

    q = zsq_tvm.quantize("quartznet-tiny", zsq_tvm.QuantConfig(frames=128))
    n_dw = sum(1 for bd in bindings(q.mod["main"]) if call_op_name(bd.value) == "nn.conv1d"
               and int(bd.value.attrs.groups) > 1)
    mod, replaced = offload_depthwise(q.mod)
    assert n_dw > 0 and len(replaced) == n_dw
    left = sum(1 for bd in bindings(mod["main"]) if call_op_name(bd.value) == "nn.conv1d"
               and int(bd.value.attrs.groups) > 1)
    assert left == 0
    if has_vnni():
        from relax_passes.reference import run_reference

        mel = np.random.default_rng(3).standard_normal((1, 64, 128)).astype(np.float32) * 2
        b = zsq_tvm.compile(q, target="host-vnni")
        assert np.array_equal(b.run(mel), run_reference(q.mod, mel))
