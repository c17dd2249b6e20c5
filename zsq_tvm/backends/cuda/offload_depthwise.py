"""CudaInt8Depthwise: each depthwise int8 conv1d + requantize chain -> one CUDA kernel.

The CUDA twin of :mod:`zsq_tvm.backends.x86.offload_depthwise` (same mechanism and chain,
:mod:`relax_passes.offload` with :mod:`relax_passes.patterns` kind ``"depthwise"``), applied by the
CUDA targets (``t4``, ``cuda``, ``cuda-sm_XX``) before lowering.  Before (batch 1)::

    a = R.nn.conv1d(x, W, strides=[s], padding=[pl, pr], dilation=[d], groups=C, out_dtype="int32")
    [b = R.add(a, bias)]  c = R.astype(.., "int64") ... y = R.astype(R.clip(..), "int8" | "uint8" | "int16" | "int32")

After::

    y = R.call_tir(zsq_cuda_dw_..., (x, W[C, K], B, Mul, Sh), out_ty=R.Tensor((1, C, Tout), dtype))

with the kernel of :func:`zsq_tvm.backends.cuda.depthwise.schedule` (shared-memory input window, register
accumulators, requantize fused).  It reads the graph's NCW tensors as they are (no reshape, no copy) and
is bit-identical to the chain it replaces.  Without it, dlight's generic reduction rule schedules these convs
with one thread block per output element.  Matched: x int8/uint8 ``[1, C, Tin]``, W constant int8 ``[C, 1, K]``, stride
1, 2 or 4 dividing 4 x dilation (the pattern shared with the x86 kernels; the CUDA kernel itself takes any
stride).  A bias that does not fit int32 keeps the default lowering.  :func:`offload_depthwise` returns the
replaced layers with the module.  ``gpu=False``: the same kernels without thread bindings, so the rewritten graph runs on
llvm (a CPU check of the rewrite, bit for bit).
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from relax_passes.offload import KernelRule, Offload, kernel_args, kernel_prim_func, offload
from zsq_tvm.backends.cuda.depthwise import DwSpec, schedule
from zsq_tvm.backends.cuda.offload_pointwise import CUDA_OUT_DTYPES, int32_bias, int64_bias

__all__ = ["CudaInt8Depthwise", "offload_depthwise"]


def _emit(rw, off, gv, x):
    return relax.call_tir(gv, kernel_args(x, off.W, off.B, off.Mul, off.Sh),
                          out_ty=relax.TensorType((1, off.spec.C, off.spec.Tout), off.spec.out_dtype))


def _describe(spec):
    return {"C": spec.C, "Tin": spec.Tin, "K": spec.K, "stride": spec.stride, "dilation": spec.dilation,
            "a_dtype": spec.a_dtype, "out_dtype": spec.out_dtype}


def _lower(gpu):
    def lower(chain):
        spec = DwSpec(**chain.spec)
        try:
            B = int32_bias(int64_bias(chain, spec.C))
        except OverflowError:
            return None
        name = (f"zsq_cuda_dw_c{spec.C}_t{spec.Tin}_k{spec.K}_s{spec.stride}_d{spec.dilation}"
                f"_p{spec.pad_l}_{spec.pad_r}_{spec.a_dtype}_{spec.out_dtype}_{spec.qmin}_{spec.qmax}").replace("-", "m")
        kernel = (name, lambda: kernel_prim_func(schedule(spec, gpu=gpu), name, "cuda_int8_depthwise", scheduled=True))
        W2 = np.ascontiguousarray(np.asarray(chain.W, np.int8).reshape(spec.C, spec.K))
        return Offload(chain.x, spec, kernel, W2, B, chain.Mul, chain.Sh)
    return lower


def offload_depthwise(mod: tvm.IRModule, func_name: str = "main",
                      gpu: bool = True) -> tuple[tvm.IRModule, list[dict]]:
    """``(rewritten module, replaced layers)`` (module doc); ``mod`` is not changed."""
    return offload(mod, [KernelRule("depthwise", CUDA_OUT_DTYPES, _lower(gpu), _emit, _describe)], func_name)


@tvm.transform.module_pass(opt_level=0, name="CudaInt8Depthwise")
class CudaInt8Depthwise:
    """Module pass: :func:`offload_depthwise` with these arguments."""

    def __init__(self, func_name: str = "main", gpu: bool = True):
        self.options = dict(func_name=func_name, gpu=gpu)

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        return offload_depthwise(mod, **self.options)[0]
