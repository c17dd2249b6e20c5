"""zsq_tvm.core.intops: one definition of requantize gives the numpy reference, the Relax graph and the TIR
kernel epilogue, and they agree bit for bit."""

import numpy as np

from zsq_tvm.core import intmath, intops
from zsq_tvm.core.tir_intmath import requantize_expr

RNG = np.random.default_rng(0)
ACC = RNG.integers(-2**31, 2**31, size=(2, 4, 33), dtype=np.int64)
ACC[0, 0, :6] = [-2**31, 2**31 - 1, 0, -1, 1, 2**30]
M, S = intmath.dyadic_vector([0.37, 1e-4, 2.5e-9, 0.0123])


def _numpy():
    return intops.requantize(intops.NUMPY, ACC, M.reshape(1, 4, 1), S.reshape(1, 4, 1), -127, 127)


def test_numpy_form_is_intmath_requantize():
    np.testing.assert_array_equal(_numpy(), intmath.requantize(ACC, M, S, -127, 127, axis=1))


def test_python_ints_stay_exact_past_int64():
    """The overflow proofs run the same definition on Python ints: no int64 wrap."""
    big = 2**40
    assert intops.dyadic_product(intops.NUMPY, big, 2**31 - 1, 40) == big * (2**31 - 1) + 2**39
    assert intops.requantize(intops.NUMPY, big, 2**31 - 1, 40, -127, 127) == 127


def test_relax_form_equals_numpy_in_the_reference_and_the_build():
    from tvm import relax

    from relax_passes import lowering, reference
    from relax_passes._util import bindings, call_op_name

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(ACC.shape, "int32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            o = intops.RelaxOps(bb)
            y = intops.requantize(o, o.cast(x, "int64"), M.reshape(1, 4, 1), S.reshape(1, 4, 1), -127, 127)
            gv = bb.emit_output(o.cast(y, "int8"))
        bb.emit_func_output(gv)
    mod = bb.get()
    ops = [call_op_name(b.value) for b in bindings(mod["main"]) if call_op_name(b.value)]
    # the rounding term 2^(s-1) of constant shifts is folded: one op per step of the formula
    assert ops == ["astype", "multiply", "add", "right_shift", "clip", "astype"]
    want = _numpy().astype(np.int8)
    np.testing.assert_array_equal(reference.run_reference(mod, ACC.astype(np.int32)), want)
    np.testing.assert_array_equal(lowering.run_module(lowering.compile_module(mod), ACC.astype(np.int32)), want)


def test_tir_form_is_the_formula():
    """The kernel epilogue (x86 VNNI, CUDA) is the same definition built on TIR expressions."""
    from tvm import tirx

    acc, m, s = tirx.Var("acc", "int32"), tirx.Var("m", "int64"), tirx.Var("s", "int64")
    assert str(requantize_expr(acc, m, s, -127, 127, "int8")) == (
        'T.Cast("int8", T.max(T.min(T.Cast("int64", acc) * m + (T.int64(1) << s - T.int64(1)) >> s, '
        'T.int64(127)), T.int64(-127)))')
