"""Small ONNX models for the tests of the api/cli/report/errors (owned with those tests)."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from zsq_tvm.zoo.toy import export_convasr, export_torch


def micro_onnx(path: Path, frames: int = 64) -> Path:
    return export_convasr(path, arch="micro", frames=frames, seed=0)


class _Unsupported(nn.Module):
    """Conv front + an LSTM + arctangent (Atan): two unsupported op types, several nodes."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(64, 16, 3, padding=1)
        self.lstm = nn.LSTM(16, 16, batch_first=True)
        self.out = nn.Linear(16, 29)

    def forward(self, mel):
        y = torch.atan(self.conv(mel)).transpose(1, 2)
        y, _ = self.lstm(y)
        return self.out(y)


def unsupported_onnx(path: Path) -> Path:
    return export_torch(_Unsupported().eval(), path, frames=32)


class _Rank2(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(64, 29)

    def forward(self, x):  # [T, F]
        return self.lin(x)


def rank2_onnx(path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_Rank2().eval(), (torch.randn(50, 64),), str(path), dynamo=False, opset_version=17,
                          input_names=["feats"], output_names=["logits"])
    return path


def truncated_copy(src: Path, dst: Path, keep: float = 0.5) -> Path:
    data = Path(src).read_bytes()
    Path(dst).write_bytes(data[: int(len(data) * keep)])
    return dst


class _BiasOverflow(nn.Module):
    """pointwise conv with near-zero weights -> ReLU -> decoder conv with an ordinary bias: the decoder's input
    calibrates to a ~1e-9 range, so its bias divided by S_x * S_w is ~1e10 codes, past int32."""

    def __init__(self):
        super().__init__()
        self.pre = nn.Conv1d(64, 16, 1, bias=False)
        self.dec = nn.Conv1d(16, 29, 1, bias=True)
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            self.pre.weight.copy_(torch.randn(self.pre.weight.shape, generator=g) * 1e-9)
            self.dec.weight.copy_(torch.randn(self.dec.weight.shape, generator=g) * 0.1)
            self.dec.bias.copy_(torch.randn(self.dec.bias.shape, generator=g) * 0.1)

    def forward(self, mel):
        return self.dec(torch.relu(self.pre(mel))).transpose(1, 2)


def bias_overflow_onnx(path: Path, frames: int = 32) -> Path:
    return export_torch(_BiasOverflow().eval(), path, frames=frames)
