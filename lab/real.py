"""The ``real`` split: every clip of real recorded English with a reference transcript we have offline.

    python3 -m lab.real -o real/          # -> real/real.json + real/wav/*.wav (16 kHz mono PCM16)

Sources (Debian ``pocketsphinx-testdata``, ``/usr/share/pocketsphinx/test/data``; BSD-2-Clause,
Carnegie Mellon University / Alpha Cephei, see ``/usr/share/doc/pocketsphinx-testdata/copyright``):

* ``librivox/*.wav`` - 5 read-speech utterances from LibriVox "Sense and Sensibility" (one male
  reader), transcripts in ``librivox/transcription``;
* ``cards/*.wav`` - 5 short "playing card" phrases, transcripts in ``cards/cards.transcription``;
* ``goforward.raw`` - "go forward ten meters" (the transcript pocketsphinx's own unit tests assert);
* ``tidigits/dhd.2934z.raw`` - a TIDIGITS digit string; the TIDIGITS file name spells the digits
  (``z`` = zero, ``o`` = oh), so the reference is "two nine three four zero".

``.raw`` files are headerless 16 kHz mono little-endian PCM16 (how pocketsphinx's tests read them).
Not used: ``numbers.raw`` and ``something.raw`` (no reference transcript anywhere in the package)
and the ``tidigits/*.mfc`` / ``goforward.mfc`` files (cepstra, not audio).

The PyPI ``moonshine-voice`` wheel (0.1.5, MIT) ships wav assets (``beckett.wav``,
``two_cities.wav``, ``endgame_nagg_nell.wav``, ``clone-test.wav``, ``success.wav``, ``error.wav``) but
no transcripts for them, so none of its audio is in this split.

Texts are normalised to the model vocabulary with :func:`lab.corpus.normalize_text`.
"""
from __future__ import annotations

import argparse
import json
import re
import wave
from pathlib import Path
from typing import List

import numpy as np

from lab.corpus import normalize_text

PS_DATA = Path("/usr/share/pocketsphinx/test/data")
SAMPLE_RATE = 16000

#: raw clips whose transcripts are not in a transcription file (see the module docstring)
RAW_CLIPS = {
    "goforward.raw": "go forward ten meters",
    "tidigits/dhd.2934z.raw": "two nine three four zero",
}


def _read_sphinx_transcription(path: Path) -> dict:
    """``<s> words </s> (uttid)`` lines -> {uttid: words}."""
    out = {}
    for line in path.read_text().splitlines():
        m = re.match(r"\s*(?:<s>)?(.*?)(?:</s>)?\s*\(([^)]+)\)\s*$", line)
        if m:
            out[m.group(2).strip()] = m.group(1).strip()
    return out


def _read_audio(path: Path) -> np.ndarray:
    """int16 samples at 16 kHz mono from a wav (any rate / channels, resampled) or a 16 kHz .raw file."""
    if path.suffix == ".raw":
        return np.frombuffer(path.read_bytes(), dtype="<i2").copy()
    with wave.open(str(path), "rb") as w:
        sr, ch, width = w.getframerate(), w.getnchannels(), w.getsampwidth()
        raw = w.readframes(w.getnframes())
    if width != 2:
        raise ValueError(f"{path}: {8 * width}-bit wav not supported")
    x = np.frombuffer(raw, dtype="<i2").reshape(-1, ch).astype(np.float32).mean(axis=1)
    if sr != SAMPLE_RATE:
        from math import gcd

        from scipy.signal import resample_poly

        g = gcd(sr, SAMPLE_RATE)
        x = resample_poly(x, SAMPLE_RATE // g, sr // g)
    return np.clip(np.round(x), -32768, 32767).astype("<i2")


def _write_wav(path: Path, x: np.ndarray) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(np.asarray(x, dtype="<i2").tobytes())


def collect(data_dir: Path = PS_DATA) -> List[tuple]:
    """``[(source path, id, raw transcript, origin)]`` of every usable clip (empty if the package is missing)."""
    items = []
    tr = data_dir / "librivox" / "transcription"
    if tr.exists():
        for uid, text in _read_sphinx_transcription(tr).items():
            items.append((data_dir / "librivox" / f"{uid}.wav", f"librivox-{uid[-4:]}", text, "librivox"))
    tr = data_dir / "cards" / "cards.transcription"
    if tr.exists():
        for uid, text in _read_sphinx_transcription(tr).items():
            items.append((data_dir / "cards" / f"{uid}.wav", f"cards-{uid}", text, "cards"))
    for rel, text in RAW_CLIPS.items():
        items.append((data_dir / rel, Path(rel).stem.replace(".", "-"), text, rel.split("/")[0].split(".")[0]))
    return [it for it in items if it[0].exists()]


def build(out_dir, data_dir: Path = PS_DATA) -> Path:
    """Write ``out_dir/wav/*.wav`` and ``out_dir/real.json`` (paths relative to the manifest)."""
    out = Path(out_dir)
    (out / "wav").mkdir(parents=True, exist_ok=True)
    items = collect(Path(data_dir))
    if not items:
        raise SystemExit(f"no clips found under {data_dir} (apt-get install pocketsphinx-testdata)")
    rows = []
    for src, uid, text, origin in items:
        x = _read_audio(src)
        rel = f"wav/{uid}.wav"
        _write_wav(out / rel, x)
        rows.append({"audio_filepath": rel, "duration": round(len(x) / SAMPLE_RATE, 3), "text": normalize_text(text),
                     "source": f"pocketsphinx-testdata:{src.relative_to(data_dir)}", "origin": origin})
    man = out / "real.json"
    tmp = man.with_suffix(".json.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(man)
    return man


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python3 -m lab.real", description=__doc__.split("\n\n")[0])
    ap.add_argument("-o", "--output", required=True, help="output folder (real.json + wav/)")
    ap.add_argument("--data-dir", default=str(PS_DATA), help="pocketsphinx test data folder")
    a = ap.parse_args(argv)
    man = build(a.output, Path(a.data_dir))
    rows = [json.loads(l) for l in man.read_text().splitlines()]
    print(f"real: {len(rows)} utterances, {sum(r['duration'] for r in rows) / 60:.2f} min -> {man}")


if __name__ == "__main__":
    main()
