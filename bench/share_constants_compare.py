"""Kernel sharing on/off for one quantized model: lower + compile time, kernels, run time, same output.

    zsq quantize conformer-ctc-small --frames 640 -o q/
    python3 -m bench.share_constants_compare q/ --runs 6

Builds the host module twice in one process — :func:`relax_passes.lowering.lower` alone (every integer scalar
a PrimFunc literal) and :func:`zsq_tvm.build.lower` (with
:class:`relax_passes.share_scalar_constants.ShareScalarConstants`) — then runs both on the same seeded
random mel alternately and reports min / median seconds; the outputs must be identical.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


def main(argv=None):
    import tvm
    from tvm import relax

    from relax_passes import lowering
    from zsq_tvm import api
    from zsq_tvm.build import lower

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("quantized")
    ap.add_argument("--runs", type=int, default=6)
    a = ap.parse_args(argv)
    q = api.QuantizedModel.load(a.quantized)
    tgt = lowering.host_target()
    vms, res = {}, {}
    for share in (False, True):
        t0 = time.time()
        if share:
            low, _ = lower(q.mod, tgt)
        else:
            with tgt:
                low = lowering.lower(q.mod)
        ex = tvm.compile(low, target=tgt, relax_pipeline="default")
        vms[share] = relax.VirtualMachine(ex, tvm.cpu())
        res[f"share={share}"] = {"kernels": sum(isinstance(f, tvm.tirx.PrimFunc) for f in low.functions.values()),
                                 "lower_compile_s": round(time.time() - t0, 1), "run_s": []}
    x = tvm.runtime.tensor(np.random.default_rng(1).uniform(-3, 3, (1, 64, q.frames)).astype("float32"))
    outs = {}
    for _ in range(a.runs):
        for share in (False, True):
            t0 = time.perf_counter()
            y = vms[share]["main"](x)
            res[f"share={share}"]["run_s"].append(time.perf_counter() - t0)
            outs[share] = (y if hasattr(y, "numpy") else y[0]).numpy()
    for r in res.values():
        t = r.pop("run_s")
        r["run_min_s"], r["run_median_s"] = round(min(t), 3), round(float(np.median(t)), 3)
    res["identical_output"] = bool(np.array_equal(outs[False], outs[True]))
    print(json.dumps(res, indent=1))
    return 0 if res["identical_output"] else 1


if __name__ == "__main__":
    sys.exit(main())
