"""Accumulator overflow proved at quantize time (zsq_tvm.core.overflow, called by Quantize).

* a layer whose worst case passes 2^31-1 is refused with a clear error (layer, bound, fix) -- conv and
  matmul, via the pass, the API and the CLI (exit 2); one tap less is accepted at headroom ~0 and
  the compiled kernel reaches the bound exactly, bit-exact with the reference;
* a QuartzNet-like model gets positive margins for every kind of accumulation, recorded in the
  metadata and shown by ``zsq report``;
* the bound is sound (random and saturating inputs never exceed it, partial sums in any order
  included) and tight (the sign pattern of the weights reaches it exactly);
* the numpy reference reports wrap-around instead of copying it.
"""

import json

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import relax_passes as rp
from zsq_tvm.core import intmath
from zsq_tvm.calibrate import calibrate
from zsq_tvm.core.errors import ZsqError
from relax_passes.lowering import compile_module, run_module
from zsq_tvm.core.overflow import (INT32_LIMIT, INT64_LIMIT, AccumulatorOverflowError, dot_interval, headroom_bits,
                              requant_interval, summary)
from relax_passes.reference import ReferenceError_, run_reference

from conftest import reseal, to_relax

LIMIT_TAPS = 66311  # 127 * 255 * 66311 = 2147481735 <= 2^31-1 < 127 * 255 * 66312


class Wide(nn.Module):
    """1x1 conv (4 -> K) + ReLU -> a reduction over K uint8 inputs with every weight at max (one value)."""

    def __init__(self, k, linear=False):
        super().__init__()
        self.c1 = nn.Conv1d(4, k, 1)
        self.linear = linear
        self.c2 = nn.Linear(k, 2, bias=False) if linear else nn.Conv1d(k, 2, 1, bias=False)
        with torch.no_grad():
            self.c1.weight.zero_()
            self.c1.bias.fill_(1.0)  # ReLU output = 1 everywhere: uint8 255 once alpha is a bit below 1
            self.c2.weight.fill_(0.01)

    def forward(self, x):
        y = torch.relu(self.c1(x))
        return self.c2(y.transpose(1, 2)) if self.linear else self.c2(y)


def _wide(k, tmp_path, linear=False):
    mod, proto = to_relax(Wide(k, linear).eval(), (1, 4, 3), tmp_path)
    folded = rp.FoldBatchNorm()(mod)
    ranges = calibrate(folded, [np.random.default_rng(0).normal(size=(1, 4, 3)).astype(np.float32)],
                       progress=False)
    return folded, ranges


@pytest.mark.parametrize("linear", [False, True], ids=["conv1d", "matmul"])
def test_overflowing_layer_is_refused(tmp_path, linear):
    folded, ranges = _wide(LIMIT_TAPS + 1, tmp_path, linear)
    with pytest.raises(AccumulatorOverflowError) as ei:
        rp.Quantize(ranges)(folded)
    msg = str(ei.value)
    assert isinstance(ei.value, ZsqError) and "\n" not in msg
    assert ("matmul#0" if linear else "nn.conv1d#1") in msg  # the layer
    assert str(127 * 255 * (LIMIT_TAPS + 1)) in msg and "2^31-1" in msg and "int32" in msg  # the bound and the limit
    assert "Fix:" in msg and "--wbits" in msg and "split" in msg  # the fix
    assert "uint8 in [0, 255]" in msg


def test_overflow_error_through_api_and_cli(tmp_path, capsys):
    from zsq_tvm.cli import main

    _wide(LIMIT_TAPS + 1, tmp_path)
    rc = main(["quantize", str(tmp_path / "m.onnx"), "--frames", "3", "--num-batches", "1", "-o",
               str(tmp_path / "q")])
    err = capsys.readouterr().err
    assert rc == 2 and "could overflow" in err and "Fix:" in err, err
    assert not (tmp_path / "q").exists()
    rc = main(["quantize", str(tmp_path / "m.onnx"), "--frames", "3", "--num-batches", "1", "--wbits", "7",
               "-o", str(tmp_path / "q7")])  # the suggested fix works
    assert rc == 0, capsys.readouterr().err


