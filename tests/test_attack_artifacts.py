"""Attacks on the folders and paths zsq is handed or told to write (security issue, items 2, 3, 4, 7, 8).

Each test builds the hostile input itself and asserts what a user is promised: one line and exit 2,
no code of a folder zsq did not verify is run, nothing outside the output is deleted or replaced,
nothing half-written is left behind.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

from _zsq_models import micro_onnx
from conftest import reseal
from zsq_tvm import artifacts, metrics
from zsq_tvm.cli import main
from zsq_tvm.core.errors import ArtifactError

FRAMES = 32


def cli(capsys, *argv):
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("zsq: error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A real host build of the micro model (and its quantized folder and a mel it accepts)."""
    d = tmp_path_factory.mktemp("built")
    onnx_path = micro_onnx(d / "micro.onnx", frames=FRAMES)
    assert main(["quantize", str(onnx_path), "--frames", str(FRAMES), "--num-batches", "1", "-o", str(d / "q")]) == 0
    assert main(["compile", str(d / "q"), "--target", "host", "-o", str(d / "b")]) == 0
    np.save(d / "mel.npy", np.random.default_rng(0).normal(size=(64, FRAMES)).astype(np.float32))
    return d


def _copy_build(built, tmp_path) -> Path:
    b = tmp_path / "b"
    shutil.copytree(built / "b", b)
    return b


def _evil_library(tmp_path: Path, victim: Path) -> Path:
    """A shared library whose constructor creates ``victim`` as soon as anything dlopens it."""
    src = tmp_path / "evil.c"
    src.write_text('#include <stdio.h>\n__attribute__((constructor)) static void pwn(void) {\n'
                   f'  FILE *f = fopen("{victim}", "w"); if (f) {{ fputs("pwned", f); fclose(f); }}\n}}\n')
    so = tmp_path / "evil.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(so), str(src)], check=True)
    return so


# ------------------------------------------------------------------ item 2: libraries in build folders

def test_a_library_zsq_did_not_write_is_never_loaded(built, tmp_path, capsys):
    b = _copy_build(built, tmp_path)
    victim = tmp_path / "outside" / "pwned"
    victim.parent.mkdir()
    shutil.copy(_evil_library(tmp_path, victim), b / "model.so")
    for argv in (["check", b], ["run", b, "--input", built / "mel.npy"], ["check", b, "--json"]):
        rc, out, err = cli(capsys, *argv)
        assert rc == 2 and "model.so" in one_error_line(err), (argv, err)
        assert not victim.exists(), argv
    with pytest.raises(ArtifactError, match="model.so"):
        import zsq_tvm

        zsq_tvm.load(b)
    assert not victim.exists()


def test_check_runs_no_code_even_of_a_folder_crafted_whole(built, tmp_path, capsys):
    """A folder made whole by someone else has matching hashes; `zsq check` still loads no library from it and
    derives its verdict from module.json (the README says loading one -- `zsq run` -- is running its code)."""
    b = _copy_build(built, tmp_path)
    victim = tmp_path / "pwned"
    shutil.copy(_evil_library(tmp_path, victim), b / "model.so")
    reseal(b)
    rc, out, err = cli(capsys, "check", b)
    assert rc == 0 and "integer-only: ok" in out, err
    assert not victim.exists()
    # running it is loading it (README): its code runs, and a library that is no Relax executable is one line
    rc, _, err = cli(capsys, "run", b, "--input", built / "mel.npy")
    assert rc == 2 and "not a Relax executable" in one_error_line(err)


def test_an_fp32_library_dropped_into_a_build_is_refused(built, tmp_path, capsys):
    import tvm
    from tvm import relax
    from tvm.script import ir as I, relax as R

    @I.ir_module
    class Float:
        @R.function
        def main(x: R.Tensor((1, 64, FRAMES), "float32")):
            return R.multiply(x, R.const(0.5, "float32"))

    b = _copy_build(built, tmp_path)
    tvm.compile(Float, target="llvm").export_library(str(b / "model.so"))
    for argv in (["check", b], ["run", b, "--input", built / "mel.npy"]):
        rc, out, err = cli(capsys, *argv)
        assert rc == 2 and "model.so" in one_error_line(err), (argv, err)
    with pytest.raises(ArtifactError):
        artifacts.read_manifest(b)
    del relax


