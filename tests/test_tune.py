"""`zsq tune` database and compile integration (zsq_tvm/tune.py).

Database robustness without tuning (records made from hand schedules' traces, which are exactly what
MetaSchedule stores): truncated / garbled / orphan lines are skipped with a warning naming the file and
every valid record is kept; appends after a torn line stay parseable; a database of another target or
without a header is ignored with a warning (compile falls back, never crashes); two processes appending
to one database under the file lock lose nothing.  Applying records at compile keeps the output
bit-exact with the numpy reference (quartznet-tiny, every kernel rescheduled).  The RPC test starts a
real loopback tracker + server (``python -m tvm.exec.rpc_tracker`` / ``rpc_server``), tunes a tiny conv
through them (2 trials, a 16-candidate search population), checks that both candidates were loaded and
timed on the server, that the records landed with finite times, that a rerun resumes instead of re-tuning
and that the tuned build is bit-exact; a dead tracker or an unknown key is a ZsqError within seconds.  It
runs by default (well under a minute on 2 cores); every started process is killed in ``finally`` and a
watchdog kills them if tuning hangs.
"""

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

from tvm import relax  # noqa: E402
from tvm.s_tir import meta_schedule as ms  # noqa: E402

import zsq_tvm  # noqa: E402
from zsq_tvm.build import lower  # noqa: E402
from zsq_tvm.core.errors import ZsqError  # noqa: E402
from zsq_tvm.targets import get_target  # noqa: E402
from zsq_tvm.tune import _register_tensor_intrinsics, check_rpc, tune  # noqa: E402
from zsq_tvm.tuning_db import RECORDS, WORKLOADS, TuningDB, TuningWarning, apply_tuning  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _tiny_mod(C=16, M=32, T=32):
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, C, T), "int8"))
    w = relax.const(np.random.default_rng(0).integers(-9, 9, (M, C, 3)).astype("int8"))
    with bb.function("main", [x]):
        with bb.dataflow():
            c = bb.emit(relax.op.nn.conv1d(x, w, padding=[1, 1], out_dtype="int32"))
            d = bb.emit(relax.op.right_shift(c, relax.const(4, "int32")))
            o = bb.emit_output(relax.op.astype(relax.op.clip(d, -127, 127), "int8"))
        bb.emit_func_output(o)
    return bb.get()


def _records_for(lowered, tgt, db):
    n = 0
    for t in ms.relax_integration.extract_tasks(lowered, tgt):
        mod = t.dispatched[0]
        sch = tvm.s_tir.Schedule(mod)
        blocks = sch.get_child_blocks(sch.get_sblock("root"))
        for blk in blocks:
            loops = sch.get_loops(blk)
            if loops:
                sch.parallel(loops[0])
        wl = db.commit_workload(mod)
        db.commit_tuning_record(ms.database.TuningRecord(sch.trace, wl, [1e-4], tgt,
                                                         ms.arg_info.ArgInfo.from_prim_func(mod["main"])))
        n += 1
    return n


@pytest.fixture(scope="module")
def host():
    return get_target("host-generic").make()


@pytest.fixture(scope="module")
def tiny_lowered(host):
    return lower(_tiny_mod(), host)[0]


