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

* **Non-finite values** (:func:`check_finite`): a NaN or infinite weight, bias, BatchNorm statistic
  or ``Constant`` would quantize into a garbage channel (NaN) or fail deep in the integer passes
  (Inf); each is refused naming the tensor and the layers that use it.  ``±Inf`` is accepted only
  where every user is a selection / comparison op (``Where``, ``Min``, ``Max``, ``Clip``, ``Less``,
  ...), the one legitimate use (an attention mask of ``-inf``).
* **Memory budget** (:func:`check_declared_sizes`, :func:`check_static_shapes`): a small file can
  declare tensors of terabytes - an initializer or external data file, a ``ConstantOfShape`` /
  ``Expand`` / ``Tile`` / ``Range`` of constant arguments, a graph input ``[1, 64, 2^40]``, or any
  tensor ONNX shape inference sizes from those.  Every such tensor must fit the budget
  (:func:`memory_budget`: ``ZSQ_MAX_MEMORY``, ``--max-memory``, default
  :data:`DEFAULT_MEMORY_BUDGET`), and so must all stored tensors together; this is checked from the
  shapes alone, before ONNX Runtime, numpy or TVM allocates any of them.

Malformed bytes (random data, truncation, a length prefix declaring gigabytes, nesting past the
protobuf depth limit) are already rejected by the protobuf parser with ``DecodeError``;
``load_onnx`` turns that into :class:`~zsq_tvm.core.errors.ModelLoadError`.
"""

from __future__ import annotations

import math
import os
import re
from fractions import Fraction
from pathlib import Path
from typing import Iterator

from zsq_tvm.core.errors import ConfigError, InputShapeError, ModelLoadError

__all__ = ["check_batchnorm_variance", "MAX_PROTOBUF_BYTES", "check_file_size", "iter_tensors", "check_tensor_sizes", "check_external_data",
           "check_finite", "DEFAULT_MEMORY_BUDGET", "MEMORY_BUDGET_ENV", "parse_size", "memory_budget",
           "set_memory_budget", "check_declared_sizes", "check_static_shapes"]

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


def _prefix(source: str) -> str:
    return "" if source == "<ModelProto>" else f"model {source!r}: "


def _dtype_name(code: int) -> str:
    try:
        from onnx import TensorProto

        return TensorProto.DataType.Name(code).lower()
    except (ImportError, ValueError):
        return f"type {code}"


def _subgraphs(n) -> Iterator[object]:
    for a in n.attribute:
        if a.HasField("g"):
            yield a.g
        yield from a.graphs


def _label(n) -> str:
    return f"{n.op_type} node {n.name!r}" if n.name else \
        f"unnamed {n.op_type} node (output {n.output[0] if n.output else '?'!r})"


# --------------------------------------------------------------------------- non-finite values
#: float element types (float, float16, double, bfloat16, the float8s): the ones that can hold NaN / Inf
_FLOAT_TYPES = frozenset({1, 10, 11, 16, 17, 18, 19, 20})
#: ops that use an infinite constant as a sentinel (a -inf attention mask, an open clip bound), which is
#: meaningful; for every other op (Conv, Gemm, Add, BatchNormalization, ...) it is a broken weight
_INF_OK_OPS = frozenset({"Where", "Min", "Max", "Clip", "Less", "LessOrEqual", "Greater", "GreaterOrEqual",
                         "Equal", "IsInf"})
#: ops whose stored value *is* their output: the layers using the value are the readers of that output
_VALUE_OPS = frozenset({"Constant", "ConstantOfShape"})
_FIX_NONFINITE = ("re-export the model from a checkpoint whose weights are all finite (NaN/Inf come from a "
                  "diverged training run or a corrupt file; find them with torch.isfinite on the state dict)")
_ATTR_FLOAT, _ATTR_FLOATS = 1, 6  # AttributeProto.FLOAT / FLOATS


def _users(nodes) -> dict[str, list]:
    """name -> nodes reading it, here and in the subgraphs of these nodes (outer-scope references)."""
    out: dict[str, list] = {}
    for n in nodes:
        for x in dict.fromkeys(n.input):  # Mul(k, k) uses k once
            if x:
                out.setdefault(x, []).append(n)
        for sg in _subgraphs(n):
            for k, v in _users(sg.node).items():
                out.setdefault(k, []).extend(v)
    return out


def _node_values(n, where: str, users: dict) -> Iterator[tuple[object, str, list]]:
    readers = users.get(n.output[0], []) if n.op_type in _VALUE_OPS and n.output else [n]
    what = f"{where}{_label(n)}"
    for a in n.attribute:
        if a.HasField("t"):
            yield a.t, f"{what} attribute {a.name!r}", readers
        for j, t in enumerate(a.tensors):
            yield t, f"{what} attribute {a.name!r}[{j}]", readers
        if a.HasField("sparse_tensor"):
            yield a.sparse_tensor.values, f"{what} attribute {a.name!r} (sparse values)", readers
        if a.type == _ATTR_FLOAT:
            yield a.f, f"{what} attribute {a.name!r}", readers
        if a.type == _ATTR_FLOATS and len(a.floats):
            yield list(a.floats), f"{what} attribute {a.name!r}", readers


def _graph_values(g, where: str) -> Iterator[tuple[object, str, list]]:
    users = _users(g.node)
    outs = {o.name for o in g.output}

    def readers(name):  # a graph output is "used" too (by whoever runs the model)
        return users.get(name, []) + ([f"graph output {name!r}"] if name in outs else [])

    for t in g.initializer:
        yield t, f"{where}initializer {t.name!r}", readers(t.name)
    for s in g.sparse_initializer:
        yield s.values, f"{where}sparse initializer {s.values.name!r}", readers(s.values.name)
    for n in g.node:
        for t, what, r in _node_values(n, where, users):
            if n.op_type in _VALUE_OPS and n.output and n.output[0] in outs:
                r = r + [f"graph output {n.output[0]!r}"]
            yield t, what, r
        for sg in _subgraphs(n):
            yield from _graph_values(sg, f"{where}subgraph of {_label(n)}: ")


def _float_values(item) -> "np.ndarray | None":
    import numpy as np

    if isinstance(item, (float, list)):
        return np.asarray(item, dtype=np.float64)
    if item.data_type not in _FLOAT_TYPES or item.data_location == _EXTERNAL:
        return None  # not a float / external data not loaded (load_onnx loads it before this check)
    from onnx import numpy_helper

    try:
        a = numpy_helper.to_array(item)
    except Exception:  # noqa: BLE001 - undecodable data is check_tensor_sizes' business, not this check's
        return None
    # bfloat16 / float8 arrive as ml_dtypes types, which np.isfinite does not take: widen those
    return a if a.dtype in (np.float16, np.float32, np.float64) else a.astype(np.float32)


def check_batchnorm_variance(proto, source: str) -> None:
    """A BatchNormalization's running variance is >= 0: a negative one makes ``sqrt(var + eps)`` NaN, which the
    BN fold would quantize silently into a garbage channel (and zero-shot synthesis would chase)."""
    import numpy as np
    from onnx import numpy_helper

    stored = {t.name: t for t in proto.graph.initializer}
    for n in proto.graph.node:
        if n.op_type == "Constant" and n.output:
            for a in n.attribute:
                if a.name == "value" and a.HasField("t"):
                    stored[n.output[0]] = a.t
    for i, n in enumerate(proto.graph.node):
        if n.op_type != "BatchNormalization" or len(n.input) < 5 or n.input[4] not in stored:
            continue
        try:
            var = np.asarray(numpy_helper.to_array(stored[n.input[4]]), np.float64)
        except (ValueError, TypeError) as e:  # a STRING tensor passes onnx.checker
            raise ModelLoadError(f"model {source!r}: BatchNormalization node {n.name or '#' + str(i)!r} has a "
                                 f"running variance {n.input[4]!r} that is not numeric ({type(e).__name__})",
                                 _FIX_REEXPORT) from None
        neg = np.flatnonzero(var.ravel() < 0)
        if neg.size:
            raise ModelLoadError(f"model {source!r}: BatchNormalization node {n.name or '#' + str(i)!r} has "
                                 f"{neg.size} negative running variance(s) in {n.input[4]!r} (first: channel "
                                 f"{int(neg[0])}, {float(var.ravel()[neg[0]]):.4g}); a variance cannot be negative",
                                 _FIX_REEXPORT)


def check_finite(proto, source: str) -> None:
    """Every float value stored in the model (initializers, ``Constant`` / ``ConstantOfShape`` values, float
    attributes, in subgraphs and functions too) is finite; ``±Inf`` only where all its users are
    :data:`_INF_OK_OPS`.  The error names the tensor, what is wrong and the layers (node name + op) that use it."""
    import numpy as np

    def values():
        yield from _graph_values(proto.graph, "")
        for f in proto.functions:
            users = _users(f.node)
            for n in f.node:
                yield from _node_values(n, f"function {f.name!r} ", users)
                for sg in _subgraphs(n):
                    yield from _graph_values(sg, f"function {f.name!r} subgraph of {_label(n)}: ")

    for item, what, readers in values():
        a = _float_values(item)
        if a is None or not a.size:
            continue
        finite = np.isfinite(a)
        if finite.all():  # the common case: one vectorized pass, no copies kept
            continue
        n_nan = int(np.isnan(a).sum())
        n_inf = int(a.size - finite.sum()) - n_nan
        ops = [r for r in readers if not isinstance(r, str)]
        if not n_nan and ops and all(r.op_type in _INF_OK_OPS for r in ops):
            continue  # -inf mask into Where / Min / Clip ...: a sentinel, not a weight
        if not readers:
            continue  # read by no node and not an output: never computed with, harmless
        bad = " and ".join(s for s in (f"{n_nan:,} NaN" if n_nan else "", f"{n_inf:,} infinite" if n_inf else "") if s)
        first = [int(i) for i in np.unravel_index(int(np.flatnonzero(~finite.ravel())[0]), a.shape)] if a.ndim else []
        names = [r if isinstance(r, str) else _label(r) for r in readers]
        used = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        shape = f"{_dtype_name(item.data_type)} {list(item.dims)}" if hasattr(item, "dims") else f"{a.size} value(s)"
        raise ModelLoadError(
            f"{_prefix(source)}{what} ({shape}) holds {bad} value{'s' if n_nan + n_inf > 1 else ''} out of "
            f"{a.size:,} (first at index {first}); it is used by {used}, whose output would be garbage",
            _FIX_NONFINITE)


# --------------------------------------------------------------------------- memory budget
#: Default budget, per tensor and for all stored tensors together: 4 GiB.  Why: the biggest models zsq
#: handles are far below it (Conformer-CTC-Large: ~120 M weights = 0.5 GB in all, its largest activation
#: for a 10 s input tens of MB; even a QuartzNet activation [1, 1024, 100000] for 1000 s is 0.4 GB), while
#: the pipeline holds several copies of a tensor at once (protobuf, numpy, ONNX Runtime folding, TVM
#: constants), so one 4 GiB tensor still fits a 16 GB machine; a file declaring more is far more likely
#: crafted or broken than real, and the rare real one can raise the budget (``--max-memory``).
DEFAULT_MEMORY_BUDGET = 4 * 2**30
#: environment variable read by :func:`memory_budget` (``8G``, ``512M``, bytes, ...)
MEMORY_BUDGET_ENV = "ZSQ_MAX_MEMORY"
_budget_override: int | None = None  # set_memory_budget (--max-memory): wins over the environment
_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40, "p": 2**50}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgtp]?)(?:i?b)?\s*$", re.IGNORECASE)
_SMALL_ELEMS = 4096  # constants up to this many elements are read as values (shapes, repeats, Range bounds)


def parse_size(text, what: str = "--max-memory") -> int:
    """``"8G"`` / ``"512M"`` / ``"1.5GiB"`` / ``"65536"`` / an int -> bytes.  Units are binary (K = 2^10,
    M = 2^20, G = 2^30, T = 2^40, P = 2^50; an optional ``B`` / ``iB`` suffix is ignored) and case-insensitive.
    Raises :class:`ConfigError` (naming ``what``) for anything else or less than one byte."""
    fix = f"give {what} in bytes or with a unit, e.g. 8G, 512M or 65536 (K, M, G, T are powers of 1024)"
    if isinstance(text, bool):
        raise ConfigError(f"{what} {text!r} is not a size", fix)
    if isinstance(text, int) or (hasattr(text, "__index__") and not isinstance(text, str)):
        n = int(text)
    else:
        m = _SIZE_RE.match(str(text))
        if not m:
            raise ConfigError(f"{what} {str(text)!r} is not a size", fix)
        n = int(Fraction(m.group(1)) * _UNITS[m.group(2).lower()])
    if n < 1:
        raise ConfigError(f"{what} {str(text)!r} is less than one byte", fix)
    return n


def memory_budget() -> int:
    """The budget in bytes: :func:`set_memory_budget`'s value if set, else ``$ZSQ_MAX_MEMORY`` (parsed by
    :func:`parse_size`), else :data:`DEFAULT_MEMORY_BUDGET`."""
    if _budget_override is not None:
        return _budget_override
    env = os.environ.get(MEMORY_BUDGET_ENV, "").strip()
    return parse_size(env, f"environment variable {MEMORY_BUDGET_ENV}") if env else DEFAULT_MEMORY_BUDGET


def set_memory_budget(n_bytes) -> int | None:
    """Set the budget for this process (``--max-memory``; an int of bytes or a :func:`parse_size` string;
    ``None`` goes back to the environment / default).  Returns the previous setting (for restoring it)."""
    global _budget_override
    prev = _budget_override
    _budget_override = None if n_bytes is None else parse_size(n_bytes, "--max-memory")
    return prev


def _fmt_size(n: int) -> str:
    for unit, k in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= k:
            return f"{n / k:,.1f} {unit} ({n:,} bytes)"
    return f"{n:,} bytes"


def _fix_budget(need: int, frames: bool = False) -> str:
    for unit, k in (("T", 2**40), ("G", 2**30), ("M", 2**20), ("K", 2**10)):
        if need >= k:
            suggest = f"{-(-need // k)}{unit}"
            break
    else:
        suggest = str(need)
    return ("pass a smaller --frames T (100 frames per second, e.g. --frames 1000), or, " if frames else "") + \
        f"if you trust this file, pass --max-memory N to raise the budget (this needs at least --max-memory " \
        f"{suggest}; or set {MEMORY_BUDGET_ENV})"


def _nbytes(numel: int, elem: int) -> int | None:
    spec = _TYPES.get(elem)
    return None if spec is None else (numel * spec[0] + 7) // 8


def _over(what: str, nbytes: int, budget: int, source: str, frames: bool = False, err=ModelLoadError):
    raise err(f"{_prefix(source)}{what} would take {_fmt_size(nbytes)}, over the memory budget of "
              f"{_fmt_size(budget)} (refused before allocating it)", _fix_budget(nbytes, frames))


def _all_graphs(proto) -> Iterator[object]:
    stack = [proto.graph] + [sg for f in proto.functions for n in f.node for sg in _subgraphs(n)]
    while stack:
        g = stack.pop()
        yield g
        for n in g.node:
            stack.extend(_subgraphs(n))


def check_declared_sizes(proto, source: str, budget: int | None = None) -> None:
    """Each stored tensor (initializers, external data included, and constants; a sparse one at its dense
    size) fits ``budget`` and so do all of them together.  From ``dims`` only: run before external data
    is read, so a 9 GB external weight is refused without reading it."""
    budget = memory_budget() if budget is None else budget
    total = count = 0
    for t, where in iter_tensors(proto):
        n = _numel(t, where, source)
        nb = _nbytes(n, t.data_type)
        if nb is None:
            continue
        if nb > budget:
            _over(f"{where} ({_dtype_name(t.data_type)} {list(t.dims)})", nb, budget, source)
        total, count = total + nb, count + 1
    for g in _all_graphs(proto):  # sparse tensors become dense in ONNX Runtime / TVM: their dims count
        sparse = [(s, f"sparse initializer {s.values.name!r}") for s in g.sparse_initializer]
        sparse += [(a.sparse_tensor, f"{_label(n)} attribute {a.name!r}") for n in g.node for a in n.attribute
                   if a.HasField("sparse_tensor")]
        for s, where in sparse:
            nb = _nbytes(math.prod(max(int(d), 0) for d in s.dims), s.values.data_type)
            if nb is not None and nb > budget:
                _over(f"{where} (dense {_dtype_name(s.values.data_type)} {list(s.dims)})", nb, budget, source)
    if total > budget:
        _over(f"its {count:,} stored tensors (initializers and constants) together", total, budget, source)


def _dims_only(t):
    from onnx import TensorProto

    return TensorProto(name=t.name, data_type=t.data_type, dims=list(t.dims))


def _small(t) -> bool:
    return t.data_location != _EXTERNAL and math.prod(t.dims) <= _SMALL_ELEMS


def _light_model(proto, input_shapes: dict | None):
    """A weight-less copy of the model for shape inference: big initializers / Constant values keep their
    shape but not their data; graph inputs get ``input_shapes``, or become symbolic when not given (their
    declared T is replaced by --frames later, so it decides nothing yet); no graph outputs and no
    value_info (what the file declares there is stale once T is set, and inference then reports every
    node output in value_info)."""
    import onnx

    light = onnx.ModelProto()
    light.ir_version = proto.ir_version
    light.opset_import.extend(proto.opset_import)
    light.functions.extend(proto.functions)
    g, lg = proto.graph, light.graph
    lg.name = g.name
    lg.initializer.extend(t if _small(t) else _dims_only(t) for t in g.initializer)
    for n in g.node:
        if n.op_type == "Constant" and any(a.HasField("t") and not _small(a.t) for a in n.attribute):
            c = lg.node.add()
            c.CopyFrom(n)
            for a in c.attribute:
                if a.HasField("t") and not _small(a.t):
                    a.t.CopyFrom(_dims_only(a.t))
        else:
            lg.node.append(n)
    inits = {t.name for t in g.initializer}
    for k, i in enumerate(g.input):
        vi = lg.input.add()
        vi.CopyFrom(i)
        if i.name in inits or not vi.type.HasField("tensor_type"):
            continue
        tt = vi.type.tensor_type
        if input_shapes and i.name in input_shapes:
            tt.shape.ClearField("dim")
            for d in input_shapes[i.name]:
                tt.shape.dim.add().dim_value = int(d)
        elif tt.HasField("shape"):
            for j, d in enumerate(tt.shape.dim):
                d.dim_param = f"zsq_input{k}_{j}"
    return light


def _infer(light, vals: dict) -> dict[str, tuple[list[int], int]]:
    """ONNX shape inference on ``light`` with the small values in ``vals`` bound as initializers (their
    producing nodes dropped): name -> (dims, elem type) of every tensor it sizes statically.

    Without ONNX's own data propagation (``data_prop=False``): in onnx 1.23 it builds a symbolic dimension
    per element of every 1-D float tensor that reaches Slice / Mul / Concat / Gather / Unsqueeze (measured:
    ~70 bytes per element, so a declared [10^9] float tensor costs 70 GB inside the check itself).  The
    shape arithmetic it would do is :func:`_eval_small`'s job instead, bounded to small tensors."""
    import onnx
    from onnx import numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(light)
    if vals:
        keep = [n for n in m.graph.node if not (n.output and all(o in vals for o in n.output if o))]
        del m.graph.node[:]
        m.graph.node.extend(keep)
        have = {t.name for t in m.graph.initializer}
        for name, v in vals.items():
            if name not in have:
                try:
                    m.graph.initializer.append(numpy_helper.from_array(v, name))
                except Exception:  # noqa: BLE001 - a value onnx cannot store: inference goes without it
                    pass
    try:
        inf = onnx.shape_inference.infer_shapes(m, check_type=False, strict_mode=False, data_prop=False)
    except Exception:  # noqa: BLE001 - inference is best effort; the explicit checks still run
        return {}
    out = {}
    for vi in list(inf.graph.input) + list(inf.graph.value_info):  # inputs: what a Shape of the mel reads
        tt = vi.type.tensor_type
        if not vi.type.HasField("tensor_type") or not tt.HasField("shape"):
            continue
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        if all(d is not None and d >= 0 for d in dims):
            out[vi.name] = (dims, tt.elem_type)
    return out


