"""Checks on untrusted ONNX files, run by :func:`zsq_tvm.frontend.onnx_import.load_onnx` before
anything is allocated from what the file *declares*.

* **File size**: one protobuf message cannot exceed 2 GiB; a larger file is refused from its
  ``stat`` size, before it is read (so a huge file never enters memory).
* **External data** (``TensorProto.data_location == EXTERNAL``): ``location`` must be a relative
  path inside the model's folder - absolute paths, ``..`` components, NUL bytes and paths that
  resolve outside the folder through a symlinked directory are refused, so is a symlink as the data
  file itself (as ``onnx`` does); the file must exist and be a regular file, and
  ``offset``/``length`` must lie inside it and match the tensor's declared shape.  Only then does
  ``onnx.external_data_helper`` read it.
* **Declared shapes**: every tensor stored in the file (initializers, ``Constant`` attributes,
  subgraphs, functions) must hold exactly the number of elements its ``dims`` declare, so a tiny
  file declaring a ``[2^20, 2^20]`` weight fails here with a message instead of deep in numpy/TVM.

Malformed bytes (random data, truncation, a length prefix declaring gigabytes, nesting past the
protobuf depth limit) are already rejected by the protobuf parser with ``DecodeError``;
``load_onnx`` turns that into :class:`~zsq_tvm.errors.ModelLoadError`.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Iterator

from ..errors import ModelLoadError

__all__ = ["MAX_PROTOBUF_BYTES", "check_file_size", "iter_tensors", "check_tensor_sizes", "check_external_data"]

#: protobuf's hard limit for one serialized message (2 GiB - 1)
MAX_PROTOBUF_BYTES = 2**31 - 1

# ONNX TensorProto.DataType -> (bits per element, typed field holding the values, values per element)
_TYPES = {
    1: (32, "float_data", 1), 2: (8, "int32_data", 1), 3: (8, "int32_data", 1), 4: (16, "int32_data", 1),
    5: (16, "int32_data", 1), 6: (32, "int32_data", 1), 7: (64, "int64_data", 1), 9: (8, "int32_data", 1),
    10: (16, "int32_data", 1), 11: (64, "double_data", 1), 12: (32, "uint64_data", 1), 13: (64, "uint64_data", 1),
    14: (64, "float_data", 2), 15: (128, "double_data", 2), 16: (16, "int32_data", 1),
    17: (8, "int32_data", 1), 18: (8, "int32_data", 1), 19: (8, "int32_data", 1), 20: (8, "int32_data", 1),
    21: (4, "int32_data", None), 22: (4, "int32_data", None), 23: (4, "int32_data", None),
}

_EXTERNAL = 1  # TensorProto.EXTERNAL
_FIX_REEXPORT = "re-export or re-download the model"


def check_file_size(path: Path, size: int) -> None:
    if size > MAX_PROTOBUF_BYTES:
        raise ModelLoadError(
            f"model file {str(path)!r} is {size:,} bytes, over protobuf's 2 GiB limit for one ONNX file "
            "(not a valid ONNX protobuf)",
            "save the weights as external data next to the model "
            "(onnx.save_model(model, path, save_as_external_data=True)) or re-download the file")


def _graph_tensors(g, where: str) -> Iterator[tuple[object, str]]:
    for t in g.initializer:
        yield t, f"{where}initializer {t.name!r}"
    for s in g.sparse_initializer:
        yield s.values, f"{where}sparse initializer {s.values.name!r} (values)"
        yield s.indices, f"{where}sparse initializer {s.values.name!r} (indices)"
    for i, n in enumerate(g.node):
        yield from _node_tensors(n, f"{where}node {n.name or '#' + str(i)!r} ({n.op_type}) ")


def _node_tensors(n, where: str) -> Iterator[tuple[object, str]]:
    for a in n.attribute:
        if a.HasField("t"):
            yield a.t, f"{where}attribute {a.name!r}"
        for j, t in enumerate(a.tensors):
            yield t, f"{where}attribute {a.name!r}[{j}]"
        if a.HasField("sparse_tensor"):
            yield a.sparse_tensor.values, f"{where}attribute {a.name!r} (sparse values)"
            yield a.sparse_tensor.indices, f"{where}attribute {a.name!r} (sparse indices)"
        if a.HasField("g"):
            yield from _graph_tensors(a.g, f"{where}subgraph {a.name!r}: ")
        for j, sg in enumerate(a.graphs):
            yield from _graph_tensors(sg, f"{where}subgraph {a.name!r}[{j}]: ")


def iter_tensors(proto) -> Iterator[tuple[object, str]]:
    """Every ``TensorProto`` stored in a model, with a description of where it is."""
    yield from _graph_tensors(proto.graph, "")
    for f in proto.functions:
        for i, n in enumerate(f.node):
            yield from _node_tensors(n, f"function {f.name!r} node {n.name or '#' + str(i)!r} ({n.op_type}) ")


def _numel(t, where: str, source: str) -> int:
    if any(d < 0 for d in t.dims):
        raise ModelLoadError(f"model {source!r}: {where} has a negative dimension {list(t.dims)}", _FIX_REEXPORT)
    return math.prod(t.dims)


def _expected_bytes(t, n: int) -> int | None:
    spec = _TYPES.get(t.data_type)
    return None if spec is None else (n * spec[0] + 7) // 8


def check_tensor_sizes(proto, source: str) -> None:
    """Each in-file tensor stores exactly the elements its ``dims`` declare (external ones are checked
    against their file by :func:`check_external_data`)."""
    for t, where in iter_tensors(proto):
        if t.data_location == _EXTERNAL:
            continue
        spec = _TYPES.get(t.data_type)
        if spec is None:  # strings, undefined: nothing to size
            continue
        n = _numel(t, where, source)
        bits, field, per = spec
        if t.raw_data:
            have, want, unit = len(t.raw_data), _expected_bytes(t, n), "bytes"
        else:
            have = len(getattr(t, field))
            want = (n + 1) // 2 if per is None else n * per
            unit = "values"
        if have != want:
            raise ModelLoadError(
                f"model {source!r}: {where} declares shape {list(t.dims)} ({n:,} elements, {want:,} {unit}) but "
                f"stores {have:,} {unit} (corrupt or crafted file)", _FIX_REEXPORT)


def _external_info(t, where: str, source: str) -> tuple[str, int, int | None]:
    kv = {e.key: e.value for e in t.external_data}
    loc = kv.get("location", "")
    if not loc:
        raise ModelLoadError(f"model {source!r}: {where} is marked as external data but names no file "
                             "(empty 'location')", _FIX_REEXPORT)
    try:
        off = int(kv.get("offset", "0") or 0)
        length = int(kv["length"]) if kv.get("length") not in (None, "") else None
    except ValueError:
        raise ModelLoadError(f"model {source!r}: {where} has a non-integer external-data offset/length "
                             f"({kv.get('offset')!r}, {kv.get('length')!r})", _FIX_REEXPORT) from None
    if off < 0 or (length is not None and length < 0):
        raise ModelLoadError(f"model {source!r}: {where} has a negative external-data offset/length "
                             f"({off}, {length})", _FIX_REEXPORT)
    return loc, off, length


def check_external_data(proto, model_dir: Path | None, source: str) -> int:
    """Validate every external-data reference (see the module docstring); returns how many there are.

    ``model_dir`` is the folder of the ``.onnx`` file; ``None`` for an in-memory ``ModelProto``, which
    cannot resolve external data and is refused if it has any.
    """
    count = 0
    root = os.path.realpath(model_dir) if model_dir is not None else None
    fix_keep = "keep the external data files in the model's folder (or a subfolder) and reference them " \
               "by a relative path; re-save with onnx.save_model(..., save_as_external_data=True)"
    for t, where in iter_tensors(proto):
        if t.data_location != _EXTERNAL:
            continue
        count += 1
        loc, off, length = _external_info(t, where, source)
        if root is None:
            raise ModelLoadError(f"in-memory model: {where} refers to external data {loc!r} that was not loaded",
                                 "pass the .onnx path instead, or onnx.load(path) with its external data")
        if "\x00" in loc:
            raise ModelLoadError(f"model {source!r}: {where} has an external-data location with a NUL byte",
                                 _FIX_REEXPORT)
        parts = loc.replace("\\", "/").split("/")
        if os.path.isabs(loc) or loc.startswith(("/", "\\")) or (len(loc) > 1 and loc[0].isalpha() and loc[1] == ":"):
            raise ModelLoadError(f"model {source!r}: {where} has an absolute external-data path {loc!r}; "
                                 "external data may not point outside the model's folder", fix_keep)
        if ".." in parts:
            raise ModelLoadError(f"model {source!r}: {where} has an external-data path {loc!r} with '..'; "
                                 "external data may not point outside the model's folder", fix_keep)
        full = os.path.join(root, *[p for p in parts if p])
        real = os.path.realpath(full)
        if os.path.commonpath([root, real]) != root:
            raise ModelLoadError(f"model {source!r}: {where} has external-data path {loc!r}, a symlink that "
                                 f"resolves outside the model's folder (to {real!r})", fix_keep)
        if os.path.islink(full):  # onnx refuses these too; say why instead of its generic message
            raise ModelLoadError(f"model {source!r}: external data {loc!r} of {where} is a symbolic link "
                                 "(refused: it could be redirected to any file)",
                                 "replace the link by a copy of the file it points to")
        if not os.path.exists(real):
            raise ModelLoadError(f"model {source!r}: external data file {loc!r} of {where} does not exist "
                                 f"(looked in {root!r})",
                                 "copy the external data file(s) next to the .onnx file, as exported")
        if not os.path.isfile(real):
            raise ModelLoadError(f"model {source!r}: external data {loc!r} of {where} is not a regular file",
                                 fix_keep)
        size = os.path.getsize(real)
        n = _numel(t, where, source)
        want = _expected_bytes(t, n)
        span = size - off if length is None else length
        if off > size or off + span > size:
            raise ModelLoadError(f"model {source!r}: {where} reads bytes {off:,}..{off + span:,} of external file "
                                 f"{loc!r}, which has only {size:,} bytes (truncated or mismatched file)",
                                 "copy the complete external data file(s) that belong to this model")
        if want is not None and span != want:
            raise ModelLoadError(f"model {source!r}: {where} declares shape {list(t.dims)} ({want:,} bytes) but "
                                 f"its external data is {span:,} bytes (corrupt or mismatched file)",
                                 "copy the external data file(s) that belong to this model")
    return count
