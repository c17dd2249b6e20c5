"""Synthesize zero-shot calibration mels with the paper's full settings on a lent GPU.

QuartzNet-5x5 (shipped), per seed: 20 batches x 8 mels x 500 frames, Adam lr 0.05, 200 iterations
(paper §3.1).  Each seed's batches are saved as one fp16 ``.npz`` in ``$OUT`` so that the
calibration/WER experiment can run on the CPU machine.  Stops starting new seeds when the time
budget is nearly spent.

    OUT=/tmp/out python3 -m tools.gpu_synth --seeds 0 1 2 3 --budget 120
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from zsq_tvm.synthesize import SynthConfig, synthesize


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="quartznet5x5")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    ap.add_argument("--budget", type=float, default=120.0, help="seconds")
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--frames", type=int, default=500)
    ap.add_argument("--device", default="cuda")
    a = ap.parse_args()
    out = Path(os.environ.get("OUT", "/tmp/zsq_synth"))
    out.mkdir(parents=True, exist_ok=True)
    t0, per_seed, log = time.time(), 0.0, []
    for seed in a.seeds:
        if per_seed and time.time() - t0 + per_seed > a.budget:
            break
        s0, hist = time.time(), []
        cfg = SynthConfig(num_batches=a.batches, batch_size=8, iters=a.iters, lr=0.05, frames=a.frames, seed=seed,
                          device=a.device, progress=False)
        batches = synthesize(a.model, cfg, history=hist)
        np.savez_compressed(out / f"synth_{a.model}_seed{seed}.npz",
                            **{f"b{i:03d}": b.astype(np.float16) for i, b in enumerate(batches)})
        per_seed = time.time() - s0
        log.append({"seed": seed, "seconds": per_seed,
                    "loss_initial_final": [[h.get("initial"), h.get("final")] for h in hist]})
        print(json.dumps(log[-1], default=str), flush=True)
    (out / "synth_log.json").write_text(json.dumps({"config": vars(a), "runs": log}, default=str, indent=1))


if __name__ == "__main__":
    main()
