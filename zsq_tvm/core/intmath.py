"""Integer math of the integer-only pipeline: the single definition.

Every function here is pure numpy and short enough to read against its docstring.  The one run-time
formula, dyadic requantize, is :func:`zsq_tvm.core.intops.requantize`: the Relax graph emitted by
:class:`relax_passes.Quantize` and the TIR kernel epilogues are built from that same definition, and
:mod:`relax_passes.reference` executes the graph with these functions, so a disagreement between the
TVM build and the reference is a bug, never "close enough".

Conventions (paper §2.1, eq. 1, uniform symmetric quantization, zero point 0):

* signed b-bit:   ``S = a / (2^(b-1) - 1)``,  ``q = round(clip(x, -a, a) / S)`` in ``[-(2^(b-1)-1), 2^(b-1)-1]``
  (the "narrow" symmetric range: -2^(b-1) is never produced, which keeps ``-q`` representable);
* unsigned b-bit (post-ReLU activations): ``S = a / (2^b - 1)``, ``q`` in ``[0, 2^b - 1]``;
* ``round`` is round-half-to-even (``np.rint``; TIR ``nearbyint``) for float -> int quantization,
  and round-half-up (``+2^(s-1)`` then arithmetic shift) inside the integer requantizer;
* a clipping value ``a <= 0`` (a tensor or channel that is identically zero) gets ``S = 1`` so every
  scale is positive and finite; its q is 0 anyway.
"""

from __future__ import annotations

import math

import numpy as np

from zsq_tvm.core import intops

__all__ = [
    "fold_operand_shift",
    "INT32_MIN",
    "INT32_MAX",
    "MAX_SHIFT",
    "qrange",
    "storage_dtype",
    "symmetric_scale",
    "quantize",
    "quantize_per_channel",
    "dequantize",
    "dequantized_codes",
    "quantize_bias",
    "dyadic",
    "dyadic_vector",
    "requantize",
    "conv1d_int",
    "conv2d_int",
    "FLOAT64_EXACT_BOUND",
]

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1
# requantize works in int64: |acc| <= 2^31 and M < 2^31 give |acc*M| < 2^62; adding the rounding
# term 2^(s-1) must stay below 2^63, hence s - 1 <= 61.
MAX_SHIFT = 62
# integers up to 2^53 are exact in float64, so BLAS sums of integer products below it are exact.
FLOAT64_EXACT_BOUND = 2**53


def qrange(bits: int, unsigned: bool = False) -> tuple[int, int]:
    """Integer range of a b-bit code: ``[0, 2^b-1]`` unsigned, ``[-(2^(b-1)-1), 2^(b-1)-1]`` signed."""
    if not 2 <= int(bits) <= 32:
        raise ValueError(f"bit width {bits} outside 2..32")
    if unsigned:
        return 0, 2**bits - 1
    return -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1


def storage_dtype(bits: int, unsigned: bool = False) -> str:
    """Smallest integer dtype holding :func:`qrange` (``int8``/``uint8`` for b <= 8)."""
    for width in (8, 16, 32):
        if bits <= width:
            return f"{'uint' if unsigned else 'int'}{width}"
    raise ValueError(f"no storage dtype for {bits} bits")


def symmetric_scale(alpha, bits: int, unsigned: bool = False):
    """``S = a/(2^(b-1)-1)`` (signed) or ``a/(2^b-1)`` (unsigned), float64; ``S = 1`` where ``a <= 0``."""
    qmax = qrange(bits, unsigned)[1]
    a = np.asarray(alpha, dtype=np.float64)
    s = np.where(a > 0, a / qmax, 1.0)
    return float(s) if s.ndim == 0 else s


def quantize(x, scale: float, alpha: float, bits: int, unsigned: bool = False) -> np.ndarray:
    """Eq. 1: ``q = rint(clip(x, lo, a) / S)`` evaluated in float32, returned in the storage dtype.

    ``lo = 0`` when unsigned, else ``-a``.  Float32 on purpose: this is the one float op at the
    model input, and the TIR kernel computes it in float32 too (IEEE division and clipping are
    correctly rounded in both, so the two agree bit for bit).
    """
    x = np.asarray(x, dtype=np.float32)
    a = np.float32(alpha)
    lo = np.float32(0.0) if unsigned else -a
    q = np.rint(np.clip(x, lo, a) / np.float32(scale))
    qmin, qmax = qrange(bits, unsigned)
    # clip again in the integer domain: a*(1/S) may round to qmax+1 ulp-wise for odd scales
    return np.clip(q, qmin, qmax).astype(storage_dtype(bits, unsigned))


