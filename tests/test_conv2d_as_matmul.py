"""Conv2dAsMatmul (relax_passes/conv2d_as_matmul.py): int8 conv2d + requantize -> im2col + matmul + chain.

Hand-built integer graphs as relax_passes.Quantize emits them (per-channel ``[1, M, 1, 1]`` and scalar
constants, int8 and uint8 inputs, strides 1 and 2, asymmetric padding, odd sizes, M not a multiple of 16):
the rewritten module, compiled with TVM's default lowering and (on a VNNI CPU) with the VNNI linear
kernel it is meant for, equals the original conv2d graph bit for bit.  A conv2d whose output has a second
user, or a grouped conv2d, is left alone.
"""

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

from tvm import relax  # noqa: E402

from relax_passes._util import const  # noqa: E402
from relax_passes.conv2d_as_matmul import Conv2dAsMatmul, conv2d_as_matmul  # noqa: E402
from zsq_tvm.backends.x86.offload_pointwise import offload_pointwise  # noqa: E402
from zsq_tvm.backends.x86.cpu import has_vnni  # noqa: E402
from zsq_tvm.backends.x86.vnni import x86_target  # noqa: E402

CASES = [  # C, H, W, M, kernel, strides, padding, a_dtype, out_dtype, qmin, qmax, scalar_mul
    (1, 40, 16, 20, (3, 3), (2, 2), (1, 1, 1, 1), "int8", "uint8", 0, 255, False),     # subsampling conv 1
    (6, 21, 9, 36, (3, 3), (2, 2), (1, 1, 1, 1), "uint8", "int8", -127, 127, True),    # conv 2, odd sizes
    (5, 13, 11, 17, (3, 2), (1, 1), (0, 1, 2, 0), "uint8", "uint8", 0, 255, False),    # stride 1, asym pad
]


def _graph(C, H, W, M, kernel, strides, padding, a_dtype, out_dtype, qmin, qmax, scalar_mul, seed=0,
           second_user=False, groups=1):
    rng = np.random.default_rng(seed)
    Wt = rng.integers(-127, 128, (M, C // groups, *kernel)).astype(np.int8)
    b = rng.integers(-20000, 20000, (1, M, 1, 1)).astype(np.int32)
    Mul = rng.integers(2**30, 2**31, (1, M, 1, 1)).astype(np.int64)
    Sh = rng.integers(33, 40, (1, M, 1, 1)).astype(np.int64)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, C, H, W), a_dtype))
    with bb.function("main", [x]):
        with bb.dataflow():
            a = bb.emit(relax.op.nn.conv2d(x, const(Wt, "int8"), strides=list(strides), padding=list(padding),
                                           groups=groups, out_dtype="int32"))
            c = bb.emit(relax.op.add(a, const(b, "int32")))
            c = bb.emit(relax.op.astype(c, "int64"))
            c = bb.emit(relax.op.multiply(c, const(Mul[0, 0, 0, 0], "int64") if scalar_mul else const(Mul, "int64")))
            c = bb.emit(relax.op.add(c, const(np.int64(1) << (Sh - 1), "int64")))
            c = bb.emit(relax.op.right_shift(c, const(Sh, "int64")))
            c = bb.emit(relax.op.clip(c, qmin, qmax))
            y = bb.emit(relax.op.astype(c, out_dtype))
            if second_user:  # the int32 conv output is also used elsewhere: the chain cannot be moved
                y = bb.emit(relax.op.add(relax.op.astype(y, "int32"), a))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return bb.get()


