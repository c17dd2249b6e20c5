"""X86VnniPointwise: replace each pointwise int8 conv1d + requantize chain by one VNNI kernel (opt-in).

Runs on the *quantized, not yet lowered* module (the output of :class:`relax_passes.Quantize`), before
:func:`zsq_tvm.lowering.lower`; everything it does not match keeps the default lowering.  Applied by
the ``host-vnni`` target (:mod:`zsq_tvm.targets`) only; the default ``host`` build never sees it.

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

    xr = R.reshape(x, (K, T))
    yr = R.call_tir(zsq_vnni_pw_<K>x<M>_..., (xr, Wp, B, Mul, Sh), out_ty=R.Tensor((M, T), dtype))
    y  = R.reshape(yr, (1, M, T))

where the callee is :func:`zsq_tvm.x86.pointwise.schedule` of ``PointwiseSpec(T, K, M, layout="ncw")``
(one PrimFunc per distinct spec, ``op_pattern`` opaque so FuseOps leaves it alone), ``Wp`` the
:func:`pack_weights` layout and ``B`` the :func:`fold_bias` bias (``bias - 128 rowsum(W)`` for int8
activations).  The kernel computes exactly ``clip((int64(acc + bias) * Mul + 2^(Sh-1)) >> Sh)``,
so the result is bit-identical to the chain it replaces (and to :func:`zsq_tvm.reference.run_reference`).

Matching rule: ``x`` int8/uint8 ``[1, K, T]``; ``W`` a constant int8 ``[M, K, 1]``; groups 1, stride 1,
dilation 1, no padding, NCW/OIW/NCW; every intermediate (``a`` .. ``g``) has exactly one user and is
not a function output; all constants are relax constants, per-channel (``[1, M, 1]``/``[M, 1]``/``[M]``)
or scalar; the folded bias and the shifted u8 partial sums fit int32 (else the layer is left alone).
Depthwise and k>1 convs, matmuls and residual adds are untouched.

``pass_obj.replaced`` lists the replaced layers (var name, K, M, T, dtypes).
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from ._util import KernelCallRewriter, bindings, call_op_name, is_tensor_const, kernel_args

__all__ = ["X86VnniPointwise", "match_pointwise_chains"]

_CHAIN = ("astype", "multiply", "add", "right_shift", "clip", "astype")


def _const(expr):
    return expr.value.numpy() if is_tensor_const(expr) else None


def _per_channel(arr, M):
    """Constant broadcast along the channel axis of ``[1, M, T]`` -> ``[M]`` int64, else None."""
    if arr is None:
        return None
    a = np.asarray(arr)
    if a.size == 1 and a.ndim <= 3:
        return np.full(M, a.reshape(()).astype(np.int64))
    if a.shape in ((1, M, 1), (M, 1)):
        return a.reshape(M).astype(np.int64)
    return None


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


def match_pointwise_chains(func: relax.Function, kind: str = "pointwise"):
    """``[(final_var, x_expr, spec_kwargs, W, bias, Mul, Sh)]`` for each matched chain of ``func``.

    ``kind="depthwise"`` matches depthwise conv1d (groups = channels, stride 1/2/4 dividing 4 x dilation, any
    padding) + the same requantize chain instead (spec kwargs for :class:`zsq_tvm.x86.depthwise.DepthwiseSpec`).
    """
    accept = {"pointwise": _pointwise_conv, "depthwise": _depthwise_conv}[kind]
    bs = bindings(func)
    value = {b.var: b.value for b in bs}
    users: dict = {}
    for b in bs:
        for v in relax.analysis.free_vars(b.value):
            users.setdefault(v, []).append(b.var)
    outs = set(relax.analysis.free_vars(func.body.body))
    found = []

    def only_user(var):
        u = users.get(var, [])
        if len(u) != 1 or var in outs:
            return None
        return u[0]

    def other_const(call, var):
        a, b = call.args
        if a.same_as(var):
            return _const(b)
        if b.same_as(var):
            return _const(a)
        return None

    for b in bs:
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
            bias = _per_channel(other_const(value[nxt], cur), M)
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
                c = _per_channel(other_const(v, cur), M)
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
        if od not in ("int8", "uint8", "int32"):
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


def _emit_call(emit, x, gv, spec, Wp, B, Mul, Sh):
    """``[1, K, T]`` -> kernel on ``[K, T]`` -> ``[1, M, T]`` (reshapes only: the kernel is channel-major)."""
    y = emit(relax.call_tir(gv, kernel_args(emit(relax.op.reshape(x, (spec.K, spec.T))), Wp, B, Mul, Sh),
                            out_ty=relax.TensorType((spec.M, spec.T), spec.out_dtype)))
    return relax.op.reshape(y, (1, spec.M, spec.T))


@tvm.transform.module_pass(opt_level=0, name="X86VnniPointwise")
class X86VnniPointwise:
    """Module pass: pointwise conv1d + requantize -> one ``call_tir`` of the VNNI kernel (see module doc)."""

    def __init__(self, func_name: str = "main"):
        self.func_name = func_name
        self.replaced: list[dict] = []

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        from zsq_tvm.x86.pointwise import PointwiseSpec, fold_bias, pack_weights, schedule

        gv_main = mod.get_global_var(self.func_name)
        func = mod[gv_main]
        self.replaced = []
        plan, funcs = {}, {}
        mod = tvm.IRModule({g: f for g, f in mod.functions.items()}, attrs=mod.attrs,
                           global_infos=mod.global_infos)
        for final, x, kw, W, bias, Mul, Sh in match_pointwise_chains(func):
            spec = PointwiseSpec(**kw)
            try:
                B = fold_bias(W, bias, spec)
            except OverflowError:
                continue
            if spec not in funcs:
                name = (f"zsq_vnni_pw_{spec.K}x{spec.M}_t{spec.T}_{spec.a_dtype}_{spec.out_dtype}"
                        f"_{spec.qmin}_{spec.qmax}").replace("-", "m")
                f = schedule(spec).mod["main"].with_attr("global_symbol", name).with_attr("op_pattern", 8)
                f = f.with_attr("zsq.kernel", "x86_vnni_pointwise")
                funcs[spec] = (name, f)
            plan[final] = (x, spec, pack_weights(W, spec), B, Mul.astype(np.int64), Sh.astype(np.int64), funcs[spec])
            self.replaced.append({"var": str(final.name), "K": spec.K, "M": spec.M, "T": spec.T,
                                  "a_dtype": spec.a_dtype, "out_dtype": spec.out_dtype})
        if not plan:
            return mod
        rw = KernelCallRewriter(mod, plan, _emit_call)
        new_main = rw.visit_expr(func)
        mod = rw.builder_.get()
        mod[gv_main] = new_main
        return relax.transform.DeadCodeElimination([self.func_name])(mod)