def test_db_keeps_valid_records_and_skips_bad_lines(tmp_path, host, tiny_lowered):
    db = TuningDB(tmp_path / "db", host)
    n = _records_for(tiny_lowered, host, db)
    assert n >= 1
    rec = tmp_path / "db" / RECORDS
    good = rec.read_text().splitlines()
    assert json.loads(good[0])["zsq_tuning_db"] == 1 and len(good) == 1 + n
    with open(rec, "a") as f:
        f.write("{not json}\n")
        f.write(json.dumps({"shash": "12345", "record": json.loads(good[1])["record"]}) + "\n")  # unknown workload
        f.write(good[1][: len(good[1]) // 2])  # torn write: no newline
    with pytest.warns(TuningWarning, match=r"records\.jsonl.*skipped 3"):
        db2 = TuningDB(tmp_path / "db", host)
    assert db2.loaded == n and len(db2.get_all_tuning_records()) == n
    _records_for(tiny_lowered, host, db2)  # appends after the torn line start on a fresh line
    with pytest.warns(TuningWarning, match="skipped 3"):
        db3 = TuningDB(tmp_path / "db", host)
    assert db3.loaded == 2 * n


def test_mismatched_or_headerless_db_warns_and_compile_falls_back(tmp_path, host, tiny_lowered):
    from zsq_tvm.backends.x86.cpu import host_cpu, isa_class

    # a CPU of another class than the host's (the database folder is keyed by class, see the next test)
    other = tvm.target.Target({"kind": "llvm", "mcpu": "haswell" if isa_class(host_cpu()) != "avx2" else "znver4"})
    db = TuningDB(tmp_path / "db", other)
    _records_for(tiny_lowered, other, db)
    with pytest.warns(TuningWarning, match=r"workloads\.jsonl.*tuned for target"):
        out, info = apply_tuning(tiny_lowered, host, tmp_path / "db")
    assert info["applied"] == 0 and out.same_as(tiny_lowered)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / WORKLOADS).write_text("garbage\n")
    (bad / RECORDS).write_bytes(b"\x00\xff garbage")
    with pytest.warns(TuningWarning, match="no valid zsq header"):
        out, info = apply_tuning(tiny_lowered, host, bad)
    assert info["applied"] == 0
    # the whole compile with a broken database from the environment: warning, default schedules, correct output
    os.environ["ZSQ_TUNING_DB"] = str(bad)
    try:
        with pytest.warns(TuningWarning):
            ex, *_ = zsq_tvm.build.compile_relax(_tiny_mod(), "host-generic")
    finally:
        del os.environ["ZSQ_TUNING_DB"]
    vm = relax.VirtualMachine(ex, tvm.cpu())
    x = np.random.default_rng(1).integers(-128, 128, (1, 16, 32)).astype("int8")
    assert np.array_equal(vm["main"](tvm.runtime.tensor(x)).numpy(), _tiny_numpy(x))


def test_db_key_is_the_cpu_class_and_a_log_serves_every_cpu_of_it(tmp_path, host, tiny_lowered):
    from zsq_tvm.tuning_db import target_key

    key = lambda mcpu: target_key(tvm.target.Target({"kind": "llvm", "mcpu": mcpu}))  # noqa: E731
    assert key("cascadelake") == key("znver4") == key("sapphirerapids") == "x86_64-avx512vnni"
    assert key("haswell") == key("znver3") == "x86_64-avx2"
    assert key("skylake-avx512") == "x86_64-avx512" and key("pentium4") == "x86_64-pentium4"
    assert target_key(get_target("x86-avx2").make()) == "x86_64-avx2"
    # a log tuned on another CPU of the host's class is applied (one shipped log per class) ...
    same_class = {"avx512vnni": "cascadelake", "avx2": "haswell", "avx512": "skylake-avx512"}
    from zsq_tvm.backends.x86.cpu import host_cpu, isa_class

    cls = isa_class(host_cpu())
    if not cls:
        pytest.skip(f"host CPU {host_cpu()!r} is of no known class")
    other = tvm.target.Target({"kind": "llvm", "mcpu": same_class[cls]})
    n = _records_for(tiny_lowered, other, TuningDB(tmp_path / "db", other))
    with warnings.catch_warnings():
        warnings.simplefilter("error", TuningWarning)
        out, info = apply_tuning(tiny_lowered, host, tmp_path / "db")
    assert n >= 1 and info["applied"] >= 1



def test_shipped_log_in_a_read_only_folder_still_applies(tmp_path, host, tiny_lowered, monkeypatch):
    import zsq_tvm.tune as tune_mod

    n = _records_for(tiny_lowered, host, TuningDB(tmp_path / "db", host))
    (tmp_path / "db" / ".lock").unlink()
    real_open = os.open

    def read_only_open(path, flags, *a):  # what a non-root user sees in a read-only site-packages
        if str(path).endswith(".lock") and flags & os.O_CREAT:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *a)

    monkeypatch.setattr(tune_mod.os, "open", read_only_open)
    with warnings.catch_warnings():
        warnings.simplefilter("error", TuningWarning)
        out, info = apply_tuning(tiny_lowered, host, tmp_path / "db")
    assert n >= 1 and info["applied"] >= 1


@pytest.fixture
def no_user_tuning(tmp_path, monkeypatch):
    """Only the shipped logs: no $ZSQ_TUNING_DB, an empty per-user cache."""
    monkeypatch.delenv("ZSQ_TUNING_DB", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))


