"""X86VnniDepthwise: replace each depthwise int8 conv1d + requantize chain by one VNNI kernel.

The depthwise twin of :mod:`relax_passes.x86_vnni_pointwise` (same matching rules for the requantize
chain, see there), applied by the VNNI targets (``host`` on a VNNI CPU, ``host-vnni``) before lowering.  Before (batch 1)::

    a = R.nn.conv1d(x, W, strides=[s], padding=[pl, pr], dilation=[1], groups=C, out_dtype="int32")
    [b = R.add(a, bias)]  c = R.astype(.., "int64") ... y = R.astype(R.clip(..), "int8" | "uint8" | "int32")

After::

    y = R.call_tir(zsq_vnni_dw_..., (x, Wp, B, Mul, Sh), out_ty=R.Tensor((1, C, Tout), dtype))

with the kernel of :func:`zsq_tvm.x86.depthwise.schedule` (4-tap VNNI windows, requantize fused),
``Wp`` the taps padded to a multiple of 4 and ``B`` the folded bias (``bias - 128 sum W`` for int8
input).  Bit-identical to the replaced chain.  Matched: x int8/uint8 ``[1, C, Tin]``, W constant int8
``[C, 1, K]``, stride 1, 2 or 4 dividing 4 x dilation.  ``isa="avx2"``: the AVX2 variant (2-tap int16
windows, ``vpmaddwd``; stride dividing 2 x dilation, no bias fold).  ``pass_obj.replaced`` lists the
replaced layers.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from ._util import KernelCallRewriter, copy_module, finish_rewrite, kernel_args, kernel_prim_func
from .x86_vnni_pointwise import match_pointwise_chains

__all__ = ["X86VnniDepthwise"]


def _emit_call(emit, x, gv, spec, Wp, B, Mul, Sh):
    """``[1, C, Tin]`` -> kernel -> ``[1, C, Tout]`` (the kernel's own buffer shapes: no reshape, no copy)."""
    return relax.call_tir(gv, kernel_args(x, Wp, B, Mul, Sh),
                          out_ty=relax.TensorType((1, spec.C, spec.Tout), spec.out_dtype))


@tvm.transform.module_pass(opt_level=0, name="X86VnniDepthwise")
class X86VnniDepthwise:
    """Module pass: depthwise conv1d + requantize -> one ``call_tir`` of the VNNI kernel (see module doc)."""

    def __init__(self, func_name: str = "main", isa: str = "avx512vnni"):
        if isa not in ("avx512vnni", "avx2"):
            raise ValueError(f"isa must be 'avx512vnni' or 'avx2', not {isa!r}")
        self.isa = isa
        self.func_name = func_name
        self.replaced: list[dict] = []

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        from zsq_tvm.x86.depthwise import DepthwiseSpec, fold_bias, pack_weights, schedule

        gv_main = mod.get_global_var(self.func_name)
        func = mod[gv_main]
        self.replaced = []
        plan, funcs = {}, {}
        mod = copy_module(mod)
        for final, x, kw, W, bias, Mul, Sh in match_pointwise_chains(func, kind="depthwise"):
            if self.isa == "avx2" and (2 * kw["dilation"]) % kw["stride"]:
                continue  # 2-tap windows need the stride to divide 2 x dilation
            spec = DepthwiseSpec(**kw, isa=self.isa)
            try:
                B = fold_bias(W, bias, spec)
            except OverflowError:
                continue
            if spec not in funcs:
                name = (f"zsq_{'vnni' if self.isa == 'avx512vnni' else 'avx2'}_dw_c{spec.C}_t{spec.Tin}_k{spec.K}_s{spec.stride}_d{spec.dilation}_p{spec.pad_l}_{spec.pad_r}"
                        f"_{spec.a_dtype}_{spec.out_dtype}_{spec.qmin}_{spec.qmax}").replace("-", "m")
                funcs[spec] = (name, kernel_prim_func(schedule(spec), name, f"x86_{self.isa}_depthwise"))
            plan[final] = (x, spec, pack_weights(W, spec), B, Mul.astype(np.int64), Sh.astype(np.int64), funcs[spec])
            self.replaced.append({"var": str(final.name), "C": spec.C, "Tin": spec.Tin, "K": spec.K,
                                  "stride": spec.stride, "dilation": spec.dilation, "a_dtype": spec.a_dtype, "out_dtype": spec.out_dtype})
        if not plan:
            return mod
        rw = KernelCallRewriter(mod, plan, _emit_call)
        return finish_rewrite(rw, func, gv_main)
