"""The machine's int8 peak (AVX-512 VNNI) and the fraction of it our integer-only models reach.

    python3 -m bench.vnni_peak --compare bench/results/x86_compare.json --json bench/results/vnni_peak.json

Peak: ``bench/native/vnni_peak.c`` (compiled here with the system C compiler, the one TVM's
``export_library`` uses) runs 12 independent ``vpdpbusd zmm`` chains per thread on register-resident
operands, so nothing but the instruction's throughput bounds it; 64 multiply-accumulates per
instruction.  Best of ``--repeat`` runs, per thread count.

Fraction: ``MACs(model, 10 s) / median latency`` from an ``x86_compare.py`` JSON (its ``macs`` field,
or the model's ONNX cost when the JSON predates that field) divided by the peak at the same thread count.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "bench/native/vnni_peak.c"

# MACs for a 10 s (1000-frame) input, from zsq_tvm.cost on each model's ONNX (BN kept); used only
# when the compare JSON has no "macs" (older runs).  Recompute: zsq_tvm.report(onnx, frames=1000)["macs"].
KNOWN_MACS = {"quartznet5x5": 3_342_496_000, "quartznet15x5": 9_423_520_000}


def build(td: Path) -> Path:
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        raise SystemExit("no C compiler (gcc/cc) on PATH: install gcc (TVM's export_library needs it too)")
    exe = td / "vnni_peak"
    subprocess.run([cc, "-O2", "-mavx512f", "-mavx512vnni", "-fopenmp", str(SRC), "-o", str(exe)], check=True)
    return exe


def peak(exe: Path, threads: int, iters: int, repeat: int) -> dict:
    runs = []
    for _ in range(repeat):
        out = subprocess.run([str(exe), str(threads), str(iters)], capture_output=True, text=True, check=True)
        th, macs, sec, _ = out.stdout.split()
        runs.append(float(macs) / float(sec) / 1e9)
    return {"threads": threads, "gmacs_best": max(runs), "gmacs_runs": runs}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--iters", type=int, default=50_000_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--compare", default=None, help="an x86_compare.py JSON: report the fraction of peak reached")
    ap.add_argument("--json", default=str(ROOT / "bench/results/vnni_peak.json"))
    a = ap.parse_args()
    from zsq_tvm.backends.x86.cpu import host_features

    if "avx512_vnni" not in host_features():
        raise SystemExit("this CPU has no AVX-512 VNNI")
    with tempfile.TemporaryDirectory(prefix="zsq-vnni-peak-") as td:
        exe = build(Path(td))
        res = {"peak": [peak(exe, t, a.iters, a.repeat) for t in a.threads], "command": " ".join(sys.argv)}
    for p in res["peak"]:
        print(f"VNNI int8 peak, {p['threads']} thread(s): {p['gmacs_best']:.0f} GMAC/s "
              f"({2 * p['gmacs_best'] / 1e3:.2f} int8 TOPS)")
    if a.compare:
        cmp_ = json.loads(Path(a.compare).read_text())
        pk = {p["threads"]: p["gmacs_best"] for p in res["peak"]}
        res["models"] = {}
        for name, m in cmp_["models"].items():
            macs = m.get("macs") or KNOWN_MACS.get(name)
            if macs is None:
                continue
            for r in m["runs"]:
                th = r["threads"]
                if th not in pk:
                    continue
                ms = r["median_ms"]["zsq_int8"]
                g = macs / (ms / 1e3) / 1e9
                res["models"].setdefault(name, []).append(
                    {"threads": th, "macs": macs, "median_ms": ms, "gmacs": g, "fraction_of_peak": g / pk[th]})
                print(f"{name}, {th} thread(s): {macs / 1e9:.2f} GMAC in {ms:.1f} ms = {g:.0f} GMAC/s "
                      f"= {100 * g / pk[th]:.0f} % of peak")
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(res, indent=1))
    print(f"-> {a.json}")


if __name__ == "__main__":
    main()
