"""CudaInt8Pointwise: each pointwise int8 conv1d + requantize chain -> one CUDA int8 GEMM kernel.

Runs on the *quantized, not yet lowered* module (like :mod:`zsq_tvm.backends.x86.offload_pointwise`, through the
same mechanism and chain: :mod:`relax_passes.offload`, :mod:`relax_passes.patterns` kind ``"pointwise"``), for the CUDA targets
(``t4``, ``cuda``, ``cuda-sm_XX`` in :mod:`zsq_tvm.targets`).  The kernel is
:func:`zsq_tvm.backends.cuda.int8_gemm.schedule_wmma` (16x16x16 s8 tensor cores) or
:func:`~zsq_tvm.backends.cuda.int8_gemm.schedule_dp4a` (``__dp4a``) with the dyadic requantize fused into the
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
kernels take any of them: the epilogue is :func:`zsq_tvm.core.tir_intmath.requantize_expr`, which clips to the
chain's ``[qmin, qmax]`` in int64 before the cast, and the write-back is scalar (one element per store), so
only the stored width changes.

Kernel choice: WMMA when ``M >= 64`` and ``K >= 64`` (64x64 tiles, k-tile up to 64), dp4a otherwise (e.g. the
29-class decoder) -- ``schedule=`` forces one.  :func:`offload_pointwise` returns the replaced layers with the
module.
``gpu=False`` puts the same kernels in without thread bindings or tensor-core intrinsics, so the rewritten
graph builds and runs on llvm: a CPU check of the rewrite, bit for bit, without a GPU.
A chain a kernel cannot take exactly (a bias that leaves int32 once folded) keeps the default lowering
(still integer-only), as does anything the pattern does not match.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tvm
from tvm import relax

from relax_passes.offload import KernelRule, Offload, kernel_args, kernel_prim_func, offload
from zsq_tvm.backends.cuda import int8_gemm as g

__all__ = ["CudaInt8Pointwise", "offload_pointwise", "CUDA_OUT_DTYPES", "int64_bias", "int32_bias"]

# final casts the CUDA kernels write: int16 is what the logits layer ends with at out_bits=16
CUDA_OUT_DTYPES = ("int8", "uint8", "int16", "int32")


def int64_bias(chain, channels: int) -> np.ndarray:
    """The chain's bias as an int64 vector (zero without a bias add)."""
    return np.zeros(channels, np.int64) if chain.bias is None else np.asarray(chain.bias, np.int64)


def int32_bias(b: np.ndarray) -> np.ndarray:
    """``b`` as the int32 vector the kernels take; OverflowError if it leaves int32."""
    if b.min() < -(2**31) or b.max() >= 2**31:
        raise OverflowError("bias leaves int32")
    return b.astype(np.int32)


def _emit(rw, off, gv, x):
    """ncw kernel: ``[1, K, T]`` -> ``[1, M, T]`` as they are.  tk kernel: ``[1, K, T]`` -> transpose ->
    ``[T, K] x [K, M]`` -> transpose back -> ``[1, M, T]``."""
    spec = off.spec
    if spec.layout == "ncw":
        return relax.call_tir(gv, kernel_args(x, off.W, off.B, off.Mul, off.Sh),
                              out_ty=relax.TensorType(spec.y_shape, spec.out_dtype))
    xt = rw.emit(relax.op.permute_dims(rw.emit(relax.op.reshape(x, (spec.K, spec.T))), [1, 0]))
    yt = rw.emit(relax.call_tir(gv, kernel_args(xt, off.W, off.B, off.Mul, off.Sh),
                                out_ty=relax.TensorType((spec.T, spec.M), spec.out_dtype)))
    return relax.op.reshape(rw.emit(relax.op.permute_dims(yt, [1, 0])), (1, spec.M, spec.T))


def pick_schedule(spec) -> str:
    return "wmma" if spec.M >= 64 and spec.K >= 64 else "dp4a"


def _describe(spec):
    return {"K": spec.K, "M": spec.M, "T": spec.T, "kernel": "wmma" if spec.layout == "ncw" else "dp4a",
            "a_dtype": spec.a_dtype, "out_dtype": spec.out_dtype}


def _lower(schedule, gpu):
    def lower(chain):
        kw = chain.spec
        spec = g.GemmSpec(T=kw["T"], K=kw["K"], M=kw["M"], a_dtype=kw["a_dtype"], out_dtype=kw["out_dtype"],
                          qmin=kw["qmin"], qmax=kw["qmax"])
        kind = schedule or pick_schedule(spec)
        if kind == "wmma" and spec.a_dtype == "uint8" and spec.K * 128 * 127 >= 2**31:
            kind = "dp4a"
        if kind == "wmma":  # the tensor-core kernel runs in the graph's layout, dp4a time-major
            spec = dataclasses.replace(spec, layout="ncw")
        W2 = np.ascontiguousarray(chain.W.reshape(spec.M, spec.K).astype(np.int8))
        b = int64_bias(chain, spec.M)
        try:
            B = g.kernel_bias(spec, W2, b, kind) if kind == "wmma" else int32_bias(b)
        except OverflowError:
            return None
        name = (f"zsq_cuda_{kind}_{spec.layout}_pw_{spec.K}x{spec.M}_t{spec.T}_{spec.a_dtype}_{spec.out_dtype}"
                f"_{spec.qmin}_{spec.qmax}").replace("-", "m")
        build = (g.schedule_wmma if kind == "wmma" else g.schedule_dp4a)
        kernel = (name, lambda: kernel_prim_func(build(spec, tensorize=gpu), name, f"cuda_int8_{kind}", scheduled=True))
        return Offload(chain.x, spec, kernel, W2, B, chain.Mul, chain.Sh)
    return lower


def offload_pointwise(mod: tvm.IRModule, func_name: str = "main", schedule: str | None = None,
                      gpu: bool = True) -> tuple[tvm.IRModule, list[dict]]:
    """``(rewritten module, replaced layers)`` (module doc); ``mod`` is not changed."""
    if schedule not in (None, "wmma", "dp4a"):
        raise ValueError(f"schedule must be None, 'wmma' or 'dp4a', not {schedule!r}")
    return offload(mod, [KernelRule("pointwise", CUDA_OUT_DTYPES, _lower(schedule, gpu), _emit, _describe)],
                   func_name)


@tvm.transform.module_pass(opt_level=0, name="CudaInt8Pointwise")
class CudaInt8Pointwise:
    """Module pass: :func:`offload_pointwise` with these arguments."""

    def __init__(self, func_name: str = "main", schedule: str | None = None, gpu: bool = True):
        if schedule not in (None, "wmma", "dp4a"):
            raise ValueError(f"schedule must be None, 'wmma' or 'dp4a', not {schedule!r}")
        self.options = dict(func_name=func_name, schedule=schedule, gpu=gpu)

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        return offload_pointwise(mod, **self.options)[0]
