"""Any length, audio in, text out: window plans, block-wise resampling, the stream, ``zsq transcribe``.

One quartznet5x5 build (T = 500, input-length mask) serves every test that runs a model: the shipped clip is
467 frames, one window; three clips in a row (15 s) take five windows.
"""

from __future__ import annotations

import json
import re
import wave

import numpy as np
import pytest

from zsq_tvm.audio.io import SAMPLE_RATE, StreamResampler, audio_info, read_pcm
from zsq_tvm.cli import main
from zsq_tvm.streaming import HOP_SAMPLES, WindowPlan, format_srt, format_vtt, words_to_segments, Word
from zsq_tvm.zoo.models import MODELS_DIR

CLIP = MODELS_DIR.parent / "clips" / "small_device.flac"
SENTENCE = "speech recognition on a small device open the door and wait for me"
T = 500


# --------------------------------------------------------------------------- pure parts
@pytest.mark.parametrize("frames,stride,context", [(500, 2, 100), (1000, 2, 200), (997, 2, 200), (400, 4, 80),
                                                   (64, 1, 0), (33, 3, 5)])
def test_window_plan_tiles_every_length(frames, stride, context):
    plan = WindowPlan(frames, stride, context)
    for total in list(range(1, 3 * frames, 7)) + [frames - 1, frames, frames + 1, 10 * frames + 3]:
        ws = plan.windows(total)
        assert ws[0].keep_from == 0 and ws[-1].keep_to == total
        for a, b in zip(ws, ws[1:]):
            assert a.keep_to == b.keep_from  # no gap, no overlap
        for i, w in enumerate(ws):
            assert 0 <= w.start <= w.keep_from < w.keep_to <= w.start + w.valid <= total
            assert w.valid <= frames and (w.keep_from - w.start) % stride == 0
            assert w.start == 0 or w.keep_from - w.start >= plan.left  # left context, or the recording's start
            if i < len(ws) - 1:  # not the last: a full window with right context
                assert w.valid == frames and w.start + w.valid - w.keep_to >= plan.left
        if total <= frames:
            assert len(ws) == 1 and ws[0] == (0, total, 0, total)


