"""Compilation targets by name.

``host`` is the machine we run on: ``llvm`` with the detected CPU (``-mcpu``), and on a CPU with
AVX-512 VNNI our hand-written int8 kernels (``zsq_tvm/x86``) in place of TVM's default lowering of the
convs and linear layers, so the default build is the fast one; on a CPU with AVX2 but no AVX-512 VNNI
the AVX2 variants of the conv kernels (``vpmaddwd``; linear layers keep the default lowering).  ``host-generic`` is the same CPU with
TVM's default lowering only (what MetaSchedule tunes, and the reference for the hand kernels);
``host-vnni`` insists on the hand kernels (an error without VNNI).  ``x86-avx2`` / ``x86-avx512vnni``
compile for a CPU *class* rather than this CPU (``-mcpu=haswell`` / ``-mcpu=cascadelake``: the binary
runs on any x86-64 with those extensions), e.g. to ship one library to a fleet; each uses the hand
kernels of its class (``x86-avx2-generic``: the AVX2 class on TVM's default lowering only, which the
shipped ``tuning_logs/x86_64-avx2/`` log was tuned for).  CUDA and Cortex-M
targets register themselves with :func:`register_target`.

:func:`isa_class` names the class a target's code needs; the tuning database folder is keyed by it
(``tuning_logs/x86_64-avx512vnni/``), so a log tuned on one VNNI CPU serves every VNNI CPU.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Callable

from .errors import TargetError

__all__ = ["TargetSpec", "register_target", "get_target", "list_targets", "host_cpu", "host_features",
           "isa_class"]


@dataclass(frozen=True)
class TargetSpec:
    name: str
    description: str
    make: Callable[[], "object"]  # -> tvm.target.Target
    runs_on_host: bool = True
    prepare: Callable | None = None  # optional Relax rewrite applied before lowering (opt-in kernels)
    compile: Callable | None = None  # (lowered, tvm_target) -> executable; None: tvm.compile's default pipeline
    device: str = "cpu"  # where the build runs: "cpu" or "cuda" (zsq_tvm.targets_cuda)


_REGISTRY: dict[str, TargetSpec] = {}


def register_target(name: str, make: Callable[[], object], description: str, runs_on_host: bool = True,
                    prepare: Callable | None = None, compile: Callable | None = None, device: str = "cpu"):  # noqa: A002
    _REGISTRY[name] = TargetSpec(name, description, make, runs_on_host, prepare, compile, device)


def list_targets() -> list[str]:
    return sorted(_REGISTRY)


def get_target(name: str) -> TargetSpec:
    """Return the :class:`TargetSpec` called ``name``; :class:`TargetError` lists valid ones."""
    if not isinstance(name, str) or name not in _REGISTRY:
        raise TargetError(
            f"unknown target {name!r}",
            "use one of: " + ", ".join(f"{n} ({_REGISTRY[n].description})" for n in list_targets()),
        )
    return _REGISTRY[name]


@functools.lru_cache(maxsize=1)
def host_cpu() -> str:
    """LLVM's name for this CPU (e.g. ``znver4``, ``skylake-avx512``), else ``x86-64``."""
    try:
        import tvm

        cpu = tvm.target.codegen.llvm_get_system_cpu()
        if cpu and cpu != "generic":
            return str(cpu)
    except Exception:  # pragma: no cover - depends on the TVM build
        pass
    return _cpu_from_proc()


def _cpu_from_proc() -> str:
    flags = host_features()
    if {"avx512_vnni", "avx512bw"} <= flags:
        return "cascadelake"
    if "avx512bw" in flags:
        return "skylake-avx512"
    if "avx2" in flags:
        return "haswell"
    return "x86-64"


@functools.lru_cache(maxsize=1)
def host_features() -> frozenset[str]:
    """CPU flags from /proc/cpuinfo (empty where unavailable)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(re.split(r"\s+", line.split(":", 1)[1].strip()))
    except OSError:
        pass
    return frozenset()


def has_vnni() -> bool:
    return bool({"avx512_vnni", "avx_vnni"} & host_features())


# LLVM -mcpu names by the newest int8-relevant x86 extension they guarantee (a CPU's class decides
# which tuning log and which kernels fit it; schedules tuned on one member replay on the others)
_VNNI_CPUS = frozenset({"cascadelake", "cooperlake", "icelake-client", "icelake-server", "tigerlake",
                        "rocketlake", "sapphirerapids", "emeraldrapids", "graniterapids", "graniterapids-d",
                        "znver4", "znver5"})
_AVX512_CPUS = frozenset({"skylake-avx512", "skx", "cannonlake", "knl", "knm"})
_AVX2_CPUS = frozenset({"haswell", "broadwell", "skylake", "kabylake", "coffeelake", "alderlake", "raptorlake",
                        "meteorlake", "arrowlake", "lunarlake", "gracemont", "znver1", "znver2", "znver3",
                        "x86-64-v3", "bdver4"})


def isa_class(mcpu: str) -> str:
    """``"avx512vnni"``, ``"avx512"``, ``"avx2"`` or ``""`` (unknown/older) for an LLVM ``-mcpu`` name;
    for this machine's own CPU the answer comes from /proc/cpuinfo (an LLVM name we do not list still works)."""
    mcpu = str(mcpu or "")
    if mcpu in _VNNI_CPUS:
        return "avx512vnni"
    if mcpu in _AVX512_CPUS or mcpu == "x86-64-v4":
        return "avx512"
    if mcpu in _AVX2_CPUS:
        return "avx2"
    if mcpu and mcpu == host_cpu():
        f = host_features()
        if "avx512_vnni" in f:
            return "avx512vnni"
        if "avx512bw" in f:
            return "avx512"
        if "avx2" in f:
            return "avx2"
    return ""


