"""Compilation targets by name.

``host`` is the machine we run on: ``llvm`` with the detected CPU (``-mcpu``) so that LLVM
may use AVX-512/VNNI where the CPU has them.  More targets (``cuda-sm75``, ``c``) register
themselves with :func:`register_target`.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Callable

from .errors import TargetError

__all__ = ["TargetSpec", "register_target", "get_target", "list_targets", "host_cpu", "host_features"]


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


def _host():
    import tvm

    return tvm.target.Target({"kind": "llvm", "mcpu": host_cpu()})


def _generic():
    import tvm

    return tvm.target.Target({"kind": "llvm"})


register_target("host", _host, "llvm for this machine's CPU, VNNI where present")
register_target("llvm", _generic, "generic llvm for this architecture, portable")


def _host_vnni():
    if "avx512_vnni" not in host_features():
        raise TargetError("target 'host-vnni' needs a CPU with AVX-512 VNNI (avx512_vnni in /proc/cpuinfo)",
                          "use --target host")
    return _host()


def _vnni_prepare(mod):
    """Opt-in: conv1d (pointwise, full groups=1 stride 1, depthwise) and linear-layer matmuls + requantize (and
    QuartzNet/Jasper residual joins) -> hand-scheduled VNNI kernels (relax_passes.x86_vnni_pointwise,
    relax_passes.x86_vnni_depthwise)."""
    from relax_passes.x86_vnni_depthwise import X86VnniDepthwise
    from relax_passes.x86_vnni_pointwise import X86VnniPointwise

    return X86VnniDepthwise()(X86VnniPointwise()(mod))


register_target("host-vnni", _host_vnni, "host llvm + hand-written AVX-512 VNNI conv1d/linear kernels (opt-in)",
                prepare=_vnni_prepare)


from . import targets_cortexm as _targets_cortexm  # noqa: E402,F401  (registers cortex-m4 / cortex-m7)
from . import targets_cuda as _targets_cuda  # noqa: E402,F401  (registers t4 / cuda / cuda-sm_XX)
