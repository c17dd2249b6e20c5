"""`zsq eval`, the manifest reader, the shipped-model registry and the BN-keeping ONNX export.

Fixtures (committed, no TTS engine or Debian package needed):
``tests/fixtures/tts`` - 3 espeak-ng sentences; ``tests/fixtures/real`` - 12 recorded clips
(pocketsphinx-testdata, BSD-2).  WER thresholds were measured on this machine with margin:
quartznet-tiny 29.2 % / CER 7.2 %, quartznet5x5 16.7 % / CER 3.6 % on ``tts``; quartznet5x5
92 % / CER 43 % on ``real`` (the models were trained on TTS only).
"""
from __future__ import annotations

import json
import math
import wave
from pathlib import Path

import numpy as np
import pytest

from zsq_tvm import cli
from zsq_tvm.evaluate import ManifestError, evaluate, read_manifest, run_fixed, score

FIX = Path(__file__).resolve().parent / "fixtures"
TTS = FIX / "tts" / "tts.json"
REAL = FIX / "real" / "real.json"


def _wav(path: Path, sr=16000, ch=1, n=1600):
    with wave.open(str(path), "wb") as w:
        w.setnchannels(ch)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes(np.zeros(n * ch, "<i2").tobytes())
    return path


def _manifest(tmp_path: Path, lines) -> Path:
    p = tmp_path / "m.json"
    p.write_text("".join((l if isinstance(l, str) else json.dumps(l)) + "\n" for l in lines))
    return p


# --------------------------------------------------------------------------- manifest
def test_manifest_relative_paths_resolve_against_manifest_folder(tmp_path, monkeypatch):
    (tmp_path / "a").mkdir()
    _wav(tmp_path / "a" / "x.wav")
    m = _manifest(tmp_path, [{"audio_filepath": "a/x.wav", "text": "hi", "duration": 0.1}, ""])
    monkeypatch.chdir("/")
    rows = read_manifest(m)
    assert len(rows) == 1 and rows[0].audio_filepath == str(tmp_path / "a" / "x.wav") and rows[0].line == 1


@pytest.mark.parametrize("bad, needle", [
    ('{"audio_filepath": "x.wav", "text": ', "not valid JSON"),
    ('["x.wav", "hi"]', "expected a JSON object"),
    ('{"audio_filepath": "x.wav"}', "missing key(s) text"),
    ('{"text": "hi"}', "missing key(s) audio_filepath"),
    ('{"audio_filepath": "nope.wav", "text": "hi"}', "does not exist"),
    ('{"audio_filepath": "x8k.wav", "text": "hi"}', "sample rate 8000 Hz"),
    ('{"audio_filepath": "stereo.wav", "text": "hi"}', "2 channels"),
    ('{"audio_filepath": "x.wav", "text": 3}', "'text' must be a string"),
])
def test_manifest_errors_name_file_and_line(tmp_path, bad, needle):
    _wav(tmp_path / "x.wav")
    _wav(tmp_path / "x8k.wav", sr=8000)
    _wav(tmp_path / "stereo.wav", ch=2)
    m = _manifest(tmp_path, [{"audio_filepath": "x.wav", "text": "ok"}, "", bad])
    with pytest.raises(ManifestError) as e:
        read_manifest(m)
    msg = str(e.value)
    assert f"{m}:3" in msg and needle in msg and "\n" not in msg


