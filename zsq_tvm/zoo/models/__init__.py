"""Shipped reference checkpoints (trained on the TTS corpus, see ``docs/models/<name>.md``).

    from zsq_tvm.zoo.models import SHIPPED, load_torch
    model = load_torch("quartznet5x5")          # eval-mode torch model, float32, on the CPU
    model = load_torch("path/to/ckpt.pt")       # any checkpoint written by ``lab.train``

Each ``<name>.pt`` is a ``torch.save`` dict ``{"arch", "vocab", "state_dict" (fp16), "meta"}``;
``meta`` holds the training facts (steps, hours seen, GPU, lr, log) and the WER measured at the
end of training.  Every command that takes a model accepts these names (``zsq quantize
quartznet5x5 --frames 1000 ...``, ``zsq eval quartznet5x5 ...``).
"""
from __future__ import annotations

import os
from pathlib import Path

from zsq_tvm.core.errors import ModelLoadError

MODELS_DIR = Path(__file__).resolve().parent

#: shipped model name -> checkpoint path
SHIPPED: dict[str, Path] = {p.stem: p for p in sorted(MODELS_DIR.glob("*.pt"))}

__all__ = ["MODELS_DIR", "SHIPPED", "is_shipped", "checkpoint_path", "load_checkpoint", "load_torch"]


def is_shipped(name) -> bool:
    """True when ``name`` is a shipped model name (and not an existing file or directory)."""
    return isinstance(name, str) and name in SHIPPED and not os.path.exists(name)


def checkpoint_path(name_or_path) -> Path:
    """Shipped name or ``.pt`` path -> checkpoint path; a clear :class:`ModelLoadError` otherwise."""
    if is_shipped(name_or_path):
        return SHIPPED[name_or_path]
    p = Path(os.fspath(name_or_path))
    if p.is_file() and p.suffix == ".pt":
        return p
    known = ", ".join(sorted(SHIPPED)) or "(none installed)"
    if p.exists():
        raise ModelLoadError(f"{str(p)!r} is not a shipped model name or a .pt checkpoint",
                             f"pass one of the shipped models ({known}) or a checkpoint written by lab.train")
    raise ModelLoadError(f"unknown model {str(name_or_path)!r}: neither a shipped model nor an existing file",
                         f"use one of the shipped models: {known}")


def load_checkpoint(name_or_path) -> dict:
    """The raw checkpoint dict (tensors on the CPU; the files were saved on a GPU)."""
    import torch

    path = checkpoint_path(name_or_path)
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ModelLoadError(f"cannot read checkpoint {str(path)!r} ({type(e).__name__}: {str(e)[:120]})",
                             "re-download the file, or check it was written by lab.train") from None
    if not isinstance(ck, dict) or not {"arch", "state_dict"} <= set(ck):
        raise ModelLoadError(f"checkpoint {str(path)!r} has no 'arch'/'state_dict'",
                             "pass a checkpoint written by lab.train (torch.save dict)")
    return ck


def load_torch(name_or_path):
    """Shipped name or checkpoint path -> float32 torch model in eval mode (``model.meta`` = checkpoint meta)."""
    from zsq_tvm.zoo.nets import build_model

    ck = load_checkpoint(name_or_path)
    kw = {"vocab": ck["vocab"]} if ck.get("vocab") else {}
    model = build_model(ck["arch"], **kw)
    sd = {k: (v.float() if v.is_floating_point() else v) for k, v in ck["state_dict"].items()}
    try:
        model.load_state_dict(sd)
    except RuntimeError as e:
        raise ModelLoadError(f"checkpoint {str(checkpoint_path(name_or_path))!r} does not match architecture "
                             f"{ck['arch']!r} ({str(e).splitlines()[0][:160]})",
                             "pass a checkpoint of a known architecture") from None
    model.meta = ck.get("meta", {})
    model.name = name_or_path if is_shipped(name_or_path) else Path(os.fspath(name_or_path)).stem
    return model.float().eval()