def quantize_per_channel(w, bits: int, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-channel weight quantization: ``a_c = max|w_c|``, ``S_c = a_c/(2^(b-1)-1)``.

    Returns ``(q, S)`` with ``q`` int8 (for b <= 8) and ``S`` float64 of length ``w.shape[axis]``.
    Computed in float64 (weights are offline data, no need to mimic a kernel).
    """
    w = np.asarray(w, dtype=np.float64)
    red = tuple(i for i in range(w.ndim) if i != axis)
    alpha = np.abs(w).max(axis=red) if red else np.abs(w)
    scale = np.asarray(symmetric_scale(alpha, bits), dtype=np.float64).reshape(-1)
    shape = [1] * w.ndim
    shape[axis] = -1
    qmin, qmax = qrange(bits)
    q = np.clip(np.rint(w / scale.reshape(shape)), qmin, qmax)
    return q.astype(storage_dtype(bits)), scale


def dequantize(q, scale: float) -> np.ndarray:
    """``x~ = S * q`` in float32 (``float32(q) * float32(S)``, as the output TIR kernel does)."""
    return np.asarray(q).astype(np.float32) * np.float32(scale)


def dequantized_codes(y, scale: float, dtype: str) -> np.ndarray:
    """The integer codes ``q`` (``dtype``) whose :func:`dequantize` with ``scale`` is ``y``, bit for bit.

    ``y = fl32(q * S)`` is within 2^-24 |q S| of ``q S``, so for ``|q| < 2^22`` the float64 ``rint(y / S)`` is
    ``q`` exactly; the result is dequantized again and compared, so a ``y`` that is no ``S * q`` (not an
    output of the dequantize) is a ValueError, never a wrong code."""
    y = np.asarray(y)
    s = np.float64(np.float32(scale))
    info = np.iinfo(dtype)
    q = np.rint(y.astype(np.float64) / s)
    ok = np.isfinite(q).all() and q.min(initial=0) >= info.min and q.max(initial=0) <= info.max
    codes = q.astype(dtype) if ok else None
    if codes is None or y.dtype != np.float32 or not np.array_equal(dequantize(codes, scale), y):
        raise ValueError(f"the {y.dtype} output is not the output scale {float(scale)!r} times {dtype} codes")
    return codes


def quantize_bias(b, scale) -> np.ndarray:
    """Bias in the accumulator's scale: ``round(b / (S_x S_w))`` as int32 (float64 math, offline).

    Raises ValueError if a value does not fit int32 (a scale that tiny means a broken calibration).
    """
    q = np.rint(np.asarray(b, dtype=np.float64) / np.asarray(scale, dtype=np.float64))
    if np.any(q < INT32_MIN) or np.any(q > INT32_MAX):
        raise ValueError(f"quantized bias out of int32 range (max |b_q| = {np.abs(q).max():.3g})")
    return q.astype(np.int32)


def dyadic(m: float) -> tuple[int, int]:
    """Decompose a positive real multiplier ``m`` into ``(M, s)`` with ``m ~= M * 2^-s``.

    ``frexp`` gives ``m = f * 2^e`` with ``f`` in ``[0.5, 1)``; then ``M = round(f * 2^31)`` lies in
    ``[2^30, 2^31]`` and ``s = 31 - e``; ``M = 2^31`` (f rounded up) is renormalised to
    ``(2^30, s - 1)``.  So ``M`` is an int32 in ``[2^30, 2^31)`` and

        |M 2^-s - m| <= 2^-(s+1)     i.e. relative error <= 2^-31  (M >= 2^30).

    Works for ``m >= 1`` (small or zero shift) and tiny ``m`` (large shift), but
    :func:`requantize` needs ``1 <= s <= 62`` (``2^(s-1)`` must be an integer and
    ``acc*M + 2^(s-1)`` must fit int64), i.e. ``2^-32 <= m < 2^30`` roughly: outside that a
    ValueError names ``m``.
    """
    m = float(m)
    if not math.isfinite(m) or m <= 0.0:
        raise ValueError(f"dyadic multiplier must be positive and finite, got {m!r}")
    f, e = math.frexp(m)
    M = int(round(f * 2**31))
    s = 31 - e
    if M == 2**31:
        M, s = 2**30, s - 1
    if not 1 <= s <= MAX_SHIFT:
        raise ValueError(
            f"multiplier {m:.6g} needs right shift {s}, outside 1..{MAX_SHIFT} that int64 "
            f"requantization supports (scales differ by more than ~2^30 or less than ~2^-31)"
        )
    return M, s


def dyadic_vector(m) -> tuple[np.ndarray, np.ndarray]:
    """:func:`dyadic` element-wise: ``(M int64[C], s int64[C])`` for per-channel multipliers."""
    pairs = [dyadic(v) for v in np.asarray(m, dtype=np.float64).reshape(-1)]
    return (np.array([p[0] for p in pairs], dtype=np.int64), np.array([p[1] for p in pairs], dtype=np.int64))


def _broadcast(v, ndim: int, axis: int) -> np.ndarray:
    v = np.asarray(v, dtype=np.int64)
    if v.ndim == 1 and v.size > 1 and ndim > 1:
        shape = [1] * ndim
        shape[axis] = v.size
        return v.reshape(shape)
    return v.reshape(()) if v.size == 1 else v


def requantize(acc, M, s, qmin: int, qmax: int, axis: int = 1) -> np.ndarray:
    """Dyadic requantization (:func:`zsq_tvm.core.intops.requantize`) of numpy arrays, with the argument
    checks the integer ops cannot make; integer only, round-half-up, saturating::

        y = clip((acc * M + 2^(s-1)) >> s, qmin, qmax)          (all in int64)

    ``acc`` int32 (or any integer dtype whose values fit int32); ``M``/``s`` scalars or per-channel
    vectors broadcast along ``axis``; ``>>`` is the arithmetic shift (floor division by 2^s), so
    adding ``2^(s-1)`` first rounds half up.  Returns int64; callers cast to the storage dtype.

    With ``(M, s) = dyadic(m)`` the result is within 1 of ``clip(round(acc * m))``: the dyadic
    error is ``|acc| 2^-(s+1) <= |acc m| 2^-31``, below one unit whenever the result is not
    saturated by an int32-sized range, plus the half-up vs half-even tie difference.
    """
    acc = np.asarray(acc)
    if acc.dtype.kind not in "iu":
        raise TypeError(f"requantize takes integer accumulators, got {acc.dtype}")
    a = acc.astype(np.int64)
    if a.size and (a.min() < INT32_MIN or a.max() > INT32_MAX):
        raise ValueError("requantize accumulator outside int32")
    Mv = _broadcast(M, a.ndim, axis)
    sv = _broadcast(s, a.ndim, axis)
    if np.any(sv < 1) or np.any(sv > MAX_SHIFT) or np.any(Mv < 0) or np.any(Mv > INT32_MAX):
        raise ValueError("requantize needs 0 <= M < 2^31 and 1 <= s <= 62")
    return intops.requantize(intops.NUMPY, a, Mv, sv, qmin, qmax)


def fold_operand_shift(bias, W, shift: int, channels: int) -> np.ndarray:
    """The int32 bias of a kernel that multiplies ``x + shift`` instead of ``x``.

    ``sum_k (x_k + shift) w_k = sum_k x_k w_k + shift * sum_k w_k``, so adding ``bias - shift * sum_k W[m, k]``
    (``W`` reduced over every axis but the first: channels and taps) gives exactly ``bias + sum_k x_k w_k``.
    x86 VNNI multiplies only u8 x s8, so int8 activations run shifted by +128; the CUDA dp4a/WMMA GEMM takes
    uint8 activations shifted by -128.  ``bias`` None is zero; OverflowError when the result leaves int32.
    """
    b = np.zeros(channels, np.int64) if bias is None else np.broadcast_to(np.asarray(bias, np.int64), (channels,))
    if shift:
        b = b - int(shift) * np.asarray(W, np.int64).reshape(channels, -1).sum(axis=1)
    if b.min(initial=0) < -(2**31) or b.max(initial=0) >= 2**31:
        raise OverflowError("folded bias leaves int32")
    return np.ascontiguousarray(b.astype(np.int32))


def conv1d_int(x, w, strides: int = 1, padding=(0, 0), dilation: int = 1, groups: int = 1) -> np.ndarray:
    """Integer NCW/OIW conv1d returning int32: ``y[n,o,t] = sum_{c,k} x[n,g*Cg+c,t*st+k*dl-pl] w[o,c,k]``.

    Products are summed by float64 BLAS (im2col + matmul) because every partial sum is an integer
    of magnitude <= ``Cg*K*max|x|*max|w|``; we check that bound is below 2^53, where float64
    integer arithmetic is exact, so the result equals the int64 sum exactly.  Raises OverflowError
    (not an assert: it must hold under ``python -O`` too) if that fails or a result leaves int32.
    """
    x = np.asarray(x)
    w = np.asarray(w)
    assert x.dtype.kind in "iu" and w.dtype.kind in "iu", (x.dtype, w.dtype)
    n, c, t = x.shape
    o, cg, k = w.shape
    pl, pr = (padding, padding) if np.isscalar(padding) else tuple(padding)
    assert c == cg * groups and o % groups == 0
    bound = cg * k * float(np.abs(x.astype(np.int64)).max(initial=0)) * float(np.abs(w.astype(np.int64)).max(initial=0))
    if not bound < FLOAT64_EXACT_BOUND:
        raise OverflowError(f"conv1d partial sums up to {bound:.3g} not exact in float64")
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pl, pr)))
    t_out = (t + pl + pr - dilation * (k - 1) - 1) // strides + 1
    idx = np.arange(t_out)[:, None] * strides + np.arange(k)[None, :] * dilation  # [T_out, K]
    cols = xp[:, :, idx]  # [N, C, T_out, K]
    og = o // groups
    if groups > 1 and cg == 1 and og == 1:
        # depthwise: one channel per group, vectorised over channels instead of a Python loop
        out = np.einsum("nctk,ck->nct", cols, w[:, 0].astype(np.float64), optimize=True)
    else:
        out = np.empty((n, o, t_out), dtype=np.float64)
        for g in range(groups):
            xs = cols[:, g * cg:(g + 1) * cg]  # [N, Cg, T_out, K]
            ws = w[g * og:(g + 1) * og].astype(np.float64)  # [Og, Cg, K]
            out[:, g * og:(g + 1) * og] = np.einsum("nctk,ock->not", xs, ws, optimize=True)
    res = np.rint(out)
    if res.size and (res.min() < INT32_MIN or res.max() > INT32_MAX):
        raise OverflowError(f"conv1d accumulator overflows int32 (range [{res.min():.0f}, {res.max():.0f}])")
    return res.astype(np.int32)


def conv2d_int(x, w, strides=(1, 1), padding=(0, 0, 0, 0), dilation=(1, 1)) -> np.ndarray:
    """Integer NCHW/OIHW conv2d (``groups = 1``) returning int32, exact like :func:`conv1d_int`:
    ``y[n,o,i,j] = sum_{c,a,b} x[n,c,i st_h + a dl_h - p_top, j st_w + b dl_w - p_left] w[o,c,a,b]``,
    products summed by float64 BLAS after checking the partial-sum bound is below 2^53.
    ``padding`` is ``(top, left, bottom, right)`` as Relax writes it."""
    x = np.asarray(x)
    w = np.asarray(w)
    assert x.dtype.kind in "iu" and w.dtype.kind in "iu", (x.dtype, w.dtype)
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    assert c == cg, "grouped conv2d is not supported"
    pt, pl, pb, pr = padding
    bound = c * kh * kw * float(np.abs(x.astype(np.int64)).max(initial=0)) * float(np.abs(w.astype(np.int64)).max(initial=0))
    if not bound < FLOAT64_EXACT_BOUND:
        raise OverflowError(f"conv2d partial sums up to {bound:.3g} not exact in float64")
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    ho = (h + pt + pb - dilation[0] * (kh - 1) - 1) // strides[0] + 1
    wo = (wd + pl + pr - dilation[1] * (kw - 1) - 1) // strides[1] + 1
    ih = np.arange(ho)[:, None] * strides[0] + np.arange(kh)[None, :] * dilation[0]  # [Ho, KH]
    iw = np.arange(wo)[:, None] * strides[1] + np.arange(kw)[None, :] * dilation[1]  # [Wo, KW]
    cols = xp[:, :, ih[:, :, None, None], iw[None, None, :, :]]  # [N, C, Ho, KH, Wo, KW]
    out = np.einsum("nciajb,ocab->noij", cols, w.astype(np.float64), optimize=True)
    res = np.rint(out)
    if res.size and (res.min() < INT32_MIN or res.max() > INT32_MAX):
        raise OverflowError(f"conv2d accumulator overflows int32 (range [{res.min():.0f}, {res.max():.0f}])")
    return res.astype(np.int32)
