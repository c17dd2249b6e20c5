"""Property tests of zsq_tvm.core.intmath: the integer math every other layer follows."""

from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from zsq_tvm.core import intmath as im

INT32 = st.integers(im.INT32_MIN, im.INT32_MAX)
MULT = st.floats(min_value=2.0**-31, max_value=2.0**29, allow_nan=False, allow_infinity=False)


def exact_requant(acc: int, M: int, s: int, qmin: int, qmax: int) -> int:
    """Same formula with Python integers (no overflow possible): the oracle for int64 safety."""
    return min(max((acc * M + (1 << (s - 1))) >> s, qmin), qmax)


@settings(max_examples=300, deadline=None)
@given(MULT)
def test_dyadic_range_and_error(m):
    M, s = im.dyadic(m)
    assert 2**30 <= M < 2**31
    assert 1 <= s <= im.MAX_SHIFT
    assert abs(Fraction(M, 2**s) - Fraction(m)) <= Fraction(1, 2 ** (s + 1))


@pytest.mark.parametrize("m", [0.0, -1.0, float("nan"), float("inf"), 1e-12, 2.0**31])
def test_dyadic_refuses(m):
    with pytest.raises(ValueError):
        im.dyadic(m)


@settings(max_examples=400, deadline=None)
@given(INT32, st.floats(min_value=1e-6, max_value=4.0))
def test_requantize_within_one_lsb_of_float_rescale(acc, m):
    M, s = im.dyadic(m)
    lo, hi = im.INT32_MIN, im.INT32_MAX
    y = int(im.requantize(np.array([acc], np.int32), M, s, lo, hi)[0])
    exact = Fraction(acc) * Fraction(m)
    ref = min(max(int(np.floor(exact + Fraction(1, 2))), lo), hi)  # round(acc*m) with exact math
    assert abs(y - ref) <= 1


@settings(max_examples=300, deadline=None)
@given(st.lists(INT32, min_size=1, max_size=16), MULT, st.integers(2, 16), st.booleans())
def test_requantize_matches_bigint_and_saturates(accs, m, bits, unsigned):
    M, s = im.dyadic(m)
    qmin, qmax = im.qrange(bits, unsigned)
    y = im.requantize(np.array(accs, np.int32), M, s, qmin, qmax)
    assert y.dtype == np.int64
    assert [int(v) for v in y] == [exact_requant(a, M, s, qmin, qmax) for a in accs]
    assert y.min() >= qmin and y.max() <= qmax


def test_requantize_extremes_and_saturation():
    acc = np.array([im.INT32_MIN, im.INT32_MAX, 0, -1, 1], np.int32)
    for m in (2.0**-31, 1e-3, 0.5, 1.0, 3.0, 2.0**29):
        M, s = im.dyadic(m)
        y = im.requantize(acc, M, s, -127, 127)
        assert [int(v) for v in y] == [exact_requant(int(a), M, s, -127, 127) for a in acc]
    M, s = im.dyadic(1.0)
    assert im.requantize(np.array([10**6, -(10**6)], np.int32), M, s, 0, 255).tolist() == [255, 0]
    # round half up: 3 * 0.5 = 1.5 -> 2, -3 * 0.5 = -1.5 -> -1
    M, s = im.dyadic(0.5)
    assert im.requantize(np.array([3, -3], np.int32), M, s, -127, 127).tolist() == [2, -1]


def test_requantize_per_channel_and_no_float():
    acc = np.arange(-12, 12, dtype=np.int32).reshape(1, 3, 8)
    Ms, ss = im.dyadic_vector([0.25, 1.0, 2.0])
    y = im.requantize(acc, Ms, ss, -127, 127, axis=1)
    for c, m in enumerate([0.25, 1.0, 2.0]):
        M, s = im.dyadic(m)
        assert np.array_equal(y[0, c], im.requantize(acc[0, c], M, s, -127, 127))
    with pytest.raises(TypeError):
        im.requantize(acc.astype(np.float32), Ms, ss, -127, 127)