def test_at_the_limit_accepted_and_reached_by_the_kernel(tmp_path):
    """One tap less fits with ~0 bits to spare; the compiled kernel computes exactly the bound (no wrap,
    no saturating int16 pair sums) and agrees with the reference bit for bit."""
    folded, ranges = _wide(LIMIT_TAPS, tmp_path)
    relu = [k for k in ranges if k.startswith("nn.relu")]
    assert len(relu) == 1
    ranges[relu[0]] = {**ranges[relu[0]], "alpha": 0.9 * ranges[relu[0]]["alpha"]}  # ReLU saturates: 255
    qmod, meta = rp.quantize_module(folded, ranges)
    ov = meta["overflow"]
    worst = ov["tightest_int32"][0]
    assert worst["bound"] == 127 * 255 * LIMIT_TAPS and worst["op"] == "conv1d"
    assert 0 <= worst["headroom_bits"] < 1e-5
    x = np.random.default_rng(1).normal(size=(1, 4, 3)).astype(np.float32)
    out, env = run_reference(qmod, x, return_env=True)
    acc = env[worst["var"]]
    assert acc.dtype == np.int32 and (acc == worst["bound"]).all()  # the bound, reached exactly
    assert np.array_equal(run_module(compile_module(qmod), x), out)


# ------------------------------------------------------------------- a QuartzNet-like model
def test_quartznet_like_margins(tiny_quartznet):
    meta, qmod = tiny_quartznet["meta"], tiny_quartznet["qmod"]
    ov = json.loads(json.dumps(meta["overflow"]))  # JSON-clean
    ops = {c["op"] for c in ov["checks"]}
    assert {"conv1d", "bias_add", "residual_sum", "requantize"} <= ops
    assert all(c["headroom_bits"] > 0 and c["bound"] <= c["limit"] for c in ov["checks"])
    assert all(c["limit"] in (INT32_LIMIT, INT64_LIMIT) and "var" in c for c in ov["checks"])
    # every int32 accumulation and every requantize of the graph is covered
    n_conv = sum(1 for layer in meta["layers"] if layer["op"] == "conv1d")
    assert sum(c["op"] == "conv1d" for c in ov["checks"]) == n_conv
    assert sum(c["op"] == "requantize" for c in ov["checks"]) == len(meta["requantize"])
    assert any(layer.get("groups", 1) > 1 for layer in meta["layers"])  # depthwise covered
    s = summary(ov)
    assert s["min_headroom_bits_int32"] == ov["tightest_int32"][0]["headroom_bits"] > 8  # W8A8, small net
    assert s["min_headroom_bits_int64"] > 8


@pytest.mark.parametrize("scale", [1.0, 3.0, 1e6])
def test_bound_is_sound_on_the_graph(tiny_quartznet, scale):
    """Random (scale 1) and saturating (3, 1e6 -> every input at +-alpha) mels never exceed a recorded bound."""
    meta, qmod, shape = tiny_quartznet["meta"], tiny_quartznet["qmod"], tiny_quartznet["shape"]
    rng = np.random.default_rng(int(scale))
    for _ in range(2):
        x = (rng.normal(size=shape) * scale).astype(np.float32)
        _, env = run_reference(qmod, x, return_env=True)
        for c in meta["overflow"]["checks"]:
            v = env[c["var"]].astype(np.int64)
            assert np.abs(v).max() <= c["bound"], c


def test_bound_is_tight_on_the_graph(tiny_quartznet):
    """The first conv (depthwise, stride 2, on the int8 mel): a mel of +-alpha with the sign pattern of the
    worst channel's weights makes that accumulator equal the recorded bound exactly."""
    meta, qmod, shape = tiny_quartznet["meta"], tiny_quartznet["qmod"], tiny_quartznet["shape"]
    first = meta["overflow"]["checks"][0]
    assert first["op"] == "conv1d" and first["x_dtype"] == "int8"
    alpha = meta["input"][0]["alpha"]
    conv = next(b for b in rp._util.bindings(rp._util.main_function(qmod)) if b.var.name == first["var"])
    w = conv.value.args[1].value.numpy().astype(np.int64)  # [C, 1, K] int8, depthwise
    a = conv.value.attrs
    stride, pad, dil = int(a.strides[0]), int(a.padding[0]), int(a.dilation[0])
    c, t = first["channel"], 10  # output frame 10 is interior: its window does not touch the padding
    x = np.zeros(shape, np.float32)
    for k in range(w.shape[2]):
        x[0, c, t * stride + k * dil - pad] = alpha * np.sign(w[c, 0, k])
    _, env = run_reference(qmod, x, return_env=True)
    assert env[first["var"]][0, c, t] == first["bound"]
    x = -x
    _, env = run_reference(qmod, x, return_env=True)
    assert env[first["var"]][0, c, t] == -first["bound"]


