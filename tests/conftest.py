"""Shared fixtures for the quantization-core tests: tiny torch nets exported to ONNX, imported."""

from __future__ import annotations

import os
import sys
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn


@pytest.fixture(autouse=True, scope="session")
def _private_user_tuning_cache(tmp_path_factory):
    """No test reads or writes the developer's own tuning cache (``~/.cache/zsq-tvm``, zsq_tvm.tuning_db): a
    user's own `zsq tune` records would change which schedules the builds under test get.  Subprocesses
    inherit it through the environment."""
    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))
    yield
    if old is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = old


ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

#: set by ./run-tests once it has installed the system packages: a missing one fails the run, and a test that
#: skips for lack of one fails, so no run (CI included) passes with the Cortex-M, speech or real-audio tests skipped
REQUIRE_TOOLCHAINS = os.environ.get("ZSQ_REQUIRE_TOOLCHAINS") == "1"


def pytest_configure(config):
    import system_packages

    miss = system_packages.missing() if REQUIRE_TOOLCHAINS else []
    if miss:
        raise pytest.UsageError(
            "ZSQ_REQUIRE_TOOLCHAINS=1 but these system packages are missing: " + ", ".join(
                f"{p} (no {system_packages.PACKAGES[p][0]}: {system_packages.PACKAGES[p][1]})" for p in miss)
            + f"; install them: apt-get update && apt-get install -y {' '.join(miss)} (or run ./run-tests)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    rep = (yield).get_result()
    if REQUIRE_TOOLCHAINS and rep.skipped and not hasattr(rep, "wasxfail") and isinstance(rep.longrepr, tuple):
        import system_packages

        reason = str(rep.longrepr[2])
        if any(w.lower() in reason.lower() for w in system_packages.SKIP_WORDS):
            rep.outcome = "failed"
            rep.longrepr = f"skipped for lack of a system package, but ZSQ_REQUIRE_TOOLCHAINS=1: {reason}"


def reseal(folder) -> None:
    """Record the current files of an artifact folder in its manifest, as zsq does when it writes one: for
    tests that change a file on purpose and need zsq to read the folder as its own (not as tampered)."""
    from zsq_tvm import artifacts

    m = artifacts.read_manifest(folder, verify=False)
    m.pop("files", None)
    artifacts.write_manifest(folder, m)


def add_tar_member(tf, name: str, data: bytes | None = None, **attrs) -> None:
    """Add one member to an open ``tarfile``: a regular file with ``data``, or (``data=None``) whatever ``attrs``
    make it (``type=tarfile.SYMTYPE, linkname=...``, a directory, a device ...)."""
    import io

    ti = tarfile.TarInfo(name)
    for k, v in attrs.items():
        setattr(ti, k, v)
    if data is not None:
        ti.size = len(data)
        tf.addfile(ti, io.BytesIO(data))
    else:
        tf.addfile(ti)


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial running stats / affine params so folding is actually exercised."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(c, generator=g) * 2 + 0.3)
            m.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(c, generator=g) * 0.3)
    return model.eval()


class ConvBNReLU(nn.Module):
    def __init__(self, cin=8, cout=12, k=5, bias=True, depthwise=False):
        super().__init__()
        self.pre = nn.Conv1d(cin, cout, 1) if depthwise else nn.Identity()
        c = cout if depthwise else cin
        self.conv = nn.Conv1d(c, cout, k, padding=k // 2, groups=cout if depthwise else 1, bias=bias)
        self.bn = nn.BatchNorm1d(cout)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(self.pre(x))))


class Block(nn.Module):
    """QuartzNet block: R x (depthwise conv, pointwise conv, BN, ReLU) with a 1x1 conv+BN residual."""

    def __init__(self, cin, cout, k, repeat=2):
        super().__init__()
        layers, c = [], cin
        for i in range(repeat):
            layers.append(nn.ModuleDict({
                "dw": nn.Conv1d(c, c, k, padding=k // 2, groups=c, bias=False),
                "pw": nn.Conv1d(c, cout, 1, bias=False),
                "bn": nn.BatchNorm1d(cout)}))
            c = cout
        self.layers = nn.ModuleList(layers)
        self.res = nn.Conv1d(cin, cout, 1, bias=False)
        self.res_bn = nn.BatchNorm1d(cout)
        self.drop = nn.Dropout(0.2)

    def forward(self, x):
        y = x
        for i, l in enumerate(self.layers):
            y = l["bn"](l["pw"](l["dw"](y)))
            if i < len(self.layers) - 1:
                y = self.drop(torch.relu(y))
        return self.drop(torch.relu(y + self.res_bn(self.res(x))))


class TinyQuartzNet(nn.Module):
    """Prologue conv (stride 2) -> 2 residual blocks -> epilogue -> 1x1 decoder (logits)."""

    def __init__(self, feats=16, width=24, vocab=12, log_softmax=False):
        super().__init__()
        self.pro = nn.Sequential(nn.Conv1d(feats, feats, 11, stride=2, padding=5, groups=feats, bias=False),
                                 nn.Conv1d(feats, width, 1, bias=False), nn.BatchNorm1d(width), nn.ReLU())
        self.b1 = Block(width, width, 7)
        self.b2 = Block(width, 32, 9)
        self.epi = nn.Sequential(nn.Conv1d(32, 32, 1, bias=False), nn.BatchNorm1d(32), nn.ReLU())
        self.dec = nn.Conv1d(32, vocab, 1, bias=True)
        self.log_softmax = log_softmax

    def forward(self, x):
        y = self.dec(self.epi(self.b2(self.b1(self.pro(x)))))
        return torch.log_softmax(y, dim=1) if self.log_softmax else y


def to_relax(model: nn.Module, shape, tmp_path: Path, name="m.onnx"):
    """Export with BatchNormalization kept (as the project's exporter does) and import into Relax."""
    import onnx
    from tvm.relax.frontend.onnx import from_onnx

    path = tmp_path / name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), torch.zeros(shape), str(path), input_names=["mel"], output_names=["logits"],
                          training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False, dynamo=False)
    proto = onnx.load(str(path))
    return from_onnx(proto, {"mel": tuple(shape)}, keep_params_in_input=False), proto


def torch_out(model, x):
    with torch.no_grad():
        return model.eval()(torch.from_numpy(x)).numpy()


def cosine(a, b):
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="session")
def tiny_quartznet(tmp_path_factory):
    """The end-to-end pipeline on TinyQuartzNet, computed once: dict of every stage."""
    import relax_passes as rp
    from zsq_tvm.calibrate import calibrate

    torch.manual_seed(0)
    model = randomize_bn(TinyQuartzNet(), seed=1)
    shape = (1, 16, 96)
    mod, proto = to_relax(model, shape, tmp_path_factory.mktemp("tq"))
    fold = rp.FoldBatchNorm(onnx_model=proto)
    folded = fold(mod)
    rng = np.random.default_rng(0)
    batches = [rng.uniform(-1.5, 1.5, size=(2, 16, 96)).astype(np.float32) for _ in range(4)]
    ranges = calibrate(folded, batches, method="minmax", progress=False)
    qmod, meta = rp.quantize_module(folded, ranges, wbits=8, abits=8)
    return {"model": model, "shape": shape, "mod": mod, "proto": proto, "fold": fold, "folded": folded,
            "ranges": ranges, "meta": meta, "qmod": qmod}
