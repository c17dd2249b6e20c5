"""The small set of integer operations every integer algorithm of the pipeline is written against.

An integer algorithm (dyadic requantize here, the I-BERT functions in :mod:`zsq_tvm.core.intnonlinear`) is
ONE Python function ``f(o, x, ...)`` whose run-time work goes through an ops object ``o``:

* :data:`NUMPY` evaluates it on int64 numpy arrays (or object arrays of Python ints): the reference;
* :class:`RelaxOps` emits one Relax op per call into a ``BlockBuilder``: the compiled graph;
* :data:`TIR` builds a TIR expression: the epilogue of hand-written kernels (x86 VNNI, CUDA).

So the numpy reference and the compiled graph follow from the same definition and cannot drift.  The
operations (int64 semantics, operands tensors or Python ints):

    add sub mul             a + b, a - b, a * b
    shl shr                 a << b, a >> b (arithmetic: floor division by 2^b)
    floordiv                floor(a / b), b > 0
    max min clip            element-wise maximum / minimum, clip(x, lo, hi) with integer bounds
    cast                    to an integer dtype
    sum rmax                reductions along one axis, keeping it (numpy and Relax only)
    shape                   the static shape (numpy and Relax only)

Operands that are all compile-time values (Python ints, numpy arrays) are folded by every ops object, so
``o.shl(1, o.sub(s, 1))`` of a constant shift ``s`` is a constant in the graph, not two ops.
"""

from __future__ import annotations

import numpy as np

__all__ = ["NUMPY", "TIR", "RELAX_BINARY", "NumpyOps", "RelaxOps", "TirOps", "dyadic_product", "requantize"]

#: the op table: Relax name of each binary integer operation -> its ops method.  RelaxOps emits these,
#: the numpy reference (``relax_passes.reference``) evaluates them with the NumpyOps method of the same entry
RELAX_BINARY = {"add": "add", "subtract": "sub", "multiply": "mul", "left_shift": "shl", "right_shift": "shr",
                "floor_divide": "floordiv", "maximum": "max", "minimum": "min"}


