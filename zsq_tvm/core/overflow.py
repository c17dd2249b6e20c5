"""Accumulator overflow, proved at quantize time.

:class:`relax_passes.Quantize` calls this module for every integer accumulation it emits and
refuses a model whose worst case does not fit, *before* anything is compiled:

=====================  ==========================================================  ============
accumulation           worst case (per output channel ``c``, exact integers)        limit
=====================  ==========================================================  ============
conv1d / matmul        ``hi_c = xhi Σ w⁺_c + xlo Σ w⁻_c``, ``lo_c`` symmetric (1)   2^31 - 1
  + bias (int32 add)   ``[lo_c + b_c, hi_c + b_c]``                                 2^31 - 1
residual sum           sum of the two requantized branch intervals (2)              2^31 - 1
requantize (int64)     ``max |acc M_c + 2^(s_c-1)|`` over the accumulator interval  2^63 - 1
=====================  ==========================================================  ============

(1) ``[xlo, xhi]`` is the code range of the input dtype: ``[-127, 127]`` for signed int8
(the narrow symmetric range, so this is the familiar ``Σ|w| · 127``) and ``[0, 255]`` for uint8
(post-ReLU), where the bound is ``255 · max(Σ w⁺, Σ |w⁻|)`` — never larger than ``Σ|w| · 255``.
The bound is computed from the *actual quantized weights* and is

* **sound**: every partial sum of the reduction, in any order, lies in ``[lo_c, hi_c]`` (each
  term's extreme has the sign of its interval's end, because 0 is in ``[xlo, xhi]``), so no
  intermediate of any schedule can wrap either; and
* **tight**: the input ``x = xhi`` where ``w > 0`` and ``xlo`` where ``w < 0`` (the sign pattern
  of the weights) reaches ``hi_c`` exactly, at any output position whose receptive field does not
  touch the zero padding.

(2) Residual branches are requantized into int32 and clipped to ``±2^30`` (``RESIDUAL_RANGE`` in
Quantize): that clip is the *documented mitigation* that makes the int32 sum of two branches
safe whatever the branch accumulators are; the recorded bound is the actual one (requantize is
monotone, so the branch interval maps exactly), and ``"mitigated": true`` marks a branch whose
clip is active.

Requantize computes ``acc·M + 2^(s-1)`` in int64 with ``M < 2^31`` and ``s <= 62``: for an
accumulator that fits int32 this is below ``2^62 + 2^61`` always; the recorded headroom below
2^63 is the actual one.

Margins are ``headroom_bits = log2(limit / bound)`` (``bound`` at least 1; a negative end is measured
against ``limit + 1``, e.g. -2^31 fits int32 with 0 bits to spare).  A range that leaves the dtype
raises :class:`AccumulatorOverflowError` naming the layer, the bound and the fix.

The numpy reference (:mod:`relax_passes.reference`) independently checks every int32/int64 result it
computes for wrap-around, so a module that escaped this proof would still be caught there.
"""

from __future__ import annotations

import math

import numpy as np

from zsq_tvm.core import intops
from zsq_tvm.core.errors import ZsqError

__all__ = ["INT32_LIMIT", "INT64_LIMIT", "AccumulatorOverflowError", "BiasOverflowError", "bias_overflow_error",
           "headroom_bits", "dot_interval", "requant_interval", "OverflowLedger", "summary", "format_summary"]

INT32_LIMIT = 2**31 - 1
INT64_LIMIT = 2**63 - 1


class AccumulatorOverflowError(ZsqError):
    """A quantized layer's worst-case integer accumulator does not fit its dtype (int32/int64)."""

    def __init__(self, cause: str, fix: str | None = None):
        super().__init__(cause, fix)


class BiasOverflowError(AccumulatorOverflowError):
    """A bias cannot be stored as the int32 the accumulator adds: ``|b| / (S_x S_w) >= 2^31`` (a near-zero
    activation or weight scale).  A subclass of :class:`AccumulatorOverflowError` (an int32 value of the
    layer's accumulation that does not fit), with its own cause and fix."""


