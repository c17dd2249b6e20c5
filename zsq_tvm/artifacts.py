"""Artifact directories: a folder of files plus ``manifest.json``, written atomically.

Everything is written into a temporary sibling ``.<name>.tmp-XXXX`` and renamed onto the
final path only when complete, so an interrupted or failing command leaves neither the
output directory nor the temporary one behind.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import glob
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


def _owner_tag() -> str:
    """``<host hash>-<pid>``: names this process in temporary sibling names (see :func:`_reap_stale`)."""
    import hashlib
    import socket

    return f"{hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]}-{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _reap_stale(out: Path) -> None:
    """Remove temporary siblings of ``out`` left by a process of this host that was killed (SIGKILL,
    power loss) before it could clean up, and put back an old ``out`` that such a process had moved
    aside for ``--overwrite`` but not yet replaced.  Siblings of live processes or other hosts are
    left alone."""
    host = _owner_tag().split("-")[0]
    for kind in ("old", "tmp"):  # restore first: an interrupted overwrite keeps the previous output
        for d in out.parent.glob(f".{glob.escape(out.name)}.{kind}-{host}-*"):
            try:
                pid = int(d.name[len(f".{out.name}.{kind}-{host}-"):].split("-")[0])
            except ValueError:
                continue
            if _pid_alive(pid) or not d.is_dir():
                continue
            if kind == "old" and (d / out.name).is_dir() and not out.exists():
                try:
                    os.replace(d / out.name, out)
                except OSError:
                    continue
            shutil.rmtree(d, ignore_errors=True)


def _fsync_path(path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems cannot fsync a directory
        pass
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """Flush every file and folder under ``root`` to disk, so that after the rename the output is
    complete even across a power loss (rename alone orders nothing on most filesystems)."""
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            _fsync_path(os.path.join(dirpath, f))
        _fsync_path(dirpath)


def ensure_output_free(out_dir, overwrite: bool = False) -> None:
    """Fail early — before minutes of work — when ``out_dir`` exists and ``overwrite`` is not set.

    Leftovers of a killed earlier run are reaped first (as :func:`atomic_dir` would), so an
    interrupted ``--overwrite`` that is put back is seen here and not only at the final rename."""
    out = Path(os.fspath(out_dir)).absolute()
    if out.parent.is_dir():
        _reap_stale(out)
    if out.exists() and not overwrite:
        raise ArtifactError(f"output directory {str(out_dir)!r} already exists",
                            "choose another -o path, remove it, or pass --overwrite")


@contextlib.contextmanager
def atomic_dir(out_dir, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory that becomes ``out_dir`` if the block succeeds.

    On any exception (including KeyboardInterrupt) the temporary directory is removed and
    ``out_dir`` is untouched.  With ``overwrite=False`` an existing ``out_dir`` is an error
    (checked before any work is done).  A process killed outright (SIGKILL) cannot clean up: its
    ``.<name>.tmp-<host>-<pid>-*`` sibling stays, never at ``out_dir`` itself, and the next
    ``atomic_dir`` on the same path removes it once that pid is gone (``tests/test_crash_safe.py``).
    """
    ensure_output_free(out_dir, overwrite)
    out = Path(os.fspath(out_dir)).absolute()
    if out.exists() and not out.is_dir():
        raise ArtifactError(f"output path {str(out_dir)!r} exists and is not a directory",
                            "choose another -o path")
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ArtifactError(f"cannot create parent directory {str(parent)!r}: {e.strerror}",
                            "choose a writable -o path") from None
    tag = _owner_tag()
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{tag}-", dir=parent))
    try:
        yield tmp
        os.chmod(tmp, 0o755)
        _fsync_tree(tmp)
        if out.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-{tag}-", dir=parent))
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
        _fsync_path(parent)  # make the rename itself durable
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
