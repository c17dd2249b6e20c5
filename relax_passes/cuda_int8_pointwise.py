"""CudaInt8Pointwise: each pointwise int8 conv1d + requantize chain -> one CUDA int8 GEMM kernel.

Runs on the *quantized, not yet lowered* module (like :mod:`relax_passes.x86_vnni_pointwise`, whose
matcher :func:`match_pointwise_chains` it shares: same chain, same conditions), for the CUDA targets
(``t4``, ``cuda``, ``cuda-sm_XX`` in :mod:`zsq_tvm.targets`).  The kernel is
:func:`zsq_tvm.cuda.int8_gemm.schedule_wmma` (16x16x16 s8 tensor cores) or
:func:`~zsq_tvm.cuda.int8_gemm.schedule_dp4a` (``__dp4a``) with the dyadic requantize fused into the
write-back.  The WMMA kernel runs in the graph's own layout (``GemmSpec(layout="ncw")``:
``Y[1, M, T] = W[M, K] X[1, K, T]``), so the chain becomes one call::

    y = R.call_tir(zsq_cuda_wmma_ncw_pw_..., (x, W[M, K], B, Mul, Sh), out [1, M, T])

The dp4a kernel is time-major (``X[T, K]``, ``Y[T, M]``: its 4-byte k-runs must be contiguous), so it is
wrapped in two transposes (plain int8 copies that FuseOps merges with neighbours where it can)::

    xt = R.permute_dims(R.reshape(x, (K, T)), [1, 0])                    # [T, K]
    yt = R.call_tir(zsq_cuda_dp4a_tk_pw_..., (xt, W[M, K], B, Mul, Sh), out [T, M])
    y  = R.reshape(R.permute_dims(yt, [1, 0]), (1, M, T))

``B`` is the int32 bias, folded with ``128 * rowsum(W)`` for the WMMA kernel on
uint8 activations (which it shifts to int8); the kernel computes exactly
``clip((int64(acc + bias) * Mul + 2^(Sh-1)) >> Sh)``, bit-identical to the chain it replaces.

Output dtypes (:data:`CUDA_OUT_DTYPES`): int8/uint8 (hidden layers), int32 (residual branches) and int16 --
the logits of ``QuantConfig(out_bits=16)`` (the default), which the decoder's pointwise conv writes.  Both
kernels take any of them: the epilogue is :func:`zsq_tvm.tir_intmath.requantize_expr`, which clips to the
chain's ``[qmin, qmax]`` in int64 before the cast, and the write-back is scalar (one element per store), so
only the stored width changes.

Kernel choice: WMMA when ``M >= 64`` and ``K >= 64`` (64x64 tiles, k-tile up to 64), dp4a otherwise (e.g. the
29-class decoder) -- ``schedule=`` forces one.  ``pass_obj.replaced`` lists the replaced layers.
``gpu=False`` puts the same kernels in without thread bindings or tensor-core intrinsics, so the rewritten
graph builds and runs on llvm: a CPU check of the rewrite, bit for bit, without a GPU.
A chain a kernel cannot take exactly (a bias that leaves int32 once folded) keeps the default lowering
(still integer-only), as does anything :func:`match_pointwise_chains` does not match.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tvm
from tvm import relax

from ._util import KernelCallRewriter, copy_module, finish_rewrite, kernel_args, kernel_prim_func
from .x86_vnni_pointwise import match_pointwise_chains

__all__ = ["CudaInt8Pointwise", "CUDA_OUT_DTYPES"]

# final casts the CUDA kernels write: int16 is what the logits layer ends with at out_bits=16
CUDA_OUT_DTYPES = ("int8", "uint8", "int16", "int32")


def _emit_call(emit, x, gv, spec, W, B, Mul, Sh):
    """ncw kernel: ``[1, K, T]`` -> ``[1, M, T]`` as they are.  tk kernel: ``[1, K, T]`` -> transpose ->
    ``[T, K] x [K, M]`` -> transpose back -> ``[1, M, T]``."""
    if spec.layout == "ncw":
        return relax.call_tir(gv, kernel_args(x, W, B, Mul, Sh), out_ty=relax.TensorType(spec.y_shape, spec.out_dtype))
    xt = emit(relax.op.permute_dims(emit(relax.op.reshape(x, (spec.K, spec.T))), [1, 0]))
    yt = emit(relax.call_tir(gv, kernel_args(xt, W, B, Mul, Sh),
                             out_ty=relax.TensorType((spec.T, spec.M), spec.out_dtype)))
    return relax.op.reshape(emit(relax.op.permute_dims(yt, [1, 0])), (1, spec.M, spec.T))


def pick_schedule(spec) -> str:
    return "wmma" if spec.M >= 64 and spec.K >= 64 else "dp4a"


@tvm.transform.module_pass(opt_level=0, name="CudaInt8Pointwise")
class CudaInt8Pointwise:
    """Module pass: pointwise conv1d + requantize -> ``call_tir`` of a CUDA int8 GEMM (module doc)."""

    def __init__(self, func_name: str = "main", schedule: str | None = None, gpu: bool = True):
        if schedule not in (None, "wmma", "dp4a"):
            raise ValueError(f"schedule must be None, 'wmma' or 'dp4a', not {schedule!r}")
        self.func_name = func_name
        self.schedule = schedule
        self.gpu = gpu
        self.replaced: list[dict] = []

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        from zsq_tvm.cuda import int8_gemm as g

        gv_main = mod.get_global_var(self.func_name)
        func = mod[gv_main]
        self.replaced = []
        plan, funcs = {}, {}
        mod = copy_module(mod)
        for final, x, kw, W, bias, Mul, Sh in match_pointwise_chains(func, out_dtypes=CUDA_OUT_DTYPES):
            spec = g.GemmSpec(T=kw["T"], K=kw["K"], M=kw["M"], a_dtype=kw["a_dtype"], out_dtype=kw["out_dtype"],
                              qmin=kw["qmin"], qmax=kw["qmax"])
            kind = self.schedule or pick_schedule(spec)
            if kind == "wmma" and spec.a_dtype == "uint8" and spec.K * 128 * 127 >= 2**31:
                kind = "dp4a"
            if kind == "wmma":
                spec = dataclasses.replace(spec, layout="ncw")
            W2 = np.ascontiguousarray(W.reshape(spec.M, spec.K).astype(np.int8))
            b = np.zeros(spec.M, np.int64) if bias is None else np.asarray(bias, np.int64)
            try:
                B = g.kernel_bias(spec, W2, b, kind) if kind == "wmma" else _int32(b)
            except OverflowError:
                continue
            key = (spec, kind)
            if key not in funcs:
                name = (f"zsq_cuda_{kind}_{spec.layout}_pw_{spec.K}x{spec.M}_t{spec.T}_{spec.a_dtype}_{spec.out_dtype}"
                        f"_{spec.qmin}_{spec.qmax}").replace("-", "m")
                sch = (g.schedule_wmma if kind == "wmma" else g.schedule_dp4a)(spec, tensorize=self.gpu)
                funcs[key] = (name, kernel_prim_func(sch, name, f"cuda_int8_{kind}", scheduled=True))
            plan[final] = (x, spec, W2, B, Mul.astype(np.int64), Sh.astype(np.int64), funcs[key])
            self.replaced.append({"var": str(final.name), "K": spec.K, "M": spec.M, "T": spec.T, "kernel": kind,
                                  "a_dtype": spec.a_dtype, "out_dtype": spec.out_dtype})
        if not plan:
            return mod
        rw = KernelCallRewriter(mod, plan, _emit_call)
        return finish_rewrite(rw, func, gv_main)


def _int32(b: np.ndarray) -> np.ndarray:
    if b.min() < -(2**31) or b.max() >= 2**31:
        raise OverflowError("bias leaves int32")
    return b.astype(np.int32)
