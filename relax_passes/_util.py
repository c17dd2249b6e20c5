"""Small helpers shared by the passes: binding walks, stable tensor names, constant folding.

Stable tensor names are how calibration ranges (a plain JSON dict) find their tensors again in
:class:`relax_passes.Quantize`: both enumerate the bindings of the same (BN-folded) ``main`` in
order and name each op result ``"<op>#<k>"`` (``k`` counts that op: ``"nn.conv1d#3"``,
``"add#7"``, ``"nn.relu#2"``), each item of a ``split`` ``"split#<k>[i]"``, and each parameter
``"input:<name>"``.  Var names (``lv12``) are not
used because importers and passes renumber them freely.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

__all__ = ["UseIndex", "bindings", "call_op_name", "tensor_names", "resolve_const", "const_value", "const", "main_function", "tensor_ty", "dtype_of", "shape_of", "is_tensor_const"]


def main_function(mod: tvm.IRModule, name: str = "main") -> relax.Function:
    for gv, func in mod.functions.items():
        if gv.name_hint == name and isinstance(func, relax.Function):
            return func
    raise ValueError(f"module has no Relax function {name!r}")


def bindings(func: relax.Function):
    """All bindings of ``func``'s body in program order (across binding blocks)."""
    body = func.body
    if not isinstance(body, relax.SeqExpr):
        return []
    return [b for block in body.blocks for b in block.bindings]


def call_op_name(value) -> str | None:
    """``"nn.conv1d"`` for ``R.nn.conv1d(...)`` (the ``relax.`` prefix dropped); None otherwise."""
    if isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op):
        name = value.op.name
        return name[len("relax."):] if name.startswith("relax.") else name
    return None


class UseIndex:
    """Who uses each var of ``func``: ``value[var]`` is its bound expression, ``users[var]`` the vars whose
    bindings mention it, and :meth:`only_user` the single user of a var the function does not return (the
    condition for folding a chain of bindings into one kernel call)."""

    def __init__(self, func: relax.Function):
        self.bindings = bindings(func)
        self.value = {b.var: b.value for b in self.bindings}
        self.users: dict = {}
        for b in self.bindings:
            for v in relax.analysis.free_vars(b.value):
                self.users.setdefault(v, []).append(b.var)
        self.outs = set(relax.analysis.free_vars(func.body.body))

    def only_user(self, var):
        u = self.users.get(var, [])
        return u[0] if len(u) == 1 and var not in self.outs else None


def tensor_ty(expr):
    ty = expr.ty
    return ty if isinstance(ty, relax.TensorType) else None


def tensor_names(func: relax.Function) -> dict:
    """Map each float-or-int *tensor* Var of ``func`` (params + op results) to its stable name."""
    names = {}
    for p in func.params:
        names[p] = f"input:{p.name}"
    counts: dict[str, int] = {}
    tuples: dict = {}  # tuple-producing op (split) -> its name; items are "<name>[i]"
    for b in bindings(func):
        v = b.value
        if isinstance(v, relax.TupleGetItem) and v.tuple_value in tuples and tensor_ty(b.var) is not None:
            names[b.var] = f"{tuples[v.tuple_value]}[{int(v.index)}]"
            continue
        op = call_op_name(v)
        if op is None:
            continue
        if tensor_ty(b.var) is None:
            if op == "split":
                k = counts.get(op, 0)
                counts[op] = k + 1
                tuples[b.var] = f"{op}#{k}"
            continue
        k = counts.get(op, 0)
        counts[op] = k + 1
        names[b.var] = f"{op}#{k}"
    return names


def is_tensor_const(expr) -> bool:
    """A tensor Constant (in this TVM, scalar PrimValues such as IntImm also subclass Constant)."""
    return isinstance(expr, tvm.ir.expr.Constant) and hasattr(expr.value, "numpy")


def const_value(expr):
    """numpy value of a tensor Constant, else None."""
    return expr.value.numpy() if is_tensor_const(expr) else None


_CONST_OPS = {"reshape", "permute_dims", "astype", "squeeze", "expand_dims"}


def resolve_const(expr, var_values: dict):
    """numpy value of ``expr`` if it is a Constant or a chain of shape/dtype ops on one, else None.

    Importers bind biases as ``reshape(const, [1, C, 1])``; evaluating these few ops here keeps the
    passes independent of ``FoldConstant`` (which compiles a kernel per folded op).
    """
    seen = 0
    while isinstance(expr, relax.Var) and expr in var_values and seen < 64:
        expr = var_values[expr]
        seen += 1
    if isinstance(expr, tvm.ir.expr.Constant):
        return expr.value.numpy()
    op = call_op_name(expr)
    if op not in _CONST_OPS:
        return None
    src = resolve_const(expr.args[0], var_values)
    if src is None:
        return None
    out_ty = expr.ty
    if op == "astype":
        return src.astype(out_ty.dtype)
    if op == "permute_dims":
        axes = expr.attrs.axes
        return np.transpose(src, None if axes is None else [int(a) for a in axes])
    shape = [int(s) for s in out_ty.shape] if out_ty.shape is not None else None
    if shape is None:
        return None
    return src.reshape(shape)


def const(value, dtype: str) -> tvm.ir.expr.Constant:
    """``relax.const`` with the dtype spelled out (it silently narrows int64 to int32 otherwise)."""
    return relax.const(np.asarray(value).astype(dtype), dtype)


def dtype_of(expr) -> str | None:
    """dtype string (``"float32"``) of a tensor-typed expr, else None."""
    ty = tensor_ty(expr)
    return None if ty is None else str(ty.dtype)


def shape_of(expr) -> tuple | None:
    """Static shape of a tensor-typed expr as ints (symbolic dims stay PrimExprs), else None."""
    ty = tensor_ty(expr)
    if ty is None or ty.shape is None:
        return None
    return tuple(int(s) if isinstance(s, tvm.tirx.IntImm) else s for s in ty.shape)


def copy_module(mod: tvm.IRModule) -> tvm.IRModule:
    """A shallow copy of ``mod`` (same functions, attrs, global infos) for a rewriter's block builder: a
    module pass must not change the module it was given."""
    return tvm.IRModule({g: f for g, f in mod.functions.items()}, attrs=mod.attrs, global_infos=mod.global_infos)


def finish_rewrite(rw, func: relax.Function, gv) -> tvm.IRModule:
    """Run the mutator ``rw`` (built on :func:`copy_module` of the module) over ``func``, bind the result to
    ``gv`` in the mutator's module and drop the bindings nothing uses any more (the replaced ops)."""
    new = rw.visit_expr(func)
    out = rw.builder_.get()
    out[gv] = new
    return relax.transform.DeadCodeElimination([gv.name_hint])(out)
