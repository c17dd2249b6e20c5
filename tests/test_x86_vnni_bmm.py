"""Attention's int8 matmuls on the VNNI batched-matmul kernels (zsq_tvm/backends/x86/bmm.py, zsq_tvm/backends/x86/offload_bmm.py).

Kernel: bit-exact against the numpy oracle on attention shapes (scores ``Q Kᵀ``: int8 x int8 -> int32 with the
+128 shift corrected by the run-time column sums; context ``P V``: uint8 x int8 -> int8) and awkward ones (T,
K, N not multiples of the tiles, per-column scales, saturation).  Pass: on hand-built graphs as the
Conformer's (``astype(int32)`` operands, or a constant ``b`` with per-column constants) the rewritten module
equals the default lowering bit for bit; a product whose int32 result has a second user is left alone; the
shipped conformer-ctc-small on ``host-vnni`` runs every attention matmul on the kernel and equals the numpy
reference.  Compiling needs LLVM; running needs avx512_vnni, else skipped.
"""

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

from tvm import relax  # noqa: E402

import zsq_tvm  # noqa: E402
from relax_passes._util import bindings, call_op_name, const  # noqa: E402
from zsq_tvm.backends.x86.offload_bmm import offload_bmm  # noqa: E402
from zsq_tvm.backends.x86 import bmm  # noqa: E402
from zsq_tvm.backends.x86.vnni import check_vnni_asm, x86_target  # noqa: E402
from zsq_tvm.backends.x86.cpu import has_vnni  # noqa: E402

needs_vnni = pytest.mark.skipif(not has_vnni(), reason="CPU lacks avx512_vnni (/proc/cpuinfo flags)")

SPECS = [
    bmm.BmmSpec(4, 250, 36, 250, a_dtype="int8", out_dtype="int32", qmin=-2**30, qmax=2**30 - 1),  # Q Kᵀ, 10 s
    bmm.BmmSpec(4, 250, 250, 36),  # P V
    bmm.BmmSpec(2, 7, 5, 3, a_dtype="int8"),  # smaller than one tile everywhere
    bmm.BmmSpec(3, 33, 71, 49, a_dtype="uint8", out_dtype="uint8", qmin=0, qmax=255, rt=4, rm=2),
]


def _operands(spec, rng):
    lo, hi = (-128, 128) if spec.a_dtype == "int8" else (0, 256)
    A = rng.integers(lo, hi, (1, spec.H, spec.T, spec.K)).astype(spec.a_dtype)
    B = rng.integers(-128, 128, (1, spec.H, spec.K, spec.N)).astype(np.int8)
    A[0, 0, 0] = lo  # extremes: -128 x -128 and 255 x -128 rows
    B[0, 0, :, 0] = -128
    return A, B


def test_emits_vpdpbusd():
    _, lib = bmm.build(SPECS[2], x86_target())
    assert check_vnni_asm(lib) > 0


@needs_vnni
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"H{s.H}T{s.T}K{s.K}N{s.N}-{s.a_dtype}-{s.out_dtype}")
def test_bmm_bit_exact(spec):
    rng = np.random.default_rng(spec.K)
    A, B = _operands(spec, rng)
    Mul = rng.integers(2**30, 2**31, spec.N).astype(np.int64)  # per column
    Sh = rng.integers(16, 24, spec.N).astype(np.int64)
    k = bmm.BmmKernel(spec, Mul, Sh)
    assert np.array_equal(k(A, B), bmm.reference(spec, A, B, Mul, Sh))


