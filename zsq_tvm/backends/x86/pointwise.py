"""Pointwise (k=1) int8 conv1d as a GEMM on x86 with AVX-512 VNNI, requantize fused (ncw: also full conv1d).

Problem (one pointwise conv1d of the integer graph, batch 1)::

    acc[t, m] = sum_k X[t, k] * W[m, k]                      X uint8 (post-ReLU) or int8
    Y[t, m]   = cast(clip((int64(acc[t, m] + bias[m]) * Mul[m] + 2^(Sh[m]-1)) >> Sh[m], qmin, qmax))

which is :func:`zsq_tvm.core.intmath.conv1d_int` (k=1) followed by :func:`zsq_tvm.core.intmath.requantize`
per output channel.  Two layouts, two register-tile shapes (one ``vpdpbusd`` = 16 int32 lanes, each
``+= sum_{r<4} u8 * s8``):

``layout="tk"`` (time-major ``X[T, K] -> Y[T, M]``): lanes are 16 output channels.  Weights are
packed offline (:func:`pack_weights`) to ``Wp[Mp/16, Kp/4, 16, 4]``, ``Wp[mo, ko, mi, ki] =
W[16 mo + mi, 4 ko + ki]`` (64 contiguous bytes per ``vpdpbusd``); the activation dword
``X[t, 4ko:4ko+4]`` is broadcast.  Register tile ``rt`` time rows x ``rm`` 16-channel vectors.  When
``K % 4``, ``T % rt`` or int8 activations need it, a ``xpad`` block writes a padded uint8 copy.

``layout="ncw"`` (the graph's own ``X[1, K, T] -> Y[1, M, T]``, batch 1; the Relax graph passes its
tensors as they are, no reshape): lanes are 16 consecutive *time steps* of one output channel, so
neither side is transposed.  A ``xwin`` pre-pass interleaves groups of 4 input channels into one
int32 per time step (the u8 operand: 4 consecutive k of one t, as VNNI wants)::

    Xw[g, t] = sum_{r<4} u8(X[4g + r, t] + off) << 8r        (rows 4g+r >= K: 0, their weights are 0)

and the weight dword ``Wq[m, 0, 4g:4g+4]`` (``Wq[Mp, taps, Kp]``, zero padded) is broadcast::

    acc[m, t .. t+15] += vpdpbusd(Xw[g, t .. t+15], broadcast(Wq[m, 0, 4g:4g+4]))

(the depthwise kernel's intrinsic, :data:`zsq_tvm.backends.x86.depthwise.VNNI_DW_U8S8_16X4`).  Register tile
``rm`` channels x ``rt`` 16-step vectors; the requantize epilogue uses per-channel scalars and writes
16 contiguous bytes of ``Y[0, m, :]`` per vector.  ``Xw`` rows are padded to a stride of 16 mod 64
words: at the natural 2048-byte stride (T=500 -> 512) the g-loop hits 4 L1 sets only.

The ncw kernel also covers a full conv1d (groups 1, ``taps`` taps, dilation ``d``, zero pads
``pad_l``/``pad_r``: Jasper's blocks).  ``Xw`` then spans the padded input (pad columns hold ``u8(0 +
off)``) and the reduction gains a tap axis; 16 outputs of tap ``j`` read the 64 contiguous bytes at
column ``t + j d``::

    acc[m, t] = sum_j sum_g sum_r byte_r(Xw[g, t + j d]) * Wq[m, j, 4g + r]
              = sum_j sum_k xpad[k, t + j d] * W[m, k, j]                 (intmath.conv1d_int)

With a stride ``s`` (Jasper's first conv: 2) output ``t`` reads column ``s t + j d``, so 16 consecutive
outputs would read every s-th word.  ``Xw`` then stores the padded columns by phase, ``Xw[c % s, g, c // s]``
(one ``xwin_strided`` pre-pass block), and tap ``j`` of outputs ``t .. t+15`` reads the 16 contiguous words
``Xw[(j d) % s, g, t + (j d) // s : +16]``: the same intrinsic, the same register tiles.

and, for a residual join (``residual``), the epilogue adds an int32 ``R[1, M, Tout]`` to the requantized
int32 value (clipped to ``req_qmin..req_qmax``) before the final clip and cast
(:mod:`zsq_tvm.backends.x86.offload_pointwise`).

Signed int8 activations (the model's first layer, and every layer fed by a depthwise conv).  VNNI
multiplies u8 x s8 only, so the kernel uses ``xu = x + 128`` in ``[0, 255]`` and corrects in int32,
exactly::

    sum_k x[t,k] w[m,k] = sum_k (x[t,k] + 128) w[m,k] - 128 * sum_k w[m,k]

so ``bias'[m] = bias[m] - 128 * rowsum(W)[m]`` (:func:`fold_bias`, computed offline in int64 and
checked to fit int32; padded k have zero weights, so their value never matters; with taps the sum runs
over taps too and the zero pads read 128).  The shifted partial sums are bounded by
``K * taps * 255 * 127`` (checked < 2^31); the final ``acc' + bias'`` equals ``acc + bias``,
whose range ``zsq_tvm.core.overflow`` proves.  Integer addition is associative, so the result is bit-exact,
not approximately equal.

AVX2 (``isa="avx2"``; CPUs without VNNI): the same kernels with pairs instead of quads.  ncw: ``Xw`` packs
2 input channels per int32 as int16 halves (:func:`zsq_tvm.backends.x86.avx2.pack16`), the weights are int16
``Wq[Mp, taps, Kp]`` (``Kp`` even) and one broadcast weight pair feeds ``vpmaddwd`` + ``vpaddd`` on 8 lanes
(:data:`zsq_tvm.backends.x86.avx2.AVX2_PAIR_16X2`).  tk: lanes are 8 output channels, the weights int32 words of two
int16 halves ``Wp[Mp/8, Kp/2, 8]`` (word ``Wp[mo, g, mi]`` = ``W[8 mo + mi, 2g]``, ``W[8 mo + mi, 2g + 1]``),
and the broadcast dword is an int16 pair of a zero-padded int16 copy ``Xh[Tp, Kp]`` of ``X``; register
tiles of 2 x 8 channels (8 when ``M % 16``: LLVM would scalarise a 2-vector tile's predicated epilogue) x
up to 6 (12) rows fill 12 of the 16 ymm registers.  int16 holds u8 and int8 activations as they are: no
shift, the bias is added unchanged, and every product and pair sum is exact (no ``vpmaddubsw``
saturation).

Both schedules fuse the outer (t, m) tiles into one parallel loop (TVM thread pool) and requantize
each tile from its register accumulators.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from zsq_tvm.backends.x86.avx2 import IsaGeometry, half16, pack16, register_avx2
from zsq_tvm.backends.x86.depthwise import _element, kernel_spec, register_dw
from zsq_tvm.backends.x86.vnni import compile_kernel, register
from zsq_tvm.core import intmath
from zsq_tvm.core.tir_intmath import requantize_expr

__all__ = [
    "PointwiseSpec",
    "pack_weights",
    "fold_bias",
    "pointwise_func",
    "schedule",
    "build",
    "reference",
    "PointwiseKernel",
]


def _round_up(x: int, m: int) -> int:
    return (x + m - 1) // m * m


@dataclass(frozen=True)
class PointwiseSpec(IsaGeometry):
    """``X[T, K] (a_dtype) x W[M, K] (int8) -> Y[T, M] (out_dtype)`` with requantize (tk), or the graph-layout
    ``X[1, K, T] -> Y[1, M, Tout]`` conv1d with ``taps`` taps, optional residual join (ncw)."""

    T: int
    K: int
    M: int
    a_dtype: str = "uint8"  # post-ReLU activations; "int8" = first layer (shifted by +128)
    out_dtype: str = "int8"
    qmin: int = -127
    qmax: int = 127
    rt: int = 0  # register tile: tk time rows / ncw 16-step time vectors (0: choose both rt and rm)
    rm: int = 4  # register tile: tk 16-channel vectors / ncw channels (used by ncw only with rt set)
    layout: str = "tk"  # "tk": X[T, K] -> Y[T, M];  "ncw": X[1, K, T] -> Y[1, M, T] (graph layout, N=1)
    # ncw only: fuse a residual add, Y = clip(requant(acc) [clipped to req_qmin..req_qmax] + R, qmin, qmax)
    residual: bool = False
    req_qmin: int = 0
    req_qmax: int = 0
    # ncw only: a full conv1d (groups 1, stride 1) with `taps` taps dilated by `dilation`, zero pads;
    # T is then the *input* length and Tout the output length
    taps: int = 1
    dilation: int = 1
    pad_l: int = 0
    pad_r: int = 0
    isa: str = "avx512vnni"  # "avx2": vpmaddwd on int16 pairs, 8 lanes
    stride: int = 1  # ncw only: output t reads input column stride * t + j * dilation (Jasper's first conv: 2)

    def __post_init__(self):
        assert self.isa in ("avx512vnni", "avx2"), self.isa
        if self.residual:
            assert self.layout == "ncw", "residual add is fused in the ncw kernel only"
            assert -(2**31) <= self.req_qmin <= self.req_qmax < 2**31, (self.req_qmin, self.req_qmax)
        if self.taps != 1 or self.pad_l or self.pad_r or self.stride != 1:
            assert self.layout == "ncw", "k > 1 convs, padding and strides: ncw kernel only"
        assert self.stride >= 1, self.stride
        assert self.taps >= 1 and self.dilation >= 1 and self.pad_l >= 0 and self.pad_r >= 0
        assert not self.symbolic or self.layout == "ncw", "a symbolic length: ncw kernel only"
        assert self.symbolic or self.Tout >= 1

    @property
    def symbolic(self) -> bool:
        """``T`` is a symbolic length (a symbolic-T model, ncw only): the kernel takes any ``T``; the window buffer
        has one writer and the requantize runs over the padded tile range, predicated (so the schedule can prove
        each stage covers what the next one reads); the register tile is the full one."""
        return not isinstance(self.T, (int, np.integer))

    @property
    def Tout(self) -> int:
        """Output time steps: ``(T + pad_l + pad_r - dilation (taps - 1) - 1) // stride + 1`` (``T`` for a
        pointwise conv)."""
        return (self.T + self.pad_l + self.pad_r - self.dilation * (self.taps - 1) - 1) // self.stride + 1

    @property
    def tile_t(self) -> int:
        """Time steps per register tile (tk: rows; ncw: lanes x the number of time vectors)."""
        if self.layout == "ncw":
            return self.lanes * self.ncw_vectors
        if self.rt:
            return self.rt
        if self.isa == "avx2":  # 16 ymm: 12 accumulators (6 rows x 2 vectors, 4 x 3, 12 x 1) + weights + broadcast
            cap = 12 // self.tile_m
            return next((r for r in range(cap, max(1, cap // 2) - 1, -1) if self.T % r == 0), cap)
        for r in (4, 5, 6, 8, 3):  # prefer a divisor of T (no padded copy of X)
            if self.T % r == 0:
                return r
        return 6

    @property
    def ncw_vectors(self) -> int:
        """ncw: time vectors per register tile (``rt``, else up to 4 (VNNI) / 3 (AVX2), fewer for short T)."""
        v = self.lanes
        if self.symbolic:
            return self.rt or (4 if v == 16 else 3)
        return self.rt or max(1, min(4 if v == 16 else 3, _round_up(self.Tout, v) // v))

    @property
    def tile_m(self) -> int:
        """Output channels per register tile in units of ``lanes`` (tk: 16 on VNNI, 8 on AVX2) or 1 (ncw)."""
        if self.layout == "ncw":
            # explicit tile (rt set): rm channels; else ~16 int32x16 accumulators (4 channels x 4
            # vectors, 8 x 2, 8 x 1), never more channels than M
            # AVX2 has 16 ymm registers: 12 accumulators (4 x 3, 6 x 2, 8 x 1) + broadcast + product
            rm = self.rm if self.rt else ({1: 8, 2: 8, 3: 5} if self.lanes == 16 else {1: 8, 2: 6}).get(
                self.ncw_vectors, 4)
            return max(1, min(rm, self.M))
        # never tile wider than the (lane-rounded) channel count; AVX2 without an explicit tile: avx2_vectors
        rm = self.rm if self.isa == "avx512vnni" or self.rt else self.avx2_vectors(self.M)
        return max(1, min(rm, _round_up(self.M, self.lanes) // self.lanes))

    @property
    def Tp(self) -> int:
        return _round_up(self.Tout, self.tile_t)

    @property
    def ncw_cols(self) -> int:
        """ncw: padded input columns the windows hold (the last output tile's reach; with a stride rounded up to
        whole phases and never fewer than ``pad_l + T``)."""
        reach = self.dilation * (self.taps - 1)
        if self.stride == 1:
            return self.Tp + reach
        if self.symbolic:  # a whole phase more than the reach: >= pad_l + T for every T, no max() to prove
            return self.stride * self.Tp + _round_up(reach, self.stride) + self.stride
        return _round_up(max(self.stride * self.Tp + reach, self.pad_l + self.T), self.stride)

    @property
    def ncw_pad_r_cols(self) -> int:
        """ncw: window columns right of the input (its right pad, then tile padding), ``>= pad_r``."""
        return self.ncw_cols - self.pad_l - self.T

    @property
    def Kp(self) -> int:
        return _round_up(self.K, self.gs)

    @property
    def Mp(self) -> int:
        return _round_up(self.M, self.tile_m if self.layout == "ncw" else self.lanes * self.tile_m)

    @property
    def needs_xpad(self) -> bool:
        return (self.layout != "tk" or self.a_dtype != "uint8" or self.Tp != self.T
                or self.Kp != self.K or self.isa == "avx2")


def pack_weights(W: np.ndarray, spec: PointwiseSpec) -> np.ndarray:
    """``W[M, K]`` (or OIW ``[M, K, taps]``) int8 -> tk: ``Wp[Mp/16, Kp/4, 16, 4]`` (AVX2: int32
    ``Wp[Mp/8, Kp/2, 8]``, word ``Wp[mo, g, mi]`` = ``W[8 mo + mi, 2g]`` | ``W[8 mo + mi, 2g + 1] << 16`` as int16
    halves); ncw: ``Wq[Mp, taps, Kp]`` (``Wq[m, j, k] = W[m, k, j]``: one broadcast dword per tap and 4 input
    channels); zero padded."""
    W = np.asarray(W)
    if spec.layout == "ncw":
        W3 = W if W.ndim == 3 else W[:, :, None]
        assert W3.shape == (spec.M, spec.K, spec.taps) and W3.dtype == np.int8, (W3.shape, W3.dtype)
        Wq = np.zeros((spec.Mp, spec.taps, spec.Kp), spec.wdtype)
        Wq[: spec.M, :, : spec.K] = W3.transpose(0, 2, 1)
        return Wq
    if W.ndim == 3:
        assert W.shape[2] == 1, "pointwise conv only"
        W = W[:, :, 0]
    assert W.shape == (spec.M, spec.K) and W.dtype == np.int8, (W.shape, W.dtype)
    if spec.isa == "avx2":
        Wpad = np.zeros((spec.Mp, spec.Kp), np.int16)
        Wpad[: spec.M, : spec.K] = W
        # [Mp/8, 8, Kp/2, 2] -> [Mp/8, Kp/2, 8, 2]; the int16 pair (low, high) of a little-endian int32 word
        pairs = Wpad.reshape(spec.Mp // 8, 8, spec.Kp // 2, 2).transpose(0, 2, 1, 3)
        return np.ascontiguousarray(pairs).view(np.int32)[..., 0]
    Wpad = np.zeros((spec.Mp, spec.Kp), np.int8)
    Wpad[: spec.M, : spec.K] = W
    return np.ascontiguousarray(Wpad.reshape(spec.Mp // 16, 16, spec.Kp // 4, 4).transpose(0, 2, 1, 3))


def fold_bias(W: np.ndarray, bias, spec: PointwiseSpec) -> np.ndarray:
    """int32 bias the kernel adds: ``bias`` (u8 activations, or AVX2) or ``bias - 128 rowsum(W)`` (int8 on VNNI;
    the sum runs over channels and taps: every tap, pads included, reads a +128-shifted value)."""
    if spec.offset and spec.K * spec.taps * 255 * 127 >= 2**31:
        raise OverflowError(f"K={spec.K}: shifted u8 partial sums could pass 2^31")
    return intmath.fold_operand_shift(bias, W, 128 if spec.offset else 0, spec.M)


def pointwise_func(spec: PointwiseSpec):
    """The TIR PrimFunc ``(X[T,K], Wp[Mp/16,Kp/4,16,4], B[M] i32, Mul[M] i64, Sh[M] i64) -> Y[T,M]``
    (ncw: ``(X[1,K,T], Wq[Mp,Kp], B, Mul, Sh) -> Y[1,M,T]``, :func:`_ncw_func`)."""
    from tvm.script import tirx as T

    if spec.layout == "ncw":
        return _ncw_func(spec)
    assert spec.layout == "tk", spec.layout
    if spec.isa == "avx2":
        return _tk_avx2_func(spec)

    Tn, K, M = spec.T, spec.K, spec.M
    Tp, Kp, Mp = spec.Tp, spec.Kp, spec.Mp
    ad, od = spec.a_dtype, spec.out_dtype
    qmin, qmax = int(spec.qmin), int(spec.qmax)
    off = 128 if ad == "int8" else 0

    if spec.needs_xpad:

        @T.prim_func(s_tir=True)
        def func(X: T.Buffer((Tn, K), ad), Wp: T.Buffer((Mp // 16, Kp // 4, 16, 4), "int8"),
                 B: T.Buffer((M,), "int32"), Mul: T.Buffer((M,), "int64"),
                 Sh: T.Buffer((M,), "int64"), Y: T.Buffer((Tn, M), od)):
            T.func_attr({"global_symbol": "main", "tirx.noalias": True})
            Xp = T.sblock_alloc_buffer((Tp, Kp), "uint8")
            acc = T.sblock_alloc_buffer((Tp, Mp), "int32")
            for t, k in T.grid(Tp, Kp):
                with T.sblock("xpad"):
                    vt, vk = T.axis.remap("SS", [t, k])
                    Xp[vt, vk] = T.if_then_else(
                        vt < Tn and vk < K,
                        T.Cast("uint8", T.Cast("int32", X[T.min(vt, Tn - 1), T.min(vk, K - 1)]) + off),
                        T.uint8(0))
            for t, mo, mi, ko, ki in T.grid(Tp, Mp // 16, 16, Kp // 4, 4):
                with T.sblock("gemm"):
                    vt, vmo, vmi, vko, vki = T.axis.remap("SSSRR", [t, mo, mi, ko, ki])
                    with T.init():
                        acc[vt, vmo * 16 + vmi] = 0
                    acc[vt, vmo * 16 + vmi] = acc[vt, vmo * 16 + vmi] + T.Cast(
                        "int32", Xp[vt, vko * 4 + vki]) * T.Cast("int32", Wp[vmo, vko, vmi, vki])
            for t, m in T.grid(Tn, M):
                with T.sblock("requant"):
                    vt, vm = T.axis.remap("SS", [t, m])
                    Y[vt, vm] = requantize_expr(acc[vt, vm] + B[vm], Mul[vm], Sh[vm], qmin, qmax, od)

        return func

    @T.prim_func(s_tir=True)
    def func(X: T.Buffer((Tn, K), "uint8"), Wp: T.Buffer((Mp // 16, Kp // 4, 16, 4), "int8"),
             B: T.Buffer((M,), "int32"), Mul: T.Buffer((M,), "int64"),
             Sh: T.Buffer((M,), "int64"), Y: T.Buffer((Tn, M), od)):
        T.func_attr({"global_symbol": "main", "tirx.noalias": True})
        acc = T.sblock_alloc_buffer((Tp, Mp), "int32")
        for t, mo, mi, ko, ki in T.grid(Tp, Mp // 16, 16, Kp // 4, 4):
            with T.sblock("gemm"):
                vt, vmo, vmi, vko, vki = T.axis.remap("SSSRR", [t, mo, mi, ko, ki])
                with T.init():
                    acc[vt, vmo * 16 + vmi] = 0
                acc[vt, vmo * 16 + vmi] = acc[vt, vmo * 16 + vmi] + T.Cast(
                    "int32", X[vt, vko * 4 + vki]) * T.Cast("int32", Wp[vmo, vko, vmi, vki])
        for t, m in T.grid(Tn, M):
            with T.sblock("requant"):
                vt, vm = T.axis.remap("SS", [t, m])
                Y[vt, vm] = requantize_expr(acc[vt, vm] + B[vm], Mul[vm], Sh[vm], qmin, qmax, od)

    return func


def _tk_avx2_func(spec: PointwiseSpec):
    """AVX2 tk: ``(X[T,K], Wp[Mp/8,Kp/2,8] i32, B[M] i32, Mul, Sh) -> Y[T,M]``; ``X`` widened to a zero-padded
    int16 copy ``Xh[Tp, Kp]`` whose pair ``Xh[t, 2g:2g+2]`` is the broadcast dword of one ``vpmaddwd``::

        acc[t, 8 mo + mi] += sum_{r<2} half_r(Wp[mo, g, mi]) * Xh[t, 2g + r]
    """
    from tvm.script import tirx as T

    Tn, K, M = spec.T, spec.K, spec.M
    Tp, Kp, Mp = spec.Tp, spec.Kp, spec.Mp
    ad, od = spec.a_dtype, spec.out_dtype
    qmin, qmax = int(spec.qmin), int(spec.qmax)

    @T.prim_func(s_tir=True)
    def func(X: T.Buffer((Tn, K), ad), Wp: T.Buffer((Mp // 8, Kp // 2, 8), "int32"),
             B: T.Buffer((M,), "int32"), Mul: T.Buffer((M,), "int64"),
             Sh: T.Buffer((M,), "int64"), Y: T.Buffer((Tn, M), od)):
        T.func_attr({"global_symbol": "main", "tirx.noalias": True})
        Xh = T.sblock_alloc_buffer((Tp, Kp), "int16")
        acc = T.sblock_alloc_buffer((Tp, Mp), "int32")
        for t, k in T.grid(Tp, Kp):
            with T.sblock("xpad"):
                vt, vk = T.axis.remap("SS", [t, k])
                Xh[vt, vk] = T.if_then_else(vt < Tn and vk < K, T.Cast("int16", X[T.min(vt, Tn - 1), T.min(vk, K - 1)]),
                                            T.int16(0))
        for t, mo, mi, g, r in T.grid(Tp, Mp // 8, 8, Kp // 2, 2):
            with T.sblock("gemm"):
                vt, vmo, vmi, vg, vr = T.axis.remap("SSSRR", [t, mo, mi, g, r])
                with T.init():
                    acc[vt, vmo * 8 + vmi] = 0
                acc[vt, vmo * 8 + vmi] = acc[vt, vmo * 8 + vmi] + half16(Wp[vmo, vg, vmi], vr) * T.Cast(
                    "int32", Xh[vt, vg * 2 + vr])
        for t, m in T.grid(Tn, M):
            with T.sblock("requant"):
                vt, vm = T.axis.remap("SS", [t, m])
                Y[vt, vm] = requantize_expr(acc[vt, vm] + B[vm], Mul[vm], Sh[vm], qmin, qmax, od)

    return func


def _pack4(X, g, t, rows: int, off: int, gs: int = 4, clamp: int | None = None):
    """int32 holding ``u8(X[0, 4g + r, t] + off)`` in byte ``r`` for ``r < rows`` (other bytes 0); ``gs=2``
    (AVX2): ``X[0, 2g + r, t]`` as int16 in half ``r`` (:func:`zsq_tvm.backends.x86.avx2.pack16`).  ``clamp=K``: row
    indices clamped to ``K - 1`` (a row past ``K`` meets a zero weight, so any in-bounds value is right, and
    one branch-free expression serves every group)."""
    from tvm.script import tirx as T

    def row(r):
        return g * gs + r if clamp is None else T.min(g * gs + r, clamp - 1)

    if gs == 2:
        return pack16(T.Cast("int32", X[0, row(0), t]), T.Cast("int32", X[0, row(1), t]) if rows > 1 else None)
    word = None
    for r in range(rows):
        b = T.Cast("int32", X[0, row(r), t]) + off  # in [0, 255]: u8 as is, int8 shifted by +128
        b = b if r == 0 else T.shift_left(b, 8 * r)
        word = b if word is None else T.bitwise_or(word, b)
    return word


def _ncw_func(spec: PointwiseSpec):
    """``(X[1,K,T], Wq[Mp,taps,Kp] i8, B[M] i32, Mul[M] i64, Sh[M] i64[, R[1,M,Tout] i32]) -> Y[1,M,Tout]``,
    time steps in lanes; ``R`` (``spec.residual``) is added to the int32 requantized value before the final
    clip.  With ``taps > 1`` the reduction also runs over the taps: ``Xw`` covers the zero-padded input
    (pads packed as ``u8(0 + off)``), and tap ``j`` of output ``t`` reads column ``t + j * dilation``::

        acc[m, t] = sum_j sum_g sum_r byte_r(Xw[g, t + j d]) * Wq[m, j, 4g + r]
    """
    from tvm.script import tirx as T

    spec = kernel_spec(spec)
    sym, tt = spec.symbolic, spec.tile_t
    Tn, K, M = spec.T, spec.K, spec.M
    To, Tp, Kp, Mp = spec.Tout, spec.Tp, spec.Kp, spec.Mp
    J, d, pl = spec.taps, spec.dilation, spec.pad_l
    st = spec.stride
    # padded input columns the last output tile reads (with a stride: every column up to its last phase)
    Tw = spec.ncw_cols
    tail = 0 if sym else spec.ncw_pad_r_cols
    ad, od = spec.a_dtype, spec.out_dtype
    qmin, qmax = int(spec.qmin), int(spec.qmax)
    rqmin, rqmax = int(spec.req_qmin), int(spec.req_qmax)
    off = spec.offset
    pad_word = int(np.uint32(off * 0x01010101).view(np.int32))  # four u8(0 + off) bytes (AVX2: 0)
    gs, wd = spec.gs, spec.wdtype
    G, Gf, kr = Kp // gs, K // gs, K % gs  # groups of gs input channels; full groups; rows of the last one
    # stride 1: Xw[g, c] for padded column c.  Stride s: the columns are stored by phase,
    # Xw[c % s, g, c // s], so the s t + j d columns of 16 consecutive outputs t (one tap j) are again
    # 16 contiguous words, Xw[(j d) % s, g, t + (j d) // s], as the vpdpbusd intrinsic wants
    xw_shape = (G, Tw) if st == 1 else (st, G, Tw // st)

    def wr(g, t, j):  # the column tap j of output t reads
        return (g, t + j * d) if st == 1 else ((j * d) % st, g, t + (j * d) // st)

    @T.macro
    def xwin_and_gemm(X, Wq, Xw, acc):
        if st > 1:  # one block over (phase, group, column); rows >= K read row K-1 (their weights are 0)
            for p, g, u in T.grid(st, G, Tw // st):
                with T.sblock("xwin_strided"):
                    vp, vg, vu = T.axis.remap("SSS", [p, g, u])
                    # input column vu * st + vp - pl; pad columns hold u8(0 + off) bytes
                    Xw[vp, vg, vu] = T.if_then_else(
                        vu * st + vp >= pl and vu * st + vp < pl + Tn,
                        _pack4(X, vg, T.max(T.min(vu * st + vp - pl, Tn - 1), 0), gs, off, gs, clamp=K), pad_word)
        if st == 1 and sym:  # one writer of every column: a symbolic length needs it (PointwiseSpec.symbolic)
            for g, u in T.grid(G, Tw):
                with T.sblock("xwin_all"):
                    vg, vu = T.axis.remap("SS", [g, u])
                    Xw[vg, vu] = T.if_then_else(
                        vu >= pl and vu < pl + Tn,
                        _pack4(X, vg, T.max(T.min(vu - pl, Tn - 1), 0), gs, off, gs, clamp=K), pad_word)
        if st == 1 and not sym and pl > 0:  # left zero pad (shifted: u8(0 + off) in every byte)
            for g, u in T.grid(G, pl):
                with T.sblock("xwin_pad_l"):
                    vg, vu = T.axis.remap("SS", [g, u])
                    Xw[vg, vu] = pad_word
        if st == 1 and not sym and Gf > 0:
            for g, t in T.grid(Gf, Tn):
                with T.sblock("xwin"):
                    vg, vt = T.axis.remap("SS", [g, t])
                    Xw[vg, vt + pl] = _pack4(X, vg, vt, gs, off, gs)
        if st == 1 and not sym and kr > 0:  # the K % 4 rows of the last group; its other bytes meet zero weights
            for t in range(Tn):
                with T.sblock("xwin_k_tail"):
                    vt = T.axis.spatial(Tn, t)
                    Xw[Gf, vt + pl] = _pack4(X, Gf, vt, kr, off, gs)
        if st == 1 and tail > 0:  # right zero pad, then the tile padding (defined values; outputs not written)
            for g, u in T.grid(G, tail):
                with T.sblock("xwin_pad_r"):
                    vg, vu = T.axis.remap("SS", [g, u])
                    Xw[vg, vu + pl + Tn] = pad_word
        for m, t, j, g, r in T.grid(Mp, Tp, J, G, gs):
            with T.sblock("gemm"):
                vm, vt, vj, vg, vr = T.axis.remap("SSRRR", [m, t, j, g, r])
                with T.init():
                    acc[vm, vt] = 0
                acc[vm, vt] = acc[vm, vt] + _element(Xw[wr(vg, vt, vj)], vr, gs) * T.Cast(
                    "int32", Wq[vm, vj, vg * gs + vr])

    def requant(acc, B, Mul, Sh, R, vm, vt):
        """The epilogue value of output (vm, vt) (TIR, built at parse time): requantize, plus for a residual join
        ``R`` added to the int32 value clipped to [rqmin, rqmax] and the sum clipped to [qmin, qmax]."""
        if R is None:
            return requantize_expr(acc[vm, vt] + B[vm], Mul[vm], Sh[vm], qmin, qmax, od)
        return T.Cast(od, T.max(T.min(requantize_expr(acc[vm, vt] + B[vm], Mul[vm], Sh[vm], rqmin, rqmax, "int32")
                                      + R[0, vm, vt], T.int32(qmax)), T.int32(qmin)))

    if not spec.residual:

        @T.prim_func(s_tir=True)
        def func(X: T.Buffer((1, K, Tn), ad), Wq: T.Buffer((Mp, J, Kp), wd), B: T.Buffer((M,), "int32"),
                 Mul: T.Buffer((M,), "int64"), Sh: T.Buffer((M,), "int64"), Y: T.Buffer((1, M, To), od)):
            T.func_attr({"global_symbol": "main", "tirx.noalias": True})
            Xw = T.sblock_alloc_buffer(xw_shape, "int32")
            acc = T.sblock_alloc_buffer((Mp, Tp), "int32")
            xwin_and_gemm(X, Wq, Xw, acc)
            for m, t in T.grid(M, Tp if sym else To):
                with T.sblock("requant"):
                    vm, vt = T.axis.remap("SS", [m, t])
                    if sym:  # guards in the body: scheduling keeps them (a block predicate would be re-derived)
                        if vt // tt * tt + tt <= To:  # a whole tile: vectorised, no guard
                            Y[0, vm, vt] = requant(acc, B, Mul, Sh, None, vm, vt)
                        elif vt < To:  # the last, partial tile
                            Y[0, vm, vt] = requant(acc, B, Mul, Sh, None, vm, vt)
                    else:
                        Y[0, vm, vt] = requant(acc, B, Mul, Sh, None, vm, vt)

        return func

    # residual: the int32 add in `requant` cannot wrap (the caller checks rqmin + R's min >= -2^31 and rqmax + R's
    # max < 2^31)
    @T.prim_func(s_tir=True)
    def func(X: T.Buffer((1, K, Tn), ad), Wq: T.Buffer((Mp, J, Kp), wd), B: T.Buffer((M,), "int32"),
             Mul: T.Buffer((M,), "int64"), Sh: T.Buffer((M,), "int64"), R: T.Buffer((1, M, To), "int32"),
             Y: T.Buffer((1, M, To), od)):
        T.func_attr({"global_symbol": "main", "tirx.noalias": True})
        Xw = T.sblock_alloc_buffer(xw_shape, "int32")
        acc = T.sblock_alloc_buffer((Mp, Tp), "int32")
        xwin_and_gemm(X, Wq, Xw, acc)
        for m, t in T.grid(M, Tp if sym else To):
            with T.sblock("requant"):
                vm, vt = T.axis.remap("SS", [m, t])
                if sym:
                    if vt // tt * tt + tt <= To:
                        Y[0, vm, vt] = requant(acc, B, Mul, Sh, R, vm, vt)
                    elif vt < To:
                        Y[0, vm, vt] = requant(acc, B, Mul, Sh, R, vm, vt)
                else:
                    Y[0, vm, vt] = requant(acc, B, Mul, Sh, R, vm, vt)

    return func


def schedule(spec: PointwiseSpec, tensorize: bool = True):
    """Hand schedule: register tiles, parallel outer tiles, VNNI inner product (ncw: :func:`_schedule_ncw`)."""
    from tvm import s_tir

    if spec.layout == "ncw":
        return _schedule_ncw(spec, tensorize)
    intrin = register("local") if spec.isa == "avx512vnni" else register_avx2()
    v = spec.lanes
    sch = s_tir.Schedule(pointwise_func(spec))
    gemm = sch.get_sblock("gemm")
    req = sch.get_sblock("requant")
    rt, rm = spec.tile_t, spec.tile_m
    t, mo, mi, ko, ki = sch.get_loops(gemm)
    t0, t1 = sch.split(t, [None, rt])
    m0, m1 = sch.split(mo, [None, rm])
    sch.reorder(t0, m0, ko, t1, m1, mi, ki)
    outer = sch.fuse(t0, m0)
    sch.parallel(outer)
    # accumulators: a (rt, rm*16) int32 tile per outer iteration, promoted to registers
    sch.set_scope(gemm, 0, "local")
    # requantize the tile right after its reduction finishes
    sch.reverse_compute_at(req, outer, preserve_unit_loops=True)
    # epilogue: vectorise over the 16-lane (AVX2: 8) channel chunks
    lt, lm = sch.get_loops(req)[-2:]
    lm0, lm1 = sch.split(lm, [None, v])
    sch.vectorize(lm1)
    init = sch.decompose_reduction(gemm, ko)
    il = sch.get_loops(init)
    sch.vectorize(sch.fuse(*il[-2:]))  # (m1, mi) -> rm * lanes
    sch.unroll(il[-3])
    sch.unroll(t1)
    sch.unroll(m1)
    if tensorize:
        sch.tensorize(mi, intrin)
    if spec.needs_xpad:
        xb = sch.get_sblock("xpad")
        xt, xk = sch.get_loops(xb)
        sch.parallel(xt)
        xo, xi = sch.split(xk, [None, spec.gs])
        sch.vectorize(xi)
    return sch


def _schedule_ncw(spec: PointwiseSpec, tensorize: bool = True):
    """ncw: (rm channels x rt 16-step vectors) register tiles, (t, m) tiles fused and parallel, m inner
    so consecutive tiles reuse one ``Xw`` column slab (``Kp * 16 rt`` bytes) from L1."""
    from tvm import s_tir

    # C[16] += sum_r byte_r(A[16]) * B[r]: A = Xw vector, B = weight dword (AVX2: 8 lanes, int16 halves)
    intrin = register_dw() if spec.isa == "avx512vnni" else register_avx2()
    v = spec.lanes
    sch = s_tir.Schedule(pointwise_func(spec))
    gemm, req = sch.get_sblock("gemm"), sch.get_sblock("requant")
    rm, rv = spec.tile_m, spec.ncw_vectors
    m, t, j, g, r = sch.get_loops(gemm)
    m0, m1 = sch.split(m, [None, rm])
    t0, t1, t2 = sch.split(t, [None, rv, v])
    sch.reorder(t0, m0, j, g, m1, t1, t2, r)
    outer = sch.fuse(t0, m0)
    sch.parallel(outer)
    sch.set_scope(gemm, 0, "local")  # the rm x rt int32x16 accumulators live in zmm registers
    sch.reverse_compute_at(req, outer, preserve_unit_loops=True)
    lm, lt = sch.get_loops(req)[-2:]
    # per-channel bias / multiplier / shift as scalars: vectorised over t with the T % 16 tail's
    # predicate they would be gathered (vpgatherdq, ~10% of the kernel)
    for i in (1, 2, 3):  # B, Mul, Sh (read buffer 0 is acc)
        sch.compute_at(sch.cache_read(req, i, "local"), lm, preserve_unit_loops=True)
    sch.vectorize(sch.split(sch.get_loops(req)[-1], [None, v])[1])
    init = sch.decompose_reduction(gemm, j)
    il = sch.get_loops(init)
    sch.vectorize(sch.fuse(*il[-2:]))
    sch.unroll(il[-3])
    sch.unroll(m1)
    sch.unroll(t1)
    if tensorize:
        sch.tensorize(t2, intrin)
    # the xwin blocks that exist (full groups if K >= 4, the K % 4 tail, pads / tile padding)
    G, Gf = spec.Kp // spec.gs, spec.K // spec.gs
    tail = spec.ncw_pad_r_cols
    if spec.stride > 1:
        blocks = ["xwin_strided"]
    elif spec.symbolic:
        blocks = ["xwin_all"]
    else:
        blocks = [n for n, present in (("xwin", Gf > 0), ("xwin_k_tail", G > Gf), ("xwin_pad_l", spec.pad_l > 0),
                                       ("xwin_pad_r", tail > 0)) if present]
    # row stride = 16 mod 64 words: at T=500 (Tp=512) rows are 2048 B apart and the g-loop of a tile
    # would map onto 4 of the 64 L1 sets (conflict misses on every load)
    # (with a stride the buffer is [phase, group, column]: the group axis is 1)
    if not spec.symbolic:
        sch.storage_align(sch.get_sblock(blocks[0]), 0, axis=0 if spec.stride == 1 else 1, factor=64, offset=16)
    for name in blocks:
        b = sch.get_sblock(name)
        loops = sch.get_loops(b)
        if len(loops) == 3:  # strided: (phase, group) in parallel
            loops = [sch.fuse(loops[0], loops[1]), loops[2]]
        if len(loops) == 2:
            sch.parallel(loops[0])
        sch.vectorize(sch.split(loops[-1], [None, 16])[1])
    return sch


def build(spec: PointwiseSpec, target=None, tensorize: bool = True):
    """Compile :func:`schedule` for an AVX-512 VNNI llvm target; returns the runtime module."""
    return compile_kernel(schedule(spec, tensorize=tensorize).mod, target)


def reference(spec: PointwiseSpec, X, W, bias, Mul, Sh, R=None) -> np.ndarray:
    """numpy oracle: :func:`intmath.conv1d_int` (k=1 on NCW) + :func:`intmath.requantize` (+ the residual
    ``R[M, T]`` int32 and the final clip for ``spec.residual``, as the Relax graph's add/clip/astype)."""

    W = np.asarray(W)
    if W.ndim == 2:
        W = W[:, :, None]
    Xncw = np.asarray(X) if spec.layout == "ncw" else np.asarray(X).T  # [K, T]
    acc = intmath.conv1d_int(Xncw[None], W, strides=spec.stride, padding=(spec.pad_l, spec.pad_r),
                             dilation=spec.dilation)[0].T.astype(np.int64)  # [Tout, M]
    if bias is not None:
        acc = acc + np.asarray(bias, np.int64)[None, :]
    if spec.residual:
        y = intmath.requantize(acc, Mul, Sh, spec.req_qmin, spec.req_qmax, axis=1).astype(np.int32)
        y = np.clip(y.T + np.asarray(R, np.int32), spec.qmin, spec.qmax).astype(spec.out_dtype)  # [M, T]
        return np.ascontiguousarray(y)
    y = intmath.requantize(acc, Mul, Sh, spec.qmin, spec.qmax, axis=1).astype(spec.out_dtype)
    return np.ascontiguousarray(y.T) if spec.layout == "ncw" else y


class PointwiseKernel:
    """A compiled kernel with its packed constants: ``kernel(X) -> Y`` (numpy in, numpy out).

    numpy arrays are 2-D in both layouts (``X[K, T] -> Y[M, T]`` for ncw); :meth:`run` takes the
    kernel's own buffer shape (``[1, K, T]`` for ncw)."""

    def __init__(self, spec: PointwiseSpec, W, bias, Mul, Sh, target=None, dev=None):
        import tvm

        self.spec = spec
        self.lib = build(spec, target)
        self.dev = dev or tvm.cpu()
        self.f = self.lib["main"]
        mk = lambda a: tvm.runtime.tensor(np.ascontiguousarray(a), self.dev)  # noqa: E731
        self.Wp = mk(pack_weights(W, spec))
        self.B = mk(fold_bias(W, bias, spec))
        self.Mul = mk(np.broadcast_to(np.asarray(Mul, np.int64), (spec.M,)))
        self.Sh = mk(np.broadcast_to(np.asarray(Sh, np.int64), (spec.M,)))
        yshape = (1, spec.M, spec.Tout) if spec.layout == "ncw" else (spec.T, spec.M)
        self.Y = tvm.runtime.empty(yshape, spec.out_dtype, self.dev)

    def run(self, Xt, Rt=None) -> None:
        """Run on already-placed tvm tensors (for timing); ``Rt`` the ``[1, M, T]`` residual (spec.residual)."""
        extra = (Rt,) if self.spec.residual else ()
        self.f(Xt, self.Wp, self.B, self.Mul, self.Sh, *extra, self.Y)

    def __call__(self, X: np.ndarray, R: np.ndarray | None = None) -> np.ndarray:
        import tvm

        X = np.ascontiguousarray(X)
        Xt = tvm.runtime.tensor(X[None] if self.spec.layout == "ncw" else X, self.dev)
        Rt = tvm.runtime.tensor(np.ascontiguousarray(R, np.int32)[None], self.dev) if self.spec.residual else None
        self.run(Xt, Rt)
        y = self.Y.numpy()
        return y[0] if self.spec.layout == "ncw" else y