def bias_overflow_error(layer: str, bias, acc_scale, x_scale=None, w_scale=None, x_alpha=None) -> BiasOverflowError:
    """The :class:`BiasOverflowError` of ``layer`` whose float ``bias`` (per channel) divided by the accumulator
    scale ``acc_scale`` (= ``x_scale * w_scale`` when the producing conv/matmul is known) leaves int32: names the
    worst channel, the scales and what to do."""
    b, s = np.broadcast_arrays(np.asarray(bias, np.float64).reshape(-1), np.asarray(acc_scale, np.float64).reshape(-1))
    q = np.abs(b) / s
    c = int(np.argmax(q))
    parts = [f"bias of layer {layer} cannot be represented in int32: channel {c} has bias {b[c]:.3g} and "
             f"accumulator scale {s[c]:.3g}"]
    if x_scale is not None and w_scale is not None:
        ws = np.asarray(w_scale, np.float64).reshape(-1)
        ws = ws[c] if ws.size == b.size else ws[0]
        parts.append(f" (input activation scale S_x = {float(x_scale):.3g} x weight scale S_w = {ws:.3g})")
    parts.append(f", so its int32 code would be {b[c] / s[c]:.3g} (|code| > 2^31-1)")
    if x_alpha is not None:
        parts.append(f"; the input activation's calibrated range is only +-{float(x_alpha):.3g}")
    return BiasOverflowError(
        "".join(parts),
        "calibrate with inputs that exercise the model (--calib DIR of real mel .npy files, or --calib synthetic); "
        "if the activations really are that small, the weights are degenerate (an untrained net with identity "
        "BatchNorms loses its signal over many blocks): use trained weights, or zero/rescale this bias")


try:  # raised inside the Quantize pass: keep the class across TVM's FFI (re-created from the message)
    import tvm_ffi

    tvm_ffi.register_error("AccumulatorOverflowError", AccumulatorOverflowError)
    tvm_ffi.register_error("BiasOverflowError", BiasOverflowError)
except Exception:  # pragma: no cover - tvm not importable, or already registered
    pass


def headroom_bits(bound: int, limit: int) -> float:
    """``log2(limit / max(bound, 1))``: bits left before ``|value|`` can pass ``limit`` (< 0: overflow)."""
    b = max(int(bound), 1)
    return math.log2(limit) - math.log2(b)


def _per_channel_sums(wq, axis: int) -> tuple[np.ndarray, np.ndarray]:
    w = np.asarray(wq).astype(np.int64)
    w = np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)
    return np.where(w > 0, w, 0).sum(axis=1), np.where(w < 0, w, 0).sum(axis=1)


