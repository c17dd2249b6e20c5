"""An exact int8 multiply-accumulate tensor intrinsic for x86 CPUs with AVX2 but no VNNI.

AVX2 has no int8 dot product that is exact for our operands: ``vpmaddubsw`` (u8 x s8 -> s16 pairs)
*saturates* when both products of a pair are large (255 * 127 * 2 > 32767), so it cannot serve
integer-only inference bit-exactly.  ``vpmaddwd`` (s16 x s16 -> s32 pairs) cannot overflow here:
int8 / uint8 values sign- or zero-extended to int16 give products of at most ``255 * 128``, and a pair
sum stays far inside int32.  One ``vpmaddwd`` + ``vpaddd`` is 8 int32 lanes, each ``+=`` a 2-term dot
product: 16 MACs per pair of instructions (VNNI's ``vpdpbusd`` does 64 in one).

Semantics of one call of :data:`AVX2_PAIR_16X2` (the ncw pointwise and the depthwise kernels' inner
product on AVX2)::

    C[i] += sum_{r<2} half_r(A[i]) * B[r]          i < 8,  A int32[8],  B int16[2]

where ``half_r(a) = int32(int16(a >> 16 r))`` is the sign-extended 16-bit half ``r`` of the word ``a``
(:func:`half16`): the activation side holds two consecutive reduction elements (two input channels, or
two taps) per int32, and the weight pair ``B`` is one dword broadcast to all 8 lanes.  No offset trick
is needed (unlike VNNI's u8 x s8): int16 holds both uint8 and int8 activations as they are, so the
kernels add the original bias.
"""

from __future__ import annotations

import functools

__all__ = ["AVX2_PAIR_16X2", "IsaGeometry", "register_avx2", "half16", "pack16", "check_avx2_asm"]

AVX2_PAIR_16X2 = "zsq_pair_8x2_s16s16_avx2_local"


class IsaGeometry:
    """What the instruction set fixes in a kernel spec with ``isa`` ("avx512vnni" | "avx2") and ``a_dtype``
    fields (:class:`zsq_tvm.backends.x86.pointwise.PointwiseSpec`, :class:`zsq_tvm.backends.x86.depthwise.DepthwiseSpec`)."""

    @property
    def gs(self) -> int:
        """Reduction elements per int32 word: 4 bytes (VNNI) or 2 int16 halves (AVX2)."""
        return 4 if self.isa == "avx512vnni" else 2

    @property
    def lanes(self) -> int:
        """int32 lanes of one accumulator vector: 16 (zmm) or 8 (ymm, AVX2)."""
        return 16 if self.isa == "avx512vnni" else 8

    @property
    def offset(self) -> int:
        """Added to int8 activations so VNNI multiplies u8 (128); 0 for u8 input and on AVX2 (int16 holds both)."""
        return 128 if self.isa == "avx512vnni" and self.a_dtype == "int8" else 0

    @staticmethod
    def avx2_vectors(n: int) -> int:
        """8-lane vectors per AVX2 register tile of a kernel with ``n`` output columns: 2, but 1 when ``n % 16``
        (with a predicated column tail LLVM scalarises a 2-vector tile's requantize epilogue: 4x slower)."""
        return 2 if n % 16 == 0 else 1

    @property
    def wdtype(self) -> str:
        """dtype of the packed weights: int8 (VNNI) or int16 (the AVX2 broadcast pair)."""
        return "int8" if self.isa == "avx512vnni" else "int16"


def half16(word, r):
    """``int32(int16(word >> 16 r))``: the sign-extended 16-bit half ``r`` (0 low, 1 high) of an int32 (TIR)."""
    from tvm.script import tirx as T

    return T.Cast("int32", T.Cast("int16", T.shift_right(word, r * 16)))


def pack16(lo, hi):
    """int32 word holding ``lo`` in bits 0..15 and ``hi`` in bits 16..31 (both int32 values in int16 range;
    TIR).  ``hi << 16`` keeps the sign bits of ``hi`` above bit 16 and ``lo & 0xffff`` drops those of ``lo``."""
    from tvm.script import tirx as T

    low = T.bitwise_and(lo, T.int32(0xFFFF))
    return low if hi is None else T.bitwise_or(low, T.shift_left(hi, 16))


@functools.lru_cache(maxsize=None)
def register_avx2() -> str:
    """Register :data:`AVX2_PAIR_16X2` once per process; returns its name."""
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def desc(A: T.Buffer((8,), "int32", offset_factor=1), B: T.Buffer((2,), "int16", offset_factor=1),
             C: T.Buffer((8,), "int32", offset_factor=1, scope="local")) -> None:
        with T.sblock("root"):
            T.reads(C[0:8], A[0:8], B[0:2])
            T.writes(C[0:8])
            for i in T.serial(0, 8):
                for k in T.serial(0, 2):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        C[vi] = C[vi] + half16(A[vi], vk) * T.Cast("int32", B[vk])

    @T.prim_func(s_tir=True)
    def impl(A: T.Buffer((8,), "int32", offset_factor=1), B: T.Buffer((2,), "int16", offset_factor=1),
             C: T.Buffer((8,), "int32", offset_factor=1, scope="local")) -> None:
        with T.sblock("root"):
            T.reads(C[0:8], A[0:8], B[0:2])
            T.writes(C[0:8])
            # vpmaddwd: lane i = lo(A[i]) * B[0] + hi(A[i]) * B[1] (x86 is little-endian: int16 element 2i
            # of the 16-lane view is the low half of word i), exact for int16 operands of int8 range
            C[T.ramp(T.int32(0), 1, 8)] = C.vload([0], dtype="int32x8") + T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"),
                T.reinterpret(A.vload([0], dtype="int32x8"), dtype="int16x16"),
                T.reinterpret(T.broadcast(T.reinterpret(B.vload([0], "int16x2"), dtype="int32"), 8), dtype="int16x16"),
                dtype="int32x8")

    TensorIntrin.register(AVX2_PAIR_16X2, desc, impl, override=True)
    return AVX2_PAIR_16X2


def check_avx2_asm(lib) -> int:
    """Number of ``vpmaddwd`` instructions in a compiled module's assembly."""
    asm = lib.mod.inspect_source("asm") if hasattr(lib, "mod") else lib.inspect_source("asm")
    return asm.count("vpmaddwd")