# ------------------------------------------------------------------- the bound itself, unit level
@st.composite
def _conv_case(draw):
    groups = draw(st.sampled_from([1, 2, 3]))
    cg = draw(st.integers(1, 6))
    og = draw(st.integers(1, 4))
    k = draw(st.integers(1, 5))
    wbits = draw(st.integers(2, 8))
    unsigned = draw(st.booleans())
    seed = draw(st.integers(0, 2**32 - 1))
    return groups, cg, og, k, wbits, unsigned, seed


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_conv_case())
def test_dot_interval_sound_and_tight(case):
    groups, cg, og, k, wbits, unsigned, seed = case
    rng = np.random.default_rng(seed)
    wmax = 2 ** (wbits - 1) - 1
    w = rng.integers(-wmax, wmax + 1, size=(groups * og, cg, k)).astype(np.int8)
    xlo, xhi = (0, 255) if unsigned else (-127, 127)
    lo, hi = dot_interval(w, 0, xlo, xhi)
    dt = np.uint8 if unsigned else np.int8
    # sound: random inputs (and every partial sum, in a random order) stay inside
    for _ in range(3):
        x = rng.integers(xlo, xhi + 1, size=(1, groups * cg, k)).astype(dt)
        y = intmath.conv1d_int(x, w, groups=groups)[0, :, 0].astype(np.int64)
        assert ((lo <= y) & (y <= hi)).all()
        for o in range(w.shape[0]):
            g = o // og
            terms = (w[o].astype(np.int64) * x[0, g * cg:(g + 1) * cg].astype(np.int64)).ravel()
            part = np.cumsum(rng.permutation(terms))
            assert lo[o] <= part.min() and part.max() <= hi[o]
    # tight: the sign pattern of each channel's weights reaches hi and lo exactly
    for o in range(w.shape[0]):
        g = o // og
        wo = w[o].astype(np.int64)
        for target, end in ((hi[o], (xhi, xlo)), (lo[o], (xlo, xhi))):
            x = np.zeros((1, groups * cg, k), dt)
            x[0, g * cg:(g + 1) * cg] = np.where(wo > 0, end[0], end[1])
            assert intmath.conv1d_int(x, w, groups=groups)[0, o, 0] == target
    # the symmetric int8 case is the familiar sum|w| * 127
    if not unsigned:
        assert (hi == np.abs(w.astype(np.int64)).reshape(w.shape[0], -1).sum(1) * 127).all() and (lo == -hi).all()


@settings(max_examples=150, deadline=None)
@given(st.integers(-(2**31), 2**31 - 1), st.integers(-(2**31), 2**31 - 1),
       st.floats(2.0**-32, 2.0**29, allow_nan=False, allow_infinity=False),
       st.sampled_from([(-127, 127), (0, 255), (-(2**30), 2**30 - 1)]))
def test_requant_interval_is_exact(a, b, m, qr):
    lo, hi = min(a, b), max(a, b)
    M, s = intmath.dyadic(m)
    olo, ohi = requant_interval([lo], [hi], [M], [s], *qr)
    ends = intmath.requantize(np.array([lo, hi], np.int64), M, s, *qr)
    assert (int(olo[0]), int(ohi[0])) == (int(ends[0]), int(ends[1]))
    mid = intmath.requantize(np.linspace(lo, hi, 7).astype(np.int64), M, s, *qr)
    assert olo[0] <= mid.min() and mid.max() <= ohi[0]
    # the int64 product acc*M + 2^(s-1) of an int32 accumulator always fits int64
    assert max(abs(lo), abs(hi)) * M + 2 ** (s - 1) < 2**63


def test_headroom_bits():
    assert headroom_bits(INT32_LIMIT, INT32_LIMIT) == 0
    assert headroom_bits(2**20, 2**31) == pytest.approx(11)
    assert headroom_bits(0, INT32_LIMIT) == pytest.approx(31, abs=1e-6)
    assert headroom_bits(2**32, INT32_LIMIT) < 0


