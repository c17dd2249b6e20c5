"""Torch CTC model -> ONNX with the BatchNormalization nodes kept.

    from zsq_tvm.zoo.nets.export import export_onnx
    export_onnx("quartznet5x5", "qn.onnx", frames=1000)   # shipped name, .pt checkpoint or nn.Module

The graph is encoder + decoder: input ``mel`` ``[1, 64, T]`` (float32), output ``logits``
``[1, T', 29]`` (pre-softmax; blank = last class).  BatchNormalization stays a node
(``TrainingMode.PRESERVE`` on an eval-mode model, no constant folding) because zero-shot
synthesis needs the BN statistics; ``FoldBatchNorm`` folds it later.  ``frames=None``
exports a dynamic time axis; an integer fixes T.  The file is written to a temporary
sibling and renamed, so a failed export leaves nothing behind.  :func:`check_export_path`
refuses an output that is a directory, that lies in an unwritable folder, or (``overwrite=False``,
what ``zsq export-nemo`` passes without ``--overwrite``) that already exists — callers run it
before loading a model so that a bad ``-o`` fails in milliseconds, not after the export.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

from zsq_tvm.artifacts import check_output_file, write_output_file
from zsq_tvm.core.errors import ArtifactError, ConfigError, ModelLoadError

__all__ = ["export_onnx", "count_batchnorm", "check_export_path"]

EXPORT_FRAMES = 256  # example input length for tracing when the time axis is dynamic


def count_batchnorm(proto) -> int:
    return sum(n.op_type == "BatchNormalization" for n in proto.graph.node)


def check_export_path(output, overwrite: bool = False) -> Path:
    """:func:`zsq_tvm.artifacts.check_output_file` for ``-o``; a missing folder is fine if it can be made
    (``export_onnx`` makes it)."""

    return check_output_file(output, overwrite, flag="-o", missing_folder_ok=True)


def export_onnx(model_or_name, output, frames: int | None = None, opset: int = 17, overwrite: bool = True) -> Path:
    """Export to ``output`` and return its path.  ``model_or_name``: torch module, shipped name or ``.pt``.

    ``overwrite=True`` (the library default: callers here write into their own work folders)
    replaces an existing file; ``False`` refuses it, checked before the model is loaded and again
    just before the final rename.
    """
    import onnx
    import torch

    check_export_path(output, overwrite)
    if isinstance(model_or_name, torch.nn.Module):
        model, name = model_or_name, getattr(model_or_name, "name", type(model_or_name).__name__)
    else:
        from zsq_tvm.zoo.models import load_torch

        model = load_torch(model_or_name)
        name = model.name
    if frames is not None and (isinstance(frames, bool) or not isinstance(frames, int) or frames < 16):
        raise ConfigError(f"frames={frames!r} must be an integer >= 16", "pass --frames T (100 per second)")
    model = model.float().eval()
    feat_in = int(getattr(model, "feat_in", 64))  # all our nets take 64 mel features
    T = frames or EXPORT_FRAMES
    out = Path(os.fspath(output))
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ArtifactError(f"cannot create the folder of {str(output)!r} ({type(e).__name__}: {e.strerror or e})",
                            "choose another -o path") from None
    dyn = None if frames else {"mel": {2: "time"}, "logits": {1: "time_out"}}
    # a temporary sibling renamed onto `out` at the end; without overwrite never onto a file that appeared meanwhile
    with write_output_file(out, overwrite) as tmp:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (torch.zeros(1, feat_in, T),), str(tmp), input_names=["mel"],
                              output_names=["logits"], dynamic_axes=dyn, opset_version=opset,
                              training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False, dynamo=False)
        proto = onnx.load(str(tmp))
        n_bn = count_batchnorm(proto)
        if n_bn == 0:
            raise ModelLoadError(f"the ONNX export of {name!r} has no BatchNormalization node",
                                 "export an eval-mode model with TrainingMode.PRESERVE and no constant folding")
        vocab = list(getattr(model, "vocab", []) or [])
        meta = {"vocab": json.dumps(vocab), "zsq.arch": str(getattr(model, "arch", "")), "zsq.model": str(name),
                "zsq.batchnorm_nodes": str(n_bn)}
        for k, v in meta.items():
            e = proto.metadata_props.add()
            e.key, e.value = k, v
        onnx.save(proto, str(tmp))
    return out
