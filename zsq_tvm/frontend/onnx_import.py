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

from zsq_tvm.core.errors import InputShapeError, ModelLoadError, UnsupportedOpsError
from zsq_tvm.frontend.onnx_safety import (MAX_PROTOBUF_BYTES, check_batchnorm_variance, check_declared_sizes, check_external_data,
                          check_file_size, check_finite, check_static_shapes, check_tensor_sizes)

__all__ = [
    "SUPPORTED_OPS",
    "ModelInfo",
    "load_onnx",
    "model_info",
    "check_supported_ops",
    "import_onnx",
    "check_frames_memory",
]

#: ONNX ops the integer-only pipeline handles today (what ``relax_passes.Quantize`` accepts after
#: import: conv1d, matmul by a constant, add, relu, dropout, 0/1 mask multiply, shape ops, and a
#: softmax/log-softmax at the output, which is dropped) and the Conformer's ops (Sigmoid, Softmax
#: inside attention, LayerNormalization, Split, Conv2d subsampling, zero Pad).  Shape plumbing and the
#: positional-encoding table (Sin/Cos/ScatterND) are constant-folded (:func:`fold_static`, onnxsim)
#: once T is fixed.
SUPPORTED_OPS: frozenset[str] = frozenset(
    {
        "Conv", "BatchNormalization", "Relu", "Add", "Mul", "MatMul", "Gemm",
        "Transpose", "Identity", "Dropout", "Constant", "Softmax", "LogSoftmax",
        "Reshape", "Squeeze", "Unsqueeze", "Flatten",
        # shape plumbing (static once frames are fixed; folded away by onnxsim)
        "Shape", "Gather", "Cast", "ConstantOfShape", "Expand", "Range", "Equal", "Less", "Greater",
        "Not", "And", "Where", "Slice", "Concat",
        # Conformer (integer non-linearities in relax_passes.quantize_conformer): attention, GLU, Swish
        "LayerNormalization", "Sigmoid", "Split", "Pad", "Div", "ScatterND", "Sin", "Cos",
        "Erf",  # only inside the exact-GELU pattern (erf_gelu_to_gelu); a lone Erf is refused by Quantize
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

    An untrusted file goes through :mod:`~zsq_tvm.frontend.onnx_safety` first: external-data paths and sizes,
    stored data vs declared shapes, the memory budget of every stored tensor (before external data is read)
    and of every tensor sized from constants (graph inputs count as symbolic here: ``--frames`` replaces T
    later, see :func:`import_onnx`), and finite float values.

    Returns ``(ModelProto, sha256, source)``.  Raises :class:`ModelLoadError` with cause + fix.
    """
    import onnx

    if isinstance(model, onnx.ModelProto):
        proto, data, source = model, model.SerializeToString(), "<ModelProto>"
        check_external_data(proto, None, source)  # in-memory: unloaded external data is an error
    else:
        path = Path(os.fspath(model))
        if not path.exists():
            raise ModelLoadError(f"model file {str(path)!r} does not exist",
                                 "check the path, or export the model first (e.g. `zsq export-nemo`)")
        if path.is_dir():
            raise ModelLoadError(f"model path {str(path)!r} is a directory, not an .onnx file",
                                 "pass the .onnx file itself")
        source = str(path)
        if not path.is_file():  # a FIFO blocks the read forever, a device (/dev/zero) reports size 0 and never ends
            raise ModelLoadError(f"model path {source!r} is not a regular file", "pass the .onnx file itself")
        check_file_size(path, path.stat().st_size)  # before reading: never pull >2 GiB into memory
        with open(path, "rb") as f:
            data = f.read(MAX_PROTOBUF_BYTES + 1)  # the file may grow between stat and read
        check_file_size(path, len(data))
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
        external = check_external_data(proto, path.parent, source)  # paths stay inside the model's folder
        check_tensor_sizes(proto, source)  # in-file tensors hold what their shapes declare
        check_declared_sizes(proto, source)  # every weight fits the memory budget: before reading external data
        if external:
            try:
                from onnx.external_data_helper import load_external_data_for_model

                load_external_data_for_model(proto, str(path.parent))
            except Exception as e:
                raise ModelLoadError(f"external weights of {source!r} cannot be loaded ({e})",
                                     "keep the external data files next to the .onnx file") from None
    if isinstance(model, onnx.ModelProto):
        check_tensor_sizes(proto, source)  # declared shapes match the stored data
        check_declared_sizes(proto, source)
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
    check_finite(proto, source)  # a NaN weight would quantize into a garbage channel, an Inf one crash later
    check_batchnorm_variance(proto, source)  # likewise a negative variance (sqrt -> NaN)
    check_static_shapes(proto, source)  # ConstantOfShape & co. of constant shape: sized before anything runs them
    return proto, _sha256_bytes(data), source


def check_frames_memory(proto, source: str, frames: int | None, batch: int = 1) -> None:
    """Before a runtime allocates anything: the mel input at the T it will run with (the file's static T,
    else ``frames``) and every tensor sized from it fit the memory budget
    (:func:`~zsq_tvm.frontend.onnx_safety.check_static_shapes`).  Nothing to check for a dynamic T without
    ``frames`` (the input is then as long as each utterance)."""
    info = model_info(proto, source=source)
    T = info.file_frames or frames
    if T is not None:
        check_static_shapes(proto, source, {info.input_name: [int(batch), int(info.features or 64), int(T)]})


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


def fold_static(proto, shape_dict):
    """Replace every tensor that does not depend on the input's *values* by an initializer.

    With the input shape fixed, ``Shape`` of anything is a constant, and so is everything computed
    only from shapes and weights: the sequence-length plumbing NeMo's exporter emits (``Shape`` ->
    ``Gather`` -> ``Range``/``Expand``/``ConstantOfShape`` -> ``Where``), and the Conformer's
    relative positional encoding ``sin``/``cos`` table with ``linear_pos`` applied to it.  onnxsim
    fails on exactly these (it evaluates ``Expand``/``ScatterND`` pieces in isolation and gets
    "invalid expand shape"), TVM's importer then fails on the dynamic ``Expand``/``Pad``.  Here the
    whole graph runs once in onnxruntime on a zero input of the static shape with the frontier
    tensors (static values consumed by input-dependent nodes) as extra outputs; those become
    initializers and the nodes that only fed them are dropped.  ``BatchNormalization`` and every
    other input-dependent node is kept as is.  Returns ``proto`` unchanged when nothing is static.
    """
    import collections

    import onnx
    from onnx import numpy_helper

    g = proto.graph
    inits = {t.name for t in g.initializer}
    dyn = {i.name for i in g.input if i.name not in inits}
    for n in g.node:  # ONNX nodes are topologically sorted
        if n.op_type != "Shape" and any(x in dyn for x in n.input if x):
            dyn.update(o for o in n.output if o)
    consumers = collections.defaultdict(list)
    for n in g.node:
        for x in n.input:
            consumers[x].append(n)
    graph_outs = {o.name for o in g.output}
    frontier = []
    for n in g.node:
        if any(o in dyn for o in n.output):
            continue
        for o in n.output:
            if o and o not in frontier and (o in graph_outs or any(any(c in dyn for c in u.output) for u in consumers[o])):
                frontier.append(o)
    static_nodes = [n for n in g.node if not any(o in dyn for o in n.output)]
    if not any(n.op_type not in ("Constant",) for n in static_nodes):
        return proto
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    for name, shape in shape_dict.items():
        for i in probe.graph.input:
            if i.name == name:
                for d, v in zip(i.type.tensor_type.shape.dim, shape):
                    d.ClearField("dim_param")
                    d.dim_value = int(v)
    known = {o.name for o in probe.graph.output}
    for name in frontier:
        if name not in known:
            probe.graph.output.append(onnx.ValueInfoProto(name=name))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 4  # a graph ORT cannot run is reported by the caller, not logged here
    sess = ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    feeds = {i.name: np.zeros(shape_dict[i.name], dtype=np.float32) for i in sess.get_inputs()}
    values = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    del out.graph.node[:]
    out.graph.node.extend(n for n in g.node if any(o in dyn for o in n.output))
    used = {x for n in out.graph.node for x in n.input} | graph_outs
    keep = [t for t in g.initializer if t.name in used and t.name not in frontier]
    del out.graph.initializer[:]
    out.graph.initializer.extend(keep)
    out.graph.initializer.extend(numpy_helper.from_array(np.asarray(values[f]), f) for f in frontier if f in used)
    del out.graph.value_info[:]
    return out


def pads_to_concat(proto):
    """Rewrite zero-valued constant ``Pad`` nodes on static shapes as ``Concat`` with zero initializers.

    TVM's ONNX importer lowers ``Pad`` straight to a float TIR ``call_tir`` that no Relax pass can
    quantize; a concatenation with zeros is the same tensor (0 is exact in every symmetric integer
    scale) and stays a Relax op (``R.concat``).  The Conformer's ``rel_shift`` pads one zero column
    in front of the position scores.  Pads with another mode/value or unknown shapes are kept.
    """
    import onnx
    from onnx import helper, numpy_helper

    if not any(n.op_type == "Pad" for n in proto.graph.node):
        return proto
    inferred = onnx.shape_inference.infer_shapes(proto)
    shapes = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        d = _dims(vi)
        if d is not None and all(x is not None for x in d):
            shapes[vi.name] = (d, vi.type.tensor_type.elem_type)
    inits = {t.name: t for t in proto.graph.initializer}
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    del out.graph.node[:]
    new_inits = []
    for n in proto.graph.node:
        mode = next((a.s.decode() for a in n.attribute if a.name == "mode"), "constant")
        pads = inits.get(n.input[1]) if n.op_type == "Pad" and len(n.input) > 1 else None
        value = inits.get(n.input[2]) if len(n.input) > 2 and n.input[2] else None
        ok = (n.op_type == "Pad" and mode == "constant" and pads is not None and n.input[0] in shapes
              and (len(n.input) <= 2 or not n.input[2] or (value is not None and not numpy_helper.to_array(value).any()))
              and (len(n.input) <= 3 or not n.input[3]))
        if not ok:
            out.graph.node.append(n)
            continue
        shape, elem = shapes[n.input[0]]
        pv = numpy_helper.to_array(pads).astype(np.int64).tolist()
        r = len(shape)
        if len(pv) != 2 * r or min(pv) < 0:
            out.graph.node.append(n)
            continue
        cur, shape = n.input[0], list(shape)
        dtype = onnx.helper.tensor_dtype_to_np_dtype(elem)
        for ax in range(r):
            before, after = pv[ax], pv[ax + r]
            if not before and not after:
                continue
            parts = []
            for tag, k in (("before", before), ("after", after)):
                if k:
                    z = np.zeros(shape[:ax] + [k] + shape[ax + 1:], dtype=dtype)
                    nm = f"{n.output[0]}__zeros_{tag}_{ax}"
                    new_inits.append(numpy_helper.from_array(z, nm))
                    parts.append(nm)
            ins = ([parts[0]] if before else []) + [cur] + ([parts[-1]] if after else [])
            shape[ax] += before + after
            last = all(not (pv[a] or pv[a + r]) for a in range(ax + 1, r))
            o = n.output[0] if last else f"{n.output[0]}__pad_axis{ax}"
            out.graph.node.append(helper.make_node("Concat", ins, [o], axis=ax, name=f"{n.name or o}__concat{ax}"))
            cur = o
    out.graph.initializer.extend(new_inits)
    return out


def erf_gelu_to_gelu(proto):
    """Fuse the exporters' exact-GELU pattern into one ``com.microsoft::Gelu`` node (TVM imports it
    as ``R.nn.gelu``, which Quantize replaces by the integer GELU of I-BERT)::

        Mul(Mul(x, Add(Erf(Div(x, sqrt 2)), 1)), 0.5)      (torch.onnx, opset < 20)
        Mul(Mul(x, 0.5), Add(Erf(Div(x, sqrt 2)), 1))

    Constants must be those numbers (within 1e-6); anything else is left alone (a lone ``Erf`` is
    then reported by Quantize as unsupported).
    """
    import onnx
    from onnx import helper, numpy_helper

    g = proto.graph
    if not any(n.op_type == "Erf" for n in g.node):
        return proto
    consts = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    for n in g.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    prod = {o: n for n in g.node for o in n.output}
    users: dict = {}
    for n in g.node:
        for x in n.input:
            users.setdefault(x, []).append(n)

    def cval(name, v):
        c = consts.get(name)
        return c is not None and c.size == 1 and abs(float(c.reshape(())) - v) < 1e-6

    def other(node, name):
        return node.input[1] if node.input[0] == name else node.input[0]

    def only_user(name, op):
        us = users.get(name, [])
        return us[0] if len(us) == 1 and us[0].op_type == op else None

    drop, new_nodes = set(), {}
    for e in g.node:
        if e.op_type != "Erf" or e.input[0] not in prod or prod[e.input[0]].op_type != "Div":
            continue
        d = prod[e.input[0]]
        x = d.input[0]
        add = only_user(e.output[0], "Add")
        if not cval(d.input[1], 2 ** 0.5) or add is None or not cval(other(add, e.output[0]), 1.0):
            continue
        m1 = only_user(add.output[0], "Mul")
        if m1 is None:
            continue
        y = other(m1, add.output[0])
        if y == x:                                  # torch order: (x * (1 + erf)) * 0.5
            m2 = only_user(m1.output[0], "Mul")
            if m2 is None or not cval(other(m2, m1.output[0]), 0.5):
                continue
            chain, out = [d, e, add, m1, m2], m2.output[0]
        elif y in prod and prod[y].op_type == "Mul" and x in prod[y].input and cval(other(prod[y], x), 0.5) \
                and len(users.get(y, [])) == 1:      # (x * 0.5) * (1 + erf)
            chain, out = [d, e, add, m1, prod[y]], m1.output[0]
        else:
            continue
        if any(len(users.get(c.output[0], [])) != 1 for c in chain if c.output[0] != out):
            continue
        drop.update(id(c) for c in chain)
        new_nodes[id(chain[-1] if out == chain[-1].output[0] else m1)] = helper.make_node(
            "Gelu", [x], [out], domain="com.microsoft", name=f"{e.name or out}__gelu")
    if not new_nodes:
        return proto
    out_model = onnx.ModelProto()
    out_model.CopyFrom(proto)
    del out_model.graph.node[:]
    for n in g.node:
        if id(n) in new_nodes:
            out_model.graph.node.append(new_nodes[id(n)])
        elif id(n) not in drop:
            out_model.graph.node.append(n)
    if not any(o.domain == "com.microsoft" for o in out_model.opset_import):
        out_model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return out_model


def _maybe_simplify(proto, shape_dict, checked: bool = False):
    """Fold the static part of the graph (:func:`fold_static`), then onnxsim with the static input
    shape when shape-computation ops are present (best effort: its failure keeps the folded graph).

    Folding runs the graph in ONNX Runtime, so first every tensor sized by ``shape_dict`` must fit the
    memory budget (:func:`~zsq_tvm.frontend.onnx_safety.check_static_shapes`; skipped when the caller
    already did, ``checked``)."""
    if not checked:
        check_static_shapes(proto, "<ModelProto>", shape_dict)
    if not any(n.op_type in _SHAPE_OPS for n in proto.graph.node):
        return proto
    try:
        proto = fold_static(proto, shape_dict)
    except Exception:  # onnxruntime cannot run the graph: leave it to onnxsim / the importer
        pass
    try:
        import onnxsim
    except ImportError:
        return proto
    try:
        with _quiet_stderr():  # onnxsim prints whole tracebacks of the ops it cannot fold (best effort)
            simplified, ok = onnxsim.simplify(proto, overwrite_input_shapes=shape_dict)
        return simplified if ok else proto
    except Exception:
        return proto


class _quiet_stderr:
    """Silence file descriptor 2 (C++ and Python writers alike) inside the block."""

    def __enter__(self):
        import sys

        try:
            sys.stderr.flush()
            self._saved = os.dup(2)
            self._null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(self._null, 2)
        except OSError:  # no real fd 2 (e.g. captured): nothing to silence
            self._saved = None
        return self

    def __exit__(self, *exc):
        if self._saved is not None:
            os.dup2(self._saved, 2)
            os.close(self._saved)
            os.close(self._null)
        return False


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
    # the input at T = frames and all it sizes fit the memory budget, before ORT / numpy / TVM allocate any
    check_static_shapes(proto, source, shape_dict)
    if simplify:
        proto = _maybe_simplify(proto, shape_dict, checked=True)
        try:
            proto = pads_to_concat(proto)
        except Exception:  # shape inference failed: the importer sees the Pad as it is
            pass
    check_supported_ops(proto, supported)
    proto = erf_gelu_to_gelu(proto)  # after the op check: it adds a com.microsoft node
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