def test_cli_manifest_error_is_one_line_exit_2(tmp_path, capsys):
    m = _manifest(tmp_path, ["{broken"])
    assert cli.main(["eval", "quartznet-tiny", "--manifest", str(m)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"{m}:1" in err and err.startswith("zsq: error:")


def test_unknown_model_lists_shipped(capsys):
    from zsq_tvm.zoo.models import SHIPPED, load_torch
    from zsq_tvm.core.errors import ModelLoadError

    assert {"quartznet5x5", "quartznet-tiny", "jasper-dr-small", "conformer-ctc-small"} <= set(SHIPPED)
    with pytest.raises(ModelLoadError, match="quartznet5x5"):
        load_torch("no-such-model")
    assert cli.main(["eval", "no-such-model", "--manifest", str(TTS)]) == 2
    assert "quartznet-tiny" in capsys.readouterr().err


# --------------------------------------------------------------------------- scoring / chunking
def test_score_matches_jiwer_and_metrics():
    import jiwer

    from zsq_tvm import metrics

    refs = ["the cat sat", "on the mat", "a b c d"]
    hyps = ["the cat sad", "", "a x b c d e"]
    r = score(refs, hyps)
    assert r["jiwer_checked"]
    assert r["wer"] == pytest.approx(jiwer.wer(refs, hyps)) == pytest.approx(metrics.wer(refs, hyps)[0])
    assert r["cer"] == pytest.approx(jiwer.cer(refs, hyps)) == pytest.approx(metrics.cer(refs, hyps))
    assert r["n_words"] == 10


def test_run_fixed_pads_and_chunks_without_truncating():
    calls = []

    def infer(x):  # stride-2 "model": output frame t = mean of input frames 2t, 2t+1
        calls.append(x.shape)
        return x[0].reshape(x.shape[1], -1, 2).mean(-1).T  # [T/2, F]

    mel = np.arange(3 * 250, dtype=np.float32).reshape(3, 250)
    out, n = run_fixed(infer, mel, 100)
    assert n == 3 and all(c == (1, 3, 100) for c in calls)
    assert out.shape == (125, 3)  # all 250 frames covered, padding dropped
    np.testing.assert_allclose(out[:, 0], mel[0].reshape(-1, 2).mean(-1))
    out, n = run_fixed(infer, mel[:, :37], 100)
    assert n == 1 and out.shape == (math.ceil(37 / 2), 3)


# --------------------------------------------------------------------------- end to end
def test_wer_on_tts_fixture_quartznet_tiny():
    r = evaluate("quartznet-tiny", TTS, threads=1, progress=False)
    assert r["n_utterances"] == 3 and r["n_words"] == 24 and r["jiwer_checked"]
    assert r["wer"] <= 0.45 and r["cer"] <= 0.15  # measured 0.292 / 0.072


def test_wer_on_tts_fixture_quartznet5x5_static_frames():
    # 256 frames < the longest clip (286 frames): exercises zero-padding and chunking of a fixed-T model
    r = evaluate("quartznet5x5", TTS, frames_pad=256, threads=1, progress=False)
    assert r["frames"] == 256 and r["n_chunked"] == 1
    assert r["wer"] <= 0.40 and r["cer"] <= 0.12  # measured 0.250 / 0.072 (0.167 / 0.036 unchunked, T=300)


def test_real_fixture_quartznet5x5():
    rows = [json.loads(l) for l in REAL.read_text().splitlines()]
    assert len(rows) == 12 and all((REAL.parent / r["audio_filepath"]).exists() for r in rows)
    r = evaluate("quartznet5x5", REAL, threads=1, progress=False)
    assert r["n_utterances"] == 12 and r["n_words"] == 101
    assert r["wer"] < 0.99 and r["cer"] < 0.55  # measured 0.921 / 0.431 (TTS-trained models on real speech)


def test_cli_eval_json_shipped_model(capsys):
    assert cli.main(["eval", "quartznet-tiny", "--manifest", str(TTS), "--json", "--threads", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"wer", "cer", "n_utterances", "n_words"} <= set(out)
    assert out["n_utterances"] == 3 and out["runtime"] == "torch" and 0 <= out["wer"] <= 0.45


def test_eval_onnx_matches_torch(tmp_path):
    from zsq_tvm.zoo.nets.export import export_onnx

    p = export_onnx("quartznet-tiny", tmp_path / "t.onnx", frames=200)
    a = evaluate(str(p), TTS, threads=1, progress=False)
    b = evaluate("quartznet-tiny", TTS, frames_pad=200, threads=1, progress=False)
    assert a["runtime"] == "onnxruntime" and a["frames"] == 200
    assert a["wer"] == pytest.approx(b["wer"]) and a["cer"] == pytest.approx(b["cer"])


# --------------------------------------------------------------------------- export / shipped names
def test_export_onnx_keeps_batchnorm(tmp_path):
    import onnx
    import onnxruntime as ort
    import torch

    from zsq_tvm.zoo.models import load_torch
    from zsq_tvm.zoo.nets.export import count_batchnorm, export_onnx

    p = export_onnx("quartznet-tiny", tmp_path / "m.onnx")
    proto = onnx.load(str(p))
    assert count_batchnorm(proto) > 0
    assert [i.name for i in proto.graph.input] == ["mel"] and [o.name for o in proto.graph.output] == ["logits"]
    assert sorted(x.name for x in tmp_path.iterdir()) == ["m.onnx"]  # atomic: no temp file left
    x = np.random.default_rng(0).standard_normal((1, 64, 160)).astype(np.float32)
    y = ort.InferenceSession(str(p)).run(None, {"mel": x})[0]
    assert y.shape == (1, 80, 29)
    with torch.no_grad():
        ref = load_torch("quartznet-tiny")(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(y, ref, atol=1e-3)


def test_quantize_accepts_shipped_name_and_integer_build_eval(tmp_path, capsys):
    """`zsq quantize quartznet-tiny` (exported on the fly) -> compile -> `zsq eval BUILD`: float mel ->
    the build's input quantize -> integer kernels -> logits -> greedy CTC."""
    from zsq_tvm.api import QuantizedModel

    q, b = tmp_path / "q", tmp_path / "b"
    assert cli.main(["quantize", "quartznet-tiny", "--frames", "300", "-o", str(q), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["frames"] == 300
    qm = QuantizedModel.load(q)
    assert qm.manifest["source"]["path"] == "shipped:quartznet-tiny" and qm.vocab is not None
    assert cli.main(["compile", str(q), "-o", str(b)]) == 0
    capsys.readouterr()
    assert cli.main(["eval", str(b), "--manifest", str(TTS), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["runtime"] == "integer-build" and r["frames"] == 300 and r["n_utterances"] == 3
    assert r["wer"] <= 0.5 and r["cer"] <= 0.15  # measured 0.333 / 0.081 (FP32: 0.292 / 0.072)


@pytest.mark.skipif(not Path("/usr/share/pocketsphinx/test/data/librivox").exists(),
                    reason="Debian pocketsphinx-testdata not installed (the committed fixture is used instead)")
def test_real_split_rebuilds_the_committed_fixture(tmp_path):
    from lab.real import build

    man = build(tmp_path)
    got = [json.loads(l) for l in man.read_text().splitlines()]
    want = [json.loads(l) for l in REAL.read_text().splitlines()]
    assert [(r["audio_filepath"], r["text"]) for r in got] == [(r["audio_filepath"], r["text"]) for r in want]
    for r in got:
        assert (tmp_path / r["audio_filepath"]).read_bytes() == (REAL.parent / r["audio_filepath"]).read_bytes()
