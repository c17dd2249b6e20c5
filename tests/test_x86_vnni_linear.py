"""host-vnni rewrite of linear layers (Conformer): ``R.matmul(x[T, K], W[K, M]) + bias -> requantize`` goes to
the time-major ("tk") VNNI kernel of zsq_tvm.backends.x86.pointwise.

A hand-built integer Relax graph (odd T, K % 4 != 0, M % 16 != 0, per-channel and scalar constants,
uint8 and int8 activations, int8/uint8/int32 outputs) must be rewritten and still equal the numpy
oracle bit for bit; a matmul whose weight is not a constant (attention scores) is left alone.
Running needs avx512_vnni, else skipped.
"""

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

from tvm import relax  # noqa: E402

from relax_passes._util import const  # noqa: E402
from zsq_tvm.backends.x86.offload_pointwise import offload_pointwise  # noqa: E402
from zsq_tvm.backends.x86 import pointwise as pw  # noqa: E402
from zsq_tvm.backends.x86.cpu import has_vnni  # noqa: E402

needs_vnni = pytest.mark.skipif(not has_vnni(), reason="CPU lacks avx512_vnni (/proc/cpuinfo flags)")


def _linear_graph(T, K, M, a_dtype, out_dtype, qmin, qmax, seed, scalar_mul=False):
    """main(x[T, K]) = astype(clip((int64(matmul(x, W) + b) * Mul + 2^(Sh-1)) >> Sh), out_dtype), plus the
    constants, as relax_passes.Quantize emits a linear layer."""
    rng = np.random.default_rng(seed)
    W = rng.integers(-127, 128, (K, M)).astype(np.int8)
    b = rng.integers(-20000, 20000, M).astype(np.int32)
    Mul = np.full(M, 1518500250, np.int64) if scalar_mul else rng.integers(2**30, 2**31, M).astype(np.int64)
    Sh = rng.integers(33, 42, M).astype(np.int64)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((T, K), a_dtype))
    with bb.function("main", [x]):
        with bb.dataflow():
            a = bb.emit(relax.op.matmul(x, const(W, "int8"), out_dtype="int32"))
            a = bb.emit(relax.op.add(a, const(b, "int32")))
            a = bb.emit(relax.op.astype(a, "int64"))
            mul = const(Mul[0], "int64") if scalar_mul else const(Mul[None, :], "int64")  # scalar / [1, M]
            a = bb.emit(relax.op.multiply(a, mul))
            a = bb.emit(relax.op.add(a, const(np.int64(1) << (Sh - 1), "int64")))
            a = bb.emit(relax.op.right_shift(a, const(Sh, "int64")))
            a = bb.emit(relax.op.clip(a, qmin, qmax))
            y = bb.emit_output(relax.op.astype(a, out_dtype))
        bb.emit_func_output(y)
    return bb.get(), W, b, Mul, Sh


CASES = [
    (37, 30, 29, "uint8", "int8", -127, 127),
    (32, 144, 144, "int8", "int8", -127, 127),  # Conformer-small shape (M = 9 x 16: 3-vector tiles)
    (9, 7, 40, "int8", "uint8", 0, 255),
    (50, 64, 17, "uint8", "int32", -(2**30), 2**30 - 1),
]


@needs_vnni
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"T{c[0]}K{c[1]}M{c[2]}-{c[3]}-{c[4]}")
def test_linear_rewrite_bit_exact(case):
    from relax_passes.lowering import compile_module, lower, run_module

    T, K, M, ad, od, qmin, qmax = case
    mod, W, b, Mul, Sh = _linear_graph(T, K, M, ad, od, qmin, qmax, seed=T, scalar_mul=(K == 7))
    new, replaced = offload_pointwise(mod)
    assert len(replaced) == 1 and replaced[0]["M"] == M and replaced[0]["K"] == K
    assert not any(isinstance(f, relax.Function) and "matmul" in str(f) for f in new.functions.values())
    rng = np.random.default_rng(1)
    lo, hi = (-128, 128) if ad == "int8" else (0, 256)
    X = rng.integers(lo, hi, (T, K)).astype(ad)
    X[0] = hi - 1
    y = run_module(compile_module(lower(new)), X)
    spec = pw.PointwiseSpec(T, K, M, a_dtype=ad, out_dtype=od, qmin=qmin, qmax=qmax)
    ref = pw.reference(spec, X, W.T, b, Mul, Sh)
    assert y.dtype == ref.dtype and y.shape == (T, M)
    np.testing.assert_array_equal(y, ref)
    assert len(np.unique(ref)) > 3
    # and the unrewritten graph (TVM's default lowering) agrees: the oracle is the graph's meaning
    np.testing.assert_array_equal(run_module(compile_module(lower(mod)), X), ref)


def test_matmul_with_a_tensor_weight_is_left_alone():
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((8, 12), "int8"))
    w = relax.Var("w", relax.TensorType((12, 5), "int8"))
    with bb.function("main", [x, w]):
        with bb.dataflow():
            y = bb.emit_output(relax.op.matmul(x, w, out_dtype="int32"))
        bb.emit_func_output(y)
    assert offload_pointwise(bb.get())[1] == []
