"""Bad audio in a ``zsq eval`` manifest: each gets one ``ManifestError`` naming ``manifest:line``, the file
and the fix (a sox command) - found while reading the manifest, before any model is loaded.  Audio is
never resampled or down-mixed silently (``zsq_tvm.evaluate._check_wav``).  Valid edge cases (one 10 ms
frame; a 15 s clip cut into chunks) evaluate without error.
"""

from __future__ import annotations

import json
import struct
import wave
from pathlib import Path

import numpy as np
import pytest

from zsq_tvm import evaluate as ev
from zsq_tvm.cli import main
from zsq_tvm.evaluate import ManifestError, read_manifest


def _pcm(path: Path, n=1600, sr=16000, ch=1, width=2) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(ch)
        w.setsampwidth(width)
        w.setframerate(sr)
        x = (np.random.default_rng(0).standard_normal(n * ch) * 3000).astype(np.int16)
        if width == 1:
            w.writeframes((x // 256 + 128).astype(np.uint8).tobytes())
        elif width == 2:
            w.writeframes(x.astype("<i2").tobytes())
        else:  # 24 / 32-bit: little-endian int32, top bytes kept
            x32 = x.astype(np.int32) << 16
            w.writeframes(b"".join(int(v).to_bytes(4, "little", signed=True)[4 - width:] for v in x32))
    return path


def _riff(path: Path, fmt_tag: int, bits: int, data: bytes, sr=16000, ch=1, declared: int | None = None,
          extra_fmt: bytes = b"") -> Path:
    block = ch * bits // 8
    fmt = struct.pack("<HHIIHH", fmt_tag, ch, sr, sr * block, block, bits) + extra_fmt
    size = len(data) if declared is None else declared
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", size) + data
    path.write_bytes(b"RIFF" + struct.pack("<I", 4 + len(body)) + body)
    return path


def _extensible(path: Path) -> Path:
    ext = struct.pack("<HHI", 22, 16, 4) + bytes.fromhex("0100000000001000800000aa00389b71")  # PCM subformat GUID
    return _riff(path, 0xFFFE, 16, np.zeros(1600, "<i2").tobytes(), extra_fmt=ext)


def _long_sparse(path: Path, seconds: int) -> Path:
    """A complete, valid 16 kHz PCM file of ``seconds`` of silence, written sparse (no disk used)."""
    n = seconds * 16000
    _riff(path, 1, 16, b"", declared=2 * n)
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size + 2 * n)
    return path


CASES = {
    "8 kHz": (lambda p: _pcm(p, sr=8000), "sample rate 8000 Hz"),
    "44.1 kHz": (lambda p: _pcm(p, sr=44100), "sample rate 44100 Hz"),
    "stereo": (lambda p: _pcm(p, ch=2), "2 channels"),
    "8-bit": (lambda p: _pcm(p, width=1), "8-bit samples"),
    "24-bit": (lambda p: _pcm(p, width=3), "24-bit samples"),
    "32-bit int": (lambda p: _pcm(p, width=4), "32-bit samples"),
    "float32": (lambda p: _riff(p, 3, 32, np.zeros(1600, "<f4").tobytes()), "IEEE float samples"),
    "extensible": (_extensible, "WAVE_FORMAT_EXTENSIBLE"),
    "mp3 named .wav": (lambda p: p.write_bytes(b"ID3\x03\x00" + bytes(500)) or p, "is not a readable PCM WAV file"),
    "0-byte file": (lambda p: p.write_bytes(b"") or p, "is not a readable PCM WAV file"),
    "zero-length": (lambda p: _pcm(p, n=0), "has 0 samples (empty)"),
    "under 10 ms": (lambda p: _pcm(p, n=100), "has 100 samples, shorter than one 10 ms"),
    "truncated": (lambda p: _riff(p, 1, 16, bytes(200), declared=32000), "is truncated"),
    "streamed size 0xFFFFFFFF": (lambda p: _riff(p, 1, 16, bytes(3200), declared=0xFFFFFFFF), "is truncated"),
    "31 minutes": (lambda p: _long_sparse(p, 31 * 60), "1,860 s long, over the 1800 s"),
    "missing": (lambda p: p, "does not exist"),
    "a directory": (lambda p: p.mkdir() or p, "is not a regular file"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_audio_names_manifest_line(tmp_path, name):
    make, needle = CASES[name]
    _pcm(tmp_path / "ok.wav")
    make(tmp_path / "bad.wav")
    m = tmp_path / "m.json"
    m.write_text(json.dumps({"audio_filepath": "ok.wav", "text": "fine"}) + "\n\n"
                 + json.dumps({"audio_filepath": "bad.wav", "text": "bad"}) + "\n")
    with pytest.raises(ManifestError) as e:
        read_manifest(m)
    msg = str(e.value)
    assert msg.startswith(f"{m}:3: ") and needle in msg and "Fix:" in msg and "\n" not in msg, msg
    if name not in ("missing", "a directory", "zero-length", "under 10 ms"):
        assert "bad.wav" in msg


def test_cli_eval_bad_audio_exit_2_one_line(tmp_path, capsys):
    _riff(tmp_path / "f.wav", 3, 32, np.zeros(1600, "<f4").tobytes())
    m = tmp_path / "m.json"
    m.write_text(json.dumps({"audio_filepath": "f.wav", "text": "x"}) + "\n")
    assert main(["eval", "quartznet-tiny", "--manifest", str(m)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("zsq: error:") and "\n" not in err and f"{m}:1" in err and "sox f.wav -r 16000" in err


def test_edge_lengths_evaluate(tmp_path):
    """One mel frame (160 samples) and a 15 s clip cut into two 10 s chunks: results, no crash."""
    _pcm(tmp_path / "tiny.wav", n=160)
    _pcm(tmp_path / "long.wav", n=15 * 16000)
    m = tmp_path / "m.json"
    m.write_text("".join(json.dumps({"audio_filepath": f, "text": "a b"}) + "\n" for f in ("tiny.wav", "long.wav")))
    res = ev.evaluate("quartznet-tiny", m, frames_pad=1000, progress=False)
    assert res["n_utterances"] == 2 and res["n_chunked"] == 1 and abs(res["audio_seconds"] - 15.01) < 0.05
    assert 0 <= res["wer"] and np.isfinite(res["cer"])


def test_load_wav_refuses_truncated_file(tmp_path):
    """The direct reader (not only the manifest check) refuses a file shorter than its header says."""
    from zsq_tvm.audio.mel import load_wav

    ok = load_wav(_riff(tmp_path / "ok.wav", 1, 16, np.arange(800, dtype="<i2").tobytes()))
    assert ok.shape == (800,) and ok[1] == np.float32(1 / 32768)
    with pytest.raises(ValueError, match="truncated: its header declares 16000 samples but the file holds 100"):
        load_wav(_riff(tmp_path / "cut.wav", 1, 16, bytes(200), declared=32000))
