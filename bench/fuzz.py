"""Long fuzzing run of the integer kernels: the properties of ``tests/test_fuzz_kernels.py`` at scale.

    python3 -m bench.fuzz --examples 10000                     # numpy: dyadic, requantize, conv1d_int, i_exp,
                                                               # i_softmax, i_sigmoid, i_sqrt, i_layernorm
    python3 -m bench.fuzz --examples 10000 --kernels dyadic requantize
    python3 -m bench.fuzz --examples 2000 --kernels conv_tvm   # TVM-compiled conv + epilogue (10 builds)
    python3 -m bench.fuzz --examples 10000 --kernels depthwise_vnni  # x86 VNNI depthwise kernel (8 builds)
    python3 -m bench.fuzz --examples 10000 --json bench/results/fuzz.json

Each kernel runs its ``prop_*`` function under hypothesis with ``max_examples = --examples`` (no example
database, no deadline) and counts the examples that were actually executed and passed.  A failure prints
hypothesis's minimal falsifying example and exits 1.  Prints one line per kernel and the JSON summary.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

# the properties live with their CI-sized tests; run from the repository root, ``tests`` imports as a
# namespace package (the dependency goes bench -> tests only: no test imports bench)
from tests import test_fuzz_kernels as fk
from tests import test_intnonlinear as nl


def _depthwise():
    # imported on demand: it loads TVM and the x86 backend, which the numpy kernels do not need
    return importlib.import_module("tests.test_x86_vnni_depthwise")


KERNELS = {
    "dyadic": (lambda: fk.multipliers, fk.prop_dyadic),
    "requantize": (lambda: fk.requant_cases(), fk.prop_requantize),
    "conv1d_int": (lambda: fk.conv_cases(), fk.prop_conv1d_int),
    "conv_tvm": (lambda: st.tuples(st.sampled_from(fk.TVM_SHAPES), st.integers(0, 2**32 - 1), st.booleans()),
                 lambda a: fk.prop_conv_requant_tvm(*a)),
    # the integer non-linearities (zsq_tvm/core/intnonlinear.py) against float, with their stated bounds
    "i_exp": (lambda: st.tuples(st.floats(2.0**-24, 2.0**-8), st.integers(0, 2**31 - 1)),
              lambda a: nl.prop_i_exp_int32(*a)),
    "i_softmax": (lambda: st.tuples(*nl.SOFTMAX_CASES), lambda a: nl.prop_i_softmax_rows(*a)),
    "i_sigmoid": (lambda: st.floats(1e-4, 0.5), nl.prop_i_sigmoid),
    "i_sqrt": (lambda: st.integers(0, 2**62), nl.prop_i_sqrt),
    "i_layernorm": (lambda: st.tuples(*nl.LAYERNORM_CASES), lambda a: nl.prop_i_layernorm(*a, rows=16)),
    # the x86 VNNI depthwise kernel (needs avx512_vnni) on the shapes of tests/test_x86_vnni_depthwise.py
    "depthwise_vnni": (lambda: st.tuples(st.sampled_from(_depthwise().SPECS), st.integers(0, 2**32 - 1), st.booleans()),
                       lambda a: _depthwise().prop_depthwise_vnni(*a)),
}
DEFAULT = ["dyadic", "requantize", "conv1d_int", "i_exp", "i_softmax", "i_sigmoid", "i_sqrt", "i_layernorm"]


def run_kernel(name: str, examples: int, seed: int) -> dict:
    strategy, prop = KERNELS[name]
    count = {"n": 0}

    def counted(case):
        prop(case)
        count["n"] += 1

    test = settings(max_examples=examples, deadline=None, database=None, derandomize=False,
                    suppress_health_check=list(HealthCheck))(given(strategy())(counted))
    test = __import__("hypothesis").seed(seed)(test)
    t0 = time.perf_counter()
    try:
        test()
        ok, err = True, None
    except Exception as e:  # a falsified property: hypothesis has printed the minimal example
        ok, err = False, f"{type(e).__name__}: {str(e)[:400]}"
    return {"kernel": name, "ok": ok, "examples_passed": count["n"], "max_examples": examples,
            "seconds": round(time.perf_counter() - t0, 2), "error": err}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--examples", type=int, default=10000, help="examples per kernel (default 10000)")
    ap.add_argument("--kernels", nargs="+", default=DEFAULT, choices=sorted(KERNELS),
                    help=f"default: {' '.join(DEFAULT)} (the pure-numpy ones)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write the JSON summary here")
    a = ap.parse_args(argv)
    results = []
    for k in a.kernels:
        r = run_kernel(k, a.examples, a.seed)
        results.append(r)
        print(f"{k:<12} {'ok  ' if r['ok'] else 'FAIL'} {r['examples_passed']:>7} examples passed "
              f"in {r['seconds']:.1f} s" + (f"  -- {r['error']}" if r["error"] else ""), flush=True)
    out = {"examples": a.examples, "seed": a.seed, "ok": all(r["ok"] for r in results), "kernels": results}
    print(json.dumps(out, indent=2))
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