def test_shipped_logs_load_cleanly_and_keep_the_build_bit_exact(no_user_tuning):
    """Every folder in zsq_tvm/tuning_logs/ parses without a skipped line; the AVX2 log (QuartzNet-5x5, T=1000) gives
    every kernel of that build a record, and the tuned build still equals the numpy reference bit for bit."""
    from relax_passes.reference import run_reference
    from zsq_tvm.tuning_db import SHIPPED_LOGS, target_key

    assert SHIPPED_LOGS == ROOT / "zsq_tvm" / "tuning_logs"
    logs = sorted(p.parent for p in SHIPPED_LOGS.glob("*/" + RECORDS))
    assert logs, "no shipped tuning log"
    by_key = {target_key(get_target(n).make()): n for n in ("x86-avx2", "x86-avx512vnni")}
    for d in logs:
        assert d.name in by_key, f"{d.name}: no target of that class"
        with warnings.catch_warnings():
            warnings.simplefilter("error", TuningWarning)  # no skipped line, right class
            db = TuningDB(d, get_target(by_key[d.name]).make(), create=False)
        assert db.usable and db.loaded > 0
    from zsq_tvm.backends.x86.cpu import host_features

    if "avx2" not in host_features():
        pytest.skip("the AVX2 build cannot run on this CPU")
    # unmasked: the build the log was tuned for (the default time mask adds 2 kernels the log has no record of)
    q = zsq_tvm.quantize("quartznet5x5", zsq_tvm.QuantConfig(frames=1000, time_mask=False))
    # the log was tuned on TVM's default lowering for the AVX2 class (`x86-avx2-generic`): all 20 kernels of
    # that build find a record, and the tuned build stays bit-exact
    b = zsq_tvm.compile(q, target="x86-avx2-generic")  # applies zsq_tvm/tuning_logs/x86_64-avx2/ on its own
    tuning = b.integer_only["tuning"]
    assert tuning["applied"] >= 20 and tuning["db"].endswith("x86_64-avx2"), tuning
    mel = np.random.default_rng(3).standard_normal((1, 64, 1000)).astype(np.float32)
    ref = run_reference(q.mod, mel)
    assert np.array_equal(b.run(mel), ref)
    # `zsq compile --target x86-avx2` (hand AVX2 kernels) applies the same log to what is left of the
    # default lowering on its own
    b = zsq_tvm.compile(q, target="x86-avx2")
    assert b.integer_only["tuning"]["db"].endswith("x86_64-avx2") and b.integer_only["tuning"]["applied"] >= 1
    assert np.array_equal(b.run(mel), ref)


def test_shipped_vnni_log_applies_and_keeps_the_build_bit_exact(no_user_tuning):
    """The AVX-512 VNNI log (tuned on what the hand kernels leave of QuartzNet-5x5 and Jasper at T=1000) is
    picked up by `zsq compile --target x86-avx512vnni` on its own, and the tuned build equals the reference."""
    from relax_passes.reference import run_reference
    from zsq_tvm.backends.x86.cpu import host_features

    if "avx512_vnni" not in host_features():
        pytest.skip("the AVX-512 VNNI build cannot run on this CPU")
    q = zsq_tvm.quantize("quartznet5x5", zsq_tvm.QuantConfig(frames=1000))
    b = zsq_tvm.compile(q, target="x86-avx512vnni")
    tuning = b.integer_only["tuning"]
    assert tuning["db"].endswith("x86_64-avx512vnni") and tuning["applied"] >= 1, tuning
    assert tuning["source"] == "shipped", tuning
    mel = np.random.default_rng(4).standard_normal((1, 64, 1000)).astype(np.float32)
    assert np.array_equal(b.run(mel), run_reference(q.mod, mel))

def _tiny_numpy(x):
    from zsq_tvm.core import intmath

    w = np.random.default_rng(0).integers(-9, 9, (32, 16, 3)).astype("int8")
    acc = intmath.conv1d_int(x, w, padding=(1, 1))
    return np.clip(acc >> 4, -127, 127).astype("int8")


_WRITER = r"""
import sys, tvm
from tvm.s_tir import meta_schedule as ms
from zsq_tvm.build import lower
from zsq_tvm.targets import get_target
from zsq_tvm.tuning_db import TuningDB
sys.path.insert(0, sys.argv[3])
from test_tune import _tiny_mod
tgt = get_target("host-generic").make()
t = ms.relax_integration.extract_tasks(lower(_tiny_mod(), tgt)[0], tgt)[0]
db = TuningDB(sys.argv[1], tgt)
wl = db.commit_workload(t.dispatched[0])
tr = tvm.s_tir.Schedule(t.dispatched[0]).trace
ai = ms.arg_info.ArgInfo.from_prim_func(t.dispatched[0]["main"])
for i in range(int(sys.argv[2])):
    db.commit_tuning_record(ms.database.TuningRecord(tr, wl, [1e-3 + i * 1e-6], tgt, ai))
"""


