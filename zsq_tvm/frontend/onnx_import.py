"""ONNX in: load, validate, fix the time dimension, import to Relax.

The model input must be a mel spectrogram ``[B, F, T]``; the user chooses a static ``T``
(``frames``), which replaces whatever the file says for the time dimension.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputShapeError, ModelLoadError, UnsupportedOpsError

__all__ = [
    "SUPPORTED_OPS",
    "ModelInfo",
    "load_onnx",
    "model_info",
    "check_supported_ops",
    "import_onnx",
]

#: ONNX ops the integer-only pipeline handles today (what ``relax_passes.Quantize`` accepts after
#: import: conv1d, matmul by a constant, add, relu, dropout, 0/1 mask multiply, shape ops, and a
#: softmax/log-softmax at the output, which is dropped).  Conformer's non-linearities (Sigmoid,
#: Softmax inside attention, LayerNormalization, …) join this list with the integer polynomial
#: approximations.  Shape plumbing is fine: it is constant-folded (onnxsim) once T is fixed.
SUPPORTED_OPS: frozenset[str] = frozenset(
    {
        "Conv", "BatchNormalization", "Relu", "Add", "Mul", "MatMul", "Gemm",
        "Transpose", "Identity", "Dropout", "Constant", "Softmax", "LogSoftmax",
        "Reshape", "Squeeze", "Unsqueeze", "Flatten",
        # shape plumbing (static once frames are fixed; folded away by onnxsim)
        "Shape", "Gather", "Cast", "ConstantOfShape", "Expand", "Range", "Equal", "Less", "Greater",
        "Not", "And", "Where", "Slice", "Concat",
    }
)

_SHAPE_OPS = {"Shape", "ConstantOfShape", "Range", "Expand", "Where", "Equal", "Less", "Greater", "Not", "And"}


@dataclass
class ModelInfo:
    """What we need to know about the model's interface."""

    input_name: str
    features: int | None          # F, None if symbolic in the file
    file_frames: int | None       # T as stored in the file (None if symbolic)
    output_name: str
    sha256: str
    source: str                   # path or "<ModelProto>"
    extra_inputs: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return dict(self.__dict__)


def _sha256_bytes(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def load_onnx(model, check: bool = True):
    """Load an ONNX model from a path / bytes / ``ModelProto`` and run ``onnx.checker``.

    Returns ``(ModelProto, sha256, source)``.  Raises :class:`ModelLoadError` with cause + fix.
    """
    import onnx

    if isinstance(model, onnx.ModelProto):
        proto, data, source = model, model.SerializeToString(), "<ModelProto>"
    else:
        path = Path(os.fspath(model))
        if not path.exists():
            raise ModelLoadError(f"model file {str(path)!r} does not exist",
                                 "check the path, or export the model first (e.g. `zsq export-nemo`)")
        if path.is_dir():
            raise ModelLoadError(f"model path {str(path)!r} is a directory, not an .onnx file",
                                 "pass the .onnx file itself")
        data = path.read_bytes()
        source = str(path)
        if not data:
            raise ModelLoadError(f"model file {source!r} is empty", "re-export or re-download the model")
        try:
            proto = onnx.load_from_string(data)
        except Exception as e:  # protobuf DecodeError and friends
            raise ModelLoadError(
                f"model file {source!r} is not a readable ONNX protobuf (truncated or corrupt: "
                f"{type(e).__name__})",
                "re-export or re-download the model; check the file size matches the original",
            ) from None
        if any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer):
            try:
                from onnx.external_data_helper import load_external_data_for_model

                load_external_data_for_model(proto, str(path.parent))
            except Exception as e:
                raise ModelLoadError(f"external weights of {source!r} cannot be loaded ({e})",
                                     "keep the external data files next to the .onnx file") from None
    if not proto.graph.node:
        raise ModelLoadError(f"model {source!r} has an empty graph (truncated or not a model)",
                             "re-export or re-download the model")
    if check:
        try:
            onnx.checker.check_model(proto, full_check=False)
        except Exception as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ModelLoadError(f"model {source!r} fails onnx.checker: {first}",
                                 "re-export the model with a current exporter (opset 13-17)") from None
    return proto, _sha256_bytes(data), source


def _dims(value_info):
    tt = value_info.type.tensor_type
    if not tt.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]


