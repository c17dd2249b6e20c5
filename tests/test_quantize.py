"""Quantize (+ calibrate) on small graphs: integer-only structure, accuracy, metadata, refusals."""

import json

import numpy as np
import pytest
import torch
from torch import nn

import relax_passes as rp
from relax_passes._util import bindings, call_op_name, dtype_of, main_function
from zsq_tvm.calibrate import calibrate
from zsq_tvm.core.errors import BitWidthError, CalibrationError, UnsupportedOpsError
from relax_passes.lowering import compile_module, run_module

from conftest import Block, ConvBNReLU, TinyQuartzNet, cosine, randomize_bn, to_relax, torch_out


def quantize_model(model, shape, tmp_path, **kw):
    mod, _ = to_relax(randomize_bn(model, seed=2), shape, tmp_path)
    folded = rp.FoldBatchNorm()(mod)
    rng = np.random.default_rng(1)
    ranges = calibrate(folded, [rng.normal(size=(2,) + shape[1:]).astype(np.float32) for _ in range(3)],
                       progress=False)
    qmod, meta = rp.quantize_module(folded, ranges, **kw)
    return folded, qmod, meta, ranges


def test_integer_structure_and_metadata(tmp_path):
    folded, qmod, meta, ranges = quantize_model(Block(8, 12, 5), (1, 8, 40), tmp_path)
    func = main_function(qmod)
    roles = []
    for b in bindings(func):
        op = call_op_name(b.value)
        if op == "call_tir":
            roles.append(str(qmod[b.value.args[0]].attrs["zsq.role"]))
            continue
        assert not dtype_of(b.var).startswith("float"), (op, b.var.name)
        assert op not in ("nn.dropout", "nn.batch_norm")
    assert roles == ["input_quantize", "output_dequantize"]
    convs = [b for b in bindings(func) if call_op_name(b.value) == "nn.conv1d"]
    assert all(dtype_of(c.value.args[1]) == "int8" and dtype_of(c.var) == "int32" for c in convs)
    assert {dtype_of(c.value.args[0]) for c in convs} == {"int8", "uint8"}  # uint8 after ReLU
    assert "right_shift" in [call_op_name(b.value) for b in bindings(func)]
    meta = json.loads(json.dumps(meta))
    assert meta["input"][0]["scale"] == pytest.approx(ranges["input:mel"]["alpha"] / 127)
    assert func.attrs["zsq.input_scale"] == pytest.approx(meta["input"][0]["scale"])
    assert all(2**30 <= M < 2**31 for r in meta["requantize"] for M in r["M"])
    assert any(layer["op"] == "residual_add" and layer["relu"] for layer in meta["layers"])


@pytest.mark.parametrize("wbits", [8, 6])
def test_accuracy_vs_float(wbits, tmp_path):
    model = TinyQuartzNet()
    folded, qmod, _, _ = quantize_model(model, (1, 16, 64), tmp_path, wbits=wbits)
    x = np.random.default_rng(7).normal(size=(1, 16, 64)).astype(np.float32)
    ref = torch_out(model, x)
    got = run_module(compile_module(qmod), x)
    assert got.dtype == np.float32 and got.shape == ref.shape
    assert cosine(got, ref) > (0.99 if wbits == 8 else 0.97)


def test_log_softmax_dropped_and_integer_output(tmp_path):
    model = TinyQuartzNet(log_softmax=True)
    folded, qmod, meta, _ = quantize_model(model, (1, 16, 64), tmp_path, dequantize_output=False)
    assert [d["op"] for d in meta["dropped_ops"] if d["op"] != "nn.dropout"] == ["nn.log_softmax"]
    x = np.random.default_rng(3).normal(size=(1, 16, 64)).astype(np.float32)
    got = run_module(compile_module(qmod), x)
    assert got.dtype == np.int8
    ref = torch_out(model, x)
    assert (got.argmax(1) == ref.argmax(1)).mean() > 0.8


class Unsupported(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(4, 6, 3, padding=1)

    def forward(self, x):
        y = torch.exp(self.conv(x))  # (sigmoid is supported since the integer-only Conformer)
        return torch.tanh(y) + torch.exp(y)


def test_unsupported_ops_named_at_once(tmp_path):
    mod, _ = to_relax(Unsupported(), (1, 4, 16), tmp_path)
    with pytest.raises(UnsupportedOpsError) as ei:
        rp.Quantize({})(mod)
    msg = str(ei.value)
    assert "exp" in msg and "tanh" in msg and msg.count("lv") >= 3


def test_bad_bits():
    with pytest.raises(BitWidthError):
        rp.Quantize({}, wbits=9)
    with pytest.raises(BitWidthError):
        rp.Quantize({}, abits=1)


def test_calibrate_methods_and_errors(tmp_path):
    mod, _ = to_relax(randomize_bn(ConvBNReLU()), (1, 8, 20), tmp_path)
    folded = rp.FoldBatchNorm()(mod)
    rng = np.random.default_rng(0)
    data = [rng.normal(size=(3, 8, 20)).astype(np.float32) for _ in range(3)]
    mm = calibrate(folded, data, method="minmax", progress=False)
    pc = calibrate(folded, data, method="percentile", percentile=99.0, progress=False)
    json.dumps(mm), json.dumps(pc)
    assert set(mm) == set(pc) and "input:mel" in mm and "nn.relu#0" in mm
    allx = np.concatenate(data)
    assert mm["input:mel"]["alpha"] == pytest.approx(np.abs(allx).max())
    for k in mm:
        assert pc[k]["alpha"] <= mm[k]["alpha"] + 1e-9
    assert pc["input:mel"]["alpha"] == pytest.approx(np.percentile(np.abs(allx), 99.0), rel=0.02)
    with pytest.raises(CalibrationError):
        calibrate(folded, [np.zeros((1, 8, 21), np.float32)], progress=False)
    with pytest.raises(CalibrationError):
        calibrate(folded, [], progress=False)
    with pytest.raises(CalibrationError):
        calibrate(folded, data, method="entropy", progress=False)


def test_quantize_module_returns_the_metadata_as_a_value(tmp_path):
    """``quantize_module`` is the pass as a function: the same module, and the metadata as a return value
    (the pass object keeps nothing)."""
    import tvm

    folded, qmod, meta, ranges = quantize_model(Block(8, 12, 5), (1, 8, 40), tmp_path)
    pass_ = rp.Quantize(ranges)
    assert tvm.ir.save_json(pass_(folded)) == tvm.ir.save_json(qmod)
    assert not hasattr(pass_, "metadata") and json.loads(json.dumps(meta)) == meta
    with pytest.raises(BitWidthError):
        rp.quantize.quantize_module(folded, ranges, abits=9)


def test_supported_ops_come_from_the_handler_table():
    from relax_passes import quantize_registry as reg

    assert rp.SUPPORTED_OPS == reg.supported_ops()
    ops = set(reg.HANDLERS)
    assert {"nn.conv1d", "matmul", "add", "nn.relu", "nn.dropout", "nn.log_softmax",  # convolutional models
            "nn.conv2d", "sigmoid", "nn.softmax", "nn.layer_norm", "nn.gelu", "split", "concat", "divide"} <= ops
    assert all(h.op == op for op, hs in reg.HANDLERS.items() for h in hs)
