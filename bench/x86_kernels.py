"""Pointwise int8 conv1d (+ fused requantize) on x86: our VNNI kernel vs TVM default vs ONNX Runtime.

For each shape (QuartzNet pointwise convs, T=500 frames, batch 1) and each thread count, one child
process builds everything, generates one set of inputs and times, on those same inputs
(median of ``--runs`` calls after warm-up):

* ``vnni_tk``   -- :mod:`zsq_tvm.backends.x86.pointwise`, time-major X[T,K] u8 -> Y[T,M] int8, requant fused;
* ``vnni_ncw``  -- the same kernel taking/returning the graph's NCW layout (both transposes inside);
* ``tvm_default`` -- the integer Relax graph Quantize emits for this layer (conv1d u8 x s8 -> i32,
  bias add, astype/multiply/add/right_shift/clip/astype) through ``relax_passes.lowering.lower``
  (LegalizeOps + fusion) and ``tvm.compile``: TVM's untuned default, NCW;
* ``ort_matmulinteger`` -- ONNX Runtime ``MatMulInteger`` u8 x s8 -> i32 on [T,K] x [K,M]
  (GEMM only, no requantize: flatters ORT);
* ``ort_qlinearconv`` -- ONNX Runtime ``QLinearConv`` NCW u8 x s8 (per-channel) -> u8 (conv +
  requantize, float scales).

Every TVM output is checked bit-exact against the numpy oracle before timing.  Thread counts are
set per child process (``TVM_NUM_THREADS``; ORT ``intra_op_num_threads``) because TVM's thread pool
cannot be resized in-process in 0.27.  GMAC/s = T*K*M / median time.  Results:
``bench/results/x86_kernels.json``.  The CPU is shared: numbers are noisy, ratios within one child
are the meaningful part.

    python3 -m bench.x86_kernels [--runs 30] [--threads 1 2] [--shapes 256x256 512x512 256x512]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _median_time(fn, runs: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def _tvm_default(T, K, M, W, b, Mul, Sh, qmin, qmax):
    import tvm
    from tvm import relax, tirx

    from relax_passes.lowering import host_target, lower

    bb = relax.BlockBuilder()
    from tvm.script import relax as R

    x = relax.Var("x", R.Tensor((1, K, T), "uint8"))
    c = lambda a, d: relax.const(np.asarray(a).astype(d).reshape(1, M, 1), d)  # noqa: E731
    with bb.function("main", [x]):
        with bb.dataflow():
            a = bb.emit(relax.op.nn.conv1d(x, relax.const(W[:, :, None], "int8"), out_dtype="int32"))
            a = bb.emit(relax.op.add(a, c(b, "int32")))
            y = bb.emit(relax.op.astype(a, "int64"))
            y = bb.emit(relax.op.multiply(y, c(Mul, "int64")))
            y = bb.emit(relax.op.add(y, c(np.int64(1) << (np.asarray(Sh, np.int64) - 1), "int64")))
            y = bb.emit(relax.op.right_shift(y, c(Sh, "int64")))
            y = bb.emit(relax.op.clip(y, relax.prim_value(tirx.IntImm("int64", qmin)),
                                      relax.prim_value(tirx.IntImm("int64", qmax))))
            y = bb.emit_output(relax.op.astype(y, "int8"))
        bb.emit_func_output(y)
    target = host_target()
    with target:
        lowered = lower(bb.get())
    ex = tvm.compile(lowered, target=target)
    return relax.VirtualMachine(ex, tvm.cpu())


def _ort_session(model, threads):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _ort_matmulinteger(T, K, M, W, threads):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    g = helper.make_graph(
        [helper.make_node("MatMulInteger", ["x", "w"], ["y"])], "mmi",
        [helper.make_tensor_value_info("x", TensorProto.UINT8, [T, K])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [T, M])],
        [numpy_helper.from_array(np.ascontiguousarray(W.T), "w")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return _ort_session(m, threads)


def _ort_qlinearconv(T, K, M, W, threads, rng):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inits = [
        numpy_helper.from_array(np.array(0.02, np.float32), "xs"),
        numpy_helper.from_array(np.array(0, np.uint8), "xz"),
        numpy_helper.from_array(W[:, :, None], "w"),
        numpy_helper.from_array(rng.uniform(1e-3, 2e-3, M).astype(np.float32), "ws"),
        numpy_helper.from_array(np.zeros(M, np.int8), "wz"),
        numpy_helper.from_array(np.array(0.05, np.float32), "ys"),
        numpy_helper.from_array(np.array(0, np.uint8), "yz"),
        numpy_helper.from_array(rng.integers(-5000, 5000, M).astype(np.int32), "b"),
    ]
    g = helper.make_graph(
        [helper.make_node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz", "b"], ["y"])],
        "qlc", [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, K, T])],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, [1, M, T])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return _ort_session(m, threads)


def child(T, K, M, threads, runs) -> dict:
    import tvm

    from zsq_tvm.backends.x86 import pointwise as pw
    from zsq_tvm.backends.x86.vnni import check_vnni_asm

    rng = np.random.default_rng(1234)
    qmin, qmax = -127, 127
    Xtk = rng.integers(0, 256, (T, K)).astype(np.uint8)
    Xncw = np.ascontiguousarray(Xtk.T)
    W = rng.integers(-127, 128, (M, K)).astype(np.int8)
    b = rng.integers(-20000, 20000, M).astype(np.int32)
    Mul = rng.integers(2**30, 2**31, M).astype(np.int64)
    Sh = rng.integers(38, 42, M).astype(np.int64)
    macs = T * K * M
    res: dict = {"T": T, "K": K, "M": M, "threads": threads, "runs": runs, "macs": macs,
                 "tvm_num_threads": int(tvm.get_global_func("runtime.NumThreads")())}
    timings = {}

    ref_tk = None
    for layout, X in (("tk", Xtk), ("ncw", Xncw)):
        spec = pw.PointwiseSpec(T, K, M, qmin=qmin, qmax=qmax, layout=layout)
        k = pw.PointwiseKernel(spec, W, b, Mul, Sh)
        y = k(X)
        ref = pw.reference(spec, X, W, b, Mul, Sh)
        if layout == "tk":
            ref_tk = ref
        assert np.array_equal(y, ref), f"vnni_{layout} mismatch"
        res[f"vnni_{layout}_vpdpbusd_in_asm"] = check_vnni_asm(k.lib)
        res[f"vnni_{layout}_tile"] = [spec.tile_t, spec.tile_m * 16]
        Xt = tvm.runtime.tensor(X[None] if layout == "ncw" else X)  # ncw kernels take [1, K, T]
        timings[f"vnni_{layout}"] = _median_time(lambda: k.run(Xt), runs)

    vm = _tvm_default(T, K, M, W, b, Mul, Sh, qmin, qmax)
    xt = tvm.runtime.tensor(Xncw[None])
    y = vm["main"](xt).numpy()
    assert np.array_equal(y[0], ref_tk.T), "tvm default mismatch"
    timings["tvm_default"] = _median_time(lambda: vm["main"](xt), max(5, min(runs, 20)), warmup=1)

    s = _ort_matmulinteger(T, K, M, W, threads)
    out = s.run(None, {"x": Xtk})[0]
    assert np.array_equal(out, Xtk.astype(np.int64) @ W.T.astype(np.int64)), "ORT MatMulInteger"
    timings["ort_matmulinteger"] = _median_time(lambda: s.run(None, {"x": Xtk}), runs)

    s2 = _ort_qlinearconv(T, K, M, W, threads, rng)
    x3 = Xncw[None]
    s2.run(None, {"x": x3})
    timings["ort_qlinearconv"] = _median_time(lambda: s2.run(None, {"x": x3}), runs)

    res["median_s"] = timings
    res["gmacs"] = {k: macs / v / 1e9 for k, v in timings.items()}
    res["ratio_vnni_ncw_over"] = {k: timings[k] / timings["vnni_ncw"] for k in timings}
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--shapes", nargs="+", default=["256x256", "512x512", "256x512"],
                    help="KxM (C_in x C_out)")
    ap.add_argument("--T", type=int, default=500)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "x86_kernels.json"))
    ap.add_argument("--child", nargs=4, type=int, metavar=("T", "K", "M", "THREADS"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        T, K, M, th = a.child
        print("RESULT " + json.dumps(child(T, K, M, th, a.runs)), flush=True)
        return

    from zsq_tvm.backends.x86.cpu import has_vnni

    if not has_vnni():
        sys.exit("this CPU lacks avx512_vnni")
    rows = []
    for shape in a.shapes:
        K, M = (int(v) for v in shape.split("x"))
        for th in a.threads:
            env = dict(os.environ, TVM_NUM_THREADS=str(th), OMP_NUM_THREADS=str(th))
            p = subprocess.run([sys.executable, "-m", "bench.x86_kernels", "--runs", str(a.runs), "--child",
                                str(a.T), str(K), str(M), str(th)], env=env, cwd=ROOT, capture_output=True,
                               text=True)
            line = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
            if p.returncode or not line:
                print(p.stdout[-2000:], p.stderr[-4000:], file=sys.stderr)
                sys.exit(f"child {shape} x{th} failed")
            r = json.loads(line[0][7:])
            rows.append(r)
            g = r["gmacs"]
            print(f"T={a.T} K={K} M={M} threads={th}: " + "  ".join(f"{k} {v:6.1f}" for k, v in g.items())
                  + " GMAC/s", flush=True)
            print("   time ratio vs vnni_ncw: " + "  ".join(
                f"{k} {v:5.2f}x" for k, v in r["ratio_vnni_ncw_over"].items()), flush=True)
    import platform

    meta = {"cpu": platform.processor() or "x86_64", "nproc": os.cpu_count(),
            "note": "shared 2-core Zen 4 machine; medians; ratios within one process are meaningful",
            "loadavg_at_end": os.getloadavg()}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"meta": meta, "results": rows}, indent=1))
    print("wrote", a.out)


if __name__ == "__main__":
    main()
