"""A working AVX-512 VNNI tensor intrinsic for TVM 0.27 on x86.

TVM's built-in ``dot_16x4_vnni`` (``tvm.s_tir.tensor_intrin.x86``) calls
``llvm.x86.avx512.vpdpbusd.512`` with three ``int32x16`` operands.  The LLVM 22 bundled with the
0.27 wheel declares that intrinsic as ``<16 x i32> (<16 x i32>, <64 x i8>, <64 x i8>)``, so every
tensorized function fails LLVM verification ("Call parameter type does not match function
signature").  :data:`VNNI_U8S8_16X4` has the same description (16 int32 lanes ``+= sum_4 u8*s8``)
with the two byte operands reinterpreted to ``int8x64``/``uint8x64`` (a bit cast: the bytes are the
same), which is what LLVM 22 expects; ``vpdpbusd`` then appears in the assembly
(:func:`check_vnni_asm`).

Semantics of one call (``vpdpbusd zmm``, no saturation)::

    C[i] += sum_{k<4} int32(A[k]) * int32(B[i, k])      i < 16,  A uint8[4],  B int8[16, 4]

``B`` must be 64 *contiguous* bytes (row i at bytes 4i..4i+3): the weights are packed to
``[M/16, K/4, 16, 4]`` for that (:func:`zsq_tvm.backends.x86.pointwise.pack_weights`).  Tensorize does not
check contiguity against the real buffer strides in every case (facts.md: a [M, K] layout was
accepted and read wrong data), so every kernel using it is checked against numpy.
"""

from __future__ import annotations

import functools

from tvm.script import tirx as T

from relax_passes.tir_stack_scratch import register_pipeline
from zsq_tvm.backends.x86.cpu import host_cpu, isa_class

__all__ = ["VNNI_U8S8_16X4", "VNNI_U8S8_16X4_LOCAL", "register", "X86_TARGET", "x86_target", "compile_kernel", "check_vnni_asm"]

VNNI_U8S8_16X4 = "zsq_dot_16x4_u8s8_vnni_llvm22"
VNNI_U8S8_16X4_LOCAL = "zsq_dot_16x4_u8s8_vnni_llvm22_local"
# A portable AVX-512 VNNI baseline (Intel's first VNNI CPU; AMD Zen 4/5 run its code too).  Not "znver4":
# code for an AMD -mcpu may use instructions Intel CPUs lack (SIGILL on an Emerald Rapids machine).
VNNI_BASELINE_CPU = "cascadelake"
X86_TARGET = f"llvm -mcpu={VNNI_BASELINE_CPU}"


def _make(c_scope: str):
    """(desc, impl) with the accumulator buffer ``C`` in ``c_scope`` ("global" or "local")."""

    @T.prim_func(s_tir=True)
    def desc(
        A: T.Buffer((4,), "uint8", offset_factor=1),
        B: T.Buffer((16, 4), "int8", offset_factor=1),
        C: T.Buffer((16,), "int32", offset_factor=1, scope=c_scope),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:16], A[0:4], B[0:16, 0:4])
            T.writes(C[0:16])
            for i in T.serial(0, 16):
                for k in T.serial(0, 4):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")

    @T.prim_func(s_tir=True)
    def impl(
        A: T.Buffer((4,), "uint8", offset_factor=1),
        B: T.Buffer((16, 4), "int8", offset_factor=1),
        C: T.Buffer((16,), "int32", offset_factor=1, scope=c_scope),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:16], A[0:4], B[0:16, 0:4])
            T.writes(C[0:16])
            # the fix: LLVM 22 declares vpdpbusd.512 as (<16 x i32>, <64 x i8>, <64 x i8>), so the
            # broadcast activation dword and the weight tile are passed as 64-byte vectors
            A_i32 = T.reinterpret(A.vload([0], "uint8x4"), dtype="int32")
            A_u8x64 = T.reinterpret(T.broadcast(A_i32, 16), dtype="uint8x64")
            B_i8x64 = B.vload([0, 0], dtype="int8x64")
            C[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"),
                C.vload([0], dtype="int32x16"),
                A_u8x64,
                B_i8x64,
                dtype="int32x16",
            )

    return desc, impl


@functools.lru_cache(maxsize=None)
def register(c_scope: str = "global") -> str:
    """Register the intrinsic (accumulator in ``c_scope``) once per process; returns its name.

    ``"global"`` is :data:`VNNI_U8S8_16X4`; ``"local"`` (register-tile accumulators, as
    :mod:`zsq_tvm.backends.x86.pointwise` uses) is :data:`VNNI_U8S8_16X4_LOCAL`.
    """
    from tvm.s_tir import TensorIntrin

    name = {"global": VNNI_U8S8_16X4, "local": VNNI_U8S8_16X4_LOCAL}[c_scope]
    TensorIntrin.register(name, *_make(c_scope), override=True)
    return name


def x86_target(mcpu: str | None = None, threads: int | None = None):
    """An ``llvm`` target with AVX-512 VNNI: ``mcpu``, else this CPU's own ``-mcpu`` when it has VNNI (the code
    the ``host`` target gets), else ``cascadelake`` (to compile VNNI kernels on a machine without them).

    Never a fixed vendor's name by default: ``-mcpu=znver4`` code crashed with an illegal instruction on an
    Intel Xeon with AVX-512 VNNI."""
    import tvm

    if mcpu is None:
        mcpu = host_cpu() if isa_class(host_cpu()) == "avx512vnni" else VNNI_BASELINE_CPU
    cfg = {"kind": "llvm", "mcpu": mcpu}
    if threads is not None:
        cfg["num-cores"] = int(threads)
    return tvm.target.Target(cfg)


def compile_kernel(mod, target=None):
    """``tvm.compile`` a scheduled kernel module for ``target`` (default :func:`x86_target`) with the TIR pipeline
    ``zsq compile`` uses (:mod:`relax_passes.tir_stack_scratch`: register tiles on the stack, not the workspace pool),
    so a kernel timed or tested alone is the code the model runs."""
    import tvm

    return tvm.compile(mod, target=target if target is not None else x86_target(), tir_pipeline=register_pipeline())


def check_vnni_asm(lib) -> int:
    """Number of ``vpdpbusd`` instructions in a compiled module's assembly."""
    asm = lib.mod.inspect_source("asm") if hasattr(lib, "mod") else lib.inspect_source("asm")
    return asm.count("vpdpbusd")
