"""MetaSchedule tuning of a zsq model's kernels into a resumable database (``zsq tune``).

``zsq tune DIR --target host --trials N`` lowers the quantized model exactly as ``zsq compile`` does
(:func:`zsq_tvm.build.lower`), extracts one MetaSchedule task per *distinct* fused PrimFunc
(identical shapes are one task, weighted by their count; the hand-written ``host-vnni`` kernels are
skipped) and tunes them with the evolutionary search and the XGBoost cost model, on this machine or on
RPC devices behind a tracker (``--rpc-tracker HOST:PORT --rpc-key KEY``).

The records go to a resumable database (:mod:`zsq_tvm.tuning_db`): ``zsq tune`` again resumes, the trial
budget counting the records already there, and the search starting from them.  Without ``--db`` that is
``$ZSQ_TUNING_DB`` or else the per-user cache ``${XDG_CACHE_HOME:-~/.cache}/zsq-tvm/tuning/<key>/``, which
``zsq compile`` then applies; a new user-cache database starts as a copy of the log shipped for the key
(so tuning extends it, and the shipped records keep applying).  Nothing is ever written into the package.
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
from pathlib import Path

from zsq_tvm import artifacts
from zsq_tvm.build import lower
from zsq_tvm.core.errors import ArtifactError, ConfigError, NotAvailableError
from zsq_tvm.pipeline import load
from zsq_tvm.targets import get_target
from zsq_tvm.tuning_db import RECORDS, WORKLOADS, TuningDB, default_db_dir, shipped_db_dir, target_key

__all__ = ["extract_tasks", "tune", "check_rpc"]

























def extract_tasks(lowered, tgt) -> list:
    """Distinct tunable kernels of a lowered module (MetaSchedule dedups identical workloads: ``weight``)."""
    from tvm.s_tir import meta_schedule as ms

    hand = {gv.name_hint for gv, f in lowered.functions.items()
            if getattr(f, "attrs", None) is not None and "zsq.kernel" in f.attrs}
    tasks = ms.relax_integration.extract_tasks(lowered, tgt)
    return [t for t in tasks if t.task_name not in hand and not t.task_name.startswith("zsq_")
            and not t.mod.attrs.get("tirx.is_scheduled", False)]


def check_rpc(tracker: str, key: str, timeout: float = 10.0):
    """``(host, port)`` of a reachable tracker that has a server for ``key``, else a ZsqError (no hang)."""
    host, _, port = tracker.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--rpc-tracker {tracker!r} is not HOST:PORT", "pass e.g. --rpc-tracker 127.0.0.1:9190")
    port = int(port)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as e:
        raise NotAvailableError(f"RPC tracker {tracker} is not reachable ({type(e).__name__}: {e})",
                                "start it with `python -m tvm.exec.rpc_tracker --host HOST --port PORT` or fix "
                                "--rpc-tracker") from None
    from tvm import rpc

    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout)
    try:
        summary = rpc.connect_tracker(host, port).summary()
    except Exception as e:
        raise NotAvailableError(f"RPC tracker {tracker} did not answer ({type(e).__name__})",
                                "check that HOST:PORT is a TVM RPC tracker") from None
    finally:
        socket.setdefaulttimeout(old)
    queue = summary.get("queue_info", {})
    free = queue.get(key, {}).get("free", 0) + queue.get(key, {}).get("pending", 0)
    servers = [s for s in summary.get("server_info", []) if str(s.get("key", "")).split(":")[-1] == key]
    if key not in queue and not servers or (not free and not servers):
        raise NotAvailableError(f"no RPC server is registered with key {key!r} at tracker {tracker} "
                                f"(keys there: {sorted(queue) or 'none'})",
                                f"start one with `python -m tvm.exec.rpc_server --tracker {tracker} --key {key}` "
                                f"or pass the right --rpc-key")
    return host, port


def _progress_callback(pbar, errors: list, counts: list):
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback

    @derived_object
    class _Progress(PyMeasureCallback):
        def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
            ok = sum(1 for r in runner_results if r.error_msg is None)
            for b, r in zip(builder_results, runner_results):
                msg = b.error_msg or r.error_msg
                if msg and len(errors) < 3:
                    errors.append(str(msg)[-600:])
            counts[0] += len(measure_candidates)
            counts[1] += ok
            pbar.update(len(measure_candidates))
            pbar.set_postfix(task=task_id, ok=ok)

    return _Progress()


def _register_tensor_intrinsics() -> None:
    """``import tvm.s_tir.tensor_intrin`` (every MetaSchedule TuneContext does it first) in ~12 s, not ~60 s.

    That import parses the tensor intrinsics of every backend from TVMScript, and the parser calls
    ``inspect.stack()`` for each of them.  For each frame of the import machinery on the stack (file
    ``<frozen importlib._bootstrap>``, not on disk) ``inspect.getmodule`` then scans all of ``sys.modules``
    (2000+ modules: TVM loads torch), which was 4/5 of that import's CPU time on a 2-core machine.
    Recording in inspect's file->module cache which module those two frozen files are makes each lookup
    a dict hit; the frame info inspect returns is unchanged (frozen modules have no source either way).
    """
    import inspect
    import sys

    if "tvm.s_tir.tensor_intrin" in sys.modules:
        return
    cache = getattr(inspect, "modulesbyfile", None)
    if isinstance(cache, dict):
        for name in ("importlib._bootstrap", "importlib._bootstrap_external"):
            if name in sys.modules:
                cache.setdefault(f"<frozen {name}>", name)
    import tvm.s_tir.tensor_intrin  # noqa: F401


def _build_candidate(mod, target, _params):
    """MetaSchedule's builder step, run in the fresh worker process LocalBuilder starts for every batch.

    MetaSchedule's default build first imports ``tvm.s_tir.tensor_intrin``, i.e. every batch of candidates
    pays :func:`_register_tensor_intrinsics` again (a minute of CPU without its fix).  A CPU (llvm)
    candidate needs none of those intrinsics to build: they are looked up while scheduling, in the
    tuning process, and arrive here already inlined, so the import is skipped.  Other targets get it,
    fast: TVM's compiler looks up functions it registers (the CUDA ldmatrix index maps).
    """
    if str(target.kind.name) != "llvm":
        _register_tensor_intrinsics()
    from tvm.driver import build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    return build(RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod), target=target)


#: per-block limits MetaSchedule's GPU rules need, which the plain cuda targets do not carry (the nvidia/* tags do)
CUDA_LIMITS = {"max_threads_per_block": 1024, "max_shared_memory_per_block": 49152, "registers_per_block": 65536}


def lowered_for_tuning(source, spec, tgt):
    """The module tuning sees: ``source`` (a quantized or build folder, or a Relax module), the target's own
    rewrite (its hand-written kernels), lowered as ``zsq compile`` lowers it."""
    import tvm

    mod = source if isinstance(source, tvm.IRModule) else _load_module(source)[0]
    if spec.prepare is not None:
        mod = spec.prepare(mod)
    return lower(mod, tgt)[0]


def tuning_target(tgt):
    """``tgt`` as MetaSchedule needs it: the core count of a CPU, the per-block limits of a GPU (the database is
    keyed by the compile target, not this one)."""
    import tvm

    cfg = dict(tgt.export())
    if cfg.get("kind") == "llvm" and not cfg.get("num-cores"):
        import psutil

        cfg["num-cores"] = int(psutil.cpu_count(logical=False) or os.cpu_count() or 1)
    if cfg.get("kind") == "cuda":
        for k, v in CUDA_LIMITS.items():
            cfg.setdefault(k, v)
    return tvm.target.Target(cfg)


def _load_module(path):
    """Quantized dir or build dir -> the integer Relax module (and the build's target name, if any)."""

    p = Path(path)
    if not p.is_dir():
        raise ArtifactError(f"{str(path)!r} is not a directory", "pass a `zsq quantize` or `zsq compile` output dir")
    m = artifacts.read_manifest(p, verify=False)  # only its kind: the load below verifies the folder
    if m.get("frames", 0) is None:
        raise ConfigError(f"{str(path)!r} takes any length (symbolic T); MetaSchedule tunes kernels of fixed shapes",
                          "tune a build of the length you deploy (zsq quantize ... --frames T); the symbolic-T "
                          "build's convolutions already run on the hand-written x86 kernels")
    if m.get("kind") == artifacts.KIND_BUILD:
        from zsq_tvm.build import Build

        b = Build.load(p, load_library=False)  # no code of it runs
        return b.module(), b.target

    return load(p).mod, None


def _check_db_folder(p: Path) -> None:
    if os.path.lexists(p) and not p.is_dir():
        raise ConfigError(f"--db {str(p)!r} exists and is not a folder", "pass a folder (new or an earlier --db)")
    if not p.is_dir():
        artifacts.check_output_file(p, flag="--db")  # a folder that can be created there


def _seed_from_shipped(db_dir: Path, tgt) -> None:
    """A new user-cache database starts as a copy of the shipped log of its key (read, never written)."""
    import shutil

    src = shipped_db_dir(tgt)
    if (db_dir / WORKLOADS).exists() or (db_dir / RECORDS).exists() or not (src / RECORDS).is_file():
        return
    db_dir.mkdir(parents=True, exist_ok=True)
    for name in (WORKLOADS, RECORDS):
        if (src / name).is_file():
            tmp = db_dir / (name + ".tmp")
            shutil.copyfile(src / name, tmp)  # contents only: a read-only install's file modes stay behind
            os.replace(tmp, db_dir / name)


def tune(source, target: str = "host", trials: int = 64, db_path=None, rpc_tracker: str | None = None,
         rpc_key: str | None = None, per_iter: int = 16, seed: int = 0, progress: bool = True,
         rpc_timeout: float = 10.0, lowered=None, builders: int = 1, build_timeout: float = 180.0, *,
         population: int = 512) -> dict:
    """Tune the kernels of ``source`` (quantized/build dir or Relax module); returns a summary dict.

    ``trials`` is the total number of measured candidates across all tasks, *including* records
    already in the database (so a second run with the same ``trials`` does nothing, a larger one resumes).
    ``population`` is the evolutionary search's population per round (MetaSchedule's default, 512); the
    cost of each round grows with it, so a run of a handful of trials (a smoke test) can pass e.g. 16.
    """
    from tqdm.auto import tqdm
    from tvm.s_tir import meta_schedule as ms

    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise ConfigError(f"--trials {trials!r} must be a positive integer", "pass e.g. --trials 64")
    if isinstance(population, bool) or not isinstance(population, int) or population < 1:
        raise ConfigError(f"population {population!r} must be a positive integer", "pass e.g. population=512")
    if (rpc_tracker is None) != (rpc_key is None):
        raise ConfigError("--rpc-tracker and --rpc-key go together", "pass both or neither")
    if db_path is not None:  # before minutes of task extraction: a file, or a folder that cannot be made
        _check_db_folder(Path(os.fspath(db_path)))
    spec = get_target(target)
    if not spec.runs_on_host and rpc_tracker is None:
        raise NotAvailableError(f"target {target!r} does not run on this machine",
                                "tune it through --rpc-tracker or --runner files:DIR")
    tgt = spec.make()
    if rpc_tracker is not None:
        host, port = check_rpc(rpc_tracker, rpc_key, rpc_timeout)
    if lowered is None:
        lowered = lowered_for_tuning(source, spec, tgt)
    tasks = extract_tasks(lowered, tuning_target(tgt))
    db_dir = Path(db_path) if db_path else default_db_dir(tgt)
    if db_path is None and not os.environ.get("ZSQ_TUNING_DB"):
        _seed_from_shipped(db_dir, tgt)
    db = TuningDB(db_dir, tgt)
    if not db.usable:
        raise ConfigError(f"tuning database {str(db_dir)!r} belongs to another target or is not a zsq database",
                          "pass another --db folder (or remove that one)")
    names = [t.task_name for t in tasks]
    done = {}
    for t in tasks:
        m = t.dispatched[0]
        done[t.task_name] = len(db.get_top_k(db.commit_workload(m), 10**6)) if db.has_workload(m) else 0
    already = sum(done.values())
    remaining = max(0, trials - already)
    summary = {"db": str(db_dir), "target": str(tgt), "key": target_key(tgt), "tasks": len(tasks),
               "kernels": int(sum(t.weight for t in tasks)), "task_names": names, "records_before": already,
               "trials_run": 0, "seconds": 0.0}
    if not tasks or remaining == 0:
        summary["records_after"] = already
        return summary
    if rpc_tracker is not None:
        runner = ms.runner.RPCRunner(ms.runner.RPCConfig(tracker_host=host, tracker_port=port, tracker_key=rpc_key,
                                                         session_timeout_sec=max(10, int(rpc_timeout))),
                                     ms.runner.EvaluatorConfig(number=3, repeat=1, min_repeat_ms=0))
    else:
        runner = ms.runner.LocalRunner(ms.runner.EvaluatorConfig(number=3, repeat=1, min_repeat_ms=0))
    errors: list = []
    counts = [0, 0]  # measured, ran without error
    import logging

    logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.WARNING)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="zsq-tune-") as work, \
            tqdm(total=remaining, desc=f"tune {len(tasks)} task(s)", unit="trial", disable=not progress) as pbar:
        strategy = "evolutionary" if population == 512 else ms.search_strategy.EvolutionarySearch(
            population_size=population, init_min_unmeasured=min(50, population))
        _register_tensor_intrinsics()  # the tuning contexts need them; this is the fast way in
        ctxs, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(tasks, work, strategy=strategy,
                                                                              seed=seed)
        builder = ms.builder.LocalBuilder(max_workers=builders, timeout_sec=build_timeout,
                                          f_build=_build_candidate)
        ms.tune_tasks(tasks=ctxs, task_weights=weights, work_dir=work, max_trials_global=remaining,
                      num_trials_per_iter=min(per_iter, remaining), builder=builder,
                      runner=runner, database=db, cost_model="xgb",
                      measure_callbacks=ms.measure_callback.MeasureCallback.create("default")
                      + [_progress_callback(pbar, errors, counts)])
    summary["trials_run"], summary["trials_ok"] = counts
    summary["errors"] = errors
    summary["seconds"] = time.perf_counter() - t0
    summary["records_after"] = len(TuningDB(db_dir, tgt).get_all_tuning_records())
    return summary


