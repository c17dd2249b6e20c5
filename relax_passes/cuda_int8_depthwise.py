"""CudaInt8Depthwise: each depthwise int8 conv1d + requantize chain -> one CUDA kernel.

The CUDA twin of :mod:`relax_passes.x86_vnni_depthwise` (same matcher,
:func:`relax_passes.x86_vnni_pointwise.match_pointwise_chains` with ``kind="depthwise"``), applied by the
CUDA targets (``t4``, ``cuda``, ``cuda-sm_XX``) before lowering.  Before (batch 1)::

    a = R.nn.conv1d(x, W, strides=[s], padding=[pl, pr], dilation=[d], groups=C, out_dtype="int32")
    [b = R.add(a, bias)]  c = R.astype(.., "int64") ... y = R.astype(R.clip(..), "int8" | "uint8" | "int16" | "int32")

After::

    y = R.call_tir(zsq_cuda_dw_..., (x, W[C, K], B, Mul, Sh), out_ty=R.Tensor((1, C, Tout), dtype))

with the kernel of :func:`zsq_tvm.cuda.depthwise.schedule` (shared-memory input window, register
accumulators, requantize fused).  It reads the graph's NCW tensors as they are (no reshape, no copy) and
is bit-identical to the chain it replaces.  Without it, dlight's generic reduction rule schedules these convs
with one thread block per output element.  Matched: x int8/uint8 ``[1, C, Tin]``, W constant int8 ``[C, 1, K]``, stride
1, 2 or 4 dividing 4 x dilation (the matcher shared with the x86 kernels; the CUDA kernel itself takes any
stride).  A bias that does not fit int32 keeps the default lowering.  ``pass_obj.replaced`` lists the
replaced layers.  ``gpu=False``: the same kernels without thread bindings, so the rewritten graph runs on
llvm (a CPU check of the rewrite, bit for bit).
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from ._util import KernelCallRewriter, copy_module, finish_rewrite, kernel_args, kernel_prim_func
from .cuda_int8_pointwise import CUDA_OUT_DTYPES, _int32
from .x86_vnni_pointwise import match_pointwise_chains

__all__ = ["CudaInt8Depthwise"]


def _emit_call(emit, x, gv, spec, W, B, Mul, Sh):
    return relax.call_tir(gv, kernel_args(x, W, B, Mul, Sh),
                          out_ty=relax.TensorType((1, spec.C, spec.Tout), spec.out_dtype))


@tvm.transform.module_pass(opt_level=0, name="CudaInt8Depthwise")
class CudaInt8Depthwise:
    """Module pass: depthwise conv1d + requantize -> one ``call_tir`` of the CUDA depthwise kernel (module doc)."""

    def __init__(self, func_name: str = "main", gpu: bool = True):
        self.func_name = func_name
        self.gpu = gpu
        self.replaced: list[dict] = []

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        from zsq_tvm.cuda.depthwise import DwSpec, schedule

        gv_main = mod.get_global_var(self.func_name)
        func = mod[gv_main]
        self.replaced = []
        plan, funcs = {}, {}
        mod = copy_module(mod)
        for final, x, kw, W, bias, Mul, Sh in match_pointwise_chains(func, kind="depthwise",
                                                                      out_dtypes=CUDA_OUT_DTYPES):
            spec = DwSpec(**kw)
            try:
                B = _int32(np.zeros(spec.C, np.int64) if bias is None else np.asarray(bias, np.int64))
            except OverflowError:
                continue
            if spec not in funcs:
                name = (f"zsq_cuda_dw_c{spec.C}_t{spec.Tin}_k{spec.K}_s{spec.stride}_d{spec.dilation}"
                        f"_p{spec.pad_l}_{spec.pad_r}_{spec.a_dtype}_{spec.out_dtype}_{spec.qmin}_{spec.qmax}"
                        ).replace("-", "m")
                funcs[spec] = (name, kernel_prim_func(schedule(spec, gpu=self.gpu), name, "cuda_int8_depthwise", scheduled=True))
            W2 = np.ascontiguousarray(np.asarray(W, np.int8).reshape(spec.C, spec.K))
            plan[final] = (x, spec, W2, B, Mul.astype(np.int64), Sh.astype(np.int64), funcs[spec])
            self.replaced.append({"var": str(final.name), "C": spec.C, "Tin": spec.Tin, "K": spec.K,
                                  "stride": spec.stride, "dilation": spec.dilation, "a_dtype": spec.a_dtype,
                                  "out_dtype": spec.out_dtype})
        if not plan:
            return mod
        rw = KernelCallRewriter(mod, plan, _emit_call)
        return finish_rewrite(rw, func, gv_main)
