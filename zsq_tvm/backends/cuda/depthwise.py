"""Hand TIR schedule for a depthwise int8 conv1d on CUDA, requantize fused.

Problem (one depthwise conv1d of the integer graph, batch 1, NCW; the buffers keep the batch axis so the
Relax graph passes its tensors without reshapes)::

    xpad[c, u] = x[0, c, u - pad_l]  if pad_l <= u < pad_l + Tin  else 0
    acc[c, t]  = sum_k int32(xpad[c, s*t + d*k]) * int32(W[c, k])         (int32, exact: K * 255 * 127 < 2^31)
    Y[0, c, t] = cast(clip((int64(acc[c, t] + bias[c]) * Mul[c] + 2^(Sh[c]-1)) >> Sh[c], qmin, qmax))

which is :func:`zsq_tvm.core.intmath.conv1d_int` with ``groups=C`` followed by :func:`zsq_tvm.core.intmath.requantize`
(:func:`reference`).  ``x`` is uint8 (post-ReLU) or int8, any stride ``s``, dilation ``d`` and padding.

Why a kernel of our own: dlight's ``GeneralReduction`` rule, which the default CUDA lowering picks for this
reduction, launches one 256-thread block per *output element* and reduces the K taps across the block
(shuffles + two ``__syncthreads``): C x Tout blocks (128,000 for one QuartzNet layer at 10 s), each with
under K busy threads.  Here a block computes a ``cb x (vt * tx)`` output tile:

* ``blockIdx.y`` -> channel groups of ``cb``, ``blockIdx.x`` -> time tiles of ``vt * tx`` outputs;
* ``threadIdx.y`` -> the ``cb`` channels, ``threadIdx.x`` -> ``tx`` runs of ``vt`` consecutive outputs (a warp
  loads and stores one contiguous span along time, the contiguous axis of NCW; thread ``i`` reads the shared
  window from byte ``s * vt * i``: distinct 4-byte banks for ``vt = 4``, no conflicts);
* the block's input window (``s * (vt*tx - 1) + d * (K - 1) + 1`` bytes per channel, zero padding applied
  while loading) and its ``cb x K`` taps are staged in shared memory once; each thread keeps ``vt`` int32
  accumulators in registers, sweeps the K taps, and requantizes them in place before its ``vt`` stores.

There is no tensor-core or dp4a form of this: the taps of neighbouring outputs overlap at byte offsets, so
packing them for ``__dp4a`` costs as much as the multiply-adds; a layer is a few million MACs and the kernel
is bound by its loads.  Everything is integer (``tests/test_cuda_depthwise.py`` scans source and SASS).
``schedule(spec, gpu=False)`` keeps the same tiling, staging and epilogue without thread bindings, so llvm
can run it and check the schedule's semantics bit-exactly without a GPU (:func:`run_llvm_check`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from zsq_tvm.backends.cuda.int8_gemm import llvm_bit_exact
from zsq_tvm.core import intmath
from zsq_tvm.core.tir_intmath import requantize_expr

__all__ = ["DwSpec", "depthwise_func", "schedule", "reference", "random_problem", "run_llvm_check"]


@dataclass(frozen=True)
class DwSpec:
    """``x[1, C, Tin] (a_dtype) * W[C, K] (int8) -> Y[1, C, Tout] (out_dtype)``, stride/dilation/pads, requantize."""

    C: int
    Tin: int
    K: int
    stride: int = 1
    pad_l: int = 0
    pad_r: int = 0
    dilation: int = 1
    a_dtype: str = "uint8"
    out_dtype: str = "int8"
    qmin: int = -127
    qmax: int = 127
    # Default tile: 256 threads x 2 outputs along time, one channel per block.  Timed on an H100 (Session 11,
    # tools/gpu_check.py's tile variants, K=87 dilated layer, C=512, T=500): 7.2 us against 9.4 us for
    # 128 x 4 x 2 channels, the previous default.  One channel per block doubles the blocks (C x 1 for T <= 512:
    # 256 blocks for a C=256 layer, where 2 channels per block gave 128, fewer than the H100's 132 SMs).
    tx: int = 256  # threads along time
    vt: int = 2  # consecutive outputs per thread (int8 out: one 2-byte store)
    cb: int = 1  # channels per block (threadIdx.y)

    def __post_init__(self):
        assert self.a_dtype in ("uint8", "int8"), self.a_dtype
        assert self.stride >= 1 and self.dilation >= 1 and self.Tout >= 1, self
        # the int32 accumulator is exact: |sum| <= K * 255 * 128
        assert self.K * 255 * 128 < 2**31, f"K={self.K} too large for an int32 accumulator"

    @property
    def Tout(self) -> int:
        return (self.Tin + self.pad_l + self.pad_r - self.dilation * (self.K - 1) - 1) // self.stride + 1

    @property
    def tile(self) -> int:
        """Outputs per block along time."""
        return self.vt * self.tx

    @property
    def Tp(self) -> int:
        """Tout rounded up to whole tiles (the accumulator's extent; the stores skip the excess)."""
        return -(-self.Tout // self.tile) * self.tile

    @property
    def Cp(self) -> int:
        return -(-self.C // self.cb) * self.cb

    @property
    def L(self) -> int:
        """Padded input elements the whole (tile-rounded) output reads."""
        return self.stride * (self.Tp - 1) + self.dilation * (self.K - 1) + 1


def depthwise_func(spec: DwSpec):
    """The TIR PrimFunc ``(X[1, C, Tin], W[C, K], B[C] int32, Mul[C] int64, Sh[C] int64) -> Y[1, C, Tout]``.

    ``xpad`` spans the tile-rounded extent ``L`` and ``acc`` the rounded ``[Cp, Tp]``, so every tile of the
    schedule is whole (no partial-tile predicates inside the tap loop); outside ``x`` the padding reads 0,
    and rows ``c >= C`` read channel ``C - 1``'s taps (computed, never stored).
    """
    from tvm.script import tirx as T

    C, Tin, K, Tout = spec.C, spec.Tin, spec.K, spec.Tout
    Cp, Tp, L = spec.Cp, spec.Tp, spec.L
    s, d, pl = spec.stride, spec.dilation, spec.pad_l
    od, ad = spec.out_dtype, spec.a_dtype
    qmin, qmax = int(spec.qmin), int(spec.qmax)
    zero = 0

    @T.prim_func(s_tir=True)
    def func(X: T.Buffer((1, C, Tin), ad), W: T.Buffer((C, K), "int8"), B: T.Buffer((C,), "int32"),
             Mul: T.Buffer((C,), "int64"), Sh: T.Buffer((C,), "int64"), Y: T.Buffer((1, C, Tout), od)):
        T.func_attr({"global_symbol": "main", "tirx.noalias": True})
        xpad = T.sblock_alloc_buffer((Cp, L), ad)
        wpad = T.sblock_alloc_buffer((Cp, K), "int8")
        acc = T.sblock_alloc_buffer((Cp, Tp), "int32")
        for c, u in T.grid(Cp, L):
            with T.sblock("xpad"):
                vc, vu = T.axis.remap("SS", [c, u])
                xpad[vc, vu] = T.if_then_else(
                    T.likely(pl <= vu) and T.likely(vu < pl + Tin) and T.likely(vc < C),
                    X[0, T.min(vc, C - 1), T.max(T.min(vu - pl, Tin - 1), 0)], T.Cast(ad, zero))
        for c, k in T.grid(Cp, K):
            with T.sblock("wpad"):
                vc, vk = T.axis.remap("SS", [c, k])
                wpad[vc, vk] = W[T.min(vc, C - 1), vk]
        for c, t, k in T.grid(Cp, Tp, K):
            with T.sblock("conv"):
                vc, vt, vk = T.axis.remap("SSR", [c, t, k])
                with T.init():
                    acc[vc, vt] = 0
                acc[vc, vt] = acc[vc, vt] + T.Cast("int32", xpad[vc, vt * s + vk * d]) * T.Cast("int32", wpad[vc, vk])
        for c, t in T.grid(C, Tout):
            with T.sblock("requant"):
                vc, vt = T.axis.remap("SS", [c, t])
                Y[0, vc, vt] = requantize_expr(acc[vc, vt] + B[vc], Mul[vc], Sh[vc], qmin, qmax, od)

    return func


def schedule(spec: DwSpec, gpu: bool = True):
    """The tiling of the module doc; ``gpu=False``: same loops and staging, no bindings, ``global`` staging (llvm)."""
    from tvm import s_tir

    sch = s_tir.Schedule(depthwise_func(spec))
    conv = sch.get_sblock("conv")
    c, t, k = sch.get_loops(conv)
    c0, c1 = sch.split(c, [None, spec.cb])
    t0, t2, t1 = sch.split(t, [None, spec.tx, spec.vt])  # t = t0 * tile + t2 * vt + t1
    sch.reorder(c0, t0, c1, t2, t1, k)
    if gpu:
        sch.bind(c0, "blockIdx.y")
        sch.bind(t0, "blockIdx.x")
        sch.bind(c1, "threadIdx.y")
        sch.bind(t2, "threadIdx.x")
    stage = "shared" if gpu else "global"
    # the block's input window and taps, loaded cooperatively by all cb x tx threads
    for idx, producer in ((0, "xpad"), (1, "wpad")):
        cr = sch.cache_read(conv, idx, stage)
        sch.compute_at(cr, t0)
        sch.compute_inline(sch.get_sblock(producer))
        inner = sch.get_loops(cr)[2:]  # below (c0, t0)
        if not inner:  # a 1 x 1 region (cb = 1 and K = 1): compute_at left no loop to spread over the threads
            inner = [sch.add_unit_loop(cr)]
        f = sch.fuse(*inner) if len(inner) > 1 else inner[0]
        _, fy, fx = sch.split(f, [None, spec.cb, spec.tx])
        if gpu:
            sch.bind(fy, "threadIdx.y")
            sch.bind(fx, "threadIdx.x")
    if gpu:
        sch.set_scope(conv, 0, "local")  # vt accumulators per thread, in registers
    req = sch.get_sblock("requant")
    sch.reverse_compute_at(req, t2)
    sch.decompose_reduction(conv, t1)
    return sch


def reference(spec: DwSpec, X, W, bias, Mul, Sh) -> np.ndarray:
    """numpy oracle: :func:`zsq_tvm.core.intmath.conv1d_int` (groups = C) + :func:`zsq_tvm.core.intmath.requantize`."""

    acc = intmath.conv1d_int(np.asarray(X), np.asarray(W, np.int8)[:, None, :], strides=spec.stride,
                             padding=(spec.pad_l, spec.pad_r), dilation=spec.dilation, groups=spec.C)
    acc = acc.astype(np.int64) + np.asarray(bias, np.int64)[None, :, None]
    return intmath.requantize(acc, Mul, Sh, spec.qmin, spec.qmax, axis=1).astype(spec.out_dtype)


def random_problem(spec: DwSpec, seed: int = 0):
    """Random operands, bias and dyadic (Mul, Sh) with outputs spread over the clip range (some saturate)."""
    rng = np.random.default_rng(seed)
    lo, hi = (0, 255) if spec.a_dtype == "uint8" else (-127, 127)
    X = rng.integers(lo, hi + 1, (1, spec.C, spec.Tin)).astype(spec.a_dtype)
    W = rng.integers(-127, 128, (spec.C, spec.K)).astype("int8")
    bias = rng.integers(-(2**12), 2**12, spec.C).astype("int32")
    Mul = rng.integers(2**29, 2**31 - 1, spec.C).astype("int64")
    # per channel, the shift that maps the 99th percentile of |acc| a little past the clip range: most outputs
    # spread over the range, some saturate

    acc = intmath.conv1d_int(X, W[:, None, :], strides=spec.stride, padding=(spec.pad_l, spec.pad_r),
                             dilation=spec.dilation, groups=spec.C)[0].astype(np.float64) + bias[:, None]
    top = np.maximum(np.percentile(np.abs(acc), 99, axis=1), 1.0)
    span = float(max(abs(spec.qmin), abs(spec.qmax)))
    Sh = np.clip(np.round(np.log2(top * Mul / (1.2 * span))), 1, 62).astype("int64")
    return X, W, bias, Mul, Sh


def run_llvm_check(spec: DwSpec, seed: int = 0) -> bool:
    """Build ``schedule(spec, gpu=False)`` on llvm and compare bit-exactly with :func:`reference`; True or raises."""

    X, W, bias, Mul, Sh = random_problem(spec, seed)
    return llvm_bit_exact(schedule(spec, gpu=False).mod, (X, W, bias, Mul, Sh),
                          reference(spec, X, W, bias, Mul, Sh), "depthwise")
