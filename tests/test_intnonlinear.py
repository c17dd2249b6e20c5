"""zsq_tvm.core.intnonlinear: I-BERT integer non-linearities vs float, exhaustive over int8 inputs.

Every bound asserted here is the one stated in the function's docstring.
"""

import ast
import inspect
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zsq_tvm.core import intnonlinear as inl
from zsq_tvm.core import intops

Q8 = np.arange(-127, 128, dtype=np.int64)           # the full int8 (narrow symmetric) range
SCALES = [1 / 127, 4 / 127, 8 / 127, 16 / 127, 0.3]  # alpha = 1 .. 38
_erf = np.vectorize(math.erf)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def assert_int(a, dtype=None):
    a = np.asarray(a)
    assert a.dtype.kind in "iu", a.dtype
    if dtype is not None:
        assert a.dtype == np.dtype(dtype), a.dtype


# ---------------------------------------------------------------- no float ops in the kernels
_FLOAT_NAMES = {"float", "math", "float32", "float64", "float16", "exp", "sqrt", "log", "log2", "tanh",
                "erf", "rint", "round", "true_divide", "divide", "floor", "ceil"}


def _kernels():
    return [(n, f) for n, f in vars(inl).items() if inspect.isfunction(f) and (n.startswith("_k_") or n == "i_sqrt")]


def test_kernels_have_no_float_ops():
    """Run-time kernels: no ``/``, no float literal, no float function or dtype (AST check)."""
    ks = _kernels()
    assert {"_k_exp", "_k_softmax", "_k_sigmoid", "_k_gate", "_k_gelu", "_k_layernorm", "_k_poly", "i_sqrt"} <= {n for n, _ in ks}
    for name, f in ks:
        # one definition for numpy and the graph: every kernel computes through the ops object it is given
        assert next(iter(inspect.signature(f).parameters)) == ("n" if name == "i_sqrt" else "o"), name
        tree = ast.parse(inspect.getsource(f))
        body = tree.body[0]
        body.body = [s for s in body.body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
        for node in ast.walk(body):
            assert not (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div)), f"{name}: true division"
            assert not (isinstance(node, ast.Constant) and isinstance(node.value, float)), f"{name}: float literal"
            if isinstance(node, ast.Attribute):
                assert node.attr not in _FLOAT_NAMES, f"{name}: {node.attr}"
            if isinstance(node, ast.Name):
                assert node.id not in _FLOAT_NAMES, f"{name}: {node.id}"


def test_integer_dtypes_and_no_float_warnings():
    """On int inputs every output is an integer dtype; float errors would raise (seterr='raise')."""
    rng = np.random.default_rng(1)
    q = rng.integers(-127, 128, size=(3, 8, 16))
    with np.errstate(all="raise"):
        outs = {
            "exp": inl.i_exp(q, 0.05), "softmax": inl.i_softmax(q, 0.05), "sigmoid": inl.i_sigmoid(q, 0.05),
            "swish": inl.i_swish(q, 0.05), "glu": inl.i_glu(q, 0.05, q[::-1], 0.1), "gelu": inl.i_gelu(q, 0.05),
            "poly": inl.i_poly(q, 0.05, *inl.EXP_POLY),
            "ln": inl.i_layernorm(q, 0.05, np.ones(16), np.zeros(16)),
        }
        for name, (y, s) in outs.items():
            assert_int(y)
            assert isinstance(s, float) and s > 0, name
        assert_int(inl.i_sqrt(q * q))
    assert outs["softmax"][0].dtype == np.uint8 and outs["sigmoid"][0].dtype == np.uint8
    for n in ("swish", "glu", "gelu", "ln"):
        assert outs[n][0].dtype == np.int8
    with pytest.raises(TypeError):
        inl.i_exp(np.array([-1.0]), 0.1)


# ---------------------------------------------------------------- i_poly
@pytest.mark.parametrize("S", [1e-3, 1e-2])
def test_i_poly_bound(S):
    a, b, c = inl.EXP_POLY
    q = np.arange(-int(0.7 / S), 1)
    y, So = inl.i_poly(q, S, a, b, c)
    x = S * q
    bound = abs(a) * (S * np.abs(x + b) + S * S / 4) + abs(a) * S * S / 2
    assert np.all(np.abs(So * y - (a * (x + b) ** 2 + c)) <= bound + 1e-12)
    yn, Sn = inl.i_poly(q, S, *inl.ERF_POLY)  # negative a: positive scale, negated integers
    assert Sn > 0 and np.all(np.abs(Sn * yn - (-0.2888 * (x - 1.769) ** 2 + 1)) <= 0.2888 * (S * np.abs(x - 1.769) + S * S))


