"""SHA-256 of what zsq writes, to prove a change of code leaves every output unchanged.

For each case (the three reference models, with masked padding, with zero-shot calibration, and the
Cortex-M sized one) it quantizes, compiles for host, t4 (CUDA source) and cortex-m4 as listed, and records
the hash of every file of the quantized and build folders, of the manifests without their timestamps and
paths (when, and in which checkout / temp folder), and of the output on a seeded mel: the integer codes
(``codes-TARGET``) and the float logits (``logits-dequantized-TARGET``).  Records made before ``Build.run``
returned float logits on every target hold ``logits-TARGET`` instead of the codes (Cortex-M: the codes; host:
the float logits).  Record one tree, then the other, then compare::

    (cd /tmp/before && python3 -m bench.artifact_hashes record /tmp/before.json)   # e.g. a `git worktree add`
    python3 -m bench.artifact_hashes record /tmp/after.json
    python3 -m bench.artifact_hashes compare /tmp/before.json /tmp/after.json      # exit 1 on any difference

Run ``record`` from the root of the tree to measure: the current folder comes first on ``sys.path``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

CASES = {  # name: (shipped model, QuantConfig fields, targets)
    "quartznet5x5": ("quartznet5x5", dict(frames=200, calib="random", seed=0, time_mask=False), ["host", "t4"]),
    "quartznet5x5-tm": ("quartznet5x5", dict(frames=200, calib="random", seed=1, time_mask=True), ["host"]),
    "quartznet5x5-syn": ("quartznet5x5", dict(frames=64, calib="synthetic", seed=0, time_mask=False,
                                              synth=dict(num_batches=2, iters=5)), ["host"]),
    "jasper-dr-small": ("jasper-dr-small", dict(frames=200, calib="random", seed=0, time_mask=False), ["host"]),
    "conformer-ctc-small": ("conformer-ctc-small", dict(frames=200, calib="random", seed=0, time_mask=False), ["host", "t4"]),
    "quartznet-tiny": ("quartznet-tiny", dict(frames=100, calib="random", seed=0, time_mask=False), ["host", "cortex-m4"]),
}


def _without_places(o):
    """A manifest without its timestamps and the folders it happened to be made in."""
    if isinstance(o, dict):
        return {k: _without_places(v) for k, v in o.items() if k not in ("created", "files", "db", "path")}
    return [_without_places(v) for v in o] if isinstance(o, list) else o


def folder_hashes(d: Path) -> dict:
    out = {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest()
           for p in sorted(d.rglob("*")) if p.is_file() and p.name != "manifest.json"}
    manifest = _without_places(json.loads((d / "manifest.json").read_text()))
    out["manifest.json (no times, no paths)"] = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()
    return out


def _array_hash(a) -> str:
    import numpy as np

    return f"{hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()} {a.dtype} {list(a.shape)}"


def record(path: str, only: list[str]) -> None:
    import numpy as np

    import zsq_tvm

    print(f"zsq_tvm from {zsq_tvm.__file__}", flush=True)
    out = {}
    with tempfile.TemporaryDirectory() as td:
        for name, (model, cfg, targets) in CASES.items():
            if only and name not in only:
                continue
            t0 = time.time()
            q = zsq_tvm.quantize(model, zsq_tvm.QuantConfig(**cfg))
            rec = {"quantized": folder_hashes(q.save(Path(td) / f"q-{name}"))}
            rng = np.random.default_rng(123)
            for target in targets:
                b = zsq_tvm.compile(q, target=target)
                rec[f"build-{target}"] = folder_hashes(b.save(Path(td) / f"b-{name}-{target}"))
                if target != "t4":  # the CUDA build runs on a GPU only
                    mel = rng.standard_normal((1, 64, cfg["frames"])).astype("float32")
                    kw = {"length": np.array([cfg["frames"] - 37], "int64")} if cfg.get("time_mask") else {}
                    rec[f"codes-{target}"] = _array_hash(b.run(mel, codes=True, **kw))
                    rec[f"logits-dequantized-{target}"] = _array_hash(b.run(mel, **kw))
            out[name] = rec
            print(f"{name}: {time.time() - t0:.1f} s", flush=True)
    Path(path).write_text(json.dumps(out, indent=1))


def compare(a_path: str, b_path: str) -> int:
    a, b = json.loads(Path(a_path).read_text()), json.loads(Path(b_path).read_text())
    same, diff = 0, []
    for case in sorted(set(a) | set(b)):
        ra, rb = a.get(case, {}), b.get(case, {})
        for key in sorted(set(ra) | set(rb)):
            va, vb = ra.get(key), rb.get(key)
            if isinstance(va, dict) or isinstance(vb, dict):
                va, vb = va or {}, vb or {}
                for f in sorted(set(va) | set(vb)):
                    if va.get(f) == vb.get(f):
                        same += 1
                    else:
                        diff.append(f"{case} {key} {f}")
            elif va == vb:
                same += 1
            else:
                diff.append(f"{case} {key}")
    for d in diff:
        print("DIFFERENT", d)
    print(f"{same} identical, {len(diff)} different")
    return 1 if diff else 0


def main() -> int:
    ap = argparse.ArgumentParser(prog="python3 -m bench.artifact_hashes", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("record", help="hash the outputs of this tree into a JSON file")
    r.add_argument("output")
    r.add_argument("--only", nargs="*", default=[], choices=sorted(CASES))
    c = sub.add_parser("compare", help="compare two records; exit 1 on any difference")
    c.add_argument("before")
    c.add_argument("after")
    a = ap.parse_args()
    if a.cmd == "record":
        record(a.output, a.only)
        return 0
    return compare(a.before, a.after)


if __name__ == "__main__":
    sys.exit(main())
