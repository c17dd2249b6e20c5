"""SplitProjections (relax_passes/split_projections.py): a constant projection whose int32 result is only
split on its feature axis becomes one projection per section.

Hand-built graphs as the Conformer's are: a fused Q/K/V matmul ``[1, T, K] x [K, 3M]`` split on the last axis
(explicit indices), and the convolution module's pointwise conv ``[2C, C, 1]`` + bias split in two for the
GLU (``indices_or_sections=2``).  The rewritten module equals the original bit for bit on TVM's default
lowering, and no split is left; a split on another axis, or a tuple used as a whole, is left alone.
"""

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

from tvm import relax  # noqa: E402

from relax_passes._util import bindings, call_op_name, const  # noqa: E402
from relax_passes.split_projections import split_projections  # noqa: E402


def _run(mod, x):
    vm = relax.VirtualMachine(tvm.compile(mod, target="llvm"), tvm.cpu())
    out = vm["main"](tvm.runtime.tensor(x))
    return [out.numpy()] if hasattr(out, "numpy") else [o.numpy() for o in out]


def _qkv(axis=2, whole_tuple=False):
    rng = np.random.default_rng(0)
    T, K, M = 13, 24, 20
    W = rng.integers(-127, 128, (K, 3 * M)).astype(np.int8)
    bias = [rng.integers(-999, 999, (M,)).astype(np.int32) for _ in range(3)]
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, T, K), "int8"))
    with bb.function("main", [x]):
        with bb.dataflow():
            m = bb.emit(relax.op.matmul(x, const(W, "int8"), out_dtype="int32"))
            if axis != 2:  # split on the time axis: not a feature section
                s = bb.emit(relax.op.split(m, indices_or_sections=[5, 9], axis=axis))
            else:
                s = bb.emit(relax.op.split(m, indices_or_sections=[M, 2 * M], axis=axis))
            if whole_tuple:
                out = bb.emit_output(s)
            else:
                ys = [bb.emit(relax.op.add(bb.emit(relax.TupleGetItem(s, i)), const(bias[i], "int32")))
                      if axis == 2 else bb.emit(relax.TupleGetItem(s, i)) for i in range(3)]
                out = bb.emit_output(relax.Tuple(ys))
        bb.emit_func_output(out)
    return bb.get(), rng.integers(-128, 128, (1, T, K)).astype(np.int8)


def _glu(scalar_bias=False):
    rng = np.random.default_rng(1)
    C, T = 12, 17
    W = rng.integers(-127, 128, (2 * C, C, 1)).astype(np.int8)
    b = np.int32(77) if scalar_bias else rng.integers(-5000, 5000, (1, 2 * C, 1)).astype(np.int32)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, C, T), "uint8"))
    with bb.function("main", [x]):
        with bb.dataflow():
            a = bb.emit(relax.op.nn.conv1d(x, const(W, "int8"), out_dtype="int32"))
            a = bb.emit(relax.op.add(a, const(b, "int32")))
            s = bb.emit(relax.op.split(a, indices_or_sections=2, axis=1))
            g = bb.emit(relax.op.multiply(bb.emit(relax.TupleGetItem(s, 0)), bb.emit(relax.TupleGetItem(s, 1))))
            out = bb.emit_output(g)
        bb.emit_func_output(out)
    return bb.get(), rng.integers(0, 256, (1, C, T)).astype(np.uint8)


def _ops(mod):
    return [call_op_name(b.value) for b in bindings(mod["main"])]


@pytest.mark.parametrize("make", [_qkv, _glu, lambda: _glu(scalar_bias=True)], ids=["qkv", "glu", "glu-scalar-bias"])
def test_sections_bit_exact_and_no_split_left(make):
    mod, x = make()
    new, replaced = split_projections(mod)
    assert len(replaced) == 1 and "split" not in _ops(new)
    n_proj = sum(op in ("matmul", "nn.conv1d") for op in _ops(new))
    assert n_proj == len(replaced[0]["sections"])
    for a, b in zip(_run(mod, x), _run(new, x)):
        assert a.dtype == b.dtype and np.array_equal(a, b)


@pytest.mark.parametrize("kw", [dict(axis=1), dict(whole_tuple=True)], ids=["time-axis", "tuple-returned"])
def test_other_splits_left_alone(kw):
    mod, _ = _qkv(**kw)
    new, replaced = split_projections(mod)
    assert replaced == [] and "split" in _ops(new)