def test_two_processes_share_one_db_without_corruption(tmp_path, host):
    n = 150
    ps = [subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path / "db"), str(n), str(ROOT / "tests")],
                           cwd=str(ROOT)) for _ in range(2)]
    assert all(p.wait(timeout=300) == 0 for p in ps)
    lines = (tmp_path / "db" / RECORDS).read_text().splitlines()
    assert len(lines) == 1 + 2 * n and all(json.loads(x) for x in lines)
    with warnings.catch_warnings():
        warnings.simplefilter("error", TuningWarning)  # no line may be skipped
        db = TuningDB(tmp_path / "db", host)
    assert db.loaded == 2 * n


def test_tuned_small_model_stays_bit_exact(tmp_path, host):
    from relax_passes.reference import run_reference

    q = zsq_tvm.quantize("quartznet-tiny", zsq_tvm.QuantConfig(frames=48, time_mask=False))
    lowered = lower(q.mod, host)[0]
    n = _records_for(lowered, host, TuningDB(tmp_path / "db", host))
    assert n >= 5
    os.environ["ZSQ_TUNING_DB"] = str(tmp_path / "db")
    try:
        ex, low2, report, _ = zsq_tvm.build.compile_relax(q.mod, "host-generic")
    finally:
        del os.environ["ZSQ_TUNING_DB"]
    assert report["tuning"]["applied"] >= n  # every distinct kernel (and its duplicates) took a record
    assert report["ok"] is True
    vm = relax.VirtualMachine(ex, tvm.cpu())
    b = zsq_tvm.compile(q, target="host-generic")  # untuned (no database): same input encoding
    mel = np.random.default_rng(2).standard_normal((1, 64, 48)).astype(np.float32) * 2
    xq = b._encode_input(b._prepare(mel), b.manifest["io"]["inputs"][0]["dtype"])
    y = vm["main"](tvm.runtime.tensor(xq))
    y = (y[0] if not hasattr(y, "numpy") else y).numpy()
    assert np.array_equal(y, run_reference(q.mod, mel))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_rpc_unreachable_tracker_and_unknown_key_fail_fast():
    # the error is the timeout's own message: the 3 s connect timeout fired (how fast is bench's business)
    with pytest.raises(ZsqError, match="not reachable"):
        check_rpc(f"127.0.0.1:{_free_port()}", "k", timeout=3)
    with pytest.raises(ZsqError, match="HOST:PORT"):
        check_rpc("nohostport", "k")


def _stop(*procs, grace=5.0):
    """Terminate (after ``grace`` s: kill) started RPC processes *and their descendants*.

    The tracker and the server each run their socket loop in a TVM PopenWorker child whose server thread
    outlives its parent, so stopping only the parent leaks a process listening on a port (and a wedged
    child would keep a runner's connection open forever).
    """
    import psutil

    tree = []
    for p in procs:
        if p is None:
            continue
        try:
            root = psutil.Process(p.pid)
            tree += root.children(recursive=True) + [root]
        except psutil.NoSuchProcess:
            pass
    for q in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            (q.terminate if grace else q.kill)()
    _, alive = psutil.wait_procs(tree, timeout=grace or 5.0)
    for q in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            q.kill()
    psutil.wait_procs(alive, timeout=5)
    for p in procs:
        if p is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=1)


def _start_tracker(port, env, deadline_s=60):
    tracker = subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1",
                                "--port", str(port), "--port-end", str(port + 1)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + deadline_s
    while time.time() < deadline and tracker.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return tracker
        except OSError:
            time.sleep(0.1)
    _stop(tracker)
    pytest.fail(f"RPC tracker did not start within {deadline_s} s (exit code {tracker.returncode})")


def _wait_for_key(tracker_addr, key, server, server_log, deadline_s=120):
    """Poll the tracker until a server registered ``key``; fail (with the server's log) if it died or never did."""
    deadline = time.time() + deadline_s
    while time.time() < deadline and server.poll() is None:
        try:
            check_rpc(tracker_addr, key, timeout=5)
            return
        except ZsqError:
            time.sleep(0.2)
    pytest.fail(f"RPC server {key!r} did not register within {deadline_s} s (exit code {server.poll()}); its log:\n"
                + server_log.read_text()[-2000:])