def _module_running_a_command(victim: Path, how: str):
    """A Relax module that runs ``touch victim`` when TVM compiles it (``FoldConstant`` executes a call_tir of
    constants) or when it runs (a packed call by name)."""
    import tvm
    from tvm import relax
    from tvm.script import tirx as T

    @T.prim_func
    def pwn(x: T.Buffer((1,), "int32"), y: T.Buffer((1,), "int32")):
        y[0] = T.call_extern("int32", "system", "touch " + str(victim))

    bb = relax.BlockBuilder()
    mel = relax.Var("mel", relax.TensorType((1, 64, FRAMES), "float32"))
    with bb.function("main", [mel]):
        arg = relax.const(np.array([1], "int32"))
        if how == "call_extern":
            out = bb.emit(relax.call_tir(bb.add_func(pwn, "zsq_input_quantize"), (arg,),
                                         relax.TensorType((1,), "int32")))
        else:
            out = bb.emit(relax.call_dps_packed(relax.ExternFunc("runtime.system"), (arg,),
                                                relax.TensorType((1,), "int32")))
        bb.emit_func_output(out)
    return tvm.ir.save_json(bb.get())


@pytest.mark.parametrize("how", ["call_extern", "packed"])
def test_a_module_json_that_would_run_code_when_compiled_is_refused(built, tmp_path, capsys, how):
    """Hashes prove a file is the one listed, not who made it: a folder crafted whole (resealed) carries a
    module.json whose PrimFunc calls system(); `zsq check` and `zsq compile` lower it, and TVM's FoldConstant
    would run it.  zsq_tvm.module_check refuses it first."""
    victim = tmp_path / "pwned"
    evil = _module_running_a_command(victim, how)
    q = tmp_path / "q"
    shutil.copytree(built / "q", q)
    (q / "module.json").write_text(evil)
    reseal(q)
    b = _copy_build(built, tmp_path)
    (b / "module.json").write_text(evil)
    reseal(b)
    for argv in (["compile", q, "-o", tmp_path / "b2"], ["check", b], ["tune", q, "--trials", 1, "--db", tmp_path / "db"]):
        rc, _, err = cli(capsys, *argv)
        assert rc == 2 and "never writes" in one_error_line(err), (argv, err)
        assert not victim.exists(), argv
    assert not (tmp_path / "b2").exists()


@pytest.mark.parametrize("damage", ["truncate-so", "truncate-so-resealed", "no-manifest", "garble-manifest", "manifest-fields",
                                    "garble-module", "extra-file", "symlink", "old-format"])
