"""Size and BOPs from the graph, against the paper's Table 1 (QuartzNet-15x5)."""

import json

import pytest

from zsq_tvm.cost import MB, analyze_onnx, format_report, size_report

pytest.importorskip("zsq_tvm.zoo.nets.convasr")


@pytest.fixture(scope="module")
def qn15(tmp_path_factory):
    from zsq_tvm.zoo.toy import export_convasr

    path = tmp_path_factory.mktemp("qn15") / "quartznet15x5.onnx"
    export_convasr(path, arch="quartznet15x5", frames=64)
    return path


@pytest.fixture(scope="module")
def qn15_cost(qn15):
    return analyze_onnx(qn15, frames=1000)


def close(a, b, tol=0.05):
    return abs(a - b) / b <= tol


def test_quartznet15x5_params(qn15_cost):
    # 18.9 M parameters in NeMo's count; BN folded into one bias per channel
    assert 18.8e6 < qn15_cost.params < 19.0e6


def test_quartznet15x5_bops_match_paper(qn15_cost):
    r = size_report(qn15_cost, 8, 8)
    assert close(r["fp32"]["tbops"], 9.48), r["fp32"]["tbops"]
    assert close(r["quantized"]["tbops"], 0.61), r["quantized"]["tbops"]
    r6 = size_report(qn15_cost, 6, 8)
    assert close(r6["quantized"]["tbops"], 0.46)


def test_quartznet15x5_size_matches_paper(qn15_cost):
    r = size_report(qn15_cost, 8, 8)
    assert MB == 10**6
    assert close(r["fp32"]["size_mb"], 73.81, 0.03)
    assert close(r["quantized"]["size_mb"], 18.45, 0.03)
    assert close(size_report(qn15_cost, 6, 8)["quantized"]["size_mb"], 13.84, 0.03)
    assert r["compression"] == pytest.approx(4.0)


def test_bops_scale_with_frames(qn15):
    c = analyze_onnx(qn15, frames=500)
    full = analyze_onnx(qn15, frames=1000)
    assert c.params == full.params
    assert c.macs == pytest.approx(full.macs / 2, rel=0.01)


def test_cli_report_onnx_json(qn15, capsys):
    from zsq_tvm.cli import main

    assert main(["report", str(qn15), "--wbits", "6", "--abits", "8", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["quantized"]["wbits"] == 6 and close(rep["quantized"]["tbops"], 0.46)
    assert main(["report", str(qn15)]) == 0
    assert "BOPs" in capsys.readouterr().out


def test_format_report_text(qn15_cost):
    txt = format_report(size_report(qn15_cost, 8, 8))
    assert "W8A8" in txt and "MB" in txt
