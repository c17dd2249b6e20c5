"""Declarative patterns (``tvm.relax.dpl``) of the quantized graph: the int8 producers that ``Quantize`` follows
with a requantize epilogue, the epilogue itself, and QuartzNet/Jasper residual joins.  Every backend's offload
(:mod:`relax_passes.offload`) matches through these, so the x86 and CUDA kernels take exactly the same chains.

The chain (batch 1; the bias add is optional, its constant may be either operand, as may ``Mul`` and ``Rnd``)::

    a = <producer>                      # int32, one of PRODUCERS below
    b = R.add(a, bias)                  # int32 constant, per channel or scalar
    c = R.astype(b, "int64")
    d = R.multiply(c, Mul)              # int64 constant, per channel or scalar
    e = R.add(d, Rnd)                   # Rnd == 1 << (Sh - 1), checked element-wise
    f = R.right_shift(e, Sh)            # 1 <= Sh <= 62
    g = R.clip(f, qmin, qmax)
    y = R.astype(g, out_dtype)

A kernel computing ``clip((int64(acc + bias) * Mul + 2^(Sh-1)) >> Sh)`` is bit-identical to it.  The pattern
says which ops; :func:`requantize_chains` adds what a pattern cannot: every intermediate (``a`` .. ``g``) has one
user and is not a function output (else the replaced op would still be needed), and the constants have the
shapes and ranges the kernels take (``Mul`` in ``[0, 2^31)``, the bias inside int32, ``[qmin, qmax]`` inside
``out_dtype``).

Producers (``kind``), each with the spec keyword arguments the kernels are built from:

* ``"pointwise"``: ``R.nn.conv1d(x[1, K, T] int8/uint8, W[M, K, 1] const int8)``, groups 1, stride 1, dilation 1,
  no padding, NCW/OIW/NCW; ``T, K, M, a_dtype, layout="ncw"``.
* ``"conv"``: the same conv1d with k > 1, padding or a stride (any dilation); adds ``taps, dilation, pad_l,
  pad_r, stride``.
* ``"depthwise"``: groups = C, ``W[C, 1, K]``, stride 1, 2 or 4 dividing 4 x dilation (the windows the kernels
  are built for); ``C, Tin, K, stride, pad_l, pad_r, dilation, a_dtype``.
* ``"matmul"``: ``R.matmul(x[T, K] | x[1, T, K] int8/uint8, W[K, M] const int8)`` (a linear layer); constants
  along the last axis; ``W`` returned transposed to ``[M, K]``; ``T, K, M, a_dtype, layout="tk"``.
* ``"bmm"``: ``R.matmul(a[1, H, T, K] int8/uint8, b[1, H, K, N] int8)``, each operand as such or as
  ``R.astype(., "int32")`` of it (attention; ``b`` may be a constant); constants scalar or per column; ``x`` is
  the pair ``(a, b)``, ``W`` None; ``H, T, K, N, a_dtype``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import tvm
from tvm import relax
from tvm.relax.dpl import DFPattern, is_const, is_op, wildcard

from relax_passes._util import UseIndex, const_value

__all__ = ["PRODUCERS", "Chain", "requantize_chains", "residual_joins"]

_I32, _I64 = tvm.DataType("int32"), tvm.DataType("int64")  # has_attr compares dtype attributes as DataType
_NCW = {"data_layout": "NCW", "kernel_layout": "OIW", "out_layout": "NCW", "out_dtype": _I32}


class Chain(NamedTuple):
    """One matched producer + requantize chain."""

    final: relax.Var  # the final cast's var: the kernel call takes its binding
    x: object  # the producer's activation input (``(a, b)`` for "bmm")
    spec: dict  # spec keyword arguments: the producer's geometry + out_dtype, qmin, qmax
    W: np.ndarray | None  # the constant weights (``[M, K]`` for "matmul"), None for "bmm"
    bias: np.ndarray | None  # int64 per output channel, None without a bias add
    Mul: np.ndarray  # int64 per output channel
    Sh: np.ndarray  # int64 per output channel


def _int8_tensor() -> DFPattern:
    return wildcard().has_dtype("int8") | wildcard().has_dtype("uint8")


def _ints(xs):
    return [int(x) for x in xs]


def _dims(shape):
    """A tensor shape as ints, except a symbolic size (the time axis of a symbolic-T module), kept as its
    expression; kernels that take any length read it from their own input buffer."""
    return [int(x) if isinstance(x, tvm.tirx.IntImm) else x for x in shape]


def _static(*xs) -> bool:
    return all(isinstance(x, int) for x in xs)


def _pads(at):
    pads = _ints(at.padding)
    return (pads * 2)[:2] if len(pads) == 1 else pads[:2]


def _conv1d():
    x, w = _int8_tensor(), is_const().has_dtype("int8")
    return is_op("relax.nn.conv1d")(x, w).has_attr(_NCW), x, w


def _pointwise(call, x, W):
    at = call.attrs
    if (W.shape[2] != 1 or int(at.groups) != 1 or _ints(at.strides) != [1] or _ints(at.dilation) != [1]
            or any(_ints(at.padding))):
        return None
    N, K, T = _dims(x.ty.shape)
    if not _static(N, K) or N != 1 or W.shape[1] != K:
        return None
    return dict(T=T, K=K, M=int(W.shape[0]), a_dtype=str(x.ty.dtype), layout="ncw"), W, int(W.shape[0])


def _full_conv(call, x, W):
    at = call.attrs
    dl, st = _ints(at.dilation), _ints(at.strides)
    if int(at.groups) != 1 or len(st) != 1 or st[0] < 1 or len(dl) != 1 or dl[0] < 1:
        return None
    pl, pr = _pads(at)
    N, K, T = _dims(x.ty.shape)
    taps = int(W.shape[2])
    if (not _static(N, K) or N != 1 or W.shape[1] != K or (taps == 1 and pl == 0 and pr == 0 and st[0] == 1)
            or (_static(T) and T + pl + pr - dl[0] * (taps - 1) < 1)):
        return None
    return dict(T=T, K=K, M=int(W.shape[0]), a_dtype=str(x.ty.dtype), layout="ncw", taps=taps, dilation=dl[0],
                pad_l=pl, pad_r=pr, stride=st[0]), W, int(W.shape[0])


def _depthwise(call, x, W):
    at = call.attrs
    N, C, T = _dims(x.ty.shape)
    st, dl = _ints(at.strides), _ints(at.dilation)
    if (not _static(N, C) or N != 1 or int(at.groups) != C or W.shape[0] != C or W.shape[1] != 1 or len(dl) != 1 or dl[0] < 1
            or len(st) != 1 or st[0] not in (1, 2, 4) or (4 * dl[0]) % st[0]):
        return None
    pl, pr = _pads(at)
    if _static(T) and (T + pl + pr - dl[0] * (int(W.shape[2]) - 1) - 1) // st[0] + 1 < 1:
        return None
    return dict(C=C, Tin=T, K=int(W.shape[2]), stride=st[0], pad_l=pl, pad_r=pr, dilation=dl[0],
                a_dtype=str(x.ty.dtype)), W, C


def _conv_producer(geometry):
    def make():
        conv, x, w = _conv1d()

        def accept(m, arg):
            xe, W = arg(x), const_value(arg(w))
            g = geometry(m[conv], xe, W) if W is not None and W.ndim == 3 and xe.ty.ndim == 3 else None
            return None if g is None else (xe, g)
        return conv, accept
    return make


def _linear():
    x, w = _int8_tensor(), is_const().has_dtype("int8")
    mm = is_op("relax.matmul")(x, w).has_attr({"out_dtype": _I32})

    def accept(m, arg):
        xe, W = arg(x), const_value(arg(w))
        if W is None or W.ndim != 2 or xe.ty.ndim not in (2, 3):
            return None
        *lead, T, K = _dims(xe.ty.shape)
        if not _static(K, *lead) or W.shape[0] != K or lead not in ([], [1]):
            return None
        M = int(W.shape[1])
        return xe, (dict(T=T, K=K, M=M, a_dtype=str(xe.ty.dtype), layout="tk"), np.ascontiguousarray(W.T), M)
    return mm, accept


def _batch_matmul():
    a, b = _int8_tensor(), wildcard().has_dtype("int8")
    widened = [t | is_op("relax.astype")(t).has_attr({"dtype": _I32}) for t in (a, b)]
    mm = is_op("relax.matmul")(*widened).has_attr({"out_dtype": _I32})

    def accept(m, arg):
        ae, be = arg(a), arg(b)
        if ae.ty.ndim != 4 or be.ty.ndim != 4:
            return None
        (n, H, T, K), (n2, H2, K2, N) = _dims(ae.ty.shape), _dims(be.ty.shape)
        if not _static(n, H, T, K, n2, H2, K2, N) or n != 1 or n2 != 1 or H2 != H or K2 != K:
            return None
        return (ae, be), (dict(H=H, T=T, K=K, N=N, a_dtype=str(ae.ty.dtype)), None, N)
    return mm, accept


# kind -> (a factory of (producer pattern, accept(match, arg) -> (x, (spec kwargs, W, channels)) | None), the
# constant shapes that broadcast along the output channels, the largest scalar constant rank)
PRODUCERS = {
    "pointwise": (_conv_producer(_pointwise), lambda M: ((1, M, 1), (M, 1)), 3),
    "conv": (_conv_producer(_full_conv), lambda M: ((1, M, 1), (M, 1)), 3),
    "depthwise": (_conv_producer(_depthwise), lambda M: ((1, M, 1), (M, 1)), 3),
    "matmul": (_linear, lambda M: ((M,), (1, M), (1, 1, M)), 3),
    "bmm": (_batch_matmul, lambda N: ((N,), (1, 1, 1, N)), 4),
}


def _channel_vector(arr, M, shapes, max_ndim):
    """Scalar or one of ``shapes`` (a length-M vector along the channel axis) -> ``[M]`` int64, else None."""
    if arr is None:
        return None
    a = np.asarray(arr)
    if a.size == 1 and a.ndim <= max_ndim:
        return np.full(M, a.reshape(()).astype(np.int64))
    if a.shape in shapes:
        return a.reshape(M).astype(np.int64)
    return None


def _prim(e):
    v = e.value if hasattr(e, "value") else e
    return int(v.value) if hasattr(v, "value") else int(v)


def _requantize(acc):
    """The epilogue after ``acc`` (module doc) and its parts: ``(pattern, bias_add, {name: const pattern},
    intermediates)``."""
    c = {k: is_const() for k in ("bias", "mul", "rnd", "sh")}
    bias_add = is_op("relax.add")(acc, c["bias"])
    wide = is_op("relax.astype")(acc | bias_add).has_attr({"dtype": _I64})
    mul = is_op("relax.multiply")(wide, c["mul"])
    rnd = is_op("relax.add")(mul, c["rnd"])
    sh = is_op("relax.right_shift")(rnd, c["sh"])
    clip = is_op("relax.clip")(sh, wildcard(), wildcard())
    return is_op("relax.astype")(clip), bias_add, c, (acc, bias_add, wide, mul, rnd, sh, clip)


def requantize_chains(func: relax.Function, kind: str = "pointwise",
                      out_dtypes: tuple = ("int8", "uint8", "int32")) -> list[Chain]:
    """Every ``kind`` producer + requantize chain of ``func`` (module doc) ending in one of ``out_dtypes``,
    in program order."""
    make, shapes, max_ndim = PRODUCERS[kind]
    producer, accept = make()
    pattern, bias_add, consts, steps = _requantize(producer)
    idx = UseIndex(func)
    var_of = {v: k for k, v in idx.value.items()}
    var2val = relax.analysis.get_var2val(func)
    found = []
    for b in idx.bindings:
        # a binding of a bare var (an alias) would match through var2val: the chain ends in its own binding
        m = pattern.extract_matched_expr(b.value, var2val) if isinstance(b.value, relax.Call) else None
        if m is None or any(p in m and idx.only_user(var_of.get(m[p])) is None for p in steps):
            continue

        def arg(p):  # the matcher records a bound var's value; kernels take the var
            return var_of.get(m[p], m[p])
        try:
            got = accept(m, arg)
        except (TypeError, ValueError):  # a symbolic dimension
            continue
        if got is None:
            continue
        x, (spec, W, M) = got

        def vec(name):
            return _channel_vector(const_value(arg(consts[name])), M, shapes(M), max_ndim)
        bias = vec("bias") if bias_add in m else None
        Mul, Rnd, Sh = vec("mul"), vec("rnd"), vec("sh")
        if (bias_add in m and bias is None) or Mul is None or Rnd is None or Sh is None:
            continue
        clip = m[steps[-1]]  # the last intermediate
        qmin, qmax = _prim(clip.args[1]), _prim(clip.args[2])
        od = str(b.value.attrs.dtype)
        if od not in out_dtypes:
            continue
        info = np.iinfo(od)
        if (np.any(Sh < 1) or np.any(Sh > 62) or np.any(Rnd != (np.int64(1) << np.clip(Sh - 1, 0, 62)))
                or qmin < info.min or qmax > info.max or qmin > qmax or np.any(Mul < 0) or np.any(Mul >= 2**31)):
            continue
        if bias is not None and (bias.min() < -(2**31) or bias.max() >= 2**31):
            continue
        found.append(Chain(b.var, x, dict(spec, out_dtype=od, qmin=qmin, qmax=qmax), W, bias, Mul, Sh))
    return found


def residual_joins(func: relax.Function, chains: dict) -> dict:
    """Residual joins ``astype(clip(add(a, b), lo, hi), dtype)`` of two int32 outputs of matched ncw chains
    (``chains``: final var -> spec kwargs).  Returns ``{astype var: (fused, residual, lo, hi, dtype)}``:
    ``fused`` (an input whose only user is the add; ``b`` when both are) gets the add, clip and cast in its
    kernel's epilogue, ``residual`` is passed to it.  Only when the int32 add cannot wrap (the two chains' clip
    bounds sum inside int32) and ``[lo, hi]`` fits ``dtype``, so the fused result is bit-identical."""
    add = is_op("relax.add")(wildcard(), wildcard())
    clip = is_op("relax.clip")(add, wildcard(), wildcard())
    pattern = is_op("relax.astype")(clip)
    idx = UseIndex(func)
    var_of = {v: k for k, v in idx.value.items()}
    var2val = relax.analysis.get_var2val(func)
    found = {}
    for b in idx.bindings:
        m = pattern.extract_matched_expr(b.value, var2val) if isinstance(b.value, relax.Call) else None
        if m is None or any(idx.only_user(var_of.get(m[p])) is None for p in (add, clip)):
            continue
        a0, a1 = m[add].args  # program order decides which input is fused
        if not (isinstance(a0, relax.Var) and isinstance(a1, relax.Var) and a0 in chains and a1 in chains):
            continue
        fused, res = (a1, a0) if idx.only_user(a1) is not None else (a0, a1)
        kf, kr = chains[fused], chains[res]
        if (idx.only_user(fused) is None or fused.same_as(res) or kf["out_dtype"] != "int32"
                or kr["out_dtype"] != "int32" or kf["layout"] != "ncw"
                or [str(d) for d in fused.ty.shape] != [str(d) for d in res.ty.shape]
                or kf["qmin"] + kr["qmin"] < -(2**31) or kf["qmax"] + kr["qmax"] >= 2**31):
            continue
        lo, hi = _prim(m[clip].args[1]), _prim(m[clip].args[2])
        od = str(b.value.attrs.dtype)
        if od not in ("int8", "uint8", "int32") or lo > hi or lo < np.iinfo(od).min or hi > np.iinfo(od).max:
            continue
        found[b.var] = (fused, res, lo, hi, od)
    return found
