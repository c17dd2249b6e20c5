"""Numpy integer reference for quantized Relax modules: the bit-exact oracle.

:func:`run_reference` interprets the dataflow bindings of a *quantized, not yet lowered* ``main``
(the output of :class:`relax_passes.Quantize`) op by op in numpy, independent of TVM's legalization
and code generation:

* ``R.call_tir`` of the two boundary kernels (recognised by the ``"zsq.role"`` attribute of the
  PrimFunc, parameters read from its ``"zsq.*"`` attributes) -> :func:`intmath.quantize` /
  :func:`intmath.dequantize`;
* ``R.nn.conv1d`` -> :func:`intmath.conv1d_int` (exact float64 BLAS, bound asserted);
* elementwise integer ops (the binary op table :data:`zsq_tvm.core.intops.RELAX_BINARY`: ``add``,
  ``subtract``, ``multiply``, ``right_shift``, ``maximum``, ``minimum``, ...; ``clip``, ``astype``) -> the numpy
  operations of :data:`zsq_tvm.core.intops.NUMPY` that the integer algorithms are written in; int32/int64 results are computed in
  int64 when an exact Python-int bound shows that cannot wrap, else in Python ints, and every result
  is checked against its dtype (integer ``astype`` too), so an overflow in the graph is reported
  (:class:`ReferenceError_`) instead of silently matching TVM's wrap.  This is the run-time twin
  of the quantize-time proof in :mod:`zsq_tvm.core.overflow`;
* ``reshape``/``permute_dims``/``squeeze``/``expand_dims``/``matmul`` -> numpy equivalents;
* for the Conformer (integer non-linearities of :mod:`zsq_tvm.core.intnonlinear`): ``nn.conv2d``
  (:func:`intmath.conv2d_int`), integer ``sum``/``max``/``min`` reductions, ``left_shift`` (checked:
  nothing may fall off the top), ``floor_divide`` by positive integers, ``concat``, ``split``,
  ``strided_slice``.

One evaluator per Relax op (``_EVALUATORS``); an op without one raises.

Any float op other than the boundary kernels raises: this is an *integer* reference.

``tvm.compile(qmod, target=relax_passes.lowering.host_target())`` run by ``relax.VirtualMachine`` must
return exactly :func:`run_reference`'s result (``np.array_equal``, not allclose).
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from relax_passes._util import bindings, call_op_name, dtype_of, main_function, shape_of

from zsq_tvm.core import intmath, intops

__all__ = ["run_reference", "ReferenceError_"]

_ROLE = "zsq.role"


class ReferenceError_(RuntimeError):
    """The module contains something the integer reference does not (and should not) execute."""


def _prim_int(e) -> int:
    v = e.value if hasattr(e, "value") else e
    return int(v.value) if hasattr(v, "value") else int(v)


_INT64_MAX = 2**63 - 1


def _absmax(a: np.ndarray) -> int:
    """max |a| as a Python int (no int64 wrap at -2^63)."""
    return max(abs(int(a.min())), abs(int(a.max()))) if a.size else 0


def _checked(res64: np.ndarray, dtype: str, what: str) -> np.ndarray:
    info = np.iinfo(dtype)
    if res64.size and (res64.min() < info.min or res64.max() > info.max):
        raise ReferenceError_(f"{what}: result overflows {dtype}")
    return res64.astype(dtype)


def _binary(op: str, a: np.ndarray, b: np.ndarray, dtype: str) -> np.ndarray:
    """A binary integer op of the op table (:data:`zsq_tvm.core.intops.RELAX_BINARY`), evaluated by the same
    numpy operation the integer algorithms use, plus the checks that make a wrap an error."""
    if not np.dtype(dtype).kind in "iu":
        raise ReferenceError_(f"float {op} in the integer graph ({dtype})")
    fn = getattr(intops.NUMPY, intops.RELAX_BINARY[op])
    a64, b64 = a.astype(np.int64), b.astype(np.int64)
    if op in ("add", "subtract", "multiply"):
        # exact Python-int bound of |result|: below 2^63 the int64 numpy result is exact (then checked
        # against the result dtype); otherwise redo it in Python ints so a wrap is reported, not copied
        fa, fb = _absmax(a64), _absmax(b64)
        worst = fa * fb if op == "multiply" else fa + fb
        if worst <= _INT64_MAX:
            return _checked(fn(a64, b64), dtype, op)
        r = fn(a64.astype(object), b64.astype(object))
        if r.size and (min(r.flat) < np.iinfo(dtype).min or max(r.flat) > np.iinfo(dtype).max):
            raise ReferenceError_(f"{op}: result overflows {dtype}")
        return r.astype(dtype)
    if op == "left_shift":  # integer LayerNorm's dynamic row shift: exact only if nothing falls off the top
        if b64.size and (int(b64.min()) < 0 or int(b64.max()) > 62):
            raise ReferenceError_("left_shift by a count outside 0..62")
        r = fn(a64, b64)
        if r.size and not np.all((r >> b64) == a64):
            raise ReferenceError_(f"left_shift: result overflows {dtype}")
        return _checked(r, dtype, op)
    if op == "floor_divide":  # integer-only non-linearities (zsq_tvm.core.intnonlinear): divisor > 0
        if b64.size and int(b64.min()) <= 0:
            raise ReferenceError_("floor_divide by a non-positive integer")
        return _checked(fn(a64, b64), dtype, op)
    return fn(a64, b64).astype(dtype)  # right_shift, maximum, minimum: within the operands' range


def _boundary(mod: tvm.IRModule, call, env_args):
    gv = call.args[0]
    pf = mod[gv]
    role = pf.attrs[_ROLE] if pf.attrs is not None and _ROLE in pf.attrs else None
    a = pf.attrs
    if role == "input_quantize":
        return intmath.quantize(env_args[0], float(a["zsq.scale"]), float(a["zsq.alpha"]), int(a["zsq.bits"]),
                                bool(int(a["zsq.unsigned"])))
    if role == "output_dequantize":
        return intmath.dequantize(env_args[0], float(a["zsq.scale"]))
    raise ReferenceError_(f"call_tir to {gv.name_hint} (no zsq.role): run the reference before lowering")


# ---------------------------------------------------------------- one evaluator per Relax op
# evaluate(call, args, out_dtype, var) -> array; ``args`` are the evaluated tensor operands
def _conv1d(v, args, out_dtype, var):
    a = v.attrs
    if out_dtype != "int32":
        raise ReferenceError_(f"conv1d {var.name} produces {out_dtype}, not int32")
    try:
        return intmath.conv1d_int(args[0], args[1], int(a.strides[0]), [int(p) for p in a.padding],
                                  int(a.dilation[0]), int(a.groups))
    except OverflowError as e:
        raise ReferenceError_(f"conv1d {var.name}: {e}") from None


def _conv2d(v, args, out_dtype, var):
    a = v.attrs
    if out_dtype != "int32" or int(a.groups) != 1:
        raise ReferenceError_(f"conv2d {var.name}: only int32 output, groups=1")
    try:
        return intmath.conv2d_int(args[0], args[1], [int(x) for x in a.strides], [int(p) for p in a.padding],
                                  [int(x) for x in a.dilation])
    except OverflowError as e:
        raise ReferenceError_(f"conv2d {var.name}: {e}") from None


def _matmul(v, args, out_dtype, var):
    x64, w64 = args[0].astype(np.int64), args[1].astype(np.int64)
    if args[0].shape[-1] * _absmax(x64) * _absmax(w64) > _INT64_MAX:
        raise ReferenceError_(f"matmul {var.name}: partial sums may overflow int64")
    return _checked(np.matmul(x64, w64), out_dtype, "matmul")


def _clip(v, args, out_dtype, var):
    lo, hi = _prim_int(v.args[1]), _prim_int(v.args[2])
    if np.dtype(out_dtype).kind not in "iu":
        raise ReferenceError_(f"float clip {var.name}")
    return intops.NUMPY.clip(args[0].astype(np.int64), lo, hi).astype(out_dtype)


def _astype(v, args, out_dtype, var):
    if np.dtype(out_dtype).kind not in "iu":
        raise ReferenceError_(f"cast to {out_dtype} at {var.name}")
    # Quantize clips before every narrowing cast, so a value out of range here is a bug: report
    # it instead of copying LLVM's truncation
    return _checked(args[0].astype(np.int64), out_dtype, f"astype {var.name}") \
        if args[0].dtype.kind in "iu" else args[0].astype(out_dtype)


def _reduce(v, args, out_dtype, var):
    op = call_op_name(v)
    if np.dtype(out_dtype).kind not in "iu":
        raise ReferenceError_(f"float {op} {var.name}")
    a = v.attrs
    axis = None if a.axis is None else tuple(int(x) for x in a.axis)
    x64 = args[0].astype(np.int64)
    fn = {"sum": np.sum, "max": np.max, "min": np.min}[op]
    r = fn(x64, axis=axis, keepdims=bool(a.keepdims))
    if op == "sum" and x64.size and _absmax(x64) * (x64.size // max(r.size, 1)) > _INT64_MAX:
        raise ReferenceError_(f"sum {var.name}: may overflow int64")
    return _checked(r, out_dtype, op)


def _split(v, args, out_dtype, var):
    ind = v.attrs.indices_or_sections
    ind = _prim_int(ind) if isinstance(ind, int) or hasattr(ind, "value") else [_prim_int(i) for i in ind]
    return tuple(np.split(args[0], ind, axis=int(v.attrs.axis)))


def _strided_slice(v, args, out_dtype, var):
    x = args[0]
    sl = [slice(None)] * x.ndim
    vals = [[_prim_int(e) for e in v.args[i].fields] for i in (1, 2, 3)]
    strides = [_prim_int(e) for e in v.args[4].fields] if len(v.args) > 4 else [1] * len(vals[0])
    for ax, b0, e0, st in zip(vals[0], vals[1], vals[2], strides):
        sl[ax] = slice(b0, min(e0, x.shape[ax]) if e0 >= 0 else e0, st)
    return x[tuple(sl)]


def _permute_dims(v, args, out_dtype, var):
    return np.transpose(args[0], None if v.attrs.axes is None else [int(x) for x in v.attrs.axes])


def _to_var_shape(v, args, out_dtype, var):
    return args[0].reshape(shape_of(var))


_EVALUATORS = {
    "nn.conv1d": _conv1d, "nn.conv2d": _conv2d, "matmul": _matmul, "clip": _clip, "astype": _astype,
    "sum": _reduce, "max": _reduce, "min": _reduce, "split": _split, "strided_slice": _strided_slice,
    "concat": lambda v, args, out_dtype, var: np.concatenate(args[0], axis=int(v.attrs.axis)),
    "permute_dims": _permute_dims, "reshape": _to_var_shape, "squeeze": _to_var_shape, "expand_dims": _to_var_shape,
    # the binary integer ops of the op table the integer algorithms are written in
    **{op: (lambda v, args, out_dtype, var: _binary(call_op_name(v), args[0], args[1], out_dtype))
       for op in intops.RELAX_BINARY},
}


def run_reference(mod: tvm.IRModule, *inputs, func_name: str = "main", return_env: bool = False):
    """Execute quantized ``main`` on numpy inputs; returns an array (or tuple of arrays).

    With ``return_env`` also returns ``{var_name: array}`` of every intermediate (for debugging a
    mismatch against the TVM build layer by layer).  A time-masked module's ``length`` input
    (:mod:`relax_passes.time_mask`) may be left out: every frame is then valid, as in ``Build.run``.
    """
    func = main_function(mod, func_name)
    if len(inputs) == len(func.params) - 1 == 1 and str(func.params[1].name) == "length":
        mel = np.asarray(inputs[0])
        inputs = (mel, np.full(mel.shape[:1], mel.shape[-1], np.int32))
    env: dict = {}
    for p, x in zip(func.params, inputs, strict=True):
        env[p] = np.asarray(x, dtype=dtype_of(p))

    def ev(e):
        if isinstance(e, relax.Var):
            return env[e]
        if isinstance(e, tvm.ir.expr.Constant):
            return e.value.numpy()
        if isinstance(e, relax.Tuple):
            return tuple(ev(f) for f in e.fields)
        if isinstance(e, relax.TupleGetItem):
            return ev(e.tuple_value)[e.index]
        raise ReferenceError_(f"cannot evaluate {type(e).__name__}")

    # free each intermediate after its last use: a whole graph's int64 intermediates do not fit in memory
    # (Conformer-large at T = 400: 16.5 GB peak when all were kept); ``return_env`` keeps them all
    bs = bindings(func)
    dying: dict[int, list] = {}  # binding index -> vars last used there
    if not return_env:
        keep = set(relax.analysis.free_vars(func.body.body))
        last: dict = {}
        env_vars = set(func.params) | {b.var for b in bs}  # not shape variables (a symbolic T)
        for i, b in enumerate(bs):
            for u in relax.analysis.free_vars(b.value):
                last[u] = i
        for u, i in last.items():
            if u not in keep and u in env_vars:
                dying.setdefault(i, []).append(u)
    for i, b in enumerate(bs):
        for u in dying.pop(i - 1, ()):  # at the top: the loop body `continue`s
            del env[u]
        v, var = b.value, b.var
        out_dtype = dtype_of(var)
        op = call_op_name(v)
        if op is None:
            env[var] = ev(v)
            continue
        if op == "call_tir":
            # both boundary kernels take one tensor; a symbolic-T build also passes T itself (a shape variable)
            env[var] = _boundary(mod, v, [ev(v.args[1].fields[0])])
            continue
        args = [ev(v.args[0])] if op in ("strided_slice", "split") else \
            [ev(x) for x in v.args if not isinstance(x, (relax.ShapeExpr, tvm.ir.prim.expr.IntImm, tvm.ir.prim.expr.FloatImm))]
        evaluate = _EVALUATORS.get(op)
        if evaluate is None:
            raise ReferenceError_(f"op {op} ({var.name}) has no integer reference")
        env[var] = evaluate(v, args, out_dtype, var)
        if op == "split":  # a tuple of arrays
            continue
        assert str(env[var].dtype) == out_dtype, (var.name, env[var].dtype, out_dtype)
    out = ev(func.body.body)
    if return_env:
        return out, {k.name: val for k, val in env.items()}
    return out
