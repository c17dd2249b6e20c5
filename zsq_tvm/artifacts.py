"""Artifact directories: a folder of files plus ``manifest.json``, written atomically, read verified.

Writing: everything goes into a temporary sibling ``.<name>.tmp-XXXX`` that is renamed onto the
final path only when complete, so an interrupted or failing command leaves neither the output
directory nor the temporary one behind.  The rename never replaces what another process put at
the destination meanwhile (``renameat2(RENAME_NOREPLACE)``): a concurrent writer gets "already
exists".  ``--overwrite`` replaces only a folder that is itself a verified zsq artifact of the
same kind, never the current directory, one of its parents, or a folder holding an input.

Reading: the manifest records the size and SHA-256 of every file in the folder
(:func:`write_manifest`); :func:`read_manifest` refuses a folder whose files differ from that
list -- a changed, truncated, missing or added file, a symlink -- naming the file, before anything
in it is parsed or loaded.  What this does and does not protect against is in README.md
("Untrusted files"): it catches corruption, tampering with one file and mixed-up folders; it
does not authenticate a folder made whole by someone else, whose library is code like any other.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as _dt
import errno
import glob
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

from zsq_tvm import __version__
from zsq_tvm.core.errors import ArtifactError
from zsq_tvm.module_check import check_module

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST",
    "KIND_QUANTIZED",
    "KIND_BUILD",
    "KIND_SYNTH",
    "atomic_dir",
    "write_json",
    "read_json",
    "read_manifest",
    "new_manifest",
    "write_manifest",
    "verified_copy",
    "check_output_file",
    "write_output_file",
    "read_json_file",
    "load_module_json",
    "parse_module_json",
    "read_module_text",
]

#: 2: the manifest lists every file with its size and SHA-256 (``files``); version-1 folders have no
#: hashes and are refused (re-create them)
FORMAT_VERSION = 2
MANIFEST = "manifest.json"
KIND_QUANTIZED = "zsq-quantized"
KIND_BUILD = "zsq-build"
KIND_SYNTH = "zsq-synthetic-mels"


def normalize(obj):
    """What the object looks like after a JSON round trip (tuples -> lists, numpy -> python)."""
    return json.loads(json.dumps(obj, default=_jsonable))


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


# --------------------------------------------------------------------------------------------
# file hashes
# --------------------------------------------------------------------------------------------

_CHUNK = 1 << 20
#: JSON files we parse are KBs to a few MB (module.json of a large Conformer: ~40 MB); a manifest
#: claiming more is refused before it is read
MAX_MANIFEST_BYTES = 16 << 20


def sha256_file(path) -> str:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while True:
                b = f.read(_CHUNK)
                if not b:
                    return h.hexdigest()
                h.update(b)
    except OSError as e:  # unreadable (mode 000, ...): the folder's problem, one line
        raise ArtifactError(f"cannot read {str(path)!r} ({e.strerror or type(e).__name__})",
                            "make the folder readable, or re-create it with zsq") from None


def _scan(root: Path) -> dict[str, os.stat_result]:
    """Every entry under ``root`` (relative POSIX path -> lstat), symlinks not followed."""
    out = {}
    for dirpath, dirs, files in os.walk(root, followlinks=False):
        for name in dirs + files:
            full = os.path.join(dirpath, name)
            out[Path(os.path.relpath(full, root)).as_posix()] = os.lstat(full)
    return out


def write_manifest(folder, manifest: dict) -> dict:
    """Write ``folder/manifest.json`` with ``files``: the size and SHA-256 of every other file in
    ``folder`` (recursively).  Call it last, when the folder is complete."""
    folder = Path(folder)
    files = {}
    for rel, st in sorted(_scan(folder).items()):
        if rel == MANIFEST or stat.S_ISDIR(st.st_mode):
            continue
        files[rel] = {"size": st.st_size, "sha256": sha256_file(folder / rel)}
    m = dict(manifest)
    m["files"] = files
    write_json(folder / MANIFEST, m)
    return m


def _verify_files(p: Path, m: dict) -> None:
    """Raise :class:`ArtifactError` naming the first file of ``p`` that differs from ``m["files"]``."""
    files = m.get("files")
    fix = "re-create the folder with zsq (a file in it was changed, added or removed since zsq wrote it)"
    if not isinstance(files, dict) or not all(
            isinstance(k, str) and isinstance(v, dict) and isinstance(v.get("size"), int)
            and isinstance(v.get("sha256"), str) for k, v in files.items()):
        raise ArtifactError(f"{str(p / MANIFEST)!r} has no valid file list", fix)
    present = _scan(p)
    for rel, st in sorted(present.items()):
        if rel == MANIFEST:
            continue
        if stat.S_ISLNK(st.st_mode):
            raise ArtifactError(f"{str(p)!r} holds a symbolic link {rel!r}, which zsq never writes", fix)
        if stat.S_ISDIR(st.st_mode):
            continue
        if not stat.S_ISREG(st.st_mode):
            raise ArtifactError(f"{str(p)!r} holds {rel!r}, which is not a regular file", fix)
        if rel not in files:
            raise ArtifactError(f"{str(p)!r} holds {rel!r}, a file its manifest does not list", fix)
    for rel, want in sorted(files.items()):
        st = present.get(rel)
        if st is None or not stat.S_ISREG(st.st_mode):
            raise ArtifactError(f"{str(p)!r} is missing {rel!r}, which its manifest lists", fix)
        if st.st_size != want["size"]:
            raise ArtifactError(f"{str(p / rel)!r} is {st.st_size:,} bytes, its manifest says {want['size']:,} "
                                "(truncated or replaced)", fix)
        if sha256_file(p / rel) != want["sha256"]:
            raise ArtifactError(f"{str(p / rel)!r} does not match the SHA-256 in its manifest (changed since zsq "
                                "wrote it)", fix)


def verified_copy(folder, rel: str, manifest: dict, into) -> Path:
    """Copy ``folder/rel`` into the directory ``into`` and check the *copy* against the manifest's hash.

    Loading a library from the copy closes the window between verifying a file and loading it, in
    which another process could swap it."""
    want = manifest["files"].get(rel)
    src = Path(folder) / rel
    dst = Path(into) / Path(rel).name
    h = hashlib.sha256()
    try:
        fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as e:  # ELOOP: swapped for a symlink since it was verified; EACCES ...
        raise ArtifactError(f"cannot read {str(src)!r} ({e.strerror or type(e).__name__})",
                            "re-create the folder with zsq") from None
    with os.fdopen(fd, "rb") as fi, open(dst, "xb") as fo:
        while True:
            b = fi.read(_CHUNK)
            if not b:
                break
            h.update(b)
            fo.write(b)
    if want is None or h.hexdigest() != want["sha256"]:
        raise ArtifactError(f"{str(src)!r} changed while it was being loaded", "re-create the folder with zsq")
    return dst


# --------------------------------------------------------------------------------------------
# output paths
# --------------------------------------------------------------------------------------------

def _nearest_existing(path: Path) -> Path:
    p = path
    while not os.path.lexists(p) and p != p.parent:
        p = p.parent
    return p


def _check_writable_parent(out: Path, shown: str) -> None:
    """The folder that will hold ``out`` (or its nearest existing ancestor) is a writable directory:
    probed by creating and removing a folder in it, which also catches read-only mounts and, as
    root, what permission bits cannot tell."""
    anc = _nearest_existing(out.parent)
    if not anc.is_dir():
        raise ArtifactError(f"cannot write {shown!r}: {str(anc)!r} is not a directory",
                            "choose an output path inside an existing, writable folder")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".zsq-probe-", dir=anc))
    except OSError as e:
        raise ArtifactError(f"cannot write {shown!r}: {str(anc)!r} is not writable ({e.strerror})",
                            "choose an output path inside a writable folder") from None


def _refuse_to_replace(out: Path, shown: str, kind: str | None, inputs: Iterable) -> None:
    """``--overwrite`` of ``out``: allowed only for a verified zsq artifact of ``kind`` that holds no
    input of the command and is neither the current directory nor one of its parents."""
    if os.path.islink(out):
        raise ArtifactError(f"--overwrite refuses {shown!r}: it is a symbolic link", "remove it yourself or choose another -o")
    real = out.resolve()
    cwd = Path.cwd().resolve()
    if real == cwd or real in cwd.parents:
        raise ArtifactError(f"--overwrite refuses {shown!r}: it is the current directory or one of its parents",
                            "choose a new -o path (e.g. a subfolder)")
    for i in inputs:
        if i is None:
            continue
        ip = Path(os.fspath(i))
        if not os.path.lexists(ip):
            continue
        ir = ip.resolve()
        if ir == real or real in ir.parents or real in ip.absolute().parents:
            raise ArtifactError(f"--overwrite refuses {shown!r}: it holds {str(i)!r}, an input of this command",
                                "write the output somewhere else")
    try:
        m = read_manifest(out, kind)
    except ArtifactError as e:
        raise ArtifactError(f"--overwrite refuses {shown!r}: it is not a zsq output zsq can replace ({e.cause})",
                            "remove it yourself or choose another -o path") from None
    del m


def ensure_output_free(out_dir, overwrite: bool = False, kind: str | None = None, inputs: Iterable = ()) -> None:
    """Fail early — before minutes of work — when ``out_dir`` cannot be written.

    The folder that will hold ``out_dir`` must be writable; an existing ``out_dir`` is an error
    unless ``overwrite``, and even then it must be a zsq artifact of ``kind`` (verified manifest),
    not the current directory or a parent of it, and hold none of ``inputs``.  Leftovers of a killed
    earlier run are reaped first (as :func:`atomic_dir` would), so an interrupted ``--overwrite``
    that is put back is seen here and not only at the final rename."""
    shown = str(out_dir)
    out = Path(os.fspath(out_dir)).absolute()
    if out.parent.is_dir():
        _reap_stale(out)
    if os.path.lexists(out):
        if not overwrite:
            raise ArtifactError(f"output directory {shown!r} already exists",
                                "choose another -o path, remove it, or pass --overwrite")
        if not out.is_dir() and not out.is_symlink():
            raise ArtifactError(f"output path {shown!r} exists and is not a directory", "choose another -o path")
        _refuse_to_replace(out, shown, kind, inputs)
    _check_writable_parent(out, shown)


_RENAME_NOREPLACE = 1
_AT_FDCWD = -100


def _rename_noreplace(src: Path, dst: Path) -> None:
    """``rename(src, dst)`` that fails with ``FileExistsError`` if ``dst`` exists, atomically.

    Plain ``rename`` silently replaces an empty directory, so two writers could both "succeed".
    Linux's ``renameat2(RENAME_NOREPLACE)`` checks and renames in one step; where the filesystem or
    libc lacks it, an exclusive ``mkdir`` claims ``dst`` first and the rename then replaces that
    empty placeholder (a concurrent writer still fails on the ``mkdir``)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        fn = None
    if fn is not None:
        if fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
            raise OSError(err, os.strerror(err), str(dst))
    os.mkdir(dst)  # FileExistsError when taken
    try:
        os.replace(src, dst)
    except BaseException:
        os.rmdir(dst)
        raise