_ELEMENTWISE = {"Add": "add", "Sub": "subtract", "Mul": "multiply", "Equal": "equal", "Less": "less",
                "Greater": "greater", "LessOrEqual": "less_equal", "GreaterOrEqual": "greater_equal",
                "And": "logical_and", "Or": "logical_or", "Max": "maximum", "Min": "minimum"}


def _eval_small(n, vals: dict, shapes: dict):
    """The value of a shape-arithmetic node (Shape, Gather, Concat, Slice, Mul, ...) from known small
    values, as numpy; ``None`` when an input is unknown, the result would exceed :data:`_SMALL_ELEMS`
    elements, or the op is not one of these.  What ONNX's data propagation does, with a size bound."""
    import numpy as np

    op = n.op_type
    attrs = {a.name: a for a in n.attribute}
    ins = [x for x in n.input]
    if op == "Shape":
        if not ins or ins[0] not in shapes:
            return None
        dims = shapes[ins[0]][0]
        start = attrs["start"].i if "start" in attrs else 0
        end = attrs["end"].i if "end" in attrs else len(dims)
        return np.asarray(dims[start:end], np.int64)
    if op == "Size":
        return np.asarray(math.prod(shapes[ins[0]][0]), np.int64) if ins and ins[0] in shapes else None
    if not ins or any(x and x not in vals for x in ins):
        return None
    v = [vals[x] if x else None for x in ins]

    def small(shape):
        return math.prod(shape) <= _SMALL_ELEMS

    if op in _ELEMENTWISE or op == "Div":
        if len(v) < 2 or not small(np.broadcast_shapes(*(a.shape for a in v))):
            return None
        if op == "Div":
            a, b = v[0], v[1]
            if a.dtype.kind in "iu" and b.dtype.kind in "iu":
                return None if (b == 0).any() else np.trunc(a / b).astype(np.result_type(a, b))
            return np.divide(a, b)
        f = getattr(np, _ELEMENTWISE[op])
        out = v[0]
        for b in v[1:]:
            out = f(out, b)
        return np.asarray(out)
    if op in ("Identity", "Neg", "Abs", "Not", "Floor", "Ceil"):
        return {"Identity": lambda a: a, "Neg": np.negative, "Abs": np.abs, "Not": np.logical_not,
                "Floor": np.floor, "Ceil": np.ceil}[op](v[0])
    if op == "Cast":
        from onnx.helper import tensor_dtype_to_np_dtype

        return v[0].astype(tensor_dtype_to_np_dtype(attrs["to"].i))
    if op == "Gather":
        ax = (attrs["axis"].i if "axis" in attrs else 0) % max(v[0].ndim, 1)
        return np.take(v[0], v[1], axis=ax) if small(v[0].shape[:ax] + v[1].shape + v[0].shape[ax + 1:]) else None
    if op == "Concat":
        out = np.concatenate(v, axis=attrs["axis"].i)
        return out if out.size <= _SMALL_ELEMS else None
    if op in ("Unsqueeze", "Squeeze"):
        if len(v) > 1 and v[1] is not None:  # opset >= 13: axes is an input
            axes = [int(a) for a in v[1].ravel()]
        else:
            axes = list(attrs["axes"].ints) if "axes" in attrs else None
        if op == "Squeeze":
            return np.squeeze(v[0], axis=None if axes is None else tuple(axes))
        return np.expand_dims(v[0], tuple(axes))
    if op == "Reshape":
        shape = [int(x) for x in v[1].ravel()]
        shape = [v[0].shape[i] if d == 0 and not (attrs.get("allowzero") and attrs["allowzero"].i) else d
                 for i, d in enumerate(shape)]
        return v[0].reshape(shape)
    if op == "Slice":
        starts, ends = v[1].ravel(), v[2].ravel()
        axes = v[3].ravel() if len(v) > 3 and v[3] is not None else range(len(starts))
        steps = v[4].ravel() if len(v) > 4 and v[4] is not None else [1] * len(starts)
        idx = [slice(None)] * v[0].ndim
        for s0, e0, ax, st in zip(starts, ends, axes, steps):
            idx[int(ax)] = slice(int(s0), int(e0), int(st))
        return v[0][tuple(idx)]
    if op == "Where":
        return np.where(*v) if small(np.broadcast_shapes(*(a.shape for a in v))) else None
    if op in ("ConstantOfShape", "Range", "Expand", "Tile"):  # small results only; big ones are sized, not built
        dims = _explicit_shape(n, vals, shapes)
        if dims is None or not small(dims[0]):
            return None
        if op == "ConstantOfShape":
            from onnx import numpy_helper

            fill = numpy_helper.to_array(attrs["value"].t).ravel()[0] if "value" in attrs else np.float32(0)
            return np.full(dims[0], fill)
        if op == "Range":
            return np.arange(v[0].ravel()[0], v[1].ravel()[0], v[2].ravel()[0]).astype(v[0].dtype)
        if op == "Expand":
            return v[0] * np.ones([int(x) for x in v[1].ravel()], v[0].dtype)
        return np.tile(v[0], [int(x) for x in v[1].ravel()])
    return None


