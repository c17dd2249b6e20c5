"""Zero-shot calibration data: synthetic mel spectrograms from BatchNorm statistics (paper §2.3).

    import zsq_tvm
    batches = zsq_tvm.synthesize("quartznet5x5", zsq_tvm.SynthConfig(num_batches=20, frames=64))
    # -> list of float32 arrays [batch_size, 64, frames]; zsq_tvm.quantize(..., calib=batches)

A batch of mels ``x`` (initialised uniformly in ``[-0.3, 0.3]``) is a learnable parameter; the
FP32 model runs in **eval mode** (BatchNorm normalises with its running statistics, dropout is
off), and a forward hook on every BatchNorm measures the statistics of the BN's *input* over
batch and time (per channel: mean ``mu_b``, biased variance ``var_b``).  Eq. 2 compares them with
the running statistics ``(mu_r, var_r)`` the BN recorded on the real training data, as a KL
divergence between per-channel Gaussians.  Its direction is a choice (``kl``):

* ``"batch-first"`` (default) ``KL(N(mu_b, s_b) || N(mu_r, s_r))
  = log(s_r / s_b) - 1/2 (1 - (s_b^2 + (mu_b - mu_r)^2) / s_r^2)``;
* ``"running-first"`` ``KL(N(mu_r, s_r) || N(mu_b, s_b))``: eq. 2 read literally with the paper's
  notation (there the hatted statistics are the running ones).

Both are 0 exactly when the statistics match.  We default to batch-first because it optimises
far better: the running variance (a constant) is in the denominator instead of the synthetic
one.  On quartznet-tiny (8 x 64 x 256, 100 Adam steps) optimising batch-first reaches 0.05-0.13
(lr 0.03-0.06) on *both* measures, optimising running-first only 0.7-2.0 on its own measure.
Both variances include the BN's ``eps`` (what BN actually divides by).  Per BatchNorm the
per-channel KL is **averaged over channels**, and the layers are **summed** (eq. 2's Σ_i): every
layer weighs the same whatever its width (a 1024-channel epilogue would otherwise dominate a
256-channel block), and the loss reads as "nats per channel, summed over layers", comparable
across models.  Adam is invariant to the loss's overall scale, so this choice only sets the
relative layer weights.

The model may be a torch module (our nets), a shipped name / ``.pt`` checkpoint, or an ONNX
file that still has BatchNormalization nodes (converted by :mod:`zsq_tvm.frontend.onnx_torch`).
Seeded: batch ``b`` is initialised from ``SeedSequence([seed, b])``; with the same torch thread
count the output is bit-identical run to run.

Speed (CPU).  The cost is linear in batch x T (forward + input gradient through the whole net), so:

* ``frames`` defaults to 64 (0.64 s): the loss only sees per-channel means and variances over
  batch x time, which 8 x 64 frames estimate well; the mels are zero-padded to the model's T when
  used for calibration (like any shorter utterance).
* ``fast`` (default, CPU only) runs the convolutions in the channels-last layout - 1x1 convs as one
  GEMM, the others as oneDNN ``conv2d`` in ``channels_last`` format (a large-kernel depthwise conv1d is
  ~4x slower in the default layout), dilated "same" convs as undilated convs over the interleaved
  phases (oneDNN's dilated kernels are ~5x slower), eval BatchNorm as one multiply-add, the BN
  statistics as two passes over a ``[B*T, C]`` view - and stops every forward at the last
  BatchNorm (the layers behind it cannot change eq. 2).  Same loss and mels up to float rounding
  (``tests/test_synthesize.py``); ~2.2x fewer CPU seconds per step than the plain forward.
* Use ``threads=1`` on a shared machine: with other jobs on the cores, 2 intra-op threads were ~7x
  slower than one here.

QuartzNet-5x5, 20 batches x 8 x 64 frames x 200 steps: see ``docs/results.md`` for the measured time.
"""

from __future__ import annotations

