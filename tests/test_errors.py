"""Every bad input: one-line message naming cause and fix, exit status 2, nothing left behind."""

import os

import numpy as np
import pytest

from _zsq_models import micro_onnx, rank2_onnx, truncated_copy, unsupported_onnx
from zsq_tvm.cli import main
from zsq_tvm.core.errors import (BitWidthError, InputShapeError, ModelLoadError, TargetError, UnsupportedOpsError,
                            ZsqError)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    return {
        "micro": micro_onnx(d / "micro.onnx"),
        "unsupported": unsupported_onnx(d / "unsupported.onnx"),
        "rank2": rank2_onnx(d / "rank2.onnx"),
        "truncated": truncated_copy(d / "micro.onnx", d / "truncated.onnx", 0.6),
        "garbage": _write(d / "garbage.onnx", b"\x08\x07this is not an onnx model\xff\xfe" * 10),
        "empty": _write(d / "empty.onnx", b""),
    }


def _write(p, data):
    p.write_bytes(data)
    return p


def run_cli(capsys, *argv):
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def assert_one_line_error(rc, err, *needles):
    assert rc == 2, err
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("zsq: error: ") and "Fix:" in lines[0], lines[0]
    for n in needles:
        assert n.lower() in lines[0].lower(), (n, lines[0])


def leftovers(d):
    return sorted(p.name for p in d.iterdir())


def quantize_fails(capsys, tmp_path, model, *extra):
    out = tmp_path / "q"
    before = leftovers(tmp_path)
    rc, out_s, err = run_cli(capsys, "quantize", model, "--frames", 64, "-o", out, *extra)
    assert not out.exists()
    assert leftovers(tmp_path) == before, "temporary directory left behind"
    return rc, err


def test_missing_file(capsys, tmp_path):
    rc, err = quantize_fails(capsys, tmp_path, tmp_path / "nope.onnx")
    assert_one_line_error(rc, err, "does not exist", "nope.onnx")


@pytest.mark.parametrize("kind", ["truncated", "garbage", "empty"])
def test_corrupt_protobuf(capsys, tmp_path, models, kind):
    rc, err = quantize_fails(capsys, tmp_path, models[kind])
    assert_one_line_error(rc, err, kind + ".onnx", "re-export")


def test_unsupported_ops_listed_all_at_once(capsys, tmp_path, models):
    rc, err = quantize_fails(capsys, tmp_path, models["unsupported"])
    assert_one_line_error(rc, err, "LSTM", "Atan", "supported ops:")
    with pytest.raises(UnsupportedOpsError) as ei:
        import zsq_tvm

        zsq_tvm.quantize(models["unsupported"], frames=32)
    assert {"LSTM", "Atan"} <= set(ei.value.unsupported)
    assert all(ei.value.unsupported[op] for op in ei.value.unsupported)  # node names given


def test_wrong_input_rank(capsys, tmp_path, models):
    rc, err = quantize_fails(capsys, tmp_path, models["rank2"])
    assert_one_line_error(rc, err, "rank 2", "[B, F, T]")


@pytest.mark.parametrize("flag,value", [("--wbits", 1), ("--wbits", 9), ("--abits", 0), ("--abits", 16)])
def test_bits_out_of_range(capsys, tmp_path, models, flag, value):
    rc, err = quantize_fails(capsys, tmp_path, models["micro"], flag, value)
    assert_one_line_error(rc, err, flag.strip("-"), "2..8")


def test_bits_not_an_integer(capsys, tmp_path, models):
    rc, err = quantize_fails(capsys, tmp_path, models["micro"], "--wbits", "eight")
    assert rc == 2 and "not an integer" in err


def test_dynamic_time_without_frames_is_one_build_for_every_length(capsys, tmp_path, models):
    import json

    out = tmp_path / "q"
    rc, stdout, err = run_cli(capsys, "quantize", models["micro"], "-o", out)
    assert rc == 0, err
    assert "any length" in stdout
    m = json.loads((out / "manifest.json").read_text())
    assert m["frames"] is None and m["io"]["inputs"][0]["shape"][2] == "T"


