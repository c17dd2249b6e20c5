"""MetaSchedule tuning split across two machines through files (``zsq tune DIR --runner files:OUT``).

The way TVM's RPC runner splits builder and runner, but through a folder: this machine (full TVM, nvcc,
the XGBoost cost model) searches and builds candidates; a small runner on the device machine
(``tools/tune_runner.py``, runtime-only TVM) times them and writes the results; they go back into the
MetaSchedule database here, whose records train the cost model that picks the next batch.

One call is one round:

1. if the newest ``OUT/round-NNN/`` holds the runner's ``results.json``, it is read as hostile input
   (at most 1 MiB, a strict schema, the batch's SHA-256, finite times in (0, 3600] s, only ids of the
   batch, each once) and every measured candidate is committed to the database as a MetaSchedule
   record; any flaw refuses the whole file (one line, exit 2) and the database is unchanged;
2. the next batch is searched (evolutionary search, the XGBoost model trained on the database's records,
   candidates already measured skipped) and built here into shared libraries (``.so``; a CUDA one
   embeds its kernels' binary, so the runtime-only runner loads it with ``tvm.runtime.load_module``);
3. ``OUT/round-NNN+1/`` is written (atomically: a temporary folder renamed): the libraries,
   ``batch.json`` (id, file, size, SHA-256 and the argument shapes/dtypes of each candidate: what the
   runner needs) and ``pending.json`` (each candidate's workload and trace: what maps results back to
   records), keeping the libraries under a size cap (48 MiB: the device tool carries 64 MiB); the call
   returns the runner command.

A round whose results have not come back yet is left alone (the call says so and prints the command
again), so the loop resumes in any later session; the database itself is the resumable
:class:`zsq_tvm.tuning_db.TuningDB`.  Failed candidates (build here or run there) are not recorded.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

from zsq_tvm import artifacts
from zsq_tvm.core.errors import ConfigError
from zsq_tvm.targets import get_target
from zsq_tvm.tune import (_build_candidate, _check_db_folder, _register_tensor_intrinsics, extract_tasks,
                          lowered_for_tuning, tuning_target)
from zsq_tvm.tuning_db import TuningDB, default_db_dir, record_to_json, target_key

__all__ = ["tune_files", "read_results", "BATCH", "RESULTS", "PENDING"]

BATCH, RESULTS, PENDING, INGESTED = "batch.json", "results.json", "pending.json", "ingested.json"
FORMAT = 1
MAX_RESULTS_BYTES = 1 << 20
MAX_RUN_SECS = 3600.0
MAX_REPEATS = 1000
ROUND_RE = re.compile(r"^round-(\d{3,6})$")
EVALUATOR = {"number": 3, "repeat": 1, "min_repeat_ms": 0}
RUNNER_SCRIPT = "tools/tune_runner.py"
# every CUDA arch from sm_75 to sm_90 allows these per block (48 KiB static shared memory)


def _write_json(p: Path, obj) -> None:
    tmp = p.with_name(p.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, p)


def _rounds(out: Path) -> list[tuple[int, Path]]:
    if not out.is_dir():
        return []
    found = []
    for p in out.iterdir():
        m = ROUND_RE.match(p.name)
        if m and p.is_dir() and not p.is_symlink():
            found.append((int(m.group(1)), p))
    return sorted(found)


def _command(rdir: Path) -> str:
    return f"python3 {RUNNER_SCRIPT} {rdir}"


def _bad(path: Path, why: str):
    return ConfigError(f"runner results {str(path)!r} refused: {why}",
                       "rerun the runner on that round's batch (python3 tools/tune_runner.py ROUND_DIR) "
                       "or delete the results file")


def _no_constants(name):
    raise ValueError(f"{name} is not a number JSON allows")


def read_results(rdir: Path) -> dict:
    """Validate ``rdir/results.json`` against ``rdir/batch.json``: ``{id: run_secs list or None (failed)}``.

    The file came from another machine: at most 1 MiB, a regular file, strict JSON (no NaN/Infinity),
    exactly the schema below, the batch's SHA-256 and round, only ids of the batch (each at most once),
    1..1000 finite times in (0, 3600] seconds.  Any flaw raises a ConfigError; nothing is returned in part.
    """
    path = rdir / RESULTS
    try:
        st = os.lstat(path)
    except OSError as e:
        raise _bad(path, f"cannot be read ({type(e).__name__})") from None
    import stat

    if not stat.S_ISREG(st.st_mode):
        raise _bad(path, "not a regular file")
    if st.st_size > MAX_RESULTS_BYTES:
        raise _bad(path, f"{st.st_size:,} bytes (at most {MAX_RESULTS_BYTES:,})")
    with open(path, "rb") as f:
        raw = f.read(MAX_RESULTS_BYTES + 1)
    try:
        obj = json.loads(raw.decode("utf-8"), parse_constant=_no_constants)
    except (ValueError, UnicodeDecodeError) as e:
        raise _bad(path, f"not strict JSON ({str(e)[:80]})") from None
    batch_raw = (rdir / BATCH).read_bytes()
    batch = json.loads(batch_raw)
    keys = {"zsq_tune_results", "round", "batch_sha256", "results"}
    if not isinstance(obj, dict) or set(obj) != keys:
        raise _bad(path, f"top level must be an object with exactly the keys {sorted(keys)}")
    if obj["zsq_tune_results"] != FORMAT or type(obj["round"]) is not int or obj["round"] != batch["round"]:
        raise _bad(path, f"not format {FORMAT} results of round {batch['round']}")
    if obj["batch_sha256"] != hashlib.sha256(batch_raw).hexdigest():
        raise _bad(path, "measured another batch.json (batch_sha256 differs)")
    ids = {c["id"] for c in batch["candidates"]}
    res = obj["results"]
    if not isinstance(res, list) or len(res) > len(ids):
        raise _bad(path, f"results must be a list of at most {len(ids)} entries")
    out: dict = {}
    for i, r in enumerate(res):
        if not isinstance(r, dict) or "id" not in r or not set(r) <= {"id", "run_secs", "error"} \
                or ("run_secs" in r) == ("error" in r):
            raise _bad(path, f"results[{i}] must be {{id, run_secs}} or {{id, error}}")
        cid = r["id"]
        if not isinstance(cid, str) or cid not in ids:
            raise _bad(path, f"results[{i}] names an unknown candidate id {str(cid)[:40]!r}")
        if cid in out:
            raise _bad(path, f"candidate {cid!r} appears twice")
        if "error" in r:
            if not isinstance(r["error"], str) or len(r["error"]) > 4000:
                raise _bad(path, f"results[{i}].error must be a string of at most 4000 characters")
            out[cid] = None
            continue
        secs = r["run_secs"]
        if not isinstance(secs, list) or not 1 <= len(secs) <= MAX_REPEATS:
            raise _bad(path, f"results[{i}].run_secs must be a list of 1..{MAX_REPEATS} times")
        for t in secs:
            if type(t) not in (int, float) or not math.isfinite(t) or not 0 < t <= MAX_RUN_SECS:
                raise _bad(path, f"results[{i}] ({cid}) has a time {str(t)[:30]} outside (0, {MAX_RUN_SECS:g}] s")
        out[cid] = [float(t) for t in secs]
    return out


def _ingest(rdir: Path, db, tgt) -> dict:
    """Commit the validated results of round ``rdir`` to ``db`` (all or nothing before the first commit)."""
    from tvm.s_tir.meta_schedule.database import TuningRecord, Workload

    measured = read_results(rdir)
    pending = json.loads((rdir / PENDING).read_text())
    if pending.get("key") != target_key(tgt):
        raise ConfigError(f"round {str(rdir)!r} was built for class {pending.get('key')!r}, not {target_key(tgt)!r}",
                          "pass the --target that round was built for")
    recs = []
    wls = {}
    for cid, secs in measured.items():
        if secs is None:
            continue
        c = pending["candidates"].get(cid)
        if c is None:
            raise _bad(rdir / RESULTS, f"candidate {cid!r} is in batch.json but not in {PENDING}")
        if c["shash"] not in wls:
            wls[c["shash"]] = Workload.from_json(pending["workloads"][c["shash"]])
        recs.append((c, secs))
    records = []
    for c, secs in recs:
        js = list(c["record"])
        js[1] = secs
        records.append(TuningRecord.from_json(js, wls[c["shash"]]))
    for r in records:  # all parsed above; only now the database changes
        db.commit_tuning_record(r)
    info = {"round": pending["round"], "measured": len(recs), "failed": len(measured) - len(recs),
            "missing": len(pending["candidates"]) - len(measured)}
    _write_json(rdir / INGESTED, info)
    for p in rdir.glob("*.so"):  # the libraries have done their work: keep OUT small
        p.unlink()
    return info


def _export_so(mod) -> str:
    """LocalBuilder's export step: a shared library the runtime-only runner loads (no compiler there)."""
    d = tempfile.mkdtemp(prefix="zsq-cand-")
    p = os.path.join(d, "cand.so")
    mod.export_library(p)
    return p


