"""Untrusted ONNX files: crafted external-data references and malformed / huge protobufs.

Each case must give one :class:`ModelLoadError` (via the CLI: one line, exit 2, no output) naming the
cause and the fix - never a crash, a read outside the model's folder or an allocation sized by what
the file merely declares.  The checks live in ``zsq_tvm/frontend/onnx_safety.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from zsq_tvm.cli import main
from zsq_tvm.core.errors import ModelLoadError
from zsq_tvm.frontend.onnx_import import load_onnx

W = np.random.default_rng(0).standard_normal((8, 64, 3)).astype(np.float32)  # conv weight, 6 KiB


def _model(weight: TensorProto | None = None) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("mel", TensorProto.FLOAT, [1, 64, 32])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 8, 30])
    w = weight if weight is not None else numpy_helper.from_array(W, "w")
    g = helper.make_graph([helper.make_node("Conv", ["mel", "w"], ["logits"])], "g", [x], [y], [w])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _external(location: str, offset: int | None = None, length: int | None = None, dims=W.shape) -> TensorProto:
    t = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=list(dims), data_location=TensorProto.EXTERNAL)
    for k, v in (("location", location), ("offset", offset), ("length", length)):
        if v is not None:
            t.external_data.add(key=k, value=str(v))
    return t


def _save(path: Path, proto: onnx.ModelProto) -> Path:
    path.write_bytes(proto.SerializeToString())
    return path


@pytest.fixture()
def layout(tmp_path):
    """model/ (the model's folder) next to outside/ holding a valid weight file a model must not reach."""
    (tmp_path / "model").mkdir()
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "w.bin").write_bytes(W.tobytes())
    return tmp_path


def test_valid_external_data_loads(layout):
    (layout / "model" / "data").mkdir()
    (layout / "model" / "data" / "w.bin").write_bytes(b"\0" * 16 + W.tobytes())
    p = _save(layout / "model" / "m.onnx", _model(_external("data/w.bin", offset=16, length=W.nbytes)))
    proto, _, _ = load_onnx(p)
    np.testing.assert_array_equal(numpy_helper.to_array(proto.graph.initializer[0]), W)


def test_symlinked_data_file_inside_the_folder_is_refused_clearly(layout):
    (layout / "model" / "real.bin").write_bytes(W.tobytes())
    os.symlink("real.bin", layout / "model" / "link.bin")
    with pytest.raises(ModelLoadError, match="is a symbolic link"):
        load_onnx(_save(layout / "model" / "m.onnx", _model(_external("link.bin"))))


def _bad_cases(root: Path) -> dict:
    os.symlink(root / "outside" / "w.bin", root / "model" / "escape.bin")          # absolute symlink target
    os.symlink("../outside", root / "model" / "dirlink")                          # escaping directory link
    (root / "model" / "short.bin").write_bytes(W.tobytes()[:100])
    (root / "model" / "w.bin").write_bytes(W.tobytes())
    (root / "model" / "sub").mkdir()
    return {
        "absolute": (_external(str(root / "outside" / "w.bin")), "absolute external-data path"),
        "dotdot": (_external("../outside/w.bin"), "with '..'"),
        "dotdot-inner": (_external("sub/../../outside/w.bin"), "with '..'"),
        "backslash-dotdot": (_external("..\\outside\\w.bin"), "with '..'"),
        "symlink-file": (_external("escape.bin"), "resolves outside the model's folder"),
        "symlink-dir": (_external("dirlink/w.bin"), "resolves outside the model's folder"),
        "missing": (_external("nope.bin"), "does not exist"),
        "directory": (_external("sub"), "not a regular file"),
        "empty-location": (_external(""), "names no file"),
        "past-end": (_external("short.bin", length=W.nbytes), "which has only 100 bytes"),
        "short-file": (_external("short.bin"), "its external data is 100 bytes"),
        "offset-past-end": (_external("w.bin", offset=W.nbytes + 1), "which has only"),
        "length-mismatch": (_external("w.bin", length=W.nbytes - 4), "its external data is"),
        "huge-declared-shape": (_external("w.bin", dims=[2**20, 2**20, 3]), "declares shape"),
        "negative-offset": (_external("w.bin", offset=-1), "negative external-data offset"),
        "bad-offset": (_external("w.bin", offset="12abc"), "non-integer"),
    }


