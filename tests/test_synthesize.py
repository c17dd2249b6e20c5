"""Zero-shot synthesis (paper §2.3, eq. 2): loss, determinism, ONNX path, errors, CLI round trip."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import zsq_tvm
from zsq_tvm.core.errors import CalibrationError
from zsq_tvm.synthesize import SynthConfig, bn_kl, synthesize

# small and quick: quartznet-tiny, 4 mels of 64 frames, one thread (the CPUs are shared)
FAST = dict(num_batches=1, batch_size=4, frames=64, progress=False, threads=1)


@pytest.fixture(scope="module")
def tiny():
    from zsq_tvm.zoo.models import load_torch

    return load_torch("quartznet-tiny")


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory, tiny):
    from zsq_tvm.zoo.nets.export import export_onnx

    return export_onnx(tiny, tmp_path_factory.mktemp("synth") / "tiny.onnx")  # dynamic T, BN kept


@pytest.mark.parametrize("kl", ["batch-first", "running-first"])
def test_kl_zero_when_batch_stats_equal_running_stats(kl):
    g = torch.Generator().manual_seed(0)
    mu, var = torch.randn(16, generator=g), torch.rand(16, generator=g) + 0.1
    assert float(bn_kl(mu, var, mu.clone(), var.clone(), kl)) == 0.0
    assert bn_kl(mu.numpy(), var.numpy(), mu.numpy(), var.numpy(), kl) == 0.0
    # and it is the Gaussian KL divergence (mean over channels) in the stated direction
    mu2, var2 = mu + 0.3, var * 1.7
    N = torch.distributions.Normal
    p, q = (N(mu2, var2.sqrt()), N(mu, var.sqrt())) if kl == "batch-first" else (N(mu, var.sqrt()), N(mu2, var2.sqrt()))
    ref = torch.distributions.kl_divergence(p, q).mean()  # running = (mu, var), batch = (mu2, var2)
    assert float(bn_kl(mu2, var2, mu, var, kl)) == pytest.approx(float(ref), rel=1e-5)
    assert float(bn_kl(mu2, var2, mu, var, kl, reduction="sum")) == pytest.approx(16 * float(ref), rel=1e-5)


def test_loss_decreases_substantially(tiny):
    hist = []
    (x,) = synthesize(tiny, SynthConfig(iters=40, **FAST), history=hist)
    h = hist[0]
    assert x.shape == (4, 64, 64) and x.dtype == np.float32 and np.isfinite(x).all()
    assert len(h["loss"]) == 40 and len(h["per_layer_final"]) == 15  # 15 BatchNorms in quartznet-tiny
    assert h["final"] < 0.1 * h["initial"], (h["initial"], h["final"])
    assert h["final"] < min(h["loss"][:5])


def test_seeded_reproducible(tiny):
    cfg = SynthConfig(iters=4, **{**FAST, "num_batches": 2})
    a, b = synthesize(tiny, cfg), synthesize(tiny, cfg)
    c = synthesize(tiny, cfg, seed=1)
    assert all(np.array_equal(u, v) for u, v in zip(a, b))
    assert not np.array_equal(a[0], c[0]) and not np.array_equal(a[0], a[1])


def test_model_state_restored(tiny):
    flags = [p.requires_grad for p in tiny.parameters()]
    synthesize(tiny, SynthConfig(iters=1, **FAST))
    assert [p.requires_grad for p in tiny.parameters()] == flags and not tiny.training


def test_onnx_path_matches_torch_path(tiny, tiny_onnx):
    cfg = SynthConfig(iters=15, **FAST)
    ht, ho = [], []
    (xt,) = synthesize(tiny, cfg, history=ht)
    (xo,) = synthesize(str(tiny_onnx), cfg, history=ho)
    np.testing.assert_allclose(ho[0]["loss"], ht[0]["loss"], rtol=1e-3)
    np.testing.assert_allclose(xo, xt, atol=1e-3)
    assert zsq_tvm.synthesize is not None and callable(zsq_tvm.synthesize)


def test_folded_onnx_gives_the_two_fixes(tmp_path, tiny):
    import onnx

    path = tmp_path / "folded.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(tiny.eval(), (torch.zeros(1, 64, 64),), str(path), dynamo=False, opset_version=17,
                          input_names=["mel"], output_names=["logits"])  # eval + constant folding: BN folded
    assert not any(n.op_type == "BatchNormalization" for n in onnx.load(str(path)).graph.node)
    with pytest.raises(CalibrationError) as e:
        synthesize(str(path), SynthConfig(iters=1, **FAST))
    msg = str(e.value)
    assert "no BatchNormalization" in msg and "zsq export-nemo" in msg and "PRESERVE" in msg
    assert "--calib random" in msg and "\n" not in msg


def test_cli_synth_then_quantize_calib_dir(tmp_path, capsys):
    from tests._zsq_models import micro_onnx
    from zsq_tvm.cli import main

    out = tmp_path / "mels"
    rc = main(["synth", "quartznet-tiny", "-o", str(out), "--batches", "3", "--batch-size", "2", "--iters", "3",
               "--frames", "64", "--threads", "1", "--json"])
    assert rc == 0, capsys.readouterr().err
    files = sorted(out.glob("*.npy"))
    assert len(files) == 3 and all(np.load(f).shape == (2, 64, 64) for f in files)
    assert (out / "synth.json").exists()
    assert main(["synth", "quartznet-tiny", "-o", str(out), "--iters", "1"]) == 2  # exists: refused, one line

    onnx_path = micro_onnx(tmp_path / "micro.onnx", frames=64)
    rc = main(["quantize", str(onnx_path), "--frames", "64", "--calib", str(out), "-o", str(tmp_path / "q"),
               "--json"])
    assert rc == 0, capsys.readouterr().err
    import json

    man = json.loads((tmp_path / "q" / "manifest.json").read_text())
    assert man["calib"]["num_inputs"] == 6  # 3 files x [2, 64, 64] -> 6 calibration inputs


def test_quantize_calib_synthetic(tmp_path):
    from tests._zsq_models import micro_onnx

    onnx_path = micro_onnx(tmp_path / "micro.onnx", frames=64)
    q = zsq_tvm.quantize(str(onnx_path), zsq_tvm.QuantConfig(frames=64, calib="synthetic",
                                                             synth={"num_batches": 2, "batch_size": 2, "iters": 3,
                                                                    "threads": 1}))
    assert q.manifest["calib"]["source"] == "synthetic" and q.manifest["calib"]["num_inputs"] == 4


def test_lazy_export_is_callable_in_a_fresh_interpreter():
    import subprocess
    import sys

    code = ("import zsq_tvm; f = zsq_tvm.synthesize; assert callable(f) and zsq_tvm.SynthConfig().iters == 200; "
            "import zsq_tvm.synthesize; assert callable(zsq_tvm.synthesize); print('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.stdout.strip() == "ok", r.stderr


def test_fast_cpu_path_matches_plain_forward(tiny):
    """The channels-last / polyphase-dilation / stop-after-last-BN path computes the same loss and mels."""
    cfg = SynthConfig(iters=6, **FAST)
    hf, hp = [], []
    (xf,) = synthesize(tiny, cfg, history=hf)
    (xp,) = synthesize(tiny, cfg, fast=False, history=hp)
    np.testing.assert_allclose(hf[0]["loss"], hp[0]["loss"], rtol=1e-4)
    np.testing.assert_allclose(hf[0]["per_layer_final"], hp[0]["per_layer_final"], rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(xf, xp, atol=1e-4)
    # the module's own forwards are back after synthesis
    assert all("forward" not in vars(m) for m in tiny.modules())


@pytest.mark.parametrize("cin,cout,k,dil,groups,T,stride", [
    (8, 8, 5, 2, 8, 12, 1),   # depthwise, dilated, T % d == 0: polyphase
    (8, 8, 5, 2, 8, 11, 1),   # odd T: dilated conv2d fallback
    (8, 6, 7, 3, 1, 12, 1),   # full conv, dilation 3
    (8, 8, 5, 1, 8, 11, 2),   # strided depthwise
    (8, 12, 1, 1, 1, 9, 1),   # pointwise: one GEMM
])
def test_conv1d_nwc_equals_conv1d(cin, cout, k, dil, groups, T, stride):
    from zsq_tvm.synthesize import _conv1d_nwc

    torch.manual_seed(0)
    conv = torch.nn.Conv1d(cin, cout, k, stride=stride, dilation=dil, padding=(k // 2) * dil, groups=groups)
    x = torch.randn(3, cin, T, requires_grad=True)
    y0 = conv(x)
    (g0,) = torch.autograd.grad(y0.pow(2).sum(), x)
    xn = x.detach().transpose(1, 2).contiguous().transpose(1, 2).requires_grad_(True)  # channels-last strides
    y1 = _conv1d_nwc(conv, xn)
    (g1,) = torch.autograd.grad(y1.pow(2).sum(), xn)
    assert y1.shape == y0.shape
    torch.testing.assert_close(y1, y0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g1, g0, rtol=1e-5, atol=1e-5)