def _host():
    import tvm

    return tvm.target.Target({"kind": "llvm", "mcpu": host_cpu()})


def _generic():
    import tvm

    return tvm.target.Target({"kind": "llvm"})


def _vnni_prepare(mod, isa: str = "avx512vnni"):
    """conv1d (pointwise, full groups=1 stride 1, depthwise), conv2d (as im2col + matmul), linear-layer
    matmuls and attention's activation x activation matmuls (relax_passes.x86_vnni_bmm) + requantize, and
    element-wise integer chains of one 8-bit tensor as 256-entry tables (relax_passes.elementwise_to_table) (and QuartzNet/Jasper residual joins) -> hand-scheduled VNNI kernels (relax_passes.x86_vnni_pointwise,
    relax_passes.x86_vnni_depthwise); every other op keeps TVM's default lowering.  ``isa="avx2"``: the same
    passes with the AVX2 variants of the kernels (``vpmaddwd`` on int16 pairs)."""
    from relax_passes.conv2d_as_matmul import Conv2dAsMatmul
    from relax_passes.elementwise_to_table import ElementwiseToTable
    from relax_passes.split_projections import SplitProjections
    from relax_passes.x86_vnni_bmm import X86VnniBatchMatmul
    from relax_passes.x86_vnni_depthwise import X86VnniDepthwise
    from relax_passes.x86_vnni_pointwise import X86VnniPointwise

    # conv2d (Conformer subsampling) first: as im2col + matmul it is a linear layer for the VNNI pass
    # and fused projections (Q/K/V, the GLU's pointwise conv) are split into one layer per section
    mod = SplitProjections()(Conv2dAsMatmul()(mod))
    mod = X86VnniBatchMatmul(isa=isa)(X86VnniDepthwise(isa=isa)(X86VnniPointwise(isa=isa)(mod)))
    # last: the Conformer's integer Swish / sigmoid / GLU gates of one 8-bit tensor become 256-entry tables
    return ElementwiseToTable()(mod)


def _avx2_prepare(mod):
    """:func:`_vnni_prepare` with the AVX2 kernels (``vpmaddwd`` on int16 pairs) for CPUs without VNNI."""
    return _vnni_prepare(mod, isa="avx2")


def _host_prepare(mod):
    # decided per call, not at import: the kernels need the extension on the CPU that builds *and* runs
    f = host_features()
    if "avx512_vnni" in f:
        return _vnni_prepare(mod)
    return _avx2_prepare(mod) if "avx2" in f else mod


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
                prepare=_host_prepare)
register_target("host-generic", _host, "this CPU, TVM's default lowering only (what `zsq tune` tunes)")
register_target("host-vnni", _host_vnni, "this CPU with the hand-written AVX-512 VNNI kernels (error without VNNI)",
                prepare=_vnni_prepare)
register_target("llvm", _generic, "generic llvm for this architecture, portable")
register_target("x86-avx2", _class_target("haswell"), "any x86-64 CPU with AVX2 (-mcpu=haswell), hand-written AVX2 kernels",
                runs_on_host="avx2" in host_features(), prepare=_avx2_prepare)
register_target("x86-avx2-generic", _class_target("haswell"),
                "any x86-64 CPU with AVX2 (-mcpu=haswell), TVM's default lowering only (what its tuning log tunes)",
                runs_on_host="avx2" in host_features())
register_target("x86-avx512vnni", _class_target("cascadelake"),
                "any x86-64 CPU with AVX-512 VNNI (-mcpu=cascadelake), hand-written VNNI kernels",
                runs_on_host="avx512_vnni" in host_features(), prepare=_vnni_prepare)


from . import targets_cortexm as _targets_cortexm  # noqa: E402,F401  (registers cortex-m4 / cortex-m7)
from . import targets_cuda as _targets_cuda  # noqa: E402,F401  (registers t4 / cuda / cuda-sm_XX)
