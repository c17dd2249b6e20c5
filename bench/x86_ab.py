"""A/B timing of saved builds in one process: same input, interleaved round by round, outputs must be equal.

On a CPU shared with other jobs, latencies measured in different processes or at different times are not
comparable; this loads every build given (``zsq compile ... -o DIR`` / ``Build.save``) into one process,
checks that they produce identical outputs on one seeded mel, then times ``main`` of each in turn, round
by round, and prints wall-clock median / 25th percentile / min and the process CPU time per run (with
``TVM_NUM_THREADS=1`` the CPU time is the work done, little affected by other jobs' time slices).  A
time-masked build runs with every frame valid, so it can be compared with the same model unmasked; a symbolic-T
build (``zsq quantize`` without ``--frames``) runs at the fixed builds' T (or ``--frames``).

    zsq quantize quartznet5x5 --frames 1000 -o /tmp/q
    git archive HEAD | tar -x -C /tmp/head          # the committed code, to build the "before" side
    # run from /tmp/head: the current folder comes first on sys.path, before PYTHONPATH and the editable install
    (cd /tmp/head && python3 -c "import zsq_tvm; zsq_tvm.compile(zsq_tvm.load('/tmp/q'), 'host-vnni').save('/tmp/b_head')")
    python3 -c "import zsq_tvm; zsq_tvm.compile(zsq_tvm.load('/tmp/q'), 'host-vnni').save('/tmp/b_new')"
    TVM_NUM_THREADS=1 python3 -m bench.x86_ab /tmp/b_head /tmp/b_new --runs 30
"""
from __future__ import annotations

import argparse
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("builds", nargs="+")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--frames", type=int, default=1000, help="input length when every build is symbolic-T")
    a = ap.parse_args()
    import numpy as np
    import tvm

    import zsq_tvm

    builds = {d: zsq_tvm.load(d) for d in a.builds}
    T = next((b.frames for b in builds.values() if b.frames), a.frames)  # a symbolic-T build runs any length
    mel = np.random.default_rng(a.seed).standard_normal((1, 64, T)).astype(np.float32)
    outs = [b.run(mel) for b in builds.values()]
    if not all(np.array_equal(outs[0], o) for o in outs[1:]):
        raise SystemExit("the builds' outputs differ: not the same model, nothing to compare")
    calls = {}
    for d, b in builds.items():
        vm, x = b._vm_(), [tvm.runtime.tensor(mel)]
        if b.time_mask:  # a --time-mask build: every frame valid (same output as without the mask)
            x.append(tvm.runtime.tensor(b._lengths(None, 1, T)))
        calls[d] = lambda vm=vm, x=x: vm["main"](*x)
    for f in calls.values():
        for _ in range(3):
            f()
    wall = {d: [] for d in calls}
    cpu = {d: [] for d in calls}
    for _ in range(a.runs):
        for d, f in calls.items():
            c, t = time.process_time(), time.perf_counter()
            f()
            wall[d].append((time.perf_counter() - t) * 1e3)
            cpu[d].append((time.process_time() - c) * 1e3)
    for d in calls:
        w, c = np.array(wall[d]), np.array(cpu[d])
        print(f"{d}: wall median {np.median(w):.1f} q25 {np.percentile(w, 25):.1f} min {w.min():.1f} ms | "
              f"cpu median {np.median(c):.1f} min {c.min():.1f} ms")


if __name__ == "__main__":
    main()
