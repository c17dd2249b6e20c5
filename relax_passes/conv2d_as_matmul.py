"""Conv2dAsMatmul: an int8 conv2d + requantize chain becomes im2col + matmul + the same chain, time-major.

Why: the only conv2d layers of our models are the Conformer's subsampling convs (3x3, stride 2), and TVM's
default lowering of an int8 conv2d runs at ~4 GMAC/s on x86 (205 ms of conformer-ctc-small's 375 ms at
10 s).  As a matmul ``[Ho*Wo, C*kh*kw] x [C*kh*kw, M]`` followed by the requantize chain with per-channel
constants along the last axis, the layer is exactly what :class:`zsq_tvm.backends.x86.offload_pointwise.X86VnniPointwise`
turns into its VNNI linear kernel, so this pass runs right before it (``host`` on a VNNI CPU).

Before (batch 1, NCHW / OIHW, groups 1; every constant per output channel ``[1, M, 1, 1]`` or scalar)::

    a = R.nn.conv2d(x, W, strides=[sh, sw], padding=[pt, pl, pb, pr], dilation=[1, 1], out_dtype="int32")
    b = R.add(a, bias)  c = R.astype(b, "int64")  d = R.multiply(c, Mul)  e = R.add(d, rnd)
    f = R.right_shift(e, Sh)  g = R.clip(f, lo, hi)  y = R.astype(g, "int8" | "uint8")        # y: [1, M, Ho, Wo]

After::

    xp = R.nn.pad(R.permute_dims(x, [0, 2, 3, 1]), [0, 0, pt, pb, pl, pr, 0, 0])  # NHWC; zero = the real zero
    s  = R.stack([xp[:, i::sh, j::sw, :] (Ho x Wo) for i < kh, j < kw], axis=3)   # [1, Ho, Wo, kh*kw, C]
    p  = R.reshape(s, [Ho*Wo, kh*kw*C])                                           # im2col, (i, j, c) order
    a' = R.matmul(p, W.transpose(0, 2, 3, 1).reshape(M, kh*kw*C).T, out_dtype="int32")   # [Ho*Wo, M]
    ... the same chain on a', constants reshaped to [M] ...                        # y' : [Ho*Wo, M]
    y  = R.permute_dims(R.reshape(y', [1, Ho, Wo, M]), [0, 3, 1, 2])

Channels last, so each copy of the im2col moves ``C`` contiguous bytes (the channel-first version gathered
every element with a stride of 2 and ran at ~0.6 GB/s on TVM's untuned loops: 8 ms of the Conformer's 48).
Exact, not approximate: ``a'[ho*Wo + wo, m] = sum_{i,j,c} xp[sh*ho + i, sw*wo + j, c] * W[m, c, i, j] = a[m, ho, wo]``
(integer sums in any order), and every chain op is elementwise with a per-channel constant, so applying it
before or after the layout change gives the same integers.  An input that is the previous rewritten layer's
output (its NHWC -> NCHW transpose), possibly times a tensor with one channel (``relax_passes.time_mask``'s
mask), is read in NHWC directly.  Anything else (other layouts, groups, dilation,
non-constant weights, a chain with a second user) is left as it is.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from relax_passes._util import UseIndex, call_op_name, const_value, copy_module, finish_rewrite

__all__ = ["Conv2dAsMatmul", "conv2d_as_matmul"]

_BINARY = ("add", "multiply", "right_shift")


def _ints(xs):
    return [int(v) for v in xs]


def _conv2d(call):
    """``dict`` of the conv2d's geometry when it is one this pass rewrites, else None."""
    a = call.attrs
    x, w = call.args
    W = const_value(w)
    xt = x.ty
    if (W is None or W.dtype != np.int8 or W.ndim != 4 or not isinstance(xt, relax.TensorType)
            or xt.dtype not in ("int8", "uint8") or xt.ndim != 4 or str(a.out_dtype) != "int32"
            or int(a.groups) != 1 or str(a.data_layout) != "NCHW" or str(a.kernel_layout) != "OIHW"
            or str(a.out_layout) not in ("NCHW", "") or _ints(a.dilation) != [1, 1]):
        return None
    try:
        N, C, H, Wd = _ints(xt.shape)
        _, _, Ho, Wo = _ints(call.ty.shape)
    except Exception:  # symbolic shape
        return None
    if N != 1 or W.shape[1] != C:
        return None
    return dict(C=C, H=H, W=Wd, Ho=Ho, Wo=Wo, M=int(W.shape[0]), kh=int(W.shape[2]), kw=int(W.shape[3]),
                strides=_ints(a.strides), padding=_ints(a.padding), weight=W)


