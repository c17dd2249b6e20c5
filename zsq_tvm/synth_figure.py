"""A picture like the paper's Figure 3: real, random and synthetic mel spectrograms with their decodes.

    from zsq_tvm.synth_figure import plot_figure3
    plot_figure3("quartznet5x5", batches, config, "fig3.png")

Rows: one real mel (a sentence spoken by ``espeak-ng``, or a WAV you pass; features from
:class:`zsq_tvm.audio.mel.MelFrontend`), the uniform random initialisation, then synthetic mels.
Each row is titled with what the FP32 model greedily decodes it to (the paper used a 3-gram LM;
we decode greedily, no LM) and its eq. 2 loss.
"""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

import numpy as np

from zsq_tvm.ctc import QUARTZNET_VOCAB, greedy_decode
from zsq_tvm.synthesize import bn_loss, initial_batch, load_fp32_model

__all__ = ["real_mel", "plot_figure3", "DEFAULT_SENTENCE"]

DEFAULT_SENTENCE = "the quick brown fox jumps over the lazy dog near the river bank"


def real_mel(text: str = DEFAULT_SENTENCE, wav: str | None = None, voice: str = "en-us") -> np.ndarray:
    """``[64, T]`` log-mel features of ``wav`` (16 kHz mono PCM16) or of ``text`` spoken by espeak-ng."""
    import torch

    from zsq_tvm.audio.mel import MelFrontend, load_wav, wav_bytes_to_float

    if wav is not None:
        x = load_wav(wav)
    else:
        data = subprocess.run(["espeak-ng", "-v", voice, "--stdout", text], capture_output=True, check=True,
                              timeout=60).stdout
        x, sr = wav_bytes_to_float(data)
        if sr != 16000:
            from math import gcd

            from scipy.signal import resample_poly

            g = gcd(sr, 16000)
            x = resample_poly(x, 16000 // g, sr // g).astype(np.float32)
    feats, flen = MelFrontend()(torch.from_numpy(np.ascontiguousarray(x)))
    return feats[0, :, : int(flen[0])].numpy()


def _decode(net, mels: np.ndarray, vocab) -> list[str]:
    import torch

    with torch.no_grad():
        logits = net(torch.from_numpy(np.asarray(mels, np.float32))).numpy()
    return greedy_decode(logits, vocab)


def _fit(m: np.ndarray, T: int) -> np.ndarray:
    return m[:, :T] if m.shape[1] >= T else np.pad(m, ((0, 0), (0, T - m.shape[1])))


def plot_figure3(model, batches, config, path, n_synth: int = 3, text: str | None = None,
                 wav: str | None = None, title: str | None = None):
    """Write the figure to ``path`` (PNG); returns ``{"rows": [{"label", "decoded", "loss"}...]}``.

    The real row is ``wav`` (its transcript ``text`` in the label, if given) or ``text`` (default
    :data:`DEFAULT_SENTENCE`) spoken by espeak-ng."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    net, feats, name = load_fp32_model(model)
    net.eval()
    vocab = getattr(net, "vocab", None) or QUARTZNET_VOCAB
    T = int(np.shape(batches[0])[-1])
    try:
        r = real_mel(text or DEFAULT_SENTENCE, wav)
        fit = f", first {T} of {r.shape[1]} frames" if r.shape[1] > T else \
            f", zero-padded to {T} frames" if r.shape[1] < T else ""
        real = _fit(r, T)
        src = f"{Path(wav).name}" + (f': "{text}"' if text else "") if wav else \
            f'espeak-ng: "{text or DEFAULT_SENTENCE}"'
        real_label = f"real ({src}{fit})"
    except (OSError, subprocess.SubprocessError, ValueError) as e:  # no espeak-ng: skip the row
        real, real_label = None, f"real mel unavailable ({type(e).__name__})"
    init = initial_batch(config, 0, feats).numpy()
    synth = [np.asarray(b, np.float32)[i] for b in batches for i in range(np.shape(b)[0])][:n_synth]
    rows = ([("real", real_label, real)] if real is not None else []) + [("random", "random init U(-0.3, 0.3)", init[0])]
    rows += [("synthetic", f"synthetic #{i + 1}", m) for i, m in enumerate(synth)]
    # losses: eq. 2 needs a batch; real: the sentence alone (batch of 1) is a rough reference
    init_loss = sum(bn_loss(net, init, config.kl, config.reduction))
    synth_loss = sum(bn_loss(net, np.asarray(batches[0], np.float32), config.kl, config.reduction))
    decoded = _decode(net, np.stack([r[2] for r in rows]), vocab)
    fig, axes = plt.subplots(len(rows), 1, figsize=(11, 2.05 * len(rows)), squeeze=False)
    info = []
    for ax, (kind, label, m), dec in zip(axes[:, 0], rows, decoded):
        lim = 3.0 if kind != "random" else float(np.abs(m).max())
        im = ax.imshow(m, origin="lower", aspect="auto", cmap="magma", vmin=-lim, vmax=lim, interpolation="nearest")
        loss = init_loss if kind == "random" else synth_loss if kind == "synthetic" else None
        extra = f"   [eq. 2 loss of its batch: {loss:.3g}]" if loss is not None else ""
        ax.set_title(label + extra, fontsize=9, loc="left")
        shown = dec.strip() or "(blank: decodes to nothing)"
        ax.set_xlabel("decodes to: " + textwrap.shorten(f'"{shown}"', 150, placeholder=" …\""), fontsize=9)
        ax.set_ylabel("mel bin", fontsize=8)
        ax.tick_params(labelsize=7)
        fig.colorbar(im, ax=ax, pad=0.01, fraction=0.03).ax.tick_params(labelsize=7)
        info.append({"label": label, "decoded": dec, "loss": loss})
    fig.suptitle(title or f"Real, random and synthetic mel spectrograms ({name}; greedy CTC decode, no LM; "
                          f"{config.iters} Adam iters, lr {config.lr})", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return {"rows": info, "path": str(path)}
