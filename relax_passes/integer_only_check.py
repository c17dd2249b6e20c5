"""IntegerOnlyCheck: prove the lowered module computes nothing in floating point (paper §2.2).

Input: the *lowered* module, i.e. after ``relax.transform.LegalizeOps()`` and fusion
(:func:`relax_passes.lowering.lower`), where every computation is a TIR PrimFunc called by
``R.call_tir`` from ``main``.  Output: the same module, unchanged, or
:class:`zsq_tvm.core.errors.IntegerOnlyViolation` naming each offending PrimFunc, the TIR node kind
(load, store, cast, arithmetic, intrinsic call) and its dtype.

Allowed float: exactly the two boundary kernels :class:`Quantize` emits, recognised by the
PrimFunc attribute ``"zsq.role"`` -- and only where they belong: ``"input_quantize"`` must read
a parameter of ``main`` and store integers; ``"output_dequantize"`` must read integers and its
result must be returned by ``main``.  A role-tagged kernel anywhere else is a violation too, so
renaming or retagging cannot smuggle float math into the middle of the graph.

A module that was not lowered is lowered first by :func:`check_integer_only` (``lower=True``);
Relax-level ops left un-legalized with a float result are reported as well.

Usage::

    lowered = relax_passes.lowering.lower(qmod)
    lowered = IntegerOnlyCheck()(lowered)            # raises on violation; .report afterwards
    report = check_integer_only(qmod)                # dict for `zsq check`
"""

from __future__ import annotations

import collections

import tvm
import tvm_ffi
from tvm import relax, tirx

from zsq_tvm.core.errors import IntegerOnlyViolation

from relax_passes._util import bindings, call_op_name, dtype_of

__all__ = ["IntegerOnlyCheck", "check_integer_only", "assert_integer_only", "format_violations"]

# a Python pass raising inside TVM's pass infrastructure crosses the FFI; registering the class
# lets TVM re-raise it as IntegerOnlyViolation (not a generic RuntimeError) on the Python side
try:
    tvm_ffi.register_error("IntegerOnlyViolation", IntegerOnlyViolation)
except Exception:  # pragma: no cover - already registered (module reloaded)
    pass

ROLE_ATTR = "zsq.role"
_ROLES = ("input_quantize", "output_dequantize")
_COMPUTE = {"TensorLoad": "load", "BufferLoad": "load", "BufferStore": "store", "Cast": "cast",
            "Add": "add", "Sub": "sub", "Mul": "mul", "Div": "div", "FloorDiv": "floordiv", "FloorMod": "floormod",
            "Mod": "mod", "Min": "min", "Max": "max", "Call": "call", "Select": "select", "Let": "let",
            "RShift": "shift", "LShift": "shift", "Reduce": "reduce"}
_RELAX_CALLS_OK = ("call_tir", "call_tir_inplace", "call_dps_packed", "call_packed", "call_pure_packed")


def _node_dtype(node) -> str | None:
    if type(node).__name__ == "BufferStore":
        return str(node.buffer.dtype)
    ty = getattr(node, "ty", None)
    return str(ty) if isinstance(ty, tvm.ir.PrimType) else None


def _is_float(dtype) -> bool:
    return dtype is not None and ("float" in dtype)


def _scan_primfunc(func: tirx.PrimFunc):
    """Per-kind counts of computing nodes: {(kind, dtype): n}."""
    counts: collections.Counter = collections.Counter()

    def visit(node):
        kind = _COMPUTE.get(type(node).__name__)
        if kind is None:
            return
        if kind == "call":
            kind = f"call {node.op.name}" if isinstance(node.op, tvm.ir.Op) else "call"
        counts[(kind, _node_dtype(node))] += 1

    tvm_ffi.structural_walk(func.body, visit)
    return counts


def _role(func) -> str | None:
    attrs = func.attrs
    if attrs is not None and ROLE_ATTR in attrs:
        return str(attrs[ROLE_ATTR])
    return None