def _stacked_graph(seed=0, mask=False):
    """The Conformer's subsampling shape: conv(1 -> 12, 3x3, stride 2) + requantize to uint8, straight into
    conv(12 -> 10, 3x3, stride 2) + requantize to int8.  ``mask``: the second conv's input is multiplied by a
    0/1 tensor with one channel first, as ``relax_passes.time_mask`` does (frames 0..6 of 12 kept)."""
    rng = np.random.default_rng(seed)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 1, 23, 17), "int8"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = x
            for C, M, out_dtype, qmin, qmax in ((1, 12, "uint8", 0, 255), (12, 10, "int8", -127, 127)):
                if mask and C == 12:
                    m = (np.arange(12) < 7).astype(np.uint8).reshape(1, 1, 12, 1)
                    y = bb.emit(relax.op.multiply(y, const(m, "uint8")))
                Wt = rng.integers(-127, 128, (M, C, 3, 3)).astype(np.int8)
                Sh = rng.integers(33, 38, (1, M, 1, 1)).astype(np.int64)
                c = bb.emit(relax.op.nn.conv2d(y, const(Wt, "int8"), strides=[2, 2], padding=[1, 1, 1, 1],
                                               out_dtype="int32"))
                c = bb.emit(relax.op.add(c, const(rng.integers(-9000, 9000, (1, M, 1, 1)).astype(np.int32), "int32")))
                c = bb.emit(relax.op.astype(c, "int64"))
                c = bb.emit(relax.op.multiply(c, const(rng.integers(2**30, 2**31, (1, M, 1, 1)).astype(np.int64),
                                                       "int64")))
                c = bb.emit(relax.op.add(c, const(np.int64(1) << (Sh - 1), "int64")))
                c = bb.emit(relax.op.right_shift(c, const(Sh, "int64")))
                c = bb.emit(relax.op.clip(c, qmin, qmax))
                y = bb.emit(relax.op.astype(c, out_dtype))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return bb.get()


@pytest.mark.parametrize("mask", [False, True])
def test_stacked_convs_skip_the_transposes_between_them(mask):
    # the second conv reads the first one's time-major output directly: after dead-code elimination the only
    # layout changes left are the input's NCHW -> NHWC and the second conv's output back to NCHW (without the
    # shortcut: 4, a NHWC -> NCHW -> NHWC round trip between the convs); a time mask between them is applied in
    # NHWC (its own [1, 1, H, 1] -> [1, H, 1, 1] permute is the one extra)
    mod = _stacked_graph(mask=mask)
    new, replaced = conv2d_as_matmul(mod)
    new = relax.transform.DeadCodeElimination()(new)
    assert len(replaced) == 2
    perms = [bd.value for b in new["main"].body.blocks for bd in b.bindings
             if isinstance(bd.value, relax.Call) and bd.value.op.same_as(tvm.ir.Op.get("relax.permute_dims"))]
    big = [v for v in perms if int(np.prod([int(d) for d in v.args[0].ty.shape])) > 12]
    assert len(big) == 2, perms  # x -> NHWC, and the final NHWC -> NCHW; nothing in between
    assert len(perms) == 2 + mask
    x = np.random.default_rng(5).integers(-128, 128, (1, 1, 23, 17)).astype(np.int8)
    assert np.array_equal(_run(new, x), _run(mod, x))


def _run(mod, x, target="llvm"):
    ex = tvm.compile(mod, target=target)
    vm = relax.VirtualMachine(ex, tvm.cpu())
    return vm["main"](tvm.runtime.tensor(x)).numpy()


def _input(case, seed=1):
    C, H, W, a_dtype = case[0], case[1], case[2], case[7]
    lo, hi = (-128, 128) if a_dtype == "int8" else (0, 256)
    return np.random.default_rng(seed).integers(lo, hi, (1, C, H, W)).astype(a_dtype)


@pytest.mark.parametrize("case", CASES)
def test_rewrite_is_bit_exact_on_the_default_lowering(case):
    mod = _graph(*case)
    new, replaced = conv2d_as_matmul(mod)
    assert len(replaced) == 1
    ops = {c.op.name for b in new["main"].body.blocks for bd in b.bindings for c in [bd.value]
           if isinstance(c, relax.Call) and isinstance(c.op, tvm.ir.Op)}
    assert "relax.nn.conv2d" not in ops and "relax.matmul" in ops
    x = _input(case)
    ref = _run(mod, x)
    assert ref.shape == _run(new, x).shape
    assert np.array_equal(_run(new, x), ref)


@pytest.mark.skipif(not has_vnni(), reason="CPU lacks avx512_vnni (/proc/cpuinfo flags)")
@pytest.mark.parametrize("case", CASES)
def test_rewrite_then_vnni_linear_kernel_bit_exact(case):
    mod = _graph(*case)
    new, replaced = offload_pointwise(Conv2dAsMatmul()(mod))
    assert len(replaced) == 1 and replaced[0]["K"] == case[0] * case[4][0] * case[4][1]
    x = _input(case, seed=2)
    assert np.array_equal(_run(new, x, x86_target()), _run(mod, x))


def test_second_user_or_groups_left_alone():
    case = CASES[1]
    for kw in (dict(second_user=True), dict(groups=2)):
        mod = _graph(*case, **kw)
        new, replaced = conv2d_as_matmul(mod)
        assert replaced == [] and new.same_as(mod), kw
