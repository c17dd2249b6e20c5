"""Conformer-CTC in plain torch with NeMo's ``ConformerEncoder`` parameter names.

    encoder.pre_encode.conv.{0,2}.*        2-D striding subsampling (x4), ReLU between
    encoder.pre_encode.out.*               Linear(C * F/4 -> d_model)
    encoder.layers.{i}.norm_feed_forward1 / feed_forward1.{linear1,linear2}
    encoder.layers.{i}.norm_self_att / self_attn.{linear_q,linear_k,linear_v,linear_out,linear_pos,
                                                  pos_bias_u,pos_bias_v}
    encoder.layers.{i}.norm_conv / conv.{pointwise_conv1,depthwise_conv,batch_norm,pointwise_conv2}
    encoder.layers.{i}.norm_feed_forward2 / feed_forward2.*, norm_out
    decoder.decoder_layers.0.*

Each layer (Gulati et al. 2020): x + ½FFN(x) -> + RelPosMHSA -> + Conv module
(pointwise -> GLU -> depthwise -> BatchNorm -> Swish -> pointwise) -> + ½FFN -> LayerNorm.
Attention uses Transformer-XL relative positions (learned biases u, v and ``rel_shift``).
The ops exercised are exactly those the integer-nonlinearity work must cover: softmax,
Swish (x·sigmoid), GLU (sigmoid), LayerNorm, BatchNorm, matmuls.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import nn

from zsq_tvm.zoo.nets.convasr import VOCAB, ConvASRDecoder

CONFORMER_ARCHS = {
    # NeMo's Conformer-CTC "small" is d=176, 16 layers (13 M); ours trains in minutes.
    "conformer-ctc-small": dict(d_model=144, n_layers=8, n_heads=4, ff_expansion=4, conv_kernel=31,
                                subsampling_channels=144),
    # NeMo Conformer-CTC large (d=512, 18 layers, 8 heads): compile/check with random weights.
    "conformer-ctc-large": dict(d_model=512, n_layers=18, n_heads=8, ff_expansion=4, conv_kernel=31,
                                subsampling_channels=512),
}


class Swish(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(x)


class ConvSubsampling(nn.Module):
    def __init__(self, feat_in: int, d_model: int, channels: int):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(1, channels, 3, 2, 1), nn.ReLU(), nn.Conv2d(channels, channels, 3, 2, 1),
                                  nn.ReLU())
        f = feat_in
        for _ in range(2):
            f = (f + 2 - 3) // 2 + 1
        self.out = nn.Linear(channels * f, d_model)

    @staticmethod
    def out_lengths(lens):
        for _ in range(2):
            lens = torch.div(lens + 2 - 3, 2, rounding_mode="floor") + 1
        return lens

    def forward(self, x, lens: Optional[torch.Tensor] = None):  # x: [B, T, F]
        x = x.unsqueeze(1)
        if lens is None:
            x = self.conv(x)  # [B, C, T/4, F/4]
        else:
            # NeMo's MaskedConvSequential: frames past each length are zeroed before every layer
            # (and after the last), so padding never leaks into valid frames through the 3x3 convs.
            for layer in self.conv:
                x = x * (torch.arange(x.shape[2], device=x.device)[None, :] < lens[:, None])[:, None, :, None].to(x.dtype)
                x = layer(x)
                if isinstance(layer, nn.Conv2d):
                    lens = torch.div(lens + 2 * layer.padding[0] - layer.kernel_size[0], layer.stride[0],
                                     rounding_mode="floor") + 1
            x = x * (torch.arange(x.shape[2], device=x.device)[None, :] < lens[:, None])[:, None, :, None].to(x.dtype)
        b, c, t, f = x.shape
        return self.out(x.transpose(1, 2).reshape(b, t, c * f))


class RelPositionalEncoding(nn.Module):
    def __init__(self, d_model: int):
        super().__init__()
        self.d_model = d_model
        self.xscale = math.sqrt(d_model)

    def forward(self, x):
        t = x.shape[1]
        pos = torch.arange(t - 1, -t, -1, device=x.device, dtype=torch.float32)[:, None]
        div = torch.exp(torch.arange(0, self.d_model, 2, device=x.device, dtype=torch.float32)
                        * (-math.log(10000.0) / self.d_model))
        pe = torch.zeros(2 * t - 1, self.d_model, device=x.device)
        pe[:, 0::2] = torch.sin(pos * div)
        pe[:, 1::2] = torch.cos(pos * div)
        return x * self.xscale, pe.unsqueeze(0)


class ConformerFeedForward(nn.Module):
    def __init__(self, d, expansion, dropout):
        super().__init__()
        self.linear1 = nn.Linear(d, d * expansion)
        self.activation = Swish()
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d * expansion, d)

    def forward(self, x):
        return self.linear2(self.dropout(self.activation(self.linear1(x))))


class ConformerConvolution(nn.Module):
    def __init__(self, d, kernel):
        super().__init__()
        self.pointwise_conv1 = nn.Conv1d(d, 2 * d, 1)
        self.depthwise_conv = nn.Conv1d(d, d, kernel, padding=kernel // 2, groups=d)
        self.batch_norm = nn.BatchNorm1d(d)
        self.activation = Swish()
        self.pointwise_conv2 = nn.Conv1d(d, d, 1)

    def forward(self, x, pad_mask=None):  # x: [B, T, D]
        x = self.pointwise_conv1(x.transpose(1, 2))
        x = nn.functional.glu(x, dim=1)
        if pad_mask is not None:
            x = x.masked_fill(pad_mask[:, None, :], 0.0)
        x = self.depthwise_conv(x)
        x = self.activation(self.batch_norm(x))
        return self.pointwise_conv2(x).transpose(1, 2)


class RelPositionMultiHeadAttention(nn.Module):
    def __init__(self, d, n_heads, dropout):
        super().__init__()
        self.h, self.d_k = n_heads, d // n_heads
        self.linear_q = nn.Linear(d, d)
        self.linear_k = nn.Linear(d, d)
        self.linear_v = nn.Linear(d, d)
        self.linear_out = nn.Linear(d, d)
        self.linear_pos = nn.Linear(d, d, bias=False)
        self.pos_bias_u = nn.Parameter(torch.zeros(self.h, self.d_k))
        self.pos_bias_v = nn.Parameter(torch.zeros(self.h, self.d_k))
        nn.init.xavier_uniform_(self.pos_bias_u)
        nn.init.xavier_uniform_(self.pos_bias_v)
        self.dropout = nn.Dropout(dropout)

    @staticmethod
    def rel_shift(x):
        b, h, q, p = x.shape
        x = nn.functional.pad(x, (1, 0))
        return x.view(b, h, p + 1, q)[:, :, 1:].view(b, h, q, p)

    def forward(self, x, pos_emb, pad_mask=None):
        b, t, _ = x.shape
        q = self.linear_q(x).view(b, t, self.h, self.d_k)
        k = self.linear_k(x).view(b, t, self.h, self.d_k).transpose(1, 2)
        v = self.linear_v(x).view(b, t, self.h, self.d_k).transpose(1, 2)
        p = self.linear_pos(pos_emb).view(1, -1, self.h, self.d_k).transpose(1, 2)
        ac = torch.matmul((q + self.pos_bias_u).transpose(1, 2), k.transpose(-2, -1))
        bd = torch.matmul((q + self.pos_bias_v).transpose(1, 2), p.transpose(-2, -1))
        bd = self.rel_shift(bd)[:, :, :, :t]
        scores = (ac + bd) / math.sqrt(self.d_k)
        if pad_mask is not None:
            # as NeMo: padded keys *and* padded queries are masked; masked weights are exactly 0
            att_mask = (pad_mask[:, None, :] | pad_mask[:, :, None])[:, None]  # [B, 1, T, T]
            scores = scores.masked_fill(att_mask, -10000.0)
            attn = self.dropout(torch.softmax(scores, dim=-1).masked_fill(att_mask, 0.0))
        else:
            attn = self.dropout(torch.softmax(scores, dim=-1))
        out = torch.matmul(attn, v).transpose(1, 2).reshape(b, t, self.h * self.d_k)
        return self.linear_out(out)


class ConformerLayer(nn.Module):
    def __init__(self, d, n_heads, ff_expansion, conv_kernel, dropout):
        super().__init__()
        self.norm_feed_forward1 = nn.LayerNorm(d)
        self.feed_forward1 = ConformerFeedForward(d, ff_expansion, dropout)
        self.norm_self_att = nn.LayerNorm(d)
        self.self_attn = RelPositionMultiHeadAttention(d, n_heads, dropout)
        self.norm_conv = nn.LayerNorm(d)
        self.conv = ConformerConvolution(d, conv_kernel)
        self.norm_feed_forward2 = nn.LayerNorm(d)
        self.feed_forward2 = ConformerFeedForward(d, ff_expansion, dropout)
        self.dropout = nn.Dropout(dropout)
        self.norm_out = nn.LayerNorm(d)

    def forward(self, x, pos_emb, pad_mask=None):
        r = x + 0.5 * self.dropout(self.feed_forward1(self.norm_feed_forward1(x)))
        r = r + self.dropout(self.self_attn(self.norm_self_att(r), pos_emb, pad_mask))
        r = r + self.dropout(self.conv(self.norm_conv(r), pad_mask))
        r = r + 0.5 * self.dropout(self.feed_forward2(self.norm_feed_forward2(r)))
        return self.norm_out(r)


class ConformerEncoder(nn.Module):
    def __init__(self, feat_in, d_model, n_layers, n_heads, ff_expansion, conv_kernel, subsampling_channels,
                 dropout=0.1):
        super().__init__()
        self.pre_encode = ConvSubsampling(feat_in, d_model, subsampling_channels)
        self.pos_enc = RelPositionalEncoding(d_model)
        self.layers = nn.ModuleList([ConformerLayer(d_model, n_heads, ff_expansion, conv_kernel, dropout)
                                     for _ in range(n_layers)])
        self.feat_out = d_model

    def forward(self, mel, lens=None):  # mel [B, F, T] -> [B, D, T/4]
        x = self.pre_encode(mel.transpose(1, 2), lens)
        x, pos = self.pos_enc(x)
        pad_mask = None
        if lens is not None:
            lens = ConvSubsampling.out_lengths(lens)
            pad_mask = torch.arange(x.shape[1], device=x.device)[None, :] >= lens[:, None]
        for layer in self.layers:
            x = layer(x, pos, pad_mask)
        return x.transpose(1, 2), lens


class ConformerCTCModel(nn.Module):
    """``forward(mel[B,F,T]) -> logits [B, T/4, C]``; with ``lens`` also returns output lengths."""

    def __init__(self, arch: str = "conformer-ctc-small", feat_in: int = 64, vocab: Sequence[str] = VOCAB,
                 dropout: float = 0.1, params: Optional[dict] = None):
        """``params`` (keys of :data:`CONFORMER_ARCHS` entries, e.g. from a NeMo config) overrides the arch's."""
        super().__init__()
        if params is None and arch not in CONFORMER_ARCHS:
            raise ValueError(f"unknown conformer architecture {arch!r}; known: {', '.join(CONFORMER_ARCHS)}")
        self.arch = arch
        self.vocab = list(vocab)
        self.feat_in = feat_in
        self.encoder = ConformerEncoder(feat_in, dropout=dropout, **(params if params is not None
                                                                      else CONFORMER_ARCHS[arch]))
        self.decoder = ConvASRDecoder(self.encoder.feat_out, len(self.vocab) + 1)

    def forward(self, mel, lens: Optional[torch.Tensor] = None):
        enc, out_lens = self.encoder(mel, lens)
        logits = self.decoder(enc).transpose(1, 2)
        return logits if lens is None else (logits, out_lens)
