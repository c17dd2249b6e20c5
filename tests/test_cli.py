"""CLI round trip: quantize -> compile -> check -> run -> report, each with --json."""

import json

import numpy as np
import pytest

from _zsq_models import bias_overflow_onnx, micro_onnx
from conftest import reseal
from zsq_tvm.cli import main

FRAMES = 64


def cli(capsys, *argv):
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    return micro_onnx(tmp_path_factory.mktemp("m") / "micro.onnx", frames=FRAMES)


def test_round_trip_json(micro, tmp_path, capsys):
    q, b = tmp_path / "q", tmp_path / "b"
    calib = tmp_path / "calib"
    calib.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        np.save(calib / f"{i}.npy", rng.normal(size=(64, 80)).astype(np.float32))

    rc, out, err = cli(capsys, "quantize", micro, "--calib", calib, "--calib-method", "percentile",
                       "--wbits", 6, "--abits", 8, "--frames", FRAMES, "-o", q, "--json")
    assert rc == 0, err
    res = json.loads(out)
    assert res["wbits"] == 6 and res["frames"] == FRAMES and res["input_scale"] > 0
    assert res["report"]["quantized"]["wbits"] == 6
    man = json.loads((q / "manifest.json").read_text())
    assert man["calib"]["method"] == "percentile" and man["calib"]["num_inputs"] == 3

    rc, out, err = cli(capsys, "compile", q, "--target", "host", "-o", b, "--json")
    assert rc == 0, err
    res = json.loads(out)
    assert res["target"] == "host" and "llvm" in res["tvm_target"]
    assert (b / "model.so").exists() and (b / "manifest.json").exists()

    rc, out, err = cli(capsys, "check", b, "--json")
    rep = json.loads(out)
    if rep.get("available") is False:
        assert rc == 2 and "not available" in err
    else:
        assert rc == 0 and rep["ok"] is True, rep

    mel = rng.uniform(-1, 1, (64, FRAMES)).astype(np.float32)
    np.save(tmp_path / "mel.npy", mel)
    rc, out, err = cli(capsys, "run", b, "--input", tmp_path / "mel.npy", "--output", tmp_path / "logits.npy",
                       "--decode", "--json")
    assert rc == 0, err
    res = json.loads(out)
    logits = np.load(tmp_path / "logits.npy")
    assert res["shape"] == list(logits.shape) == [1, FRAMES // 2, 29]
    assert isinstance(res["text"][0], str)

    rc, out, err = cli(capsys, "run", b, "--input", tmp_path / "mel.npy", "--decode")
    assert rc == 0 and out.strip() == res["text"][0].strip()
    assert logits.dtype == np.float32
    rc, out, err = cli(capsys, "run", b, "--input", tmp_path / "mel.npy", "--output", tmp_path / "codes.npy", "--codes",
                       "--decode")  # the integer output codes, before the output dequantize
    codes = np.load(tmp_path / "codes.npy")
    assert rc == 0 and codes.dtype == np.int16 and out.splitlines()[-1].strip() == res["text"][0].strip()
    scale = json.loads((b / "quant.json").read_text())["output"][0]["scale"]
    assert np.array_equal(codes.astype(np.float32) * np.float32(scale), logits)

    rc, out, err = cli(capsys, "report", q, "--json")
    assert rc == 0, err
    rep = json.loads(out)
    assert rep["frames"] == 1000 and rep["quantized"]["wbits"] == 6
    assert rep["fp32"]["bops"] == pytest.approx(rep["quantized"]["bops"] * 32 * 32 / (6 * 8))
    rc, out, _ = cli(capsys, "report", q)
    assert rc == 0 and "BOPs" in out


def test_run_wrong_frames_is_a_clear_error(micro, tmp_path, capsys):
    q, b = tmp_path / "q", tmp_path / "b"
    assert cli(capsys, "quantize", micro, "--frames", FRAMES, "--num-batches", 2, "-o", q)[0] == 0
    assert cli(capsys, "compile", q, "-o", b)[0] == 0
    np.save(tmp_path / "mel.npy", np.zeros((64, FRAMES * 2), np.float32))
    rc, _, err = cli(capsys, "run", b, "--input", tmp_path / "mel.npy")
    assert rc == 2 and "--frames 128" in err and len(err.strip().splitlines()) == 1
    rc, _, err = cli(capsys, "run", b, "--input", tmp_path / "missing.npy")
    assert rc == 2 and "does not exist" in err
    rc, _, err = cli(capsys, "compile", q, "-o", b)
    assert rc == 2 and "already exists" in err


def test_bias_past_int32_is_a_clear_error(tmp_path, capsys):
    """A bias that cannot be an int32 code (its layer's input calibrates to a ~1e-8 range, so the bias is ~1e11
    accumulator steps) is a BiasOverflowError naming the layer and the scales, with a fix -- not numpy's bare
    ValueError -- and the CLI prints that one line, exits 2 and leaves no output directory."""
    import zsq_tvm
    from zsq_tvm.core.overflow import AccumulatorOverflowError, BiasOverflowError

    m = bias_overflow_onnx(tmp_path / "bo.onnx", frames=32)
    with pytest.raises(BiasOverflowError, match=r"bias of layer .* \(the bias add after nn\.conv1d#1\) cannot be "
                                                r"represented in int32") as ei:
        zsq_tvm.quantize(m, zsq_tvm.QuantConfig(frames=32, num_batches=1))
    msg = str(ei.value)
    assert isinstance(ei.value, AccumulatorOverflowError) and isinstance(ei.value, zsq_tvm.ZsqError)
    assert "S_x = " in msg and "S_w = " in msg and "(|code| > 2^31-1)" in msg and "Fix: calibrate" in msg

    out = tmp_path / "q"
    rc, _, err = cli(capsys, "quantize", m, "--frames", 32, "--num-batches", 1, "-o", out)
    assert rc == 2 and err.startswith("zsq: error: bias of layer") and err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bo.onnx"]  # no output (or temporary) directory


def test_export_nemo_registered(capsys, tmp_path):
    rc, out, err = cli(capsys, "export-nemo", "quartznet15x5", "-o", tmp_path / "x.onnx")
    # either the lead's exporter exists and works, or a one-line "not available yet"
    assert rc == 0 or (rc == 2 and "not available" in err)


def test_help_and_version(capsys):
    assert main(["--version"]) == 0
    assert "zsq-tvm" in capsys.readouterr().out
    assert main([]) == 2


def test_check_fails_on_float_module(micro, tmp_path, capsys):
    """A build whose module computes in float: `zsq check` lists violations and exits non-zero."""
    import tvm

    from zsq_tvm.frontend.onnx_import import import_onnx

    q, b = tmp_path / "q", tmp_path / "b"
    assert cli(capsys, "quantize", micro, "--frames", FRAMES, "--num-batches", 2, "-o", q)[0] == 0
    assert cli(capsys, "compile", q, "-o", b)[0] == 0
    rc, out, _ = cli(capsys, "check", b)
    assert rc == 0 and "integer-only: ok" in out
    fmod = import_onnx(micro, frames=FRAMES)[0]
    (b / "module.json").write_text(tvm.ir.save_json(fmod))
    rc, _, err = cli(capsys, "check", b)  # a file changed since zsq wrote the folder: refused as such
    assert rc == 2 and "module.json" in err
    reseal(b)  # as if zsq had written the float module: the checker itself must find the float
    rc, out, _ = cli(capsys, "check", b)
    assert rc == 1 and "VIOLATIONS" in out and "float32" in out
