"""x86 targets: ``host`` (this CPU; the hand-written int8 kernels where it has AVX-512 VNNI, else their AVX2
variants where it has AVX2), ``host-generic`` (TVM's default lowering only: what MetaSchedule tunes, and the
reference for the hand kernels), ``host-vnni`` (insists on the VNNI kernels), ``llvm`` (portable), and CPU
*classes* rather than this CPU -- ``x86-avx2`` / ``x86-avx512vnni`` (``-mcpu=haswell`` / ``cascadelake``: the
binary runs on any x86-64 with those extensions, e.g. one library for a fleet) with the kernels of their
class, ``x86-avx2-generic`` (the AVX2 class on the default lowering, which ``zsq_tvm/tuning_logs/x86_64-avx2/`` tunes).
"""

from __future__ import annotations

from zsq_tvm.backends.x86.cpu import host_cpu, host_features, isa_class
from zsq_tvm.core.errors import TargetError
from zsq_tvm.targets import register_target
from zsq_tvm.tuning_db import register_tuning_key

__all__ = ["vnni_prepare", "avx2_prepare", "host_prepare"]


def _host():
    import tvm

    return tvm.target.Target({"kind": "llvm", "mcpu": host_cpu()})


def _generic():
    import tvm

    return tvm.target.Target({"kind": "llvm"})


def vnni_prepare(mod, isa: str = "avx512vnni"):
    """conv1d (pointwise, full groups=1 stride 1, depthwise), conv2d (as im2col + matmul), linear-layer
    matmuls and attention's activation x activation matmuls (zsq_tvm.backends.x86.offload_bmm) + requantize, and
    element-wise integer chains of one 8-bit tensor as 256-entry tables (relax_passes.elementwise_to_table) (and QuartzNet/Jasper residual joins) -> hand-scheduled VNNI kernels (zsq_tvm.backends.x86.offload_pointwise,
    zsq_tvm.backends.x86.offload_depthwise); every other op keeps TVM's default lowering.  ``isa="avx2"``: the same
    passes with the AVX2 variants of the kernels (``vpmaddwd`` on int16 pairs)."""
    from relax_passes.conv2d_as_matmul import Conv2dAsMatmul
    from relax_passes.elementwise_to_table import ElementwiseToTable
    from relax_passes.split_projections import SplitProjections
    from zsq_tvm.backends.x86.offload_bmm import X86VnniBatchMatmul
    from zsq_tvm.backends.x86.offload_depthwise import X86VnniDepthwise
    from zsq_tvm.backends.x86.offload_pointwise import X86VnniPointwise

    # conv2d (Conformer subsampling) first: as im2col + matmul it is a linear layer for the VNNI pass
    # and fused projections (Q/K/V, the GLU's pointwise conv) are split into one layer per section
    mod = SplitProjections()(Conv2dAsMatmul()(mod))
    mod = X86VnniBatchMatmul(isa=isa)(X86VnniDepthwise(isa=isa)(X86VnniPointwise(isa=isa)(mod)))
    # last: the Conformer's integer Swish / sigmoid / GLU gates of one 8-bit tensor become 256-entry tables
    return ElementwiseToTable()(mod)


def avx2_prepare(mod):
    """:func:`vnni_prepare` with the AVX2 kernels (``vpmaddwd`` on int16 pairs) for CPUs without VNNI."""
    return vnni_prepare(mod, isa="avx2")


def host_prepare(mod):
    # decided per call, not at import: the kernels need the extension on the CPU that builds *and* runs
    f = host_features()
    if "avx512_vnni" in f:
        return vnni_prepare(mod)
    return avx2_prepare(mod) if "avx2" in f else mod


def _host_vnni():
    if "avx512_vnni" not in host_features():
        raise TargetError("target 'host-vnni' needs a CPU with AVX-512 VNNI (avx512_vnni in /proc/cpuinfo)",
                          "use --target host (TVM's default lowering on this CPU)")
    return _host()


def _class_target(mcpu: str):
    def make():
        import tvm

        return tvm.target.Target({"kind": "llvm", "mcpu": mcpu})

    return make


register_target("host", _host, "this CPU; hand-written int8 kernels where the CPU has AVX-512 VNNI or AVX2",
                prepare=host_prepare)
register_target("host-generic", _host, "this CPU, TVM's default lowering only (what `zsq tune` tunes)")
register_target("host-vnni", _host_vnni, "this CPU with the hand-written AVX-512 VNNI kernels (error without VNNI)",
                prepare=vnni_prepare)
register_target("llvm", _generic, "generic llvm for this architecture, portable")
register_target("x86-avx2", _class_target("haswell"), "any x86-64 CPU with AVX2 (-mcpu=haswell), hand-written AVX2 kernels",
                runs_on_host="avx2" in host_features(), prepare=avx2_prepare)
register_target("x86-avx2-generic", _class_target("haswell"),
                "any x86-64 CPU with AVX2 (-mcpu=haswell), TVM's default lowering only (what its tuning log tunes)",
                runs_on_host="avx2" in host_features())
register_target("x86-avx512vnni", _class_target("cascadelake"),
                "any x86-64 CPU with AVX-512 VNNI (-mcpu=cascadelake), hand-written VNNI kernels",
                runs_on_host="avx512_vnni" in host_features(), prepare=vnni_prepare)


def tuning_key(tgt) -> str:
    """``x86_64-avx512vnni`` / ``x86_64-avx512`` / ``x86_64-avx2`` for an llvm target whose ``-mcpu`` is of that
    class (:func:`zsq_tvm.backends.x86.cpu.isa_class`), else ``x86_64-<mcpu>`` / ``x86_64``."""
    mcpu = str(tgt.attrs.get("mcpu", "")) if tgt.attrs.get("mcpu") is not None else ""
    if not mcpu:
        return "x86_64"
    cls = isa_class(mcpu)
    return f"x86_64-{cls}" if cls else f"x86_64-{mcpu}"


register_tuning_key("llvm", tuning_key)
