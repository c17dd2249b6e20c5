"""Compilation targets by name: the registry that backends plug into.

Each backend (``zsq_tvm/backends/x86``, ``cuda``, ``cortexm``) registers its targets with
:func:`register_target`: how to make the ``tvm.target.Target``, the Relax rewrite that offloads to its
hand-written kernels (``prepare``), and optional hooks for its own compile step, extra build files, its
machine-code check (SASS, ELF) and its build loader.  Nothing above this module branches on a target's
name: it asks the :class:`TargetSpec`.

Backends are found the way plugins are, by package name (:data:`BACKENDS`), on the first lookup, so this
module (and everything that only looks targets up) never imports a backend.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

from zsq_tvm.core.errors import TargetError

__all__ = ["TargetSpec", "register_target", "get_target", "list_targets", "BACKENDS"]

# the packages whose import registers targets; a third-party backend can append its own
BACKENDS = ["zsq_tvm.backends.x86", "zsq_tvm.backends.cuda", "zsq_tvm.backends.cortexm"]


@dataclass(frozen=True)
class TargetSpec:
    name: str
    description: str
    make: Callable[[], "object"]  # -> tvm.target.Target
    runs_on_host: bool = True
    prepare: Callable | None = None  # optional Relax rewrite applied before lowering (the backend's kernels)
    compile: Callable | None = None  # (lowered, tvm_target) -> executable; None: tvm.compile's default pipeline
    device: str = "cpu"  # where the build runs: "cpu" or "cuda"
    compile_model: Callable | None = None  # (QuantizedModel, name) -> build object: replaces the library build
    extra_files: Callable | None = None  # (executable) -> {file name: text}: stored beside the library
    check: Callable | None = None  # (build) -> (report fields, violations): the backend's machine-code proof
    load: Callable | None = None  # (path, verified manifest) -> build object: folders of the backend's own form


_REGISTRY: dict[str, TargetSpec] = {}
_discovered = False


def register_target(name: str, make: Callable[[], object], description: str, runs_on_host: bool = True,
                    prepare: Callable | None = None, compile: Callable | None = None,  # noqa: A002
                    device: str = "cpu", **hooks):
    _REGISTRY[name] = TargetSpec(name, description, make, runs_on_host, prepare, compile, device, **hooks)


def _discover():
    global _discovered
    if not _discovered:
        _discovered = True
        for pkg in BACKENDS:
            importlib.import_module(pkg)


def list_targets() -> list[str]:
    _discover()
    return sorted(_REGISTRY)


def get_target(name: str) -> TargetSpec:
    """Return the :class:`TargetSpec` called ``name``; :class:`TargetError` lists valid ones."""
    _discover()
    if not isinstance(name, str) or name not in _REGISTRY:
        raise TargetError(
            f"unknown target {name!r}",
            "use one of: " + ", ".join(f"{n} ({_REGISTRY[n].description})" for n in list_targets()),
        )
    return _REGISTRY[name]
