"""The paper's Figure 3 for a shipped model: a real mel from the corpus, the random initialisation and
three synthetic mels, each titled with its FP32 greedy decode.

    zsq synth quartznet5x5 -o /tmp/synth20 --threads 1          # paper settings: 20 x 8, 200 Adam steps
    python3 -m bench.synth_fig3 --synth /tmp/synth20 --manifest /tmp/corpus/test.json --shortest \\
        -o docs/figures/synth_fig3_quartznet5x5.png

``--synth``: a ``zsq synth`` output directory (its ``synth.json`` holds the SynthConfig); the real row is
the ``--index``-th utterance of ``--manifest`` (``--shortest``: the shortest one, so that most of it fits
in the synthetic T), shown over the same number of frames as the synthetic mels.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--synth", required=True, help="zsq synth output directory")
    ap.add_argument("--model", default=None, help="default: the source recorded in synth.json")
    ap.add_argument("--manifest", default="/tmp/corpus/test.json")
    ap.add_argument("--index", type=int, default=0)
    ap.add_argument("--shortest", action="store_true")
    ap.add_argument("-o", "--output", required=True)
    a = ap.parse_args()
    import torch

    from zsq_tvm.evaluate import read_manifest
    from zsq_tvm.synth_figure import plot_figure3
    from zsq_tvm.synthesize import SynthConfig

    torch.set_num_threads(1)
    d = Path(a.synth)
    info = json.loads((d / "synth.json").read_text())
    c = dict(info["config"])
    c["betas"] = tuple(c["betas"])
    cfg = SynthConfig(**{k: v for k, v in c.items() if k in SynthConfig.__dataclass_fields__})
    batches = [np.load(f) for f in sorted(d.glob("synth_*.npy"))]
    rows = read_manifest(a.manifest)
    u = min(rows, key=lambda r: r.duration or 1e9) if a.shortest else rows[a.index]
    model = a.model or info["source"]
    res = plot_figure3(model, batches, cfg, a.output, wav=u.audio_filepath, text=u.text,
                       title=f"Real, random and synthetic mels ({model}; {cfg.num_batches} x {cfg.batch_size} x "
                             f"{cfg.frames} frames, {cfg.iters} Adam steps, lr {cfg.lr}; greedy CTC, no LM)")
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
