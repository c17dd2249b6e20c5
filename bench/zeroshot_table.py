"""Paper Tables 1-2 in miniature on our trained QuartzNet-5x5: W8A8 / W6A8 calibrated with
synthetic (zero-shot, eq. 2), random (uniform [-3, 3], the paper's ablation) and real mels.

"real" = mels of the corpus `dev` split (training voices, sentences disjoint from `test`): the
upper reference a user with data would get.  WER is measured on the first ``--limit`` utterances
of ``--manifest`` with the integer-only host build (fixed T; longer utterances are chunked), and
the FP32 baseline is run with the same fixed-T padding so the comparison is like for like.
Results are appended to the JSON after every cell, so an interrupted run keeps what it measured.

    python -m zsq_tvm.data.corpus texts -o /tmp/texts.txt
    python -m zsq_tvm.data.corpus synth --texts /tmp/texts.txt -o /tmp/corpus --train-hours 0
    python bench/zeroshot_table.py --manifest /tmp/corpus/test.json --real /tmp/corpus/dev.json \
        --limit 100 --seeds 0 1 --json bench/results/zeroshot_table.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import zsq_tvm  # noqa: E402
from zsq_tvm.evaluate import compute_mel, evaluate, read_manifest  # noqa: E402


def real_mels(manifest, n, frames):
    out = []
    for u in read_manifest(manifest)[:n]:
        m = compute_mel(u.audio_filepath)
        x = np.zeros((64, frames), np.float32)
        k = min(frames, m.shape[-1])
        x[:, :k] = m[..., :k].reshape(64, -1)[:, :k]
        out.append(x)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="quartznet5x5")
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--real", required=True, help="manifest whose mels are the 'real' calibration data")
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--frames", type=int, default=400)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    ap.add_argument("--wbits", type=int, nargs="+", default=[8, 6])
    ap.add_argument("--calib", nargs="+", default=["synthetic", "random", "real"])
    ap.add_argument("--synth-batches", type=int, default=2)
    ap.add_argument("--synth-iters", type=int, default=100)
    ap.add_argument("--n-calib", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default="bench/results/zeroshot_table.json")
    a = ap.parse_args()
    import torch

    torch.set_num_threads(a.threads)
    out = Path(a.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    res = {"config": vars(a), "fp32": None, "cells": []}

    def dump():
        out.write_text(json.dumps(res, indent=1))

    fp = evaluate(a.model, a.manifest, frames_pad=a.frames, limit=a.limit, threads=a.threads, progress=False)
    res["fp32"] = {k: fp[k] for k in ("wer", "cer", "n_utterances", "n_words")}
    print("FP32 (padded to T)", res["fp32"], flush=True)
    dump()
    reals = real_mels(a.real, a.n_calib, a.frames)
    for seed in a.seeds:
        synth = None
        for calib in a.calib:
            if calib == "synthetic" and synth is None:
                t0 = time.time()
                synth = zsq_tvm.synthesize(a.model, zsq_tvm.SynthConfig(
                    num_batches=a.synth_batches, batch_size=8, iters=a.synth_iters, frames=a.frames, seed=seed,
                    progress=False, threads=a.threads))
                synth_s = time.time() - t0
            src = {"synthetic": synth, "random": "random", "real": reals}[calib]
            for wb in a.wbits:
                t0 = time.time()
                q = zsq_tvm.quantize(a.model, zsq_tvm.QuantConfig(wbits=wb, abits=8, frames=a.frames, calib=src,
                                                                  seed=seed, num_batches=a.n_calib))
                b = zsq_tvm.compile(q, target="host")
                with __import__("tempfile").TemporaryDirectory() as d:
                    b.save(Path(d) / "build")
                    r = evaluate(str(Path(d) / "build"), a.manifest, limit=a.limit, threads=a.threads,
                                 progress=False)
                cell = {"seed": seed, "calib": calib, "wbits": wb, "abits": 8, "wer": r["wer"], "cer": r["cer"],
                        "seconds": time.time() - t0}
                if calib == "synthetic":
                    cell["synth_seconds"] = synth_s
                res["cells"].append(cell)
                print(cell, flush=True)
                dump()
    # summary: mean and spread over seeds
    summ = {}
    for c in res["cells"]:
        summ.setdefault(f"W{c['wbits']}A8 {c['calib']}", []).append(c["wer"])
    res["summary"] = {k: {"wer_mean": float(np.mean(v)), "wer_min": float(np.min(v)), "wer_max": float(np.max(v)),
                          "n_seeds": len(v)} for k, v in summ.items()}
    dump()
    print(json.dumps(res["summary"], indent=1))


if __name__ == "__main__":
    main()