def dot_interval(wq, axis: int, xlo: int, xhi: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact range ``[lo_c, hi_c]`` of ``Σ w·x`` per output channel (``axis`` of ``wq``) for ``x`` in ``[xlo, xhi]``.

    Needs ``xlo <= 0 <= xhi`` (true for every activation code range), which also makes every
    partial sum lie in the same interval.
    """
    if not xlo <= 0 <= xhi:
        raise ValueError(f"input range [{xlo}, {xhi}] must contain 0")
    pos, neg = _per_channel_sums(wq, axis)
    hi = pos * int(xhi) + neg * int(xlo)
    lo = pos * int(xlo) + neg * int(xhi)
    return lo.astype(np.int64), hi.astype(np.int64)


def requant_interval(lo, hi, M, s, qmin: int, qmax: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact output range of :func:`zsq_tvm.core.intops.requantize` on accumulators in ``[lo, hi]``.

    ``acc -> clip((acc·M + 2^(s-1)) >> s)`` is monotone non-decreasing for ``M >= 0``, so the ends map
    to the ends.  ``lo``/``hi``/``M``/``s`` are per-channel (broadcast together).
    """
    lo, hi, M, s = np.broadcast_arrays(*(np.asarray(v, dtype=np.int64).reshape(-1) for v in (lo, hi, M, s)))
    # in Python ints (exact at any size): the interval of an overflowing requantize is reported, not wrapped
    olo = [intops.requantize(intops.NUMPY, int(a), int(m), int(k), qmin, qmax) for a, m, k in zip(lo, M, s)]
    ohi = [intops.requantize(intops.NUMPY, int(b), int(m), int(k), qmin, qmax) for b, m, k in zip(hi, M, s)]
    return np.array(olo, dtype=np.int64), np.array(ohi, dtype=np.int64)


def _worst(lo, hi, limit: int) -> tuple[int, int, float, bool]:
    """``(max |value|, its channel, headroom bits, fits)`` over per-channel interval ends (Python ints).

    Two's complement is asymmetric: the negative end may reach ``-(limit + 1)`` (e.g. -2^31 in int32),
    so the headroom of a negative end is measured against ``limit + 1``.
    """
    lo = [int(v) for v in np.ravel(lo)]
    hi = [int(v) for v in np.ravel(hi)]
    if not lo:
        return 0, 0, headroom_bits(0, limit), True
    room = [min(headroom_bits(max(b, 0), limit), headroom_bits(max(-a, 0), limit + 1)) for a, b in zip(lo, hi)]
    c = int(np.argmin(room))
    fits = all(a >= -(limit + 1) and b <= limit for a, b in zip(lo, hi))
    return max(abs(lo[c]), abs(hi[c])), c, room[c], fits


_FIX = ("quantize with fewer weight/activation bits (--wbits/--abits, e.g. 7: each bit halves the bound), "
        "or split the layer's reduction (fewer input channels x kernel taps per conv/matmul, e.g. two "
        "convs over halves of the input channels added together)")


class OverflowLedger:
    """Collects the per-accumulation proofs of one Quantize run (see the module docstring)."""

    def __init__(self):
        self.checks: list[dict] = []

    def _record(self, layer, op, bound, channel, limit, room, extra=None):
        rec = {"layer": str(layer), "op": op, "bound": int(bound), "channel": int(channel), "limit": int(limit),
               "headroom_bits": round(room, 4)}
        rec.update(extra or {})
        self.checks.append(rec)
        return rec

    def accumulate(self, layer, op, lo, hi, detail: dict | None = None) -> dict:
        """Record an int32 accumulation with per-channel range ``[lo, hi]``; raise if it can overflow."""
        bound, c, room, fits = _worst(lo, hi, INT32_LIMIT)
        detail = dict(detail or {})
        if isinstance(detail.get("sum_abs_w"), (list, tuple, np.ndarray)):  # keep the worst channel's only
            detail["sum_abs_w"] = int(np.ravel(detail["sum_abs_w"])[c])
        rec = self._record(layer, op, bound, c, INT32_LIMIT, room, detail)
        if not fits:
            what = {"conv1d": "conv1d", "matmul": "matmul", "bias_add": "accumulator + bias",
                    "residual_sum": "residual sum"}.get(op, op)
            d = detail
            how = ""
            if "sum_abs_w" in d:
                how = (f" (output channel {c}: {d.get('taps', '?')} taps with sum|w| = {d['sum_abs_w']}, inputs "
                       f"{d.get('x_dtype', '?')} in {d.get('x_range', '?')})")
            raise AccumulatorOverflowError(
                f"layer {layer}: the worst-case int32 {what} is {bound} = 2^{math.log2(max(bound, 1)):.2f}{how}, "
                f"outside int32 [-2^31, 2^31-1 = {INT32_LIMIT}], so the integer kernel could overflow",
                _FIX)
        return rec

    def requantize(self, tag, lo, hi, M, s) -> dict:
        """Record the int64 product ``acc·M + 2^(s-1)`` of a requantize over ``acc`` in ``[lo, hi]``."""
        lo, hi, M, s = np.broadcast_arrays(*(np.asarray(v, dtype=np.int64).reshape(-1) for v in (lo, hi, M, s)))
        plo = [intops.dyadic_product(intops.NUMPY, int(a), int(m), int(k)) for a, m, k in zip(lo, M, s)]
        phi = [intops.dyadic_product(intops.NUMPY, int(b), int(m), int(k)) for b, m, k in zip(hi, M, s)]
        bound, c, room, fits = _worst(plo, phi, INT64_LIMIT)
        rec = self._record(tag, "requantize", bound, c, INT64_LIMIT, room)
        if not fits:
            raise AccumulatorOverflowError(
                f"requantize at {tag}: acc*M + 2^(s-1) reaches {bound} = 2^{math.log2(bound):.2f}, above 2^63-1",
                _FIX)
        return rec

    def to_json(self) -> dict:
        return {"int32_limit": INT32_LIMIT, "int64_limit": INT64_LIMIT, "checks": list(self.checks),
                **summary({"checks": self.checks})}


def summary(overflow: dict, top: int = 5) -> dict:
    """Tightest margins of an ``overflow`` metadata block: ``{"tightest_int32": [...], "tightest_int64": [...],
    "min_headroom_bits_int32": float, "min_headroom_bits_int64": float, "num_checks": int}``."""
    checks = list((overflow or {}).get("checks", []))
    i32 = sorted((c for c in checks if c["limit"] == INT32_LIMIT), key=lambda c: c["headroom_bits"])
    i64 = sorted((c for c in checks if c["limit"] == INT64_LIMIT), key=lambda c: c["headroom_bits"])
    return {"num_checks": len(checks),
            "min_headroom_bits_int32": i32[0]["headroom_bits"] if i32 else None,
            "min_headroom_bits_int64": i64[0]["headroom_bits"] if i64 else None,
            "tightest_int32": i32[:top], "tightest_int64": i64[:top]}


def format_summary(s: dict) -> str:
    """A few lines for ``zsq report``: the tightest accumulators and their headroom."""
    lines = [f"accumulator headroom (proved at quantize time, {s.get('num_checks', 0)} accumulations):"]
    for key, lim in (("tightest_int32", "2^31-1"), ("tightest_int64", "2^63 (requantize int64)")):
        rows = s.get(key) or []
        if not rows:
            continue
        lines.append(f"  below {lim}:")
        for r in rows:
            mit = " (clipped to +-2^30)" if r.get("mitigated") else ""
            what = "|acc*M + 2^(s-1)|" if r["op"] == "requantize" else "|acc|"
            lines.append(f"    {r['headroom_bits']:6.2f} bits  {r['op']:<13} {r['layer']}  {what} <= {r['bound']}{mit}")
    return "\n".join(lines)