# ---------------------------------------------------------------- i_exp
@pytest.mark.parametrize("S", SCALES)
def test_i_exp_int8_relative_error(S):
    e, Se = inl.i_exp(Q8, S)
    ref = np.exp(np.minimum(S * Q8, 0.0))
    big = ref >= 2.0**-10
    assert np.abs(Se * e / ref - 1)[big].max() <= 4.1e-3
    assert np.abs(Se * e - ref).max() <= 4.1e-3
    assert e.max() < 2**30 and e.min() >= 0


# The prop_* functions are the properties shared with the long fuzzing run (python3 -m bench.fuzz, 10k examples).
def prop_i_exp_int32(S, seed):
    """i_exp on int32 inputs at a tiny scale, within the stated relative / absolute bound."""
    q = -np.random.default_rng(seed).integers(0, 2**31, size=256)
    e, Se = inl.i_exp(q, S)
    ref = np.exp(S * q)
    big = ref >= 2.0**-10
    # k < 0 floors the input: extra relative error <= S' = 2^-13
    assert np.all(np.abs(Se * e[big] / ref[big] - 1) <= 4.1e-3 + 2.0**-13)
    assert np.all(np.abs(Se * e - ref) <= 4.1e-3 + 2.0**-13)


@settings(max_examples=60, deadline=None)
@given(st.floats(2.0**-24, 2.0**-8), st.integers(0, 2**31 - 1))
def test_i_exp_int32_input(S, seed):
    prop_i_exp_int32(S, seed)


# ---------------------------------------------------------------- i_softmax
@pytest.mark.parametrize("S", [1 / 127, 8 / 127, 0.3])
def test_i_softmax_all_int8_pairs(S):
    a = np.arange(-127, 128)
    A, B = np.meshgrid(a, a)
    q = np.stack([A.ravel(), B.ravel()], -1)  # every 2-element int8 row
    p, Sp = inl.i_softmax(q, S)
    assert Sp == 1 / 255 and p.dtype == np.uint8
    err = np.abs(Sp * p - softmax(S * q)).max()
    assert err <= 4.1e-3 <= 1e-2


def prop_i_softmax_rows(S, n, seed):
    """i_softmax of random rows (int8, or int32 attention scores at a small scale) within 4.1e-3, any axis."""
    rng = np.random.default_rng(seed)
    hi = 128 if S > 1e-3 else 2**20  # int32 attention scores at a small scale
    q = rng.integers(-hi + 1, hi, size=(8, n))
    p, Sp = inl.i_softmax(q, S, axis=1)
    assert np.abs(Sp * p - softmax(S * q, 1)).max() <= 4.1e-3
    p0, _ = inl.i_softmax(q.T, S, axis=0)
    np.testing.assert_array_equal(p0, p.T)


SOFTMAX_CASES = (st.sampled_from(SCALES + [2.0**-12]), st.integers(1, 200), st.integers(0, 2**31 - 1))


@settings(max_examples=40, deadline=None)
@given(*SOFTMAX_CASES)
def test_i_softmax_random_rows(S, n, seed):
    prop_i_softmax_rows(S, n, seed)


# ---------------------------------------------------------------- i_sigmoid / i_swish / i_glu
def prop_i_sigmoid(S):
    """i_sigmoid over every int8 input at scale S: 8-bit within 3e-3, 16-bit within 1.04e-3, exact symmetry."""
    s8, S8 = inl.i_sigmoid(Q8, S)
    assert S8 == 1 / 255 and s8.dtype == np.uint8
    assert np.abs(S8 * s8 - sigmoid(S * Q8)).max() <= 3.0e-3 <= 1e-2
    s16, S16 = inl.i_sigmoid(Q8, S, out_bits=16)
    assert np.abs(S16 * s16 - sigmoid(S * Q8)).max() <= 1.04e-3
    nz = Q8 != 0  # exact symmetry s(-x) = 1 - s(x) (q = 0: 255/2 rounds half up to 128)
    np.testing.assert_array_equal((s8.astype(int) + s8[::-1])[nz], 255)


@pytest.mark.parametrize("S", SCALES)
def test_i_sigmoid_int8(S):
    prop_i_sigmoid(S)