def test_a_graph_that_fixes_its_length_needs_frames(capsys, tmp_path):
    """A dynamic-T ONNX whose graph fixes its length once imported (the Conformer: reshapes and attention over
    T): one line naming the ops and --frames, nothing written."""
    import torch

    from zsq_tvm.zoo.nets.conformer import ConformerCTCModel
    from zsq_tvm.zoo.nets.export import export_onnx

    torch.manual_seed(0)
    m = ConformerCTCModel("tiny", params=dict(d_model=16, n_layers=1, n_heads=2, ff_expansion=2, conv_kernel=5,
                                              subsampling_channels=4)).eval()
    path = export_onnx(m, tmp_path / "conformer.onnx")  # no frames: a dynamic time axis
    out = tmp_path / "q"
    rc, _, err = run_cli(capsys, "quantize", path, "-o", out, "--num-batches", "1")
    assert_one_line_error(rc, err, "fixes its length", "reshape", "--frames")
    assert not out.exists()


@pytest.mark.parametrize("frames", [0, -5])
def test_bad_frames(capsys, tmp_path, models, frames):
    rc, err = quantize_fails(capsys, tmp_path, models["micro"], "--frames", frames)
    assert_one_line_error(rc, err, "frames")


def test_unknown_target(capsys, tmp_path):
    rc, _, err = run_cli(capsys, "compile", tmp_path, "--target", "tpu9000", "-o", tmp_path / "b")
    assert_one_line_error(rc, err, "tpu9000", "host", "llvm")
    assert not (tmp_path / "b").exists()
    with pytest.raises(TargetError):
        from zsq_tvm.targets import get_target

        get_target("cuda-sm99")


def test_existing_output_dir_is_refused(capsys, tmp_path, models):
    out = tmp_path / "q"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    rc, _, err = run_cli(capsys, "quantize", models["micro"], "--frames", 64, "-o", out)
    assert_one_line_error(rc, err, "already exists", "--overwrite")
    assert (out / "keep.txt").read_text() == "mine"


def test_calibration_dir_errors(capsys, tmp_path, models):
    empty = tmp_path / "calib_empty"
    empty.mkdir()
    rc, err = quantize_fails(capsys, tmp_path, models["micro"], "--calib", empty)
    assert_one_line_error(rc, err, "no .npy")
    wrong = tmp_path / "calib_wrong"
    wrong.mkdir()
    np.save(wrong / "a.npy", np.zeros((80, 100), np.float32))
    rc, err = quantize_fails(capsys, tmp_path, models["micro"], "--calib", wrong)
    assert_one_line_error(rc, err, "[F=64, T]")
    rc, err = quantize_fails(capsys, tmp_path, models["micro"], "--calib", tmp_path / "missing")
    assert_one_line_error(rc, err, "random")


def test_bad_calib_method(capsys, tmp_path, models):
    rc, err = quantize_fails(capsys, tmp_path, models["micro"], "--calib-method", "kl")
    assert_one_line_error(rc, err, "minmax", "percentile")


def test_not_an_artifact_dir(capsys, tmp_path):
    (tmp_path / "x").mkdir()
    for cmd in (["compile", tmp_path / "x", "-o", tmp_path / "b"], ["check", tmp_path / "x"],
                ["run", tmp_path / "x", "--input", "m.npy"], ["report", tmp_path / "x"]):
        rc, _, err = run_cli(capsys, *cmd)
        assert_one_line_error(rc, err, "manifest.json")


def test_errors_are_exceptions_with_cause_and_fix():
    e = BitWidthError("wbits=9 is outside 2..8", "pass 8")
    assert isinstance(e, ZsqError) and e.cause and e.fix and "\n" not in str(e)
    assert issubclass(ModelLoadError, ZsqError) and issubclass(InputShapeError, ZsqError)
    with pytest.raises(BitWidthError):
        import zsq_tvm

        zsq_tvm.QuantConfig(wbits=9).validate()
    assert os.environ.get("ZSQ_NEVER_SET") is None
