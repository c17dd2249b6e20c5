"""Hand TIR schedules for a pointwise (1x1) int8 conv1d on CUDA sm_75 (T4), as a GEMM.

Layout (``/work/shared/facts.md``): activations ``X[T, K]`` (time-major, i.e. NWC with N=1),
weights ``W[M, K]`` (OIW with W=1 squeezed), accumulator ``acc[T, M]`` int32, and the per-channel
dyadic requantize epilogue of :func:`zsq_tvm.intmath.requantize` fused into the write-back::

    y[t, m] = cast(clip((int64(acc[t, m] + bias[m]) * Mul[m] + 2^(Sh[m]-1)) >> Sh[m], qmin, qmax))

Two schedules:

* ``dp4a``  -- ``__dp4a`` (``IDP.4A``) via ``tensorize``.  Post-ReLU ``uint8`` activations use the
  mixed-sign ``DP4A_U8S8S32_INTRIN`` (TVM's CUDA header declares ``int __dp4a(unsigned, int, int)``
  = PTX ``dp4a.u32.s32``), so no shift/correction is needed and the sum is the exact one.
* ``wmma``  -- 16x16x16 ``s8 x s8 -> s32`` tensor-core fragments (``IMMA.8816.S8.S8`` on sm_75).
  TVM's WMMA intrinsics are s8 only, so ``uint8`` activations are shifted to ``int8``:
  ``xs = x - 128`` (in ``[-128, 127]``) and ``sum_k x w = sum_k xs w + 128 * sum_k w[m, k]``;
  the correction ``128 * rowsum(W)`` is folded into the int32 bias offline (:func:`fold_u8_shift`).
  The shifted partial sums are bounded by ``K * 128 * 127`` (checked < 2^31), and the final
  ``acc + bias`` equals the unshifted one, whose range ``zsq_tvm.overflow`` proves.

Everything is integer: no float type appears in the kernels (``tests/test_cuda_sm75.py`` scans
the CUDA source and the SASS).  ``schedule(..., tensorize=False)`` keeps the same tiling but
leaves the innermost dot products as scalar loops, so the schedule's semantics can be checked
bit-exactly on ``llvm`` without a GPU (:func:`build_llvm_reference_check`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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
    """A pointwise conv1d as GEMM: ``X[T, K] (a_dtype) x W[M, K] (int8) -> Y[T, M] (out_dtype)``."""

    T: int
    K: int
    M: int
    a_dtype: str = "uint8"  # post-ReLU activations; "int8" for the first layer
    out_dtype: str = "int8"
    qmin: int = -127
    qmax: int = 127


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
                    Y[vt, vm] = T.Cast(od, T.max(T.min(
                        (T.Cast("int64", acc[vt, vm] + B[vm]) * Mul[vm]
                         + T.shift_left(T.int64(1), Sh[vm] - T.int64(1))) >> Sh[vm],
                        T.int64(qmax)), T.int64(qmin)))

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
                Y[vt, vm] = T.Cast(od, T.max(T.min(
                    (T.Cast("int64", acc[vt, vm] + B[vm]) * Mul[vm]
                     + T.shift_left(T.int64(1), Sh[vm] - T.int64(1))) >> Sh[vm],
                    T.int64(qmax)), T.int64(qmin)))

    return func


def fold_u8_shift(W: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Bias for the shifted-u8 GEMM: ``bias + 128 * sum_k W[m, k]`` (int32, checked)."""
    b = np.asarray(bias, np.int64) + 128 * np.asarray(W, np.int64).sum(axis=1)
    if b.min() < -(2**31) or b.max() >= 2**31:
        raise OverflowError("folded u8-shift bias leaves int32")
    return b.astype(np.int32)


def reference(spec: GemmSpec, X, W, bias, Mul, Sh) -> np.ndarray:
    """numpy oracle: exact int64 GEMM + :func:`zsq_tvm.intmath.requantize`."""
    from zsq_tvm import intmath

    acc = X.astype(np.int64) @ W.astype(np.int64).T + np.asarray(bias, np.int64)[None, :]
    return intmath.requantize(acc, Mul, Sh, spec.qmin, spec.qmax, axis=1).astype(spec.out_dtype)


# --------------------------------------------------------------------------- schedules

def _round_up(x: int, m: int) -> int:
    return (x + m - 1) // m * m


def _pad(sch, gemm, spec: GemmSpec, bt: int, bm: int, bk: int):
    """pad_einsum to tile multiples; returns the names of the producer pad blocks."""
    if (spec.T % bt, spec.M % bm, spec.K % bk) != (0, 0, 0):
        sch.pad_einsum(gemm, [bt, bm, bk])


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
    outputs from them (the epilogue is ``reverse_compute_at`` the thread loop) and writes int8.
    ``tensorize=False`` gives the same loop nest with scalar int32 multiply-adds (for llvm).
    """
    from tvm import s_tir
    from tvm.s_tir.tensor_intrin.dot_product_common import (
        DP4A_S8S8S32_INTRIN,
        DP4A_U8S8S32_INTRIN,
    )

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
    sch.bind(t0, "blockIdx.y")
    sch.bind(m0, "blockIdx.x")
    sch.bind(t1, "threadIdx.y")
    sch.bind(m1, "threadIdx.x")

    for idx, pad_name in ((0, "X_pad"), (1, "W_pad")):
        cr = sch.cache_read(gemm, idx, "shared")
        sch.compute_at(cr, k0)
        _inline_producer(sch, pad_name)
        f = sch.fuse(*sch.get_loops(cr)[-2:])
        _, fy, fx, fv = sch.split(f, [None, ty, tx, 4])
        sch.bind(fy, "threadIdx.y")
        sch.bind(fx, "threadIdx.x")
        sch.vectorize(fv)

    sch.set_scope(gemm, 0, "local")
    sch.reverse_compute_at(req, m1)
    sch.decompose_reduction(gemm, k0)
    if tensorize:
        intrin = DP4A_U8S8S32_INTRIN if spec.a_dtype == "uint8" else DP4A_S8S8S32_INTRIN
        sch.tensorize(k2, intrin)
    return sch


def schedule_wmma(spec: GemmSpec, tensorize: bool = True):  # filled in below
    raise NotImplementedError


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
