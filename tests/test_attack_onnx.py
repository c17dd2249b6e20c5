"""Hostile ONNX files, part 2: non-finite weights, small files that declare huge tensors, and the ONNX that
``zsq bench --compare-onnx`` hands to ONNX Runtime.

Every file is crafted here with ``onnx.helper``.  Each must give one line ``zsq: error: ...`` (exit 2) naming
the tensor and the fix - no traceback, no output folder, and nothing allocated from what the file merely
declares.  The checks live in ``zsq_tvm/frontend/onnx_safety.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import wave
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from zsq_tvm.cli import main
from zsq_tvm.core.errors import ConfigError, ModelLoadError
from zsq_tvm.frontend import onnx_safety
from zsq_tvm.frontend.onnx_import import import_onnx, load_onnx
from zsq_tvm.frontend.onnx_safety import (DEFAULT_MEMORY_BUDGET, MEMORY_BUDGET_ENV, memory_budget, parse_size,
                                          set_memory_budget)

ROOT = Path(__file__).resolve().parents[1]
T = 32
GiB = 2**30


@pytest.fixture(autouse=True)
def _default_budget(monkeypatch):
    """Each test starts from the default budget, whatever the environment or an earlier test set."""
    monkeypatch.delenv(MEMORY_BUDGET_ENV, raising=False)
    prev = set_memory_budget(None)
    yield
    set_memory_budget(prev)


def _i64(v, name):
    return numpy_helper.from_array(np.asarray(v, np.int64), name)


def _f32(v, name):
    return numpy_helper.from_array(np.asarray(v, np.float32), name)


def _conv_bn(weight=None, bias=None, var=None, T=T) -> onnx.ModelProto:
    """mel [1, 64, T] -> Conv 'conv1' -> BatchNormalization 'bn1' -> Relu: a model zsq quantizes."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 64, 3)).astype(np.float32) if weight is None else weight
    inits = [_f32(w, "conv.weight"), _f32(np.zeros(8) if bias is None else bias, "conv.bias"),
             _f32(rng.uniform(0.5, 1.5, 8), "bn.scale"), _f32(rng.standard_normal(8) * 0.1, "bn.B"),
             _f32(rng.standard_normal(8) * 0.1, "bn.mean"), _f32(np.ones(8) if var is None else var, "bn.var")]
    nodes = [helper.make_node("Conv", ["mel", "conv.weight", "conv.bias"], ["c"], name="conv1", pads=[1, 1]),
             helper.make_node("BatchNormalization", ["c", "bn.scale", "bn.B", "bn.mean", "bn.var"], ["n"], name="bn1"),
             helper.make_node("Relu", ["n"], ["logits"], name="relu1")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("mel", TensorProto.FLOAT, [1, 64, T])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 8, T])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _with(nodes, inits, out: str, T=T) -> onnx.ModelProto:
    """mel -> Conv -> + ``out`` (a tensor made by ``nodes``, sliced to [1, 8, T] where it is bigger)."""
    w = np.random.default_rng(0).standard_normal((8, 64, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["mel", "w"], ["c"], name="conv1", pads=[1, 1])] + list(nodes) + [
        helper.make_node("Reshape", [out, "flat"], ["out_flat"], name="flatten"),
        helper.make_node("Slice", ["out_flat", "zero", "need"], ["out_cut"], name="cut"),
        helper.make_node("Reshape", ["out_cut", "shape"], ["out_3d"], name="unflatten"),
        helper.make_node("Add", ["c", "out_3d"], ["logits"], name="add")]
    inits = [_f32(w, "w"), _i64([-1], "flat"), _i64([0], "zero"), _i64([8 * T], "need"),
             _i64([1, 8, T], "shape")] + list(inits)
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("mel", TensorProto.FLOAT, [1, 64, T])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 8, T])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _save(path: Path, proto: onnx.ModelProto) -> Path:
    path.write_bytes(proto.SerializeToString())
    return path


def _quantize(capsys, tmp_path, model: Path, *extra):
    out = tmp_path / "q"
    rc = main(["quantize", str(model), "-o", str(out), "--num-batches", "1", *extra])
    err = capsys.readouterr().err.strip()
    return rc, err, out