def _per_channel(arr: np.ndarray, M: int):
    """``[1, M, 1, 1]`` / ``[M, 1, 1]`` / scalar constant -> the same values for a ``[Ho*Wo, M]`` tensor, else None."""
    if arr.size == 1:
        return arr.reshape(())
    shape = tuple(arr.shape)
    if shape in ((1, M, 1, 1), (M, 1, 1)):
        return np.ascontiguousarray(arr.reshape(M))
    return None


def _chain(conv_var, idx: UseIndex):
    """The requantize chain after ``conv_var``: ``[(var, value, new_const | None), ...]`` ending in an int8/uint8
    cast, each var used only by the next op; None when the layer does not end like that."""
    out, cur, M = [], conv_var, int(conv_var.ty.shape[1])
    while True:
        var = idx.only_user(cur)
        if var is None:
            return None
        value = idx.value[var]
        op = call_op_name(value)
        if op in _BINARY:
            lhs, rhs = value.args
            if not lhs.same_as(cur):
                return None
            c = const_value(rhs)
            c = None if c is None else _per_channel(c, M)
            if c is None:
                return None
            out.append((var, value, c))
        elif op in ("astype", "clip"):
            out.append((var, value, None))
            if op == "astype" and str(var.ty.dtype) in ("int8", "uint8"):
                return out
        else:
            return None
        cur = var


