"""The op table of :class:`relax_passes.Quantize`: one handler per float Relax op it quantizes.

Each handler says whether it supports a binding (``supported``, checked for the whole module before anything
is emitted, so every unsupported op is reported at once) and emits its integer form (``emit``).  Handlers
register themselves here: :mod:`relax_passes.quantize` the convolutional models' ops, and
:mod:`relax_passes.quantize_conformer` the Conformer's, without either module importing the other's handlers
by name.  An op may have several handlers (``matmul`` by a 2-D weight vs. of two activations); for every
binding at most one of them claims it (``claims``, default ``supported``), which the driver asserts.

Also here: the two states every float tensor maps to while quantizing (:class:`QTensor`, :class:`Accumulator`),
shared by all handlers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from tvm import relax

from zsq_tvm.core import intmath

__all__ = ["QTensor", "Accumulator", "OpHandler", "HANDLERS", "register", "claiming_handler", "supported_ops"]


@dataclass
class QTensor:
    """Integer activation tensor with one scale: real = scale * expr."""

    expr: relax.Expr
    scale: float
    bits: int
    unsigned: bool

    @property
    def qmax(self) -> int:
        return intmath.qrange(self.bits, self.unsigned)[1]

    @property
    def qmin(self) -> int:
        return intmath.qrange(self.bits, self.unsigned)[0]


@dataclass
class Accumulator:
    """int32 accumulator with a per-channel scale along ``axis``: real[..c..] = scale[c] * expr.

    ``lo``/``hi``: exact per-channel range of the integer values (int64 arrays broadcast against
    ``scale``), from :mod:`zsq_tvm.core.overflow`; they prove every int32/int64 step cannot wrap.
    """

    expr: relax.Expr
    scale: np.ndarray
    axis: int
    ndim: int
    lo: np.ndarray = field(default=None)
    hi: np.ndarray = field(default=None)


# (quantizer, call, var) -> bool ; (quantizer, var, call) -> None
Predicate = Callable[[object, relax.Call, relax.Var], bool]


def _always(q, call, var) -> bool:
    return True


@dataclass(frozen=True)
class OpHandler:
    """How Quantize handles one float op: ``description`` (for the list of supported ops), ``supported``
    (static check), ``emit`` (the integer form), ``claims`` (which of an op's handlers emits a binding, when
    that depends on the quantized operands; default: ``supported``)."""

    op: str
    description: str
    emit: Callable
    supported: Predicate = _always
    claims: Predicate | None = None

    def takes(self, q, call, var) -> bool:
        return (self.claims or self.supported)(q, call, var)


#: Relax op name -> its handlers, in registration order
HANDLERS: dict[str, list[OpHandler]] = {}


def register(op: str, description: str, supported: Predicate = _always, claims: Predicate | None = None):
    """Decorator: ``emit(q, var, call)`` becomes a handler of ``op``."""
    def deco(emit):
        HANDLERS.setdefault(op, []).append(OpHandler(op, description, emit, supported, claims))
        return emit
    return deco


def claiming_handler(q, op: str, call, var) -> OpHandler:
    """The one handler of ``op`` that claims this binding (the support check ran first)."""
    hs = [h for h in HANDLERS.get(op, ()) if h.takes(q, call, var)]
    if len(hs) != 1:  # pragma: no cover - overlapping or missing handlers are a bug in this table
        raise AssertionError(f"{len(hs)} Quantize handlers claim {op} at {var.name}")
    return hs[0]


def supported_ops() -> tuple[str, ...]:
    """Descriptions of every registered handler (what :class:`relax_passes.Quantize` can quantize)."""
    return tuple(dict.fromkeys(h.description for hs in HANDLERS.values() for h in hs))
