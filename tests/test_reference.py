"""TVM build == numpy integer reference, bit for bit; end-to-end on a tiny QuartzNet."""

import numpy as np
import pytest

import relax_passes as rp
from zsq_tvm.calibrate import calibrate
from relax_passes.lowering import compile_module, host_target, run_module
from relax_passes.reference import ReferenceError_, run_reference

from conftest import Block, ConvBNReLU, randomize_bn, to_relax, torch_out


@pytest.mark.parametrize("model", [ConvBNReLU(), ConvBNReLU(depthwise=True, bias=False), Block(8, 12, 5)],
                         ids=["conv", "depthwise", "residual"])
def test_bit_exact_small(model, tmp_path):
    shape = (1, 8, 40)
    mod, _ = to_relax(randomize_bn(model, seed=4), shape, tmp_path)
    folded = rp.FoldBatchNorm()(mod)
    rng = np.random.default_rng(2)
    ranges = calibrate(folded, [rng.normal(size=(2, 8, 40)).astype(np.float32)], progress=False)
    qmod = rp.Quantize(ranges)(folded)
    vm = compile_module(qmod)
    for scale in (0.5, 1.0, 4.0):  # 4.0: inputs far beyond the calibrated range -> saturation paths
        x = (rng.normal(size=shape) * scale).astype(np.float32)
        assert np.array_equal(run_module(vm, x), run_reference(qmod, x))


def test_reference_rejects_float_graph(tmp_path):
    mod, _ = to_relax(randomize_bn(ConvBNReLU()), (1, 8, 20), tmp_path)
    with pytest.raises(ReferenceError_):
        run_reference(rp.FoldBatchNorm()(mod), np.zeros((1, 8, 20), np.float32))


def test_end_to_end_tiny_quartznet(tiny_quartznet):
    tq = tiny_quartznet
    qmod, model, shape = tq["qmod"], tq["model"], tq["shape"]
    vm = compile_module(qmod, target=host_target())
    rng = np.random.default_rng(11)
    agree = []
    for _ in range(3):
        x = rng.uniform(-1.5, 1.5, size=shape).astype(np.float32)
        got = run_module(vm, x)
        ref_int, env = run_reference(qmod, x, return_env=True)
        assert np.array_equal(got, ref_int)  # bit for bit, float32 dequantized logits
        fp32 = torch_out(model, x)
        agree.append((got.argmax(1) == fp32.argmax(1)).mean())
    assert np.mean(agree) >= 0.9, agree
    # the integer report of the same module is clean
    rep = rp.check_integer_only(qmod)
    assert rep["ok"] and rep["integer_ops"]["shift"] > 0
