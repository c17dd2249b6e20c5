"""ElementwiseToTable: an element-wise integer function of one 8-bit tensor becomes a 256-entry table lookup.

Why: the Conformer's integer Swish, sigmoid and GLU gate are I-BERT polynomial kernels of 20-40 int64
ops per element, one of them a division by a run-time value (``round(qmax one / (one + e))``) that no CPU
vectorises: ~19 ms of conformer-ctc-small's 80 ms at 10 s on x86.  Their input is an int8 (or uint8)
activation, so the whole chain takes at most 256 distinct inputs: evaluating it once per possible input at
compile time, with the numpy integer reference (:func:`relax_passes.reference.run_reference`, the oracle the
build is checked against), and gathering at run time gives the same integers for every input.  It stays
integer-only: the run-time work is an int32 index add and an integer load.

Before (``x`` int8/uint8; every op element-wise; every other operand a one-element integer constant; the
intermediates used only inside the chain; ``y`` its one value used outside)::

    a = R.astype(x, "int64"); b = R.multiply(a, c0); ...; y = R.astype(.., "int8")     # >= min_ops ops

After::

    i = R.add(R.astype(x, "int32"), 128)                   # 0 for uint8
    y = R.take(table, i, axis=0, mode="clip")             # table: y's dtype, [256], = chain(-128 .. 127)

Element-wise ops: ``astype``, ``add``, ``subtract``, ``multiply``, ``right_shift``, ``left_shift``,
``floor_divide``, ``maximum``, ``minimum``, ``clip``.  A chain that the reference cannot evaluate on the
whole input range (an overflow it reports for an input the model never produces) is left alone, as is one
with fewer than ``min_ops`` ops (a lookup does not beat 2-3 vectorised ops).  Chains over two tensors (GLU's
``a * sigmoid(b)``) keep their multiply: the ``b``-only part (the sigmoid) becomes the table.
``pass_obj.replaced`` lists the replaced chains.  Usable in any ``tvm.transform.Sequential``; the x86
targets run it (:mod:`zsq_tvm.targets`), after the conv/matmul kernel passes.
"""

from __future__ import annotations

import heapq

import numpy as np
import tvm
from tvm import relax

from zsq_tvm.core import intops

from relax_passes._util import UseIndex, call_op_name, const, const_value, copy_module, finish_rewrite
from relax_passes.reference import run_reference

__all__ = ["ElementwiseToTable"]

# the element-wise integer ops: the binary op table of the integer algorithms, casts and clips
_ELEMENTWISE = {"astype", *intops.RELAX_BINARY, "clip"}
_SOURCES = {"int8": -128, "uint8": 0}  # dtype -> first value of its 256
_NOT_TENSOR = (relax.ShapeExpr, tvm.ir.prim.expr.IntImm, tvm.ir.prim.expr.FloatImm)  # e.g. clip's bounds


def _scalar_const(e) -> bool:
    c = const_value(e)
    return c is not None and c.size == 1 and c.dtype.kind in "iu"


def _closure(idx: UseIndex, pos: dict, x):
    """Bindings (in order) computed element-wise from ``x`` alone: grown through the users of the members,
    in binding order (a user's member operands all come before it)."""
    members, chain = {x}, []
    heap = [(pos[u], id(u), u) for u in set(idx.users.get(x, []))]
    heapq.heapify(heap)
    seen = {u for _, _, u in heap}
    while heap:
        _, _, var = heapq.heappop(heap)
        v = idx.value[var]
        if call_op_name(v) not in _ELEMENTWISE or not isinstance(var.ty, relax.TensorType):
            continue
        tensors = [a for a in v.args if not isinstance(a, _NOT_TENSOR)]
        if all((isinstance(a, relax.Var) and a in members) or _scalar_const(a) for a in tensors):
            members.add(var)
            chain.append(idx.bindings[pos[var]])
            for u in idx.users.get(var, []):
                if u not in seen:
                    seen.add(u)
                    heapq.heappush(heap, (pos[u], id(u), u))
    return chain


