"""The tuning database: a crash-safe MetaSchedule database in two JSON-lines files, and applying it at compile.

The database (:class:`TuningDB`) is a folder of two JSON-lines files, ``workloads.jsonl`` and
``records.jsonl``; the first line of each is a header ``{"zsq_tuning_db": 1, "target": ..., "key": ...}``.
Every record is appended as one line, under an exclusive ``fcntl`` lock on ``.lock`` (two tune
processes may share a database), flushed and ``fsync``-ed before tuning goes on, so an interrupted
run keeps every measured record.  Loading skips (with one warning naming the file and the line)
truncated or garbled lines and records of unknown workloads, keeping every valid record; a database
for another target is ignored with a warning.

``zsq compile`` (:func:`apply_tuning`) applies the best record of each kernel with
``MetaScheduleApplyDatabase`` from the first database of one lookup order (:func:`find_db`), keyed by
:func:`target_key` (e.g. ``x86_64-avx512vnni``):

1. ``zsq compile --db DIR`` / ``compile(..., tuning_db=DIR)``: must be a database (:func:`check_db`);
2. ``$ZSQ_TUNING_DB`` (a folder that is no database, e.g. ``/nonexistent``: untuned);
3. the per-user cache ``${XDG_CACHE_HOME:-~/.cache}/zsq-tvm/tuning/<key>/`` when it has records
   (where ``zsq tune`` writes without ``--db``);
4. the log shipped in the package, ``zsq_tvm/tuning_logs/<key>/`` (package data: in every install).

No database or an unusable one (from 2.-4.) means the default schedules, never an error.  Shipped logs
are read-only: reading takes no write lock and creates no file.  Integer kernels stay integer under any
schedule, so the output stays bit-exact.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import warnings
from pathlib import Path

from zsq_tvm.core.errors import ConfigError, ZsqError
from zsq_tvm.targets import list_targets

__all__ = ["TuningWarning", "register_tuning_key", "target_key", "SHIPPED_LOGS", "user_cache_dir", "shipped_db_dir",
           "default_db_dir", "find_db", "check_db", "TuningDB", "apply_tuning", "record_to_json"]

FORMAT = 1


WORKLOADS, RECORDS, LOCK = "workloads.jsonl", "records.jsonl", ".lock"


class TuningWarning(UserWarning):
    """A tuning database problem that makes zsq fall back (bad lines skipped, mismatched target, ...)."""


def _warn(msg: str) -> None:
    warnings.warn(msg, TuningWarning, stacklevel=3)


# tuning-log folder names by target kind, registered by the backends (x86: by ISA class)
_KEY_FUNCS: dict = {}


def register_tuning_key(kind: str, fn) -> None:
    """``fn(tvm_target) -> str``: the folder name of the database for targets of ``kind`` (e.g. ``"llvm"``)."""
    _KEY_FUNCS[kind] = fn


def target_key(tgt) -> str:
    """Folder name of a target's database: the backend's key for its kind (x86: ``x86_64-avx512vnni`` /
    ``x86_64-avx512`` / ``x86_64-avx2`` by ISA class, :func:`zsq_tvm.backends.x86.target.tuning_key`), else
    ``<kind>-<arch>`` / ``<kind>``.  Keying by class, not by CPU, is what lets a shipped log tuned on one
    VNNI CPU (a Zen 4 here) serve a Cascade Lake or Sapphire Rapids too."""

    list_targets()  # the backends registered
    kind = str(tgt.kind.name)
    if kind in _KEY_FUNCS:
        return _KEY_FUNCS[kind](tgt)
    arch = str(tgt.attrs.get("arch", "")) if hasattr(tgt, "attrs") else ""
    return f"{kind}-{arch}" if arch else kind


#: a tuning log of thousands of records is a few MB; a file claiming more is not read
MAX_DB_FILE_BYTES = 256 << 20


#: the logs shipped as package data (``pip wheel .`` carries them): read-only
SHIPPED_LOGS = Path(__file__).resolve().parent / "tuning_logs"


def cache_root() -> Path:
    """zsq's per-user cache ``${XDG_CACHE_HOME:-~/.cache}/zsq-tvm`` (a relative ``$XDG_CACHE_HOME`` is ignored,
    as the XDG base directory spec says)."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path(os.path.expanduser("~")) / ".cache"
    return base / "zsq-tvm"


