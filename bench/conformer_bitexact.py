"""TVM build == numpy reference, bit for bit, on real utterances (integer-only Conformer, issue 5).

    zsq quantize conformer-ctc-small --frames 640 -o q/ && zsq compile q/ -o build/ && zsq check build/
    python3 -m bench.conformer_bitexact q/ build/ --manifest /tmp/corpus/test.json -n 3 \
        --json bench/results/conformer_bitexact.json

Each utterance's mel (zero-padded or cropped to the build's T) goes through ``Build.run`` (the compiled
integer kernels) and through :func:`relax_passes.reference.run_reference` on the quantized Relax module
(numpy, op by op); the integer logits must be identical.  ``--random K`` adds K seeded random mels
(uniform in [-3, 3], the random-calibration range, and K/2 of them scaled x4 to saturate the input).

    zsq quantize conformer-ctc-large --frames 400 -o qL/ && zsq compile qL/ -o bL/ && zsq check bL/
    python3 -m bench.conformer_bitexact qL/ bL/ --manifest /tmp/corpus/test.json -n 3 --random 2 \
        --json /tmp/large_bitexact.json     # or all of it: python3 -m bench.conformer_large
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def main(argv=None):
    from zsq_tvm.api import QuantizedModel
    from zsq_tvm.build import Build
    from zsq_tvm.evaluate import compute_mel, read_manifest
    from relax_passes.reference import run_reference

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("quantized")
    ap.add_argument("build")
    ap.add_argument("--manifest", required=True)
    ap.add_argument("-n", type=int, default=3)
    ap.add_argument("--random", type=int, default=0, help="also K seeded random mels")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    q, b = QuantizedModel.load(a.quantized), Build.load(a.build)
    T = q.frames
    rows = []
    rng = np.random.default_rng(a.seed)
    F = q.manifest["io"]["inputs"][0]["shape"][1]
    items = [(u.audio_filepath, u.text, None) for u in read_manifest(a.manifest)[: a.n]]
    items += [(f"random#{i}", None, (4.0 if i % 2 else 1.0) * rng.uniform(-3, 3, (F, T)).astype(np.float32))
              for i in range(a.random)]
    for audio, text, mel in items:
        mel = compute_mel(audio) if mel is None else mel
        x = np.zeros((1, mel.shape[0], T), np.float32)
        L = min(T, mel.shape[1])
        x[0, :, :L] = mel[:, :L]
        t = time.time()
        out = np.asarray(b.run(x))
        t_tvm = time.time() - t
        t = time.time()
        ref = np.asarray(run_reference(q.mod, x))
        t_ref = time.time() - t
        rows.append({"audio": audio, "frames": int(mel.shape[1]), "bit_exact": bool(np.array_equal(out, ref)),
                     "tvm_seconds": round(t_tvm, 3), "reference_seconds": round(t_ref, 3),
                     "hyp": b.decode(out)[0], "ref_text": text})
        print(("OK  " if rows[-1]["bit_exact"] else "DIFF") + f" {Path(audio).name}: {rows[-1]['hyp']!r}", flush=True)
    res = {"quantized": a.quantized, "build": a.build, "target": b.target, "frames": T,
           "all_bit_exact": all(r["bit_exact"] for r in rows), "utterances": rows}
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
    return 0 if res["all_bit_exact"] else 1


if __name__ == "__main__":
    sys.exit(main())