def _one_line(rc, err, *needles):
    assert rc == 2 and err.startswith("zsq: error:") and "\n" not in err and "Traceback" not in err, err
    assert "Fix:" in err, err
    for n in needles:
        assert n in err, (n, err)


# =========================================================================== 5: non-finite weights
def _nan_at(shape, idx, value=np.nan):
    a = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    a[idx] = value
    return a


NONFINITE = {
    "NaN conv weight": (dict(weight=_nan_at((8, 64, 3), (2, 5, 1))),
                        ["initializer 'conv.weight'", "1 NaN value", "[2, 5, 1]", "Conv node 'conv1'"]),
    "+Inf conv bias": (dict(bias=_nan_at((8,), 3, np.inf)),
                       ["initializer 'conv.bias'", "1 infinite value", "[3]", "Conv node 'conv1'"]),
    "NaN BN running var": (dict(var=np.abs(_nan_at((8,), 6))),
                           ["initializer 'bn.var'", "1 NaN value", "[6]", "BatchNormalization node 'bn1'"]),
    "-Inf BN running var": (dict(var=np.where(np.arange(8) == 0, -np.inf, 1.0)),
                            ["initializer 'bn.var'", "infinite", "BatchNormalization node 'bn1'"]),
    "negative BN running var": (dict(var=np.where(np.arange(8) == 4, -4.0, 1.0)),  # finite, but sqrt(var) is NaN
                                ["BatchNormalization node 'bn1'", "negative running variance", "'bn.var'",
                                 "channel 4"]),
}


@pytest.mark.parametrize("case", list(NONFINITE))
def test_quantize_refuses_non_finite_weights(tmp_path, capsys, case):
    """Today a NaN weight quantizes silently (exit 0) into a garbage channel and an Inf one ends in a traceback
    or a misleading calibration message; now: one line naming the tensor and the layer, nothing written."""
    kw, needles = NONFINITE[case]
    model = _save(tmp_path / "m.onnx", _conv_bn(**kw))
    rc, err, out = _quantize(capsys, tmp_path, model, "--frames", str(T))
    _one_line(rc, err, *needles)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_the_same_model_with_finite_weights_quantizes(tmp_path, capsys):
    """The control: the attacks above differ from this model only in one value."""
    model = _save(tmp_path / "m.onnx", _conv_bn())
    rc, err, out = _quantize(capsys, tmp_path, model, "--frames", str(T))
    assert rc == 0 and (out / "module.json").exists(), err