#: errors of a full or read-only disk: the user's to fix, reported as one line
DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)


def disk_error(e: OSError, what: str) -> ArtifactError:
    why = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
           errno.EFBIG: "the file size limit is exceeded", errno.EROFS: "the filesystem is read-only"}.get(
               e.errno, e.strerror or type(e).__name__)
    return ArtifactError(f"cannot write {what}: {why}", "free some space or choose an output on another disk")


@contextlib.contextmanager
def atomic_dir(out_dir, overwrite: bool = False, kind: str | None = None, inputs: Iterable = ()) -> Iterator[Path]:
    """Yield a temporary directory that becomes ``out_dir`` if the block succeeds.

    On any exception (including KeyboardInterrupt) the temporary directory is removed and
    ``out_dir`` is untouched.  With ``overwrite=False`` an existing ``out_dir`` is an error
    (checked before any work is done, and again by the final rename, which never replaces what a
    concurrent writer created); with ``overwrite=True`` see :func:`ensure_output_free`.  A process
    killed outright (SIGKILL) cannot clean up: its ``.<name>.tmp-<host>-<pid>-*`` sibling stays,
    never at ``out_dir`` itself, and the next ``atomic_dir`` on the same path removes it once that
    pid is gone (``tests/test_crash_safe.py``).  A full disk is an :class:`ArtifactError`.
    """
    inputs = list(inputs)
    ensure_output_free(out_dir, overwrite, kind, inputs)
    out = Path(os.fspath(out_dir)).absolute()
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ArtifactError(f"cannot create parent directory {str(parent)!r}: {e.strerror}",
                            "choose a writable -o path") from None
    tag = _owner_tag()
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{tag}-", dir=parent))
    try:
        try:
            yield tmp
            os.chmod(tmp, 0o755)
            _fsync_tree(tmp)
        except OSError as e:
            if e.errno in DISK_ERRNOS:
                raise disk_error(e, repr(str(out_dir))) from None
            raise
        _commit(tmp, out, str(out_dir), overwrite, kind, inputs, tag)
        _fsync_path(parent)  # make the rename itself durable
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _commit(tmp: Path, out: Path, shown: str, overwrite: bool, kind, inputs, tag: str) -> None:
    exists_error = ArtifactError(f"output directory {shown!r} already exists (another command wrote it meanwhile)",
                                 "choose another -o path, remove it, or pass --overwrite")
    if os.path.lexists(out):
        if not overwrite:
            raise exists_error
        _refuse_to_replace(out, shown, kind, inputs)  # again: it may have changed during the work
        trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-{tag}-", dir=out.parent))
        try:
            os.replace(out, trash / out.name)
            try:
                _rename_noreplace(tmp, out)
            except FileExistsError:
                raise exists_error from None
            except BaseException:
                if not os.path.lexists(out):
                    os.replace(trash / out.name, out)
                raise
        finally:
            shutil.rmtree(trash, ignore_errors=True)
        return
    try:
        _rename_noreplace(tmp, out)
    except FileExistsError:
        raise exists_error from None


