"""Small random-weight CTC models exported to ONNX, for the demo and for tests.

``export_convasr(path, arch)`` uses the project's QuartzNet/Jasper nets
(:mod:`zsq_tvm.zoo.nets.convasr`) when ``arch`` names one of their architectures; ``"micro"`` is a
3-block QuartzNet-style net (depthwise-separable conv + BN + ReLU + residual, ~25 k params)
that compiles in seconds.  BatchNormalization nodes are kept in the ONNX graph.
"""

from __future__ import annotations

import os
from pathlib import Path

from zsq_tvm.ctc import QUARTZNET_VOCAB

__all__ = ["build_micro", "export_convasr", "export_torch"]


def build_micro(features: int = 64, channels: int = 32, num_classes: int = 29):
    import torch
    from torch import nn

    class SepBlock(nn.Module):
        def __init__(self, ci, co, k, stride=1, residual=False):
            super().__init__()
            self.dw = nn.Conv1d(ci, ci, k, stride=stride, padding=k // 2, groups=ci, bias=False)
            self.pw = nn.Conv1d(ci, co, 1, bias=False)
            self.bn = nn.BatchNorm1d(co, eps=1e-3)
            self.res = nn.Sequential(nn.Conv1d(ci, co, 1, bias=False), nn.BatchNorm1d(co, eps=1e-3)) if residual else None

        def forward(self, x):
            y = self.bn(self.pw(self.dw(x)))
            if self.res is not None:
                y = y + self.res(x)
            return torch.relu(y)

    class Micro(nn.Module):
        def __init__(self):
            super().__init__()
            c = channels
            self.b1 = SepBlock(features, c, 11, stride=2)
            self.b2 = SepBlock(c, c, 13, residual=True)
            self.b3 = SepBlock(c, 2 * c, 1)
            self.dec = nn.Conv1d(2 * c, num_classes, 1, bias=True)

        def forward(self, mel):
            return self.dec(self.b3(self.b2(self.b1(mel)))).transpose(1, 2)

    m = Micro()
    # non-trivial BN statistics, as after training
    g = torch.Generator().manual_seed(1234)
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm1d):
            mod.running_mean.copy_(torch.randn(mod.num_features, generator=g) * 0.1)
            mod.running_var.copy_(torch.rand(mod.num_features, generator=g) + 0.5)
            mod.weight.data.copy_(torch.rand(mod.num_features, generator=g) + 0.5)
            mod.bias.data.copy_(torch.randn(mod.num_features, generator=g) * 0.1)
    return m.eval()


def export_torch(model, path, features: int = 64, frames: int = 128, dynamic_time: bool = True,
                 input_name: str = "audio_signal", output_name: str = "logits", metadata: dict | None = None):
    """Export a torch module ``mel[B, F, T] -> logits`` to ONNX with BatchNormalization kept."""
    import warnings

    import onnx
    import torch

    x = torch.randn(1, features, frames)
    dyn = {input_name: {0: "batch", 2: "time"}, output_name: {0: "batch", 1: "time_out"}} if dynamic_time else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (x,), os.fspath(path), training=torch.onnx.TrainingMode.PRESERVE,
                          do_constant_folding=False, dynamo=False, opset_version=17,
                          input_names=[input_name], output_names=[output_name], dynamic_axes=dyn)
    if metadata:
        p = onnx.load(os.fspath(path))
        for k, v in metadata.items():
            e = p.metadata_props.add()
            e.key, e.value = k, v
        onnx.save(p, os.fspath(path))
    return Path(path)


def export_convasr(path, arch: str = "micro", frames: int = 128, seed: int = 0, features: int = 64):
    """Random-weight CTC model → ONNX at ``path`` (vocabulary stored in the metadata)."""
    import json

    import torch

    torch.manual_seed(seed)
    if arch == "micro":
        model = build_micro(features)
    else:
        from zsq_tvm.zoo.nets.convasr import ConvCTCModel

        model = ConvCTCModel(arch, feat_in=features).eval()
    return export_torch(model, path, features=features, frames=frames,
                        metadata={"vocab": json.dumps(list(QUARTZNET_VOCAB)), "zsq.arch": arch})
