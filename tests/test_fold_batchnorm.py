"""FoldBatchNorm on small torch-exported graphs: exact-enough float output, no batch_norm left."""

import json

import numpy as np
import pytest
import torch
from torch import nn

import relax_passes as rp
from relax_passes._util import bindings, call_op_name, main_function
from relax_passes.lowering import compile_module, run_module

from conftest import Block, ConvBNReLU, randomize_bn, to_relax, torch_out


def ops(mod):
    return [call_op_name(b.value) for b in bindings(main_function(mod))]


@pytest.mark.parametrize("model,shape", [
    (ConvBNReLU(bias=True), (1, 8, 40)),
    (ConvBNReLU(bias=False, depthwise=True), (1, 8, 40)),
    (Block(8, 12, 5), (1, 8, 40)),
], ids=["conv_bias", "depthwise", "residual_block"])
def test_fold_preserves_output(model, shape, tmp_path):
    model = randomize_bn(model, seed=3)
    mod, proto = to_relax(model, shape, tmp_path)
    n_bn = ops(mod).count("nn.batch_norm")
    folded, bn_stats = rp.fold_batchnorm(mod, onnx_model=proto)
    assert "nn.batch_norm" not in ops(folded)
    assert len(bn_stats) == n_bn and all(r["folded"] for r in bn_stats)
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    ref = torch_out(model, x)
    got = run_module(compile_module(folded), x)
    assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()


def test_bn_stats_record_running_stats_and_names(tmp_path):
    model = randomize_bn(Block(8, 12, 5), seed=5)
    mod, proto = to_relax(model, (1, 8, 40), tmp_path)
    stats = rp.extract_bn_stats(mod, onnx_model=proto)
    _, bn_stats = rp.fold_batchnorm(mod, onnx_model=proto)
    assert [s["mean"] for s in stats] == [s["mean"] for s in bn_stats]
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm1d)]
    assert len(bn_stats) == len(bns)
    for s in bn_stats:
        # each record is one torch BN's running statistics (ONNX order = execution order)
        (m,) = [m for m in bns if np.allclose(s["mean"], m.running_mean.numpy(), rtol=1e-6)]
        np.testing.assert_allclose(s["var"], m.running_var.numpy(), rtol=1e-6)
        np.testing.assert_allclose(s["gamma"], m.weight.detach().numpy(), rtol=1e-6)
        np.testing.assert_allclose(s["beta"], m.bias.detach().numpy(), rtol=1e-6)
        assert s["eps"] == pytest.approx(m.eps) and s["producer"].startswith("nn.conv1d#")
        assert s["onnx_node"].endswith("BatchNormalization") and s["onnx_producer"].endswith("Conv")
        assert s["folded_conv"].startswith("nn.conv1d#")
    folded = rp.FoldBatchNorm(onnx_model=proto, attach_stats=True)(mod)
    assert json.loads(folded.attrs["zsq.bn_stats"]) == bn_stats  # the pass keeps the records as a module attribute


class BNAfterReLU(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(4, 6, 3, padding=1)
        self.bn = nn.BatchNorm1d(6)

    def forward(self, x):
        return self.bn(torch.relu(self.conv(x)))


def test_unfoldable_bn_is_left_and_reported(tmp_path):
    model = randomize_bn(BNAfterReLU())
    mod, _ = to_relax(model, (1, 4, 16), tmp_path)
    folded, (rec,) = rp.fold_batchnorm(mod)
    assert ops(folded).count("nn.batch_norm") == 1
    assert not rec["folded"] and "nn.relu" in rec["reason"]
    # and Quantize refuses it by name
    from zsq_tvm.core.errors import UnsupportedOpsError
    with pytest.raises(UnsupportedOpsError, match="batch_norm"):
        rp.Quantize({})(folded)


def test_fold_in_sequential(tmp_path):
    import tvm
    from tvm import relax
    mod, _ = to_relax(randomize_bn(ConvBNReLU()), (1, 8, 20), tmp_path)
    out = tvm.transform.Sequential([rp.FoldBatchNorm(), relax.transform.DeadCodeElimination()])(mod)
    assert "nn.batch_norm" not in ops(out)


def test_bn_stats_of_a_conformer_come_from_the_onnx_file(tmp_path):
    """The Conformer frontend (onnxsim) folds Conv + BN before Relax sees them, so ``FoldBatchNorm`` finds none;
    ``quantize`` then reports the file's own BN statistics (``onnx_bn_stats``): the torch module's running
    statistics, named by their ONNX nodes, marked folded by the frontend."""
    import onnx

    import zsq_tvm
    from relax_passes.fold_batchnorm import onnx_bn_stats
    from tests.test_conformer_int import _tiny_conformer
    from zsq_tvm.zoo.nets.export import export_onnx

    net = _tiny_conformer()
    proto = onnx.load(str(export_onnx(net, tmp_path / "tiny.onnx", frames=32)))
    recs = onnx_bn_stats(proto)
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    assert len(recs) == len(bns) >= 1
    for r, bn in zip(recs, bns):
        np.testing.assert_allclose(r["mean"], bn.running_mean.numpy(), rtol=1e-6)
        np.testing.assert_allclose(r["var"], bn.running_var.numpy(), rtol=1e-6)
        assert r["folded_by"] == "frontend" and r["onnx_node"].endswith("BatchNormalization") and r["eps"] == pytest.approx(bn.eps)
    q = zsq_tvm.quantize(proto, zsq_tvm.QuantConfig(frames=32, num_batches=1))
    assert [r["onnx_node"] for r in q.bn_stats] == [r["onnx_node"] for r in recs]
