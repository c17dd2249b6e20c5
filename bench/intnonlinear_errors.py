"""Max |error| vs float64 of each integer non-linearity over its full int8 input range.

    python3 -m bench.intnonlinear_errors          # -> bench/results/intnonlinear_errors.json

Inputs: every int8 code ``q in [-127, 127]`` at input scales ``S = alpha/127`` for alpha in
{1, 4, 8, 16, 38}; softmax over rows made of every pair ``(q_i, q_j)`` and over 300 random
255-long rows; LayerNorm over 300 random int8 rows of C = 144 (conformer-ctc-small's width).
Errors are in real units (after the output scale); the bound is the one each docstring states
and ``tests/test_intnonlinear.py`` asserts.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from zsq_tvm.core import intnonlinear as inl

ROOT = Path(__file__).resolve().parents[1]

Q8 = np.arange(-127, 128, dtype=np.int64)
ALPHAS = [1.0, 4.0, 8.0, 16.0, 38.1]


def main():
    erf = np.vectorize(math.erf)
    sig = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    rows = {}

    def put(name, errs, bound, note, beyond_rounding=None):
        rows[name] = {"max_abs_error": float(max(errs)), "bound": bound,
                      "per_alpha": dict(zip(map(str, ALPHAS), map(float, errs))), "note": note}
        if beyond_rounding is not None:  # |err| - S_out/2: what the algorithm adds to the output rounding
            rows[name]["max_beyond_output_rounding"] = float(max(beyond_rounding))

    e = []
    for a in ALPHAS:
        S = a / 127
        y, So = inl.i_exp(np.minimum(Q8, 0), S)
        e.append(np.abs(So * y - np.exp(S * np.minimum(Q8, 0))).max())
    put("exp (x <= 0)", e, 4.1e-3, "absolute; relative 4.1e-3")
    e = []
    for a in ALPHAS:
        S = a / 127
        y, So = inl.i_sigmoid(Q8, S)
        e.append(np.abs(So * y - sig(S * Q8)).max())
    put("sigmoid (uint8 out)", e, 3.0e-3, "output scale 1/255")
    e = []
    for a in ALPHAS:
        S = a / 127
        qi, qj = np.meshgrid(Q8, Q8)
        pairs = np.stack([qi.ravel(), qj.ravel()], 1)
        y, So = inl.i_softmax(pairs, S)
        x = S * pairs
        ref = np.exp(x - x.max(1, keepdims=True))
        ref /= ref.sum(1, keepdims=True)
        rng = np.random.default_rng(0)
        r = rng.integers(-127, 128, (300, 255))
        y2, _ = inl.i_softmax(r, S)
        x2 = S * r
        ref2 = np.exp(x2 - x2.max(1, keepdims=True))
        ref2 /= ref2.sum(1, keepdims=True)
        e.append(max(np.abs(So * y - ref).max(), np.abs(So * y2 - ref2).max()))
    put("softmax (uint8 out)", e, 4.1e-3, "output scale 1/255; all int8 pairs + random rows of 255")
    e, rel = [], []
    for a in ALPHAS:
        S = a / 127
        y, So = inl.i_swish(Q8, S)
        x = S * Q8
        err = np.abs(So * y - x * sig(x))
        e.append(err.max())
        rel.append((err - So / 2).max())
    put("swish x*sigmoid(x) (int8 out, S_out = S)", e, "S_out/2 + 1.04e-3 |x|", "GLU a*sigmoid(b) uses the same gate",
        rel)
    e, rel = [], []
    for a in ALPHAS:
        S = a / 127
        y, So = inl.i_gelu(Q8, S)
        x = S * Q8
        err = np.abs(So * y - x / 2 * (1 + erf(x / np.sqrt(2))))
        e.append(err.max())
        rel.append((err - So / 2).max())
    put("gelu (int8 out, S_out = S)", e, "0.0182 + S_out/2 + 7e-4 |x|", "I-BERT erf polynomial", rel)
    e = []
    rng = np.random.default_rng(1)
    g, b = rng.normal(1, 0.3, 144), rng.normal(0, 0.2, 144)
    for a in ALPHAS:
        S = a / 127
        q = rng.integers(-127, 128, (300, 144))
        y, So = inl.i_layernorm(q, S, g, b)
        x = S * q
        ref = (x - x.mean(1, keepdims=True)) / np.sqrt(x.var(1, keepdims=True) + 1e-5) * g + b
        inside = np.abs(ref) < 127 * So
        e.append(np.abs(So * y - ref)[inside].max() / So)
    put("layernorm (int8 out), in units of S_out", e, "1 + 2^-10", "integer sqrt (Newton), dynamic shift")
    out = ROOT / "bench" / "results" / "intnonlinear_errors.json"
    out.write_text(json.dumps(rows, indent=1))
    for k, v in rows.items():
        extra = f"  (beyond S_out/2: {v['max_beyond_output_rounding']:.3g})" if "max_beyond_output_rounding" in v else ""
        print(f"{k:45s} max {v['max_abs_error']:.3g}   bound {v['bound']}{extra}")


if __name__ == "__main__":
    main()
