"""How long `zsq compile` takes for a small Conformer, per target: a benchmark figure, never a test assertion.

    python3 -m bench.compile_time                       # targets host and t4 (sm_75; no GPU needed)
    python3 -m bench.compile_time --targets t4 --repeat 2

The model is a one-layer Conformer-CTC (d_model 16, 2 heads, conv kernel 5, seeded BatchNorm statistics),
the same size as the one ``tests/test_cuda_conformer.py`` builds for t4; the test used to assert that its
build took < 300 s, which failed on a busy 2-core machine (360 s).  Compile times depend on the machine and
its load: compare figures from one run.  Writes ``bench/results/compile_time.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

PARAMS = dict(d_model=16, n_layers=1, n_heads=2, ff_expansion=2, conv_kernel=5, subsampling_channels=4)


def tiny_conformer(seed: int = 0):
    import torch

    from zsq_tvm.zoo.nets.conformer import ConformerCTCModel

    torch.manual_seed(seed)
    m = ConformerCTCModel("tiny", params=PARAMS).eval()
    g = torch.Generator().manual_seed(seed)
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm1d):
            mod.running_mean.copy_(torch.randn(mod.num_features, generator=g) * 0.3)
            mod.running_var.copy_(torch.rand(mod.num_features, generator=g) * 1.5 + 0.5)
    return m


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--targets", default="host,t4")
    ap.add_argument("--frames", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--json", default=str(Path(__file__).resolve().parent / "results" / "compile_time.json"))
    a = ap.parse_args()

    import onnx
    from tqdm import tqdm

    import zsq_tvm
    from zsq_tvm.zoo.nets.export import export_onnx

    with tempfile.TemporaryDirectory(prefix="zsq-ct-") as td:
        p = export_onnx(tiny_conformer(), Path(td) / "tiny.onnx", frames=a.frames)
        t0 = time.perf_counter()
        q = zsq_tvm.quantize(onnx.load(str(p)), zsq_tvm.QuantConfig(frames=a.frames, num_batches=1))
        quantize_s = time.perf_counter() - t0
    rows = []
    jobs = [(t, r) for t in a.targets.split(",") for r in range(a.repeat)]
    for target, r in tqdm(jobs, desc="compile"):
        t0 = time.perf_counter()
        zsq_tvm.compile(q, target=target)
        rows.append({"target": target, "repeat": r, "seconds": round(time.perf_counter() - t0, 2)})
    res = {"model": "tiny conformer " + json.dumps(PARAMS), "frames": a.frames, "quantize_seconds": round(quantize_s, 2),
           "compile": rows, "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
           "loadavg_1min": round(os.getloadavg()[0], 2), "date": time.strftime("%Y-%m-%d")}
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(res, indent=2) + "\n")
    for row in rows:
        print(f"{row['target']:>8}: {row['seconds']:7.1f} s")
    print(f"-> {a.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
