"""Build an English speech corpus offline from TTS engines and Debian text sources.

No speech data set can be downloaded on our machines, so the reference models are
trained on synthetic speech: several TTS engines and many voices, varied rate and
pitch, speed perturbation and additive noise.  Everything is driven by a seed.

Text (``collect_texts``): WordNet example sentences (Debian ``wordnet-base``), the King
James Bible (``bible-kjv``) and fortune cookies (``fortunes-min``), normalised to the
model vocabulary (lower-case a-z, space, apostrophe) and cut to 3-16 words.

Splits (``synthesize``), NeMo JSON-lines manifests with paths relative to the manifest:

* ``train``  - training voices, training sentences (speed/noise augmented);
* ``dev``, ``test`` - training voices, sentences never used in training;
* ``test-heldout-voice`` - test sentences spoken by voices never used in training.

Usage::

    python3 -m lab.corpus texts -o texts.txt
    python3 -m lab.corpus synth --texts texts.txt -o corpus/ --train-hours 20 --workers 16
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import wave
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np

from zsq_tvm.audio.mel import resample as _resample
from zsq_tvm.metrics import normalize_text

SAMPLE_RATE = 16000

# espeak-ng accents x voice variants.  West Midlands accent and a disjoint set of variants
# are held out, as is flite's "slt" voice.
ESPEAK_TRAIN_ACCENTS = ["en-us", "en", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-rp", "en-029", "en-us-nyc"]
ESPEAK_TRAIN_VARIANTS = ["", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "klatt", "klatt2",
                         "klatt3", "Andy", "Annie", "david", "ed", "john", "linda", "paul", "steph", "robert",
                         "max", "edward", "grandpa", "belinda", "quincy", "adam"]
ESPEAK_HELDOUT = [("en-gb-x-gbcwmd", v) for v in ["", "m8", "f5", "klatt4", "Alex", "Lee", "norbert", "aunty"]]
FLITE_TRAIN = ["kal16", "awb", "rms"]
FLITE_HELDOUT = ["slt"]


def _chunks(words: List[str], lo=3, hi=16) -> Iterable[List[str]]:
    while len(words) > hi:
        cut = random.randint(max(lo, 6), hi)
        yield words[:cut]
        words = words[cut:]
    if len(words) >= lo:
        yield words


def collect_texts(seed: int = 0) -> List[str]:
    """Sentences from the offline sources, normalised and de-duplicated, shuffled by ``seed``."""
    random.seed(seed)
    raw: List[str] = []
    for pos in ("noun", "verb", "adj", "adv"):
        p = Path(f"/usr/share/wordnet/data.{pos}")
        if p.exists():
            raw += re.findall(r'"([^"]{8,200})"', p.read_text(errors="ignore"))
    if shutil.which("bible"):
        out = subprocess.run(["bible", "-f", "Gen1:1-Rev22:21"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            verse = line.split(" ", 1)[1] if " " in line else ""
            raw += re.split(r"[.;:?!]", verse)
    for name in ("fortunes", "literature", "riddles"):
        p = Path("/usr/share/games/fortunes") / name
        if p.exists():
            for cookie in p.read_text(errors="ignore").split("\n%\n"):
                raw += re.split(r"[.;:?!]\s", cookie.replace("\n", " "))
    seen, texts = set(), []
    for r in raw:
        words = normalize_text(r).split()
        for ch in _chunks(words):
            t = " ".join(ch)
            if t not in seen and len(t) >= 10:
                seen.add(t)
                texts.append(t)
    random.shuffle(texts)
    return texts


def _speak(engine: str, voice: str, text: str, rate: float, pitch: int, tmpdir: str) -> np.ndarray:
    from zsq_tvm.audio.mel import load_wav, wav_bytes_to_float
    if engine == "espeak":
        accent, variant = voice.split("+", 1) if "+" in voice else (voice, "")
        v = accent + (f"+{variant}" if variant else "")
        wpm = int(round(165 * rate))
        data = subprocess.run(["espeak-ng", "-v", v, "-s", str(wpm), "-p", str(pitch), "--stdout", text],
                              capture_output=True, check=True).stdout
        x, sr = wav_bytes_to_float(data)
        return _resample(x, sr)
    path = os.path.join(tmpdir, f"f{os.getpid()}.wav")
    subprocess.run(["flite", "-voice", voice, "--setf", f"duration_stretch={1.0 / rate:.3f}",
                    "--setf", f"int_f0_target_mean={pitch}", "-t", text, "-o", path], capture_output=True,
                   check=True)
    import wave as _w
    with _w.open(path) as w:
        sr = w.getframerate()
        x = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32768.0
    return _resample(x, sr)


def _trim(x: np.ndarray, thresh=1e-3, pad=1600) -> np.ndarray:
    idx = np.nonzero(np.abs(x) > thresh)[0]
    if len(idx) == 0:
        return x
    return x[max(0, idx[0] - pad): idx[-1] + pad]


def _augment(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Speed perturbation (resampling by 0.9/1.1, as Kaldi/NeMo do) and additive noise at 10-35 dB SNR."""
    from scipy.signal import resample_poly
    r = rng.random()
    if r < 0.2:
        x = resample_poly(x, 10, 9).astype(np.float32)  # 0.9x speed
    elif r < 0.4:
        x = resample_poly(x, 10, 11).astype(np.float32)  # 1.1x speed
    if rng.random() < 0.5:
        snr = rng.uniform(10, 35)
        p = float(np.mean(x ** 2)) + 1e-12
        noise = rng.standard_normal(len(x)).astype(np.float32)
        if rng.random() < 0.5:  # brown-ish noise: integrate and high-pass a little
            noise = np.cumsum(noise) ; noise -= np.convolve(noise, np.ones(64) / 64, mode="same")
        noise *= np.sqrt(p / (np.mean(noise ** 2) + 1e-12) / 10 ** (snr / 10))
        x = x + noise
    return np.clip(x, -1.0, 1.0)


