"""CPU training-step time: the plain model against ``train.use_channels_last_depthwise`` (one run, one process).

    python3 -m bench.train_step_speed --arch quartznet5x5 --json bench/results/train_step_speed_quartznet5x5.json

One step = forward, CTC-free squared-logit loss, backward and an AdamW update on a random ``[B, 64, T]`` batch
(B x T = the ``fit --max-frames`` budget).  Both variants start from the same weights and run alternately, so
the ratio is measured under the same machine load.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from lab import train
from zsq_tvm.zoo.nets import build_model


def _step(model, opt, x, lens) -> float:
    t = time.perf_counter()
    y, _ = model(x, lens)
    loss = y.float().pow(2).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return time.perf_counter() - t


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="quartznet5x5")
    p.add_argument("--batch", type=int, default=24)
    p.add_argument("--frames", type=int, default=500)
    p.add_argument("--steps", type=int, default=4, help="timed steps per variant (after one warm-up step)")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--json", default="")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    plain = build_model(a.arch).train()
    fast = build_model(a.arch).train()
    fast.load_state_dict(plain.state_dict())
    routed = train.use_channels_last_depthwise(fast)
    x = torch.randn(a.batch, 64, a.frames)
    lens = torch.full((a.batch,), a.frames)
    models = {"plain": plain, "channels_last_depthwise": fast}
    opts = {k: torch.optim.AdamW(m.parameters(), 1e-4) for k, m in models.items()}
    times = {k: [] for k in models}
    for k in models:  # warm-up: oneDNN primitive creation
        _step(models[k], opts[k], x, lens)
    for _ in range(a.steps):
        for k in models:
            times[k].append(_step(models[k], opts[k], x, lens))
    med = {k: statistics.median(v) for k, v in times.items()}
    res = {"arch": a.arch, "batch": a.batch, "frames": a.frames, "threads": a.threads, "routed_layers": routed,
           "median_step_s": med, "step_s": times, "speedup": med["plain"] / med["channels_last_depthwise"],
           "torch": torch.__version__, "cpu": platform.processor() or platform.machine()}
    print(f"{a.arch}: {routed} depthwise layers routed; step {med['plain']:.2f} s plain, "
          f"{med['channels_last_depthwise']:.2f} s channels-last: {res['speedup']:.2f}x "
          f"({a.batch} x {a.frames} frames, {a.threads} threads)")
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(res, indent=1) + "\n")
    return res


if __name__ == "__main__":
    main()