def _static_shapes(proto, input_shapes: dict | None) -> tuple[dict, dict, dict]:
    """(name -> (dims, elem) of every statically sized tensor, name -> value of small constants and shape
    arithmetic, name -> (dims, elem) of the stored tensors): shape inference and :func:`_eval_small` in
    turns (a Shape's value needs its input's inferred shape; a Reshape / ConstantOfShape's inferred shape
    needs that value) until nothing new is learnt, at most 8 turns (exporters' Shape -> Gather -> ...
    chains need 2 or 3)."""
    from onnx.helper import np_dtype_to_tensor_dtype

    def elem(a):
        try:
            return np_dtype_to_tensor_dtype(a.dtype)
        except (KeyError, TypeError, ValueError):
            return 0

    vals, stored = _constant_values(proto.graph)
    light = _light_model(proto, input_shapes)
    shapes: dict = {}
    for _ in range(8):
        shapes = {**_infer(light, vals), **stored}
        shapes.update({k: (list(a.shape), elem(a)) for k, a in vals.items() if k not in shapes})
        new = 0
        for n in proto.graph.node:
            if not n.output or n.output[0] in vals:
                continue
            try:
                out = _eval_small(n, vals, shapes)
            except (ValueError, TypeError, IndexError, KeyError, OverflowError, ZeroDivisionError, MemoryError):
                out = None  # malformed arguments: the runtime refuses them, nothing to size
            if out is not None and getattr(out, "size", _SMALL_ELEMS + 1) <= _SMALL_ELEMS:
                vals[n.output[0]] = out
                new += 1
        if not new:
            break
    return shapes, vals, stored


