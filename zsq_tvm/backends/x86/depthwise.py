"""Depthwise int8 conv1d on x86 with AVX-512 VNNI, requantize fused.

Problem (one depthwise conv1d of the integer graph, batch 1, NCW; the kernel's buffers keep the batch
axis, ``x[1, C, Tin] -> Y[1, C, Tout]``, so the Relax graph passes its tensors without reshapes)::

    acc[c, t] = sum_k xpad[c, s*t + k] * W[c, k]          x [C, Tin] uint8 (post-ReLU) or int8
    Y[c, t]   = cast(clip((int64(acc[c, t] + bias[c]) * Mul[c] + 2^(Sh[c]-1)) >> Sh[c], qmin, qmax))

(``xpad`` = ``x`` with ``pad_l``/``pad_r`` zeros, stride ``s`` in {1, 2, 4}; with dilation ``d`` the taps
are ``xpad[c, s*t + d*k]`` and ``s`` must divide ``4d``), which is
:func:`zsq_tvm.core.intmath.conv1d_int` with ``groups=C`` followed by :func:`zsq_tvm.core.intmath.requantize`.

The VNNI trick ("4-tap windows"): ``vpdpbusd`` adds, in each of 16 int32 lanes, a dot product of 4
u8 x 4 s8.  Taps are padded to ``Kp = 4 * ceil(K / 4)`` (zero weights) and the input is expanded
once per channel into overlapping 4-byte windows ``Xw[c, u, r] = xpad[c, s*u + d*r]`` (``r < 4``; one
int32 per ``u``).  For tap group ``j`` (taps ``4j .. 4j+3``)::

    sum_r xpad[c, s*t + d*(4j + r)] * W[c, 4j + r] = sum_r Xw[c, t + 4jd/s, r] * W[c, 4j + r]

so 16 consecutive outputs ``t .. t+15`` read the 64 *contiguous* bytes ``Xw[c, t+4jd/s : +16, 0:4]``
and the one dword ``W[c, 4j:4j+4]`` broadcast to all lanes: one load + one ``vpdpbusd`` per 64 MACs,
no shuffles (:data:`VNNI_DW_U8S8_16X4`).  Signed activations are shifted by +128 into u8 (pads
become 128) and ``bias' = bias - 128 * sum_k W[c, k]`` corrects it exactly (integer algebra, as in
:mod:`zsq_tvm.backends.x86.pointwise`).

AVX2 (``isa="avx2"``, CPUs without VNNI): the same kernel with 2-tap windows of int16 halves,
``Xw[c, u] = pack16(xpad[c, s*u], xpad[c, s*u + d])``, taps padded to a multiple of 2, stride dividing
``2d``, and ``vpmaddwd`` + ``vpaddd`` on 8 lanes (:data:`zsq_tvm.backends.x86.avx2.AVX2_PAIR_16X2`).  int16 holds
int8 and uint8 activations as they are: no +128 shift, the bias is added unchanged.

Schedule: channels in parallel; per channel the window buffer (``(Tp + Kp/s) x 4`` bytes, in L1) is
built, then ``rt`` 16-lane register accumulators per time tile sweep the ``Kp/4`` tap groups; the
requantize epilogue runs on the tile while it is in registers and writes ``Y[c, t]`` contiguously.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from zsq_tvm.backends.x86.avx2 import IsaGeometry, half16, pack16, register_avx2
from zsq_tvm.backends.x86.vnni import compile_kernel
from zsq_tvm.core import intmath
from zsq_tvm.core.tir_intmath import requantize_expr

__all__ = ["DepthwiseSpec", "VNNI_DW_U8S8_16X4", "register_dw", "pack_weights", "fold_bias", "depthwise_func",
           "schedule", "build", "reference", "DepthwiseKernel"]

VNNI_DW_U8S8_16X4 = "zsq_dw_16x4_u8s8_vnni_llvm22_local"


def _round_up(x: int, m: int) -> int:
    return (x + m - 1) // m * m


@functools.lru_cache(maxsize=None)
def register_dw() -> str:
    """Register ``C[i] += sum_{k<4} A[i, k] * B[k]`` (A 64 contiguous u8, B one s8 dword broadcast)."""
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def desc(A: T.Buffer((16,), "int32", offset_factor=1), B: T.Buffer((4,), "int8", offset_factor=1),
             C: T.Buffer((16,), "int32", offset_factor=1, scope="local")) -> None:
        with T.sblock("root"):
            T.reads(C[0:16], A[0:16], B[0:4])
            T.writes(C[0:16])
            for i in T.serial(0, 16):
                for k in T.serial(0, 4):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        C[vi] = C[vi] + T.bitwise_and(T.shift_right(A[vi], vk * 8), 255) * T.Cast("int32", B[vk])

    @T.prim_func(s_tir=True)
    def impl(A: T.Buffer((16,), "int32", offset_factor=1), B: T.Buffer((4,), "int8", offset_factor=1),
             C: T.Buffer((16,), "int32", offset_factor=1, scope="local")) -> None:
        with T.sblock("root"):
            T.reads(C[0:16], A[0:16], B[0:4])
            T.writes(C[0:16])
            C[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"),
                C.vload([0], dtype="int32x16"),
                T.reinterpret(A.vload([0], dtype="int32x16"), dtype="uint8x64"),
                T.reinterpret(T.broadcast(T.reinterpret(B.vload([0], "int8x4"), dtype="int32"), 16), dtype="int8x64"),
                dtype="int32x16")

    TensorIntrin.register(VNNI_DW_U8S8_16X4, desc, impl, override=True)
    return VNNI_DW_U8S8_16X4


@dataclass(frozen=True)
class DepthwiseSpec(IsaGeometry):
    """``x[C, Tin] (a_dtype) * W[C, K] (int8), stride, pads -> Y[C, Tout] (out_dtype)`` with requantize."""

    C: int
    Tin: int
    K: int
    stride: int = 1
    pad_l: int = 0
    pad_r: int = 0
    a_dtype: str = "uint8"
    out_dtype: str = "int8"
    qmin: int = -127
    qmax: int = 127
    rt: int = 4  # vector accumulators (16 lanes VNNI, 8 AVX2) per time tile
    dilation: int = 1
    isa: str = "avx512vnni"  # "avx512vnni": vpdpbusd, 4-tap windows; "avx2": vpmaddwd, 2-tap windows

    def __post_init__(self):
        assert self.isa in ("avx512vnni", "avx2"), self.isa
        assert self.stride in (1, 2, 4) and (self.gs * self.dilation) % self.stride == 0, \
            f"stride must divide {self.gs}*dilation"
        assert self.a_dtype in ("uint8", "int8") and (self.symbolic or self.Tout >= 1)

    @property
    def symbolic(self) -> bool:
        """``Tin`` is a symbolic length (a symbolic-T model): the kernel takes any ``Tin``, its buffers and loops
        are sized from it, the tile is fixed (``rt`` vectors) and the requantize runs over the padded tile range,
        predicated (so the schedule can prove each stage covers what the next one reads)."""
        return not isinstance(self.Tin, (int, np.integer))

    @property
    def L(self) -> int:
        """Padded input elements the windows read (symbolic: rounded up to 64, so the row copy has no tail)."""
        L = self.stride * (self.Tw - 1) + (self.gs - 1) * self.dilation + 1
        return _round_up(L, 64) if self.symbolic else L

    @property
    def Tout(self) -> int:
        return (self.Tin + self.pad_l + self.pad_r - self.dilation * (self.K - 1) - 1) // self.stride + 1

    @property
    def Kp(self) -> int:
        return _round_up(self.K, self.gs)

    @property
    def tile(self) -> int:
        v = self.lanes
        if self.symbolic:
            return v * self.rt
        return v * max(1, min(self.rt, _round_up(self.Tout, v) // v))

    @property
    def Tp(self) -> int:
        return _round_up(self.Tout, self.tile)

    @property
    def Tw(self) -> int:
        """Window rows: the last output row Tp-1 reads row Tp-1 + (Kp/g - 1) * g d/s; rounded up to 16 so
        the window build vectorises without a predicated tail (LLVM scalarises masked byte loads into
        vpinsrw chains: a fifth of the kernel's time at K=75)."""
        g = self.gs
        if self.symbolic:  # 2 windows more than needed: pad_l + Tin <= L for every Tin (spec_len's copy block)
            return _round_up(self.Tp + (self.Kp // g - 1) * (g * self.dilation // self.stride) + 2, 16)
        return _round_up(self.Tp + (self.Kp // g - 1) * (g * self.dilation // self.stride), 16)


def pack_weights(W: np.ndarray, spec: DepthwiseSpec) -> np.ndarray:
    """``W[C, K]`` or OIW ``[C, 1, K]`` int8 -> ``Wp[C, Kp]`` (zero taps appended; int16 for AVX2)."""
    W = np.asarray(W)
    if W.ndim == 3:
        assert W.shape[1] == 1, "depthwise: [C, 1, K]"
        W = W[:, 0, :]
    assert W.shape == (spec.C, spec.K) and W.dtype == np.int8, (W.shape, W.dtype)
    Wp = np.zeros((spec.C, spec.Kp), spec.wdtype)
    Wp[:, : spec.K] = W
    return Wp


def fold_bias(W: np.ndarray, bias, spec: DepthwiseSpec) -> np.ndarray:
    """int32 bias the kernel adds: ``bias`` (u8 input, or AVX2) or ``bias - 128 * sum_k W[c, k]`` (int8 input on VNNI)."""
    if spec.offset and spec.Kp * 255 * 128 >= 2**31:
        raise OverflowError(f"K={spec.K}: shifted u8 partial sums could pass 2^31")
    return intmath.fold_operand_shift(bias, W, 128 if spec.offset else 0, spec.C)


def _window(Xp, c, u, s: int, d: int, g: int):
    """Window word ``u`` of channel ``c`` (TIR): 4 u8 bytes ``Xp[c, s u + d r]`` (VNNI) or 2 int16 halves (AVX2)."""
    from tvm.script import tirx as T

    x = [T.Cast("int32", Xp[c, u * s + r * d]) for r in range(g)]
    if g == 2:
        return pack16(x[0], x[1])
    return T.bitwise_or(T.bitwise_or(x[0], T.shift_left(x[1], 8)),
                        T.bitwise_or(T.shift_left(x[2], 16), T.shift_left(x[3], 24)))


def _element(word, r, g: int):
    """Element ``r`` of a window word as int32 (TIR; the form the tensor intrinsics' descriptions use)."""
    from tvm.script import tirx as T

    return half16(word, r) if g == 2 else T.bitwise_and(T.shift_right(word, r * 8), 255)


def depthwise_func(spec: DepthwiseSpec):
    """PrimFunc ``(X[1, C, Tin], Wp[C, Kp] i8 (i16 AVX2), B[C] i32, Mul[C] i64, Sh[C] i64) -> Y[1, C, Tout]``."""
    from tvm.script import tirx as T

    spec = kernel_spec(spec)
    C, Tin, s, pl = spec.C, spec.Tin, spec.stride, spec.pad_l
    Kp, Tp, Tw, To = spec.Kp, spec.Tp, spec.Tw, spec.Tout
    ad, od = spec.a_dtype, spec.out_dtype
    qmin, qmax = int(spec.qmin), int(spec.qmax)
    off = spec.offset
    d = spec.dilation
    g = spec.gs
    step = g * d // s
    wd = spec.wdtype
    xd = "uint8" if g == 4 else "int16"  # padded row: shifted u8 (VNNI) or the values as int16 (AVX2)

    L = spec.L  # padded input elements the windows read
    sym, tile = spec.symbolic, spec.tile
    nr, tail = spec_len(spec, "copy"), spec_len(spec, "padr")  # real input elements inside [0, L); right pad

    @T.prim_func(s_tir=True)
    def func(X: T.Buffer((1, C, Tin), ad), Wp: T.Buffer((C, Kp), wd), B: T.Buffer((C,), "int32"),
             Mul: T.Buffer((C,), "int64"), Sh: T.Buffer((C,), "int64"), Y: T.Buffer((1, C, To), od)):
        T.func_attr({"global_symbol": "main", "tirx.noalias": True})
        Xp = T.sblock_alloc_buffer((C, L), xd)
        Xw = T.sblock_alloc_buffer((C, Tw), "int32")
        acc = T.sblock_alloc_buffer((C, Tp), "int32")
        # every stage sits under one channel loop, so the schedule can parallelise that loop once and
        # keep the per-channel padded row and windows in L1 (three writers of Xp could not be moved
        # under a shared loop by compute_at: it needs a single dominant producer)
        for c in range(C):
            if sym:  # one writer of the whole padded row: with a symbolic length the schedule can only prove that a
                for i in range(L):  # single producer covers what the windows read.  64-column chunks inside the
                    with T.sblock("copy"):  # input copy straight (vectorised); the edge chunks select per column
                        vc, vi = T.axis.remap("SS", [c, i])
                        if vi // 64 * 64 >= pl and vi // 64 * 64 + 64 <= pl + Tin:
                            Xp[vc, vi] = T.Cast(xd, T.Cast("int32", X[0, vc, vi - pl]) + off)
                        else:
                            Xp[vc, vi] = T.if_then_else(
                                pl <= vi and vi < pl + Tin,
                                T.Cast(xd, T.Cast("int32", X[0, vc, T.max(T.min(vi - pl, Tin - 1), 0)]) + off),
                                T.Cast(xd, off))
            if not sym and pl > 0:
                for i in range(pl):
                    with T.sblock("padl"):
                        vc, vi = T.axis.remap("SS", [c, i])
                        Xp[vc, vi] = T.Cast(xd, off)
            if not sym and _present(nr):
                for i in range(nr):
                    with T.sblock("copy"):
                        vc, vi = T.axis.remap("SS", [c, i])
                        Xp[vc, vi + pl] = T.Cast(xd, T.Cast("int32", X[0, vc, vi]) + off)
            if not sym and _present(tail):
                for i in range(tail):
                    with T.sblock("padr"):
                        vc, vi = T.axis.remap("SS", [c, i])
                        Xp[vc, vi + pl + nr] = T.Cast(xd, off)
            for u in range(Tw):
                with T.sblock("xwin"):
                    vc, vu = T.axis.remap("SS", [c, u])
                    Xw[vc, vu] = _window(Xp, vc, vu, s, d, g)
            for t, j, r in T.grid(Tp, Kp // g, g):
                with T.sblock("dw"):
                    vc, vt, vj, vr = T.axis.remap("SSRR", [c, t, j, r])
                    with T.init():
                        acc[vc, vt] = 0
                    acc[vc, vt] = acc[vc, vt] + _element(Xw[vc, vt + vj * step], vr, g) * T.Cast(
                        "int32", Wp[vc, vj * g + vr])
            if sym:  # over the padded tile range (the schedule then sees acc fully written first), guarded in
                for t in range(Tp):  # the body: scheduling keeps the guard (a block predicate would be re-derived)
                    with T.sblock("requant"):
                        vc, vt = T.axis.remap("SS", [c, t])
                        if vt // tile * tile + tile <= To:  # a whole tile of outputs: vectorised, no guard
                            Y[0, vc, vt] = requantize_expr(acc[vc, vt] + B[vc], Mul[vc], Sh[vc], qmin, qmax, od)
                        elif vt < To:  # the last, partial tile
                            Y[0, vc, vt] = requantize_expr(acc[vc, vt] + B[vc], Mul[vc], Sh[vc], qmin, qmax, od)
            else:
                for t in range(To):
                    with T.sblock("requant"):
                        vc, vt = T.axis.remap("SS", [c, t])
                        Y[0, vc, vt] = requantize_expr(acc[vc, vt] + B[vc], Mul[vc], Sh[vc], qmin, qmax, od)

    return func


def schedule(spec: DepthwiseSpec, tensorize: bool = True):
    """Parallel channels (one thread-pool launch per call); per channel: padded row and window build,
    then (tile x 16-lane) VNNI (or tile x 8-lane AVX2) register tiles + epilogue."""
    from tvm import s_tir

    intrin = register_dw() if spec.isa == "avx512vnni" else register_avx2()
    v = spec.lanes
    sch = s_tir.Schedule(depthwise_func(spec))
    dw, req, xw = sch.get_sblock("dw"), sch.get_sblock("requant"), sch.get_sblock("xwin")
    c, t, j, r = sch.get_loops(dw)
    rt = spec.tile // v
    t0, t1, t2 = sch.split(t, [None, rt, v])
    sch.reorder(t0, j, t1, t2, r)
    sch.parallel(c)
    sch.set_scope(dw, 0, "local")
    sch.reverse_compute_at(req, t0, preserve_unit_loops=True)
    # per-channel constants as scalars: a vectorized predicated load of B[c] would become a gather
    for i in (1, 2, 3):  # B, Mul, Sh (read buffer 0 is acc)
        cb = sch.cache_read(req, i, "local")
        sch.compute_at(cb, c, preserve_unit_loops=True)
    lt = sch.get_loops(req)[-1]
    l0, l1 = sch.split(lt, [None, v])
    sch.vectorize(l1)
    init = sch.decompose_reduction(dw, j)
    il = sch.get_loops(init)
    sch.vectorize(sch.fuse(*il[-2:]))
    sch.unroll(t1)
    sch.vectorize(sch.split(sch.get_loops(xw)[-1], [None, 16])[1])
    for name in ("padr", "copy", "padl"):
        if _present(spec_len(spec, name)):
            sch.vectorize(sch.split(sch.get_loops(sch.get_sblock(name))[-1], [None, 64])[1])
    if tensorize:
        sch.tensorize(t2, intrin)
    return sch


def spec_len(spec: DepthwiseSpec, block: str) -> int:
    """Extent of the pad/copy blocks (a zero-extent block does not exist in the schedule)."""
    L = spec.L
    if spec.symbolic:  # one block writes the whole padded row (depthwise_func); L >= pad_l + Tin (DepthwiseSpec.Tw)
        return {"padl": 0, "copy": L, "padr": 0}[block]
    nr = max(0, min(L, spec.pad_l + spec.Tin) - spec.pad_l)
    return {"padl": spec.pad_l, "copy": nr, "padr": L - spec.pad_l - nr}[block]


def _present(n) -> bool:
    """A block of ``n`` iterations exists: a symbolic extent (an input length) is at least 1."""
    return not isinstance(n, (int, np.integer)) or n > 0


def kernel_spec(spec):
    """``spec`` as the kernel is built: a symbolic length becomes the kernel's own variable ``n``, read from its
    input buffer's shape at the call, so one kernel serves every layer of that geometry whatever expression of
    the model's ``T`` its input length is."""
    import dataclasses

    from tvm import tirx

    field = "Tin" if hasattr(spec, "Tin") else "T"
    if isinstance(getattr(spec, field), (int, np.integer)):
        return spec
    # int32, as the fixed kernels' loops and the tensor intrinsics' indices
    return dataclasses.replace(spec, **{field: tirx.Var("n", "int32")})


def length_tag(n) -> str:
    """How a kernel name spells its length: the number, or ``dyn`` for a symbolic one."""
    return str(int(n)) if isinstance(n, (int, np.integer)) else "dyn"


def build(spec: DepthwiseSpec, target=None, tensorize: bool = True):
    return compile_kernel(schedule(spec, tensorize).mod, target)


def reference(spec: DepthwiseSpec, X, W, bias, Mul, Sh) -> np.ndarray:
    """numpy oracle: :func:`intmath.conv1d_int` (groups=C) + :func:`intmath.requantize`."""

    W = np.asarray(W)
    if W.ndim == 2:
        W = W[:, None, :]
    acc = intmath.conv1d_int(np.asarray(X)[None], W, strides=spec.stride, padding=(spec.pad_l, spec.pad_r),
                             dilation=spec.dilation, groups=spec.C)[0].astype(np.int64)
    if bias is not None:
        acc = acc + np.asarray(bias, np.int64)[:, None]
    return intmath.requantize(acc, Mul, Sh, spec.qmin, spec.qmax, axis=0).astype(spec.out_dtype)


class DepthwiseKernel:
    """Compiled kernel + packed constants: ``kernel(X[C, Tin]) -> Y[C, Tout]`` (numpy, 2-D);
    :meth:`run` takes the kernel's ``[1, C, Tin]`` tensor."""

    def __init__(self, spec: DepthwiseSpec, W, bias, Mul, Sh, target=None, dev=None):
        import tvm

        self.spec = spec
        self.lib = build(spec, target)
        self.dev = dev or tvm.cpu()
        self.f = self.lib["main"]
        mk = lambda a: tvm.runtime.tensor(np.ascontiguousarray(a), self.dev)  # noqa: E731
        self.Wp = mk(pack_weights(W, spec))
        self.B = mk(fold_bias(W, bias, spec))
        self.Mul = mk(np.broadcast_to(np.asarray(Mul, np.int64), (spec.C,)))
        self.Sh = mk(np.broadcast_to(np.asarray(Sh, np.int64), (spec.C,)))
        self.Y = tvm.runtime.empty((1, spec.C, spec.Tout), spec.out_dtype, self.dev)

    def run(self, Xt) -> None:
        self.f(Xt, self.Wp, self.B, self.Mul, self.Sh, self.Y)

    def __call__(self, X: np.ndarray) -> np.ndarray:
        import tvm

        self.run(tvm.runtime.tensor(np.ascontiguousarray(X)[None], self.dev))
        return self.Y.numpy()[0]
