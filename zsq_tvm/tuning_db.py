"""The tuning database: a crash-safe MetaSchedule database in two JSON-lines files, and applying it at compile.

The database (:class:`TuningDB`) is a folder of two JSON-lines files, ``workloads.jsonl`` and
``records.jsonl``; the first line of each is a header ``{"zsq_tuning_db": 1, "target": ..., "key": ...}``.
Every record is appended as one line, under an exclusive ``fcntl`` lock on ``.lock`` (two tune
processes may share a database), flushed and ``fsync``-ed before tuning goes on, so an interrupted
run keeps every measured record.  Loading skips (with one warning naming the file and the line)
truncated or garbled lines and records of unknown workloads, keeping every valid record; a database
for another target is ignored with a warning.

``zsq compile`` (:func:`apply_tuning`) looks for ``$ZSQ_TUNING_DB`` or else ``tuning_logs/<key>/``
(:func:`target_key`: e.g. ``x86_64-avx512vnni``) and applies the best record of each kernel with
``MetaScheduleApplyDatabase``; no database or an unusable one means the default schedules, never an
error.  Integer kernels stay integer under any schedule, so the output stays bit-exact.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import warnings
from pathlib import Path

from zsq_tvm.core.errors import ZsqError
from zsq_tvm.targets import list_targets

__all__ = ["TuningWarning", "register_tuning_key", "target_key", "default_db_dir", "TuningDB", "apply_tuning"]

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


def default_db_dir(tgt) -> Path:
    """``$ZSQ_TUNING_LOGS/<key>`` or the repository's ``tuning_logs/<key>``."""
    root = os.environ.get("ZSQ_TUNING_LOGS") or str(Path(__file__).resolve().parent.parent / "tuning_logs")
    return Path(root) / target_key(tgt)


def _header(tgt) -> dict:
    return {"zsq_tuning_db": FORMAT, "target": str(tgt), "key": target_key(tgt)}


@contextlib.contextmanager
def _locked(path: Path, exclusive: bool = True):
    lock = str(path / LOCK) if path.is_dir() else str(path)
    if exclusive:
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        if exclusive:
            raise
        # a reader of a database it cannot write to (a shipped log in a read-only install) reads unlocked:
        # records are only ever appended as whole fsync-ed lines, and torn lines are skipped anyway
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
                _append_lines(self.path / RECORDS, [json.dumps({"shash": sh, "record": record.as_json()})],
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
    """Apply the matching tuning database to a lowered module; ``(lowered, info)``; never raises for a bad DB."""
    p = Path(db_path) if db_path else (Path(os.environ["ZSQ_TUNING_DB"]) if os.environ.get("ZSQ_TUNING_DB")
                                       else default_db_dir(tgt))
    info = {"db": str(p), "applied": 0}
    if not (p / RECORDS).exists():
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