def test_non_finite_constant_node_names_its_users(tmp_path):
    """A NaN in a Constant node (not an initializer): the layers named are the readers of its output."""
    const = helper.make_node("Constant", [], ["k"], name="scale_const", value=_f32([1.0, np.nan], "v"))
    m = _with([const, helper.make_node("Mul", ["k", "k"], ["kk"], name="square"),
               helper.make_node("Expand", ["kk", "big_shape"], ["e"], name="widen")],
              [_i64([1, 8, T // 2, 2], "big_shape")], "e")
    with pytest.raises(ModelLoadError) as e:
        load_onnx(_save(tmp_path / "m.onnx", m))
    msg = str(e.value)
    assert "Constant node 'scale_const'" in msg and "Mul node 'square'" in msg and "1 NaN value" in msg, msg


def test_minus_inf_mask_into_where_is_accepted_but_not_into_add(tmp_path):
    """-inf as an attention-mask sentinel feeding Where is legitimate; the same tensor added to activations is not."""
    mask_val = _f32(np.full((1, 8, T), -np.inf), "neg_inf")
    cond = numpy_helper.from_array(np.zeros((1, 8, T), bool), "cond")
    where = helper.make_node("Where", ["cond", "neg_inf", "c"], ["masked"], name="mask")
    g = helper.make_graph([helper.make_node("Conv", ["mel", "w"], ["c"], name="conv1", pads=[1, 1]), where],
                          "g", [helper.make_tensor_value_info("mel", TensorProto.FLOAT, [1, 64, T])],
                          [helper.make_tensor_value_info("masked", TensorProto.FLOAT, [1, 8, T])],
                          [_f32(np.ones((8, 64, 3)), "w"), mask_val, cond])
    load_onnx(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    g.node[1].CopyFrom(helper.make_node("Add", ["neg_inf", "c"], ["masked"], name="bias_add"))
    with pytest.raises(ModelLoadError, match="used by Add node 'bias_add'"):
        load_onnx(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))


# =========================================================================== 6: memory budget
def _cos_9gb() -> onnx.ModelProto:
    """22 KB-class file: a ConstantOfShape of 9 GiB (float32 [1, 8, 301989888]), sliced back to [1, 8, T]."""
    n = 9 * GiB // 4 // 8
    cos = helper.make_node("ConstantOfShape", ["huge_shape"], ["big"], name="huge",
                           value=_f32([0.5], "v"))
    return _with([cos], [_i64([1, 8, n], "huge_shape")], "big")


def _run_cli_measured(args, env_extra=None, as_limit=5 * GiB, timeout=240):
    """``zsq ARGS`` in a fresh interpreter: (exit code, stderr, own peak RSS in MiB, seconds).  The child's
    address space is capped (RLIMIT_AS) so that if a check is missing it fails to allocate instead of eating
    this machine's memory; its peak RSS is its own VmHWM (ru_maxrss of children would include the pytest
    parent's peak, which Linux carries over fork+exec)."""
    code = textwrap.dedent(f"""
        import json, resource, sys
        resource.setrlimit(resource.RLIMIT_AS, ({as_limit}, {as_limit}))
        from zsq_tvm.cli import main
        try:
            rc = main({list(map(str, args))!r})
        finally:
            hwm = [ln for ln in open("/proc/self/status") if ln.startswith("VmHWM:")][0].split()[1]
            print(json.dumps({{"maxrss_mb": int(hwm) / 1024}}))
        sys.exit(rc)
    """)
    env = {**os.environ, **(env_extra or {})}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    dt = time.monotonic() - t0
    lines = [ln for ln in r.stdout.strip().splitlines() if ln.startswith("{")]
    rss = json.loads(lines[-1])["maxrss_mb"] if lines else None
    return r.returncode, r.stderr.strip(), rss, dt


def test_constant_of_shape_9gb_refused_before_allocation(tmp_path):
    """Today the 9 GB ConstantOfShape is folded / calibrated until std::bad_alloc (a traceback).  Now the CLI
    exits 2 in seconds, naming the node, the size and the budget, and the process never grows past ~1 GiB."""
    model = _save(tmp_path / "cos.onnx", _cos_9gb())
    assert model.stat().st_size < 22_000
    rc, err, rss, dt = _run_cli_measured(["quantize", model, "--frames", T, "-o", tmp_path / "q"])
    _one_line(rc, err, "tensor 'big'", "ConstantOfShape node 'huge'", "9.0 GiB", "over the memory budget of 4.0 GiB",
              "--max-memory")
    assert rss is not None and rss < 1024, rss  # the refused tensor alone would be 9216 MiB
    assert dt < 120 and not (tmp_path / "q").exists(), dt


def test_constant_of_shape_refused_by_report_and_eval_too(tmp_path, capsys):
    """`zsq report` and `zsq eval` read the same file through the same checks."""
    model = _save(tmp_path / "cos.onnx", _cos_9gb())
    rc = main(["report", str(model)])
    _one_line(rc, capsys.readouterr().err.strip(), "ConstantOfShape node 'huge'", "over the memory budget")
    manifest = _manifest_one_wav(tmp_path)
    rc = main(["eval", str(model), "--manifest", str(manifest)])
    _one_line(rc, capsys.readouterr().err.strip(), "ConstantOfShape node 'huge'", "over the memory budget")


def _manifest_one_wav(tmp_path: Path) -> Path:
    with wave.open(str(tmp_path / "x.wav"), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(np.zeros(16000, "<i2").tobytes())
    m = tmp_path / "m.json"
    m.write_text(json.dumps({"audio_filepath": "x.wav", "text": "hi", "duration": 1.0}) + "\n")
    return m


BIG = 2**20  # an element count that makes a tensor of 4 TiB when squared (float32)
SIZE_OPS = {
    "ConstantOfShape (Constant node shape)": (
        [helper.make_node("Constant", [], ["s"], name="shape_const", value=_i64([BIG, BIG], "v")),
         helper.make_node("ConstantOfShape", ["s"], ["y"], name="fill", value=_f32([1.0], "v"))], [],
        "ConstantOfShape node 'fill'"),
    "Expand": ([helper.make_node("Expand", ["one", "s"], ["y"], name="grow")],
               [_f32([1.0], "one"), _i64([BIG, BIG], "s")], "Expand node 'grow'"),
    "Tile": ([helper.make_node("Tile", ["two", "r"], ["y"], name="repeat")],
             [_f32([1.0, 2.0], "two"), _i64([2**40], "r")], "Tile node 'repeat'"),
    "Range (int64)": ([helper.make_node("Range", ["a", "b", "d"], ["r"], name="count"),
                       helper.make_node("Cast", ["r"], ["y"], name="to_float", to=TensorProto.FLOAT)],
                      [_i64(0, "a"), _i64(2**40, "b"), _i64(1, "d")], "Range node 'count'"),
    "Range (float)": ([helper.make_node("Range", ["a", "b", "d"], ["y"], name="count")],
                      [_f32(0.0, "a"), _f32(2.0**40, "b"), _f32(1.0, "d")], "Range node 'count'"),
    "Pad (found by shape inference)": (
        [helper.make_node("Pad", ["one3", "pads"], ["y"], name="inflate")],
        [_f32(np.ones((1, 1, 1)), "one3"), _i64([0, 0, 0, 0, BIG, BIG], "pads")], "Pad node 'inflate'"),
}


@pytest.mark.parametrize("case", list(SIZE_OPS))
def test_constant_argument_ops_over_budget_are_refused_at_load(tmp_path, case):
    """Each op turns a few bytes of constant arguments into terabytes: refused by load_onnx, from shapes only."""
    nodes, inits, needle = SIZE_OPS[case]
    with pytest.raises(ModelLoadError) as e:
        load_onnx(_save(tmp_path / "m.onnx", _with(nodes, inits, "y")))
    msg = str(e.value)
    assert needle in msg and "over the memory budget" in msg and "--max-memory" in msg and "\n" not in msg, msg


def test_the_check_itself_does_not_allocate_per_element(tmp_path):
    """The size check must not be the allocation: ONNX's own data propagation (onnx 1.23) builds ~70 bytes
    per element of a 1-D float tensor reaching Slice, so a shape-chain-made ConstantOfShape of 2^31 floats
    (8 GiB) would cost ~150 GB inside shape inference.  Here: Shape(mel)[2] * 2^26 -> ConstantOfShape ->
    Slice, quantized at T = 32: refused, and the process stays small."""
    nodes = [helper.make_node("Shape", ["mel"], ["sh"], name="shape_of_mel"),
             helper.make_node("Gather", ["sh", "two"], ["t"], name="frames_of_mel"),
             helper.make_node("Mul", ["t", "k"], ["n"], name="times_k"),
             helper.make_node("ConstantOfShape", ["n"], ["line"], name="fill_line", value=_f32([0.0], "v")),
             helper.make_node("Slice", ["line", "zero", "need"], ["y"], name="cut_line")]
    m = _with(nodes, [_i64([2], "two"), _i64([2**26], "k")], "y")
    p = _save(tmp_path / "m.onnx", m)
    rc, err, rss, _ = _run_cli_measured(["quantize", p, "--frames", T, "-o", tmp_path / "q"], as_limit=4 * GiB)
    _one_line(rc, err, "ConstantOfShape node 'fill_line'", "8.0 GiB", "over the memory budget")
    assert rss is not None and rss < 1536, rss


def test_input_dim_2_to_the_40_without_frames(tmp_path, capsys):
    """A static T = 2^40 and no --frames: today a numpy MemoryError traceback (quantize and eval alike); now
    exit 2 naming the input and the two fixes (--frames, --max-memory)."""
    model = _save(tmp_path / "m.onnx", _conv_bn(T=2**40))
    rc, err, out = _quantize(capsys, tmp_path, model)
    _one_line(rc, err, "model input 'mel'", "[1, 64, 1099511627776]", "over the memory budget", "--frames",
              "--max-memory")
    assert not out.exists()
    rc = main(["eval", str(model), "--manifest", str(_manifest_one_wav(tmp_path))])  # ORT at the file's T
    _one_line(rc, capsys.readouterr().err.strip(), "model input 'mel'", "[1, 64, 1099511627776]")


def test_declared_huge_input_is_fine_when_frames_replace_it(tmp_path):
    """The declared T is only a default: --frames replaces it, so the file loads and imports at T = 32."""
    proto, _, _ = load_onnx(_save(tmp_path / "m.onnx", _conv_bn(T=2**40)))
    _, info, _ = import_onnx(proto, frames=T)
    assert info.file_frames == 2**40


def test_tensor_sized_by_frames_is_checked_after_frames_are_applied(tmp_path):
    """ConstantOfShape(Shape(mel) * k): nothing static at load; at --frames 32 it is [1, 2^20, 2^19] floats
    (2 TiB), refused before ONNX Runtime folds it - the fix offers a smaller --frames."""
    nodes = [helper.make_node("Shape", ["mel"], ["sh"], name="shape_of_mel"),
             helper.make_node("Mul", ["sh", "k"], ["sh2"], name="scale_shape"),
             helper.make_node("ConstantOfShape", ["sh2"], ["y"], name="fill_by_frames", value=_f32([0.0], "v"))]
    m = _with(nodes, [_i64([1, 2**14, 2**14], "k")], "y")
    m.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "T"  # dynamic T: --frames decides
    p = _save(tmp_path / "m.onnx", m)
    proto, _, _ = load_onnx(p)
    with pytest.raises(ModelLoadError) as e:
        import_onnx(proto, frames=T)
    msg = str(e.value)
    assert "ConstantOfShape node 'fill_by_frames'" in msg and "--frames" in msg and "--max-memory" in msg, msg


def _weights_model(n_floats: int) -> onnx.ModelProto:
    """mel [1, 64, T] -> MatMul by [T, k] -> ... a weight of ``n_floats`` floats (plus a tiny second one)."""
    k = n_floats // T
    w = np.random.default_rng(0).standard_normal((T, k)).astype(np.float32)
    g = helper.make_graph([helper.make_node("MatMul", ["mel", "w"], ["logits"], name="proj")], "g",
                          [helper.make_tensor_value_info("mel", TensorProto.FLOAT, [1, 64, T])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 64, k])], [_f32(w, "w")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_budget_env_var_refuses_then_raised_budget_lets_it_through(tmp_path, capsys, monkeypatch):
    """A 2 MiB weight: ZSQ_MAX_MEMORY=1M refuses it (CLI: one line, exit 2), 8M lets it through, the default
    (4 GiB) too; set_memory_budget (what --max-memory calls) wins over the environment."""
    p = _save(tmp_path / "m.onnx", _weights_model(2**19))
    monkeypatch.setenv(MEMORY_BUDGET_ENV, "1M")
    assert memory_budget() == 2**20
    rc = main(["report", str(p)])
    _one_line(rc, capsys.readouterr().err.strip(), "initializer 'w'", "2.0 MiB", "over the memory budget of 1.0 MiB",
              "--max-memory 2M")
    monkeypatch.setenv(MEMORY_BUDGET_ENV, "8M")
    load_onnx(p)
    set_memory_budget("1M")  # the flag beats the environment
    with pytest.raises(ModelLoadError, match="over the memory budget of 1.0 MiB"):
        load_onnx(p)
    set_memory_budget(None)
    monkeypatch.delenv(MEMORY_BUDGET_ENV)
    assert memory_budget() == DEFAULT_MEMORY_BUDGET == 4 * GiB
    load_onnx(p)


def test_sum_of_weights_over_budget(tmp_path, monkeypatch):
    """Three weights of 1 MiB each fit a 2 MiB budget one by one, not together."""
    m = _weights_model(2**18)
    w = m.graph.initializer[0]
    for i in (1, 2):
        extra = onnx.TensorProto()
        extra.CopyFrom(w)
        extra.name = f"w{i}"
        m.graph.initializer.append(extra)
        m.graph.node.append(helper.make_node("MatMul", ["mel", f"w{i}"], [f"o{i}"], name=f"proj{i}"))
        m.graph.output.append(helper.make_tensor_value_info(f"o{i}", TensorProto.FLOAT, None))
    monkeypatch.setenv(MEMORY_BUDGET_ENV, "2M")
    with pytest.raises(ModelLoadError, match=r"its 3 stored tensors .* together would take 3.0 MiB"):
        load_onnx(_save(tmp_path / "m.onnx", m))


def test_external_weight_over_budget_is_not_read(tmp_path):
    """A 1.5 GiB external weight (a sparse file: no disk used) with a budget of 1 GiB: refused from its declared
    shape before onnx reads the file (today all 1.5 GiB are read); the process stays far below that."""
    (tmp_path / "w.bin").touch()
    os.truncate(tmp_path / "w.bin", 3 * GiB // 2)
    t = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[T, 3 * GiB // 2 // 4 // T],
                    data_location=TensorProto.EXTERNAL)
    t.external_data.add(key="location", value="w.bin")
    m = _weights_model(T)
    m.graph.initializer[0].CopyFrom(t)
    p = _save(tmp_path / "m.onnx", m)
    rc, err, rss, _ = _run_cli_measured(["report", p], env_extra={MEMORY_BUDGET_ENV: "1G"}, as_limit=4 * GiB)
    _one_line(rc, err, "initializer 'w'", "1.5 GiB", "over the memory budget of 1.0 GiB")
    assert rss is not None and rss < 1024, rss


SIZES = {"8G": 8 * GiB, "512M": 512 * 2**20, "512m": 512 * 2**20, "1.5GiB": 3 * GiB // 2, "64KB": 65536,
         "65536": 65536, " 2 T ": 2 * 2**40, "100b": 100, 4096: 4096}


@pytest.mark.parametrize("text", list(SIZES))
def test_parse_size(text):
    assert parse_size(text) == SIZES[text]


@pytest.mark.parametrize("text", ["", "abc", "-1", "0", "8X", "1e9", "G", "0.1b", True])
def test_parse_size_refuses(text):
    with pytest.raises(ConfigError) as e:
        parse_size(text, "--max-memory")
    assert "--max-memory" in str(e.value) and "Fix:" in str(e.value)


def test_bad_budget_env_var_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(MEMORY_BUDGET_ENV, "lots")
    rc = main(["report", str(_save(tmp_path / "m.onnx", _conv_bn()))])
    _one_line(rc, capsys.readouterr().err.strip(), "environment variable ZSQ_MAX_MEMORY 'lots' is not a size")


def test_set_memory_budget_validates_and_restores():
    with pytest.raises(ConfigError):
        set_memory_budget(0)
    assert set_memory_budget(123) is None and memory_budget() == 123
    assert set_memory_budget(None) == 123 and memory_budget() == DEFAULT_MEMORY_BUDGET
    assert onnx_safety._budget_override is None


# =========================================================================== 7: zsq bench --compare-onnx
def _external_conv(tmp_path: Path, location: str, length: int | None = None) -> Path:
    m = _conv_bn()
    w = m.graph.initializer[0]
    t = TensorProto(name=w.name, data_type=w.data_type, dims=list(w.dims), data_location=TensorProto.EXTERNAL)
    t.external_data.add(key="location", value=location)
    if length is not None:
        t.external_data.add(key="length", value=str(length))
    w.CopyFrom(t)
    (tmp_path / "model").mkdir(exist_ok=True)
    return _save(tmp_path / "model" / "m.onnx", m)


BENCH_BAD = {
    "outside the folder": (lambda d: _external_conv(d, "../secret.bin"), "with '..'"),
    "missing": (lambda d: _external_conv(d, "nope.bin"), "does not exist"),
    "short": (lambda d: ((d / "model").mkdir(), (d / "model" / "w.bin").write_bytes(b"\0" * 100),
                         _external_conv(d, "w.bin"))[-1], "its external data is 100 bytes"),
    "NaN weight": (lambda d: ((d / "model").mkdir(), _save(d / "model" / "m.onnx",
                                                           _conv_bn(weight=_nan_at((8, 64, 3), (0, 0, 0)))))[-1],
                   "NaN"),
    "9 GiB ConstantOfShape": (lambda d: ((d / "model").mkdir(), _save(d / "model" / "m.onnx", _cos_9gb()))[-1],
                              "over the memory budget"),
}


@pytest.mark.parametrize("case", list(BENCH_BAD))
def test_bench_checks_the_onnx_before_onnx_runtime_and_before_the_build(tmp_path, capsys, case):
    """`zsq bench BUILD --compare-onnx M.onnx` handed M.onnx to ONNX Runtime unchecked (a traceback, or a read
    outside the model's folder).  Now our checks run first - before the build is even loaded, so any build
    folder (here: one that does not exist) gives the ONNX's error."""
    (tmp_path / "secret.bin").write_bytes(b"\0" * 6144)
    make, needle = BENCH_BAD[case]
    model = make(tmp_path)
    rc = main(["bench", str(tmp_path / "no-build-here"), "--compare-onnx", str(model), "--runs", "1"])
    _one_line(rc, capsys.readouterr().err.strip(), needle, str(model))


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_model_path_that_is_no_regular_file_is_refused_unread(tmp_path, capsys, kind):
    """A FIFO blocked the read forever; /dev/zero reports size 0, passed the 2 GiB check and was read until
    MemoryError (7.7 GB peak in bench/adversarial.py)."""
    if kind == "fifo":
        model = tmp_path / "m.onnx"
        os.mkfifo(model)
    else:
        model = Path("/dev/zero")
    rc, err, out = _quantize(capsys, tmp_path, model, "--frames", str(T))
    _one_line(rc, err, "not a regular file")
    assert not out.exists()


def test_max_memory_flag_applies_to_its_command_only(tmp_path, capsys):
    model = _save(tmp_path / "m.onnx", _conv_bn())
    rc = main(["--max-memory", "1K", "report", str(model)])
    _one_line(rc, capsys.readouterr().err.strip(), "over the memory budget of 1.0 KiB", "--max-memory")
    assert memory_budget() == DEFAULT_MEMORY_BUDGET  # not left behind for the next command of this process
    assert main(["--max-memory", "lots", "report", str(model)]) == 2
    assert "--max-memory 'lots' is not a size" in capsys.readouterr().err
    assert main(["--max-memory", "64M", "report", str(model)]) == 0


def test_eval_checks_a_dynamic_length_model_at_its_longest_utterance(tmp_path, capsys):
    """A dynamic-T ONNX runs each utterance whole in `zsq eval`; the budget was checked only at --frames, so a
    long recording reached ONNX Runtime unchecked.  Now the model is sized at the manifest's longest WAV."""
    model = _save(tmp_path / "m.onnx", _conv_bn(T="T"))
    with wave.open(str(tmp_path / "long.wav"), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(np.zeros(16000 * 10, "<i2").tobytes())  # 10 s: 1001 frames, the mel alone 250 KiB
    man = tmp_path / "m.json"
    man.write_text(json.dumps({"audio_filepath": "long.wav", "text": "hi"}) + "\n")
    rc = main(["--max-memory", "100K", "eval", str(model), "--manifest", str(man)])
    _one_line(rc, capsys.readouterr().err.strip(), "[1, 64, 1001]", "over the memory budget")
    main(["--max-memory", "1M", "eval", str(model), "--manifest", str(man)])
    assert "memory budget" not in capsys.readouterr().err
