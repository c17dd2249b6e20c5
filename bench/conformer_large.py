"""Conformer-CTC large (NeMo config: d = 512, 18 layers, 8 heads; random weights) end to end, timed.

    python3 -m bench.conformer_large --frames 400 --work /tmp/zl/large --json bench/results/conformer_large.json

Runs, each as its own process under ``/usr/bin/time -v`` (wall time and peak RSS recorded):

1. ``zsq quantize conformer-ctc-large --frames T -o WORK/q``   (export with random weights, ONNX -> W8A8)
2. ``zsq compile WORK/q -o WORK/b``                            (host build)
3. ``zsq check WORK/b``                                        (integer-only, re-lowered and re-checked)
4. ``python3 -m bench.conformer_bitexact WORK/q WORK/b``               (TVM == numpy reference, real + random mels)

and counts the kernels (PrimFuncs) of the lowered module with and without
:class:`relax_passes.share_scalar_constants.ShareScalarConstants` (``--count-unshared``).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _timed(cmd: list[str], log: Path) -> dict:
    t = time.time()
    p = subprocess.run(["/usr/bin/time", "-v", *cmd], cwd=ROOT, capture_output=True, text=True)
    log.write_text(p.stdout + p.stderr)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr)
    cpu = [re.search(rf"{k} time \(seconds\): ([\d.]+)", p.stderr) for k in ("User", "System")]
    rec = {"command": " ".join(cmd), "exit": p.returncode, "wall_s": round(time.time() - t, 1),
           "cpu_s": round(sum(float(m.group(1)) for m in cpu if m), 1),
           "peak_rss_gb": round(int(rss.group(1)) / 2**20, 2) if rss else None}
    print(f"{rec['wall_s']:7.1f} s  {rec['peak_rss_gb']} GB  exit {p.returncode}  {rec['command']}", flush=True)
    if p.returncode != 0:
        print(p.stdout[-2000:] + p.stderr[-3000:], file=sys.stderr)
    return rec


def _kernel_counts(qdir: Path) -> dict:
    import tvm

    from relax_passes import lowering
    from zsq_tvm.api import QuantizedModel
    from zsq_tvm.build import lower

    q = QuantizedModel.load(qdir)
    tgt = lowering.host_target()
    n = lambda m: sum(isinstance(f, tvm.tirx.PrimFunc) for f in m.functions.values())  # noqa: E731
    with tgt:
        unshared = n(lowering.lower(q.mod))
    return {"without_share_scalar_constants": unshared, "with_share_scalar_constants": n(lower(q.mod, tgt)[0])}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=400)
    ap.add_argument("--work", default="/tmp/zsq-conformer-large")
    ap.add_argument("--manifest", default="/tmp/corpus/test.json")
    ap.add_argument("-n", type=int, default=3, help="real utterances for the bit-exactness check")
    ap.add_argument("--random", type=int, default=2, help="random mels for the bit-exactness check")
    ap.add_argument("--count-unshared", action="store_true", help="also lower without kernel sharing and count")
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    work = Path(a.work)
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    q, b = work / "q", work / "b"
    py = sys.executable
    zsq = [py, "-m", "zsq_tvm.cli"]
    steps = {
        "quantize": _timed([*zsq, "quantize", "conformer-ctc-large", "--frames", str(a.frames), "-o", str(q)],
                           work / "quantize.log"),
        "compile": _timed([*zsq, "compile", str(q), "-o", str(b)], work / "compile.log"),
        "check": _timed([*zsq, "check", str(b)], work / "check.log"),
        "bitexact": _timed([py, "-m", "bench.conformer_bitexact", str(q), str(b), "--manifest", a.manifest, "-n",
                            str(a.n), "--random", str(a.random), "--json", str(work / "bitexact.json")],
                           work / "bitexact.log"),
    }
    man = json.loads((b / "manifest.json").read_text())
    io = man["integer_only"]
    bit = json.loads((work / "bitexact.json").read_text())
    res = {
        "model": "conformer-ctc-large", "weights": man["source"]["path"], "frames": a.frames,
        "wbits": man["wbits"], "abits": man["abits"], "target": man["target"], "tvm_target": man["tvm_target"],
        "integer_only_ok": bool(io.get("ok")) and "integer-only: ok" in (work / "check.log").read_text(),
        "kernels": io.get("prim_funcs"),
        "all_bit_exact": bit["all_bit_exact"],
        "bitexact": [{k: u[k] for k in ("audio", "frames", "bit_exact", "tvm_seconds", "reference_seconds")}
                     for u in bit["utterances"]],
        "steps": steps,
        "quantize_plus_compile_wall_s": round(steps["quantize"]["wall_s"] + steps["compile"]["wall_s"], 1),
        "machine": "shared 2-core AMD EPYC (znver4), 24 GiB, other jobs running: times indicative",
    }
    if a.count_unshared:
        res["kernel_counts"] = _kernel_counts(q)
    print(json.dumps({k: v for k, v in res.items() if k not in ("steps", "bitexact")}, indent=1))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1) + "\n")
    ok = res["integer_only_ok"] and res["all_bit_exact"] and all(s["exit"] == 0 for s in steps.values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