def _broadcast(a: list[int], b: list[int]) -> list[int] | None:
    r = max(len(a), len(b))
    a, b = [1] * (r - len(a)) + list(a), [1] * (r - len(b)) + list(b)
    out = []
    for x, y in zip(a, b):
        if x != y and 1 not in (x, y):
            return None  # not broadcastable: the runtime refuses it, nothing gets allocated
        out.append(y if x == 1 else x)
    return out


def _explicit_shape(n, vals: dict, shapes: dict) -> tuple[list[int], int] | None:
    """Output (dims, elem) of ConstantOfShape / Expand / Tile / Range from constant arguments: the ops that
    turn a few bytes of shape into a huge tensor, sized here even where shape inference gives up."""
    def val(i):
        return vals.get(n.input[i]) if len(n.input) > i and n.input[i] else None

    op = n.op_type
    try:
        if op == "ConstantOfShape" and val(0) is not None:
            elem = next((a.t.data_type for a in n.attribute if a.name == "value" and a.HasField("t")), 1)
            dims = [int(x) for x in val(0).ravel()]
        elif op == "Expand" and val(1) is not None and n.input[0] in shapes:
            dims, elem = _broadcast(shapes[n.input[0]][0], [int(x) for x in val(1).ravel()]), shapes[n.input[0]][1]
        elif op == "Tile" and val(1) is not None and n.input[0] in shapes:
            reps, (ins, elem) = [int(x) for x in val(1).ravel()], shapes[n.input[0]]
            dims = [a * b for a, b in zip(ins, reps)] if len(reps) == len(ins) else None
        elif op == "Range" and all(val(i) is not None and val(i).size == 1 for i in range(3)):
            start, limit, delta = (val(i).ravel()[0].item() for i in range(3))
            if not delta or not all(math.isfinite(float(v)) for v in (start, limit, delta)):
                return None
            frac = lambda v: Fraction(v) if isinstance(v, int) else Fraction(float(v))  # noqa: E731 - exact
            dims = [max(math.ceil((frac(limit) - frac(start)) / frac(delta)), 0)]
            elem = shapes[n.input[0]][1] if n.input[0] in shapes else 1
        else:
            return None
    except (TypeError, ValueError, OverflowError, KeyError):
        return None
    if dims is None or any(d < 0 for d in dims):
        return None  # invalid arguments: the runtime refuses them before allocating
    return dims, elem