import os
import sys
import types
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from zsq_tvm import artifacts
from zsq_tvm.core.errors import CalibrationError, ConfigError, ModelLoadError
from zsq_tvm.frontend.onnx_import import load_onnx
from zsq_tvm.zoo.models import MODELS_DIR

__all__ = ["SynthConfig", "synthesize", "bn_kl", "bn_loss", "initial_batch", "load_fp32_model", "save_batches",
           "FOLDED_BN_FIX"]

KL_MODES = ("batch-first", "running-first")
REDUCTIONS = ("mean", "sum")

FOLDED_BN_FIX = ("re-export the model keeping BatchNorm (`zsq export-nemo MODEL -o model.onnx`, or "
                 "torch.onnx.export(model.eval(), ..., training=torch.onnx.TrainingMode.PRESERVE, "
                 "do_constant_folding=False)), or calibrate without synthesis: --calib random")


@dataclass
class SynthConfig:
    """Hyper-parameters of synthesis; the defaults are the paper's (§3.1)."""

    num_batches: int = 20          # paper: 20 batches
    batch_size: int = 8            # paper: 8
    iters: int = 200               # paper: {200, 250}
    lr: float = 0.05               # paper: {0.03, 0.04, 0.05, 0.06}
    frames: int = 64               # T of each synthetic mel (100 per second): BN statistics are per channel over
                                   # batch x time, so a short T suffices; cost is linear in T (see module doc)
    features: int | None = None    # F; None: from the model (64 for all our nets)
    init_range: float = 0.3        # uniform init in [-init_range, init_range]
    betas: tuple[float, float] = (0.9, 0.999)
    seed: int = 0
    kl: str = "batch-first"        # KL(N(batch) || N(running)); "running-first": KL(N(running) || N(batch))
    reduction: str = "mean"        # over channels within a BN layer ("sum" is also accepted)
    threads: int | None = None     # torch intra-op threads while synthesizing (None: leave as is)
    progress: bool = True
    device: str = "cpu"
    fast: bool = True              # CPU: channels-last convs, stop after the last BN (same loss, ~2x faster)

    def validate(self) -> "SynthConfig":
        for k in ("num_batches", "batch_size", "iters", "frames"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < (0 if k == "iters" else 1):
                raise ConfigError(f"synthesis {k}={v!r} must be a positive integer", f"pass --{k.replace('_', '-')} N")
        if self.batch_size < 2:
            raise ConfigError("synthesis batch_size must be >= 2 (BN statistics are taken over batch and time)",
                              "pass --batch-size 8 (the paper's value)")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise ConfigError(f"synthesis lr={self.lr!r} must be > 0", "pass e.g. --lr 0.05")
        if self.kl not in KL_MODES:
            raise ConfigError(f"unknown KL direction {self.kl!r}", f"use one of {', '.join(KL_MODES)}")
        if self.reduction not in REDUCTIONS:
            raise ConfigError(f"unknown channel reduction {self.reduction!r}", "use mean or sum")
        if not self.init_range > 0:
            raise ConfigError(f"init_range={self.init_range!r} must be > 0", "pass e.g. 0.3")
        return self

    def to_json(self) -> dict:
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d


# --------------------------------------------------------------------------- the loss (eq. 2)
def bn_kl(mu_b, var_b, mu_r, var_r, kl: str = "batch-first", reduction: str = "mean"):
    """Eq. 2 for one BatchNorm: KL between per-channel Gaussians, reduced over channels.

    ``mu_b, var_b``: statistics of the synthetic batch; ``mu_r, var_r``: the BN's running
    statistics.  Variances must already include the BN's eps.  Works on torch tensors (and
    differentiates) or numpy arrays.
    """
    lib = _lib(mu_b)
    d2 = (mu_b - mu_r) ** 2
    if kl == "batch-first":  # KL(N(mu_b, var_b) || N(mu_r, var_r))
        per = 0.5 * lib.log(var_r / var_b) - 0.5 * (1.0 - (var_b + d2) / var_r)
    elif kl == "running-first":  # KL(N(mu_r, var_r) || N(mu_b, var_b))
        per = 0.5 * lib.log(var_b / var_r) - 0.5 * (1.0 - (var_r + d2) / var_b)
    else:
        raise ConfigError(f"unknown KL direction {kl!r}", f"use one of {', '.join(KL_MODES)}")
    return per.mean() if reduction == "mean" else per.sum()


def _lib(x):
    import torch

    return torch if isinstance(x, torch.Tensor) else np


# --------------------------------------------------------------------------- model loading
def _bn_types():
    from torch import nn

    return (nn.modules.batchnorm._BatchNorm,)


def _load_shipped(name):
    try:
        from zsq_tvm.zoo.models import load_torch
    except ImportError:  # older checkout: load the checkpoint directly
        load_torch = None
    if load_torch is not None:
        return load_torch(name)
    import torch

    from zsq_tvm.zoo.nets import build_model

    p = Path(name) if str(name).endswith(".pt") else MODELS_DIR / f"{name}.pt"
    if not p.is_file():
        raise ModelLoadError(f"unknown model {str(name)!r}", "pass a shipped model name, a .pt or an .onnx file")
    ck = torch.load(p, map_location="cpu", weights_only=True)
    m = build_model(ck["arch"])
    m.load_state_dict({k: v.float() for k, v in ck["state_dict"].items()})
    return m.float().eval()


def load_fp32_model(model):
    """torch module / shipped name / ``.pt`` / ONNX (path or ModelProto) -> (torch module, features, name)."""
    import torch

    if isinstance(model, torch.nn.Module):
        return model, _features_of(model), getattr(model, "name", type(model).__name__)
    import onnx

    is_onnx = isinstance(model, onnx.ModelProto) or (isinstance(model, (str, os.PathLike))
                                                      and str(model).lower().endswith(".onnx"))
    if not is_onnx:
        m = _load_shipped(model)
        return m, _features_of(m), getattr(m, "name", str(model))
    from zsq_tvm.frontend.onnx_torch import OnnxTorch

    proto, _, source = load_onnx(model)
    if not any(n.op_type == "BatchNormalization" for n in proto.graph.node):
        raise CalibrationError(f"ONNX model {source!r} has no BatchNormalization nodes (its exporter folded them "
                               f"into the convolutions), so there are no BN statistics to synthesize data from",
                               FOLDED_BN_FIX)
    try:
        net = OnnxTorch(proto).eval()
    except NotImplementedError as e:
        raise ConfigError(f"cannot convert {source!r} to torch for synthesis: {e}",
                          "calibrate with --calib random or a directory of real mels, or synthesize from the "
                          "torch model (`zsq synth quartznet5x5 ...`)") from None
    feats = None
    for i in proto.graph.input:
        if i.name == net.input_name:
            dims = i.type.tensor_type.shape.dim
            if len(dims) == 3 and dims[1].HasField("dim_value"):
                feats = int(dims[1].dim_value)
    return net, feats or 64, Path(source).stem if source != "<ModelProto>" else source


def _features_of(m) -> int:
    return int(getattr(m, "feat_in", 0) or 64)


# --------------------------------------------------------------------------- synthesis
def _batch_seed(seed: int, b: int) -> int:
    return int(np.random.SeedSequence([int(seed), int(b)]).generate_state(1)[0])


def initial_batch(config: SynthConfig, b: int, features: int):
    """The uniform random initialisation of batch ``b`` (a torch tensor ``[B, F, T]``)."""
    import torch

    g = torch.Generator().manual_seed(_batch_seed(config.seed, b))
    return (torch.rand(config.batch_size, features, config.frames, generator=g, dtype=torch.float32) * 2 - 1) \
        * config.init_range


class _StopForward(Exception):
    """Raised by the hook of the last BatchNorm: nothing after it contributes to eq. 2."""


class _BNObserver:
    """Forward hooks computing eq. 2 at every BatchNorm; ``terms`` collects one scalar per BN per forward.

    ``stop_after``: once set (to the number of BNs one full forward reaches), the hook raises
    :class:`_StopForward` right after the last term, so the layers behind the last BatchNorm (the
    rest of the last block, the decoder) are not run - they cannot change the loss.
    """

    def __init__(self, model, kl: str, reduction: str):
        self.terms: list = []
        self.handles = []
        self.stop_after: int | None = None
        self.bns = [m for m in model.modules() if isinstance(m, _bn_types())]
        for bn in self.bns:
            self.handles.append(bn.register_forward_pre_hook(self._hook))
        self.kl, self.reduction = kl, reduction

    def _hook(self, bn, inputs):
        x = inputs[0]
        if bn.running_mean is None:
            return
        var_b, mu_b = _var_mean(x)
        eps = float(bn.eps)
        self.terms.append(bn_kl(mu_b, var_b + eps, bn.running_mean.to(x.dtype),
                                bn.running_var.to(x.dtype) + eps, self.kl, self.reduction))
        if self.stop_after is not None and len(self.terms) >= self.stop_after:
            raise _StopForward

    def run(self, net, x):
        """Forward ``x`` (up to the last BatchNorm once ``stop_after`` is set); returns the eq. 2 terms."""
        self.terms.clear()
        try:
            net(x)
        except _StopForward:
            pass
        return self.terms

    def close(self):
        for h in self.handles:
            h.remove()


def _var_mean(x):
    """Per-channel (axis 1) biased variance and mean over all other axes."""
    import torch

    if x.dim() == 3 and x.stride(1) == 1 and x.shape[1] > 1:  # channels-last [B, C, T] (the fast path's layout)
        # two passes over a [B*T, C] view: ~2.5x faster on CPU than torch.var_mean's reduction (fwd + bwd)
        x2 = x.transpose(1, 2).reshape(-1, x.shape[1])
        mu = x2.mean(0)
        d = x2 - mu
        return (d * d).mean(0), mu
    return torch.var_mean(x, dim=[d for d in range(x.dim()) if d != 1], correction=0)


# --------------------------------------------------------------------------- fast CPU path
def _conv1d_nwc(conv, x):
    """``nn.Conv1d.forward`` computed in the channels-last (N, T, C) memory layout.

    Same math as ``conv.forward`` (float rounding aside): 1x1 convolutions are one GEMM
    ``[B*T, Cin] @ [Cin, Cout]``; the others run as a ``conv2d`` over ``[B, C, 1, T]`` in
    ``channels_last`` memory format, for which oneDNN has fast kernels (a large-kernel depthwise
    conv1d in the default layout is ~4x slower on CPU).  The result is ``[B, C, T]`` with
    channels-last strides, so the next conv / BN / ReLU / add keeps the layout without copies.
    """
    import torch

    (k,), (s,), (d,), (p,) = conv.kernel_size, conv.stride, conv.dilation, conv.padding
    if k == 1 and s == 1 and p == 0 and conv.groups == 1:
        y = torch.matmul(x.transpose(1, 2), conv.weight[:, :, 0].t())
        if conv.bias is not None:
            y = y + conv.bias
        return y.transpose(1, 2)
    B, C, T = x.shape
    if d > 1 and s == 1 and p == (k // 2) * d and k % 2 == 1 and T % d == 0:
        # polyphase: a "same" conv dilated by d is d undilated convs over the d interleaved phases
        # (oneDNN's dilated kernels are ~5x slower than its plain ones in this layout)
        xp = x.transpose(1, 2).reshape(B, T // d, d, C).transpose(1, 2).reshape(B * d, T // d, C).transpose(1, 2)
        y = _conv1d_nwc_plain(xp, conv.weight, conv.bias, 1, k // 2, 1, conv.groups)
        Co = y.shape[1]
        return y.transpose(1, 2).reshape(B, d, T // d, Co).transpose(1, 2).reshape(B, T, Co).transpose(1, 2)
    return _conv1d_nwc_plain(x, conv.weight, conv.bias, s, p, d, conv.groups)


def _conv1d_nwc_plain(x, weight, bias, s, p, d, groups):
    import torch
    import torch.nn.functional as F

    x4 = x.unsqueeze(2).contiguous(memory_format=torch.channels_last)
    return F.conv2d(x4, weight.unsqueeze(2), bias, (1, s), (0, p), (1, d), groups).squeeze(2)


def _bn_eval_affine(bn, x):
    """Eval-mode ``BatchNorm1d`` as ``x * scale + shift`` (keeps the input's memory layout)."""
    inv = (bn.running_var + bn.eps).rsqrt()
    scale = inv if bn.weight is None else bn.weight * inv
    shift = -bn.running_mean * scale + (0.0 if bn.bias is None else bn.bias)
    shape = (1, -1) + (1,) * (x.dim() - 2)
    return x * scale.reshape(shape) + shift.reshape(shape)


class _FastPath:
    """Temporarily swap the forward of every plain ``nn.Conv1d`` / eval ``BatchNorm1d`` of ``net`` for the
    channels-last versions above (hooks still fire: only ``forward`` is replaced); undone on exit.
    Modules with padding modes, string padding or no running statistics keep their own forward."""

    def __init__(self, net, enabled: bool = True):
        self.net, self.enabled, self.patched = net, enabled, []

    def __enter__(self):
        from torch import nn

        if not self.enabled:
            return self
        for m in self.net.modules():
            if type(m) is nn.Conv1d and m.padding_mode == "zeros" and not isinstance(m.padding, str):
                fn = _conv1d_nwc
            elif type(m) is nn.BatchNorm1d and m.track_running_stats and m.running_mean is not None:
                fn = _bn_eval_affine
            else:
                continue
            had = "forward" in vars(m)
            self.patched.append((m, had, vars(m).get("forward")))
            m.forward = types.MethodType(fn, m)
        return self

    def __exit__(self, *exc):
        for m, had, old in reversed(self.patched):
            if had:
                m.forward = old
            else:
                del m.forward
        self.patched.clear()
        return False


def bn_loss(model, mels, kl: str = "batch-first", reduction: str = "mean") -> list[float]:
    """Eq. 2 per BatchNorm (the synthesis loss) of a given mel batch ``[B, F, T]`` - e.g. real data."""
    import torch

    net, _, _ = load_fp32_model(model)
    obs = _BNObserver(net, kl, reduction)
    was_training = net.training
    try:
        net.eval()
        with torch.no_grad():
            net(torch.as_tensor(np.asarray(mels, dtype=np.float32)))
        return [float(t) for t in obs.terms]
    finally:
        obs.close()
        net.train(was_training)


def synthesize(model, config: SynthConfig | None = None, *, history: list | None = None,
               **overrides) -> list[np.ndarray]:
    """Synthetic mel batches ``[batch_size, F, frames]`` (float32) that match the model's BN statistics.

    ``model``: torch module with BatchNorm layers, shipped name, ``.pt`` checkpoint, or ONNX file /
    ``ModelProto`` with BatchNormalization nodes.  ``history``: if a list, one dict per batch is
    appended (``loss``: the loss before each Adam step, ``final``: the loss of the returned batch,
    ``initial``, ``per_layer_final``, ``seed``).
    """
    import torch
    from tqdm.auto import tqdm

    cfg = config or SynthConfig()
    if overrides:
        cfg = SynthConfig(**{**asdict(cfg), **overrides})
    cfg.validate()
    net, feats, _name = load_fp32_model(model)
    F_ = int(cfg.features or feats)
    old_threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    was_training = net.training
    req = [(p, p.requires_grad) for p in net.parameters()]
    net.eval()
    for p, _ in req:
        p.requires_grad_(False)
    obs = _BNObserver(net, cfg.kl, cfg.reduction)
    dev = torch.device(cfg.device)
    try:
        if not obs.bns:
            raise CalibrationError("the model has no BatchNorm layers, so there are no statistics to synthesize "
                                   "data from", FOLDED_BN_FIX)
        net.to(dev)
        out = []
        bar = tqdm(total=cfg.num_batches * cfg.iters, desc="synthesize", unit="it", disable=not cfg.progress,
                   dynamic_ncols=True, file=sys.stderr)
        fast = _FastPath(net, enabled=cfg.fast and dev.type == "cpu")
        with fast:
            for b in range(cfg.num_batches):
                out.append(_synthesize_batch(net, obs, cfg, b, F_, dev, bar, history))
        bar.close()
        return out
    finally:
        obs.close()
        for p, r in req:
            p.requires_grad_(r)
        net.train(was_training)
        if cfg.threads:
            torch.set_num_threads(old_threads)


def _synthesize_batch(net, obs: _BNObserver, cfg: SynthConfig, b: int, F_: int, dev, bar, history):
    import torch

    s = _batch_seed(cfg.seed, b)
    x = initial_batch(cfg, b, F_).to(dev).requires_grad_(True)
    opt = torch.optim.Adam([x], lr=cfg.lr, betas=tuple(cfg.betas))
    losses = []
    for _ in range(cfg.iters):
        opt.zero_grad(set_to_none=True)
        terms = obs.run(net, x)
        if not terms:
            raise CalibrationError("no BatchNorm with running statistics was reached in the forward pass",
                                   FOLDED_BN_FIX)
        if obs.stop_after is None:  # the first full forward tells how many BNs there are
            obs.stop_after = len(terms)
        loss = torch.stack(terms).sum()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        bar.update(1)
        if len(losses) % 5 == 1 or len(losses) == cfg.iters:
            bar.set_postfix(batch=f"{b + 1}/{cfg.num_batches}", loss=f"{losses[-1]:.4g}",
                            start=f"{losses[0]:.4g}", refresh=False)
    with torch.no_grad():  # the loss of what we return (after the last step)
        per_layer = [float(t) for t in obs.run(net, x)]
    if not np.isfinite(per_layer).all():
        raise CalibrationError(f"synthesis diverged (loss {sum(per_layer)}) in batch {b}",
                               "lower --lr (e.g. 0.03) or --iters")
    if history is not None:
        history.append({"batch": b, "seed": s, "loss": losses, "initial": losses[0] if losses else None,
                        "final": float(sum(per_layer)), "per_layer_final": per_layer})
    return x.detach().to("cpu").numpy().astype(np.float32, copy=True)


def save_batches(batches, out_dir, config: SynthConfig | None = None, history: list | None = None,
                 source: str | None = None, overwrite: bool = False) -> Path:
    """Write ``synth_000.npy`` … (each ``[B, F, T]`` float32) + ``synth.json``, atomically.

    The directory is what ``zsq quantize --calib DIR`` / ``QuantConfig(calib=DIR)`` reads.
    """

    with artifacts.atomic_dir(out_dir, overwrite=overwrite, kind=artifacts.KIND_SYNTH,
                              inputs=[source] if source else ()) as tmp:
        for i, a in enumerate(batches):
            np.save(tmp / f"synth_{i:03d}.npy", np.asarray(a, dtype=np.float32))
        info: dict[str, Any] = {"kind": "zsq-synthetic-mels", "source": source, "num_batches": len(batches),
                                "shape": list(np.shape(batches[0])) if batches else None}
        if config is not None:
            info["config"] = config.to_json()
        if history:
            info["loss"] = [{"batch": h["batch"], "seed": h["seed"], "initial": h["initial"], "final": h["final"]}
                            for h in history]
        artifacts.write_json(tmp / "synth.json", info)
        artifacts.write_manifest(tmp, artifacts.new_manifest(artifacts.KIND_SYNTH))  # so --overwrite may replace it
    return Path(out_dir)


class _CallableModule(types.ModuleType):
    """``zsq_tvm.synthesize`` is both this module and the function: importing the submodule rebinds
    the package attribute to the module, so the module itself forwards calls to :func:`synthesize`."""

    def __call__(self, *args, **kwargs):
        return synthesize(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
