"""X86VnniPointwise: replace each pointwise int8 conv1d + requantize chain by one VNNI kernel.

Runs on the *quantized, not yet lowered* module (the output of :class:`relax_passes.Quantize`), before
:func:`zsq_tvm.lowering.lower`; everything it does not match keeps the default lowering.  Applied by
the ``host`` target on a CPU with AVX-512 VNNI, and by ``host-vnni`` / ``x86-avx512vnni``
(:mod:`zsq_tvm.targets`); ``host-generic`` never sees it.

Before (one pointwise layer, batch 1; the bias add is optional)::

    a  = R.nn.conv1d(x, W, strides=[1], padding=[0, 0], dilation=[1], groups=1, out_dtype="int32")
    b  = R.add(a, bias)                 # int32 constant [1, M, 1] (or scalar)
    c  = R.astype(b, "int64")
    d  = R.multiply(c, Mul)             # int64 constant, per channel or scalar
    e  = R.add(d, Rnd)                  # Rnd == 1 << (Sh - 1), checked element-wise
    f  = R.right_shift(e, Sh)           # 1 <= Sh <= 62
    g  = R.clip(f, qmin, qmax)
    y  = R.astype(g, "uint8" | "int8" | "int32")

After::

    y = R.call_tir(zsq_vnni_pw_<K>x<M>_..., (x, Wp, B, Mul, Sh), out_ty=R.Tensor((1, M, T), dtype))

(the kernel takes and returns the graph's ``[1, C, T]`` tensors: no reshapes, which FuseOps would turn
into copy kernels between adjacent kernel calls)

where the callee is :func:`zsq_tvm.x86.pointwise.schedule` of ``PointwiseSpec(T, K, M, layout="ncw")``
(one PrimFunc per distinct spec, ``op_pattern`` opaque so FuseOps leaves it alone), ``Wp`` the
:func:`pack_weights` layout and ``B`` the :func:`fold_bias` bias (``bias - 128 rowsum(W)`` for int8
activations).  The kernel computes exactly ``clip((int64(acc + bias) * Mul + 2^(Sh-1)) >> Sh)``,
so the result is bit-identical to the chain it replaces (and to :func:`zsq_tvm.reference.run_reference`).

Residual joins (QuartzNet/Jasper block ends, ``fuse_residual=True``): when two matched chains both end in
int32 and meet in ``add -> clip -> astype``::

    ya = <chain A> (int32, clip [qa0, qa1])      yb = <chain B> (int32, clip [qb0, qb1], only user: s)
    s  = R.add(ya, yb);  c = R.clip(s, lo, hi);  y = R.astype(c, "uint8" | "int8" | "int32")

becomes ``ya = call_tir(kernel A, ...)`` and ``y = R.call_tir(zsq_vnni_pw_..._res_<qb0>_<qb1>, (xb, Wp, B, Mul,
Sh, ya), out_ty=R.Tensor((1, M, T), dtype))``: B's kernel adds ``ya`` to its requantized int32 value and
clips/casts in its epilogue, so ``yb`` (4 bytes per element) is never written and no add kernel runs.
Only when ``qa0 + qb0 >= -2^31`` and ``qa1 + qb1 < 2^31`` (the int32 add cannot wrap) and ``[lo, hi]``
fits the dtype (:func:`match_residual_adds`).

Matching rule (output dtypes int8/uint8/int16/int32): ``x`` int8/uint8 ``[1, K, T]``; ``W`` a constant int8 ``[M, K, 1]``; groups 1, stride 1,
dilation 1, no padding, NCW/OIW/NCW; every intermediate (``a`` .. ``g``) has exactly one user and is
not a function output; all constants are relax constants, per-channel (``[1, M, 1]``/``[M, 1]``/``[M]``)
or scalar; the folded bias and the shifted u8 partial sums fit int32 (else the layer is left alone).
Depthwise and k>1 convs, matmuls and other adds are untouched.

``isa="avx2"`` (the ``x86-avx2`` target and ``host`` on a CPU without VNNI) emits the AVX2 variants of the
same kernels (``vpmaddwd`` on int16 pairs, ``zsq_avx2_pw_...`` / ``zsq_avx2_linear_...``; the bias is not
folded).

``pass_obj.replaced`` lists the replaced layers (var name, K, M, T, dtypes, whether a residual join was fused).
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from ._util import (KernelCallRewriter, UseIndex, call_op_name, const_value, copy_module, finish_rewrite,
                    is_tensor_const, kernel_args, kernel_prim_func)

__all__ = ["X86VnniPointwise", "match_pointwise_chains", "match_residual_adds", "X86_OUT_DTYPES"]

# final casts the x86 kernels write (int16: e.g. the logits of a trained QuartzNet's classifier layer)
X86_OUT_DTYPES = ("int8", "uint8", "int16", "int32")

_CHAIN = ("astype", "multiply", "add", "right_shift", "clip", "astype")


_const = const_value


def _channel_vector(arr, M, shapes, max_ndim):
    """Scalar or one of ``shapes`` (a length-M vector along the channel axis) -> ``[M]`` int64, else None."""
    if arr is None:
        return None
    a = np.asarray(arr)
    if a.size == 1 and a.ndim <= max_ndim:
        return np.full(M, a.reshape(()).astype(np.int64))
    if a.shape in shapes:
        return a.reshape(M).astype(np.int64)
    return None


def _per_channel(arr, M):
    """Constant broadcast along the channel axis of ``[1, M, T]`` -> ``[M]`` int64, else None."""
    return _channel_vector(arr, M, ((1, M, 1), (M, 1)), 3)


def _prim(e):
    v = e.value if hasattr(e, "value") else e
    return int(v.value) if hasattr(v, "value") else int(v)


def _ints(xs):
    return [int(x) for x in xs]


def _pointwise_conv(call, W, xt):
    """spec kwargs (T, K, M, a_dtype) of a k=1, groups=1 conv1d, else None."""
    at = call.attrs
    if (W.shape[2] != 1 or int(at.groups) != 1 or _ints(at.strides) != [1] or _ints(at.dilation) != [1]
            or any(_ints(at.padding))):
        return None
    N, K, T = _ints(xt.shape)
    if N != 1 or W.shape[1] != K:
        return None
    return dict(T=T, K=K, M=int(W.shape[0]), a_dtype=str(xt.dtype), layout="ncw"), int(W.shape[0])


def _full_conv(call, W, xt):
    """spec kwargs (T, K, M, a_dtype, taps, dilation, pads, stride) of a groups=1 conv1d that is *not* a plain
    pointwise one (k > 1, zero padding or a stride; any dilation), else None: the ncw kernel with a tap
    reduction axis."""
    at = call.attrs
    dl, pads, st = _ints(at.dilation), _ints(at.padding), _ints(at.strides)
    if int(at.groups) != 1 or len(st) != 1 or st[0] < 1 or len(dl) != 1 or dl[0] < 1:
        return None
    pl, pr = (pads * 2)[:2] if len(pads) == 1 else pads[:2]
    N, K, T = _ints(xt.shape)
    taps = int(W.shape[2])
    if (N != 1 or W.shape[1] != K or (taps == 1 and pl == 0 and pr == 0 and st[0] == 1)
            or T + pl + pr - dl[0] * (taps - 1) < 1):
        return None
    return dict(T=T, K=K, M=int(W.shape[0]), a_dtype=str(xt.dtype), layout="ncw", taps=taps, dilation=dl[0],
                pad_l=pl, pad_r=pr, stride=st[0]), int(W.shape[0])


def _depthwise_conv(call, W, xt):
    """spec kwargs (C, Tin, K, stride, pads, dilation, a_dtype) of a depthwise conv1d (groups = C), else None."""
    at = call.attrs
    N, C, T = _ints(xt.shape)
    st, pads = _ints(at.strides), _ints(at.padding)
    dl = _ints(at.dilation)
    if (N != 1 or int(at.groups) != C or W.shape[0] != C or W.shape[1] != 1 or len(dl) != 1 or dl[0] < 1
            or len(st) != 1 or st[0] not in (1, 2, 4) or (4 * dl[0]) % st[0]):
        return None
    pl, pr = (pads * 2)[:2] if len(pads) == 1 else pads[:2]
    if (T + pl + pr - dl[0] * (int(W.shape[2]) - 1) - 1) // st[0] + 1 < 1:
        return None
    return dict(C=C, Tin=T, K=int(W.shape[2]), stride=st[0], pad_l=pl, pad_r=pr, dilation=dl[0],
                a_dtype=str(xt.dtype)), C


def _per_channel_last(arr, M):
    """Constant broadcast along the last axis of a ``[T, M]`` / ``[1, T, M]`` matmul output -> ``[M]`` int64, else None."""
    return _channel_vector(arr, M, ((M,), (1, M), (1, 1, M)), 3)


def _linear(call):
    """``(x, W[M, K], spec kwargs, M)`` of ``R.matmul(x[T, K] | x[1, T, K] int8/uint8, W[K, M] const int8) -> int32``
    (a Conformer linear layer: the time-major ``tk`` kernel; a batch-1 3-D ``x`` is reshaped around it), else None."""
    x, w = call.args
    W = _const(w)
    xt = x.ty
    if (W is None or W.dtype != np.int8 or W.ndim != 2 or not isinstance(xt, relax.TensorType)
            or xt.dtype not in ("int8", "uint8") or xt.ndim not in (2, 3) or str(call.attrs.out_dtype) != "int32"):
        return None
    try:
        *lead, T, K = _ints(xt.shape)
    except Exception:  # symbolic shape
        return None
    if W.shape[0] != K or lead not in ([], [1]):
        return None
    M = int(W.shape[1])
    # 16-channel vectors per register tile: a divisor of ceil(M / 16) when one of 4, 3, 2 is (no padded
    # channels computed: M = 144 = 9 x 16 takes 3, not 4 -> 192)
    m16 = -(-M // 16)
    rm = next((r for r in (4, 3, 2) if m16 % r == 0), 4 if m16 >= 4 else m16)
    return x, np.ascontiguousarray(W.T), dict(T=T, K=K, M=M, a_dtype=str(xt.dtype), layout="tk", rm=rm), M


def _int32_of_int8(e, value):
    """``s`` when ``e`` is a var bound to ``R.astype(s, "int32")`` with ``s`` an int8/uint8 tensor, else None."""
    v = value.get(e) if isinstance(e, relax.Var) else None
    if v is None or call_op_name(v) != "astype" or str(v.attrs.dtype) != "int32":
        return None
    s = v.args[0]
    st = s.ty
    return s if isinstance(st, relax.TensorType) and st.dtype in ("int8", "uint8") else None


def _int8_operand(e, value):
    """An int8/uint8 operand of an int32 matmul: ``e`` itself (an int8/uint8 tensor var or constant) or the
    source of ``e = R.astype(s, "int32")``, else None."""
    st = e.ty
    if (isinstance(e, relax.Var) or is_tensor_const(e)) and isinstance(st, relax.TensorType) and st.dtype in ("int8", "uint8"):
        return e
    return _int32_of_int8(e, value)


def _batch_matmul(call, value):
    """``((a, b), None, spec kwargs, 1)`` of an int32 ``R.matmul(a, b)`` of ``a[1, H, T, K]`` int8/uint8 and
    ``b[1, H, K, N]`` int8 (attention scores / context; the relative-position term's ``b`` is a constant),
    each given as such or as ``R.astype(., "int32")`` of it, else None."""
    if str(call.attrs.out_dtype) != "int32":
        return None
    a, b = (_int8_operand(e, value) for e in call.args)
    if a is None or b is None or b.ty.dtype != "int8" or a.ty.ndim != 4 or b.ty.ndim != 4:
        return None
    try:
        (n, H, T, K), (n2, H2, K2, N) = _ints(a.ty.shape), _ints(b.ty.shape)
    except Exception:  # symbolic shape
        return None
    if n != 1 or n2 != 1 or H2 != H or K2 != K:
        return None
    return (a, b), None, dict(H=H, T=T, K=K, N=N, a_dtype=str(a.ty.dtype)), N


def _per_column(arr, N):
    """A scalar or ``[N]`` / ``[1, 1, 1, N]`` constant of a ``[1, H, T, N]`` product -> ``[N]`` int64, else None."""
    return _channel_vector(arr, N, ((N,), (1, 1, 1, N)), 4)


def match_pointwise_chains(func: relax.Function, kind: str = "pointwise",
                           out_dtypes: tuple = ("int8", "uint8", "int32")):
    """``[(final_var, x_expr, spec_kwargs, W, bias, Mul, Sh)]`` for each matched chain of ``func``.

    ``out_dtypes``: the final casts accepted (the x86 kernels also take int16: a classifier's logits).
    ``kind="pointwise"``: k=1 conv1d without padding.  ``kind="conv"``: groups=1 conv1d with k > 1,
    padding or a stride (any dilation), spec kwargs with ``taps``/``dilation``/``pad_l``/``pad_r``/``stride``
    for the same ncw kernel.  ``kind="matmul"``: ``R.matmul(x[T, K], W[K, M] const)`` (linear layers; per-channel constants
    along the last axis), spec kwargs for the time-major ``tk`` kernel, ``W`` returned as ``[M, K]``.
    ``kind="depthwise"``: depthwise conv1d (groups = channels, stride 1/2/4 dividing 4 x dilation, any
    padding) + the same requantize chain (spec kwargs for :class:`zsq_tvm.x86.depthwise.DepthwiseSpec`).
    ``kind="bmm"``: ``R.matmul(astype(a, int32), astype(b, int32))`` of two 4-D int8 tensors (attention; ``b``
    may be a constant), constants scalar or per column; ``x_expr`` is the pair ``(a, b)``, ``W`` None
    (:class:`zsq_tvm.x86.bmm.BmmSpec` kwargs).
    """
    accept = {"pointwise": _pointwise_conv, "conv": _full_conv, "depthwise": _depthwise_conv, "matmul": None,
              "bmm": None}[kind]
    per_channel = {"matmul": _per_channel_last, "bmm": _per_column}.get(kind, _per_channel)
    idx = UseIndex(func)
    bs, value, only_user = idx.bindings, idx.value, idx.only_user
    found = []

    def other_const(call, var):
        a, b = call.args
        if a.same_as(var):
            return _const(b)
        if b.same_as(var):
            return _const(a)
        return None

    for b in bs:
        if kind == "bmm":
            if call_op_name(b.value) != "matmul":
                continue
            got = _batch_matmul(b.value, value)
            if got is None:
                continue
            x, W, spec_kw, M = got
        elif kind == "matmul":
            if call_op_name(b.value) != "matmul":
                continue
            got = _linear(b.value)
            if got is None:
                continue
            x, W, spec_kw, M = got
        else:
            if call_op_name(b.value) != "nn.conv1d":
                continue
            call = b.value
            at = call.attrs
            x, w = call.args
            W = _const(w)
            xt = x.ty
            if (W is None or W.dtype != np.int8 or W.ndim != 3
                    or str(at.data_layout) != "NCW" or str(at.kernel_layout) != "OIW"
                    or str(at.out_layout) != "NCW" or str(at.out_dtype) != "int32"):
                continue
            if not isinstance(xt, relax.TensorType) or xt.dtype not in ("int8", "uint8") or xt.ndim != 3:
                continue
            try:
                got = accept(call, W, xt)
            except Exception:  # symbolic shape
                continue
            if got is None:
                continue
            spec_kw, M = got
        cur = b.var
        bias = None
        nxt = only_user(cur)
        if nxt is None:
            continue
        if call_op_name(value[nxt]) == "add":
            bias = per_channel(other_const(value[nxt], cur), M)
            if bias is None:
                continue
            cur, nxt = nxt, only_user(nxt)
        ok, vals = True, {}
        for i, op in enumerate(_CHAIN):
            if nxt is None or call_op_name(value[nxt]) != op:
                ok = False
                break
            v = value[nxt]
            if op == "astype" and i == 0 and str(v.attrs.dtype) != "int64":
                ok = False
            elif op in ("multiply", "add", "right_shift"):
                if op == "right_shift" and not v.args[0].same_as(cur):
                    ok = False
                c = per_channel(other_const(v, cur), M)
                if c is None:
                    ok = False
                vals[op] = c
            elif op == "clip":
                vals["clip"] = (_prim(v.args[1]), _prim(v.args[2]))
            elif op == "astype" and i == 5:
                vals["dtype"] = str(v.attrs.dtype)
            if not ok:
                break
            cur = nxt
            if i < len(_CHAIN) - 1:
                nxt = only_user(cur)
        if not ok:
            continue
        Mul, Rnd, Sh = vals["multiply"], vals["add"], vals["right_shift"]
        qmin, qmax = vals["clip"]
        od = vals["dtype"]
        if od not in out_dtypes:
            continue
        info = np.iinfo(od)
        if (np.any(Sh < 1) or np.any(Sh > 62) or np.any(Rnd != (np.int64(1) << np.clip(Sh - 1, 0, 62)))
                or qmin < info.min or qmax > info.max or qmin > qmax
                or np.any(Mul < 0) or np.any(Mul >= 2**31)):
            continue
        if bias is not None and (bias.min() < -(2**31) or bias.max() >= 2**31):
            continue
        spec = dict(spec_kw, out_dtype=od, qmin=int(qmin), qmax=int(qmax))
        found.append((cur, x, spec, W, bias, Mul, Sh))
    return found


def match_residual_adds(func: relax.Function, chains: dict) -> dict:
    """Residual joins ``add(a, b) -> clip(lo, hi) -> astype(dtype)`` whose inputs are both int32 outputs of
    matched pointwise chains (``chains``: final var -> spec kwargs).  Returns ``{astype var: (fused, residual,
    lo, hi, dtype)}``: ``fused`` (the input whose only user is the add) gets the add, clip and cast in its
    kernel's epilogue, ``residual`` is passed to it.  Only when the int32 add cannot wrap (the two chains'
    clip bounds sum inside int32) and ``[lo, hi]`` fits ``dtype``, so the fused result is bit-identical."""
    idx = UseIndex(func)
    bs, value, only_user = idx.bindings, idx.value, idx.only_user
    found = {}
    for b in bs:
        if call_op_name(b.value) != "add":
            continue
        a0, a1 = b.value.args
        if not (isinstance(a0, relax.Var) and isinstance(a1, relax.Var) and a0 in chains and a1 in chains):
            continue
        fused, res = (a1, a0) if only_user(a1) is not None else (a0, a1)
        kf, kr = chains[fused], chains[res]
        if (only_user(fused) is None or fused.same_as(res) or kf["out_dtype"] != "int32" or kr["out_dtype"] != "int32"
                or kf["layout"] != "ncw"
                or [int(x) for x in fused.ty.shape] != [int(x) for x in res.ty.shape]
                or kf["qmin"] + kr["qmin"] < -(2**31) or kf["qmax"] + kr["qmax"] >= 2**31):
            continue
        clip = only_user(b.var)
        if clip is None or call_op_name(value[clip]) != "clip":
            continue
        cast = only_user(clip)
        if cast is None or call_op_name(value[cast]) != "astype":
            continue
        lo, hi = _prim(value[clip].args[1]), _prim(value[clip].args[2])
        od = str(value[cast].attrs.dtype)
        if od not in ("int8", "uint8", "int32") or lo > hi or lo < np.iinfo(od).min or hi > np.iinfo(od).max:
            continue
        found[cast] = (fused, res, int(lo), int(hi), od)
    return found


def _emit_call(emit, x, gv, spec, Wp, B, Mul, Sh, *residual):
    """``[1, K, T]`` (+ the int32 ``[1, M, T]`` residual) -> kernel -> ``[1, M, T]`` (the ncw kernel's own
    buffer shapes: no reshape, no copy)."""
    shape = (spec.T, spec.M) if spec.layout == "tk" else (1, spec.M, spec.Tout)  # tk: a linear layer's [T, M]
    batch3d = spec.layout == "tk" and x.ty.ndim == 3  # [1, T, K] -> [T, K] -> kernel -> [1, T, M] (views)
    if batch3d:
        x = emit(relax.op.reshape(x, [spec.T, spec.K]))
    y = relax.call_tir(gv, kernel_args(x, Wp, B, Mul, Sh) + list(residual),
                       out_ty=relax.TensorType(shape, spec.out_dtype))
    return relax.op.reshape(emit(y), [1, spec.T, spec.M]) if batch3d else y


@tvm.transform.module_pass(opt_level=0, name="X86VnniPointwise")
class X86VnniPointwise:
    """Module pass: pointwise conv1d + requantize -> one ``call_tir`` of the VNNI kernel (see module doc)."""

    def __init__(self, func_name: str = "main", fuse_residual: bool = True, full_convs: bool = True,
                 linear: bool = True, isa: str = "avx512vnni"):
        if isa not in ("avx512vnni", "avx2"):
            raise ValueError(f"isa must be 'avx512vnni' or 'avx2', not {isa!r}")
        self.isa = isa
        self.func_name = func_name
        self.fuse_residual = fuse_residual
        self.full_convs = full_convs
        self.linear = linear
        self.replaced: list[dict] = []

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        from zsq_tvm.x86.pointwise import PointwiseSpec, fold_bias, pack_weights, schedule

        gv_main = mod.get_global_var(self.func_name)
        func = mod[gv_main]
        self.replaced = []
        plan, funcs = {}, {}
        mod = copy_module(mod)
        chains = {}
        kinds = ["pointwise"] + (["conv"] if self.full_convs else []) + (["matmul"] if self.linear else [])
        matched = [c for k in kinds for c in match_pointwise_chains(func, kind=k, out_dtypes=X86_OUT_DTYPES)]
        for final, x, kw, W, bias, Mul, Sh in matched:
            kw = dict(kw, isa=self.isa)
            try:
                B = fold_bias(W, bias, PointwiseSpec(**kw))
            except OverflowError:
                continue
            chains[final] = (x, kw, W, B, Mul.astype(np.int64), Sh.astype(np.int64))
        joins = match_residual_adds(func, {v: c[1] for v, c in chains.items()}) if self.fuse_residual else {}
        fused = {j[0]: (out, j) for out, j in joins.items()}
        for final, (x, kw, W, B, Mul, Sh) in chains.items():
            extra = ()
            if final in fused:  # this chain's kernel also does the residual add + clip + cast
                final, (_, res, lo, hi, od) = fused[final]
                kw = dict(kw, residual=True, req_qmin=kw["qmin"], req_qmax=kw["qmax"], qmin=lo, qmax=hi, out_dtype=od)
                extra = (res,)
            spec = PointwiseSpec(**kw)
            if spec not in funcs:
                name = (f"zsq_{'vnni' if self.isa == 'avx512vnni' else 'avx2'}_{'linear' if spec.layout == 'tk' else 'pw' if spec.taps == 1 else 'conv'}"
                        f"_{spec.K}x{spec.M}_t{spec.T}"
                        + (f"_k{spec.taps}_d{spec.dilation}_p{spec.pad_l}_{spec.pad_r}" if spec.taps > 1 or spec.pad_l
                           or spec.pad_r else "")
                        + (f"_s{spec.stride}" if spec.stride > 1 else "")
                        + f"_{spec.a_dtype}_{spec.out_dtype}_{spec.qmin}_{spec.qmax}"
                        + (f"_res_{spec.req_qmin}_{spec.req_qmax}" if spec.residual else "")).replace("-", "m")
                funcs[spec] = (name, kernel_prim_func(schedule(spec), name, f"x86_{self.isa}_pointwise"))
            plan[final] = (x, spec, pack_weights(W, spec), B, Mul, Sh, funcs[spec], *extra)
            self.replaced.append({"var": str(final.name), "K": spec.K, "M": spec.M, "T": spec.T,
                                  "a_dtype": spec.a_dtype, "out_dtype": spec.out_dtype, "residual": spec.residual})
        if not plan:
            return mod
        rw = KernelCallRewriter(mod, plan, _emit_call)
        return finish_rewrite(rw, func, gv_main)