def user_cache_dir() -> Path:
    """The per-user tuning cache ``${XDG_CACHE_HOME:-~/.cache}/zsq-tvm/tuning``."""
    return cache_root() / "tuning"


def shipped_db_dir(tgt) -> Path:
    """The log shipped in the package for ``tgt``'s class: ``zsq_tvm/tuning_logs/<key>``."""
    return SHIPPED_LOGS / target_key(tgt)


def _has_records(p: Path) -> bool:
    try:
        return (p / RECORDS).is_file() and (p / RECORDS).stat().st_size > 0
    except OSError:
        return False


def default_db_dir(tgt) -> Path:
    """Where ``zsq tune`` writes without ``--db``: ``$ZSQ_TUNING_DB``, else the user cache
    ``<user_cache_dir()>/<key>`` -- never the package folder."""
    env = os.environ.get("ZSQ_TUNING_DB")
    return Path(env) if env else user_cache_dir() / target_key(tgt)


def find_db(tgt, db=None) -> tuple[Path | None, str | None]:
    """The database ``zsq compile`` applies for ``tgt``: ``(folder, source)`` by the lookup order of the
    module doc, ``source`` one of ``"flag"``, ``"env"``, ``"user"``, ``"shipped"``; ``(None, None)``
    when no level has a database (``$ZSQ_TUNING_DB`` set to a folder without records stops the lookup:
    untuned)."""
    if db is not None:
        return Path(os.fspath(db)), "flag"
    env = os.environ.get("ZSQ_TUNING_DB")
    if env:
        p = Path(env)
        return (p, "env") if _has_records(p) else (None, None)
    p = user_cache_dir() / target_key(tgt)
    if _has_records(p):
        return p, "user"
    p = shipped_db_dir(tgt)
    if _has_records(p):
        return p, "shipped"
    return None, None


def check_db(path, tgt=None) -> Path:
    """A ``--db`` given to ``zsq compile``: a folder holding a zsq database (for ``tgt``'s class, when
    given); else a :class:`ConfigError` (one line, exit 2).  Reads only the two header lines."""
    p = Path(os.fspath(path))
    fix = "pass a folder written by `zsq tune --db DIR` (or leave --db out)"
    if not p.is_dir():
        raise ConfigError(f"--db {str(p)!r} {'is not a folder' if os.path.lexists(p) else 'does not exist'}", fix)
    if not (p / RECORDS).is_file():
        raise ConfigError(f"--db {str(p)!r} is not a tuning database (no {RECORDS})", fix)
    for name in (WORKLOADS, RECORDS):
        f = p / name
        if not f.is_file():
            continue
        try:
            with open(f, "rb") as fh:
                hdr = json.loads(fh.readline(1 << 16))
            ok = isinstance(hdr, dict) and hdr.get("zsq_tuning_db") == FORMAT
        except Exception:
            ok = False
        if not ok:
            raise ConfigError(f"--db {str(p)!r} is not a tuning database ({name} has no zsq header)", fix)
        if tgt is not None and hdr.get("key") != target_key(tgt) and hdr.get("target") != str(tgt):
            raise ConfigError(f"--db {str(p)!r} was tuned for {hdr.get('target')!r} (class {hdr.get('key')!r}), "
                              f"not for class {target_key(tgt)!r}", "pass the database of this target's class")
    return p


def _header(tgt) -> dict:
    return {"zsq_tuning_db": FORMAT, "target": str(tgt), "key": target_key(tgt)}


@contextlib.contextmanager
def _locked(path: Path, exclusive: bool = True):
    lock = str(path / LOCK) if path.is_dir() else str(path)
    if exclusive:
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # a reader never creates the lock file (a shipped log in the package folder stays untouched)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644) if exclusive else os.open(lock, os.O_RDONLY)
    except OSError:
        if exclusive:
            raise
        # a reader of a database without a lock file (no writer ever) or one it cannot open (a read-only
        # install) reads unlocked: records are only ever appended as whole fsync-ed lines, and torn lines
        # are skipped anyway
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _append_lines(path: Path, lines: list[str], header: dict) -> None:
    """Append whole lines (with the header first if the file is new) and fsync; caller holds the lock."""
    new = not path.exists() or path.stat().st_size == 0
    with open(path, "ab") as f:
        if not new:
            with open(path, "rb") as r:  # a previous writer died mid-line: start on a fresh line
                r.seek(-1, os.SEEK_END)
                if r.read(1) != b"\n":
                    f.write(b"\n")
        else:
            f.write((json.dumps(header) + "\n").encode())
        for ln in lines:
            f.write((ln + "\n").encode())
        f.flush()
        os.fsync(f.fileno())


