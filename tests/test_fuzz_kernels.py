"""Property-based fuzzing of the integer kernels (hypothesis).

Pure numpy (the one definition, :mod:`zsq_tvm.core.intmath`):

* ``dyadic(m)``: ``M`` in ``[2^30, 2^31)``, ``1 <= s <= 62``, ``|M 2^-s - m| <= 2^-(s+1)`` checked in exact
  rationals, over tiny and huge scales; outside the supported range a ValueError, never garbage;
* ``requantize``: bit for bit equal to exact rational arithmetic (``floor(acc M / 2^s + 1/2)``, clipped,
  Python ints/fractions) and within 1 LSB of the real-valued ``clip(round(acc m))`` (float64 and exact),
  per-tensor and per-channel, saturating accumulators (int32 extremes) included; the int64 product
  never leaves int64;
* ``conv1d_int``: equal to a direct int64 sum over random shapes (groups, depthwise, stride, dilation,
  padding).

TVM: an int8/uint8 conv1d with the requantize epilogue exactly as Quantize emits it (conv -> + bias ->
astype int64 -> * M -> + 2^(s-1) -> >> s -> clip -> astype), compiled for the host through the product
path (:func:`zsq_tvm.build.compile_relax`), bit-exact against :mod:`relax_passes.reference` and the intmath
composition, over random shapes.  Weights, bias and (M, s) are function parameters, so one build per
shape serves every drawn value (a dozen builds in all).

``python3 -m bench.fuzz --examples 10000`` runs the same ``prop_*`` functions at 10 000 examples per kernel.
"""

from __future__ import annotations

import functools
import math
from fractions import Fraction

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zsq_tvm.core import intmath

CI = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
M_LO, M_HI = 2.0**-32, 2.0**30 * (1 - 2.0**-31)  # dyadic's guaranteed domain (see prop_dyadic)

QRANGES = [(-127, 127), (0, 255), (-(2**30), 2**30 - 1), (-32767, 32767), (-7, 7), (0, 15)]

# ------------------------------------------------------------------------------------ strategies
multipliers = st.one_of(
    st.floats(2.0**-40, 2.0**34, allow_nan=False, allow_infinity=False),       # everywhere, edges beyond
    st.builds(lambda e, f: math.ldexp(f, e), st.integers(-33, 31), st.floats(0.5, 1.0, exclude_max=True)),
    st.sampled_from([M_LO, M_HI, 2.0**30, 2.0**-32 * (1 - 2.0**-20), 1.0, 0.5, 2.0**29, 1 - 2.0**-40]),
)
int32s = st.one_of(st.integers(intmath.INT32_MIN, intmath.INT32_MAX),
                   st.sampled_from([intmath.INT32_MIN, intmath.INT32_MAX, -1, 0, 1, 2**30, -(2**30)]),
                   st.integers(-1000, 1000))


@st.composite
def requant_cases(draw):
    """(acc int64 array, M, s, qmin, qmax, axis, m) with per-tensor or per-channel (M, s)."""
    ndim = draw(st.integers(1, 3))
    shape = tuple(draw(st.lists(st.integers(1, 4), min_size=ndim, max_size=ndim)))
    acc = np.array(draw(st.lists(int32s, min_size=int(np.prod(shape)), max_size=int(np.prod(shape)))),
                   dtype=np.int64).reshape(shape)
    axis = draw(st.integers(0, ndim - 1))
    per_channel = draw(st.booleans()) and shape[axis] > 1
    n = shape[axis] if per_channel else 1
    ms = draw(st.lists(st.floats(M_LO, M_HI, allow_nan=False) | st.sampled_from([M_LO, M_HI, 1.0]),
                       min_size=n, max_size=n))
    qmin, qmax = draw(st.sampled_from(QRANGES))
    return acc, np.array(ms), qmin, qmax, axis


@st.composite
def conv_cases(draw):
    """(x, w, stride, (pl, pr), dilation, groups) with int8 or uint8 x and int8 w."""
    groups = draw(st.sampled_from([1, 1, 2, 3, "dw"]))
    if groups == "dw":
        c = draw(st.integers(1, 8))
        groups, cg, og = c, 1, draw(st.sampled_from([1, 1, 2]))
    else:
        cg, og = draw(st.integers(1, 6)), draw(st.integers(1, 5))
    k = draw(st.integers(1, 7))
    dil = draw(st.integers(1, 3))
    stride = draw(st.integers(1, 3))
    pl, pr = draw(st.integers(0, 4)), draw(st.integers(0, 4))
    span = dil * (k - 1) + 1
    t = draw(st.integers(max(1, span - pl - pr), span + 12))
    n = draw(st.integers(1, 2))
    unsigned = draw(st.booleans())
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    extreme = draw(st.booleans())  # codes at the ends of their ranges: the largest accumulators
    lo, hi = (0, 255) if unsigned else (-127, 127)
    if extreme:
        x = rng.choice([lo, hi], size=(n, groups * cg, t))
        w = rng.choice([-127, 127], size=(groups * og, cg, k))
    else:
        x = rng.integers(lo, hi + 1, size=(n, groups * cg, t))
        w = rng.integers(-127, 128, size=(groups * og, cg, k))
    return (x.astype(np.uint8 if unsigned else np.int8), w.astype(np.int8), stride, (pl, pr), dil, groups)