def test_damaged_build_folders_give_one_line(built, tmp_path, capsys, damage):
    b = _copy_build(built, tmp_path)
    if damage == "truncate-so":  # SIGBUS when such a file was mapped
        data = (b / "model.so").read_bytes()
        (b / "model.so").write_bytes(data[:len(data) // 3])
    elif damage == "truncate-so-resealed":  # hashes that match: the ELF check stops the SIGBUS of mapping it
        data = (b / "model.so").read_bytes()
        (b / "model.so").write_bytes(data[:len(data) // 3])
        reseal(b)
    elif damage == "no-manifest":
        (b / "manifest.json").unlink()
    elif damage == "garble-manifest":
        (b / "manifest.json").write_bytes(b"{\"kind\": \"zsq-build\", \x00\xff")
    elif damage == "manifest-fields":
        m = json.loads((b / "manifest.json").read_text())
        m["io"], m["target"] = "x", 7
        (b / "manifest.json").write_text(json.dumps(m))
    elif damage == "garble-module":
        (b / "module.json").write_text("{\"root\": 1, \"nodes\": [")
        reseal(b)  # zsq's own hash matches: the parse itself must fail cleanly
    elif damage == "extra-file":
        (b / "libextra.so").write_bytes(b"\x7fELF")
    elif damage == "symlink":
        (b / "quant.json").unlink()
        (b / "quant.json").symlink_to("/etc/passwd")
    elif damage == "old-format":
        m = json.loads((b / "manifest.json").read_text())
        m["format_version"] = 1
        del m["files"]
        (b / "manifest.json").write_text(json.dumps(m))
    # a hash-matching module.json that does not parse only matters to what reads it (check); run uses the library
    # ... and a library that matches its hash but is cut short only to what reads or loads the library
    run = [["run", b, "--input", built / "mel.npy"], ["bench", b, "--compare-onnx", built / "micro.onnx", "--runs", 1]]
    cmds = {"garble-module": [["check", b], ["tune", b, "--trials", 1, "--db", tmp_path / "db"]],
            "truncate-so-resealed": [["check", b]] + run}.get(
        damage, [["check", b], ["tune", b, "--trials", 1, "--db", tmp_path / "db"], ["report", b]] + run)
    for argv in cmds:
        rc, out, err = cli(capsys, *argv)
        assert rc == 2, (damage, argv, out, err)
        one_error_line(err)


def test_quantized_folder_is_verified_too(built, tmp_path, capsys):
    q = tmp_path / "q"
    shutil.copytree(built / "q", q)
    (q / "quant.json").write_text((q / "quant.json").read_text().replace("1", "2", 1))
    rc, _, err = cli(capsys, "compile", q, "-o", tmp_path / "b")
    assert rc == 2 and "quant.json" in one_error_line(err)
    assert not (tmp_path / "b").exists()


# ------------------------------------------------------------------ item 3: --overwrite

def test_overwrite_never_deletes_the_current_directory(built, tmp_path, capsys, monkeypatch):
    work = tmp_path / "D"
    work.mkdir()
    model = work / "m.onnx"
    shutil.copy(built / "micro.onnx", model)
    (work / "notes.txt").write_text("mine")
    monkeypatch.chdir(work)
    for out in (".", str(work), "..", "../.."):
        rc, _, err = cli(capsys, "quantize", "m.onnx", "--frames", FRAMES, "-o", out, "--overwrite")
        assert rc == 2 and "--overwrite refuses" in one_error_line(err), (out, err)
    assert sorted(p.name for p in work.iterdir()) == ["m.onnx", "notes.txt"]
    assert model.read_bytes() == (built / "micro.onnx").read_bytes()


def test_overwrite_replaces_only_its_own_kind_of_zsq_folder(built, tmp_path, capsys):
    user = tmp_path / "photos"
    user.mkdir()
    (user / "cat.jpg").write_bytes(b"\xff\xd8")
    rc, _, err = cli(capsys, "compile", built / "q", "-o", user, "--overwrite")
    assert rc == 2 and "not a zsq output" in one_error_line(err)
    assert (user / "cat.jpg").read_bytes() == b"\xff\xd8"
    # a zsq folder the user added a file to is not replaced either
    b = _copy_build(built, tmp_path)
    (b / "my_results.txt").write_text("keep")
    rc, _, err = cli(capsys, "compile", built / "q", "-o", b, "--overwrite")
    assert rc == 2 and "my_results.txt" in one_error_line(err)
    assert (b / "my_results.txt").read_text() == "keep"
    # a quantized folder is not a build
    q = tmp_path / "q"
    shutil.copytree(built / "q", q)
    rc, _, err = cli(capsys, "compile", built / "q", "-o", q, "--overwrite")
    assert rc == 2 and "zsq-quantized" in one_error_line(err)
    # the folder holding the command's input
    rc, _, err = cli(capsys, "compile", q, "-o", q, "--overwrite")
    assert rc == 2 and "an input of this command" in one_error_line(err)
    assert artifacts.read_manifest(q)["kind"] == artifacts.KIND_QUANTIZED
    # what --overwrite is for: an earlier build
    (b / "my_results.txt").unlink()
    rc, _, err = cli(capsys, "compile", built / "q", "-o", b, "--overwrite")
    assert rc == 0, err
    artifacts.read_manifest(b, artifacts.KIND_BUILD)


# ------------------------------------------------------------------ item 4: concurrent writers

@pytest.mark.parametrize("theirs", ["empty-dir", "full-dir"])
def test_the_final_rename_never_replaces_a_concurrent_writer(tmp_path, theirs):
    out = tmp_path / "out"
    with pytest.raises(ArtifactError, match="already exists"):
        with artifacts.atomic_dir(out) as tmp:
            (tmp / "ours.txt").write_text("ours")
            out.mkdir()  # another process created the destination during our work
            if theirs == "full-dir":
                (out / "theirs.txt").write_text("theirs")
    assert sorted(p.name for p in out.iterdir()) == ([] if theirs == "empty-dir" else ["theirs.txt"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # and our temporary folder is gone


def test_two_quantize_runs_to_one_output_only_one_wins(built, tmp_path):
    out = tmp_path / "q"
    cmd = [sys.executable, "-m", "zsq_tvm.cli", "quantize", str(built / "micro.onnx"), "--frames", str(FRAMES),
           "--num-batches", "1", "-o", str(out)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    res = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    codes = sorted(rc for rc, _ in res)
    assert codes == [0, 2], res
    assert "already exists" in [e for rc, e in res if rc == 2][0]
    artifacts.read_manifest(out, artifacts.KIND_QUANTIZED)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q"]


# ------------------------------------------------------------------ item 7: errors before the work, one line

def test_unwritable_output_is_found_before_any_work(built, tmp_path, capsys, monkeypatch):
    import zsq_tvm.api

    def no_work(*a, **k):
        raise AssertionError("the model was processed before the output path was checked")

    monkeypatch.setattr(zsq_tvm.api, "quantize", no_work)
    monkeypatch.setattr(zsq_tvm.api, "compile", no_work)
    afile = tmp_path / "afile"
    afile.write_text("x")
    for out in (afile / "q", "/proc/zsq-no-such/q", "/proc/self/q"):
        rc, _, err = cli(capsys, "quantize", built / "micro.onnx", "--frames", FRAMES, "-o", out)
        assert rc == 2 and "cannot write" in one_error_line(err), (out, err)
        rc, _, err = cli(capsys, "compile", built / "q", "-o", out)
        assert rc == 2 and "cannot write" in one_error_line(err), (out, err)


def test_run_output_is_checked_before_inference(built, tmp_path, capsys, monkeypatch):
    from zsq_tvm.build import Build

    def no_load(*a, **k):
        raise AssertionError("the build was loaded before --output was checked")

    monkeypatch.setattr(Build, "load", no_load)
    existing = tmp_path / "logits.npy"
    existing.write_bytes(b"keep")
    for out, why in ((tmp_path / "missing" / "x.npy", "does not exist"), (tmp_path, "is a directory"),
                     (existing, "already exists")):
        rc, _, err = cli(capsys, "run", built / "b", "--input", built / "mel.npy", "--output", out)
        assert rc == 2 and why in one_error_line(err), (out, err)
    assert existing.read_bytes() == b"keep"
    monkeypatch.undo()
    rc, out, err = cli(capsys, "run", built / "b", "--input", built / "mel.npy", "--output", existing, "--overwrite")
    assert rc == 0, err
    assert np.load(existing).shape[0] == 1


def test_a_full_disk_is_one_line_and_leaves_nothing(built, tmp_path):
    """RLIMIT_FSIZE makes every write past 64 KiB fail with EFBIG, as a full disk fails with ENOSPC."""
    import resource

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, 64 << 10))

    out = tmp_path / "q"
    r = subprocess.run([sys.executable, "-m", "zsq_tvm.cli", "quantize", str(built / "micro.onnx"), "--frames",
                        str(FRAMES), "--num-batches", "1", "-o", str(out)], preexec_fn=limit, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 2, r.stderr[-2000:]
    one_error_line(r.stderr)
    assert "file size limit" in r.stderr
    assert list(tmp_path.iterdir()) == []


def test_tune_db_that_is_a_file_is_one_line(built, tmp_path, capsys):
    db = tmp_path / "db"
    db.write_text("not a folder")
    rc, _, err = cli(capsys, "tune", built / "q", "--trials", 1, "--db", db)
    assert rc == 2 and "--db" in one_error_line(err)
    assert db.read_text() == "not a folder"


# ------------------------------------------------------------------ item 8: WER over empty references

def _wav(path: Path, seconds: float = 0.5) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes((np.random.default_rng(0).normal(size=int(16000 * seconds)) * 3000).astype("<i2").tobytes())
    return path


def test_wer_over_empty_references_is_an_error_not_zero(tmp_path, capsys):
    _wav(tmp_path / "a.wav")
    man = tmp_path / "m.json"
    man.write_text(json.dumps({"audio_filepath": "a.wav", "text": ""}) + "\n"
                   + json.dumps({"audio_filepath": "a.wav", "text": " !? "}) + "\n")
    rc, _, err = cli(capsys, "eval", "quartznet-tiny", "--manifest", man)
    assert rc == 2 and "WER is undefined" in one_error_line(err)
    with pytest.raises(ValueError):
        metrics.wer([""], ["an inserted word"])
    # an empty reference next to real ones: its hypothesis words count as insertions
    assert metrics.wer(["a b", ""], ["a b", "c"]) == (0.5, 1, 2)


def test_a_build_runs_where_the_temp_folder_is_noexec(built, tmp_path):
    """The library is loaded from a private verified copy; on a hardened machine whose temp folder is mounted
    noexec nothing maps from there, so the copy goes to a private folder beside the build instead."""
    noexec = tmp_path / "noexec"
    noexec.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "noexec,size=64m", "tmpfs", str(noexec)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a noexec tmpfs here (needs root)")
    try:
        b = _copy_build(built, tmp_path)
        r = subprocess.run([sys.executable, "-m", "zsq_tvm.cli", "run", str(b), "--input", str(built / "mel.npy")],
                           capture_output=True, text=True, timeout=300, env={**os.environ, "TMPDIR": str(noexec)})
        assert r.returncode == 0, r.stderr[-2000:]
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".zsq-lib-")]  # nothing left beside it
        assert not list(noexec.iterdir())
    finally:
        subprocess.run(["umount", str(noexec)], capture_output=True)
