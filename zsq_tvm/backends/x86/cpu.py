"""This machine's x86 CPU: its LLVM name and flags, and the ISA class (AVX2, AVX-512, AVX-512 VNNI) of an
``-mcpu`` name -- the one place zsq-tvm detects CPU features.  A class decides which hand-written kernels fit
and which tuning log applies (``zsq_tvm/tuning_logs/x86_64-avx512vnni/``: a log tuned on one VNNI CPU serves every
VNNI CPU)."""

from __future__ import annotations

import functools
import re

__all__ = ["host_cpu", "host_features", "has_vnni", "has_avx2", "isa_class"]


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
    """AVX-512 VNNI, the extension the hand-written VNNI kernels need."""
    return "avx512_vnni" in host_features()


def has_avx2() -> bool:
    return "avx2" in host_features()


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
