"""Hand TIR schedules for a pointwise (1x1) int8 conv1d on CUDA sm_75 (T4), as a GEMM.

Layout (``/work/shared/facts.md``): activations ``X[T, K]`` (time-major, i.e. NWC with N=1),
weights ``W[M, K]`` (OIW with W=1 squeezed), accumulator ``acc[T, M]`` int32, and the per-channel
dyadic requantize epilogue of :func:`zsq_tvm.core.intmath.requantize` fused into the write-back::

    y[t, m] = cast(clip((int64(acc[t, m] + bias[m]) * Mul[m] + 2^(Sh[m]-1)) >> Sh[m], qmin, qmax))

``out_dtype`` int8/uint8 (activations), int16 (the logits at ``out_bits=16``) or int32: the clip is done in
int64 before the cast, so any ``[qmin, qmax]`` inside the dtype is exact.

Two schedules:

* ``dp4a``  -- ``__dp4a`` (``IDP.4A``) via ``tensorize``.  Post-ReLU ``uint8`` activations use the
  mixed-sign ``DP4A_U8S8S32_INTRIN`` (TVM's CUDA header declares ``int __dp4a(unsigned, int, int)``
  = PTX ``dp4a.u32.s32``), so no shift/correction is needed and the sum is the exact one.
* ``wmma``  -- 16x16x16 ``s8 x s8 -> s32`` tensor-core fragments (``IMMA.8816.S8.S8`` on sm_75).
  TVM's WMMA intrinsics are s8 only, so ``uint8`` activations are shifted to ``int8``:
  ``xs = x - 128`` (in ``[-128, 127]``) and ``sum_k x w = sum_k xs w + 128 * sum_k w[m, k]``;
  the correction ``128 * rowsum(W)`` is folded into the int32 bias offline (:func:`fold_u8_shift`).
  The shifted partial sums are bounded by ``K * 128 * 127`` (checked < 2^31), and the final
  ``acc + bias`` equals the unshifted one, whose range ``zsq_tvm.core.overflow`` proves.

Everything is integer: no float type appears in the kernels (``tests/test_cuda_sm75.py`` scans
the CUDA source and the SASS).  ``schedule(..., tensorize=False)`` keeps the same tiling but
leaves the innermost dot products as scalar loops, so the schedule's semantics can be checked
bit-exactly on ``llvm`` without a GPU (:func:`build_llvm_reference_check`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from zsq_tvm.core import intmath
from zsq_tvm.core.tir_intmath import requantize_expr

__all__ = [
    "GemmSpec",
    "gemm_requant_func",
    "schedule_dp4a",
    "schedule_wmma",
    "build",
    "cuda_source",
    "fold_u8_shift",
    "reference",
    "SM75",
    "sm75_target",
    "nvcc_cubin",
    "find_cuobjdump",
    "sass",
]

SM75 = {"kind": "cuda", "arch": "sm_75"}


@dataclass(frozen=True)
class GemmSpec:
    """A pointwise conv1d as GEMM: ``X[T, K] (a_dtype) x W[M, K] (int8) -> Y[T, M] (out_dtype)``, or in the
    ``ncw`` layout ``W[M, K] x X[1, K, T] -> Y[1, M, T]`` (same sums, the graph's NCW tensors read as they are)."""

    T: int
    K: int
    M: int
    a_dtype: str = "uint8"  # post-ReLU activations; "int8" for the first layer
    out_dtype: str = "int8"
    qmin: int = -127
    qmax: int = 127
    layout: str = "tk"  # "tk": X[T, K] -> Y[T, M]; "ncw": X[1, K, T] -> Y[1, M, T] (the graph's own layout)

    def __post_init__(self):
        assert self.layout in ("tk", "ncw"), self.layout

    @property
    def x_shape(self) -> tuple:
        return (self.T, self.K) if self.layout == "tk" else (1, self.K, self.T)

    @property
    def y_shape(self) -> tuple:
        return (self.T, self.M) if self.layout == "tk" else (1, self.M, self.T)


def gemm_requant_func(spec: GemmSpec, a_dtype: str | None = None, shift_u8: bool = False):
    """The TIR PrimFunc ``(X, W, bias, Mul, Sh) -> Y``.

    ``shift_u8``: ``X`` is ``uint8`` and the GEMM runs on ``xs = int8(x - 128)`` (a separate
    producer block, inlined into the shared-memory load by the WMMA schedule); ``bias`` must then
    be the folded one from :func:`fold_u8_shift`.
    """
    from tvm.script import tirx as T

    Tn, K, M = spec.T, spec.K, spec.M
    a_dtype = a_dtype or spec.a_dtype
    od = spec.out_dtype
    qmin, qmax = int(spec.qmin), int(spec.qmax)

    if shift_u8:
        assert a_dtype == "uint8"
        if K * 128 * 127 >= 2**31:
            raise ValueError(f"K={K}: shifted int8 partial sums could pass 2^31")
    if spec.layout == "ncw":
        return _gemm_requant_ncw(spec, a_dtype, shift_u8)
    if shift_u8:

        @T.prim_func(s_tir=True)
        def func(X: T.Buffer((Tn, K), "uint8"), W: T.Buffer((M, K), "int8"),
                 B: T.Buffer((M,), "int32"), Mul: T.Buffer((M,), "int64"),
                 Sh: T.Buffer((M,), "int64"), Y: T.Buffer((Tn, M), od)):
            T.func_attr({"global_symbol": "main", "tirx.noalias": True})
            Xs = T.sblock_alloc_buffer((Tn, K), "int8")
            acc = T.sblock_alloc_buffer((Tn, M), "int32")
            for t, k in T.grid(Tn, K):
                with T.sblock("shift"):
                    vt, vk = T.axis.remap("SS", [t, k])
                    Xs[vt, vk] = T.Cast("int8", T.Cast("int32", X[vt, vk]) - 128)
            for t, m, k in T.grid(Tn, M, K):
                with T.sblock("gemm"):
                    vt, vm, vk = T.axis.remap("SSR", [t, m, k])
                    with T.init():
                        acc[vt, vm] = 0
                    acc[vt, vm] = acc[vt, vm] + T.Cast("int32", Xs[vt, vk]) * T.Cast("int32", W[vm, vk])
            for t, m in T.grid(Tn, M):
                with T.sblock("requant"):
                    vt, vm = T.axis.remap("SS", [t, m])
                    Y[vt, vm] = requantize_expr(acc[vt, vm] + B[vm], Mul[vm], Sh[vm], qmin, qmax, od)

        return func

    @T.prim_func(s_tir=True)
    def func(X: T.Buffer((Tn, K), a_dtype), W: T.Buffer((M, K), "int8"),
             B: T.Buffer((M,), "int32"), Mul: T.Buffer((M,), "int64"),
             Sh: T.Buffer((M,), "int64"), Y: T.Buffer((Tn, M), od)):
        T.func_attr({"global_symbol": "main", "tirx.noalias": True})
        acc = T.sblock_alloc_buffer((Tn, M), "int32")
        for t, m, k in T.grid(Tn, M, K):
            with T.sblock("gemm"):
                vt, vm, vk = T.axis.remap("SSR", [t, m, k])
                with T.init():
                    acc[vt, vm] = 0
                acc[vt, vm] = acc[vt, vm] + T.Cast("int32", X[vt, vk]) * T.Cast("int32", W[vm, vk])
        for t, m in T.grid(Tn, M):
            with T.sblock("requant"):
                vt, vm = T.axis.remap("SS", [t, m])
                Y[vt, vm] = requantize_expr(acc[vt, vm] + B[vm], Mul[vm], Sh[vm], qmin, qmax, od)

    return func


def _gemm_requant_ncw(spec: GemmSpec, a_dtype: str, shift_u8: bool):
    """``ncw`` layout: ``acc[m, t] = sum_k W[m, k] * X[0, k, t]`` (W is the GEMM's A, X its B), requantized
    per row ``m`` into ``Y[0, m, t]``; with ``shift_u8`` the GEMM reads ``xs = int8(x - 128)``."""
    from tvm.script import tirx as T

    Tn, K, M = spec.T, spec.K, spec.M
    od = spec.out_dtype
    qmin, qmax = int(spec.qmin), int(spec.qmax)
    xs_dtype = "int8" if shift_u8 else a_dtype

    def xs(x):  # the GEMM's int8 operand: x - 128 for shifted uint8, else x itself (a plain copy, no int32 math)
        return T.Cast(xs_dtype, T.Cast("int32", x) - 128) if shift_u8 else x

    @T.prim_func(s_tir=True)
    def func(X: T.Buffer((1, K, Tn), a_dtype), W: T.Buffer((M, K), "int8"),
             B: T.Buffer((M,), "int32"), Mul: T.Buffer((M,), "int64"),
             Sh: T.Buffer((M,), "int64"), Y: T.Buffer((1, M, Tn), od)):
        T.func_attr({"global_symbol": "main", "tirx.noalias": True})
        Xs = T.sblock_alloc_buffer((K, Tn), xs_dtype)
        acc = T.sblock_alloc_buffer((M, Tn), "int32")
        for k, t in T.grid(K, Tn):
            with T.sblock("shift"):
                vk, vt = T.axis.remap("SS", [k, t])
                Xs[vk, vt] = xs(X[0, vk, vt])
        for m, t, k in T.grid(M, Tn, K):
            with T.sblock("gemm"):
                vm, vt, vk = T.axis.remap("SSR", [m, t, k])
                with T.init():
                    acc[vm, vt] = 0
                acc[vm, vt] = acc[vm, vt] + T.Cast("int32", W[vm, vk]) * T.Cast("int32", Xs[vk, vt])
        for m, t in T.grid(M, Tn):
            with T.sblock("requant"):
                vm, vt = T.axis.remap("SS", [m, t])
                Y[0, vm, vt] = requantize_expr(acc[vm, vt] + B[vm], Mul[vm], Sh[vm], qmin, qmax, od)

    return func


def fold_u8_shift(W: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Bias for the shifted-u8 GEMM, which multiplies ``x - 128``: ``bias + 128 * sum_k W[m, k]`` (int32, checked)."""
    return intmath.fold_operand_shift(bias, W, -128, np.shape(W)[0])


def reference(spec: GemmSpec, X, W, bias, Mul, Sh) -> np.ndarray:
    """numpy oracle: exact int64 GEMM + :func:`zsq_tvm.core.intmath.requantize`."""

    if spec.layout == "ncw":
        acc = W.astype(np.int64) @ np.asarray(X).reshape(spec.K, spec.T).astype(np.int64)
        acc = acc + np.asarray(bias, np.int64)[:, None]
        y = intmath.requantize(acc, Mul, Sh, spec.qmin, spec.qmax, axis=0)
        return y.astype(spec.out_dtype).reshape(spec.y_shape)
    acc = X.astype(np.int64) @ W.astype(np.int64).T + np.asarray(bias, np.int64)[None, :]
    return intmath.requantize(acc, Mul, Sh, spec.qmin, spec.qmax, axis=1).astype(spec.out_dtype)


# --------------------------------------------------------------------------- schedules

def _round_up(x: int, m: int) -> int:
    return (x + m - 1) // m * m


def _pad(sch, gemm, spec: GemmSpec, br: int, bc: int, bk: int):
    """pad_einsum the gemm block's (rows, columns, k) iterators to multiples of (br, bc, bk): rows are T
    and columns M in the ``tk`` layout, the other way round in ``ncw``."""
    rows, cols = (spec.T, spec.M) if spec.layout == "tk" else (spec.M, spec.T)
    if (rows % br, cols % bc, spec.K % bk) != (0, 0, 0):
        sch.pad_einsum(gemm, [br, bc, bk])


def _epilogue(sch):
    """The block that writes Y: requant, with the un-pad copy (if any) inlined into it."""
    names = [sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))]
    req = sch.get_sblock("requant")
    if "acc_pad" in names:
        # acc = acc_pad[:T] is a pure copy: inline it so requant reads acc_pad directly
        sch.compute_inline(sch.get_sblock("acc_pad"))
    return req


def _inline_producer(sch, name):
    names = [sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))]
    if name in names:
        sch.compute_inline(sch.get_sblock(name))


def schedule_dp4a(spec: GemmSpec, tensorize: bool = True, bt: int = 64, bm: int = 64,
                  ty: int = 16, tx: int = 16, bk: int = 16):
    """dp4a schedule: 64x64 output tile per block, 16x16 threads of 4x4 outputs, k-tile 16.

    The int32 accumulators live in registers (``local``); each thread requantizes its own 4x4
    outputs from them (the epilogue is ``reverse_compute_at`` the thread loop) and writes ``out_dtype``.
    ``tensorize=False`` gives the same loop nest with scalar int32 multiply-adds (for llvm).
    """
    from tvm import s_tir
    from tvm.s_tir.tensor_intrin.dot_product_common import (
        DP4A_S8S8S32_INTRIN,
        DP4A_U8S8S32_INTRIN,
    )

    if spec.layout != "tk":
        raise ValueError("the dp4a schedule is time-major (layout='tk'): its k-runs of 4 bytes must be contiguous")
    sch = s_tir.Schedule(gemm_requant_func(spec))
    gemm = sch.get_sblock("gemm")
    _pad(sch, gemm, spec, bt, bm, bk)
    req = _epilogue(sch)
    it, im = bt // ty, bm // tx
    t, m, k = sch.get_loops(gemm)
    t0, t1, t2 = sch.split(t, [None, ty, it])
    m0, m1, m2 = sch.split(m, [None, tx, im])
    k0, k1, k2 = sch.split(k, [None, bk // 4, 4])
    sch.reorder(t0, m0, t1, m1, k0, k1, t2, m2, k2)
    gpu = tensorize  # llvm variant: same loops, no bindings, global staging buffers
    if gpu:
        sch.bind(t0, "blockIdx.y")
        sch.bind(m0, "blockIdx.x")
        sch.bind(t1, "threadIdx.y")
        sch.bind(m1, "threadIdx.x")

    for idx, pad_name in ((0, "X_pad"), (1, "W_pad")):
        cr = sch.cache_read(gemm, idx, "shared" if gpu else "global")
        sch.compute_at(cr, k0)
        _inline_producer(sch, pad_name)
        f = sch.fuse(*sch.get_loops(cr)[-2:])
        _, fy, fx, fv = sch.split(f, [None, ty, tx, 4])
        if gpu:
            sch.bind(fy, "threadIdx.y")
            sch.bind(fx, "threadIdx.x")
            sch.vectorize(fv)

    if gpu:
        sch.set_scope(gemm, 0, "local")
    sch.reverse_compute_at(req, m1)
    sch.decompose_reduction(gemm, k0)
    if tensorize:
        intrin = DP4A_U8S8S32_INTRIN if spec.a_dtype == "uint8" else DP4A_S8S8S32_INTRIN
        sch.tensorize(k2, intrin)
    return sch


def wmma_k_tile(K: int) -> int:
    """The k-tile of the WMMA schedule: 64 where it divides K rounded up to 16, else 32 or 16 (no padded
    reduction beyond the 16 the fragments need)."""
    k16 = _round_up(K, 16)
    return next(b for b in (64, 32, 16) if k16 % b == 0)


# Fragments per warp (rows of A, columns of B) of the WMMA schedule; a block is 2 x 2 warps, so its output tile is
# 32 * WMMA_WARP_FRAGS[0] x 32 * WMMA_WARP_FRAGS[1].  (2, 1): 64 x 32, chosen on an H100 (Session 11,
# tools/gpu_check.py): a QuartzNet 512x512 layer at T = 500 (ncw) takes 8.8 us against 12.3 us with 64 x 64 tiles
# (twice the blocks: 16 x 8 = 128 for 132 SMs, where 64 x 64 gave 64), QuartzNet-15x5 INT8 1.089 ms against
# 1.330 ms (CUDA graphs) -- 64 x 32 beat 32 x 64 (1.117 ms) as a whole model.
WMMA_WARP_FRAGS = (2, 1)


def schedule_wmma(spec: GemmSpec, tensorize: bool = True, bk: int | None = None,
                  frags: tuple | None = None):
    """WMMA 16x16x16 s8s8s32 schedule: 2x2 warps of ``frags`` = (fr, fc) fragments each (default
    ``WMMA_WARP_FRAGS`` = 2x1: a 64x32 block tile, rows of A x columns of B; 2x2 gives 64x64), k-tile ``bk``
    (default :func:`wmma_k_tile`: 64 for K = 256, 512, ...).

    Both layouts: ``tk`` computes ``X[T, K] W[M, K]^T`` (A = X row-major, B = W "transposed"), ``ncw``
    computes ``W[M, K] X[K, T]`` (A = W, B = X row-major) and writes ``Y[0, m, t]`` along time, so the
    graph's NCW activations need no transposes around it.

    Per k-tile the block stages its rows x bk tile of A and columns x bk tile of B in shared memory (16-byte
    vector loads, 4-byte where the operand is zero-padded or u8-shifted; the shift and the padding applied on
    the way), syncs once, and each warp loads the fragments of *its* ``fr`` A rows and ``fc`` B columns (the
    warp's row and column are separate thread axes, ``threadIdx.z`` and ``threadIdx.y``, so its fragment loads
    cover only its own ``16 fr x 16 fc`` tile) for each of the ``bk / 16`` steps.  The shared rows are padded
    by 16 bytes (``storage_align``) so the 16 rows a fragment load reads start in different banks.  A larger
    k-tile means fewer ``__syncthreads`` per output tile; with T = 500 the grid is small (``M/64 x ceil(T/32)``
    blocks in ncw), so the k-loop's latency, not the tensor cores, bounds the kernel, and smaller block tiles
    (more blocks on more SMs) are faster (``WMMA_WARP_FRAGS``).

    ``uint8`` activations run shifted to int8 (``x - 128``, inlined into the shared-memory load);
    pass the bias through :func:`fold_u8_shift`.  The int32 tile goes fragment -> shared and each
    warp requantizes its own outputs from there (``reverse_compute_at``), writing ``out_dtype``.
    ``tensorize=False``: same tiling, pad, shift and epilogue, but scalar loops, no thread
    bindings and ``global`` staging buffers, so llvm can run it.
    """
    from tvm import s_tir

    gpu = tensorize
    bk = bk or wmma_k_tile(spec.K)
    assert bk in (16, 32, 64), bk
    fr, fc = frags or WMMA_WARP_FRAGS
    assert fr in (1, 2, 4) and fc in (1, 2, 4), (fr, fc)
    tr, tc = 32 * fr, 32 * fc  # the block's output tile: rows of A x columns of B
    shift = spec.a_dtype == "uint8"
    sch = s_tir.Schedule(gemm_requant_func(spec, shift_u8=shift))
    gemm = sch.get_sblock("gemm")
    _pad(sch, gemm, spec, tr, tc, bk)  # the gemm block's iterators are (rows, columns, k) in both layouts
    req = _epilogue(sch)

    r, c, k = sch.get_loops(gemm)  # rows of A (t for tk, m for ncw), columns (m / t), reduction
    r, ri = sch.split(r, [None, 16])
    c, ci = sch.split(c, [None, 16])
    k0, k1, ki = sch.split(k, [None, bk // 16, 16])
    sch.reorder(r, c, k0, k1, ri, ci, ki)
    inner = gemm
    outer = sch.blockize(ri)
    r0, r1, r2 = sch.split(r, [None, 2, fr])
    c0, c1, c2 = sch.split(c, [None, 2, fc])
    sch.reorder(r0, c0, r1, c1, k0, k1, r2, c2)
    if gpu:
        sch.bind(r0, "blockIdx.y")
        sch.bind(c0, "blockIdx.x")
        sch.bind(r1, "threadIdx.z")
        sch.bind(c1, "threadIdx.y")

    stage = "shared" if gpu else "global"
    x_side = ("X_pad", "shift", "Xs_pad")
    # the GEMM's A operand (read 0) is X in the tk layout, W in the ncw one
    operands = ((0, x_side), (1, ("W_pad",))) if spec.layout == "tk" else ((0, ("W_pad",)), (1, x_side))
    rows = spec.T if spec.layout == "tk" else spec.M  # A's rows; B's columns are the other one
    cols = spec.M if spec.layout == "tk" else spec.T
    for idx, producers in operands:
        cr = sch.cache_read(outer, idx, stage)
        sch.compute_at(cr, k0)
        for name in producers:
            _inline_producer(sch, name)
        f = sch.fuse(*sch.get_loops(cr)[-2:])
        # 16-byte vectors where the operand's tile needs no zero padding and no u8 shift: TVM 0.27 prints the
        # padded zero of an int8x8 / int8x16 load as make_int2/make_int4 of 8/16 chars and has no CUDA type for
        # the shift's int32x16 (nvcc / codegen reject both); int8x4 is fine
        tile = tr if idx == 0 else tc
        padded = spec.K % bk or (rows if idx == 0 else cols) % tile
        shifted = shift and producers is x_side
        # 16-byte vectors only where the 128 threads' vectors fit the tile x bk stage whole
        vec = 4 if padded or shifted or bk < 32 or tile * bk < 128 * 16 else 16
        _, fz, fy, fx, fv = sch.split(f, [None, 2, 2, 32, vec])
        if gpu:
            sch.bind(fz, "threadIdx.z")
            sch.bind(fy, "threadIdx.y")
            sch.bind(fx, "threadIdx.x")
            sch.vectorize(fv)
            sch.storage_align(cr, 0, axis=-2, factor=32, offset=16)  # row stride = 16 mod 32 bytes
    a_frag = sch.cache_read(outer, 0, "wmma.matrix_a" if gpu else "global")
    b_frag = sch.cache_read(outer, 1, "wmma.matrix_b" if gpu else "global")
    sch.compute_at(a_frag, k1)
    sch.compute_at(b_frag, k1)

    sch.set_scope(outer, 0, stage)  # the padded int32 tile (acc_pad)
    store = sch.cache_write(outer, 0, "wmma.accumulator" if gpu else "global")
    sch.reverse_compute_at(store, c1)
    sch.reverse_compute_at(req, c1)
    f = sch.fuse(*sch.get_loops(req)[-2:])
    _, fx = sch.split(f, [None, 32])
    if gpu:
        sch.bind(fx, "threadIdx.x")

    init = sch.decompose_reduction(outer, k0)
    if not gpu:
        return sch
    from tvm.s_tir.tensor_intrin.cuda import get_wmma_intrin_group

    # tk: B = W[M, K] is stored N x K (transposed); ncw: B = X[K, T] is K x N (row-major)
    ig = get_wmma_intrin_group("shared", "shared", "int8", "int32", trans_b=spec.layout == "tk")
    for frag, key in ((a_frag, "load_a"), (b_frag, "load_b")):
        i, j = sch.get_loops(frag)[-2:]
        i0, i1 = sch.split(i, [None, 16])
        j0, j1 = sch.split(j, [None, 16])
        sch.reorder(i0, j0, i1, j1)
        sch.tensorize(i1, ig[key])
    i, j = sch.get_loops(store)[-2:]
    i0, i1 = sch.split(i, [None, 16])
    j0, j1 = sch.split(j, [None, 16])
    sch.reorder(i0, j0, i1, j1)
    sch.tensorize(i1, ig["store"])
    sch.tensorize(sch.get_loops(sch.get_child_blocks(init)[0])[-2], ig["init"])
    sch.tensorize(sch.get_loops(inner)[-3], ig["compute"])
    return sch


# --------------------------------------------------------------------------- build helpers

def sm75_target():
    import tvm

    return tvm.target.Target(SM75, host="llvm")


def build(sch_or_mod, target=None):
    """``tvm.compile`` the scheduled module (default: CUDA sm_75 with an llvm host)."""
    import tvm

    mod = sch_or_mod.mod if hasattr(sch_or_mod, "mod") else sch_or_mod
    return tvm.compile(mod, target=target if target is not None else sm75_target())


def cuda_source(lib) -> str:
    """The CUDA C source of a module built for a cuda target."""
    for m in _all_imports(lib):
        if m.kind == "cuda":
            return m.inspect_source()
    raise ValueError("no cuda module in this library")


def _all_imports(lib):
    mods = [getattr(lib, "mod", lib)]
    out = []
    while mods:
        m = mods.pop()
        out.append(m)
        mods.extend(m.imports)
    return out


def nvcc_cubin(src: str, workdir: str, arch: str = "sm_75", nvcc: str = "nvcc") -> str:
    """Compile CUDA source to a cubin with nvcc (what TVM does at load time); returns its path."""
    import os
    import subprocess

    cu = os.path.join(workdir, "kernel.cu")
    cubin = os.path.join(workdir, "kernel.cubin")
    with open(cu, "w") as f:
        f.write(src)
    subprocess.run([nvcc, f"-arch={arch}", "-cubin", "-O3", "-o", cubin, cu],
                   check=True, capture_output=True, text=True)
    return cubin


def find_cuobjdump() -> str | None:
    import os
    import shutil

    exe = shutil.which("cuobjdump")
    if exe:
        return exe
    try:
        import nvidia  # pip nvidia-cuda-cuobjdump

        for base in nvidia.__path__:
            for sub in ("cu13", "cu12", "cuda_cuobjdump"):
                cand = os.path.join(base, sub, "bin", "cuobjdump")
                if os.path.exists(cand):
                    return cand
    except ImportError:
        pass
    return None


def sass(cubin: str, cuobjdump: str | None = None) -> str:
    import subprocess

    exe = cuobjdump or find_cuobjdump()
    if exe is None:
        raise FileNotFoundError("cuobjdump not found (pip install nvidia-cuda-cuobjdump)")
    import os

    env = dict(os.environ)
    # the pip wheels put nvdisasm (which cuobjdump -sass runs) next to cuobjdump
    env["PATH"] = os.path.dirname(exe) + os.pathsep + env.get("PATH", "")
    return subprocess.run([exe, "-sass", cubin], check=True, capture_output=True, text=True,
                          env=env).stdout


def random_problem(spec: GemmSpec, seed: int = 0):
    """Random int8 operands, bias and dyadic (Mul, Sh) with outputs spread over the clip range."""
    rng = np.random.default_rng(seed)
    lo = 0 if spec.a_dtype == "uint8" else -127
    hi = 255 if spec.a_dtype == "uint8" else 127
    X = rng.integers(lo, hi + 1, spec.x_shape).astype(spec.a_dtype)
    W = rng.integers(-127, 128, (spec.M, spec.K)).astype("int8")
    bias = rng.integers(-(2**15), 2**15, spec.M).astype("int32")
    Mul = rng.integers(2**29, 2**31 - 1, spec.M).astype("int64")
    # shifts 36..43 spread the outputs over an 8-bit range (some saturate); a wider clip range (int16 logits)
    # gets shifts smaller by the extra bits, so its values and its saturation are exercised too
    extra = max(0, int(round(np.log2(float(spec.qmax) - float(spec.qmin) + 1))) - 8)
    Sh = (rng.integers(36, 44, spec.M) - extra).astype("int64")
    return X, W, bias, Mul, Sh


def kernel_bias(spec: GemmSpec, W, bias, schedule: str) -> np.ndarray:
    """The bias a kernel takes: folded with the u8 shift for the WMMA schedule on uint8 input."""
    if schedule == "wmma" and spec.a_dtype == "uint8":
        return fold_u8_shift(W, bias)
    return np.asarray(bias, np.int32)


def llvm_bit_exact(mod, inputs, want: np.ndarray, what: str) -> bool:
    """Build ``mod`` (an unbound schedule's module) on llvm, run ``main(*inputs, y)`` and compare ``y`` with
    ``want`` bit for bit.  Returns True or raises naming ``what`` and the first mismatches."""
    import tvm

    lib = tvm.compile(mod, target=tvm.target.Target("llvm"))
    dev = tvm.cpu()
    y = tvm.runtime.tensor(np.zeros(want.shape, want.dtype), dev)
    lib["main"](*[tvm.runtime.tensor(np.ascontiguousarray(a), dev) for a in inputs], y)
    got = y.numpy()
    if not np.array_equal(got, want):
        bad = np.argwhere(got != want)
        raise AssertionError(f"{what} llvm mismatch at {len(bad)} places, first {bad[:3].tolist()}")
    return True


def run_llvm_check(spec: GemmSpec, schedule: str = "dp4a", seed: int = 0, **schedule_kw) -> bool:
    """Build the un-tensorized version of the schedule's tiling on llvm and compare bit-exactly
    with :func:`reference` (numpy + ``intmath.requantize``).  Returns True or raises.
    ``schedule_kw``: the schedule's tiling arguments (``bk``, ``frags`` for WMMA)."""
    sch = (schedule_dp4a if schedule == "dp4a" else schedule_wmma)(spec, tensorize=False, **schedule_kw)
    X, W, bias, Mul, Sh = random_problem(spec, seed)
    return llvm_bit_exact(sch.mod, (X, W, kernel_bias(spec, W, bias, schedule), Mul, Sh),
                          reference(spec, X, W, bias, Mul, Sh), schedule)


# --------------------------------------------------------------------------- integer-only scans
import re as _re

SASS_FLOAT_OPS = _re.compile(
    r"\b(FADD|FMUL|FFMA|FMNMX|FSETP|FSET|FCHK|FRND|F2I|I2F|F2F|MUFU|DADD|DMUL|DFMA|"
    r"HADD2|HMUL2|HFMA2|HMMA)\b")
CUDA_FLOAT_TYPES = _re.compile(r"\b(float|double|half|__half|half2|nv_bfloat16|__nv_bfloat16)\b")


def sass_float_ops(sass_text: str) -> list[str]:
    """Float instructions in a SASS listing (empty for an integer-only kernel)."""
    return SASS_FLOAT_OPS.findall(sass_text)


def kernel_float_types(src: str) -> list[str]:
    """Float type names in the ``__global__`` kernels of a CUDA source (TVM's header, which
    defines half/bfloat16 helpers, comes before the first kernel and is skipped)."""
    i = src.find('extern "C" __global__')
    return CUDA_FLOAT_TYPES.findall(src[i:] if i >= 0 else src)


def sass_counts(sass_text: str) -> dict[str, int]:
    """Counts of the int8 dot-product instructions: ``IDP.4A*`` and ``IMMA*``."""
    out: dict[str, int] = {}
    for op in _re.findall(r"\b(IDP\.4A\.\w+\.\w+|IMMA\.\w+\.\w+\.\w+)", sass_text):
        out[op] = out.get(op, 0) + 1
    return out
