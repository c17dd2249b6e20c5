"""Batched int8 matmul of two *activations* on x86 with AVX-512 VNNI, requantize fused (attention).

Problem (a Conformer's attention scores ``Q Kᵀ`` and context ``P V``, per head ``h``, batch 1)::

    acc[h, t, n] = sum_k A[0, h, t, k] * B[0, h, k, n]          A uint8 (softmax) or int8, B int8
    Y[0, h, t, n] = cast(clip((int64(acc) * Mul[n] + 2^(Sh[n]-1)) >> Sh[n], qmin, qmax))

which is ``R.matmul(astype(A, int32), astype(B, int32))`` followed by :func:`zsq_tvm.core.intmath.requantize`
with one scale per column (per-tensor activations: all equal; the relative-position term, whose ``B`` is
a per-channel quantized constant: one per column).  Unlike the linear layers' ``tk`` kernel
(:mod:`zsq_tvm.backends.x86.pointwise`), neither operand is a constant, so the kernel packs ``B`` itself, once per
call, into the VNNI weight layout (64 contiguous bytes per ``vpdpbusd``)::

    Bp[h, no, ko, ni, ki] = B[0, h, 4 ko + ki, 16 no + ni]      (zero outside [K, N])

and ``A`` into a padded uint8 copy ``Ap[h, t, k] = A + off`` (``off`` = 128 for int8 ``A``: VNNI multiplies
u8 x s8).  The shift is undone exactly in int32, with a per-column correction computed from ``B`` in the
same call::

    sum_k A[t, k] B[k, n] = sum_k (A[t, k] + 128) B[k, n] - 128 * sum_k B[k, n]

Partial sums stay below ``K * 255 * 128 < 2^31`` (checked at spec time); the requantized result is
bit-identical to the chain it replaces (:func:`reference`).

Schedule (as the ``tk`` kernel): register tiles of ``rt`` rows x ``rm`` 16-column vectors, the
(head, row tile, column tile) loops fused into one parallel loop, the requantize epilogue on the tile
while it is in registers; the pack stages run in parallel over heads.

AVX2 (``isa="avx2"``, CPUs without VNNI): the same kernels with pairs instead of quads and 8 lanes
(:data:`zsq_tvm.backends.x86.avx2.AVX2_PAIR_16X2`).  ``B`` is packed to int32 words of two int16 halves,
``Bp[h, no, g, ni] = (B[0, h, 2g, 8 no + ni], B[0, h, 2g + 1, 8 no + ni])``, ``A`` to a zero-padded int16
copy whose pair ``Ah[h, t, 2g:2g+2]`` is the broadcast dword::

    acc[h, t, 8 no + ni] += sum_{r<2} half_r(Bp[h, no, g, ni]) * Ah[h, t, 2g + r]

int16 holds int8 and uint8 as they are, so there is no shift and no column correction (the pack kernel
has one output); the bound on the partial sums is the same.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from zsq_tvm.backends.x86.avx2 import IsaGeometry, half16, pack16, register_avx2
from zsq_tvm.backends.x86.vnni import compile_kernel, register
from zsq_tvm.core import intmath
from zsq_tvm.core.tir_intmath import requantize_expr

__all__ = ["BmmSpec", "pack_func", "bmm_func", "schedule_pack", "schedule", "build", "reference", "BmmKernel"]


def _round_up(x: int, m: int) -> int:
    return (x + m - 1) // m * m


@dataclass(frozen=True)
class BmmSpec(IsaGeometry):
    """``A[1, H, T, K] (a_dtype) x B[1, H, K, N] (int8) -> Y[1, H, T, N] (out_dtype)``, per-column requantize."""

    H: int
    T: int
    K: int
    N: int
    a_dtype: str = "uint8"
    out_dtype: str = "int8"
    qmin: int = -127
    qmax: int = 127
    rt: int = 0  # register tile rows (0: choose)
    rm: int = 0  # register tile column vectors (16 columns; AVX2: 8) (0: choose)
    isa: str = "avx512vnni"  # "avx2": vpmaddwd on int16 pairs, 8 lanes, no +128 shift (module doc)

    def __post_init__(self):
        assert self.isa in ("avx512vnni", "avx2"), self.isa
        assert self.a_dtype in ("uint8", "int8"), self.a_dtype
        assert min(self.H, self.T, self.K, self.N) >= 1
        if self.K * 255 * 128 >= 2**31:
            raise OverflowError(f"K={self.K}: u8 x s8 partial sums could pass 2^31")

    @property
    def tile_m(self) -> int:
        """Column vectors per register tile: a divisor of ceil(N / lanes) when one of 4, 3, 2 is (AVX2: 2)."""
        if self.rm:
            return self.rm
        nv = -(-self.N // self.lanes)
        if self.isa == "avx2":
            return self.avx2_vectors(self.N)
        return next((r for r in (4, 3, 2) if nv % r == 0), min(4, nv))

    @property
    def tile_t(self) -> int:
        if self.rt:
            return self.rt
        # ~24 zmm (AVX2: 12 of the 16 ymm) accumulators at most (rt x tile_m), prefer a divisor of T (no
        # padded rows computed)
        cap = max(1, (24 if self.isa == "avx512vnni" else 12) // self.tile_m)
        for r in range(min(cap, self.T), 0, -1):
            if self.T % r == 0 and r >= min(4, cap):
                return r
        return min(cap, 6)

    @property
    def Tp(self) -> int:
        return _round_up(self.T, self.tile_t)

    @property
    def Kp(self) -> int:
        return _round_up(self.K, self.gs)

    @property
    def Np(self) -> int:
        return _round_up(self.N, self.lanes * self.tile_m)

    @property
    def packed_shape(self) -> tuple:
        """Shape of the packed ``B``: ``[H, Np/16, Kp/4, 16, 4]`` int8 (VNNI) or ``[H, Np/8, Kp/2, 8]`` int32 (AVX2)."""
        if self.isa == "avx2":
            return (self.H, self.Np // 8, self.Kp // 2, 8)
        return (self.H, self.Np // 16, self.Kp // 4, 16, 4)

    @property
    def packed_dtype(self) -> str:
        return "int32" if self.isa == "avx2" else "int8"


def pack_func(spec: BmmSpec):
    """PrimFunc ``(B[1,H,K,N] i8) -> (Bp[H, Np/16, Kp/4, 16, 4] i8, comp[H, Np] i32)``: the run-time weight
    packing and the int8 shift's column correction ``comp[h, n] = -off * sum_k B[h, k, n]`` (a separate
    kernel: the gemm's epilogue can be scheduled into its tiles only when every buffer it reads is a
    parameter or written under the tile loop)."""
    from tvm.script import tirx as T

    if spec.isa == "avx2":
        return _pack_func_avx2(spec)
    H, K, N, Kp, Np, off = spec.H, spec.K, spec.N, spec.Kp, spec.Np, spec.offset

    @T.prim_func(s_tir=True)
    def func(B: T.Buffer((1, H, K, N), "int8"), Bp: T.Buffer((H, Np // 16, Kp // 4, 16, 4), "int8"),
             comp: T.Buffer((H, Np), "int32")):
        T.func_attr({"global_symbol": "main", "tirx.noalias": True})
        for h, no, ko, ni, ki in T.grid(H, Np // 16, Kp // 4, 16, 4):
            with T.sblock("bpack"):
                vh, vno, vko, vni, vki = T.axis.remap("SSSSS", [h, no, ko, ni, ki])
                Bp[vh, vno, vko, vni, vki] = T.if_then_else(
                    vko * 4 + vki < K and vno * 16 + vni < N,
                    B[0, vh, T.min(vko * 4 + vki, K - 1), T.min(vno * 16 + vni, N - 1)], T.int8(0))
        for h, k, n in T.grid(H, K, Np):
            with T.sblock("comp"):
                vh, vk, vn = T.axis.remap("SRS", [h, k, n])
                with T.init():
                    comp[vh, vn] = 0
                comp[vh, vn] = comp[vh, vn] - off * T.Cast("int32", T.if_then_else(
                    vn < N, B[0, vh, vk, T.min(vn, N - 1)], T.int8(0)))

    return func


def _pack_func_avx2(spec: BmmSpec):
    """AVX2: ``(B[1,H,K,N] i8) -> Bp[H, Np/8, Kp/2, 8] i32``, ``Bp[h, no, g, ni]`` = the int16 pair
    ``(B[0, h, 2g, 8 no + ni], B[0, h, 2g + 1, 8 no + ni])`` (zero outside ``[K, N]``); no column correction."""
    from tvm.script import tirx as T

    H, K, N, Kp, Np = spec.H, spec.K, spec.N, spec.Kp, spec.Np

    @T.prim_func(s_tir=True)
    def func(B: T.Buffer((1, H, K, N), "int8"), Bp: T.Buffer((H, Np // 8, Kp // 2, 8), "int32")):
        T.func_attr({"global_symbol": "main", "tirx.noalias": True})
        for h, no, g, ni in T.grid(H, Np // 8, Kp // 2, 8):
            with T.sblock("bpack"):
                vh, vno, vg, vni = T.axis.remap("SSSS", [h, no, g, ni])
                Bp[vh, vno, vg, vni] = pack16(
                    T.if_then_else(vg * 2 < K and vno * 8 + vni < N,
                                   T.Cast("int32", B[0, vh, T.min(vg * 2, K - 1), T.min(vno * 8 + vni, N - 1)]), 0),
                    T.if_then_else(vg * 2 + 1 < K and vno * 8 + vni < N,
                                   T.Cast("int32", B[0, vh, T.min(vg * 2 + 1, K - 1), T.min(vno * 8 + vni, N - 1)]), 0))

    return func


def _bmm_func_avx2(spec: BmmSpec):
    """AVX2: ``(A[1,H,T,K], Bp, Mul[N] i64, Sh[N] i64) -> Y[1,H,T,N]``; ``A`` widened to a zero-padded int16
    copy ``Ah[H, Tp, Kp]``; ``acc[h, t, 8 no + ni] += sum_{r<2} half_r(Bp[h, no, g, ni]) * Ah[h, t, 2g + r]``."""
    from tvm.script import tirx as T

    H, Tn, K, N = spec.H, spec.T, spec.K, spec.N
    Tp, Kp, Np = spec.Tp, spec.Kp, spec.Np
    ad, od = spec.a_dtype, spec.out_dtype
    qmin, qmax = int(spec.qmin), int(spec.qmax)

    @T.prim_func(s_tir=True)
    def func(A: T.Buffer((1, H, Tn, K), ad), Bp: T.Buffer((H, Np // 8, Kp // 2, 8), "int32"),
             Mul: T.Buffer((N,), "int64"), Sh: T.Buffer((N,), "int64"), Y: T.Buffer((1, H, Tn, N), od)):
        T.func_attr({"global_symbol": "main", "tirx.noalias": True})
        Ah = T.sblock_alloc_buffer((H, Tp, Kp), "int16")
        acc = T.sblock_alloc_buffer((H, Tp, Np), "int32")
        for h, t, k in T.grid(H, Tp, Kp):
            with T.sblock("apack"):
                vh, vt, vk = T.axis.remap("SSS", [h, t, k])
                Ah[vh, vt, vk] = T.if_then_else(vt < Tn and vk < K,
                                                T.Cast("int16", A[0, vh, T.min(vt, Tn - 1), T.min(vk, K - 1)]),
                                                T.int16(0))
        for h, t, mo, mi, g, r in T.grid(H, Tp, Np // 8, 8, Kp // 2, 2):
            with T.sblock("gemm"):
                vh, vt, vmo, vmi, vg, vr = T.axis.remap("SSSSRR", [h, t, mo, mi, g, r])
                with T.init():
                    acc[vh, vt, vmo * 8 + vmi] = 0
                acc[vh, vt, vmo * 8 + vmi] = acc[vh, vt, vmo * 8 + vmi] + half16(Bp[vh, vmo, vg, vmi], vr) * T.Cast(
                    "int32", Ah[vh, vt, vg * 2 + vr])
        for h, t, n in T.grid(H, Tn, N):
            with T.sblock("requant"):
                vh, vt, vn = T.axis.remap("SSS", [h, t, n])
                Y[0, vh, vt, vn] = requantize_expr(acc[vh, vt, vn], Mul[vn], Sh[vn], qmin, qmax, od)

    return func


def bmm_func(spec: BmmSpec):
    """PrimFunc ``(A[1,H,T,K], Bp, comp, Mul[N] i64, Sh[N] i64) -> Y[1,H,T,N]`` (``Bp``, ``comp`` from
    :func:`pack_func`)."""
    from tvm.script import tirx as T

    if spec.isa == "avx2":
        return _bmm_func_avx2(spec)
    H, Tn, K, N = spec.H, spec.T, spec.K, spec.N
    Tp, Kp, Np = spec.Tp, spec.Kp, spec.Np
    ad, od = spec.a_dtype, spec.out_dtype
    qmin, qmax = int(spec.qmin), int(spec.qmax)
    off = spec.offset

    @T.prim_func(s_tir=True)
    def func(A: T.Buffer((1, H, Tn, K), ad), Bp: T.Buffer((H, Np // 16, Kp // 4, 16, 4), "int8"),
             comp: T.Buffer((H, Np), "int32"), Mul: T.Buffer((N,), "int64"), Sh: T.Buffer((N,), "int64"),
             Y: T.Buffer((1, H, Tn, N), od)):
        T.func_attr({"global_symbol": "main", "tirx.noalias": True})
        Ap = T.sblock_alloc_buffer((H, Tp, Kp), "uint8")
        acc = T.sblock_alloc_buffer((H, Tp, Np), "int32")
        for h, t, k in T.grid(H, Tp, Kp):
            with T.sblock("apack"):
                vh, vt, vk = T.axis.remap("SSS", [h, t, k])
                Ap[vh, vt, vk] = T.if_then_else(
                    vt < Tn and vk < K,
                    T.Cast("uint8", T.Cast("int32", A[0, vh, T.min(vt, Tn - 1), T.min(vk, K - 1)]) + off),
                    T.uint8(0))
        for h, t, mo, mi, ko, ki in T.grid(H, Tp, Np // 16, 16, Kp // 4, 4):
            with T.sblock("gemm"):
                vh, vt, vmo, vmi, vko, vki = T.axis.remap("SSSSRR", [h, t, mo, mi, ko, ki])
                with T.init():
                    acc[vh, vt, vmo * 16 + vmi] = 0
                acc[vh, vt, vmo * 16 + vmi] = acc[vh, vt, vmo * 16 + vmi] + T.Cast(
                    "int32", Ap[vh, vt, vko * 4 + vki]) * T.Cast("int32", Bp[vh, vmo, vko, vmi, vki])
        for h, t, n in T.grid(H, Tn, N):
            with T.sblock("requant"):
                vh, vt, vn = T.axis.remap("SSS", [h, t, n])
                Y[0, vh, vt, vn] = requantize_expr(acc[vh, vt, vn] + comp[vh, vn], Mul[vn], Sh[vn], qmin, qmax, od)

    return func


def schedule_pack(spec: BmmSpec):
    from tvm import s_tir

    sch = s_tir.Schedule(pack_func(spec))
    bl = sch.get_loops(sch.get_sblock("bpack"))
    sch.parallel(bl[0])
    if spec.isa == "avx2":
        sch.vectorize(bl[-1])
        return sch
    sch.vectorize(sch.fuse(bl[-2], bl[-1]))
    cb = sch.get_sblock("comp")
    h, k, n = sch.get_loops(cb)
    sch.parallel(h)
    init = sch.decompose_reduction(cb, k)
    sch.vectorize(sch.split(sch.get_loops(init)[-1], [None, 16])[1])
    return sch


def schedule(spec: BmmSpec, tensorize: bool = True):
    """(head, row tile, column tile) parallel; VNNI register tiles; the requantize epilogue per tile; the
    ``A`` pack parallel over heads."""
    from tvm import s_tir

    intrin = register("local") if spec.isa == "avx512vnni" else register_avx2()
    v = spec.lanes
    sch = s_tir.Schedule(bmm_func(spec))
    gemm, req = sch.get_sblock("gemm"), sch.get_sblock("requant")
    rt, rm = spec.tile_t, spec.tile_m
    h, t, mo, mi, ko, ki = sch.get_loops(gemm)
    t0, t1 = sch.split(t, [None, rt])
    m0, m1 = sch.split(mo, [None, rm])
    sch.reorder(h, t0, m0, ko, t1, m1, mi, ki)
    outer = sch.fuse(h, t0, m0)
    sch.parallel(outer)
    sch.set_scope(gemm, 0, "local")
    sch.reverse_compute_at(req, outer, preserve_unit_loops=True)
    lt, lm = sch.get_loops(req)[-2:]
    sch.vectorize(sch.split(lm, [None, v])[1])
    init = sch.decompose_reduction(gemm, ko)
    il = sch.get_loops(init)
    sch.vectorize(sch.fuse(*il[-2:]))
    sch.unroll(il[-3])
    sch.unroll(t1)
    sch.unroll(m1)
    if tensorize:
        sch.tensorize(mi, intrin)
    ap = sch.get_sblock("apack")
    sch.parallel(sch.get_loops(ap)[0])
    sch.vectorize(sch.split(sch.get_loops(ap)[-1], [None, spec.gs])[1])
    return sch


def build(spec: BmmSpec, target=None, tensorize: bool = True):
    """``(pack runtime module, gemm runtime module)`` for an AVX-512 VNNI (``isa="avx2"``: AVX2) llvm target."""
    return compile_kernel(schedule_pack(spec).mod, target), compile_kernel(schedule(spec, tensorize).mod, target)


def reference(spec: BmmSpec, A, B, Mul, Sh) -> np.ndarray:
    """numpy oracle: int64 batched matmul + :func:`zsq_tvm.core.intmath.requantize` (``Mul``/``Sh`` scalars or per
    column)."""

    acc = np.matmul(np.asarray(A, np.int64), np.asarray(B, np.int64))
    Mul, Sh = (np.broadcast_to(np.asarray(v, np.int64), (spec.N,)) for v in (Mul, Sh))
    return intmath.requantize(acc, Mul, Sh, spec.qmin, spec.qmax, axis=3).astype(spec.out_dtype)


class BmmKernel:
    """Compiled kernels: ``kernel(A[1,H,T,K], B[1,H,K,N]) -> Y[1,H,T,N]`` (numpy in, numpy out)."""

    def __init__(self, spec: BmmSpec, Mul, Sh, target=None, dev=None):
        import tvm

        self.spec = spec
        self.pack_lib, self.lib = build(spec, target)
        self.dev = dev or tvm.cpu()
        N = spec.N
        self.Mul = tvm.runtime.tensor(np.ascontiguousarray(np.broadcast_to(np.asarray(Mul, np.int64), (N,))), self.dev)
        self.Sh = tvm.runtime.tensor(np.ascontiguousarray(np.broadcast_to(np.asarray(Sh, np.int64), (N,))), self.dev)
        s = spec
        self.Bp = tvm.runtime.empty(s.packed_shape, s.packed_dtype, self.dev)
        # the int8 shift's column correction: VNNI only
        self.comp = () if s.isa == "avx2" else (tvm.runtime.empty((s.H, s.Np), "int32", self.dev),)
        self.Y = tvm.runtime.empty((1, s.H, s.T, s.N), s.out_dtype, self.dev)

    def run(self, At, Bt) -> None:
        self.pack_lib["main"](Bt, self.Bp, *self.comp)
        self.lib["main"](At, self.Bp, *self.comp, self.Mul, self.Sh, self.Y)

    def __call__(self, A: np.ndarray, B: np.ndarray) -> np.ndarray:
        import tvm

        self.run(tvm.runtime.tensor(np.ascontiguousarray(A), self.dev), tvm.runtime.tensor(np.ascontiguousarray(B), self.dev))
        return self.Y.numpy()