# ------------------------------------------------------------------------------------ properties
def prop_dyadic(m: float) -> None:
    try:
        M, s = intmath.dyadic(m)
    except ValueError:
        assert not (M_LO <= m <= M_HI), f"dyadic refused {m!r} inside its domain"
        return
    assert isinstance(M, int) and isinstance(s, int)
    assert 2**30 <= M < 2**31 and 1 <= s <= intmath.MAX_SHIFT, (m, M, s)
    err = abs(Fraction(M, 2**s) - Fraction(m))
    assert err <= Fraction(1, 2 ** (s + 1)), (m, M, s)
    assert err <= Fraction(m) / 2**31  # relative error <= 2^-31


def _exact_requant(a: int, M: int, s: int, qmin: int, qmax: int) -> int:
    """Round-half-up of the rational a*M/2^s, clipped (Fractions: no shifts, no int64)."""
    r = Fraction(a * M, 2**s) + Fraction(1, 2)
    return min(max(math.floor(r), qmin), qmax)


def prop_requantize(case) -> None:
    acc, ms, qmin, qmax, axis = case
    Ms, ss = intmath.dyadic_vector(ms)
    y = intmath.requantize(acc.astype(np.int32), Ms, ss, qmin, qmax, axis=axis)
    assert y.dtype == np.int64 and y.shape == acc.shape
    idx = np.moveaxis(np.indices(acc.shape), 0, -1).reshape(-1, acc.ndim)
    for ix in idx:
        ix = tuple(int(i) for i in ix)
        c = ix[axis] if ms.size > 1 else 0
        a, M, s, m = int(acc[ix]), int(Ms[c]), int(ss[c]), float(ms[c])
        assert abs(a * M + 2 ** (s - 1)) < 2**63  # the int64 product never wraps
        got = int(y[ix])
        assert got == _exact_requant(a, M, s, qmin, qmax), (a, M, s, qmin, qmax, got)
        real = min(max(round(Fraction(a) * Fraction(m)), qmin), qmax)  # exact real-valued reference
        flt = int(np.clip(np.rint(np.float64(a) * m), qmin, qmax))      # float64 reference
        assert abs(got - real) <= 1 and abs(got - flt) <= 1, (a, m, M, s, got, real, flt)


def _direct_conv(x, w, stride, pad, dil, groups):
    n, c, t = x.shape
    o, cg, k = w.shape
    og = o // groups
    xp = np.pad(x.astype(np.int64), ((0, 0), (0, 0), tuple(pad)))
    t_out = (t + pad[0] + pad[1] - dil * (k - 1) - 1) // stride + 1
    y = np.zeros((n, o, t_out), np.int64)
    for oc in range(o):
        g = oc // og
        for kk in range(k):
            cols = xp[:, g * cg:(g + 1) * cg, kk * dil: kk * dil + stride * (t_out - 1) + 1: stride]
            y[:, oc] += np.einsum("nct,c->nt", cols, w[oc, :, kk].astype(np.int64))
    return y


def prop_conv1d_int(case) -> None:
    x, w, stride, pad, dil, groups = case
    got = intmath.conv1d_int(x, w, stride, pad, dil, groups)
    assert got.dtype == np.int32
    assert np.array_equal(got.astype(np.int64), _direct_conv(x, w, stride, pad, dil, groups))


# ------------------------------------------------------------------------------------ numpy tests
@CI
@given(multipliers)
def test_dyadic(m):
    prop_dyadic(m)


def test_dyadic_rejects_garbage():
    import pytest

    for bad in (0.0, -1.0, float("nan"), float("inf"), 2.0**31, 2.0**-40):
        with pytest.raises(ValueError):
            intmath.dyadic(bad)


@CI
@given(requant_cases())
def test_requantize(case):
    prop_requantize(case)


@CI
@given(conv_cases())
def test_conv1d_int(case):
    prop_conv1d_int(case)


# ------------------------------------------------------------------------------------ TVM conv + epilogue
# (C_in, C_out, K, T, stride, dilation, (pl, pr), groups, x dtype, (qmin, qmax, out dtype), batch)
TVM_SHAPES = [
    (8, 8, 5, 24, 1, 1, (2, 2), 8, "uint8", (-127, 127, "int8"), 1),          # depthwise, QuartzNet-style
    (6, 12, 3, 17, 2, 1, (1, 1), 6, "int8", (0, 255, "uint8"), 1),            # depthwise x2, stride 2
    (4, 6, 1, 9, 1, 1, (0, 0), 1, "uint8", (-(2**30), 2**30 - 1, "int32"), 2),  # pointwise -> residual int32
    (5, 7, 7, 30, 1, 2, (6, 6), 1, "int8", (-127, 127, "int8"), 1),           # dilation 2, same padding
    (6, 4, 4, 13, 3, 1, (0, 3), 2, "uint8", (0, 255, "uint8"), 1),            # grouped, stride 3, asym pad
    (9, 6, 2, 5, 1, 3, (1, 0), 3, "int8", (-127, 127, "int8"), 2),            # 3 groups, dilation 3
    (3, 5, 11, 11, 1, 1, (0, 0), 1, "uint8", (-127, 127, "int8"), 1),         # T_out = 1 (window = T)
    (16, 16, 9, 40, 2, 1, (4, 4), 16, "uint8", (0, 255, "uint8"), 1),         # wider depthwise, stride 2
    (12, 3, 1, 7, 1, 1, (0, 0), 1, "int8", (-(2**30), 2**30 - 1, "int32"), 1),  # decoder-like 1x1
    (2, 2, 3, 4, 1, 1, (1, 1), 1, "int8", (-7, 7, "int8"), 1),                # 4-bit output range
]


