"""Pointwise (k=1) int8 conv1d as a GEMM on x86 with AVX-512 VNNI, requantize fused.

Problem (one pointwise conv1d of the integer graph, batch 1, time-major layout)::

    acc[t, m] = sum_k X[t, k] * W[m, k]                      X [T, K] uint8 (post-ReLU) or int8
    Y[t, m]   = cast(clip((int64(acc[t, m] + bias[m]) * Mul[m] + 2^(Sh[m]-1)) >> Sh[m], qmin, qmax))

which is :func:`zsq_tvm.intmath.conv1d_int` (k=1) followed by :func:`zsq_tvm.intmath.requantize`
per output channel.  ``layout="ncw"`` takes the graph's own layout ``x[K, T]``/``y[M, T]`` (NCW with
N=1 squeezed) and does both transposes inside the kernel: the activation transpose in the ``xpad``
block, the output one in the requantize write-back (so it is a drop-in for a k=1 conv1d).

Layouts
* weights are packed offline (:func:`pack_weights`) to ``Wp[Mp/16, Kp/4, 16, 4]``,
  ``Wp[mo, ko, mi, ki] = W[16 mo + mi, 4 ko + ki]`` (zero outside ``M x K``), so the 16x4 int8 tile one
  ``vpdpbusd`` consumes is 64 contiguous bytes;
* ``Mp``, ``Kp``, ``Tp`` are ``M``, ``K``, ``T`` rounded up to 16·rm, 4 and rt; when ``K % 4`` or
  ``T % rt`` is non-zero (or activations are int8) a ``xpad`` block writes a padded uint8 copy
  ``Xp[Tp, Kp]`` (zeros in the pad; padded weights are zero, so padded k adds nothing; padded rows t
  and columns m are never written to ``Y``).

Signed int8 activations (the model's first layer).  VNNI multiplies u8 x s8 only, so the kernel uses
``xu = x + 128`` in ``[1, 255]`` (``[0, 255]`` for -128) and corrects in int32, exactly::

    sum_k x[t,k] w[m,k] = sum_k (x[t,k] + 128) w[m,k] - 128 * sum_k w[m,k]

so ``bias'[m] = bias[m] - 128 * rowsum(W)[m]`` (:func:`fold_bias`, computed offline in int64 and
checked to fit int32).  The shifted partial sums are bounded by ``K * 255 * 127`` (checked < 2^31);
the final ``acc' + bias'`` equals ``acc + bias``, whose range ``zsq_tvm.overflow`` proves.  Integer
addition is associative, so the result is bit-exact, not approximately equal.

Schedule (:func:`schedule`): the register tile is ``rt`` time rows x ``rm`` 16-lane channel vectors
(rt·rm int32x16 accumulators in zmm registers); per 4-deep k step it loads rm weight vectors and
broadcasts rt activation dwords.  Outer tiles (t, m) are fused and parallel (TVM thread pool); the
requantize epilogue is computed per tile from the register accumulators and written as int8/uint8.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..tir_intmath import requantize_expr

from .vnni import register, x86_target

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
class PointwiseSpec:
    """``X[T, K] (a_dtype) x W[M, K] (int8) -> Y[T, M] (out_dtype)`` with requantize."""

    T: int
    K: int
    M: int
    a_dtype: str = "uint8"  # post-ReLU activations; "int8" = first layer (shifted by +128)
    out_dtype: str = "int8"
    qmin: int = -127
    qmax: int = 127
    rt: int = 0  # register tile rows (0: choose)
    rm: int = 4  # register tile 16-lane vectors
    layout: str = "tk"  # "tk": X[T, K] -> Y[T, M];  "ncw": X[K, T] -> Y[M, T] (graph layout, N=1)

    @property
    def tile_t(self) -> int:
        if self.rt:
            return self.rt
        for r in (4, 5, 6, 8, 3):  # prefer a divisor of T (no padded copy of X)
            if self.T % r == 0:
                return r
        return 6

    @property
    def tile_m(self) -> int:
        # never tile wider than the (16-rounded) channel count
        return max(1, min(self.rm, _round_up(self.M, 16) // 16))

    @property
    def Tp(self) -> int:
        return _round_up(self.T, self.tile_t)

    @property
    def Kp(self) -> int:
        return _round_up(self.K, 4)

    @property
    def Mp(self) -> int:
        return _round_up(self.M, 16 * self.tile_m)

    @property
    def needs_xpad(self) -> bool:
        return (self.layout != "tk" or self.a_dtype != "uint8" or self.Tp != self.T
                or self.Kp != self.K)


def pack_weights(W: np.ndarray, spec: PointwiseSpec) -> np.ndarray:
    """``W[M, K]`` (or OIW ``[M, K, 1]``) int8 -> ``Wp[Mp/16, Kp/4, 16, 4]``, zero padded."""
    W = np.asarray(W)
    if W.ndim == 3:
        assert W.shape[2] == 1, "pointwise conv only"
        W = W[:, :, 0]
    assert W.shape == (spec.M, spec.K) and W.dtype == np.int8, (W.shape, W.dtype)
    Wpad = np.zeros((spec.Mp, spec.Kp), np.int8)
    Wpad[: spec.M, : spec.K] = W
    return np.ascontiguousarray(Wpad.reshape(spec.Mp // 16, 16, spec.Kp // 4, 4).transpose(0, 2, 1, 3))


def fold_bias(W: np.ndarray, bias, spec: PointwiseSpec) -> np.ndarray:
    """int32 bias the kernel adds: ``bias`` (u8 activations) or ``bias - 128 rowsum(W)`` (int8)."""
    W = np.asarray(W)
    if W.ndim == 3:
        W = W[:, :, 0]
    b = np.zeros(spec.M, np.int64) if bias is None else np.broadcast_to(np.asarray(bias, np.int64), (spec.M,))
    if spec.a_dtype == "int8":
        if spec.K * 255 * 127 >= 2**31:
            raise OverflowError(f"K={spec.K}: shifted u8 partial sums could pass 2^31")
        b = b - 128 * W.astype(np.int64).sum(axis=1)
    if b.min(initial=0) < -(2**31) or b.max(initial=0) >= 2**31:
        raise OverflowError("folded bias leaves int32")
    return np.ascontiguousarray(b.astype(np.int32))


def pointwise_func(spec: PointwiseSpec):
    """The TIR PrimFunc ``(X[T,K], Wp[Mp/16,Kp/4,16,4], B[M] i32, Mul[M] i64, Sh[M] i64) -> Y[T,M]``."""
    from tvm.script import tirx as T

    Tn, K, M = spec.T, spec.K, spec.M
    Tp, Kp, Mp = spec.Tp, spec.Kp, spec.Mp
    ad, od = spec.a_dtype, spec.out_dtype
    qmin, qmax = int(spec.qmin), int(spec.qmax)
    off = 128 if ad == "int8" else 0
    ncw = spec.layout == "ncw"
    assert spec.layout in ("tk", "ncw"), spec.layout
    xshape = (K, Tn) if ncw else (Tn, K)
    yshape = (M, Tn) if ncw else (Tn, M)

    def xload(X, t, k):
        return X[k, t] if ncw else X[t, k]

    def yidx(t, m):
        return (m, t) if ncw else (t, m)

    if spec.needs_xpad:

        @T.prim_func(s_tir=True)
        def func(X: T.Buffer(xshape, ad), Wp: T.Buffer((Mp // 16, Kp // 4, 16, 4), "int8"),
                 B: T.Buffer((M,), "int32"), Mul: T.Buffer((M,), "int64"),
                 Sh: T.Buffer((M,), "int64"), Y: T.Buffer(yshape, od)):
            T.func_attr({"global_symbol": "main", "tirx.noalias": True})
            Xp = T.sblock_alloc_buffer((Tp, Kp), "uint8")
            acc = T.sblock_alloc_buffer((Tp, Mp), "int32")
            for t, k in T.grid(Tp, Kp):
                with T.sblock("xpad"):
                    vt, vk = T.axis.remap("SS", [t, k])
                    Xp[vt, vk] = T.if_then_else(
                        vt < Tn and vk < K,
                        T.Cast("uint8", T.Cast("int32", xload(X, T.min(vt, Tn - 1), T.min(vk, K - 1))) + off),
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
                    Y[yidx(vt, vm)] = requantize_expr(acc[vt, vm] + B[vm], Mul[vm], Sh[vm], qmin, qmax, od)

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


def schedule(spec: PointwiseSpec, tensorize: bool = True):
    """Hand schedule: rt x (rm*16) register tiles, parallel outer tiles, VNNI inner product."""
    from tvm import s_tir

    intrin = register("local")
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
    if spec.layout == "ncw":
        # requantize into a small (rt, rm*16) tile, then write it transposed (rt contiguous
        # bytes per channel) instead of scattering 16 single bytes per vector
        yw = sch.cache_write(req, 0, "local")
        sch.transform_layout(req, ("write", 0), lambda m, t: (t, m))
        sch.reverse_compute_at(yw, outer, preserve_unit_loops=True)
        wm, wt = sch.get_loops(yw)[-2:]
        sch.unroll(wt)
    # epilogue: vectorise over the 16-lane channel chunks
    lt, lm = sch.get_loops(req)[-2:]
    lm0, lm1 = sch.split(lm, [None, 16])
    sch.vectorize(lm1)
    init = sch.decompose_reduction(gemm, ko)
    il = sch.get_loops(init)
    sch.vectorize(sch.fuse(*il[-2:]))  # (m1, mi) -> rm*16 lanes
    sch.unroll(il[-3])
    sch.unroll(t1)
    sch.unroll(m1)
    if tensorize:
        sch.tensorize(mi, intrin)
    if spec.needs_xpad:
        xb = sch.get_sblock("xpad")
        xt, xk = sch.get_loops(xb)
        if spec.layout == "ncw":
            # transpose in 16 x 64 tiles: reads run along t, writes along k
            t0, t1 = sch.split(xt, [None, 16])
            k0, k1 = sch.split(xk, [None, 64])
            sch.reorder(t0, k0, t1, k1)
            sch.parallel(t0)
            sch.vectorize(k1)
        else:
            sch.parallel(xt)
            xo, xi = sch.split(xk, [None, 4])
            sch.vectorize(xi)
    return sch


def build(spec: PointwiseSpec, target=None, tensorize: bool = True):
    """Compile :func:`schedule` for an AVX-512 VNNI llvm target; returns the runtime module."""
    import tvm

    sch = schedule(spec, tensorize=tensorize)
    return tvm.compile(sch.mod, target=target if target is not None else x86_target())


def reference(spec: PointwiseSpec, X, W, bias, Mul, Sh) -> np.ndarray:
    """numpy oracle: :func:`intmath.conv1d_int` (k=1 on NCW) + :func:`intmath.requantize`."""
    from zsq_tvm import intmath

    W = np.asarray(W)
    if W.ndim == 2:
        W = W[:, :, None]
    Xncw = np.asarray(X) if spec.layout == "ncw" else np.asarray(X).T  # [K, T]
    acc = intmath.conv1d_int(Xncw[None], W)[0].T.astype(np.int64)  # [T, M]
    if bias is not None:
        acc = acc + np.asarray(bias, np.int64)[None, :]
    y = intmath.requantize(acc, Mul, Sh, spec.qmin, spec.qmax, axis=1).astype(spec.out_dtype)
    return np.ascontiguousarray(y.T) if spec.layout == "ncw" else y


class PointwiseKernel:
    """A compiled kernel with its packed constants: ``kernel(X) -> Y`` (numpy in, numpy out)."""

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
        yshape = (spec.M, spec.T) if spec.layout == "ncw" else (spec.T, spec.M)
        self.Y = tvm.runtime.empty(yshape, spec.out_dtype, self.dev)

    def run(self, Xt) -> None:
        """Run on an already-placed tvm tensor (for timing)."""
        self.f(Xt, self.Wp, self.B, self.Mul, self.Sh, self.Y)

    def __call__(self, X: np.ndarray) -> np.ndarray:
        import tvm

        Xt = tvm.runtime.tensor(np.ascontiguousarray(X), self.dev)
        self.run(Xt)
        return self.Y.numpy()