# --------------------------------------------------------------------------------------------
# single output files (logits .npy, ONNX exports, hypothesis lists)
# --------------------------------------------------------------------------------------------

def check_output_file(path, overwrite: bool = False, flag: str = "--output", missing_folder_ok: bool = False) -> Path:
    """Before the work: ``path`` can be written -- its folder exists (or, ``missing_folder_ok``, can be made in
    its nearest existing ancestor) and is writable, it is not a directory, and it does not exist unless
    ``overwrite``."""
    p = Path(os.fspath(path))
    if p.is_dir():
        raise ArtifactError(f"{flag} {str(path)!r} is a directory", f"pass a file path to {flag}")
    if os.path.lexists(p) and not overwrite:
        raise ArtifactError(f"{flag} {str(path)!r} already exists", "choose another path, remove it, or pass --overwrite")
    if not p.absolute().parent.is_dir() and not missing_folder_ok:
        raise ArtifactError(f"{flag} {str(path)!r}: folder {str(p.absolute().parent)!r} does not exist",
                            "create the folder first or choose another path")
    _check_writable_parent(p.absolute(), str(path))
    return p


@contextlib.contextmanager
def write_output_file(path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling path; on success it is renamed onto ``path`` (no partial file on failure,
    no replacing a file that appeared meanwhile unless ``overwrite``)."""
    p = Path(os.fspath(path)).absolute()
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.tmp-{_owner_tag()}-", suffix=p.suffix, dir=p.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600: give the output the mode a plain open() would
    os.close(fd)
    try:
        try:
            yield Path(tmp)
            _fsync_path(tmp)
            if overwrite:
                os.replace(tmp, p)
            else:
                try:
                    os.link(tmp, p)  # fails if p exists: never replaces a concurrent writer's file
                    os.unlink(tmp)
                except FileExistsError:
                    raise
                except OSError:  # a filesystem without hard links (exFAT, some network mounts)
                    _rename_noreplace(Path(tmp), p)
        except FileExistsError:
            raise ArtifactError(f"{str(path)!r} already exists (written meanwhile)", "choose another path") from None
        except OSError as e:
            if e.errno in DISK_ERRNOS:
                raise disk_error(e, repr(str(path))) from None
            raise
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


# --------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------

#: fields each kind's manifest must have, with their JSON types (checked before they are used)
_REQUIRED = {KIND_QUANTIZED: {"frames": (int, type(None)), "wbits": int, "abits": int, "io": dict},
             KIND_BUILD: {"frames": (int, type(None)), "target": str, "io": dict}}
#: a symbolic size as the manifest spells it ("T", "(T - 1) // 2 + 1"): shown and compared, never evaluated
_SYMBOLIC_DIM = re.compile(r"[A-Za-z0-9_ ()+\-*/]{1,80}")


def _io_ok(io) -> bool:
    """``io``: ``{"inputs": [{"name", "shape": [ints], "dtype"}, ...], "output": {"shape", "dtype"}}`` (what
    :meth:`zsq_tvm.build.Build.run` indexes)."""
    def tensor(t, named):
        return (isinstance(t, dict) and isinstance(t.get("dtype"), str) and isinstance(t.get("shape"), list)
                and all((isinstance(d, int) and not isinstance(d, bool) and d >= 0)
                        or (isinstance(d, str) and _SYMBOLIC_DIM.fullmatch(d)) for d in t["shape"])
                and (not named or isinstance(t.get("name"), str)))

    ins = io.get("inputs")
    return (isinstance(ins, list) and len(ins) >= 1 and all(tensor(t, True) for t in ins)
            and len(ins[0]["shape"]) == 3 and all(isinstance(d, int) for d in ins[0]["shape"][:2])
            and tensor(io.get("output"), False))


def read_manifest(path, kind: str | None = None, verify: bool = True) -> dict:
    """Read, validate and (``verify``) check ``path/manifest.json`` against the folder's files.

    :class:`ArtifactError` explains what is wrong, naming the file; nothing in the folder is parsed
    or loaded before its hash matched."""
    p = Path(os.fspath(path))
    what = {KIND_QUANTIZED: "a quantized model directory (from `zsq quantize`)",
            KIND_BUILD: "a build directory (from `zsq compile`)"}.get(kind, "a zsq artifact directory")
    if not p.is_dir():
        raise ArtifactError(f"{str(p)!r} is not a directory", f"pass {what}")
    mf = p / MANIFEST
    if not mf.is_file() or mf.is_symlink():
        raise ArtifactError(f"{str(p)!r} has no {MANIFEST}", f"pass {what}")
    if mf.stat().st_size > MAX_MANIFEST_BYTES:
        raise ArtifactError(f"{mf} is {mf.stat().st_size:,} bytes, not a zsq manifest", f"pass {what}")
    try:
        m = read_json(mf)
    except (OSError, ValueError, RecursionError) as e:
        raise ArtifactError(f"{mf} is unreadable ({type(e).__name__})", "re-create the directory") from None
    if not isinstance(m, dict) or not isinstance(m.get("kind"), str):
        raise ArtifactError(f"{mf} is not a zsq manifest", f"pass {what}")
    if kind is not None and m["kind"] != kind:
        raise ArtifactError(f"{str(p)!r} is a {m['kind']} directory, not {kind}", f"pass {what}")
    if m.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"{str(p)!r} has format version {m.get('format_version')}, this zsq reads "
                            f"{FORMAT_VERSION}", "re-create it with this version of zsq")
    for field, ty in _REQUIRED.get(m["kind"], {}).items():
        if field not in m or not isinstance(m.get(field), ty) or isinstance(m.get(field), bool):
            name = ty.__name__ if isinstance(ty, type) else " or ".join(t.__name__ for t in ty)
            raise ArtifactError(f"{mf}: field {field!r} is missing or not a {name}", "re-create the directory")
    if m["kind"] in _REQUIRED and not _io_ok(m["io"]):
        raise ArtifactError(f"{mf}: field 'io' does not describe the model's inputs and output", "re-create the directory")
    if m["kind"] in _REQUIRED and (m["frames"] is None) != isinstance(m["io"]["inputs"][0]["shape"][2], str):
        raise ArtifactError(f"{mf}: 'frames' and the input shape disagree on whether T is fixed", "re-create the directory")
    ts = m.get("time_stride")
    if ts is not None and (not isinstance(ts, int) or isinstance(ts, bool) or not 1 <= ts <= 64):
        raise ArtifactError(f"{mf}: field 'time_stride' is not an integer in 1..64", "re-create the directory")
    if verify:
        _verify_files(p, m)
    return m


def without_files(manifest: dict) -> dict:
    """The manifest as the loaded object keeps it: the file list describes the folder, not the model (a save
    writes a new one)."""
    return {k: v for k, v in manifest.items() if k != "files"}


def read_json_file(folder, rel: str, manifest: dict):
    """A verified JSON file of an artifact folder (``None`` when the folder has none), parse errors as
    :class:`ArtifactError`."""
    f = Path(folder) / rel
    if rel not in manifest.get("files", {}):
        return None
    if manifest["files"][rel]["size"] > MAX_MANIFEST_BYTES * 16:  # metadata, report, vocab: KBs to a few MB
        raise ArtifactError(f"{str(f)!r} is {manifest['files'][rel]['size']:,} bytes, too large for zsq metadata",
                            "re-create the directory")
    try:
        return read_json(f)
    except (OSError, ValueError, RecursionError) as e:
        raise ArtifactError(f"{f} is unreadable ({type(e).__name__})", "re-create the directory") from None


def load_module_json(folder, manifest: dict):
    """The integer Relax module of a verified artifact folder (``module.json``), unreadable ones as
    :class:`ArtifactError`; checked by :mod:`zsq_tvm.module_check` before any pass sees it."""
    text = read_module_text(folder, manifest)
    if text is None:
        raise ArtifactError(f"{str(folder)!r} has no module.json", "re-create it with `zsq quantize` / `zsq compile`")
    return parse_module_json(text, repr(str(Path(folder) / "module.json")))


def read_module_text(folder, manifest: dict) -> str | None:
    """The text of a verified folder's ``module.json`` (``None`` when it has none), refused over
    :data:`MAX_MODULE_BYTES` before it is read."""
    entry = manifest.get("files", {}).get("module.json")
    if entry is None:
        return None
    f = Path(folder) / "module.json"
    if entry["size"] > MAX_MODULE_BYTES:
        raise ArtifactError(f"{str(f)!r} is {entry['size']:,} bytes, over the {MAX_MODULE_BYTES:,} a module may have",
                            "re-create the folder with zsq")
    return f.read_text(errors="replace")


#: a module.json of the largest model we ship (Conformer-CTC-large, weights inline) is a few hundred MB
MAX_MODULE_BYTES = 2 << 30


def parse_module_json(text: str, source: str):
    """``tvm.ir.load_json`` + :func:`zsq_tvm.module_check.check_module`: errors as :class:`ArtifactError`."""
    import tvm

    try:
        mod = tvm.ir.load_json(text)
    except Exception as e:  # noqa: BLE001 - TVMError, ...: a corrupt file, never a crash
        raise ArtifactError(f"{source} is not a TVM module ({type(e).__name__})",
                            "re-create the folder with `zsq quantize` / `zsq compile`") from None
    if not isinstance(mod, tvm.IRModule):
        raise ArtifactError(f"{source} is not a TVM module (a {type(mod).__name__})", "re-create the folder")
    check_module(mod, source)
    return mod