def _graph(H, T, K, N, a_dtype, od, const_b=False, second_user=False, seed=0):
    rng = np.random.default_rng(seed)
    Bc = rng.integers(-127, 128, (1, H, K, N)).astype(np.int8)
    Mul = rng.integers(2**30, 2**31, (1, 1, 1, N)).astype(np.int64)
    Sh = rng.integers(20, 26, (1, 1, 1, N)).astype(np.int64)
    qmin, qmax = (-127, 127) if od == "int8" else (-2**30, 2**30 - 1)
    bb = relax.BlockBuilder()
    a = relax.Var("a", relax.TensorType((1, H, T, K), a_dtype))
    params = [a] if const_b else [a, relax.Var("b", relax.TensorType((1, H, K, N), "int8"))]
    with bb.function("main", params):
        with bb.dataflow():
            if const_b:  # the relative-position term: int8 operands used as they are, per-column scales
                m = bb.emit(relax.op.matmul(a, const(Bc, "int8"), out_dtype="int32"))
                mul, sh = const(Mul, "int64"), const(Sh, "int64")
            else:  # scores / context: astype(int32) operands, per-tensor scales
                m = bb.emit(relax.op.matmul(bb.emit(relax.op.astype(a, "int32")),
                                            bb.emit(relax.op.astype(params[1], "int32")), out_dtype="int32"))
                mul, sh = const(Mul[0, 0, 0, 0], "int64"), const(Sh[0, 0, 0, 0], "int64")
            c = bb.emit(relax.op.astype(m, "int64"))
            c = bb.emit(relax.op.multiply(c, mul))
            c = bb.emit(relax.op.add(c, const(np.int64(1) << (Sh - 1) if const_b else np.int64(1) << (Sh[0, 0, 0, 0] - 1), "int64")))
            c = bb.emit(relax.op.right_shift(c, sh))
            c = bb.emit(relax.op.clip(c, qmin, qmax))
            y = bb.emit(relax.op.astype(c, od))
            if second_user:
                y = bb.emit(relax.op.add(relax.op.astype(y, "int32"), m))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return bb.get()


def _run(mod, args, target):
    vm = relax.VirtualMachine(tvm.compile(mod, target=target), tvm.cpu())
    return vm["main"](*[tvm.runtime.tensor(x) for x in args]).numpy()


@needs_vnni
@pytest.mark.parametrize("case", [(4, 37, 36, 37, "int8", "int32", False), (4, 37, 37, 36, "uint8", "int8", False),
                                  (4, 37, 36, 73, "int8", "int8", True)], ids=["scores", "context", "rel-pos"])
def test_pass_bit_exact(case):
    H, T, K, N, ad, od, const_b = case
    mod = _graph(H, T, K, N, ad, od, const_b)
    new, replaced = offload_bmm(mod)
    assert len(replaced) == 1 and "matmul" not in [call_op_name(b.value) for b in bindings(new["main"])]
    rng = np.random.default_rng(3)
    lo, hi = (-128, 128) if ad == "int8" else (0, 256)
    args = [rng.integers(lo, hi, (1, H, T, K)).astype(ad)]
    if not const_b:
        args.append(rng.integers(-128, 128, (1, H, K, N)).astype(np.int8))
    assert np.array_equal(_run(new, args, x86_target()), _run(mod, args, "llvm"))


def test_second_user_left_alone():
    assert offload_bmm(_graph(2, 8, 8, 8, "int8", "int32", second_user=True))[1] == []


@needs_vnni
def test_conformer_attention_on_vnni_bit_exact():
    """conformer-ctc-small: per layer the scores, the context and the relative-position term run on the
    kernel, the fused Q/K/V projection is split into three linear kernels, the integer gates are tables,
    and host-vnni == numpy reference."""
    from relax_passes.reference import run_reference
    from zsq_tvm.targets import get_target

    q = zsq_tvm.quantize("conformer-ctc-small", zsq_tvm.QuantConfig(frames=64, time_mask=False))
    mod = get_target("host-vnni").prepare(q.mod)
    kinds = [str(f.attrs["zsq.kernel"]) for _, f in mod.functions.items()
             if isinstance(f, tvm.tirx.PrimFunc) and f.attrs is not None and "zsq.kernel" in f.attrs]
    ops = [call_op_name(b.value) for b in bindings(mod["main"])]
    assert "x86_avx512vnni_bmm" in kinds and "matmul" not in ops and "split" not in ops
    assert "take" in ops  # Swish / sigmoid gates as tables (relax_passes.elementwise_to_table)
    b = zsq_tvm.compile(q, target="host-vnni")
    assert b.integer_only["ok"] is True
    mel = np.random.default_rng(9).standard_normal((1, 64, 64)).astype(np.float32) * 2
    assert np.array_equal(b.run(mel), run_reference(q.mod, mel))