class NumpyOps:
    """The operations on numpy integer arrays (int64, or object arrays of Python ints) and Python ints."""

    add = staticmethod(lambda a, b: a + b)
    sub = staticmethod(lambda a, b: a - b)
    mul = staticmethod(lambda a, b: a * b)
    shl = staticmethod(lambda a, b: a << b)
    shr = staticmethod(lambda a, b: a >> b)
    floordiv = staticmethod(lambda a, b: a // b)
    max = staticmethod(np.maximum)
    min = staticmethod(np.minimum)

    @staticmethod
    def clip(x, lo: int, hi: int):
        # a Python int stays one (exact at any size: the overflow proofs evaluate past int64)
        return min(max(x, lo), hi) if isinstance(x, int) else np.clip(x, lo, hi)

    @staticmethod
    def cast(x, dtype: str):
        x = np.asarray(x)
        # the ops are integer-only: a float tensor reaching one is a caller's bug, not something to round
        if x.dtype.kind not in "iu" and not (x.dtype == object and all(isinstance(v, int) for v in x.flat)):
            raise TypeError(f"integer-only function got {x.dtype} input")
        return x.astype(dtype)

    @staticmethod
    def sum(x, axis: int):
        return x.sum(axis=axis, keepdims=True)

    @staticmethod
    def shape(x) -> tuple:
        return np.shape(x)

    @staticmethod
    def rmax(x, axis: int):
        return x.max(axis=axis, keepdims=True)


NUMPY = NumpyOps()


class RelaxOps:
    """The operations emitted as Relax ops into ``bb`` (one binding per call; constants as int64 tensors)."""

    def __init__(self, bb):
        from tvm import relax, tirx

        self.bb, self._relax, self._tirx = bb, relax, tirx

    def _is_expr(self, v) -> bool:
        return isinstance(v, self._relax.Expr)

    def _lift(self, v):
        return v if self._is_expr(v) else self._relax.const(np.asarray(v).astype("int64"), "int64")

    def _binary(self, name: str, a, b):
        if not (self._is_expr(a) or self._is_expr(b)):
            return getattr(NUMPY, RELAX_BINARY[name])(a, b)
        return self.bb.emit(getattr(self._relax.op, name)(self._lift(a), self._lift(b)))

    def add(self, a, b):
        return self._binary("add", a, b)

    def sub(self, a, b):
        return self._binary("subtract", a, b)

    def mul(self, a, b):
        return self._binary("multiply", a, b)

    def shl(self, a, b):
        return self._binary("left_shift", a, b)

    def shr(self, a, b):
        return self._binary("right_shift", a, b)

    def floordiv(self, a, b):
        return self._binary("floor_divide", a, b)

    def max(self, a, b):
        return self._binary("maximum", a, b)

    def min(self, a, b):
        return self._binary("minimum", a, b)

    def clip(self, x, lo: int, hi: int):
        pv = self._relax.prim_value
        return self.bb.emit(self._relax.op.clip(x, pv(self._tirx.IntImm("int64", int(lo))),
                                                pv(self._tirx.IntImm("int64", int(hi)))))

    def cast(self, x, dtype: str):
        return self.bb.emit(self._relax.op.astype(x, dtype))

    def sum(self, x, axis: int):
        return self.bb.emit(self._relax.op.sum(x, axis=[axis], keepdims=True))

    def rmax(self, x, axis: int):
        return self.bb.emit(self._relax.op.max(x, axis=[axis], keepdims=True))

    @staticmethod
    def shape(x) -> tuple:
        return tuple(int(d) for d in x.ty.shape)


class TirOps:
    """The operations of a kernel epilogue (what :func:`requantize` uses) as TIR expressions (call inside
    TVMScript ``T.prim_func`` bodies: TVMScript evaluates a plain Python call on TIR expressions); Python ints
    become int64 immediates."""

    @staticmethod
    def _lift(v):
        from tvm.script import tirx as T

        return T.int64(v) if isinstance(v, (int, np.integer)) else v

    def _binary(self, fn, a, b):
        if isinstance(a, (int, np.integer)) and isinstance(b, (int, np.integer)):
            return fn(int(a), int(b))
        return fn(self._lift(a), self._lift(b))

    def add(self, a, b):
        return self._binary(lambda x, y: x + y, a, b)

    def sub(self, a, b):
        return self._binary(lambda x, y: x - y, a, b)

    def mul(self, a, b):
        return self._binary(lambda x, y: x * y, a, b)

    def shl(self, a, b):
        from tvm.script import tirx as T

        return self._binary(lambda x, y: x << y if isinstance(x, int) else T.shift_left(x, y), a, b)

    def shr(self, a, b):
        return self._binary(lambda x, y: x >> y, a, b)

    def clip(self, x, lo: int, hi: int):
        from tvm.script import tirx as T

        return T.max(T.min(x, T.int64(int(hi))), T.int64(int(lo)))

    def cast(self, x, dtype: str):
        from tvm.script import tirx as T

        return T.Cast(dtype, x)


TIR = TirOps()


def dyadic_product(o, acc, M, s):
    """``acc * M + 2^(s-1)``: the int64 product of a dyadic requantize, rounding term included (the value whose
    range :class:`zsq_tvm.core.overflow.OverflowLedger` proves below 2^63)."""
    return o.add(o.mul(acc, M), o.shl(1, o.sub(s, 1)))


def requantize(o, acc, M, s, qmin: int, qmax: int):
    """Dyadic requantization, round half up, saturating: ``clip((acc * M + 2^(s-1)) >> s, qmin, qmax)``.

    ``acc`` int64 (the caller widens an int32 accumulator), ``M``/``s`` the dyadic multiplier and shift of
    :func:`zsq_tvm.core.intmath.dyadic` (scalars or per-channel arrays shaped to broadcast against ``acc``).
    ``>>`` is the arithmetic shift (floor division by ``2^s``), so adding ``2^(s-1)`` first rounds half up.
    """
    return o.clip(o.shr(dyadic_product(o, acc, M, s), s), qmin, qmax)
