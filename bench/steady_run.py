"""Steady long runs through the Python runtime (``Build.run``): flat memory and thread safety.

    python3 -m bench.steady_run                                   # 10 000 inferences + 1/2 threads
    python3 -m bench.steady_run --inferences 300 --per-thread 100 # the size of tests/test_steady_run.py
    python3 -m bench.steady_run --build build/                    # an existing build directory

1. **Long run**: ``--inferences`` consecutive ``Build.run`` calls on one loaded build, cycling over 8
   seeded mels; every output is compared with the first output for that mel; RSS (``/proc/self/status``
   ``VmRSS``) is sampled after a warm-up of ``--warmup`` runs, every 1 000 runs and at the end.
   Pass: growth of RSS end vs start < 5 %, zero mismatches.
2. **Concurrency**: for each N in ``--threads``, N Python threads call ``run`` on the *same* ``Build``
   object at once, ``--per-thread`` inferences each, on different mels; every output must equal the
   single-thread output.  ``Build`` gives each thread its own Relax VM (one VM is not re-entrant: shared,
   it failed with "Check failed: reg < frame->register_file.size()").  Reported: inferences/s.

Without ``--build`` a small build is made first: the 3-block ``micro`` model
(``zsq_tvm.zoo.toy``), W8A8, ``--frames`` frames (default 100 = 1 s of audio).  The TVM kernel
thread pool size is ``TVM_NUM_THREADS`` (``--tvm-threads``, default 1, so that N Python threads use N
cores).  Writes JSON to ``--json`` (default ``bench/results/steady_run.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]

N_MELS = 8


def make_build(workdir: Path, frames: int = 100):
    """The small default build: micro model, W8A8, random calibration (seed 0)."""
    import zsq_tvm
    from zsq_tvm.api import QuantConfig
    from zsq_tvm.zoo.toy import export_convasr

    onnx_path = export_convasr(workdir / "micro.onnx", arch="micro", frames=frames, seed=0)
    q = zsq_tvm.quantize(onnx_path, QuantConfig(frames=frames, num_batches=2, seed=0))
    b = zsq_tvm.compile(q, target="host")
    b.save(workdir / "build")
    return zsq_tvm.load(workdir / "build")


def mels_for(build, n: int = N_MELS, seed: int = 0):
    import numpy as np

    F, T = build.manifest["io"]["inputs"][0]["shape"][1:]
    rng = np.random.default_rng(seed)
    return [rng.uniform(-2, 2, (F, T)).astype(np.float32) for _ in range(n)]


def long_run(build, mels, refs, inferences: int, warmup: int = 100, sample_every: int = 1000) -> dict:
    """``inferences`` consecutive runs after ``warmup``; RSS samples and output mismatches."""
    import numpy as np

    for i in range(warmup):
        build.run(mels[i % len(mels)])
    rss0 = psutil.Process().memory_info().rss
    samples = [(0, rss0)]
    mismatches = 0
    t0 = time.perf_counter()
    for i in range(1, inferences + 1):
        j = i % len(mels)
        if not np.array_equal(build.run(mels[j]), refs[j]):
            mismatches += 1
        if i % sample_every == 0 or i == inferences:
            samples.append((i, psutil.Process().memory_info().rss))
    dt = time.perf_counter() - t0
    rss1 = samples[-1][1]
    return {"inferences": inferences, "warmup": warmup, "seconds": round(dt, 3),
            "inferences_per_s": round(inferences / dt, 1), "mismatches": mismatches,
            "rss_start_mb": round(rss0 / 2**20, 2), "rss_end_mb": round(rss1 / 2**20, 2),
            "rss_peak_sampled_mb": round(max(s for _, s in samples) / 2**20, 2),
            "rss_growth_pct": round(100.0 * (rss1 - rss0) / rss0, 3),
            "rss_growth_bytes_per_inference": round((rss1 - rss0) / inferences, 1),
            "rss_samples_mb": [[i, round(s / 2**20, 2)] for i, s in samples]}


def concurrent_run(build, mels, refs, threads: int, per_thread: int) -> dict:
    """``threads`` Python threads share ``build``; each runs ``per_thread`` inferences (different mels)."""
    import numpy as np

    mismatches = [0] * threads
    errors: list[str] = []
    start = threading.Barrier(threads + 1)

    def work(k: int):
        try:
            start.wait()
            for i in range(per_thread):
                j = (i * threads + k) % len(mels)
                if not np.array_equal(build.run(mels[j]), refs[j]):
                    mismatches[k] += 1
        except Exception as e:  # reported, and fails the check
            errors.append(f"thread {k}: {type(e).__name__}: {e}")

    ts = [threading.Thread(target=work, args=(k,), daemon=True) for k in range(threads)]
    for t in ts:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in ts:
        t.join()
    dt = time.perf_counter() - t0
    n = threads * per_thread
    return {"threads": threads, "inferences": n, "seconds": round(dt, 3), "inferences_per_s": round(n / dt, 1),
            "mismatches": sum(mismatches), "errors": errors[:5], "ok": not errors and not any(mismatches)}


def steady(build, inferences: int, per_thread: int, thread_counts=(1, 2), warmup: int = 100) -> dict:
    mels = mels_for(build)
    refs = [build.run(m) for m in mels]  # single-thread reference outputs
    res = {"long_run": long_run(build, mels, refs, inferences, warmup)}
    res["concurrent"] = [concurrent_run(build, mels, refs, n, per_thread) for n in thread_counts]
    lr = res["long_run"]
    res["ok"] = bool(lr["mismatches"] == 0 and lr["rss_growth_pct"] < 5.0 and all(c["ok"] for c in res["concurrent"]))
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build", default=None, help="build directory (default: make the small micro build)")
    ap.add_argument("--frames", type=int, default=100, help="frames of the default build (default 100 = 1 s)")
    ap.add_argument("--inferences", type=int, default=10000)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--per-thread", type=int, default=2000, help="inferences per thread in the concurrency run")
    ap.add_argument("--tvm-threads", type=int, default=1, help="TVM_NUM_THREADS (kernel thread pool size)")
    ap.add_argument("--json", default=str(ROOT / "bench/results/steady_run.json"))
    a = ap.parse_args(argv)
    os.environ["TVM_NUM_THREADS"] = str(a.tvm_threads)  # before the first TVM kernel runs

    import zsq_tvm

    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="zsq-steady-") as td:
        build = zsq_tvm.load(a.build) if a.build else make_build(Path(td), a.frames)
        res = steady(build, a.inferences, a.per_thread, a.threads, a.warmup)
    res.update(build=a.build or f"micro W8A8, frames={a.frames} (made by this script)",
               input_shape=build.manifest["io"]["inputs"][0]["shape"], target=build.target,
               tvm_num_threads=a.tvm_threads, cpu_count=os.cpu_count(), loadavg_at_end=os.getloadavg(),
               python=platform.python_version(), machine=platform.machine(), wall_s=round(time.time() - t0, 1),
               command="python3 -m bench.steady_run " + " ".join(argv if argv is not None else sys.argv[1:]))
    lr = res["long_run"]
    print(f"long run: {lr['inferences']} inferences, {lr['inferences_per_s']}/s, RSS {lr['rss_start_mb']} -> "
          f"{lr['rss_end_mb']} MB ({lr['rss_growth_pct']:+.2f} %), mismatches {lr['mismatches']}")
    for c in res["concurrent"]:
        print(f"{c['threads']} thread(s): {c['inferences']} inferences, {c['inferences_per_s']}/s, "
              f"mismatches {c['mismatches']}, errors {len(c['errors'])}")
    print("ok" if res["ok"] else "FAILED")
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(res, indent=2) + "\n")
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
