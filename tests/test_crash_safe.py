"""Crash-safe outputs: ``zsq quantize`` / ``zsq compile`` SIGKILLed while writing their output.

Every command writes into a temporary sibling ``.<out>.tmp-<host>-<pid>-*`` and renames it onto ``<out>``
when complete (``zsq_tvm.artifacts.atomic_dir``).  A SIGKILL cannot be caught, so the temporary sibling
stays - but nothing is ever at ``<out>``, and the next command on that path removes the dead process's
leftovers and succeeds.

To kill *while the output is being written* (not before or after it), the child's
``artifacts.write_json`` sleeps 1 s after each file: the real command, only slower at the one point
under test.  The test waits until the temporary sibling holds at least one file, then SIGKILLs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import zsq_tvm
from _zsq_models import micro_onnx
from zsq_tvm import artifacts
from zsq_tvm.cli import main

FRAMES = 32

CHILD = """
import sys, time
import zsq_tvm.artifacts as A
_write = A.write_json
def slow_write(path, obj):
    _write(path, obj)
    time.sleep(1.0)
A.write_json = slow_write
from zsq_tvm.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _temps(parent: Path, name: str) -> list[Path]:
    return sorted(parent.glob(f".{name}.tmp-*"))


def _kill_while_writing(argv: list[str], parent: Path, name: str) -> Path:
    """Run ``zsq ARGV`` in a child, SIGKILL it once its temporary output holds a file; return that dir."""
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.Popen([sys.executable, "-c", CHILD, *argv], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    deadline = time.time() + 300
    try:
        while time.time() < deadline:
            tmp = [d for d in _temps(parent, name) if any(d.iterdir())]
            if tmp:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(30)
                assert proc.returncode == -signal.SIGKILL
                return tmp[0]
            if proc.poll() is not None:
                pytest.fail(f"zsq {argv[0]} ended (rc {proc.returncode}) before it could be killed: "
                            f"{proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.01)
        pytest.fail(f"zsq {argv[0]} never created its temporary output")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_sigkill_quantize_and_compile_leave_no_output_and_rerun_succeeds(tmp_path, capsys):
    model = micro_onnx(tmp_path / "micro.onnx", frames=FRAMES)
    q, b = tmp_path / "q", tmp_path / "b"
    qargs = ["quantize", str(model), "--frames", str(FRAMES), "--num-batches", "2", "-o", str(q)]

    # quantize, killed mid-write
    partial = _kill_while_writing(qargs, tmp_path, "q")
    assert not q.exists(), "partial quantize output at the destination"
    assert not (partial / artifacts.MANIFEST).exists()  # it really was killed half way
    # rerun: succeeds, and removes the dead process's temporary directory
    assert main(qargs) == 0, capsys.readouterr().err
    assert not partial.exists() and _temps(tmp_path, "q") == []
    qm = zsq_tvm.QuantizedModel.load(q)
    assert qm.frames == FRAMES

    # compile, killed mid-write (after model.so was written into the temporary directory)
    cargs = ["compile", str(q), "-o", str(b)]
    partial = _kill_while_writing(cargs, tmp_path, "b")
    assert not b.exists(), "partial build output at the destination"
    assert not (partial / artifacts.MANIFEST).exists()
    assert main(cargs) == 0, capsys.readouterr().err
    assert not partial.exists() and _temps(tmp_path, "b") == []
    build = zsq_tvm.load(b)
    mel = np.random.default_rng(0).uniform(-1, 1, (64, FRAMES)).astype(np.float32)
    y = build.run(mel)
    assert y.shape[0] == 1 and np.isfinite(y).all() and np.ptp(y) > 0


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_reaper_restores_an_interrupted_overwrite_and_spares_live_and_foreign_dirs(tmp_path):
    host = artifacts._owner_tag().split("-")[0]
    out = tmp_path / "q"
    dead = _dead_pid()
    # a killed `--overwrite` run had moved the previous output aside and not yet renamed the new one in
    old = tmp_path / f".q.old-{host}-{dead}-abc"
    (old / "q").mkdir(parents=True)
    (old / "q" / "manifest.json").write_text("{}")
    dead_tmp = tmp_path / f".q.tmp-{host}-{dead}-def"
    dead_tmp.mkdir()
    (dead_tmp / "module.json").write_text("partial")
    live_tmp = tmp_path / f".q.tmp-{host}-{os.getpid()}-ghi"        # a running writer (this process)
    live_tmp.mkdir()
    foreign = tmp_path / f".q.tmp-00000000-{dead}-jkl"             # another host's writer: pid means nothing here
    foreign.mkdir()
    other = tmp_path / f".qq.tmp-{host}-{dead}-mno"                # another output's directory
    other.mkdir()

    artifacts._reap_stale(out)
    assert (out / "manifest.json").read_text() == "{}"  # the previous output is back
    assert not old.exists() and not dead_tmp.exists()
    assert live_tmp.exists() and foreign.exists() and other.exists()


def test_atomic_dir_reaps_before_writing(tmp_path):
    host = artifacts._owner_tag().split("-")[0]
    stale = tmp_path / f".out.tmp-{host}-{_dead_pid()}-x"
    stale.mkdir()
    with artifacts.atomic_dir(tmp_path / "out") as d:
        (d / "f").write_text("1")
        assert d.name.startswith(f".out.tmp-{artifacts._owner_tag()}-")
    assert (tmp_path / "out" / "f").read_text() == "1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_interrupted_overwrite_is_restored_before_any_work(tmp_path, monkeypatch, capsys):
    """A killed ``--overwrite`` run left the previous output moved aside (``.<out>.old-<host>-<dead pid>-*``).
    The next run *without* ``--overwrite`` must put it back and refuse at once - not after quantizing."""
    out = tmp_path / "q"
    host = artifacts._owner_tag().split("-")[0]
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    aside = tmp_path / f".q.old-{host}-{dead.pid}-x"
    (aside / "q").mkdir(parents=True)
    (aside / "q" / "marker").write_text("previous output")
    calls = []
    import zsq_tvm.api

    monkeypatch.setattr(zsq_tvm.api, "quantize", lambda *a, **k: calls.append(a))
    model = micro_onnx(tmp_path / "m.onnx", frames=FRAMES)
    rc = main(["quantize", str(model), "--frames", str(FRAMES), "-o", str(out)])
    assert rc == 2 and "already exists" in capsys.readouterr().err
    assert calls == []                                   # refused before any work
    assert (out / "marker").read_text() == "previous output"  # the interrupted overwrite was undone
    assert not aside.exists()
