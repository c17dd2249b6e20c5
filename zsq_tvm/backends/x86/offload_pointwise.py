"""X86VnniPointwise: replace each pointwise int8 conv1d + requantize chain by one VNNI kernel.

Runs on the *quantized, not yet lowered* module (the output of :class:`relax_passes.Quantize`), before
:func:`relax_passes.lowering.lower`; everything it does not match keeps the default lowering.  Applied by
the ``host`` target on a CPU with AVX-512 VNNI, and by ``host-vnni`` / ``x86-avx512vnni``
(:mod:`zsq_tvm.targets`); ``host-generic`` never sees it.

Before (one pointwise layer, batch 1; the chain of :mod:`relax_passes.patterns`, kind ``"pointwise"``)::

    a  = R.nn.conv1d(x, W, strides=[1], padding=[0, 0], dilation=[1], groups=1, out_dtype="int32")
    b  = R.add(a, bias)                 # optional
    c  = R.astype(b, "int64"); d = R.multiply(c, Mul); e = R.add(d, Rnd); f = R.right_shift(e, Sh)
    g  = R.clip(f, qmin, qmax); y = R.astype(g, "uint8" | "int8" | "int16" | "int32")

After::

    y = R.call_tir(zsq_vnni_pw_<K>x<M>_..., (x, Wp, B, Mul, Sh), out_ty=R.Tensor((1, M, T), dtype))

(the kernel takes and returns the graph's ``[1, C, T]`` tensors: no reshapes, which FuseOps would turn
into copy kernels between adjacent kernel calls)

where the callee is :func:`zsq_tvm.backends.x86.pointwise.schedule` of ``PointwiseSpec(T, K, M, layout="ncw")``
(one PrimFunc per distinct spec, ``op_pattern`` opaque so FuseOps leaves it alone), ``Wp`` the
:func:`pack_weights` layout and ``B`` the :func:`fold_bias` bias (``bias - 128 rowsum(W)`` for int8
activations).  The kernel computes exactly ``clip((int64(acc + bias) * Mul + 2^(Sh-1)) >> Sh)``,
so the result is bit-identical to the chain it replaces (and to :func:`relax_passes.reference.run_reference`).
``full_convs``: groups=1 convs with k > 1, padding or a stride (kind ``"conv"``) take the same ncw kernel with a
tap axis; ``linear``: ``R.matmul(x, W const)`` linear layers (kind ``"matmul"``) take its time-major ``tk`` form.
A layer whose folded bias or shifted u8 partial sums leave int32 is left alone.

Residual joins (QuartzNet/Jasper block ends, ``fuse_residual=True``): when two replaced chains both end in
int32 and meet in ``add -> clip -> astype`` (:func:`relax_passes.patterns.residual_joins`)::

    ya = <chain A> (int32, clip [qa0, qa1])      yb = <chain B> (int32, clip [qb0, qb1], only user: s)
    s  = R.add(ya, yb);  c = R.clip(s, lo, hi);  y = R.astype(c, "uint8" | "int8" | "int32")

becomes ``ya = call_tir(kernel A, ...)`` and ``y = R.call_tir(zsq_vnni_pw_..._res_<qb0>_<qb1>, (xb, Wp, B, Mul,
Sh, ya), out_ty=R.Tensor((1, M, T), dtype))``: B's kernel adds ``ya`` to its requantized int32 value and
clips/casts in its epilogue, so ``yb`` (4 bytes per element) is never written and no add kernel runs.

``isa="avx2"`` (the ``x86-avx2`` target and ``host`` on a CPU without VNNI) emits the AVX2 variants of the
same kernels (``vpmaddwd`` on int16 pairs, ``zsq_avx2_pw_...`` / ``zsq_avx2_linear_...``; the bias is not
folded).  :func:`offload_pointwise` returns the replaced layers (var name, K, M, T, dtypes, whether a residual
join was fused) with the module.
"""

from __future__ import annotations

import dataclasses

import tvm
from tvm import relax

from relax_passes.offload import KernelRule, Offload, kernel_args, kernel_prim_func, offload
from relax_passes.patterns import residual_joins
from zsq_tvm.backends.x86.depthwise import length_tag
from zsq_tvm.backends.x86.pointwise import PointwiseSpec, fold_bias, pack_weights, schedule

__all__ = ["X86VnniPointwise", "offload_pointwise", "check_isa", "X86_OUT_DTYPES"]

# final casts the x86 kernels write (int16: e.g. the logits of a trained QuartzNet's classifier layer)
X86_OUT_DTYPES = ("int8", "uint8", "int16", "int32")


def check_isa(isa: str):
    if isa not in ("avx512vnni", "avx2"):
        raise ValueError(f"isa must be 'avx512vnni' or 'avx2', not {isa!r}")