def _constant_values(g) -> tuple[dict, dict]:
    """(small constant values by name, dims/elem of every stored tensor by name) of graph ``g``."""
    import numpy as np
    from onnx import numpy_helper

    vals, shapes = {}, {}

    def keep(name, t):
        shapes[name] = (list(t.dims), t.data_type)
        if _small(t):
            try:
                vals[name] = numpy_helper.to_array(t)
            except Exception:  # noqa: BLE001 - undecodable: its value decides nothing here
                pass

    for t in g.initializer:
        keep(t.name, t)
    for n in g.node:
        if n.op_type != "Constant" or not n.output:
            continue
        for a in n.attribute:
            if a.HasField("t"):
                keep(n.output[0], a.t)
            elif a.name in ("value_int", "value_ints"):
                v = np.asarray(a.i if a.name == "value_int" else list(a.ints), np.int64)
                vals[n.output[0]], shapes[n.output[0]] = v, (list(v.shape), 7)
            elif a.name in ("value_float", "value_floats"):
                v = np.asarray(a.f if a.name == "value_float" else list(a.floats), np.float32)
                vals[n.output[0]], shapes[n.output[0]] = v, (list(v.shape), 1)
    return vals, shapes


def check_static_shapes(proto, source: str, input_shapes: dict | None = None, budget: int | None = None) -> None:
    """Every tensor whose size is known before running the model fits ``budget`` (default
    :func:`memory_budget`): the graph inputs at ``input_shapes`` (``{name: [B, F, T]}`` with --frames
    applied; ``None`` at load time, when inputs count as symbolic), the outputs of ConstantOfShape / Expand /
    Tile / Range with constant arguments, and every tensor ONNX shape inference sizes statically.  Raises
    :class:`InputShapeError` for an input, :class:`ModelLoadError` for anything else, before allocating it."""
    budget = memory_budget() if budget is None else budget
    g = proto.graph
    elem_of = {i.name: i.type.tensor_type.elem_type for i in g.input}
    for name, shape in (input_shapes or {}).items():
        nb = _nbytes(math.prod(int(d) for d in shape), elem_of.get(name) or 1)
        if nb is not None and nb > budget:
            what = f"model input {name!r} of shape {[int(d) for d in shape]} ({_dtype_name(elem_of.get(name) or 1)})"
            _over(what, nb, budget, source, frames=True, err=InputShapeError)
    inferred, vals, stored = _static_shapes(proto, input_shapes)
    for n in g.node:  # topological order: the first tensor over budget is the one named
        explicit = _explicit_shape(n, vals, inferred)
        for k, o in enumerate(n.output):
            if not o or o in stored:  # initializers / Constants: check_declared_sizes' business
                continue
            cands = [c for c in (inferred.get(o), explicit if k == 0 else None) if c is not None]
            sized = [(nb, c) for c in cands if (nb := _nbytes(math.prod(c[0]), c[1])) is not None]
            if not sized:
                continue
            nb, (dims, elem) = max(sized, key=lambda s: s[0])
            if nb > budget:
                _over(f"tensor {o!r} ({_dtype_name(elem)} {dims}), output of {_label(n)},", nb, budget, source,
                      frames=input_shapes is not None)
            if o not in inferred and explicit is not None and k == 0:
                inferred[o] = explicit  # lets a later Expand / Tile of it be sized
