"""zsq INT8 (integer-only) vs ONNX Runtime FP32 / INT8 QDQ (and optionally TVM FP32), QuartzNet-5x5 and -15x5.

For each model: export ONNX (BatchNorm kept), quantize W8A8 (8 seeded N(0,1) calibration mels), compile
``--target`` (default ``host-vnni``), check bit-exactness against the numpy reference, then for each
thread count start one worker process (TVM's thread pool size is fixed per process) that times all
engines **in that one process, on the same input**, taking turns in short blocks
(:func:`zsq_tvm.benchmark.compare_onnx`).  ORT INT8 is ``quantize_static`` QDQ (per-channel s8 weights,
u8 activations) calibrated on the same seeded mels.  ``--tvm-fp32`` adds TVM's default (untuned)
FP32 build of the same ONNX, timed with ``--tvm-fp32-runs`` runs after the others.

QuartzNet-5x5 uses the shipped trained weights; QuartzNet-15x5 random weights (seed 0, non-trivial BN
statistics, as bench/acceptance_w8a8.py) -- latency does not depend on the weight values.

    python3 -m bench.x86_compare --models quartznet5x5 quartznet15x5 --threads 1 2 --runs 20 \\
        --json bench/results/x86_compare.json --png docs/figures/latency_vs_size.png
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_model(name):
    import torch

    from zsq_tvm.zoo.nets import build_model, randomize_batchnorm

    if name in ("quartznet5x5", "quartznet-tiny", "jasper-dr-small", "conformer-ctc-small"):
        from zsq_tvm.zoo.models import load_torch

        return load_torch(name), "trained (shipped checkpoint)"
    torch.manual_seed(0)
    m = build_model(name)
    randomize_batchnorm(m)  # torch's global RNG, seeded above: the same statistics as before
    return m.eval(), "random weights (seed 0)"


def worker(a):
    """One process, one thread count: all engines on the same input."""
    from zsq_tvm.benchmark import compare_onnx, set_threads

    set_threads(a.threads[0])
    res = compare_onnx(a.worker[0], a.worker[1], threads=a.threads[0], runs=a.runs, seed=0, calib=a.calib)
    if a.tvm_fp32:
        import numpy as np
        import onnx
        import tvm
        from tvm import relax
        from tvm.relax.frontend.onnx import from_onnx

        from zsq_tvm.targets import get_target

        proto = onnx.load(a.worker[1])
        shape = res["input_shape"]
        mod = from_onnx(proto, {proto.graph.input[0].name: shape}, keep_params_in_input=False)
        t0 = time.perf_counter()
        ex = tvm.compile(mod, target=get_target("host").make())
        res["tvm_fp32_compile_s"] = time.perf_counter() - t0
        vm = relax.VirtualMachine(ex, tvm.cpu())
        x = tvm.runtime.tensor(np.random.default_rng(0).standard_normal(shape).astype(np.float32))
        vm["main"](x)
        ts = []
        for _ in range(a.tvm_fp32_runs):
            t = time.perf_counter()
            vm["main"](x)
            ts.append((time.perf_counter() - t) * 1e3)
        res["median_ms"]["tvm_fp32_untuned"] = sorted(ts)[len(ts) // 2]
        res["min_ms"]["tvm_fp32_untuned"] = min(ts)
        res["samples_ms"]["tvm_fp32_untuned"] = ts
        res["ratio_vs_zsq"]["tvm_fp32_untuned"] = res["median_ms"]["tvm_fp32_untuned"] / res["median_ms"]["zsq_int8"]
    print("@@RESULT@@" + json.dumps(res))


def plot(results, png):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = {"zsq_int8": "zsq INT8 (integer-only)", "ort_int8_qdq": "ONNX Runtime INT8 QDQ",
             "ort_fp32": "ONNX Runtime FP32", "tvm_fp32_untuned": "TVM FP32 (untuned)"}
    marks = {"zsq_int8": "o", "ort_int8_qdq": "s", "ort_fp32": "^", "tvm_fp32_untuned": "v"}
    threads = sorted({r["threads"] for m in results["models"].values() for r in m["runs"]})
    fig, axes = plt.subplots(1, len(threads), figsize=(5.5 * len(threads), 4.2), squeeze=False)
    for ax, th in zip(axes[0], threads):
        for eng, label in names.items():
            xs, ys, tags = [], [], []
            for mname, m in results["models"].items():
                for r in m["runs"]:
                    if r["threads"] == th and eng in r["median_ms"]:
                        size = m["size_mb"]["fp32" if "fp32" in eng else "int8"]
                        xs.append(size)
                        ys.append(r["median_ms"][eng])
                        tags.append(mname)
            if xs:
                ax.plot(xs, ys, marker=marks[eng], linestyle="-", label=label)
                for x_, y_, t_ in zip(xs, ys, tags):
                    ax.annotate(t_.replace("quartznet", "QN"), (x_, y_), fontsize=7, textcoords="offset points",
                                xytext=(4, 4))
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("model size (MB, 10^6 B)")
        ax.set_ylabel("latency, 10 s audio, batch 1 (ms, median)")
        ax.set_title(f"{results['cpu']}, {th} thread{'s' if th > 1 else ''}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    Path(png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=120)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["quartznet5x5", "quartznet15x5"])
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--frames", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--calib", type=int, default=8)
    ap.add_argument("--target", default="host-vnni")
    ap.add_argument("--tvm-fp32", action="store_true", help="also time TVM's untuned FP32 build (slow)")
    ap.add_argument("--tvm-fp32-runs", type=int, default=3)
    ap.add_argument("--json", default=str(ROOT / "bench/results/x86_compare.json"))
    ap.add_argument("--png", default=str(ROOT / "docs/figures/latency_vs_size.png"))
    ap.add_argument("--worker", nargs=2, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        return worker(a)

    import numpy as np

    import zsq_tvm
    from zsq_tvm.zoo.nets.export import export_onnx
    from relax_passes.reference import run_reference
    from zsq_tvm.backends.x86.cpu import host_cpu

    results = {"cpu": host_cpu(), "frames": a.frames, "batch": 1, "target": a.target, "runs": a.runs,
               "command": " ".join(["python3 -m bench.x86_compare"] + sys.argv[1:]), "models": {}}
    with tempfile.TemporaryDirectory(prefix="zsq-x86cmp-") as td:
        for name in a.models:
            model, weights = load_model(name)
            onnx_path = str(export_onnx(model, Path(td) / f"{name}.onnx", frames=a.frames))
            rng = np.random.default_rng(0)
            calib = np.concatenate([rng.standard_normal((1, 64, a.frames)).astype(np.float32) for _ in range(a.calib)])
            t0 = time.perf_counter()
            q = zsq_tvm.quantize(onnx_path, zsq_tvm.QuantConfig(frames=a.frames, calib=calib))
            quant_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            b = zsq_tvm.compile(q, target=a.target)
            compile_s = time.perf_counter() - t0
            bdir = Path(td) / f"{name}-build"
            b.save(bdir)
            x = np.random.default_rng(1).standard_normal((1, 64, a.frames)).astype(np.float32)
            bit_exact = bool(np.array_equal(b.run(x), run_reference(q.mod, x)))
            rep = zsq_tvm.report(q)
            m = {"weights": weights, "quantize_s": quant_s, "compile_s": compile_s, "bit_exact": bit_exact,
                 "integer_only": b.integer_only.get("ok"),
                 "size_mb": {"fp32": rep["fp32"]["size_mb"], "int8": rep["quantized"]["size_mb"]}, "runs": []}
            print(f"{name}: quantize {quant_s:.0f} s, compile {a.target} {compile_s:.0f} s, bit-exact {bit_exact}, "
                  f"integer-only {m['integer_only']}", flush=True)
            for th in a.threads:
                cmd = [sys.executable, "-m", "bench.x86_compare", "--worker", str(bdir), onnx_path, "--threads", str(th),
                       "--runs", str(a.runs), "--calib", str(a.calib)]
                if a.tvm_fp32:
                    cmd += ["--tvm-fp32", "--tvm-fp32-runs", str(a.tvm_fp32_runs)]
                env = dict(os.environ, TVM_NUM_THREADS=str(th), OMP_NUM_THREADS=str(th))
                out = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
                line = [ln for ln in out.stdout.splitlines() if ln.startswith("@@RESULT@@")]
                if out.returncode or not line:
                    raise SystemExit(f"worker failed ({name}, {th} threads):\n{out.stderr[-3000:]}")
                r = json.loads(line[0][len("@@RESULT@@"):])
                m["runs"].append(r)
                med = r["median_ms"]
                print(f"  {th} thread(s): " + ", ".join(f"{k} {v:.1f} ms" for k, v in med.items()) + "  | zsq faster by "
                      + ", ".join(f"{k} {v:.2f}x" for k, v in r["ratio_vs_zsq"].items()), flush=True)
            results["models"][name] = m
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(results, indent=1))
    if a.png:
        plot(results, a.png)
    print(f"-> {a.json}" + (f", {a.png}" if a.png else ""))


if __name__ == "__main__":
    main()