@settings(max_examples=100, deadline=None)
@given(st.floats(0.01, 100.0), st.integers(2, 8), st.booleans(), st.integers(0, 2**16))
def test_quantize_eq1(alpha, bits, unsigned, seed):
    x = np.random.default_rng(seed).normal(0, alpha, 64).astype(np.float32)
    S = im.symmetric_scale(alpha, bits, unsigned)
    q = im.quantize(x, S, alpha, bits, unsigned)
    qmin, qmax = im.qrange(bits, unsigned)
    assert q.min() >= qmin and q.max() <= qmax
    lo = 0.0 if unsigned else -alpha
    err = np.abs(im.dequantize(q, S) - np.clip(x, lo, alpha))
    assert err.max() <= S / 2 * (1 + 1e-5) + 1e-6


@settings(max_examples=25, deadline=None)
@given(st.floats(min_value=1e-6, max_value=1e3, allow_nan=False), st.sampled_from(["int8", "uint8", "int16"]))
def test_dequantized_codes_inverts_dequantize(scale, dtype):
    """Every code of the dtype comes back from its float32 logit exactly (``run(codes=True)`` of a host build)."""
    info = np.iinfo(dtype)
    q = np.arange(info.min, info.max + 1).astype(dtype)
    assert np.array_equal(im.dequantized_codes(im.dequantize(q, scale), scale, dtype), q)


def test_dequantized_codes_refuses_what_no_code_gives():
    y = im.dequantize(np.array([3, -7], np.int16), 0.01)
    for bad in (y + np.float32(1e-4), y * 1e5, y.astype(np.float64), np.array([np.nan], np.float32)):
        with pytest.raises(ValueError, match="not the output scale"):
            im.dequantized_codes(bad, 0.01, "int16")


def test_per_channel_weights_and_zero_channel():
    w = np.random.default_rng(0).normal(size=(4, 3, 5))
    w[2] = 0.0
    q, S = im.quantize_per_channel(w, 8)
    assert q.dtype == np.int8 and S.shape == (4,) and S[2] == 1.0 and not q[2].any()
    assert np.abs(q).reshape(4, -1).max(axis=1).tolist() == [127, 127, 0, 127]
    assert np.abs(q * S[:, None, None] - w).max() <= S.max() / 2 + 1e-12


@pytest.mark.parametrize("groups,cin,cout", [(1, 6, 4), (2, 6, 4), (6, 6, 6)])
def test_conv1d_int_exact(groups, cin, cout):
    rng = np.random.default_rng(groups)
    x = rng.integers(0, 256, (2, cin, 30)).astype(np.uint8)
    w = rng.integers(-127, 128, (cout, cin // groups, 5)).astype(np.int8)
    y = im.conv1d_int(x, w, strides=2, padding=(3, 1), dilation=2, groups=groups)
    xt = torch.nn.functional.pad(torch.tensor(x.astype(np.int64)), (3, 1))
    ref = torch.nn.functional.conv1d(xt.double(), torch.tensor(w.astype(np.float64)), stride=2, dilation=2,
                                     groups=groups)
    assert y.dtype == np.int32 and np.array_equal(y, ref.numpy().astype(np.int64))


@pytest.mark.parametrize("shift", [128, -128, 0])
def test_fold_operand_shift_is_exact_algebra(shift):
    """A kernel that multiplies ``x + shift`` and adds the folded bias gets exactly ``bias + W x``, over
    every axis of W but the first (channels and taps alike)."""
    rng = np.random.default_rng(3)
    W = rng.integers(-127, 128, (6, 5, 3))
    x = rng.integers(-128, 128, (5, 3)) if shift >= 0 else rng.integers(0, 256, (5, 3))
    bias = rng.integers(-1000, 1000, 6)
    folded = im.fold_operand_shift(bias, W, shift, 6)
    assert folded.dtype == np.int32
    shifted = (W * (x + shift)[None]).reshape(6, -1).sum(axis=1)
    assert np.array_equal(shifted + folded, bias + (W * x[None]).reshape(6, -1).sum(axis=1))
    assert np.array_equal(im.fold_operand_shift(None, W, 0, 6), np.zeros(6, np.int32))


def test_fold_operand_shift_refuses_an_int32_overflow():
    with pytest.raises(OverflowError, match="leaves int32"):
        im.fold_operand_shift([2**31 - 1], np.full((1, 4), -1), 128, 1)