def _search(tasks, db, tgt_cfg, per_round: int, seed: int, population: int, work: str):
    """``[(ctx, candidate)]``: the next batch, spread over the tasks with the fewest records first."""
    from tvm.s_tir import meta_schedule as ms
    from tvm_ffi import structural_hash

    strategy = ms.search_strategy.EvolutionarySearch(population_size=population,
                                                     init_min_unmeasured=min(50, population))
    _register_tensor_intrinsics()
    ctxs, _ = ms.relax_integration.extracted_tasks_to_tune_contexts(tasks, work, strategy=strategy, seed=seed)
    cm = ms.cost_model.CostModel.create("xgb", num_tuning_cores=max(1, (os.cpu_count() or 2) // 2))
    seen = set()
    counts = []
    for ctx in ctxs:
        n = 0
        if db.has_workload(ctx.mod):
            recs = [r for r in db.get_top_k(db.commit_workload(ctx.mod), 10**6) if r.run_secs]
            cands = [r.as_measure_candidate() for r in recs]
            seen.update(structural_hash(c.sch.mod) for c in cands)
            if cands:
                cm.update(ctx, cands, [ms.runner.RunnerResult(r.run_secs, None) for r in recs])
            n = len(recs)
        counts.append(n)
    per_task = max(1, -(-per_round // len(ctxs)))
    picked = []
    for i in sorted(range(len(ctxs)), key=lambda i: (counts[i], i)):
        want = min(per_task, per_round - len(picked))
        if want <= 0:
            break
        ctx = ctxs[i]
        ctx.pre_tuning(max_trials=want * 4, num_trials_per_iter=want * 2,
                       design_spaces=ctx.space_generator.generate_design_space(ctx.mod), database=db, cost_model=cm)
        got = 0
        for c in ctx.generate_measure_candidates() or []:
            h = structural_hash(c.sch.mod)
            if h in seen or got >= want:
                continue
            seen.add(h)
            picked.append((ctx, c))
            got += 1
        ctx.post_tuning()
    return picked, sum(counts)


def tune_files(source, out_dir, target: str = "host", trials: int = 64, db_path=None, per_round: int = 16,
               seed: int = 0, population: int = 512, batch_mib: float = 48.0, builders: int = 1,
               build_timeout: float = 180.0, lowered=None) -> dict:
    """One round of the two-machine loop (module doc); returns a summary dict with ``command`` (the runner
    command to run next, on the device machine) or ``done`` (the database holds ``trials`` records)."""
    from tvm.s_tir import meta_schedule as ms

    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise ConfigError(f"--trials {trials!r} must be a positive integer", "pass e.g. --trials 64")
    if isinstance(per_round, bool) or not isinstance(per_round, int) or per_round < 1:
        raise ConfigError(f"--per-round {per_round!r} must be a positive integer", "pass e.g. --per-round 16")
    if not (isinstance(batch_mib, (int, float)) and 0 < batch_mib <= 1024):
        raise ConfigError(f"batch size cap {batch_mib!r} MiB must be in (0, 1024]", "pass e.g. 48")
    out = Path(os.fspath(out_dir))
    if os.path.lexists(out) and not out.is_dir():
        raise ConfigError(f"--runner files:{out} exists and is not a folder", "pass a folder (new or an earlier one)")
    if db_path is not None:
        _check_db_folder(Path(os.fspath(db_path)))
    spec = get_target(target)
    tgt = spec.make()
    if str(tgt.kind.name) != "llvm":  # reading a GPU record replays its trace: tensor-core intrinsics
        _register_tensor_intrinsics()
    db_dir = Path(db_path) if db_path else default_db_dir(tgt)
    db = TuningDB(db_dir, tgt)
    if not db.usable:
        raise ConfigError(f"tuning database {str(db_dir)!r} belongs to another target or is not a zsq database",
                          "pass another --db folder (or remove that one)")
    summary = {"db": str(db_dir), "target": str(tgt), "key": target_key(tgt), "out": str(out), "ingested": None}
    rounds = _rounds(out)
    nxt = rounds[-1][0] + 1 if rounds else 1
    if rounds and not (rounds[-1][1] / INGESTED).exists():
        rdir = rounds[-1][1]
        if not (rdir / RESULTS).exists():
            summary.update(waiting=rdir.name, command=_command(rdir), round=rounds[-1][0])
            return summary
        summary["ingested"] = _ingest(rdir, db, tgt)
    # the next batch
    if lowered is None:
        lowered = lowered_for_tuning(source, spec, tgt)
    task_tgt = tuning_target(tgt)
    cfg = dict(task_tgt.export())
    tasks = extract_tasks(lowered, task_tgt)
    summary["tasks"] = len(tasks)
    have = 0
    for t in tasks:
        m = t.dispatched[0]
        have += len(db.get_top_k(db.commit_workload(m), 10**6)) if db.has_workload(m) else 0
    summary["records"] = have
    if not tasks or have >= trials:
        summary["done"] = True
        return summary
    import logging

    logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.WARNING)
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    rdir = out / f"round-{nxt:03d}"
    tmp = out / f".round-{nxt:03d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    cap = int(batch_mib * (1 << 20))
    built = []
    try:
        with tempfile.TemporaryDirectory(prefix="zsq-tune-") as work:
            picked, _ = _search(tasks, db, cfg, min(per_round, trials - have), seed + nxt, population, work)
            builder = ms.builder.LocalBuilder(max_workers=builders, timeout_sec=build_timeout,
                                              f_build=_build_candidate, f_export=_export_so)
            built = builder.build([ms.builder.BuilderInput(c.sch.mod, ctx.target) for ctx, c in picked])
        cands, pend, wls, total, failed, dropped, unserializable, first_error = [], {}, {}, 0, 0, 0, 0, None
        for k, ((ctx, c), b) in enumerate(zip(picked, built)):
            if b.error_msg is not None:
                failed += 1
                if not first_error:
                    first_error = (str(b.error_msg).strip().splitlines() or ["?"])[-1][-300:]
                continue
            src = Path(b.artifact_path)
            size = src.stat().st_size
            if total + size > cap:
                dropped += 1
                shutil.rmtree(src.parent, ignore_errors=True)
                continue
            wl = db.commit_workload(ctx.mod)
            try:  # a record the database could not store is not worth measuring
                rec = record_to_json(ms.database.TuningRecord(c.sch.trace, wl, None, ctx.target, c.args_info))
            except TypeError:
                unserializable += 1
                shutil.rmtree(src.parent, ignore_errors=True)
                continue
            cid = f"c{k:03d}"
            shutil.move(str(src), tmp / f"{cid}.so")
            shutil.rmtree(src.parent, ignore_errors=True)
            total += size
            wjs = wl.as_json()
            sh = str(wjs[0])
            wls[sh] = wjs
            args = []
            for a in c.args_info:
                kind, dtype, shape = a.as_json()
                args.append({"dtype": str(dtype), "shape": [int(s) for s in shape]})
            cands.append({"id": cid, "file": f"{cid}.so", "bytes": size, "sha256": artifacts.sha256_file(tmp / f"{cid}.so"),
                          "task": ctx.task_name, "args": args})
            pend[cid] = {"shash": sh, "record": rec}
        if not cands:
            raise ConfigError(f"no candidate of round {nxt} could be built ({failed} failed, {dropped} over the "
                              f"{batch_mib:g} MiB cap, {unserializable} with a trace that has no JSON form; first "
                              f"build error: {first_error})", "raise the cap, or check the target's compiler (nvcc)")
        device = "cuda" if str(tgt.kind.name) == "cuda" else "cpu"
        _write_json(tmp / PENDING, {"zsq_tune_pending": FORMAT, "round": nxt, "target": str(tgt),
                                    "key": target_key(tgt), "workloads": wls, "candidates": pend})
        _write_json(tmp / BATCH, {"zsq_tune_batch": FORMAT, "round": nxt, "target": str(tgt), "device": device,
                                  **EVALUATOR, "candidates": cands})
        os.replace(tmp, rdir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        for b in built:  # libraries not moved into the round (an error midway): their temporary folders
            d = Path(b.artifact_path).parent if b.artifact_path else None
            if d is not None and d.name.startswith("zsq-cand-"):
                shutil.rmtree(d, ignore_errors=True)
    summary.update(round=nxt, batch=str(rdir), candidates=len(cands), build_failed=failed, over_cap=dropped,
                   unserializable=unserializable, first_build_error=first_error, batch_bytes=total,
                   seconds=time.perf_counter() - t0, command=_command(rdir))
    return summary
