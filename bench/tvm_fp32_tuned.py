"""TVM FP32 tuned with MetaSchedule + XGBoost vs zsq INT8 (integer-only), same process, same input.

The issue's third speed bar: zsq INT8 >= 3x faster than TVM FP32 "tuned the same way".  zsq's
``host-vnni`` build is hand-scheduled kernels plus the default lowering (0 tuning trials); here TVM
FP32 gets what zsq gives every other build: ``zsq tune``'s machinery (:func:`zsq_tvm.tune.tune`,
MetaSchedule evolutionary search, XGBoost cost model, deduplicated tasks, the crash-safe database) on
the BN-folded float module, with ``--trials`` measured candidates in total, then compiled with the
best record of every kernel (:func:`zsq_tvm.tuning_db.apply_tuning`).  The database survives interruption:
rerun with the same ``--db`` and a larger ``--trials`` to resume.

    python3 -m bench.tvm_fp32_tuned --model quartznet5x5 --trials 200 --db /tmp/fp32db-qn5 \\
        --threads 1 --json bench/results/tvm_fp32_tuned_quartznet5x5.json

Reports per engine the median/min latency of ``--runs`` interleaved runs (1x64xT mel, batch 1), the
tuning time and trials, and the ratio TVM FP32 tuned / zsq INT8; also the untuned FP32 latency.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="quartznet5x5", help="quartznet5x5, quartznet15x5 (random weights), ...")
    ap.add_argument("--frames", type=int, default=1000)
    ap.add_argument("--trials", type=int, default=200, help="total measured candidates over all FP32 tasks")
    ap.add_argument("--db", required=True, help="tuning database folder (resumable)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    os.environ["TVM_NUM_THREADS"] = str(a.threads)

    import numpy as np
    import onnx
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    import zsq_tvm
    from relax_passes.fold_batchnorm import FoldBatchNorm
    from bench.x86_compare import load_model
    from zsq_tvm.build import lower
    from zsq_tvm.zoo.nets.export import export_onnx
    from relax_passes.reference import run_reference
    from zsq_tvm.targets import get_target
    from relax_passes.tir_stack_scratch import register_pipeline
    from zsq_tvm.tune import tune
    from zsq_tvm.tuning_db import apply_tuning

    work = Path(a.db).with_suffix(".work")
    work.mkdir(parents=True, exist_ok=True)
    model, weights = load_model(a.model)
    onnx_path = export_onnx(model, work / f"{a.model}.onnx", frames=a.frames)
    proto = onnx.load(str(onnx_path))
    mod = from_onnx(proto, {proto.graph.input[0].name: (1, 64, a.frames)}, keep_params_in_input=False)
    mod = FoldBatchNorm(onnx_model=proto)(mod)  # conv+BN folded, as ONNX Runtime and our INT8 build do
    tgt = get_target("host").make()
    lowered, finish = lower(mod, tgt)

    t0 = time.perf_counter()
    summary = tune(None, target="host", trials=a.trials, db_path=a.db, lowered=lowered, progress=True)
    tune_s = time.perf_counter() - t0
    tuned, info = apply_tuning(lowered, tgt, a.db)
    pipe = register_pipeline()  # the TIR pipeline zsq's own builds use (scratch buffers on the stack)
    t0 = time.perf_counter()
    ex_tuned = tvm.compile(tuned, target=tgt, relax_pipeline=finish, tir_pipeline=pipe)
    compile_s = time.perf_counter() - t0
    ex_untuned = tvm.compile(lowered, target=tgt, relax_pipeline=finish, tir_pipeline=pipe)

    rng = np.random.default_rng(0)
    calib = np.concatenate([rng.standard_normal((1, 64, a.frames)).astype(np.float32) for _ in range(8)])
    q = zsq_tvm.quantize(str(onnx_path), zsq_tvm.QuantConfig(frames=a.frames, calib=calib, progress=False))
    b = zsq_tvm.compile(q, target="host-vnni")
    x = np.random.default_rng(1).standard_normal((1, 64, a.frames)).astype(np.float32)
    assert np.array_equal(b.run(x), run_reference(q.mod, x)), "zsq build is not bit-exact"

    dev = tvm.cpu()
    vm_t = relax.VirtualMachine(ex_tuned, dev)
    vm_u = relax.VirtualMachine(ex_untuned, dev)
    xt = tvm.runtime.tensor(x, dev)

    def first(out):
        return (out[0] if not hasattr(out, "numpy") else out).numpy()

    # a schedule must not change the float result beyond rounding
    fp32_diff = float(np.max(np.abs(first(vm_t["main"](xt)) - first(vm_u["main"](xt)))))

    def t_zsq():
        s = time.perf_counter()
        b.run(x)
        return (time.perf_counter() - s) * 1e3

    def t_vm(vm):
        def f():
            s = time.perf_counter()
            vm["main"](xt)
            return (time.perf_counter() - s) * 1e3
        return f

    engines = {"zsq_int8": t_zsq, "tvm_fp32_tuned": t_vm(vm_t)}
    for f in engines.values():
        f()
    samples = {k: [] for k in engines}
    for _ in range(a.runs):
        for k, f in engines.items():
            samples[k].append(f())
    untuned = [t_vm(vm_u)() for _ in range(2)]
    med = {k: float(np.median(v)) for k, v in samples.items()}
    res = {"model": a.model, "weights": weights, "frames": a.frames, "threads": a.threads, "runs": a.runs,
           "trials": a.trials, "tune": summary, "tune_seconds_this_run": tune_s, "applied_records": info,
           "compile_tuned_s": compile_s, "median_ms": med, "min_ms": {k: min(v) for k, v in samples.items()},
           "samples_ms": samples, "tvm_fp32_untuned_ms": untuned,
           "ratio_tvm_fp32_tuned_over_zsq": med["tvm_fp32_tuned"] / med["zsq_int8"],
           "ratio_tvm_fp32_untuned_over_zsq": float(np.median(untuned)) / med["zsq_int8"],
           "fp32_tuned_vs_untuned_max_abs_diff": fp32_diff,
           "command": " ".join(["python3 -m bench.tvm_fp32_tuned"] + sys.argv[1:])}
    print(f"{a.model}, {a.threads} thread(s): zsq INT8 {med['zsq_int8']:.1f} ms, TVM FP32 tuned "
          f"({summary.get('records_after')} records, {summary['tasks']} tasks) {med['tvm_fp32_tuned']:.1f} ms "
          f"-> zsq {res['ratio_tvm_fp32_tuned_over_zsq']:.1f}x faster; untuned FP32 {np.median(untuned):.0f} ms "
          f"({res['ratio_tvm_fp32_untuned_over_zsq']:.0f}x)")
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
