"""relax_passes.tir_inline.InlineOnceRead: the CPU build's elementwise chains become one loop nest, bit for bit.

A fused integer chain as ``LegalizeOps`` + ``FuseTIR`` leave it (one block per op, each writing a full-size
buffer) is inlined into its last block; a block read twice (``a * a``), a per-row value read by a per-element
block (a broadcast) and a value read at another element (a gather) stay buffers on the CPU; hand-scheduled and
tuned kernels are not touched.  Outputs equal the un-inlined build's (and numpy's) on llvm.
"""

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

import tvm_ffi  # noqa: E402
from tvm import relax, s_tir, tirx  # noqa: E402
from tvm.script import tirx as T  # noqa: E402

from relax_passes.lowering import lower  # noqa: E402
from relax_passes.tir_inline import InlineOnceRead  # noqa: E402


def _chain_module():
    """``y = ((clip(x - rowmax(x)) * k) >> s) + sq`` with ``sq = (x >> 3) * (x >> 3)`` (read twice) on int64
    ``[2, 3, 8]``, plus a strided slice concatenated with ``x`` (a gather)."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((2, 3, 8), "int64"))
    with bb.function("main", [x]):
        with bb.dataflow():
            m = bb.emit(relax.op.max(x, axis=-1, keepdims=True))
            a = bb.emit(relax.op.subtract(x, m))  # a broadcast of the per-row m
            a = bb.emit(relax.op.clip(a, -1000, 0))
            a = bb.emit(relax.op.multiply(a, relax.const(37, "int64")))
            a = bb.emit(relax.op.right_shift(a, relax.const(2, "int64")))
            h = bb.emit(relax.op.right_shift(x, relax.const(3, "int64")))
            sq = bb.emit(relax.op.multiply(h, h))  # h is read twice
            y = bb.emit(relax.op.add(a, sq))
            s = bb.emit(relax.op.strided_slice(x, axes=[2], begin=[1], end=[8], strides=[2]))
            z = bb.emit(relax.op.concat([y, s], axis=2))
            out = bb.emit_output(z)
        bb.emit_func_output(out)
    return bb.get()


def _run(mod, x):
    vm = relax.VirtualMachine(tvm.compile(mod, target="llvm"), tvm.cpu())
    return vm["main"](tvm.runtime.tensor(x)).numpy()


def _block_count(mod):
    n = 0
    for _, f in mod.functions_items():
        if isinstance(f, tirx.PrimFunc):
            sch = s_tir.Schedule(f)
            n += len(sch.get_child_blocks(sch.get_sblock("root")))
    return n


def test_chains_inline_into_one_loop_nest_bit_exact():
    low = lower(_chain_module())
    p = InlineOnceRead()
    new = p(low)
    assert p.inlined and _block_count(new) < _block_count(low)
    x = np.random.default_rng(0).integers(-5000, 5000, (2, 3, 8)).astype(np.int64)
    x[0, 0] = np.iinfo(np.int64).max >> 8  # large values through the shifts and the product
    np.testing.assert_array_equal(_run(new, x), _run(low, x))


@T.prim_func(s_tir=True)
def _four_producers(X: T.Buffer((4, 8), "int64"), R: T.Buffer((4,), "int64"), Y: T.Buffer((4, 8), "int64")):
    A = T.sblock_alloc_buffer((4, 8), "int64")  # same element, read once: inlined
    H = T.sblock_alloc_buffer((4, 8), "int64")  # read twice: stays
    S = T.sblock_alloc_buffer((4,), "int64")  # per row, read by every element of the row: stays on the CPU
    G = T.sblock_alloc_buffer((4, 8), "int64")  # read at another element (a gather): stays on the CPU
    for i, j in T.grid(4, 8):
        with T.sblock("A"):
            vi, vj = T.axis.remap("SS", [i, j])
            A[vi, vj] = X[vi, vj] * T.int64(3)
    for i, j in T.grid(4, 8):
        with T.sblock("H"):
            vi, vj = T.axis.remap("SS", [i, j])
            H[vi, vj] = T.shift_right(X[vi, vj], T.int64(1))
    for i in range(4):
        with T.sblock("S"):
            vi = T.axis.remap("S", [i])
            S[vi] = R[vi] + T.int64(1)
    for i, j in T.grid(4, 8):
        with T.sblock("G"):
            vi, vj = T.axis.remap("SS", [i, j])
            G[vi, vj] = X[vi, vj] - T.int64(5)
    for i, j in T.grid(4, 8):
        with T.sblock("Y"):
            vi, vj = T.axis.remap("SS", [i, j])
            Y[vi, vj] = A[vi, vj] + H[vi, vj] * H[vi, vj] - S[vi] + G[vi, 7 - vj]


@pytest.mark.parametrize("pointwise_only,kept", [(True, {"H", "S", "G", "Y"}), (False, {"H", "Y"})],
                         ids=["cpu", "gpu-rule"])
def test_what_is_inlined(pointwise_only, kept):
    """CPU: only ``A``.  The GPU rule (``pointwise_only=False``, one thread per element anyway) also takes the
    broadcast and the gather; neither inlines the twice-read ``H``.  Both exact."""
    from relax_passes.tir_inline import inline_once_read

    sch = s_tir.Schedule(_four_producers)
    inline_once_read(sch, pointwise_only=pointwise_only)
    assert {sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))} == kept
    rng = np.random.default_rng(1)
    X, R = rng.integers(-1000, 1000, (4, 8)), rng.integers(-1000, 1000, 4)
    lib = tvm.compile(sch.mod, target="llvm")
    args = [tvm.runtime.tensor(X), tvm.runtime.tensor(R), tvm.runtime.empty((4, 8), "int64")]
    lib["main"](*args)
    want = 3 * X + (X >> 1) ** 2 - (R + 1)[:, None] + (X - 5)[:, ::-1]
    np.testing.assert_array_equal(args[2].numpy(), want)


def test_scheduled_and_kernel_functions_are_left_alone():
    low = lower(_chain_module())
    marked = tvm.IRModule({gv: (f.with_attr("tirx.is_scheduled", True) if isinstance(f, tirx.PrimFunc) else f)
                           for gv, f in low.functions.items()})
    p = InlineOnceRead()
    assert tvm_ffi.structural_equal(p(marked), marked) and p.inlined == {}
    kernels = tvm.IRModule({gv: (f.with_attr("zsq.kernel", "test") if isinstance(f, tirx.PrimFunc) else f)
                            for gv, f in low.functions.items()})
    assert tvm_ffi.structural_equal(p(kernels), kernels) and p.inlined == {}
