"""ElementwiseToTable (relax_passes/elementwise_to_table.py): an element-wise integer chain of one 8-bit
tensor becomes a 256-entry ``R.take``.

Exhaustive: the integer Swish and the 16-bit sigmoid gate of relax_passes.integer_nonlinear (as the
Conformer's graph has them) on every int8 / uint8 input value, compiled before and after the pass, are
equal bit for bit, and equal the numpy reference of the original graph; the chain is gone from the module.
Left alone: a chain with a per-channel constant, one whose intermediate is also used outside it, one
shorter than ``min_ops``.
"""

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

from tvm import relax  # noqa: E402

from relax_passes._util import bindings, call_op_name, const  # noqa: E402
from relax_passes.elementwise_to_table import ElementwiseToTable, elementwise_to_table  # noqa: E402
from relax_passes.integer_nonlinear import emit_i_sigmoid, emit_i_swish  # noqa: E402
from relax_passes.reference import run_reference  # noqa: E402


def _graph(kind, dtype="int8", shape=(1, 4, 64)):
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape, dtype))
    with bb.function("main", [x]):
        with bb.dataflow():
            if kind == "swish":
                y, _ = emit_i_swish(bb, x, 0.043)
            elif kind == "sigmoid16":
                y, _ = emit_i_sigmoid(bb, x, 0.021, out_bits=16)
            elif kind == "per-channel":  # a per-channel multiplier: the function differs by channel
                c = bb.emit(relax.op.astype(x, "int64"))
                for i in range(6):
                    c = bb.emit(relax.op.add(bb.emit(relax.op.multiply(c, const(np.arange(1, shape[1] + 1).reshape(
                        1, -1, 1).astype(np.int64), "int64"))), const(np.int64(i), "int64")))
                y = bb.emit(relax.op.astype(relax.op.clip(c, -1000, 1000), "int32"))
            elif kind == "second-use":  # an intermediate leaves the chain: two outputs
                c = bb.emit(relax.op.astype(x, "int64"))
                mid = c
                for i in range(6):
                    c = bb.emit(relax.op.add(bb.emit(relax.op.multiply(c, const(np.int64(3), "int64"))),
                                             const(np.int64(i), "int64")))
                y = bb.emit(relax.op.add(bb.emit(relax.op.astype(c, "int32")), bb.emit(relax.op.astype(mid, "int32"))))
                y = bb.emit(relax.op.multiply(y, relax.op.astype(relax.op.nn.relu(relax.op.astype(mid, "int32")), "int32")))
            else:  # short: 2 ops
                y = bb.emit(relax.op.astype(bb.emit(relax.op.add(bb.emit(relax.op.astype(x, "int32")),
                                                                 const(np.int32(5), "int32"))), "int32"))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return bb.get()


def _every_value(dtype, shape=(1, 4, 64)):
    lo = -128 if dtype == "int8" else 0
    return (np.arange(np.prod(shape)) % 256 + lo).astype(dtype).reshape(shape)  # all 256 values, every channel


def _run(mod, x):
    vm = relax.VirtualMachine(tvm.compile(mod, target="llvm"), tvm.cpu())
    return vm["main"](tvm.runtime.tensor(x)).numpy()


@pytest.mark.parametrize("kind,dtype", [("swish", "int8"), ("sigmoid16", "int8"), ("swish", "uint8")])
def test_table_bit_exact_on_every_input(kind, dtype):
    mod = _graph(kind, dtype)
    new, replaced = elementwise_to_table(mod)
    assert len(replaced) == 1 and replaced[0]["ops"] >= 20
    assert tvm.ir.save_json(ElementwiseToTable()(mod)) == tvm.ir.save_json(new)  # the pass form
    ops = [call_op_name(b.value) for b in bindings(new["main"])]
    assert "take" in ops and "floor_divide" not in ops and len([o for o in ops if o]) <= 3  # astype, add, take
    x = _every_value(dtype)
    ref = run_reference(mod, x)
    assert np.array_equal(_run(new, x), ref) and np.array_equal(_run(mod, x), ref)


@pytest.mark.parametrize("kind", ["per-channel", "second-use", "short"])
def test_left_alone(kind):
    new, replaced = elementwise_to_table(_graph(kind))
    assert replaced == [] and "take" not in [call_op_name(b.value) for b in bindings(new["main"])]