def check_integer_only(mod: tvm.IRModule, lower: bool = True) -> dict:
    """Report on float computation in ``mod`` (lowered first when it still has Relax ops).

    Returns ``{"ok", "violations": [{"func", "op", "dtype", "count"}...], "prim_funcs",
    "boundary": {"input_quantize": [...], "output_dequantize": [...]}, "integer_ops": {kind: n},
    "float_ops_in_boundary": {kind: n}}``.
    """
    if lower and _has_relax_ops(mod):
        from relax_passes.lowering import lower as _lower
        mod = _lower(mod)
    violations, boundary = [], {r: [] for r in _ROLES}
    int_ops: collections.Counter = collections.Counter()
    float_boundary: collections.Counter = collections.Counter()
    n_prim = 0
    roles = {}
    for gv, func in mod.functions.items():
        if not isinstance(func, tirx.PrimFunc):
            continue
        n_prim += 1
        role = _role(func)
        counts = _scan_primfunc(func)
        if role in _ROLES:
            roles[gv.name_hint] = role
            boundary[role].append(gv.name_hint)
            stores = {dt for (k, dt) in counts if k == "store"}
            loads = {dt for (k, dt) in counts if k == "load"}
            if role == "input_quantize" and any(_is_float(d) for d in stores):
                violations.append({"func": gv.name_hint, "op": "store", "dtype": "float (input quantize must emit integers)", "count": 1})
            if role == "output_dequantize" and any(_is_float(d) for d in loads):
                violations.append({"func": gv.name_hint, "op": "load", "dtype": "float (output dequantize must read integers)", "count": 1})
            for (k, dt), n in counts.items():
                if _is_float(dt):
                    float_boundary[k] += n
            continue
        for (k, dt), n in sorted(counts.items(), key=lambda kv: str(kv[0])):
            if _is_float(dt):
                violations.append({"func": gv.name_hint, "op": k, "dtype": dt, "count": n})
            elif dt is not None and k not in ("load", "store"):
                int_ops[k] += n
    violations.extend(_check_relax(mod, roles))
    return {
        "ok": not violations,
        "violations": violations,
        "prim_funcs": n_prim,
        "boundary": boundary,
        "integer_ops": dict(int_ops),
        "float_ops_in_boundary": dict(float_boundary),
    }


def _has_relax_ops(mod) -> bool:
    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            for b in bindings(func):
                op = call_op_name(b.value)
                if op is not None and op not in _RELAX_CALLS_OK:
                    return True
    return False


def _check_relax(mod, roles) -> list[dict]:
    """Float Relax ops left un-lowered, and boundary kernels used away from the boundary."""
    out = []
    for gv, func in mod.functions.items():
        if not isinstance(func, relax.Function):
            continue
        params = list(func.params)
        ret = func.body.body
        returned = list(ret.fields) if isinstance(ret, relax.Tuple) else [ret]
        for b in bindings(func):
            op = call_op_name(b.value)
            if op is None:
                continue
            if op == "call_tir":
                callee = b.value.args[0]
                role = roles.get(callee.name_hint)
                if role == "input_quantize":
                    srcs = list(b.value.args[1].fields)
                    if not all(any(s.same_as(p) for p in params) for s in srcs):
                        out.append({"func": callee.name_hint, "op": "input_quantize not applied to a model input",
                                    "dtype": dtype_of(b.var), "count": 1})
                elif role == "output_dequantize":
                    if not any(b.var.same_as(r) for r in returned):
                        out.append({"func": callee.name_hint, "op": "output_dequantize result is not a model output",
                                    "dtype": dtype_of(b.var), "count": 1})
                continue
            if op in _RELAX_CALLS_OK:
                continue
            if _is_float(dtype_of(b.var)) or any(_is_float(dtype_of(a)) for a in b.value.args
                                                 if isinstance(a, relax.Var)):
                out.append({"func": f"{gv.name_hint}/{b.var.name}", "op": f"relax op {op}",
                            "dtype": dtype_of(b.var), "count": 1})
    return out


def format_violations(report: dict, limit: int = 10) -> str:
    v = report["violations"]
    shown = "; ".join(f"{x['func']}: {x['op']} ({x['dtype']}) x{x['count']}" for x in v[:limit])
    return shown + (f"; ... (+{len(v) - limit})" if len(v) > limit else "")


def assert_integer_only(mod: tvm.IRModule, lower: bool = True) -> dict:
    """:func:`check_integer_only`, raising IntegerOnlyViolation on any violation; returns the report."""
    report = check_integer_only(mod, lower=lower)
    if not report["ok"]:
        raise _violation(report)
    return report


def _violation(report: dict) -> IntegerOnlyViolation:
    return IntegerOnlyViolation(
        f"float computation outside the input quantize / output dequantize: {format_violations(report)}",
        "quantize the model with relax_passes.Quantize (every op between input and output must be "
        "integer) and do not edit the lowered module")


@tvm.transform.module_pass(opt_level=0, name="IntegerOnlyCheck")
class IntegerOnlyCheck:
    """Raise IntegerOnlyViolation if the (lowered) module computes in float outside the boundary.

    ``lower=False`` inspects ``mod`` as given (un-legalized float Relax ops count as violations);
    the default lowers a copy first when needed.  ``self.report`` holds the last report.
    """

    def __init__(self, lower: bool = True):
        self.lower = lower
        self.report: dict = {}

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        self.report = check_integer_only(mod, lower=self.lower)
        if not self.report["ok"]:
            raise _violation(self.report)
        return mod