def _table(chain, x, out, lo: int):
    """The chain evaluated by the integer reference on every value ``lo .. lo + 255`` of ``x``'s dtype."""
    nd = len(x.ty.shape)
    shape = (1,) * (nd - 1) + (256,)  # one-element constants of rank <= nd broadcast without a shape change
    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType(shape, str(x.ty.dtype)))
    with bb.function("main", [xv]):
        with bb.dataflow():
            m = {x: xv}
            for b in chain:
                v = b.value
                args = [m.get(a, a) if isinstance(a, relax.Var) else a for a in v.args]
                m[b.var] = bb.emit(relax.Call(v.op, args, v.attrs))
            o = bb.emit_output(m[out])
        bb.emit_func_output(o)
    dom = np.arange(lo, lo + 256).astype(str(x.ty.dtype)).reshape(shape)
    return np.ascontiguousarray(np.asarray(run_reference(bb.get(), dom)).reshape(256))


@relax.expr_functor.mutator
class _Rewriter(relax.PyExprMutator):
    def __init__(self, mod, plan):
        super().__init__(mod)
        self.plan = plan  # output var -> (x, table, offset)

    def visit_var_binding_(self, binding):
        p = self.plan.get(binding.var)
        if p is None:
            return super().visit_var_binding_(binding)
        x, table, off = p
        i = self.builder_.emit(relax.op.astype(self.visit_expr(x), "int32"))
        if off:
            i = self.builder_.emit(relax.op.add(i, const(np.int32(off), "int32")))
        # "clip": the index is in [0, 255] by construction; clip costs two vector ops and keeps TVM from
        # warning that "fast" mode trusts the indices
        new = relax.op.take(const(table, str(table.dtype)), i, axis=0, mode="clip")
        self.builder_.emit_normalized(relax.VarBinding(binding.var, self.builder_.normalize(new)))


def elementwise_to_table(mod: tvm.IRModule, func_name: str = "main", min_ops: int = 6):
    """Every element-wise integer chain of one int8/uint8 tensor (at least ``min_ops`` ops, one output) ->
    ``R.take`` of its 256-entry table; ``(module, replaced)`` with one record per chain."""
    gv = mod.get_global_var(func_name)
    func = mod[gv]
    replaced = []
    idx = UseIndex(func)
    pos = {b.var: i for i, b in enumerate(idx.bindings)}
    plan, taken = {}, set()
    for x in list(func.params) + [b.var for b in idx.bindings]:
        t = x.ty
        if x in taken or not isinstance(t, relax.TensorType) or str(t.dtype) not in _SOURCES or t.ndim < 1:
            continue
        chain = _closure(idx, pos, x)
        inside = {b.var for b in chain}
        outs = [v for v in inside if v in idx.outs or any(u not in inside for u in idx.users.get(v, []))]
        if len(chain) < min_ops or len(outs) != 1 or str(outs[0].ty.dtype)[:3] not in ("int", "uin"):
            continue
        out = outs[0]
        chain = [b for b in chain if _needed(b, out, inside, idx)]
        if len(chain) < min_ops:
            continue
        try:
            table = _table(chain, x, out, _SOURCES[str(t.dtype)])
        except Exception:  # e.g. an overflow the reference reports for an input the model never produces
            continue
        plan[out] = (x, table, -_SOURCES[str(t.dtype)])
        taken |= {b.var for b in chain}
        replaced.append({"var": str(out.name), "input": str(x.name), "ops": len(chain),
                              "dtype": str(table.dtype)})
    if not plan:
        return mod, replaced
    return finish_rewrite(_Rewriter(copy_module(mod), plan), func, gv), replaced


@tvm.transform.module_pass(opt_level=0, name="ElementwiseToTable")
class ElementwiseToTable:
    """:func:`elementwise_to_table` as a module pass."""

    def __init__(self, func_name: str = "main", min_ops: int = 6):
        self.func_name = func_name
        self.min_ops = int(min_ops)

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        return elementwise_to_table(mod, self.func_name, self.min_ops)[0]


def _needed(b, out, inside, idx) -> bool:
    """``b`` contributes to ``out`` (the closure may also hold values that only feed other members' dead ends;
    with one output every member reaches it, but keep the evaluation to what ``out`` needs)."""
    if b.var.same_as(out):
        return True
    stack, seen = [b.var], set()
    while stack:
        v = stack.pop()
        if v.same_as(out):
            return True
        if v in seen:
            continue
        seen.add(v)
        stack.extend(u for u in idx.users.get(v, []) if u in inside)
    return False
