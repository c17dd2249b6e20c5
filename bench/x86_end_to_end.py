"""End-to-end x86 latency: QuartzNet-5x5, T=1000, batch 1, one process, same input.

Four engines: zsq INT8 default ``host`` build, zsq INT8 ``host-vnni`` (pointwise conv1d + requantize
replaced by the hand-written VNNI kernel, zsq_tvm/backends/x86/offload_pointwise.py), ONNX Runtime FP32 and
ONNX Runtime INT8 (``quantize_static``: QDQ, per-channel weights, uint8 activations, calibrated on the
same random data as zsq).  Medians of ``--runs`` timed runs after warm-up; ratios vs ``host``.
``TVM_NUM_THREADS`` / ORT ``intra_op_num_threads`` = ``--threads``.  Writes bench/results/x86_end_to_end.json.

    python3 -m bench.x86_end_to_end --threads 2 --runs 15
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _median_ms(fn, runs, warmup=2):
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t) * 1e3)
    return statistics.median(ts), ts


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="quartznet5x5")
    ap.add_argument("--frames", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--calib", type=int, default=8)
    ap.add_argument("--out", default=str(ROOT / "bench/results/x86_end_to_end.json"))
    a = ap.parse_args()
    os.environ["TVM_NUM_THREADS"] = str(a.threads)

    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)

    import zsq_tvm
    from zsq_tvm.backends.x86.offload_pointwise import offload_pointwise
    from zsq_tvm.zoo.nets.export import export_onnx
    from relax_passes.reference import run_reference

    rng = np.random.default_rng(0)
    F = 64
    calib = [rng.standard_normal((1, F, a.frames)).astype(np.float32) for _ in range(a.calib)]
    x = rng.standard_normal((1, F, a.frames)).astype(np.float32)
    res = {"model": a.model, "frames": a.frames, "batch": 1, "threads": a.threads, "runs": a.runs,
           "cpu": __import__("zsq_tvm.backends.x86.cpu", fromlist=["x"]).host_cpu(), "note": "2 shared cores, another experiment running: noisy"}

    with tempfile.TemporaryDirectory() as td:
        onnx_path = export_onnx(a.model, Path(td) / "m.onnx", frames=a.frames)
        proto = onnx.load(str(onnx_path))
        in_name = proto.graph.input[0].name
        F = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim][1]
        assert F == 64, F

        t0 = time.perf_counter()
        q = zsq_tvm.quantize(str(onnx_path), zsq_tvm.QuantConfig(frames=a.frames, calib=np.concatenate(calib)))
        res["quantize_s"] = time.perf_counter() - t0
        _, replaced = offload_pointwise(q.mod)
        res["vnni_replaced"] = len(replaced)
        res["vnni_layers"] = replaced
        builds = {}
        for tgt in ("host", "host-vnni"):
            t0 = time.perf_counter()
            builds[tgt] = zsq_tvm.compile(q, target=tgt)
            res[f"compile_s_{tgt}"] = time.perf_counter() - t0
        ref = run_reference(q.mod, x)
        outs = {t: b.run(x) for t, b in builds.items()}
        res["bit_exact"] = {t: bool(np.array_equal(o, ref)) for t, o in outs.items()}
        res["integer_only"] = {t: b.integer_only.get("ok") for t, b in builds.items()}

        so = ort.SessionOptions()
        so.intra_op_num_threads = a.threads
        so.inter_op_num_threads = 1
        fp32 = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])

        class Reader(CalibrationDataReader):
            def __init__(self):
                self.it = iter([{in_name: c} for c in calib])

            def get_next(self):
                return next(self.it, None)

        q_path = str(Path(td) / "m_int8.onnx")
        quantize_static(str(onnx_path), q_path, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        int8 = ort.InferenceSession(q_path, so, providers=["CPUExecutionProvider"])

        import tvm

        engines = {}
        for t, b in builds.items():
            vm = b._vm_()
            xt = tvm.runtime.tensor(b._encode_input(b._prepare(x), b.manifest["io"]["inputs"][0]["dtype"]))
            engines[f"zsq_int8_{t}"] = (lambda vm=vm, xt=xt: vm["main"](xt))
        engines["ort_fp32"] = lambda: fp32.run(None, {in_name: x})
        engines["ort_int8_qdq"] = lambda: int8.run(None, {in_name: x})
        med = {}
        # interleave rounds to spread the noise from the shared machine over all engines
        samples = {k: [] for k in engines}
        for k, f in engines.items():  # warm-up
            for _ in range(3):
                f()
        for _ in range(a.runs):
            for k, f in engines.items():
                t = time.perf_counter()
                f()
                samples[k].append((time.perf_counter() - t) * 1e3)
        for k, s in samples.items():
            med[k] = statistics.median(s)
        res["median_ms"] = med
        res["min_ms"] = {k: min(s) for k, s in samples.items()}
        res["samples_ms"] = samples
        base = med["zsq_int8_host"]
        res["speedup_vs_zsq_host"] = {k: base / v for k, v in med.items()}
        res["zsq_vnni_vs_ort_fp32"] = med["ort_fp32"] / med["zsq_int8_host-vnni"]
        res["zsq_vnni_vs_ort_int8"] = med["ort_int8_qdq"] / med["zsq_int8_host-vnni"]

    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1, default=str))
    for k, v in med.items():
        print(f"{k:22s} median {v:9.2f} ms  min {res['min_ms'][k]:9.2f} ms  "
              f"speedup vs zsq host {res['speedup_vs_zsq_host'][k]:.2f}x")
    print(f"replaced convs: {res['vnni_replaced']}  bit_exact: {res['bit_exact']}  integer_only: {res['integer_only']}")
    print(f"host-vnni vs ORT fp32: {res['zsq_vnni_vs_ort_fp32']:.2f}x   vs ORT int8: {res['zsq_vnni_vs_ort_int8']:.2f}x")


if __name__ == "__main__":
    main()