@pytest.mark.parametrize("S", SCALES)
def test_i_swish_int8(S):
    y, So = inl.i_swish(Q8, S)
    assert So == S and y.dtype == np.int8
    x = S * Q8
    err = np.abs(So * y - x * sigmoid(x))
    assert np.all(err <= So / 2 + 1.04e-3 * np.abs(x) + 1e-12)


def test_i_swish_out_scale():
    S = 8 / 127
    y, So = inl.i_swish(Q8, S, out_scale=4 / 127)  # finer output scale, saturates at 4
    x = S * Q8
    ref = np.clip(x * sigmoid(x), -127 * So, 127 * So)
    assert np.all(np.abs(So * y - ref) <= So / 2 + 1.04e-3 * np.abs(x) + 1e-12)


@pytest.mark.parametrize("Sa,Sb", [(8 / 127, 4 / 127), (1 / 127, 16 / 127)])
def test_i_glu_all_int8_pairs(Sa, Sb):
    A, B = (m.ravel() for m in np.meshgrid(Q8, Q8))
    y, So = inl.i_glu(A, Sa, B, Sb)
    a = Sa * A
    assert np.all(np.abs(So * y - a * sigmoid(Sb * B)) <= So / 2 + 1.04e-3 * np.abs(a) + 1e-12)
    with pytest.raises(OverflowError):
        inl.i_glu(np.array([2**15]), Sa, np.array([0]), Sb)


# ---------------------------------------------------------------- i_gelu
@pytest.mark.parametrize("S", SCALES)
def test_i_gelu_int8(S):
    y, So = inl.i_gelu(Q8, S)
    x = S * Q8
    ref = x / 2 * (1 + _erf(x / math.sqrt(2)))
    assert np.all(np.abs(So * y - ref) <= 0.0182 + So / 2 + 7e-4 * np.abs(x))


def test_i_gelu_16bit_input():
    q = np.arange(-2**15, 2**15, 7)
    S = 6 / 2**15
    y, So = inl.i_gelu(q, S, out_bits=16, in_bits=16)
    x = S * q
    ref = x / 2 * (1 + _erf(x / math.sqrt(2)))
    assert np.all(np.abs(So * y - ref) <= 0.0182 + So / 2 + 7e-4 * np.abs(x))


# ---------------------------------------------------------------- i_sqrt
EDGES = [0, 1, 2, 3, 4, 5, 8, 9, 15, 16, 17, 2**31, 2**32 - 1, 2**32, 2**62 - 1, 2**62, 2**63 - 1]
EDGES += [k * k + d for k in (2, 3, 46340, 46341, 2**31 - 1, 2**31, 3037000499) for d in (-1, 0, 1) if k * k + d < 2**63]


def test_i_sqrt_edges():
    r = inl.i_sqrt(np.array(EDGES, dtype=np.int64))
    assert r.dtype == np.int64
    assert [int(v) for v in r] == [math.isqrt(n) for n in EDGES]
    assert int(inl.i_sqrt(10**18)) == 10**9  # Python int scalar
    with pytest.raises(ValueError):
        inl.i_sqrt(np.array([-1]))


def test_i_sqrt_random_bulk():
    rng = np.random.default_rng(7)
    bits = rng.integers(0, 63, size=20000)
    n = rng.integers(0, 2**62, size=20000, dtype=np.int64) >> (62 - bits)
    r = inl.i_sqrt(n)
    assert all(int(a) == math.isqrt(int(b)) for a, b in zip(r, n))


def prop_i_sqrt(n):
    assert int(inl.i_sqrt(n)) == math.isqrt(n)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2**62))
def test_i_sqrt_exact(n):
    prop_i_sqrt(n)