def _register_tile(M: int) -> int:
    """16-channel vectors per register tile of the tk kernel: a divisor of ceil(M / 16) when one of 4, 3, 2 is
    (no padded channels computed: M = 144 = 9 x 16 takes 3, not 4 -> 192)."""
    m16 = -(-M // 16)
    return next((r for r in (4, 3, 2) if m16 % r == 0), 4 if m16 >= 4 else m16)


def _kernel(spec):
    isa = "vnni" if spec.isa == "avx512vnni" else "avx2"
    op = "linear" if spec.layout == "tk" else "pw" if spec.taps == 1 else "conv"
    name = (f"zsq_{isa}_{op}_{spec.K}x{spec.M}_t{length_tag(spec.T)}"
            + (f"_k{spec.taps}_d{spec.dilation}_p{spec.pad_l}_{spec.pad_r}" if spec.taps > 1 or spec.pad_l
               or spec.pad_r else "")
            + (f"_s{spec.stride}" if spec.stride > 1 else "")
            + f"_{spec.a_dtype}_{spec.out_dtype}_{spec.qmin}_{spec.qmax}"
            + (f"_res_{spec.req_qmin}_{spec.req_qmax}" if spec.residual else "")).replace("-", "m")
    return name, lambda: kernel_prim_func(schedule(spec), name, f"x86_{spec.isa}_pointwise")


def _emit(rw, off, gv, x, *residual):
    """``[1, K, T]`` (+ the int32 ``[1, M, T]`` residual) -> kernel -> ``[1, M, T]`` (the ncw kernel's own
    buffer shapes: no reshape, no copy); a linear layer's ``[T, K]`` -> ``[T, M]``, a batch-1 3-D ``x``
    reshaped around it (views)."""

    spec = off.spec
    shape = (spec.T, spec.M) if spec.layout == "tk" else (1, spec.M, spec.Tout)
    batch3d = spec.layout == "tk" and x.ty.ndim == 3
    if batch3d:
        x = rw.emit(relax.op.reshape(x, [spec.T, spec.K]))
    y = relax.call_tir(gv, kernel_args(x, pack_weights(off.W, spec), off.B, off.Mul, off.Sh) + list(residual),
                       out_ty=relax.TensorType(shape, spec.out_dtype))
    return relax.op.reshape(rw.emit(y), [1, spec.T, spec.M]) if batch3d else y


def _describe(spec):
    return {"K": spec.K, "M": spec.M, "T": spec.T if isinstance(spec.T, int) else str(spec.T), "a_dtype": spec.a_dtype, "out_dtype": spec.out_dtype,
            "residual": spec.residual}


def _lower(isa):
    def lower(chain):
        kw = dict(chain.spec, isa=isa)
        if kw["layout"] == "tk":
            kw["rm"] = _register_tile(kw["M"])
        spec = PointwiseSpec(**kw)
        try:
            B = fold_bias(chain.W, chain.bias, spec)
        except OverflowError:
            return None
        return Offload(chain.x, spec, _kernel(spec), chain.W, B, chain.Mul, chain.Sh)
    return lower


def _join_residuals(func, plan):
    """Chain B of each residual join takes the add, clip and cast in its epilogue (module doc)."""
    joins = residual_joins(func, {v: dataclasses.asdict(off.spec) for v, (_, off) in plan.items()})
    fused = {j[0]: (out, j) for out, j in joins.items()}
    out = {}
    for final, (rule, off) in plan.items():
        if final in fused:
            final, (_, res, lo, hi, od) = fused[final]
            spec = dataclasses.replace(off.spec, residual=True, req_qmin=off.spec.qmin, req_qmax=off.spec.qmax,
                                       qmin=lo, qmax=hi, out_dtype=od)
            off = off._replace(spec=spec, kernel=_kernel(spec), extra=(res,))
        out[final] = (rule, off)
    return out


def offload_pointwise(mod: tvm.IRModule, func_name: str = "main", fuse_residual: bool = True,
                      full_convs: bool = True, linear: bool = True,
                      isa: str = "avx512vnni") -> tuple[tvm.IRModule, list[dict]]:
    """``(rewritten module, replaced layers)`` (module doc); ``mod`` is not changed."""
    check_isa(isa)
    kinds = ["pointwise"] + (["conv"] if full_convs else []) + (["matmul"] if linear else [])
    # the ncw convs take a symbolic length (a symbolic-T model); the linear layers' tk kernel does not
    rules = [KernelRule(k, X86_OUT_DTYPES, _lower(isa), _emit, _describe, symbolic=k != "matmul") for k in kinds]
    return offload(mod, rules, func_name, join=_join_residuals if fuse_residual else None)


@tvm.transform.module_pass(opt_level=0, name="X86VnniPointwise")
class X86VnniPointwise:
    """Module pass: :func:`offload_pointwise` with these arguments."""

    def __init__(self, func_name: str = "main", fuse_residual: bool = True, full_convs: bool = True,
                 linear: bool = True, isa: str = "avx512vnni"):
        check_isa(isa)
        self.options = dict(func_name=func_name, fuse_residual=fuse_residual, full_convs=full_convs, linear=linear,
                            isa=isa)

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        return offload_pointwise(mod, **self.options)[0]
