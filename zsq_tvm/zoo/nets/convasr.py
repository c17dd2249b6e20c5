"""QuartzNet / Jasper CTC acoustic models in plain torch, with NeMo's parameter names.

The module tree mirrors NeMo's ``EncDecCTCModel`` with ``ConvASREncoder`` (JasperBlock,
``conv_mask: true``) and ``ConvASRDecoder``, so ``state_dict()`` keys are identical:

    encoder.encoder.{b}.mconv.{j}.conv.weight        conv (MaskedConv1d wraps nn.Conv1d)
    encoder.encoder.{b}.mconv.{j}.{weight,bias,running_mean,running_var}   BatchNorm1d
    encoder.encoder.{b}.res.{p}.0.conv.weight / .res.{p}.1.*              residual 1x1 conv + BN
    decoder.decoder_layers.0.{weight,bias}                                  logits conv

A NeMo checkpoint therefore loads with ``load_state_dict`` (the ``preprocessor.*``
buffers are ignored: our front end is :mod:`zsq_tvm.audio.mel`).  We keep our own
implementation so that training on a machine without NeMo, and ONNX export with the
BatchNormalization nodes kept (needed for zero-shot synthesis), do not depend on it.

Masking: during training, padded frames are zeroed before every convolution like NeMo's
MaskedConv1d.  At export/inference time the whole window is valid, so no mask op is
emitted and the graph is plain conv1d / BatchNorm / ReLU / add.
"""
from __future__ import annotations

import dataclasses
from typing import List, Optional, Sequence

import torch
from torch import nn

# NeMo's character vocabulary for English QuartzNet/Jasper; blank is index len(VOCAB).
VOCAB = [" ", "a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m", "n", "o", "p",
         "q", "r", "s", "t", "u", "v", "w", "x", "y", "z", "'"]


@dataclasses.dataclass
class BlockCfg:
    filters: int
    repeat: int
    kernel: int
    stride: int = 1
    dilation: int = 1
    dropout: float = 0.0
    residual: bool = True
    separable: bool = True
    residual_dense: bool = False


def _qn_blocks(mult: int, widths=(256, 256, 512, 512, 512), kernels=(33, 39, 51, 63, 75), c1=256, c2=512,
               c3=1024, k1=33, k2=87, repeat=5) -> List[BlockCfg]:
    blocks = [BlockCfg(c1, 1, k1, stride=2, residual=False)]
    for w, k in zip(widths, kernels):
        blocks += [BlockCfg(w, repeat, k) for _ in range(mult)]
    # NeMo's quartznet_15x5.yaml: the last (1x1, c3-wide) block has no ``separable`` key, i.e. a plain conv.
    blocks += [BlockCfg(c2, 1, k2, dilation=2, residual=False), BlockCfg(c3, 1, 1, residual=False, separable=False)]
    return blocks


def _jasper_dr(widths, kernels, mult, repeat, c1, k1, c2, k2, c3, dropout=0.0) -> List[BlockCfg]:
    blocks = [BlockCfg(c1, 1, k1, stride=2, residual=False, separable=False, dropout=dropout)]
    for w, k in zip(widths, kernels):
        blocks += [BlockCfg(w, repeat, k, separable=False, residual_dense=True, dropout=dropout)
                   for _ in range(mult)]
    blocks += [BlockCfg(c2, 1, k2, dilation=2, residual=False, separable=False, dropout=dropout),
               BlockCfg(c3, 1, 1, residual=False, separable=False, dropout=dropout)]
    return blocks


# Published architectures (QuartzNet paper Table 1; Jasper paper DR 10x5) and our small
# variants that train on the machines we have.
ARCHS = {
    "quartznet5x5": lambda: _qn_blocks(1),
    "quartznet10x5": lambda: _qn_blocks(2),
    "quartznet15x5": lambda: _qn_blocks(3),
    "jasper10x5dr": lambda: _jasper_dr((256, 384, 512, 640, 768), (11, 13, 17, 21, 25), 2, 5,
                                       256, 11, 896, 29, 1024, dropout=0.2),
    # <= 15 M params (8.3 M; fp16 weights < 16 MiB): one block per stage, repeat 3, narrower.
    "jasper-dr-small": lambda: _jasper_dr((128, 128, 160, 160, 192), (11, 13, 17, 21, 25), 1, 3,
                                          128, 11, 208, 29, 384),
    # int8 weights <= 512 KB for a Cortex-M: 3 stages x repeat 3, 128..192 channels.
    "quartznet-tiny": lambda: _qn_blocks(1, widths=(128, 160, 192), kernels=(33, 39, 51), c1=128, c2=192,
                                         c3=256, repeat=3),
}


class MaskedConv1d(nn.Module):
    """``nn.Conv1d`` under the attribute name NeMo uses (``.conv``), optional time mask."""

    def __init__(self, cin, cout, k, stride=1, dilation=1, padding=0, groups=1, bias=False):
        super().__init__()
        self.conv = nn.Conv1d(cin, cout, k, stride=stride, dilation=dilation, padding=padding, groups=groups,
                              bias=bias)

    def out_lengths(self, lens: torch.Tensor) -> torch.Tensor:
        c = self.conv
        return torch.div(lens + 2 * c.padding[0] - c.dilation[0] * (c.kernel_size[0] - 1) - 1, c.stride[0],
                         rounding_mode="floor") + 1

    def forward(self, x, lens: Optional[torch.Tensor] = None):
        if lens is not None:
            mask = torch.arange(x.shape[-1], device=x.device)[None, :] < lens[:, None]
            x = x * mask[:, None, :].to(x.dtype)
            lens = self.out_lengths(lens)
        return self.conv(x), lens