def test_window_plan_refuses_a_context_that_keeps_nothing():
    from zsq_tvm.core.errors import ConfigError

    with pytest.raises(ConfigError, match="leaves no kept frames"):
        WindowPlan(100, 2, 50)


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_blockwise_resampling_equals_whole_file(rate):
    from scipy.signal import resample_poly

    rng = np.random.default_rng(rate)
    x = rng.standard_normal(rate * 2 + 13).astype(np.float32)
    g = np.gcd(rate, SAMPLE_RATE)
    whole = resample_poly(x, SAMPLE_RATE // g, rate // g).astype(np.float32)
    rs, parts, i = StreamResampler(rate), [], 0
    while i < len(x):
        n = int(rng.integers(1, rate // 3))
        parts.append(rs.push(x[i:i + n]))
        i += n
    parts.append(rs.push(np.zeros(0, np.float32), final=True))
    assert np.array_equal(np.concatenate(parts), whole)


def test_segments_and_subtitle_formats():
    words = [Word("a", 0.0, 0.2), Word("b", 0.3, 0.5), Word("c", 2.0, 2.4), Word("d", 2.5, 3.7261)]
    segs = words_to_segments(words, max_gap=0.6)
    assert [s["text"] for s in segs] == ["a b", "c d"]
    assert format_srt(segs) == ("1\n00:00:00,000 --> 00:00:00,500\na b\n\n"
                                "2\n00:00:02,000 --> 00:00:03,726\nc d\n\n")
    assert format_vtt(segs).startswith("WEBVTT\n\n00:00:00.000 --> 00:00:00.500\na b\n\n")
    long = words_to_segments([Word(str(i), 3725.0 + i, 3725.5 + i) for i in range(20)], max_words=14)
    assert [len(s["text"].split()) for s in long] == [6, 6, 6, 2]  # max_seconds 6 cuts first
    assert format_srt(long[:1]).startswith("1\n01:02:05,000 --> 01:02:10,500\n")


# --------------------------------------------------------------------------- a model
@pytest.fixture(scope="module")
def build_dir(tmp_path_factory):
    import zsq_tvm

    q = zsq_tvm.quantize("quartznet5x5", zsq_tvm.QuantConfig(frames=T, time_mask=True, progress=False))
    return zsq_tvm.compile(q, target="host").save(tmp_path_factory.mktemp("transcribe") / "build")


@pytest.fixture(scope="module")
def build(build_dir):
    from zsq_tvm.build import Build

    return Build.load(build_dir)


def _mel(pcm):
    import torch

    from zsq_tvm.audio.mel import MelFrontend

    feats, flen = MelFrontend()(torch.from_numpy(pcm)[None])
    return feats[0, :, :int(flen[0])].numpy()


def test_one_window_equals_the_whole_utterance_bit_for_bit(build):
    pcm, _ = read_pcm(CLIP)
    mel = _mel(pcm)
    L = mel.shape[1]
    assert L <= T
    padded = np.zeros((1, mel.shape[0], T), np.float32)
    padded[0, :, :L] = mel
    whole = build.run(padded, length=L)[0]
    s = build.stream(keep_logits=True, segment=False)
    s.push(pcm)
    s.finish()
    t = s.transcript()
    assert np.array_equal(t.logits, whole[:-(-L // 2)])
    assert t.text == SENTENCE == build.decode(whole[None], length=L)[0]


def test_windows_stitch_on_output_frames(build):
    pcm, _ = read_pcm(CLIP)
    gap = np.zeros(SAMPLE_RATE // 2, np.float32)
    long = np.concatenate([pcm, gap, pcm, gap, pcm])  # 15 s: five windows of 5 s, 3 s kept in each
    s = build.stream(keep_logits=True, segment=False)
    s.push(long)
    s.finish()
    assert len(s._inner.plan.windows(len(long) // HOP_SAMPLES)) == 5
    t = s.transcript()
    assert t.text == " ".join([SENTENCE] * 3) and len(t.logits) == -(-(len(long) // HOP_SAMPLES) // 2)


def test_stream_cuts_at_pauses_and_10ms_pieces_equal_offline(build):
    pcm, _ = read_pcm(CLIP)
    gap = np.zeros(SAMPLE_RATE // 2, np.float32)
    long = np.concatenate([gap, pcm, gap, pcm, gap, gap, pcm, gap])
    offline = build.stream(keep_logits=True)
    offline.push(long)
    last = offline.finish()
    a = offline.transcript()
    assert a.text == " ".join([SENTENCE] * 3)
    assert len(offline.segments) == 3  # one utterance each, the silence between them left out
    for (s0, e0), (s1, _) in zip(offline.segments, offline.segments[1:]):
        assert s0 < e0 < s1
    # an utterance cut out with 0.1 s of silence around it decodes as that utterance alone
    s0, e0 = offline.segments[0]
    alone = build.stream(keep_logits=True, segment=False)
    alone.push(long[s0 * HOP_SAMPLES:e0 * HOP_SAMPLES])
    alone.finish()
    n0 = len(alone.transcript().logits)
    assert np.array_equal(a.logits[:n0], alone.transcript().logits)

    live = build.stream(keep_logits=True)
    got = []
    for i in range(0, len(long), 160):
        got += live.push(long[i:i + 160])
    assert got, "a live stream returns words before the end of the audio"
    got += live.finish()
    b = live.transcript()
    assert np.array_equal(a.logits, b.logits) and got == a.words and last == a.words[len(a.words) - len(last):]
    assert all(w.start < w.end for w in a.words) and all(x.end <= y.start for x, y in zip(a.words, a.words[1:]))
    assert a.words[-1].end <= len(long) / SAMPLE_RATE
    with pytest.raises(Exception, match="after finish"):
        live.push(pcm)


# --------------------------------------------------------------------------- zsq transcribe
def _write(path, x, rate, channels=1):
    import soundfile as sf

    sf.write(str(path), np.stack([x] * channels, 1) if channels > 1 else x, rate, subtype="PCM_16")
    return path


def test_transcribe_wav_flac_stereo_8khz(build_dir, tmp_path, capsys):
    from scipy.signal import resample_poly

    from zsq_tvm.metrics import cer

    pcm, _ = read_pcm(CLIP)
    wav = _write(tmp_path / "clip.wav", pcm, 16000)
    stereo = _write(tmp_path / "stereo44.wav", resample_poly(pcm, 441, 160).astype(np.float32), 44100, channels=2)
    narrow = _write(tmp_path / "narrow8k.wav", resample_poly(pcm, 1, 2).astype(np.float32), 8000)
    assert main(["transcribe", str(build_dir), str(CLIP), str(wav), str(stereo), str(narrow), "--json"]) == 0
    out, err = capsys.readouterr()
    res = {r["audio"]: r for r in json.loads(out)["results"]}
    assert res[str(CLIP)]["text"] == res[str(wav)]["text"] == res[str(stereo)]["text"] == SENTENCE
    assert f"{stereo}: 2 channels mixed down to mono" in err and f"{stereo}: resampled from 44100 Hz" in err
    assert f"{narrow}: resampled from 8000 Hz to 16000 Hz" in err and res[str(narrow)]["notices"]
    assert cer([SENTENCE], [res[str(narrow)]["text"]]) < 0.3  # telephone band: the model never heard it
    for r in res.values():
        assert 0 <= r["words"][0]["start"] and r["words"][-1]["end"] <= r["duration"]


def test_transcribe_subtitles_to_files(build_dir, tmp_path, capsys):
    out = tmp_path / "subs"
    out.mkdir()
    assert main(["transcribe", str(build_dir), str(CLIP), "--format", "srt", "--output-dir", str(out)]) == 0
    srt = (out / "small_device.srt").read_text()
    m = re.fullmatch(r"1\n(\d\d):(\d\d):(\d\d),(\d{3}) --> (\d\d):(\d\d):(\d\d),(\d{3})\n(.*)\n\n", srt)
    assert m and m.group(9) == SENTENCE
    t0, t1 = (int(m.group(i + 2)) + int(m.group(i + 3)) / 1000 for i in (1, 5))
    assert 0 <= t0 < t1 <= 4.68
    assert main(["transcribe", str(build_dir), str(CLIP), "--format", "vtt", "-o", str(tmp_path / "a.vtt")]) == 0
    assert (tmp_path / "a.vtt").read_text().startswith("WEBVTT\n\n")
    capsys.readouterr()
    # an existing output is refused before any audio or model work, and left as it was
    assert main(["transcribe", str(build_dir), str(CLIP), "--format", "srt", "--output-dir", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err and (out / "small_device.srt").read_text() == srt


def test_hostile_and_broken_audio_is_one_line_exit_2(build_dir, tmp_path, capsys):
    notaudio = tmp_path / "x.wav"
    notaudio.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" * 10)
    # a header that declares ~2^32 bytes of samples over 64 real ones: libsndfile clamps it to the bytes present
    liar = tmp_path / "liar.wav"
    with wave.open(str(liar), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
        w.writeframes(np.zeros(64, "<i2").tobytes())
    b = bytearray(liar.read_bytes())
    b[40:44] = (0xFFFFFFF0).to_bytes(4, "little")
    liar.write_bytes(bytes(b))
    for bad, msg in [(notaudio, "not a readable audio file"), (tmp_path / "missing.flac", "does not exist"),
                     (tmp_path, "is not a file")]:
        out = tmp_path / "o.txt"
        assert main(["transcribe", str(build_dir), str(bad), "-o", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert msg in err and "Fix:" in err and len(err.splitlines()) == 1 and not out.exists()
    info = audio_info(liar)
    pcm, _ = read_pcm(liar)
    assert len(pcm) == info.frames == 64


def test_shipped_name_is_built_once_and_cached(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    args = ["transcribe", "quartznet-tiny", str(CLIP), "--frames", "300"]
    assert main(args) == 0
    first = capsys.readouterr()
    assert "building quartznet-tiny" in first.err and "cached the build in" in first.err
    (cached,) = (tmp_path / "cache" / "zsq-tvm" / "builds").iterdir()
    assert main(args) == 0
    second = capsys.readouterr()
    assert "building" not in second.err and second.out == first.out
    assert main(["check", str(cached)]) == 0  # the cached build is an ordinary, verified build folder


def test_a_header_cannot_make_the_reader_allocate_big_blocks(tmp_path, monkeypatch):
    """768 kHz x 64 channels declared: a 10 s block would be 2 GB, allocated before the data is read."""
    import soundfile as sf

    from zsq_tvm.audio.io import MAX_BLOCK_SAMPLES, pcm_blocks

    p = tmp_path / "wide.wav"
    sf.write(str(p), np.zeros((100, 64), np.float32), 768000, subtype="PCM_16")
    seen, blocks = [], sf.SoundFile.blocks

    def spy(self, *a, **k):
        seen.append(k["blocksize"])
        return blocks(self, *a, **k)

    monkeypatch.setattr(sf.SoundFile, "blocks", spy)
    out = list(pcm_blocks(audio_info(p)))
    assert seen and seen[0] * 64 <= MAX_BLOCK_SAMPLES and sum(len(b) for b in out) == 3  # 100 / 48 samples
