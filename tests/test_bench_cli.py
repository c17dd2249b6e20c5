"""`zsq bench BUILD --compare-onnx MODEL.onnx`: zsq vs ONNX Runtime FP32 / INT8 QDQ, one process, same input.

Checks the JSON (every engine timed ``runs`` times, medians/min consistent with the samples, ratios =
other median / zsq median) and the user errors (missing ONNX, ONNX of another input shape): exit 2,
one line naming cause and fix.
"""

import json
import statistics

import pytest

pytest.importorskip("tvm")
pytest.importorskip("onnxruntime")

import zsq_tvm  # noqa: E402
from zsq_tvm import cli  # noqa: E402
from zsq_tvm.zoo.nets.export import export_onnx  # noqa: E402


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    d = tmp_path_factory.mktemp("bench")
    onnx_path = export_onnx("quartznet-tiny", d / "tiny.onnx", frames=48)
    q = zsq_tvm.quantize(str(onnx_path), zsq_tvm.QuantConfig(frames=48))
    zsq_tvm.compile(q, target="host").save(d / "build")
    other = export_onnx("quartznet-tiny", d / "tiny64.onnx", frames=64)
    return d / "build", onnx_path, other


def test_bench_json(built, capsys):
    bdir, onnx_path, _ = built
    rc = cli.main(["bench", str(bdir), "--compare-onnx", str(onnx_path), "--threads", "1", "--runs", "3", "--json"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    assert set(res["median_ms"]) == {"zsq_int8", "ort_fp32", "ort_int8_qdq"}, res.get("ort_int8_qdq_error")
    for k, s in res["samples_ms"].items():
        assert len(s) == 3 and all(v > 0 for v in s)
        assert res["median_ms"][k] == pytest.approx(statistics.median(s))
        assert res["min_ms"][k] == pytest.approx(min(s))
    for k, r in res["ratio_vs_zsq"].items():
        assert r == pytest.approx(res["median_ms"][k] / res["median_ms"]["zsq_int8"])
    assert res["input_shape"] == [1, 64, 48] and res["threads"] == 1


def test_bench_user_errors(built, capsys, tmp_path):
    bdir, _, other = built
    assert cli.main(["bench", str(bdir), "--compare-onnx", str(tmp_path / "nope.onnx")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "Fix:" in err and len(err.strip().splitlines()) == 1
    assert cli.main(["bench", str(bdir), "--compare-onnx", str(other)]) == 2
    err = capsys.readouterr().err
    assert "64" in err and "48" in err and "Fix:" in err
    assert cli.main(["bench", str(bdir), "--compare-onnx", str(other), "--threads", "0"]) == 2
