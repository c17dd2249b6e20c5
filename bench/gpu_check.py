"""Bit-exact GPU check of the sm_75 int8 GEMM schedules (zsq_tvm/cuda/int8_gemm.py).

prepare (here, full TVM):  python bench/gpu_check.py prepare DIR
    builds dp4a + wmma kernels for a few shapes, export_library -> DIR/<case>.so, and writes
    DIR/<case>.npz with inputs, kernel bias and the numpy/intmath expected output.
run (GPU machine, runtime-only TVM, TVM_USE_RUNTIME_LIB=1):  python bench/gpu_check.py run DIR
    loads each .so, runs on cuda:0, compares bit-exactly, prints one line per case, exit 1 on any
    mismatch.  Imports nothing from zsq_tvm.
"""

import glob
import os
import sys

import numpy as np

CASES = [(500, 256, 256, "uint8"), (500, 256, 256, "int8"), (100, 64, 64, "uint8"), (512, 1024, 29, "uint8")]


def prepare(out):
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
    from zsq_tvm.cuda import int8_gemm as g

    os.makedirs(out, exist_ok=True)
    for T_, K, M, a in CASES:
        spec = g.GemmSpec(T_, K, M, a_dtype=a)
        X, W, bias, Mul, Sh = g.random_problem(spec, seed=T_ + K + M)
        want = g.reference(spec, X, W, bias, Mul, Sh)
        for name, fn in (("dp4a", g.schedule_dp4a), ("wmma", g.schedule_wmma)):
            case = f"{name}_{T_}x{K}x{M}_{a}"
            g.build(fn(spec)).export_library(os.path.join(out, case + ".so"))
            np.savez(os.path.join(out, case + ".npz"), X=X, W=W, B=g.kernel_bias(spec, W, bias, name),
                     Mul=Mul, Sh=Sh, want=want)
            print("prepared", case, flush=True)


def run(out):
    import tvm

    dev = tvm.cuda(0)
    bad = 0
    for so in sorted(glob.glob(os.path.join(out, "*.so"))):
        d = np.load(so[:-3] + ".npz")
        f = tvm.runtime.load_module(so)["main"]
        args = [tvm.runtime.tensor(d[k], dev) for k in ("X", "W", "B", "Mul", "Sh")]
        y = tvm.runtime.tensor(np.zeros_like(d["want"]), dev)
        f(*args, y)
        dev.sync()
        got = y.numpy()
        ok = np.array_equal(got, d["want"])
        bad += not ok
        t = f.time_evaluator if hasattr(f, "time_evaluator") else None
        ms = ""
        try:
            ev = tvm.runtime.load_module(so).time_evaluator("main", dev, number=20, repeat=3)
            ms = f" {np.median(ev(*args, y).results) * 1e3:.4f} ms"
        except Exception as e:  # timing is a bonus
            ms = f" (no timing: {type(e).__name__})"
        del t
        print(f"{'OK  ' if ok else 'FAIL'} {os.path.basename(so)[:-3]}{ms}"
              + ("" if ok else f" mismatches={int((got != d['want']).sum())}"), flush=True)
    print("ALL BIT-EXACT" if not bad else f"{bad} CASES MISMATCH")
    return 1 if bad else 0


if __name__ == "__main__":
    mode, out = sys.argv[1], sys.argv[2]
    sys.exit(prepare(out) if mode == "prepare" else run(out))