def _conv_bn(cin, cout, k, stride=1, dilation=1, separable=False) -> List[nn.Module]:
    pad = (k // 2) * dilation
    if separable:
        layers = [MaskedConv1d(cin, cin, k, stride, dilation, pad, groups=cin), MaskedConv1d(cin, cout, 1)]
    else:
        layers = [MaskedConv1d(cin, cout, k, stride, dilation, pad)]
    layers.append(nn.BatchNorm1d(cout, eps=1e-3, momentum=0.1))
    return layers


class JasperBlock(nn.Module):
    def __init__(self, cin: int, cfg: BlockCfg, residual_panes: Sequence[int]):
        super().__init__()
        mconv = []
        c = cin
        for _ in range(cfg.repeat - 1):
            mconv += _conv_bn(c, cfg.filters, cfg.kernel, cfg.stride, cfg.dilation, cfg.separable)
            mconv += [nn.ReLU(), nn.Dropout(cfg.dropout)]
            c = cfg.filters
        mconv += _conv_bn(c, cfg.filters, cfg.kernel, cfg.stride, cfg.dilation, cfg.separable)
        self.mconv = nn.ModuleList(mconv)
        self.dense_residual = bool(cfg.residual and residual_panes)
        if cfg.residual:
            panes = list(residual_panes) or [cin]
            self.res = nn.ModuleList([nn.ModuleList(_conv_bn(p, cfg.filters, 1)) for p in panes])
        else:
            self.res = None
        self.mout = nn.Sequential(nn.ReLU(), nn.Dropout(cfg.dropout))
        self._plain_1x1 = (not cfg.separable and cfg.repeat == 1 and cfg.kernel == 1)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Key-remap shim for checkpoints written before the last QuartzNet block matched NeMo
        # (it was a separable 1x1: depthwise k=1 ``mconv.0`` + pointwise ``mconv.1`` + BN ``mconv.2``).
        # A depthwise 1x1 conv is a per-channel scale, so it folds exactly into the pointwise weight:
        # W'[o, i] = W[o, i] * dw[i]; the BN moves from ``mconv.2`` to ``mconv.1``.
        dw_key, pw_key = prefix + "mconv.0.conv.weight", prefix + "mconv.1.conv.weight"
        if (self._plain_1x1 and pw_key in state_dict and dw_key in state_dict
                and state_dict[dw_key].dim() == 3 and state_dict[dw_key].shape[1:] == (1, 1)
                and state_dict[pw_key].dim() == 3 and state_dict[pw_key].shape[1] == state_dict[dw_key].shape[0]):
            dw, pw = state_dict.pop(dw_key), state_dict.pop(pw_key)
            folded = (pw.float() * dw.float().reshape(1, -1, 1)).to(pw.dtype)
            moved = {k: state_dict.pop(k) for k in [k for k in state_dict if k.startswith(prefix + "mconv.2.")]}
            state_dict[dw_key] = folded
            for k, v in moved.items():
                state_dict[prefix + "mconv.1." + k[len(prefix + "mconv.2."):]] = v
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, xs: List[torch.Tensor], lens: Optional[torch.Tensor]):
        out, lens_in = xs[-1], lens
        for layer in self.mconv:
            if isinstance(layer, MaskedConv1d):
                out, lens = layer(out, lens)
            else:
                out = layer(out)
        if self.res is not None:
            for i, branch in enumerate(self.res):
                r = xs[i]
                for layer in branch:
                    r = layer(r, lens_in)[0] if isinstance(layer, MaskedConv1d) else layer(r)
                out = out + r
        out = self.mout(out)
        return (xs + [out] if self.dense_residual else [out]), lens


class ConvASREncoder(nn.Module):
    def __init__(self, feat_in: int, blocks: Sequence[BlockCfg]):
        super().__init__()
        layers, panes, c = [], [], feat_in
        for b in blocks:
            dense = []
            if b.residual_dense:
                panes.append(c)
                dense = list(panes)
            layers.append(JasperBlock(c, b, dense))
            c = b.filters
        self.encoder = nn.Sequential(*layers)
        self.feat_out = c

    def forward(self, x, lens=None):
        xs = [x]
        for block in self.encoder:
            xs, lens = block(xs, lens)
        return xs[-1], lens


class ConvASRDecoder(nn.Module):
    def __init__(self, feat_in: int, num_classes: int):
        super().__init__()
        self.decoder_layers = nn.Sequential(nn.Conv1d(feat_in, num_classes, 1, bias=True))

    def forward(self, x):
        return self.decoder_layers(x)


class ConvCTCModel(nn.Module):
    """Encoder + decoder.  ``forward(mel[B,F,T]) -> logits [B, T', C]`` (pre-softmax).

    Export and integer inference use raw logits (argmax == argmax of log-softmax);
    training applies ``log_softmax`` itself.
    """

    def __init__(self, arch: str, feat_in: int = 64, vocab: Sequence[str] = VOCAB,
                 blocks: Optional[Sequence[BlockCfg]] = None):
        """``blocks`` (e.g. read from a NeMo config by :mod:`zsq_tvm.nemo_io`) overrides ``ARCHS[arch]``."""
        super().__init__()
        if blocks is None and arch not in ARCHS:
            raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(sorted(ARCHS))}")
        self.arch = arch
        self.vocab = list(vocab)
        self.feat_in = feat_in
        self.encoder = ConvASREncoder(feat_in, list(blocks) if blocks is not None else ARCHS[arch]())
        self.decoder = ConvASRDecoder(self.encoder.feat_out, len(self.vocab) + 1)

    def forward(self, mel: torch.Tensor, lens: Optional[torch.Tensor] = None):
        enc, out_lens = self.encoder(mel, lens)
        logits = self.decoder(enc).transpose(1, 2)
        return logits if lens is None else (logits, out_lens)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