def test_rpc_tracker_without_that_key_fails_fast():
    pytest.importorskip("tornado", reason="TVM's RPC tracker needs tornado (pip install -e '.[test]')")
    port = _free_port()
    tracker = _start_tracker(port, dict(os.environ))
    try:
        # the error is what the 5 s timeout raises: it fired instead of waiting for a server
        with pytest.raises(ZsqError, match="no RPC server is registered with key 'nokey'"):
            tune(_tiny_mod(), trials=2, rpc_tracker=f"127.0.0.1:{port}", rpc_key="nokey", progress=False,
                 rpc_timeout=5)
    finally:
        _stop(tracker)


def test_rpc_loopback_tune(tmp_path, host):
    """Real tracker + server processes on 127.0.0.1; both candidates are built here and timed on the server."""
    pytest.importorskip("tornado", reason="TVM's RPC tracker needs tornado (pip install -e '.[test]')")
    port = _free_port()
    addr = f"127.0.0.1:{port}"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    server_log = tmp_path / "rpc_server.log"
    tracker = server = None
    killed = threading.Event()

    def _watchdog():  # a hung RPC must fail this test, not hang CI: dead tracker/server = failed runner requests
        killed.set()
        _stop(server, tracker, grace=0)

    watchdog = threading.Timer(180, _watchdog)  # ~20 s normally; ~5x that on a loaded 2-core machine
    watchdog.daemon = True
    try:
        tracker = _start_tracker(port, env)
        with open(server_log, "wb") as log:  # the server logs each uploaded module it loads (checked below)
            server = subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_server", "--tracker", addr,
                                       "--key", "zsq-test", "--host", "127.0.0.1"], env=env,
                                      stdout=log, stderr=subprocess.STDOUT)
        # the tensor intrinsics MetaSchedule registers once per process (~10 s of TVMScript parsing; tune()
        # would do it itself): register them while the server imports TVM
        _register_tensor_intrinsics()

        with pytest.raises(ZsqError, match="no RPC server is registered with key 'nokey'"):  # the timeout's error
            check_rpc(addr, "nokey", timeout=5)
        _wait_for_key(addr, "zsq-test", server, server_log)
        watchdog.start()
        # a small search population: 2 trials need no 512-candidate rounds, and RPC is what is tested here
        res = tune(_tiny_mod(), "host-generic", trials=2, db_path=tmp_path / "db", rpc_tracker=addr,
                   rpc_key="zsq-test",
                   progress=False, per_iter=2, population=16, build_timeout=60)
        assert not killed.is_set(), "tuning through RPC took over 180 s; the tracker and server were killed"
        assert res["errors"] == [] and res["trials_ok"] == 2, res["errors"]
        assert res["tasks"] == 1 and res["trials_run"] == 2 and res["records_after"] == 2
        assert len((tmp_path / "db" / RECORDS).read_text().splitlines()) == 3
        run_secs = [float(s) for r in TuningDB(tmp_path / "db", host).get_all_tuning_records() for s in r.run_secs]
        assert len(run_secs) == 2 and all(0 < s < 1 for s in run_secs), run_secs
        # timed on the RPC server, not here: it loaded one uploaded module per measured candidate
        loads = [ln for ln in server_log.read_text().splitlines() if "load_module" in ln]
        assert len(loads) == 2, server_log.read_text()[-2000:]
        # resumable: the budget counts what is there
        again = tune(_tiny_mod(), "host-generic", trials=2, db_path=tmp_path / "db", rpc_tracker=addr,
                     rpc_key="zsq-test",
                     progress=False)
        assert again["trials_run"] == 0 and again["records_before"] == 2
        os.environ["ZSQ_TUNING_DB"] = str(tmp_path / "db")
        try:
            ex, _, report, _ = zsq_tvm.build.compile_relax(_tiny_mod(), "host-generic")
        finally:
            del os.environ["ZSQ_TUNING_DB"]
        assert report["tuning"]["applied"] >= 1
        vm = relax.VirtualMachine(ex, tvm.cpu())
        x = np.random.default_rng(1).integers(-128, 128, (1, 16, 32)).astype("int8")
        assert np.array_equal(vm["main"](tvm.runtime.tensor(x)).numpy(), _tiny_numpy(x))
    finally:
        watchdog.cancel()
        _stop(server, tracker)