# ------------------------------------------------------------------- the numpy reference catches wraps
def _int_graph(op, dtype, const_value):
    from tvm import relax

    x = relax.Var("x", relax.TensorType((4,), dtype))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            c = relax.const(np.full((4,), const_value, dtype), dtype)
            y = bb.emit(op(x, c) if op is not None else relax.op.astype(x, "int8"))
            gv = bb.emit_output(y)
        bb.emit_func_output(gv)
    return bb.get()


@pytest.mark.parametrize("what", ["int32 add", "int64 add", "int64 multiply", "narrowing astype"])
def test_reference_reports_wraparound(what):
    from tvm import relax

    big32 = np.full(4, 2**31 - 10, np.int32)
    big64 = np.full(4, 2**62, np.int64)
    mod, x = {
        "int32 add": (_int_graph(relax.op.add, "int32", 100), big32),
        "int64 add": (_int_graph(relax.op.add, "int64", 2**62), big64),  # 2^63: wraps in numpy int64
        "int64 multiply": (_int_graph(relax.op.multiply, "int64", 4), big64),
        "narrowing astype": (_int_graph(None, "int32", 0), big32),
    }[what]
    with pytest.raises(ReferenceError_, match="overflow"):
        run_reference(mod, x)
    ok = np.array([1, -2, 3, -4], dtype=x.dtype)
    run_reference(mod, ok)  # small values go through


def test_conv1d_int_overflow_is_an_error_not_an_assert():
    x = np.full((1, 70000, 1), 255, np.uint8)
    w = np.full((1, 70000, 1), 127, np.int8)
    with pytest.raises(OverflowError):
        intmath.conv1d_int(x, w)


# ------------------------------------------------------------------- zsq report shows the margins
def test_report_lists_tightest_margins(tmp_path, capsys):
    import zsq_tvm
    from _zsq_models import micro_onnx
    from zsq_tvm.cli import main

    q = zsq_tvm.quantize(micro_onnx(tmp_path / "micro.onnx", frames=32), zsq_tvm.QuantConfig(frames=32, num_batches=2))
    q.save(tmp_path / "q")
    assert main(["report", str(tmp_path / "q"), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    ov = rep["overflow"]
    assert ov["min_headroom_bits_int32"] > 0 and ov["min_headroom_bits_int64"] > 0
    assert ov["tightest_int32"][0]["headroom_bits"] == ov["min_headroom_bits_int32"]
    assert main(["report", str(tmp_path / "q")]) == 0
    out = capsys.readouterr().out
    assert "accumulator headroom" in out and "below 2^31-1" in out and ov["tightest_int32"][0]["layer"] in out
    # a directory whose report.json predates the section: the margins come from quant.json
    rj = tmp_path / "q" / "report.json"
    old = json.loads(rj.read_text())
    old.pop("overflow")
    rj.write_text(json.dumps(old))
    reseal(tmp_path / "q")  # an older zsq wrote it so: not a tampered file
    assert zsq_tvm.report(str(tmp_path / "q"))["overflow"] == ov


def test_ledger_uses_the_twos_complement_range():
    """The residual mitigation: two branches clipped to +-2^30 sum to [-2^31, 2^31-2], which fits int32."""
    from zsq_tvm.core.overflow import OverflowLedger

    led = OverflowLedger()
    rec = led.accumulate("res", "residual_sum", [-(2**31)], [2**31 - 2])
    assert rec["bound"] == 2**31 and rec["headroom_bits"] == 0
    with pytest.raises(AccumulatorOverflowError, match="layer res"):
        led.accumulate("res", "residual_sum", [-(2**31) - 1], [0])
    with pytest.raises(AccumulatorOverflowError):
        led.accumulate("c", "conv1d", [0, 0], [5, 2**31], {"sum_abs_w": [1, 2], "taps": 3, "x_dtype": "uint8",
                                                            "x_range": [0, 255]})
    rec = led.requantize("r", [-(2**31)], [2**31 - 1], [2**31 - 1], [62])  # the extreme dyadic case fits int64
    assert 0 < rec["headroom_bits"] < 1 and rec["bound"] == (2**31 - 1) ** 2 + 2**61
