"""SplitProjections: a projection by a constant whose result is only split along its output-feature axis
becomes one projection per section.

Why: attention layers project Q, K and V with one fused weight ``[K, 3 M]`` and split the int32 result, and
a Conformer's convolution module doubles its channels with one pointwise conv and splits them for the GLU;
each section then has its own requantize chain.  Per section, ``projection -> add -> requantize`` is a
linear layer / pointwise conv that :class:`zsq_tvm.backends.x86.offload_pointwise.X86VnniPointwise` turns into one
VNNI kernel; the fused forms are left to TVM's default lowering (70 ms of conformer-ctc-small's 170 ms at
10 s, x86).

Before (``W`` a constant; the optional ``add`` of a per-feature constant ``bias``; every intermediate has
this one user; the split on the feature axis: last for a matmul, 1 for an NCW conv1d)::

    m = R.matmul(x, W, out_dtype="int32")            # W [K, N]          (or)
    m = R.nn.conv1d(x, W, groups=1, ...)             # W [N, K, k] OIW, NCW
    [m = R.add(m, bias)]                             # bias [N] / [1, N, 1] / scalar
    s = R.split(m, indices_or_sections=[n1, ...], axis=feature)
    y0 = s[0];  y1 = s[1];  ...

After (section ``i`` = features ``[n_i, n_{i+1})``)::

    y0 = [R.add(] R.matmul(x, W[:, n0:n1]) [, bias[n0:n1])];  ...       (conv1d: W[n0:n1], same attributes)

Exact: output feature ``j`` depends only on feature ``j`` of ``W`` and ``bias``.  The tuple ``s`` must be
used only through ``s[i]`` (anything else is left as it is).  :func:`split_projections` returns the rewritten
projections.  Usable in any ``tvm.transform.Sequential``; the ``host`` VNNI pipeline (:mod:`zsq_tvm.targets`)
runs it before the kernel passes.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from relax_passes._util import UseIndex, call_op_name, const_value, copy_module, finish_rewrite

__all__ = ["SplitProjections", "split_projections"]


def _bounds(split, N: int):
    """Section boundaries ``[0, n1, ..., N]`` of ``R.split`` on an axis of length ``N``, else None."""
    ios = split.attrs.indices_or_sections
    if isinstance(ios, (int, tvm.tirx.IntImm)):
        k = int(ios)
        if k < 1 or N % k:
            return None
        return [N // k * i for i in range(k + 1)]
    b = [0] + [min(max(int(i), 0), N) for i in ios] + [N]
    return b if all(x <= y for x, y in zip(b, b[1:])) else None


def _feature_bias(c, N: int, conv: bool):
    """A bias constant as ``[N]`` plus a function giving section ``[a, b)`` in its own shape, else None."""
    if c is None:
        return None
    if c.size == 1:
        return lambda a, b: c
    shape = (1, N, 1) if conv else None
    if conv and c.shape == shape:
        return lambda a, b: np.ascontiguousarray(c[:, a:b, :])
    if not conv and c.shape[-1:] == (N,) and c.size == N:
        return lambda a, b: np.ascontiguousarray(c[..., a:b])
    return None


@relax.expr_functor.mutator
class _Rewriter(relax.PyExprMutator):
    def __init__(self, mod, plan):
        super().__init__(mod)
        self.plan = plan  # TupleGetItem var -> (projection call, W section, bias section or None)

    def visit_var_binding_(self, binding):
        p = self.plan.get(binding.var)
        if p is None:
            return super().visit_var_binding_(binding)
        call, Wi, bi = p
        x = self.visit_expr(call.args[0])
        new = relax.Call(call.op, [x, relax.const(Wi, str(Wi.dtype))], call.attrs)
        if bi is not None:
            new = relax.op.add(self.builder_.emit(new), relax.const(bi, str(bi.dtype)))
        self.builder_.emit_normalized(relax.VarBinding(binding.var, self.builder_.normalize(new)))


def split_projections(mod: tvm.IRModule, func_name: str = "main") -> tuple[tvm.IRModule, list[dict]]:
    """``(rewritten module, [record per split projection])`` (module doc); ``mod`` is not changed."""
    gv = mod.get_global_var(func_name)
    func = mod[gv]
    replaced = []
    idx = UseIndex(func)
    plan = {}
    for b in idx.bindings:
        op = call_op_name(b.value)
        if op not in ("matmul", "nn.conv1d"):
            continue
        conv = op == "nn.conv1d"
        W = const_value(b.value.args[1])
        if W is None or W.ndim != (3 if conv else 2) or (conv and int(b.value.attrs.groups) != 1):
            continue
        N = int(W.shape[0] if conv else W.shape[1])
        cur, bias = b.var, None
        nxt = idx.only_user(cur)
        if nxt is not None and call_op_name(idx.value[nxt]) == "add":
            lhs, rhs = idx.value[nxt].args
            c = const_value(rhs) if lhs.same_as(cur) else const_value(lhs) if rhs.same_as(cur) else None
            bias = _feature_bias(c, N, conv)
            if bias is None:
                continue
            cur, nxt = nxt, idx.only_user(nxt)
        if nxt is None or call_op_name(idx.value[nxt]) != "split":
            continue
        split = idx.value[nxt]
        nd = len(cur.ty.shape)
        if int(split.attrs.axis) % nd != (1 if conv else nd - 1):
            continue
        bounds = _bounds(split, N)
        items = idx.users.get(nxt, [])
        if (bounds is None or nxt in idx.outs or not items
                or not all(isinstance(idx.value[u], relax.TupleGetItem) for u in items)):
            continue
        for u in items:
            i = int(idx.value[u].index)
            a_, b_ = bounds[i], bounds[i + 1]
            Wi = np.ascontiguousarray(W[a_:b_] if conv else W[:, a_:b_])
            plan[u] = (b.value, Wi, bias(a_, b_) if bias is not None else None)
        replaced.append({"var": str(b.var.name), "op": op, "sections": np.diff(bounds).tolist(),
                         "bias": bias is not None})
    if not plan:
        return mod, replaced
    return finish_rewrite(_Rewriter(copy_module(mod), plan), func, gv), replaced  # the fused projection and its split


@tvm.transform.module_pass(opt_level=0, name="SplitProjections")
class SplitProjections:
    """Module pass: :func:`split_projections` (one projection (+ bias) per section of its split)."""

    def __init__(self, func_name: str = "main"):
        self.func_name = func_name

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        return split_projections(mod, self.func_name)[0]
