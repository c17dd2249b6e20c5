"""The two-machine tuning loop through files (`zsq tune DIR --runner files:OUT`, zsq_tvm/tune_files.py).

The CPU plays the GPU machine: a host-generic batch is measured by the real ``tools/tune_runner.py``
(subprocess, as on the device).  Round 1 writes a batch; a second call before results exist writes
nothing new; the runner measures it; round 2 ingests the results (the database gains exactly the measured
records) and writes the next batch; a compile with that database applies them and stays bit-exact with
the numpy reference.  Hostile results (NaN, negative, infinite or huge times, unknown or repeated ids,
another batch's hash, extra keys, booleans, an oversize file, a symlink) are each refused by `zsq tune`
with one line and exit 2, the database unchanged; a library whose bytes do not match batch.json, or a
batch naming a file outside its folder, makes the runner refuse (exit 2) before loading anything.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tvm")

import zsq_tvm  # noqa: E402
from zsq_tvm.cli import main  # noqa: E402
from zsq_tvm.tune_files import BATCH, RESULTS, tune_files  # noqa: E402
from zsq_tvm.tuning_db import RECORDS, TuningDB  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RUNNER = ROOT / "tools" / "tune_runner.py"
TGT = "host-generic"


def _runner(rdir, timeout=120):
    return subprocess.run([sys.executable, str(RUNNER), str(rdir)], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "TVM_NUM_THREADS": "1"})


@pytest.fixture(scope="module")
def loop(tmp_path_factory):
    d = tmp_path_factory.mktemp("files")
    q = zsq_tvm.quantize("quartznet-tiny", zsq_tvm.QuantConfig(frames=48, time_mask=False))
    q.save(d / "q")
    out, db = d / "out", d / "db"
    kw = dict(target=TGT, db_path=db, per_round=3, population=16)
    r1 = tune_files(d / "q", out, **kw)
    assert r1["round"] == 1 and 1 <= r1["candidates"] <= 3 and r1["batch_bytes"] < 48 << 20
    rd1 = out / "round-001"
    assert "tools/tune_runner.py" in r1["command"] and str(rd1) in r1["command"]
    batch = json.loads((rd1 / BATCH).read_text())
    assert {c["file"] for c in batch["candidates"]} <= {p.name for p in rd1.glob("*.so")}
    # no results yet: nothing new, the same command again
    w = tune_files(d / "q", out, **kw)
    assert w["waiting"] == "round-001" and w["command"] == r1["command"] and not (out / "round-002").exists()
    p = _runner(rd1)
    assert p.returncode == 0, p.stderr
    res = json.loads((rd1 / RESULTS).read_text())
    ok = [r for r in res["results"] if "run_secs" in r]
    assert len(res["results"]) == r1["candidates"] and ok
    r2 = tune_files(d / "q", out, **kw)
    assert r2["ingested"]["measured"] == len(ok) and r2["round"] == 2 and r2["records"] == len(ok)
    assert not list(rd1.glob("*.so"))  # measured libraries are removed
    return {"d": d, "q": q, "out": out, "db": db, "measured": len(ok), "kw": kw}


def test_round_trip_records_apply_bit_exact(loop):
    from relax_passes.reference import run_reference

    db = TuningDB(loop["db"], zsq_tvm.targets.get_target(TGT).make(), create=False)
    recs = db.get_all_tuning_records()
    assert len(recs) == loop["measured"] and all(0 < float(r.run_secs[0]) < 1 for r in recs)
    rc = main(["compile", str(loop["d"] / "q"), "--target", TGT, "--db", str(loop["db"]), "-o",
               str(loop["d"] / "b")])
    assert rc == 0
    b = zsq_tvm.compile(loop["q"], target=TGT, tuning_db=loop["db"])
    assert b.integer_only["tuning"]["applied"] >= 1
    mel = np.random.default_rng(2).standard_normal((1, 64, 48)).astype(np.float32) * 2
    y = b.run(mel)
    assert np.array_equal(y, run_reference(loop["q"].mod, mel))
    assert np.array_equal(zsq_tvm.Build.load(loop["d"] / "b").run(mel), y)


def _good(rdir):
    import hashlib

    batch_raw = (rdir / BATCH).read_bytes()
    batch = json.loads(batch_raw)
    return {"zsq_tune_results": 1, "round": batch["round"], "batch_sha256": hashlib.sha256(batch_raw).hexdigest(),
            "results": [{"id": c["id"], "run_secs": [1e-4]} for c in batch["candidates"]]}


def _attacks(rdir):
    g = _good(rdir)
    first = g["results"][0]["id"]

    def with_results(rs):
        return json.dumps({**g, "results": rs})

    yield "nan", json.dumps(g).replace("0.0001", "NaN", 1)
    yield "infinity", json.dumps(g).replace("0.0001", "1e999", 1)
    yield "negative", with_results([{"id": first, "run_secs": [-1e-4]}])
    yield "zero", with_results([{"id": first, "run_secs": [0]}])
    yield "huge", with_results([{"id": first, "run_secs": [1e300]}])
    yield "bool", with_results([{"id": first, "run_secs": [True]}])
    yield "unknown id", with_results([{"id": "c999", "run_secs": [1e-4]}])
    yield "repeated id", with_results([{"id": first, "run_secs": [1e-4]}, {"id": first, "run_secs": [1e-4]}])
    yield "extra key", json.dumps({**g, "extra": 1})
    yield "other batch", json.dumps({**g, "batch_sha256": "0" * 64})
    yield "both", with_results([{"id": first, "run_secs": [1e-4], "error": "x"}])
    yield "not json", "{\"zsq_tune_results\": 1,"
    yield "oversize", json.dumps(g) + " " * (1 << 20)


def test_hostile_results_are_refused_and_db_unchanged(loop, capsys):
    rdir = loop["out"] / "round-002"
    before = (loop["db"] / RECORDS).read_bytes()
    args = ["tune", str(loop["d"] / "q"), "--target", TGT, "--db", str(loop["db"]), "--runner",
            f"files:{loop['out']}"]
    for name, text in _attacks(rdir):
        (rdir / RESULTS).write_text(text)
        capsys.readouterr()
        assert main(args) == 2, name
        err = capsys.readouterr().err.strip()
        assert "refused" in err and len(err.splitlines()) == 1, (name, err)
        assert (loop["db"] / RECORDS).read_bytes() == before, name
        assert not (loop["out"] / "round-003").exists() and not (rdir / "ingested.json").exists()
    (rdir / RESULTS).unlink()
    os.symlink(loop["d"] / "q" / "manifest.json", rdir / RESULTS)
    assert main(args) == 2 and "not a regular file" in capsys.readouterr().err
    (rdir / RESULTS).unlink()


def test_runner_refuses_a_library_that_does_not_match_its_batch(loop, tmp_path):
    rdir = tmp_path / "round-002"
    shutil.copytree(loop["out"] / "round-002", rdir)
    batch = json.loads((rdir / BATCH).read_text())
    lib = rdir / batch["candidates"][-1]["file"]
    data = bytearray(lib.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other bytes
    lib.write_bytes(bytes(data))
    p = _runner(rdir)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and "sha256" in p.stderr
    assert not (rdir / RESULTS).exists()
    batch["candidates"][0]["file"] = "../c000.so"  # a file outside the round folder
    (rdir / BATCH).write_text(json.dumps(batch))
    p = _runner(rdir)
    assert p.returncode == 2 and "not a valid batch" in p.stderr and not (rdir / RESULTS).exists()


def test_cli_argument_errors(loop, capsys):
    q = str(loop["d"] / "q")
    assert main(["tune", q, "--runner", "rpc:x"]) == 2
    assert main(["tune", q, "--runner", f"files:{loop['out']}", "--rpc-tracker", "h:1", "--rpc-key", "k"]) == 2
    assert main(["tune", q, "--per-round", "4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all("--" in e for e in err)


def test_a_trace_with_an_index_map_is_stored_and_replays(tmp_path):
    """GPU tensor-core schedules put an IndexMap into the trace; TVM 0.27's `TuningRecord.as_json` cannot
    write it, `tuning_db.record_to_json` writes the JSON graph string that `from_json` reads back."""
    import tvm
    from tvm.s_tir import meta_schedule as ms

    from zsq_tvm.build import lower
    from zsq_tvm.targets import get_target
    from zsq_tvm.tuning_db import record_to_json

    tgt = get_target(TGT).make()
    x = tvm.relax.Var("x", tvm.relax.TensorType((4, 8), "int32"))
    bb = tvm.relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            o = bb.emit_output(tvm.relax.op.add(x, x))
        bb.emit_func_output(o)
    task = ms.relax_integration.extract_tasks(lower(bb.get(), tgt)[0], tgt)[0]
    mod = task.dispatched[0]
    sch = tvm.s_tir.Schedule(mod)
    blk = sch.get_child_blocks(sch.get_sblock("root"))[0]
    sch.transform_layout(blk, ("write", 0), lambda i, j: (j, i))
    db = TuningDB(tmp_path / "db", tgt)
    wl = db.commit_workload(mod)
    rec = ms.database.TuningRecord(sch.trace, wl, [1e-5], tgt, ms.arg_info.ArgInfo.from_prim_func(mod["main"]))
    with pytest.raises(TypeError):
        rec.as_json()
    js = json.loads(json.dumps(record_to_json(rec)))
    back = ms.database.TuningRecord.from_json(js, wl).as_measure_candidate().sch.mod
    tvm.ir.assert_structural_equal(back, sch.mod)
    db.commit_tuning_record(rec)
    assert TuningDB(tmp_path / "db", tgt, create=False).loaded == 1
