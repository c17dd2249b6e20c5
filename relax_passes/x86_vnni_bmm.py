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

with :mod:`zsq_tvm.x86.bmm`: the first kernel packs ``b`` into the VNNI operand layout at run time and
computes the int8 shift's column correction, the second is the VNNI GEMM with the requantize epilogue.
Bit-identical to the chain it replaces.  Matched: the chain above with ``Mul``/``Rnd``/``Sh`` scalar or
per column (``Rnd == 1 << (Sh - 1)``), every intermediate with one user (:func:`match_pointwise_chains`,
``kind="bmm"``); ``a`` and ``b`` may also be used as int8 directly (the relative-position term
``R.matmul(q, P)`` with ``P`` a constant ``[1, H, K, N]``).  Applied by the VNNI targets (``host`` on a VNNI CPU, ``host-vnni``, ``x86-avx512vnni``).

``isa="avx2"`` (``x86-avx2``, ``host`` on a CPU with AVX2 but no VNNI): the AVX2 variant (``vpmaddwd`` on
int16 pairs; ``b`` packed to ``Bp [H, Np/8, Kp/2, 8]`` int32, no column correction)::

    bp = R.call_tir(zsq_avx2_bmm_pack_..., (b,), out_ty=R.Tensor((H, Np // 8, Kp // 2, 8), "int32"))
    y  = R.call_tir(zsq_avx2_bmm_..., (a, bp, Mul[N], Sh[N]), out_ty=R.Tensor((1, H, T, N), dtype))

``pass_obj.replaced`` lists the replaced matmuls.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from ._util import KernelCallRewriter, copy_module, finish_rewrite, kernel_prim_func
from .x86_vnni_pointwise import X86_OUT_DTYPES, match_pointwise_chains

__all__ = ["X86VnniBatchMatmul"]


@tvm.transform.module_pass(opt_level=0, name="X86VnniBatchMatmul")
class X86VnniBatchMatmul:
    """Module pass: activation x activation int8 matmul + requantize -> VNNI pack + GEMM kernels (module doc)."""

    def __init__(self, func_name: str = "main", isa: str = "avx512vnni"):
        if isa not in ("avx512vnni", "avx2"):
            raise ValueError(f"isa must be 'avx512vnni' or 'avx2', not {isa!r}")
        self.isa = isa
        self.func_name = func_name
        self.replaced: list[dict] = []

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        from zsq_tvm.x86.bmm import BmmSpec, schedule, schedule_pack

        gv_main = mod.get_global_var(self.func_name)
        func = mod[gv_main]
        self.replaced = []
        plan, funcs, packs = {}, {}, {}
        mod = copy_module(mod)
        for final, (a, b), kw, _, bias, Mul, Sh in match_pointwise_chains(func, kind="bmm", out_dtypes=X86_OUT_DTYPES):
            if bias is not None:  # a constant added to a product of activations: not an attention matmul
                continue
            try:
                spec = BmmSpec(**kw, isa=self.isa)
            except OverflowError:
                continue
            tag = f"h{spec.H}_t{spec.T}_k{spec.K}_n{spec.N}"
            pre = "zsq_vnni" if self.isa == "avx512vnni" else "zsq_avx2"
            if spec not in funcs:
                name = f"{pre}_bmm_{tag}_{spec.a_dtype}_{spec.out_dtype}_{spec.qmin}_{spec.qmax}".replace("-", "m")
                funcs[spec] = (name, kernel_prim_func(schedule(spec), name, f"x86_{self.isa}_bmm"))
            pk = (spec.H, spec.K, spec.N, spec.Np, spec.offset)  # the pack kernel does not depend on T
            if pk not in packs:
                name = f"{pre}_bmm_pack_h{spec.H}_k{spec.K}_n{spec.N}_np{spec.Np}_o{spec.offset}"
                packs[pk] = (name, kernel_prim_func(schedule_pack(spec), name, f"x86_{self.isa}_bmm_pack"))
            plan[final] = (a, spec, None, None, Mul.astype(np.int64), Sh.astype(np.int64), funcs[spec], b)
            self.replaced.append({"var": str(final.name), "H": spec.H, "T": spec.T, "K": spec.K, "N": spec.N,
                                  "a_dtype": spec.a_dtype, "out_dtype": spec.out_dtype})
        if not plan:
            return mod

        def emit_call(emit, a, gv, spec, W, B, Mul, Sh, b):
            name, f = packs[(spec.H, spec.K, spec.N, spec.Np, spec.offset)]
            pgv = rw.gvars.get(name)
            if pgv is None:
                pgv = rw.gvars[name] = rw.builder_.add_func(f, name)
            bp_ty = relax.TensorType(spec.packed_shape, spec.packed_dtype)
            if spec.isa == "avx2":  # no int8 shift, no column correction
                operands = [emit(relax.call_tir(pgv, [b], out_ty=bp_ty))]
            else:
                packed = emit(relax.call_tir(pgv, [b], out_ty=[bp_ty, relax.TensorType((spec.H, spec.Np), "int32")]))
                operands = [emit(relax.TupleGetItem(packed, 0)), emit(relax.TupleGetItem(packed, 1))]
            return relax.call_tir(gv, [a, *operands, relax.const(Mul, "int64"), relax.const(Sh, "int64")],
                                  out_ty=relax.TensorType((1, spec.H, spec.T, spec.N), spec.out_dtype))

        rw = KernelCallRewriter(mod, plan, emit_call)  # emit_call adds the pack kernels to rw's module
        return finish_rewrite(rw, func, gv_main)