@relax.expr_functor.mutator
class _Rewriter(relax.PyExprMutator):
    def __init__(self, mod, plan):
        super().__init__(mod)
        self.plan = plan  # final var of a chain -> (x, geometry, chain)

    def _nhwc_source(self, x):
        """The NHWC tensor when ``x`` (already visited) is ``permute_dims(t, [0, 3, 1, 2])``, else None."""
        src = self.lookup_binding(x) if isinstance(x, relax.Var) else None
        if (src is not None and call_op_name(src) == "permute_dims" and src.attrs.axes is not None
                and _ints(src.attrs.axes) == [0, 3, 1, 2]):
            return src.args[0]
        return None

    def _masked_nhwc(self, mul):
        """``multiply(t, m)`` with ``t`` an NHWC -> NCHW transpose and ``m`` rank 4 with one channel -> the same
        product in NHWC, else None."""
        for t, m in (mul.args, mul.args[::-1]):
            u = self._nhwc_source(t)
            mt = m.ty if hasattr(m, "ty") else None
            if u is not None and isinstance(mt, relax.TensorType) and mt.ndim == 4 and mt.shape is not None \
                    and int(mt.shape[1]) == 1:
                emit = self.builder_.emit
                return emit(relax.op.multiply(u, emit(relax.op.permute_dims(m, [0, 2, 3, 1]))))
        return None

    def visit_var_binding_(self, binding):
        p = self.plan.get(binding.var)
        if p is None:
            return super().visit_var_binding_(binding)
        x, g, chain = p
        emit = self.builder_.emit
        C, M, kh, kw, Ho, Wo = g["C"], g["M"], g["kh"], g["kw"], g["Ho"], g["Wo"]
        (sh, sw), (pt, pl, pb, pr) = g["strides"], g["padding"]
        x = self.visit_expr(x)
        # channels last: every copy below moves C contiguous bytes (in (c, i, j) column order each patch
        # element was a stride-2 gather; TVM's untuned loops then ran the im2col at ~0.6 GB/s)
        nhwc = self._nhwc_source(x)
        if nhwc is not None:
            xt = nhwc  # x is a previous layer's NHWC -> NCHW transpose (the layer below): skip both
        else:
            src = self.lookup_binding(x) if isinstance(x, relax.Var) else None
            masked = self._masked_nhwc(src) if src is not None and call_op_name(src) == "multiply" else None
            # x = that transpose times a tensor broadcast over channels (the time mask of relax_passes.time_mask):
            # multiply in NHWC instead (elementwise: same integers), so the transpose round trip is skipped too
            xt = masked if masked is not None else emit(relax.op.permute_dims(x, [0, 2, 3, 1]))  # [1, H, W, C]
        xp = emit(relax.op.nn.pad(xt, [0, 0, pt, pb, pl, pr, 0, 0], pad_value=0.0)) if (pt or pl or pb or pr) else xt
        cols = [emit(relax.op.strided_slice(xp, axes=[1, 2], begin=[i, j], end=[i + sh * (Ho - 1) + 1,
                                                                              j + sw * (Wo - 1) + 1],
                                            strides=[sh, sw]))
                for i in range(kh) for j in range(kw)]
        s = emit(relax.op.stack(cols, axis=3))  # [1, Ho, Wo, kh*kw, C]
        patches = emit(relax.op.reshape(s, [Ho * Wo, kh * kw * C]))  # im2col, (i, j, c) order
        Wm = np.ascontiguousarray(g["weight"].transpose(0, 2, 3, 1).reshape(M, kh * kw * C).T)  # [(i, j, c), M]
        y = emit(relax.op.matmul(patches, relax.const(Wm, "int8"), out_dtype="int32"))
        for _, value, c in chain:
            op = call_op_name(value)
            if op in _BINARY:
                y = emit(getattr(relax.op, op)(y, relax.const(c, str(c.dtype))))  # const() alone makes int64 int32
            elif op == "astype":
                y = emit(relax.op.astype(y, value.attrs.dtype))
            else:  # clip: same bounds
                y = emit(relax.Call(value.op, [y] + list(value.args[1:]), value.attrs))
        new = relax.op.permute_dims(relax.op.reshape(y, [1, Ho, Wo, M]), [0, 3, 1, 2])
        self.builder_.emit_normalized(relax.VarBinding(binding.var, self.builder_.normalize(new)))


def conv2d_as_matmul(mod: tvm.IRModule, func_name: str = "main") -> tuple[tvm.IRModule, list[dict]]:
    """``(rewritten module, [record per replaced conv2d])`` (module doc); ``mod`` is not changed."""
    gv = mod.get_global_var(func_name)
    func = mod[gv]
    replaced = []
    idx = UseIndex(func)
    plan = {}
    for b in idx.bindings:
        if call_op_name(b.value) != "nn.conv2d":
            continue
        g = _conv2d(b.value)
        chain = _chain(b.var, idx) if g is not None else None
        if chain is None:
            continue
        plan[chain[-1][0]] = (b.value.args[0], g, chain)
        replaced.append({"var": str(b.var.name), "C": g["C"], "M": g["M"], "Ho": g["Ho"], "Wo": g["Wo"],
                         "kernel": (g["kh"], g["kw"]), "strides": tuple(g["strides"])})
    if not plan:
        return mod, replaced
    return finish_rewrite(_Rewriter(copy_module(mod), plan), func, gv), replaced  # the old conv2d and chain


@tvm.transform.module_pass(opt_level=0, name="Conv2dAsMatmul")
class Conv2dAsMatmul:
    """Module pass: :func:`conv2d_as_matmul` (int8 conv2d + requantize chain -> im2col + matmul + chain)."""

    def __init__(self, func_name: str = "main"):
        self.func_name = func_name

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        return conv2d_as_matmul(mod, self.func_name)[0]
