"""CUDA targets: ``t4`` (sm_75), ``cuda`` (this machine's GPU) and ``cuda-sm_XX`` (an explicit arch).

All build the whole quantized graph with :mod:`zsq_tvm.backends.cuda.pipeline`: the pointwise int8 convs become
the hand-scheduled WMMA / dp4a kernels of :mod:`zsq_tvm.backends.cuda.int8_gemm` (dyadic requantize fused), every
other kernel gets a dlight GPU schedule.  The host side is generic ``llvm`` (x86-64), so a library built
here loads on any x86-64 GPU box.  The library holds CUDA C that the TVM runtime compiles for the GPU it
runs on when it is loaded (see :mod:`zsq_tvm.backends.cuda.pipeline`); nothing here needs a GPU or nvcc.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess

from zsq_tvm.backends.cuda import int8_gemm as g
from zsq_tvm.backends.cuda.int8_gemm import cuda_source
from zsq_tvm.core.errors import TargetError
from zsq_tvm.targets import register_target

ARCHS = ("sm_75", "sm_80", "sm_86", "sm_89", "sm_90")

__all__ = ["ARCHS", "CUDA_SOURCE", "cuda_target", "local_gpu_arch", "sass_report"]


def cuda_target(arch: str):
    import tvm

    return tvm.target.Target({"kind": "cuda", "arch": arch}, host={"kind": "llvm"})


@functools.lru_cache(maxsize=1)
def local_gpu_arch() -> str | None:
    """``sm_XY`` of GPU 0 (``ZSQ_CUDA_ARCH`` overrides; else nvidia-smi's compute_cap), None without a GPU."""
    env = os.environ.get("ZSQ_CUDA_ARCH")
    if env:
        return env
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=compute_cap", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.match(r"\s*(\d+)\.(\d+)", out or "")
    return f"sm_{m.group(1)}{m.group(2)}" if m else None


def _local():
    arch = local_gpu_arch()
    if arch is None:
        raise TargetError("target 'cuda' means this machine's GPU, and none was found (nvidia-smi)",
                          "name the GPU: --target t4 (sm_75) or --target cuda-sm_XX "
                          f"({', '.join('cuda-' + a for a in ARCHS)}), or set ZSQ_CUDA_ARCH=sm_XX")
    if not re.fullmatch(r"sm_\d{2,3}a?", arch):
        raise TargetError(f"ZSQ_CUDA_ARCH={arch!r} is not a CUDA arch", "set it like sm_75 or sm_90")
    return cuda_target(arch)


def _prepare(mod):
    from zsq_tvm.backends.cuda.pipeline import prepare

    return prepare(mod)


def _compile(lowered, target):
    from zsq_tvm.backends.cuda.pipeline import compile_lowered

    return compile_lowered(lowered, target)


CUDA_SOURCE = "kernels.cu"  # stored beside the library: what `zsq check` compiles to SASS, and what a user reads


def _extra_files(ex):
    return {CUDA_SOURCE: cuda_source(ex)}


def sass_report(b) -> dict:
    """Integer-only evidence from the machine code of a CUDA build: its CUDA source compiled by nvcc for the
    build's arch, every SASS function but the input quantize / output dequantize free of float instructions
    (:func:`zsq_tvm.backends.cuda.pipeline.integer_region_report`).  ``available: False`` without nvcc / cuobjdump."""
    import tempfile
    from pathlib import Path

    from zsq_tvm.backends.cuda.pipeline import integer_region_report

    src = b._files.get(CUDA_SOURCE)
    if src is None and b._lib_path is not None and (Path(b._lib_path).parent / CUDA_SOURCE).exists():
        src = (Path(b._lib_path).parent / CUDA_SOURCE).read_text()
    if src is None:
        return {"available": False, "message": f"the build has no {CUDA_SOURCE} (compiled before zsq-tvm stored it): "
                                               "compile it again"}
    cuobjdump = g.find_cuobjdump()
    if shutil.which("nvcc") is None or cuobjdump is None:
        return {"available": False, "message": "the SASS check needs nvcc and cuobjdump (CUDA toolkit)"}
    arch = re.search(r"sm_\d+a?", str(b.manifest.get("tvm_target", ""))) or re.search(r"sm_\d+a?", b.target)
    arch = arch.group(0) if arch else "sm_75"
    with tempfile.TemporaryDirectory(prefix="zsq_sass_") as td:
        rep = integer_region_report(src, g.sass(g.nvcc_cubin(src, td, arch=arch), cuobjdump))
    rep.update(available=True, arch=arch)
    return rep


def _check(b):
    """The SASS nvcc makes of the kernels: no float instruction outside the input quantize / output dequantize."""
    sass = sass_report(b)
    viol = []
    if sass.get("available") and not sass["ok"]:
        viol = [f"SASS {k}: {', '.join(v)}" for k, v in {**sass["float_in_source"], **sass["float_in_sass"]}.items()]
    return {"sass": sass}, viol


_KW = dict(runs_on_host=True, prepare=_prepare, compile=_compile, device="cuda", extra_files=_extra_files,
           check=_check)
register_target("t4", lambda: cuda_target("sm_75"),
                "NVIDIA T4 (CUDA sm_75): int8 WMMA/dp4a kernels, runs where a GPU and the TVM CUDA runtime are", **_KW)
register_target("cuda", _local, "this machine's NVIDIA GPU (arch from nvidia-smi or ZSQ_CUDA_ARCH)", **_KW)
for _a in ARCHS:
    register_target(f"cuda-{_a}", functools.partial(cuda_target, _a), f"NVIDIA GPU of arch {_a}", **_KW)
