"""X86VnniBatchMatmul: attention's activation x activation int8 matmuls + requantize -> VNNI kernels.

A Conformer's integer attention multiplies two *activations* per head: the scores ``Q Kᵀ`` (int8 x int8)
and the context ``P V`` (uint8 softmax x int8).  The integer graph holds them as int32 matmuls of int8
values, which TVM's default lowering runs as scalar int32 loops.  Before (batch 1, per-tensor scales)::

    a32 = R.astype(a, "int32")                      # a [1, H, T, K] int8 | uint8
    b32 = R.astype(b, "int32")                      # b [1, H, K, N] int8
    m   = R.matmul(a32, b32, out_dtype="int32")
    c = R.astype(m, "int64"); d = R.multiply(c, Mul); e = R.add(d, Rnd); f = R.right_shift(e, Sh)
    g = R.clip(f, qmin, qmax); y = R.astype(g, "int8" | "uint8" | "int16" | "int32")

After::

    p = R.call_tir(zsq_vnni_bmm_pack_..., (b,), out_ty=[Bp [H, Np/16, Kp/4, 16, 4] int8, comp [H, Np] int32])
    y = R.call_tir(zsq_vnni_bmm_..., (a, p[0], p[1], Mul[N], Sh[N]), out_ty=R.Tensor((1, H, T, N), dtype))

with :mod:`zsq_tvm.backends.x86.bmm`: the first kernel packs ``b`` into the VNNI operand layout at run time and
computes the int8 shift's column correction, the second is the VNNI GEMM with the requantize epilogue.
Bit-identical to the chain it replaces.  Matched: the chain above with ``Mul``/``Rnd``/``Sh`` scalar or
per column (``Rnd == 1 << (Sh - 1)``), every intermediate with one user (:mod:`relax_passes.patterns`,
kind ``"bmm"``); ``a`` and ``b`` may also be used as int8 directly (the relative-position term
``R.matmul(q, P)`` with ``P`` a constant ``[1, H, K, N]``).  Applied by the VNNI targets (``host`` on a VNNI CPU, ``host-vnni``, ``x86-avx512vnni``).

``isa="avx2"`` (``x86-avx2``, ``host`` on a CPU with AVX2 but no VNNI): the AVX2 variant (``vpmaddwd`` on
int16 pairs; ``b`` packed to ``Bp [H, Np/8, Kp/2, 8]`` int32, no column correction)::

    bp = R.call_tir(zsq_avx2_bmm_pack_..., (b,), out_ty=R.Tensor((H, Np // 8, Kp // 2, 8), "int32"))
    y  = R.call_tir(zsq_avx2_bmm_..., (a, bp, Mul[N], Sh[N]), out_ty=R.Tensor((1, H, T, N), dtype))

:func:`offload_bmm` returns the replaced matmuls with the module.
"""

from __future__ import annotations

import tvm
from tvm import relax

from relax_passes.offload import KernelRule, Offload, kernel_prim_func, offload
from zsq_tvm.backends.x86.bmm import BmmSpec, schedule, schedule_pack
from zsq_tvm.backends.x86.offload_pointwise import X86_OUT_DTYPES, check_isa

__all__ = ["X86VnniBatchMatmul", "offload_bmm"]


def _pre(isa):
    return "zsq_vnni" if isa == "avx512vnni" else "zsq_avx2"


def _emit(rw, off, gv, a, b):
    """The pack kernel on ``b`` (added once per shape), then the GEMM kernel."""

    spec = off.spec
    name = f"{_pre(spec.isa)}_bmm_pack_h{spec.H}_k{spec.K}_n{spec.N}_np{spec.Np}_o{spec.offset}"  # not on T
    pgv = rw.kernel(name, lambda: kernel_prim_func(schedule_pack(spec), name, f"x86_{spec.isa}_bmm_pack"))
    bp_ty = relax.TensorType(spec.packed_shape, spec.packed_dtype)
    if spec.isa == "avx2":  # no int8 shift, no column correction
        operands = [rw.emit(relax.call_tir(pgv, [b], out_ty=bp_ty))]
    else:
        packed = rw.emit(relax.call_tir(pgv, [b], out_ty=[bp_ty, relax.TensorType((spec.H, spec.Np), "int32")]))
        operands = [rw.emit(relax.TupleGetItem(packed, 0)), rw.emit(relax.TupleGetItem(packed, 1))]
    return relax.call_tir(gv, [a, *operands, relax.const(off.Mul, "int64"), relax.const(off.Sh, "int64")],
                          out_ty=relax.TensorType((1, spec.H, spec.T, spec.N), spec.out_dtype))


def _describe(spec):
    return {"H": spec.H, "T": spec.T, "K": spec.K, "N": spec.N, "a_dtype": spec.a_dtype, "out_dtype": spec.out_dtype}


def _lower(isa):
    def lower(chain):
        if chain.bias is not None:  # a constant added to a product of activations: not an attention matmul
            return None
        try:
            spec = BmmSpec(**chain.spec, isa=isa)
        except OverflowError:
            return None
        name = (f"{_pre(isa)}_bmm_h{spec.H}_t{spec.T}_k{spec.K}_n{spec.N}_{spec.a_dtype}_{spec.out_dtype}"
                f"_{spec.qmin}_{spec.qmax}").replace("-", "m")
        kernel = (name, lambda: kernel_prim_func(schedule(spec), name, f"x86_{isa}_bmm"))
        a, b = chain.x
        return Offload(a, spec, kernel, None, None, chain.Mul, chain.Sh, extra=(b,))
    return lower


def offload_bmm(mod: tvm.IRModule, func_name: str = "main",
                isa: str = "avx512vnni") -> tuple[tvm.IRModule, list[dict]]:
    """``(rewritten module, replaced matmuls)`` (module doc); ``mod`` is not changed."""
    check_isa(isa)
    return offload(mod, [KernelRule("bmm", X86_OUT_DTYPES, _lower(isa), _emit, _describe)], func_name)


@tvm.transform.module_pass(opt_level=0, name="X86VnniBatchMatmul")
class X86VnniBatchMatmul:
    """Module pass: :func:`offload_bmm` with these arguments."""

    def __init__(self, func_name: str = "main", isa: str = "avx512vnni"):
        check_isa(isa)
        self.options = dict(func_name=func_name, isa=isa)

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        return offload_bmm(mod, **self.options)[0]