def record_to_json(record) -> list:
    """``TuningRecord.as_json``, but also for a trace with an ``IndexMap`` operand (GPU tensor-core layouts),
    which TVM 0.27's Python ``as_json`` cannot write: the operand becomes its JSON graph string
    (``tvm.ir.save_json``), the form the trace's C++ ``FromJSON`` (``TuningRecord.from_json``) reads back."""
    import tvm
    from tvm.s_tir.meta_schedule import _ffi_api
    from tvm.tirx import FloatImm, IndexMap, IntImm
    from tvm_ffi import Array, Map

    def plain(o):
        if o is None or isinstance(o, (bool, int, float)):
            return o
        if isinstance(o, (IntImm, FloatImm)):
            return o.value
        if isinstance(o, str):
            return str(o)
        if isinstance(o, (Array, list, tuple)):
            return [plain(i) for i in o]
        if isinstance(o, (Map, dict)):
            return {plain(k): plain(v) for k, v in o.items()}
        if isinstance(o, IndexMap):
            return tvm.ir.save_json(o)
        raise TypeError(f"a tuning record holds a {type(o).__name__}, which has no JSON form")

    return plain(_ffi_api.TuningRecordAsJSON(record))


def _make_db_class():
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.database import MemoryDatabase, PyDatabase, TuningRecord, Workload

    @derived_object
    class _TuningDB(PyDatabase):
        def __init__(self, path, tgt, create: bool = True):
            super().__init__()
            self.path = Path(path)
            self.tgt = tgt
            self.header = _header(tgt)
            self.mem = MemoryDatabase()
            self.shash: dict[str, object] = {}  # shash -> Workload
            self.usable = True
            self.skipped = 0
            self.loaded = 0
            if create:
                self.path.mkdir(parents=True, exist_ok=True)
            self._load()

        # ---- loading
        def _read(self, name):
            p = self.path / name
            if not p.exists():
                return []
            if not p.is_file() or p.stat().st_size > MAX_DB_FILE_BYTES:  # a FIFO would block, a huge file exhaust memory
                _warn(f"tuning database file {str(p)!r} is not a regular file of at most {MAX_DB_FILE_BYTES:,} bytes; "
                      f"ignoring the database and using the default schedules")
                self.usable = False
                return []
            with _locked(self.path, exclusive=False):
                with open(p, "rb") as f:
                    raw = f.read(MAX_DB_FILE_BYTES + 1)
            lines = raw.split(b"\n")
            if not lines:
                return []
            out = []
            for i, ln in enumerate(lines, 1):
                if ln.strip():
                    out.append((i, ln))
            if not out:
                return []
            i0, first = out[0]
            try:
                hdr = json.loads(first)
                assert isinstance(hdr, dict) and hdr.get("zsq_tuning_db") == FORMAT
            except Exception:
                _warn(f"tuning database {str(p)!r} has no valid zsq header (line {i0}); ignoring it and using the "
                      f"default schedules")
                self.usable = False
                return []
            # same CPU class (key) is enough: schedules are loop transformations that replay on any CPU of
            # the class; a record that does not fit is dropped by MetaSchedule, never miscompiled
            if hdr.get("key", None) != self.header["key"] and hdr.get("target") != self.header["target"]:
                _warn(f"tuning database {str(p)!r} was tuned for target {hdr.get('target')!r} (class "
                      f"{hdr.get('key')!r}), not {self.header['target']!r} (class {self.header['key']!r}); "
                      f"ignoring it and using the default schedules")
                self.usable = False
                return []
            return out[1:]

        def _load(self):
            bad = []
            for i, ln in self._read(WORKLOADS):
                try:
                    obj = json.loads(ln)
                    wl = Workload.from_json(obj["workload"])
                    self.mem.commit_workload(wl.mod)
                    self.shash[str(obj["shash"])] = self.mem.commit_workload(wl.mod)
                except Exception:
                    bad.append((WORKLOADS, i))
            recs = self._read(RECORDS) if self.usable else []
            for i, ln in recs:
                try:
                    obj = json.loads(ln)
                    wl = self.shash.get(str(obj["shash"]))
                    if wl is None:
                        raise KeyError("unknown workload")
                    rec = TuningRecord.from_json(obj["record"], wl)
                    self.mem.commit_tuning_record(rec)
                    self.loaded += 1
                except Exception:
                    bad.append((RECORDS, i))
            if not self.usable:
                self.mem = MemoryDatabase()
                self.shash = {}
                self.loaded = 0
                return
            if bad:
                self.skipped = len(bad)
                where = ", ".join(f"{f}:{i}" for f, i in bad[:5]) + (" ..." if len(bad) > 5 else "")
                files = ", ".join(repr(str(self.path / f)) for f in dict.fromkeys(f for f, _ in bad))
                _warn(f"tuning database file {files}: skipped {len(bad)} truncated or corrupt line(s) ({where}); "
                      f"kept {self.loaded} valid record(s)")

        # ---- PyDatabase interface
        def has_workload(self, mod) -> bool:
            return self.mem.has_workload(mod)

        def commit_workload(self, mod):
            known = self.mem.has_workload(mod)
            wl = self.mem.commit_workload(mod)
            if not known:
                js = wl.as_json()
                sh = str(js[0])
                self.shash[sh] = wl
                with _locked(self.path):
                    _append_lines(self.path / WORKLOADS, [json.dumps({"shash": sh, "workload": js})], self.header)
            return wl

        def commit_tuning_record(self, record) -> None:
            self.mem.commit_tuning_record(record)
            sh = str(record.workload.as_json()[0])
            if sh not in self.shash:
                self.commit_workload(record.workload.mod)
            with _locked(self.path):
                _append_lines(self.path / RECORDS, [json.dumps({"shash": sh, "record": record_to_json(record)})],
                              self.header)

        def get_top_k(self, workload, top_k: int):
            return self.mem.get_top_k(workload, top_k)

        def get_all_tuning_records(self):
            return self.mem.get_all_tuning_records()

        def __len__(self) -> int:
            return len(self.mem)

    return _TuningDB