@functools.lru_cache(maxsize=None)
def _tvm_kernel(shape):
    """Relax graph as Quantize emits it, with weights/bias/(M, h, s) as parameters; compiled once per shape."""
    import tvm
    from tvm import relax, tirx

    from zsq_tvm.build import compile_relax

    c, o, k, t, stride, dil, pad, groups, xdt, (qmin, qmax, odt), n = shape
    cg = c // groups
    P = lambda name, shp, dt: relax.Var(name, relax.TensorType(shp, dt))  # noqa: E731
    x, w, b = P("x", (n, c, t), xdt), P("w", (o, cg, k), "int8"), P("b", (1, o, 1), "int32")
    M, h, s = P("M", (1, o, 1), "int64"), P("h", (1, o, 1), "int64"), P("s", (1, o, 1), "int64")
    bb = relax.BlockBuilder()
    with bb.function("main", [x, w, b, M, h, s]):
        with bb.dataflow():
            a = bb.emit(relax.op.nn.conv1d(x, w, strides=stride, padding=pad, dilation=dil, groups=groups,
                                           data_layout="NCW", kernel_layout="OIW", out_layout="NCW",
                                           out_dtype="int32"))
            a = bb.emit(relax.op.add(a, b))
            y = bb.emit(relax.op.astype(a, "int64"))
            y = bb.emit(relax.op.multiply(y, M))
            y = bb.emit(relax.op.add(y, h))
            y = bb.emit(relax.op.right_shift(y, s))
            y = bb.emit(relax.op.clip(y, relax.prim_value(tirx.IntImm("int64", qmin)),
                                      relax.prim_value(tirx.IntImm("int64", qmax))))
            gv = bb.emit_output(bb.emit(relax.op.astype(y, odt)))
        bb.emit_func_output(gv)
    mod = bb.get()
    ex, lowered, report, _ = compile_relax(mod, "host")
    assert report.get("ok") in (True, None), report
    return mod, relax.VirtualMachine(ex, tvm.cpu())


def prop_conv_requant_tvm(shape, seed: int, extreme: bool) -> None:
    import tvm

    from relax_passes.reference import run_reference

    c, o, k, t, stride, dil, pad, groups, xdt, (qmin, qmax, odt), n = shape
    cg = c // groups
    rng = np.random.default_rng(seed)
    lo, hi = (0, 255) if xdt == "uint8" else (-127, 127)
    if extreme:
        x = rng.choice([lo, hi], size=(n, c, t))
        w = rng.choice([-127, 0, 127], size=(o, cg, k))
    else:
        x = rng.integers(lo, hi + 1, size=(n, c, t))
        w = rng.integers(-127, 128, size=(o, cg, k))
    x, w = x.astype(xdt), w.astype(np.int8)
    accmax = cg * k * 255 * 127
    b = rng.integers(-accmax, accmax + 1, size=(1, o, 1)).astype(np.int32)
    # multipliers that map the accumulator range onto ~[0.01, 100] x the output range (hits saturation)
    span = max(abs(qmin), qmax)
    m = span / (2 * accmax) * np.exp(rng.uniform(np.log(0.01), np.log(100.0), size=o))
    m = np.clip(m, M_LO, M_HI)
    Mv, sv = intmath.dyadic_vector(m)
    M, s = Mv.reshape(1, o, 1), sv.reshape(1, o, 1)
    h = np.left_shift(np.int64(1), s - 1)
    args = (x, w, b, M, h, s)
    mod, vm = _tvm_kernel(shape)
    got = vm["main"](*[tvm.runtime.tensor(np.ascontiguousarray(a)) for a in args]).numpy()
    ref = run_reference(mod, *args)
    direct = intmath.requantize(intmath.conv1d_int(x, w, stride, pad, dil, groups).astype(np.int64) + b,
                                Mv, sv, qmin, qmax, axis=1).astype(odt)
    assert got.dtype == np.dtype(odt) and np.array_equal(got, ref) and np.array_equal(ref, direct), (shape, seed)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(TVM_SHAPES), st.integers(0, 2**32 - 1), st.booleans())
def test_conv_requant_tvm_vs_reference(shape, seed, extreme):
    prop_conv_requant_tvm(shape, seed, extreme)
