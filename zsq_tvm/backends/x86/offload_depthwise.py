"""X86VnniDepthwise: replace each depthwise int8 conv1d + requantize chain by one VNNI kernel.

The depthwise twin of :mod:`zsq_tvm.backends.x86.offload_pointwise` (the chain of :mod:`relax_passes.patterns`,
kind ``"depthwise"``), applied by the VNNI targets (``host`` on a VNNI CPU, ``host-vnni``) before lowering.  Before (batch 1)::

    a = R.nn.conv1d(x, W, strides=[s], padding=[pl, pr], dilation=[1], groups=C, out_dtype="int32")
    [b = R.add(a, bias)]  c = R.astype(.., "int64") ... y = R.astype(R.clip(..), "int8" | "uint8" | "int32")

After::

    y = R.call_tir(zsq_vnni_dw_..., (x, Wp, B, Mul, Sh), out_ty=R.Tensor((1, C, Tout), dtype))

with the kernel of :func:`zsq_tvm.backends.x86.depthwise.schedule` (4-tap VNNI windows, requantize fused),
``Wp`` the taps padded to a multiple of 4 and ``B`` the folded bias (``bias - 128 sum W`` for int8
input).  Bit-identical to the replaced chain.  Matched: x int8/uint8 ``[1, C, Tin]``, W constant int8
``[C, 1, K]``, stride 1, 2 or 4 dividing 4 x dilation.  ``isa="avx2"``: the AVX2 variant (2-tap int16
windows, ``vpmaddwd``; stride dividing 2 x dilation, no bias fold).  :func:`offload_depthwise` returns the
replaced layers with the module.
"""

from __future__ import annotations

import tvm
from tvm import relax

from relax_passes.offload import KernelRule, Offload, kernel_args, kernel_prim_func, offload
from zsq_tvm.backends.x86.depthwise import DepthwiseSpec, fold_bias, length_tag, pack_weights, schedule
from zsq_tvm.backends.x86.offload_pointwise import check_isa

__all__ = ["X86VnniDepthwise", "offload_depthwise"]


def _emit(rw, off, gv, x):
    """``[1, C, Tin]`` -> kernel -> ``[1, C, Tout]`` (the kernel's own buffer shapes: no reshape, no copy)."""

    spec = off.spec
    return relax.call_tir(gv, kernel_args(x, pack_weights(off.W, spec), off.B, off.Mul, off.Sh),
                          out_ty=relax.TensorType((1, spec.C, spec.Tout), spec.out_dtype))


def _describe(spec):
    return {"C": spec.C, "Tin": spec.Tin if isinstance(spec.Tin, int) else str(spec.Tin), "K": spec.K, "stride": spec.stride, "dilation": spec.dilation,
            "a_dtype": spec.a_dtype, "out_dtype": spec.out_dtype}


def _lower(isa):
    def lower(chain):
        if isa == "avx2" and (2 * chain.spec["dilation"]) % chain.spec["stride"]:
            return None  # 2-tap windows need the stride to divide 2 x dilation
        spec = DepthwiseSpec(**chain.spec, isa=isa)
        try:
            B = fold_bias(chain.W, chain.bias, spec)
        except OverflowError:
            return None
        name = (f"zsq_{'vnni' if isa == 'avx512vnni' else 'avx2'}_dw_c{spec.C}_t{length_tag(spec.Tin)}_k{spec.K}_s{spec.stride}"
                f"_d{spec.dilation}_p{spec.pad_l}_{spec.pad_r}_{spec.a_dtype}_{spec.out_dtype}_{spec.qmin}_{spec.qmax}"
                ).replace("-", "m")
        kernel = (name, lambda: kernel_prim_func(schedule(spec), name, f"x86_{isa}_depthwise"))
        return Offload(chain.x, spec, kernel, chain.W, B, chain.Mul, chain.Sh)
    return lower


def offload_depthwise(mod: tvm.IRModule, func_name: str = "main",
                      isa: str = "avx512vnni") -> tuple[tvm.IRModule, list[dict]]:
    """``(rewritten module, replaced layers)`` (module doc); ``mod`` is not changed."""
    check_isa(isa)
    out_dtypes = ("int8", "uint8", "int32")  # unlike the pointwise kernels, not matched for int16 outputs
    return offload(mod, [KernelRule("depthwise", out_dtypes, _lower(isa), _emit, _describe, symbolic=True)],
                   func_name)


@tvm.transform.module_pass(opt_level=0, name="X86VnniDepthwise")
class X86VnniDepthwise:
    """Module pass: :func:`offload_depthwise` with these arguments."""

    def __init__(self, func_name: str = "main", isa: str = "avx512vnni"):
        check_isa(isa)
        self.options = dict(func_name=func_name, isa=isa)

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        return offload_depthwise(mod, **self.options)[0]