BAD_NAMES = ["absolute", "dotdot", "dotdot-inner", "backslash-dotdot", "symlink-file", "symlink-dir", "missing",
             "directory", "empty-location", "past-end", "short-file", "offset-past-end", "length-mismatch",
             "huge-declared-shape", "negative-offset", "bad-offset"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_external_data_is_refused(layout, name):
    tensor, needle = _bad_cases(layout)[name]
    p = _save(layout / "model" / "m.onnx", _model(tensor))
    with pytest.raises(ModelLoadError) as e:
        load_onnx(p)
    msg = str(e.value)
    assert needle in msg and "Fix:" in msg and "\n" not in msg, msg


def test_external_data_in_constant_node_and_subgraph_is_checked(layout):
    """Not only initializers: a Constant node's tensor (also inside an If branch) is checked too."""
    for where in ("constant", "subgraph"):
        const = helper.make_node("Constant", [], ["w"], value=_external("../outside/w.bin"))
        if where == "subgraph":
            branch = helper.make_graph([const], "b", [], [helper.make_tensor_value_info("w", TensorProto.FLOAT, None)])
            c = helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(np.array(True)))
            nodes = [c, helper.make_node("If", ["c"], ["w"], then_branch=branch, else_branch=branch)]
        else:
            nodes = [const]
        x = helper.make_tensor_value_info("mel", TensorProto.FLOAT, [1, 64, 32])
        y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 8, 30])
        g = helper.make_graph(nodes + [helper.make_node("Conv", ["mel", "w"], ["logits"])], "g", [x], [y])
        p = _save(layout / "model" / f"{where}.onnx", helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
        with pytest.raises(ModelLoadError, match="with '..'"):
            load_onnx(p)


def test_in_memory_model_with_unloaded_external_data():
    with pytest.raises(ModelLoadError, match="was not loaded"):
        load_onnx(_model(_external("w.bin")))


def test_cli_refuses_escaping_external_data_one_line_no_output(layout, capsys):
    p = _save(layout / "model" / "m.onnx", _model(_external("../outside/w.bin")))
    out = layout / "q"
    rc = main(["quantize", str(p), "--frames", "32", "-o", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("zsq: error:") and "\n" not in err and "with '..'" in err, err
    assert not out.exists() and sorted(x.name for x in layout.iterdir()) == ["model", "outside"]


# --------------------------------------------------------------------------- malformed / huge protobufs
def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _nested(depth: int) -> bytes:
    """graph -> node -> attribute -> subgraph -> node ... ``depth`` times (deeper than protobuf allows)."""
    inner = b""
    for _ in range(depth):
        attr = b"\x32" + _varint(len(inner)) + inner          # AttributeProto.g
        node = b"\x2a" + _varint(len(attr)) + attr            # NodeProto.attribute
        inner = b"\x0a" + _varint(len(node)) + node           # GraphProto.node
    return b"\x3a" + _varint(len(inner)) + inner              # ModelProto.graph


def _huge_declared_weight() -> bytes:
    t = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[2**20, 2**20, 3], raw_data=b"\0" * 16)
    return _model(t).SerializeToString()


MALFORMED = {
    "random bytes": (lambda: np.random.default_rng(1).bytes(4096), "not a readable ONNX protobuf"),
    "truncated": (lambda: _model().SerializeToString()[:3000], "not a readable ONNX protobuf"),
    "3 GB length prefix": (lambda: b"\x3a" + _varint(3 * 2**30) + b"\0" * 64, "not a readable ONNX protobuf"),
    "nested 2000 deep": (lambda: _nested(2000), "not a readable ONNX protobuf"),
    "2^40-element weight in 16 bytes": (_huge_declared_weight, "declares shape [1048576, 1048576, 3]"),
    "float_data count mismatch": (lambda: _model(TensorProto(name="w", data_type=TensorProto.FLOAT,
                                                             dims=list(W.shape), float_data=[0.0] * 10)
                                                 ).SerializeToString(), "stores 10 values"),
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_protobuf_is_a_clear_error(tmp_path, name):
    make, needle = MALFORMED[name]
    p = tmp_path / "bad.onnx"
    p.write_bytes(make())
    with pytest.raises(ModelLoadError) as e:
        load_onnx(p)
    assert needle in str(e.value) and "Fix:" in str(e.value), str(e.value)


def test_over_2gib_file_is_refused_without_reading_it(tmp_path):
    """A sparse 2 GiB + 1 KiB file (no disk used): refused from its size; peak RSS of the process stays
    far below the file size, so it was never read."""
    big = tmp_path / "big.onnx"
    with open(big, "wb") as f:
        f.truncate(2**31 + 1024)
    code = textwrap.dedent(f"""
        import json
        from zsq_tvm.frontend.onnx_import import load_onnx
        from zsq_tvm.core.errors import ModelLoadError
        try:
            load_onnx({str(big)!r}); msg = None
        except ModelLoadError as e:
            msg = str(e)
        # VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork+exec, so a child of a big pytest
        # process would report its parent's peak; VmHWM belongs to this process's own address space.
        hwm = [ln for ln in open("/proc/self/status") if ln.startswith("VmHWM:")][0].split()[1]
        print(json.dumps({{"msg": msg, "maxrss_mb": int(hwm) / 1024}}))
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["msg"] and "over protobuf's 2 GiB limit" in res["msg"] and "Fix:" in res["msg"], res
    assert res["maxrss_mb"] < 500, res
