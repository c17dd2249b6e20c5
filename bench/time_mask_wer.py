"""WER of fixed-length integer builds with and without ``--time-mask``, against the unpadded FP32 model.

For each model: quantize twice with the same seed and calibration (``time_mask`` off / on), compile both for
``--target``, evaluate both with ``zsq eval`` (utterances zero-padded to ``--frames``; the masked build is told
each one's length) and the FP32 torch model unpadded, on every ``--splits`` manifest.  Prints the table and
writes JSON.  Example (the numbers in docs/results.md, Session 8)::

    python3 -m bench.time_mask_wer --models quartznet5x5 jasper-dr-small --frames 700 \\
        --corpus /tmp/corpus --splits test test-heldout-voice --json bench/results/time_mask_wer.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["quartznet5x5"])
    ap.add_argument("--frames", type=int, default=700)
    ap.add_argument("--corpus", default="/tmp/corpus", help="folder of NeMo manifests (lab.corpus)")
    ap.add_argument("--splits", nargs="+", default=["test"])
    ap.add_argument("--target", default="host")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)

    import zsq_tvm
    from zsq_tvm.evaluate import evaluate

    rows = []
    for model in a.models:
        builds = {}
        for masked in (False, True):
            t = time.time()
            q = zsq_tvm.quantize(model, zsq_tvm.QuantConfig(frames=a.frames, seed=a.seed, time_mask=masked))
            builds[masked] = zsq_tvm.compile(q, target=a.target)
            print(f"[{model}] time_mask={masked}: quantize + compile {time.time() - t:.0f} s", flush=True)
        for split in a.splits:
            man = str(Path(a.corpus) / f"{split}.json")
            fp32 = evaluate(model, man)
            row = {"model": model, "split": split, "frames": a.frames, "target": a.target, "seed": a.seed,
                   "n_utterances": fp32["n_utterances"], "n_words": fp32["n_words"],
                   "fp32_unpadded": fp32["wer"]}
            with tempfile.TemporaryDirectory() as td:
                for masked, b in builds.items():
                    d = b.save(Path(td) / f"b{int(masked)}")
                    r = evaluate(str(d), man)
                    key = "w8a8_time_mask" if masked else "w8a8_padded"
                    row[key], row[key + "_model_seconds"] = r["wer"], r.get("model_seconds")
                    row["n_chunked"] = r.get("n_chunked")
            rows.append(row)
            print(f"[{model}] {split}: FP32 unpadded {100 * row['fp32_unpadded']:.2f}  W8A8 padded "
                  f"{100 * row['w8a8_padded']:.2f} ({100 * (row['w8a8_padded'] - row['fp32_unpadded']):+.2f})  "
                  f"W8A8 --time-mask {100 * row['w8a8_time_mask']:.2f} "
                  f"({100 * (row['w8a8_time_mask'] - row['fp32_unpadded']):+.2f})", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps({"rows": rows, "command": " ".join(sys.argv)}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