_DB_CLASS = None


def TuningDB(path, tgt, create: bool = True):  # noqa: N802 - a class factory (the class needs TVM loaded)
    """Open (creating if ``create``) the database folder ``path`` for target ``tgt`` (see module doc)."""
    global _DB_CLASS
    if _DB_CLASS is None:
        _DB_CLASS = _make_db_class()
    return _DB_CLASS(path, tgt, create)


def apply_tuning(lowered, tgt, db_path=None):
    """Apply the tuning database :func:`find_db` picks (``db_path`` first) to a lowered module;
    ``(lowered, info)`` with ``info = {"db": folder or None, "source": level, "applied": kernels}``;
    never raises for a bad database."""
    p, source = find_db(tgt, db_path)
    info = {"db": str(p) if p is not None else None, "source": source, "applied": 0}
    if p is None or not (p / RECORDS).exists():
        info["db"] = None
        return lowered, info
    try:
        db = TuningDB(p, tgt, create=False)
        if not db.usable or not len(db.get_all_tuning_records()):
            return lowered, info
        from tvm import relax

        before = {gv.name_hint for gv, f in lowered.functions.items()
                  if getattr(f, "attrs", None) is not None and f.attrs.get("tirx.is_scheduled", False)}
        with tgt, db:
            new = relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(lowered)
        after = {gv.name_hint for gv, f in new.functions.items()
                 if getattr(f, "attrs", None) is not None and f.attrs.get("tirx.is_scheduled", False)}
        info["applied"] = len(after - before)
        return new, info
    except ZsqError:
        raise
    except Exception as e:  # a database we cannot use must never break a compile
        _warn(f"tuning database {str(p)!r} could not be applied ({type(e).__name__}: {str(e)[:160]}); "
              f"using the default schedules")
        return lowered, info