def _write_wav(path: str, x: np.ndarray) -> None:
    with wave.open(path, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes((np.clip(x, -1, 1) * 32767).astype("<i2").tobytes())


def _job(args):
    idx, split, engine, voice, text, rate, pitch, augment, out_dir, seed = args
    rng = np.random.default_rng(seed)
    try:
        x = _trim(_speak(engine, voice, text, rate, pitch, tempfile.gettempdir()))
    except (subprocess.CalledProcessError, ValueError) as e:
        return None
    if augment:
        x = _augment(x, rng)
    rel = f"wav/{split}/{idx:07d}.wav"
    _write_wav(os.path.join(out_dir, rel), x)
    return {"audio_filepath": rel, "duration": round(len(x) / SAMPLE_RATE, 3), "text": text,
            "voice": f"{engine}:{voice}"}


# Sentences each training round may use: 20 h of training audio takes about 27,700 of them, so rounds
# 0-3 of the ~119,500-sentence pool never share a sentence (round 4 wraps around to round 0's).
ROUND_STRIDE = 30000


def plan_jobs(texts: Sequence[str], out_dir: str, train_hours: float, n_dev=400, n_test=600, n_heldout=600,
              seed: int = 0, flite_share: float = 0.25, train_round: int = 0) -> List[tuple]:
    """Assign sentences to splits and voices.  Sentences of dev/test never appear in train.

    ``train_round`` > 0 gives a *fresh* training split for continued training: sentences from
    ``train_round * ROUND_STRIDE`` on in the training pool, with their own voices, prosody and augmentation
    (a seed of their own).  The start wraps around the pool (``ROUND_STRIDE`` x rounds > pool size): with the
    shipped text pool (119,566 training sentences) round 4 starts at sentence 434 and re-reads most of rounds
    0 and 1's sentences in new audio.  dev, test and test-heldout-voice stay exactly those of round 0 (their draws
    come first and do not depend on the round), so WER stays comparable across rounds.  Round 0 is the
    corpus the shipped models were first trained on.
    """
    if train_round < 0:
        raise ValueError(f"train_round must be >= 0, got {train_round}")
    rng = random.Random(seed)
    texts = list(texts)
    dev, test = texts[:n_dev], texts[n_dev:n_dev + n_test]
    train_pool = texts[n_dev + n_test:]
    espeak_train = [f"{a}+{v}" if v else a for a in ESPEAK_TRAIN_ACCENTS for v in ESPEAK_TRAIN_VARIANTS]
    heldout = [("espeak", f"{a}+{v}" if v else a) for a, v in ESPEAK_HELDOUT] + [("flite", v) for v in FLITE_HELDOUT]

    def voice(r):
        if r.random() < flite_share:
            return "flite", r.choice(FLITE_TRAIN)
        return "espeak", r.choice(espeak_train)

    def prosody(r, engine):
        rate = r.uniform(0.8, 1.25)
        pitch = r.randint(25, 75) if engine == "espeak" else r.randint(90, 180)
        return rate, pitch

    jobs, idx = [], 0
    for split, pool in (("dev", dev), ("test", test)):
        for t in pool:
            e, v = voice(rng)
            jobs.append((idx, split, e, v, t, *prosody(rng, e), False, out_dir, seed * 1000003 + idx))
            idx += 1
    for t in test[:n_heldout]:
        e, v = rng.choice(heldout)
        jobs.append((idx, "test-heldout-voice", e, v, t, *prosody(rng, e), False, out_dir, seed * 1000003 + idx))
        idx += 1
    # Round 0 continues the evaluation splits' random stream (the shipped corpus); a later round draws
    # from a stream of its own (a str seed is hashed with SHA-512: the same on every machine).
    trng = rng if train_round == 0 else random.Random(f"zsq-corpus/{seed}/train-round/{train_round}")
    job_seed = seed * 1000003 + train_round * 1_000_000_007
    start = (train_round * ROUND_STRIDE) % max(len(train_pool), 1)
    # measured: ~0.26 s per word at rate 1 plus ~0.35 s of trimmed silence per utterance
    budget_s, spent, i = train_hours * 3600.0, 0.0, 0
    while spent < budget_s and train_pool:
        t = train_pool[(start + i) % len(train_pool)]
        i += 1
        e, v = voice(trng)
        rate, pitch = prosody(trng, e)
        spent += 0.35 + len(t.split()) / (3.9 * rate)
        jobs.append((idx, "train", e, v, t, rate, pitch, True, out_dir, job_seed + idx))
        idx += 1
    return jobs


def synthesize(texts: Sequence[str], out_dir: str, train_hours: float = 20.0, workers: int = 2, seed: int = 0,
               time_limit: float = 0.0, train_round: int = 0, **kw) -> Dict[str, str]:
    """Synthesize all splits into ``out_dir`` and write ``{split}.json`` manifests; return their paths.

    ``time_limit`` (seconds, 0 = none) stops early with what is done: the evaluation splits
    come first in the job list, so only the amount of training audio is cut.
    """
    import time
    from tqdm import tqdm
    t0 = time.time()
    out = Path(out_dir)
    jobs = plan_jobs(texts, str(out), train_hours, seed=seed, train_round=train_round, **kw)
    for split in {j[1] for j in jobs}:
        (out / "wav" / split).mkdir(parents=True, exist_ok=True)
    rows: Dict[str, List[dict]] = {}
    with ProcessPoolExecutor(workers) as ex:
        for r, j in zip(tqdm(ex.map(_job, jobs, chunksize=64), total=len(jobs), desc="synthesizing",
                             mininterval=5), jobs):
            if r is not None:
                rows.setdefault(j[1], []).append(r)
            if time_limit and time.time() - t0 > time_limit:
                print(f"time limit reached after {len(rows.get('train', []))} training utterances", flush=True)
                ex.shutdown(wait=False, cancel_futures=True)
                break
    paths = {}
    for split, rs in rows.items():
        p = out / f"{split}.json"
        with open(p, "w") as f:
            for r in rs:
                f.write(json.dumps(r) + "\n")
        paths[split] = str(p)
        hours = sum(r["duration"] for r in rs) / 3600
        print(f"{split}: {len(rs)} utterances, {hours:.2f} h", flush=True)
    return paths


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python3 -m lab.corpus", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("texts", help="collect and normalise sentences")
    t.add_argument("-o", "--output", required=True)
    t.add_argument("--seed", type=int, default=0)
    s = sub.add_parser("synth", help="synthesize the splits")
    s.add_argument("--texts", required=True)
    s.add_argument("-o", "--output", required=True)
    s.add_argument("--train-hours", type=float, default=20.0)
    s.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--time-limit", type=float, default=0.0, help="seconds; stop early keeping what is done")
    s.add_argument("--train-round", type=int, default=0,
                   help="0: the shipped models' training split; N > 0: a fresh training split for continued "
                        f"training: new voices, prosody and augmentation; sentences from N x {ROUND_STRIDE} in the pool, "
                        "wrapping round to earlier rounds' sentences past its end (evaluation splits unchanged)")
    a = ap.parse_args(argv)
    if a.cmd == "texts":
        texts = collect_texts(a.seed)
        Path(a.output).write_text("\n".join(texts) + "\n")
        print(f"{len(texts)} sentences -> {a.output}")
    else:
        texts = [l.strip() for l in open(a.texts) if l.strip()]
        if a.train_round < 0:
            ap.error(f"--train-round must be >= 0, got {a.train_round}")
        synthesize(texts, a.output, a.train_hours, a.workers, a.seed, a.time_limit, a.train_round)


if __name__ == "__main__":
    main()