# ---------------------------------------------------------------- i_layernorm
def _ln_ref(x, g, b, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    return g * (x - mu) / np.sqrt(x.var(-1, keepdims=True) + eps) + b


def prop_i_layernorm(C, hi, S, seed, rows=300):
    """i_layernorm within 1 + 2^-10 output LSB of float LayerNorm wherever float does not saturate."""
    rng = np.random.default_rng(seed)
    q = rng.integers(-hi, hi + 1, size=(rows, C))
    g = rng.normal(1, 0.3, C)
    b = rng.normal(0, 0.2, C)
    g[0], g[1] = -0.5, 0.0
    y, So = inl.i_layernorm(q, S, g, b)
    assert y.dtype == np.int8
    ref = _ln_ref(S * q.astype(np.float64), g, b)
    inside = np.abs(ref) < 127 * So  # saturated outputs are the clip, not the algorithm
    assert np.abs(So * y - ref)[inside].max() <= So * (1 + 2.0**-10)
    assert np.all(y[~inside] == np.where(ref[~inside] > 0, 127, -127))


@pytest.mark.parametrize("C,hi,S", [(144, 127, 0.05), (256, 2**30, 1e-6), (4, 3, 0.1), (256, 5, 0.02), (1024, 127, 0.3)])
def test_i_layernorm_vs_float(C, hi, S):
    prop_i_layernorm(C, hi, S, seed=C + hi)


LAYERNORM_CASES = (st.integers(2, 512), st.sampled_from([1, 3, 5, 127, 2**15, 2**30]),
                   st.floats(1e-6, 0.3), st.integers(0, 2**31 - 1))


@settings(max_examples=30, deadline=None)
@given(*LAYERNORM_CASES)
def test_i_layernorm_random_shapes(C, hi, S, seed):
    prop_i_layernorm(C, hi, S, seed, rows=16)


def test_i_layernorm_constant_row_and_eps():
    q = np.full((2, 16), 5)
    b = np.linspace(-1, 1, 16)
    y, So = inl.i_layernorm(q, 0.1, np.ones(16), b)
    np.testing.assert_array_equal(y[0], np.rint(b / So).astype(np.int8))  # var = 0: output is beta
    # eps comparable to the variance: x in {-S, +S}, var = S^2
    S = 0.01
    q2 = np.tile(np.array([-1, 1]), (1, 8))
    y2, So2 = inl.i_layernorm(q2, S, np.ones(16), np.zeros(16), eps=S * S, out_scale=1 / 127)
    ref = _ln_ref(S * q2.astype(np.float64), 1.0, 0.0, eps=S * S)
    assert np.abs(So2 * y2 - ref).max() <= So2 * (1 + 2.0**-10)


# ---------------------------------------------------------------- Relax emission: TVM build == numpy
def _build_unary(emit, in_dtype, n):
    import tvm  # noqa: F401
    from tvm import relax

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((n,), in_dtype))
    with bb.function("main", [x]):
        with bb.dataflow():
            y, s_out = emit(bb, x)
            gv = bb.emit_output(y)
        bb.emit_func_output(gv)
    return bb.get(), s_out


@pytest.mark.parametrize("S", [1 / 127, 8 / 127, 0.3])
def test_relax_sigmoid_swish_bit_exact(S):
    from relax_passes import integer_nonlinear as rin
    from relax_passes import lowering, reference

    q = Q8.astype(np.int8)
    cases = [
        (lambda bb, x: rin.emit_i_sigmoid(bb, x, S), inl.i_sigmoid(Q8, S)),
        (lambda bb, x: rin.emit_i_sigmoid(bb, x, S, out_bits=16), inl.i_sigmoid(Q8, S, out_bits=16)),
        (lambda bb, x: rin.emit_i_swish(bb, x, S), inl.i_swish(Q8, S)),
    ]
    for emit, (want, s_want) in cases:
        mod, s_out = _build_unary(emit, "int8", q.size)
        assert s_out == s_want
        ref = reference.run_reference(mod, q)
        np.testing.assert_array_equal(ref, want)
        got = lowering.run_module(lowering.compile_module(mod), q)
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)


# ---------------------------------------------------------------- division by a constant as multiply-shift
@pytest.mark.parametrize("S", [2.0, 0.3, 1 / 127, 1e-3, 1e-5, 3.7e-7])
def test_exp_range_reduction_multiply_shift_is_floor_division(S):
    """i-exp's ``floor(-x / q_ln2)`` is computed as ``(-x m) >> s`` (:func:`_div_consts`): equal to the
    division on *every* value the clamped input can take, at int8-like and int32-like scales."""
    c = inl._exp_consts(S)
    n = np.arange(-inl._k_shift(intops.NUMPY, c["q_floor"], c["k"]) + 1, dtype=np.int64)
    assert np.array_equal((n * c["z_mul"]) >> c["z_shift"], n // c["q_ln2"])


@given(st.integers(1, 2**20), st.integers(0, 2**24))
@settings(max_examples=200, deadline=None)
def test_div_consts_exact_at_the_range_ends(d, n_max):
    m, s = inl._div_consts(d, n_max)
    n = np.unique(np.clip(np.array([0, 1, d - 1, d, d + 1, n_max - 1, n_max, n_max // 2, (n_max // d) * d,
                                    (n_max // d) * d - 1]), 0, n_max)).astype(np.int64)
    assert np.array_equal((n * m) >> s, n // d) and n_max * m < 2**62
