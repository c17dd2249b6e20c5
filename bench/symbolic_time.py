"""Symbolic-T builds against fixed-T builds: latency at T = 1000 (same process, interleaved), and the 60 s check.

For each model: quantize once without ``--frames`` (a build for every length, relax_passes.symbolic_time) and once
with ``--frames 1000`` (default: its padding masked), compile both for ``--target``, check that their outputs at
T = 1000 are identical, time them round by round at 1 and 2 threads (``TVM_NUM_THREADS`` is read once per process,
so each thread count runs in a child process), and check the symbolic build at 60 s of input (6000 frames) against
the numpy integer reference (about 40 s of numpy per model).  Prints a table and writes JSON::

    python3 -m bench.symbolic_time --models quartznet5x5 quartznet15x5 --json bench/results/symbolic_time.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _time(builds: list[str], T: int, runs: int, seed: int = 1) -> dict:
    import numpy as np

    import zsq_tvm

    bs = [zsq_tvm.load(d) for d in builds]
    mel = np.random.default_rng(seed).standard_normal((1, 64, T)).astype(np.float32)
    outs = [b.run(mel) for b in bs]
    same = all(np.array_equal(outs[0], o) for o in outs[1:])
    calls = [lambda b=b: b.run(mel) for b in bs]
    for f in calls:
        for _ in range(3):
            f()
    wall = [[] for _ in bs]
    for _ in range(runs):
        for i, f in enumerate(calls):
            t = time.perf_counter()
            f()
            wall[i].append((time.perf_counter() - t) * 1e3)
    return {"identical_outputs": bool(same), "median_ms": [float(np.median(w)) for w in wall],
            "min_ms": [float(np.min(w)) for w in wall]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["quartznet5x5", "quartznet15x5"])
    ap.add_argument("--target", default="host")
    ap.add_argument("--frames", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--check-frames", type=int, default=6000, help="length of the reference check (0: skip)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--_time", nargs="+", default=None, help=argparse.SUPPRESS)  # child process: time these builds
    a = ap.parse_args(argv)
    if a._time:
        print(json.dumps(_time(a._time, a.frames, a.runs)))
        return 0

    import numpy as np

    import zsq_tvm
    from relax_passes.reference import run_reference

    rows = []
    with tempfile.TemporaryDirectory(prefix="zsq-symbolic-") as td:
        for model in a.models:
            t0 = time.time()
            qd = zsq_tvm.quantize(model, zsq_tvm.QuantConfig(progress=False))
            qf = zsq_tvm.quantize(model, zsq_tvm.QuantConfig(frames=a.frames, progress=False))
            dirs = []
            for name, q in (("fixed", qf), ("symbolic", qd)):
                d = Path(td) / f"{model}-{name}"
                zsq_tvm.compile(q, target=a.target).save(d)
                dirs.append(str(d))
            print(f"[{model}] quantize + compile both: {time.time() - t0:.0f} s", flush=True)
            row = {"model": model, "target": a.target, "frames": a.frames, "runs": a.runs}
            for threads in (1, 2):
                env = dict(os.environ, TVM_NUM_THREADS=str(threads))
                out = subprocess.run([sys.executable, "-m", "bench.symbolic_time", "--frames", str(a.frames),
                                      "--runs", str(a.runs), "--_time", *dirs], env=env, capture_output=True,
                                     text=True, check=True).stdout
                r = json.loads(out.strip().splitlines()[-1])
                fixed, sym = r["median_ms"]
                row[f"threads{threads}"] = {"fixed_ms": round(fixed, 2), "symbolic_ms": round(sym, 2),
                                            "ratio": round(sym / fixed, 3), "identical_outputs": r["identical_outputs"]}
                print(f"[{model}] {threads} thread(s): fixed {fixed:.1f} ms, symbolic {sym:.1f} ms "
                      f"({100 * (sym / fixed - 1):+.1f} %), outputs identical: {r['identical_outputs']}", flush=True)
            if a.check_frames:
                b = zsq_tvm.load(dirs[1])
                x = np.random.default_rng(2).standard_normal((1, 64, a.check_frames)).astype(np.float32)
                t = time.time()
                same = bool(np.array_equal(b.run(x), np.asarray(run_reference(qd.mod, x))))
                row["reference_check"] = {"frames": a.check_frames, "bit_exact": same}
                print(f"[{model}] symbolic build at {a.check_frames} frames == numpy reference: {same} "
                      f"({time.time() - t:.0f} s)", flush=True)
            rows.append(row)
    res = {"machine": "2-core AVX-512 VNNI (znver4), shared", "rows": rows,
           "command": "python3 -m bench.symbolic_time " + " ".join(argv if argv is not None else sys.argv[1:])}
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
