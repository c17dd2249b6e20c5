"""Artifact directories: a folder of files plus ``manifest.json``, written atomically.

Everything is written into a temporary sibling ``.<name>.tmp-XXXX`` and renamed onto the
final path only when complete, so an interrupted or failing command leaves neither the
output directory nor the temporary one behind.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from .errors import ArtifactError

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST",
    "KIND_QUANTIZED",
    "KIND_BUILD",
    "atomic_dir",
    "write_json",
    "read_json",
    "read_manifest",
    "new_manifest",
]

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
KIND_QUANTIZED = "zsq-quantized"
KIND_BUILD = "zsq-build"


def _jsonable(o: Any):
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    if hasattr(o, "to_json"):
        return o.to_json()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_json(path, obj) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False, default=_jsonable)
        f.write("\n")


def read_json(path):
    with open(path) as f:
        return json.load(f)


def new_manifest(kind: str, **fields) -> dict:
    from . import __version__

    try:
        import tvm

        tvm_version = tvm.__version__
    except Exception:  # pragma: no cover
        tvm_version = None
    m = {
        "kind": kind,
        "format_version": FORMAT_VERSION,
        "zsq_version": __version__,
        "tvm_version": tvm_version,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    m.update(fields)
    return m


@contextlib.contextmanager
def atomic_dir(out_dir, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory that becomes ``out_dir`` if the block succeeds.

    On any exception (including KeyboardInterrupt) the temporary directory is removed and
    ``out_dir`` is untouched.  With ``overwrite=False`` an existing ``out_dir`` is an error
    (checked before any work is done).
    """
    out = Path(os.fspath(out_dir)).absolute()
    if out.exists() and not overwrite:
        raise ArtifactError(f"output directory {str(out_dir)!r} already exists",
                            "choose another -o path, remove it, or pass --overwrite")
    if out.exists() and not out.is_dir():
        raise ArtifactError(f"output path {str(out_dir)!r} exists and is not a directory",
                            "choose another -o path")
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ArtifactError(f"cannot create parent directory {str(parent)!r}: {e.strerror}",
                            "choose a writable -o path") from None
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=parent))
    try:
        yield tmp
        os.chmod(tmp, 0o755)
        if out.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=parent))
            os.replace(out, trash / out.name)
            try:
                os.replace(tmp, out)
            except BaseException:
                os.replace(trash / out.name, out)
                raise
            finally:
                shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_manifest(path, kind: str | None = None) -> dict:
    """Read and validate ``path/manifest.json``; :class:`ArtifactError` explains what is wrong."""
    p = Path(os.fspath(path))
    what = {KIND_QUANTIZED: "a quantized model directory (from `zsq quantize`)",
            KIND_BUILD: "a build directory (from `zsq compile`)"}.get(kind, "a zsq artifact directory")
    if not p.is_dir():
        raise ArtifactError(f"{str(p)!r} is not a directory", f"pass {what}")
    mf = p / MANIFEST
    if not mf.exists():
        raise ArtifactError(f"{str(p)!r} has no {MANIFEST}", f"pass {what}")
    try:
        m = read_json(mf)
    except (OSError, ValueError) as e:
        raise ArtifactError(f"{mf} is unreadable ({type(e).__name__})", "re-create the directory") from None
    if not isinstance(m, dict) or "kind" not in m:
        raise ArtifactError(f"{mf} is not a zsq manifest", f"pass {what}")
    if kind is not None and m["kind"] != kind:
        raise ArtifactError(f"{str(p)!r} is a {m['kind']} directory, not {kind}", f"pass {what}")
    if m.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"{str(p)!r} has format version {m.get('format_version')}, this zsq reads "
                            f"{FORMAT_VERSION}", "re-create it with this version of zsq")
    return m