def model_info(proto, sha256: str = "", source: str = "") -> ModelInfo:
    """Find the mel input and check it is rank 3 ``[B, F, T]``."""
    inits = {t.name for t in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in inits]
    if not inputs:
        raise InputShapeError("model has no graph input", "export the model with a mel input [B, F, T]")
    inp = inputs[0]
    dims = _dims(inp)
    if dims is None or len(dims) != 3:
        got = "unknown rank" if dims is None else f"rank {len(dims)} {['?' if d is None else d for d in dims]}"
        raise InputShapeError(
            f"model input {inp.name!r} has {got}, but a mel spectrogram input must be rank 3 [B, F, T]",
            "export the model so its first input is [batch, mel features, frames] "
            "(e.g. NeMo `audio_signal` [B, 64, T])",
        )
    elem = inp.type.tensor_type.elem_type
    if elem not in (1,):  # FLOAT
        raise InputShapeError(f"model input {inp.name!r} must be float32 (got ONNX elem_type {elem})",
                              "export the model with a float32 mel input")
    return ModelInfo(
        input_name=inp.name,
        features=dims[1],
        file_frames=dims[2],
        output_name=proto.graph.output[0].name,
        sha256=sha256,
        source=source,
        extra_inputs=[i.name for i in inputs[1:]],
    )


def check_supported_ops(proto, supported=SUPPORTED_OPS) -> None:
    """Raise :class:`UnsupportedOpsError` naming *every* unsupported node at once."""
    bad: dict[str, list[str]] = {}
    for i, n in enumerate(proto.graph.node):
        if n.domain not in ("", "ai.onnx") or n.op_type not in supported:
            op = n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}"
            bad.setdefault(op, []).append(n.name or f"#{i}")
    if bad:
        raise UnsupportedOpsError(bad, sorted(supported))


def _static_shape_dict(info: ModelInfo, frames: int, batch: int, features: int | None):
    if not isinstance(frames, (int, np.integer)) or isinstance(frames, bool) or frames < 1:
        raise InputShapeError(f"frames must be a positive integer, got {frames!r}",
                              "pass --frames T with the number of mel frames per input (100 per second)")
    F = info.features
    if features is not None:
        if F is not None and F != features:
            raise InputShapeError(f"model input {info.input_name!r} has F={F} mel features, not {features}",
                                  f"use features={F} or the matching model")
        F = features
    if F is None:
        raise InputShapeError(f"model input {info.input_name!r} has a symbolic feature dimension",
                              "pass features=F (e.g. 64) or export with a fixed F")
    return {info.input_name: [int(batch), int(F), int(frames)]}


def _maybe_simplify(proto, shape_dict):
    """Run onnxsim with the static input shape when shape-computation ops are present."""
    if not any(n.op_type in _SHAPE_OPS for n in proto.graph.node):
        return proto
    try:
        import onnxsim
    except ImportError:
        return proto
    try:
        simplified, ok = onnxsim.simplify(proto, overwrite_input_shapes=shape_dict)
        return simplified if ok else proto
    except Exception:
        return proto


def import_onnx(model, frames: int, batch: int = 1, features: int | None = None, simplify: bool = True,
                supported=SUPPORTED_OPS):
    """ONNX → float Relax module with a static input ``[batch, F, frames]``.

    Returns ``(IRModule, ModelInfo, ModelProto)``.  Weights are bound as constants
    (``keep_params_in_input=False``) so that passes see them.
    """
    proto, sha, source = load_onnx(model)
    info = model_info(proto, sha, source)
    shape_dict = _static_shape_dict(info, frames, batch, features)
    if info.extra_inputs:
        raise InputShapeError(
            f"model has extra inputs {info.extra_inputs} besides the mel input {info.input_name!r}",
            "export with the mel spectrogram as the only input (e.g. NeMo: drop `length`, fix T)",
        )
    if simplify:
        proto = _maybe_simplify(proto, shape_dict)
    check_supported_ops(proto, supported)
    from tvm.relax.frontend.onnx import from_onnx

    try:
        mod = from_onnx(proto, shape_dict=shape_dict, keep_params_in_input=False)
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[-1][:300]
        raise ModelLoadError(f"TVM's ONNX importer failed on {source!r}: {first}",
                             "simplify the model (onnxsim) or re-export it with opset 17") from None
    if features is None:
        info.features = shape_dict[info.input_name][1]
    return mod, info, proto
