"""``zsq eval``: word/character error rate of a model on a NeMo manifest.

    zsq eval quartznet5x5 --manifest corpus/test.json --json
    zsq eval model.onnx   --manifest real.json [--runtime tvm --frames 1000]
    zsq eval q/ | build/  --manifest test.json          # integer-only quantized / compiled model

MODEL is a shipped name (``zsq_tvm.zoo.models.SHIPPED``, run in torch FP32), a ``.pt`` checkpoint,
an ``.onnx`` file (ONNX Runtime FP32, or TVM FP32 with ``--runtime tvm``), a quantized directory
(compiled for this CPU on the fly) or a build directory.

Where float ends
----------------
Audio -> log-mel is computed **once per utterance, in float32**, by
:class:`zsq_tvm.audio.mel.MelFrontend` (NeMo's preprocessor) - for every kind of model, so all
of them see the same features.  Only the valid frames are kept (as in training).  For an
integer build the next step is the build's own *input quantize* (``Build.run``: the
calibrated input scale maps the float mel to int8); everything after that runs integer
kernels up to the logits, and greedy CTC decoding needs only their integer argmax.

Fixed-length models
-------------------
ONNX files with a static time axis, quantized directories and builds take exactly ``T``
frames.  An utterance of ``L <= T`` frames is zero-padded to ``T`` (the mel is normalised, so
0 is the per-feature mean, like NeMo's ``pad_to``); the output frames that belong to the
padding (``T'`` scaled by ``L / T``) are dropped before decoding.  An utterance of ``L > T``
frames is **never truncated**: it is zero-padded to a multiple of ``T``, cut into
independent chunks of ``T`` frames, each chunk runs separately, and the logits are
concatenated in order before decoding.  A word cut by a chunk boundary may be misrecognised;
the JSON result counts such utterances (``n_chunked``).  Quantize with ``--frames`` at least
the longest utterance to avoid chunking.  ``--frames-pad T`` applies the same padding /
chunking to a dynamic-length model (torch, dynamic ONNX) so that its WER is comparable with a
build compiled for ``T`` frames.

Scoring
-------
References are normalised to the model vocabulary with
:func:`zsq_tvm.metrics.normalize_text` (lower case, a-z, space, apostrophe); hypotheses
are greedy CTC decodes with runs of spaces squeezed.  WER and CER come from ``jiwer`` and are
cross-checked against :mod:`zsq_tvm.metrics` (corpus-level: total edits / total reference
words or characters).
"""
from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from zsq_tvm import artifacts, metrics
from zsq_tvm.core.errors import ConfigError, ModelLoadError, ZsqError
from zsq_tvm.ctc import QUARTZNET_VOCAB, Vocab, _class_axis_last, greedy_decode
from zsq_tvm.frontend.onnx_import import model_info
from zsq_tvm.metrics import normalize_text
from zsq_tvm.zoo.models import checkpoint_path, is_shipped, load_torch

__all__ = ["ManifestError", "Utterance", "read_manifest", "compute_mel", "run_fixed", "load_runner", "evaluate",
           "score"]

RUNTIMES = ("auto", "torch", "onnxruntime", "tvm")
SAMPLE_RATE = 16000
HOP_LENGTH = 160  # samples per mel frame (zsq_tvm.audio.mel.MelConfig.hop_length): 100 frames per second


class ManifestError(ZsqError):
    """A manifest line is not valid JSON, misses keys, or names a missing / unusable audio file."""


@dataclass
class Utterance:
    audio_filepath: str
    text: str
    line: int
    duration: float | None = None
    samples: int | None = None  # from the WAV header (read_manifest with check_audio)


# --------------------------------------------------------------------------- manifest
_WAV_FORMATS = {3: "IEEE float samples", 6: "A-law samples", 7: "mu-law samples", 0x11: "IMA ADPCM samples",
                0x55: "MP3 data", 0xFFFE: "WAVE_FORMAT_EXTENSIBLE (multichannel / >16-bit) samples"}
#: longest utterance ``zsq eval`` accepts: the log-mel of the whole file is computed at once (about
#: 0.7 MB of memory per second of audio, measured), so an hour-long recording would need ~2.5 GB
MAX_AUDIO_SECONDS = 1800
#: shortest: one 10 ms hop (160 samples) gives the first valid mel frame
MIN_AUDIO_SAMPLES = 160
_SOX = "sox {name} -r 16000 -c 1 -b 16 out.wav"


def _wav_format_code(path: Path) -> int | None:
    """The ``fmt `` chunk's format tag of a RIFF/WAVE file (read from its first 4 KiB), or None."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return None
    if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    pos = 12
    while pos + 8 <= len(head):
        cid, size = head[pos:pos + 4], int.from_bytes(head[pos + 4:pos + 8], "little")
        if cid == b"fmt " and pos + 10 <= len(head):
            return int.from_bytes(head[pos + 8:pos + 10], "little")
        pos += 8 + size + (size & 1)
    return None


def _check_wav(path: Path, where: str) -> int:
    """16 kHz mono 16-bit PCM, complete, at least one mel frame and at most ``MAX_AUDIO_SECONDS`` long;
    otherwise :class:`ManifestError` naming ``where`` (``manifest:line``), the file and the fix.  Audio is
    never resampled or down-mixed silently."""
    fix = "convert it with: " + _SOX.format(name=path.name)
    try:
        with wave.open(str(path), "rb") as w:
            sr, ch, width, n = w.getframerate(), w.getnchannels(), w.getsampwidth(), w.getnframes()
    except (wave.Error, EOFError) as e:
        code = _wav_format_code(path)
        what = f"has {_WAV_FORMATS[code]}" if code in _WAV_FORMATS else \
            f"has WAV format code {code}" if code is not None else "is not a readable PCM WAV file"
        raise ManifestError(f"{where}: {str(path)!r} {what} ({e or type(e).__name__}); zsq needs 16 kHz mono "
                            "16-bit PCM", fix) from None
    problems = []
    if sr != SAMPLE_RATE:
        problems.append(f"sample rate {sr} Hz")
    if ch != 1:
        problems.append(f"{ch} channels")
    if width != 2:
        problems.append(f"{8 * width}-bit samples")
    if problems:
        raise ManifestError(f"{where}: {str(path)!r} has {', '.join(problems)}; zsq needs 16 kHz mono 16-bit PCM", fix)
    declared = n * ch * width
    if declared > path.stat().st_size - 44:  # 44 = the smallest RIFF/fmt/data header
        raise ManifestError(f"{where}: {str(path)!r} is truncated: its header declares {n:,} samples but the file "
                            f"holds at most {max(0, path.stat().st_size - 44) // (ch * width):,}",
                            "re-copy the file, or rewrite its header with: sox in.wav out.wav")
    if n < MIN_AUDIO_SAMPLES:
        raise ManifestError(f"{where}: {str(path)!r} has {n} samples" + (" (empty)" if n == 0 else "")
                            + f", shorter than one 10 ms mel frame ({MIN_AUDIO_SAMPLES} samples)",
                            "remove this line from the manifest or fix the audio file")
    if n > MAX_AUDIO_SECONDS * SAMPLE_RATE:
        raise ManifestError(f"{where}: {str(path)!r} is {n / SAMPLE_RATE:,.0f} s long, over the {MAX_AUDIO_SECONDS} s "
                            "zsq eval accepts per utterance (its log-mel is computed in one piece)",
                            f"split it into shorter utterances, e.g. sox {path.name} part.wav trim 0 600 : newfile "
                            ": restart")
    return n


def read_manifest(path, check_audio: bool = True) -> list[Utterance]:
    """Read a NeMo JSON-lines manifest strictly.

    Every non-blank line must be a JSON object with a string ``audio_filepath`` and a string
    ``text``; relative paths resolve against the manifest's folder.  With ``check_audio`` each
    file must exist and be a 16 kHz mono 16-bit PCM WAV.  Any problem raises
    :class:`ManifestError` naming ``file:line``.
    """
    p = Path(os.fspath(path))
    if not p.is_file():
        raise ManifestError(f"manifest {str(p)!r} does not exist" if not p.exists() else
                            f"manifest {str(p)!r} is not a file",
                            "pass a NeMo JSON-lines manifest (one {\"audio_filepath\", \"text\"} object per line)")
    base = p.resolve().parent
    rows: list[Utterance] = []
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise ManifestError(f"manifest {str(p)!r} is not UTF-8 text ({e.reason} at byte {e.start})",
                            "save the manifest as UTF-8 JSON lines") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{p}:{n}"
        try:
            r = json.loads(line)
        except json.JSONDecodeError as e:
            raise ManifestError(f"{where}: not valid JSON ({e.msg} at column {e.colno})",
                                "write one JSON object per line: {\"audio_filepath\": ..., \"text\": ...}") from None
        if not isinstance(r, dict):
            raise ManifestError(f"{where}: expected a JSON object, got {type(r).__name__}",
                                "write one JSON object per line: {\"audio_filepath\": ..., \"text\": ...}")
        missing = [k for k in ("audio_filepath", "text") if k not in r]
        if missing:
            raise ManifestError(f"{where}: missing key(s) {', '.join(missing)}",
                                "every line needs \"audio_filepath\" and \"text\" (NeMo manifest format)")
        for k in ("audio_filepath", "text"):
            if not isinstance(r[k], str):
                raise ManifestError(f"{where}: {k!r} must be a string, got {type(r[k]).__name__}",
                                    f"write {k} as a JSON string")
        a = Path(r["audio_filepath"])
        a = a if a.is_absolute() else base / a
        if check_audio:
            if not a.is_file():
                raise ManifestError(f"{where}: audio file {str(a)!r} "
                                    f"{'is not a regular file' if a.exists() else 'does not exist'}",
                                    "fix audio_filepath (relative paths resolve against the manifest's folder)")
            samples = _check_wav(a, where)
        dur = r.get("duration")
        rows.append(Utterance(str(a), r["text"], n, float(dur) if isinstance(dur, (int, float)) else None,
                              samples if check_audio else None))
    if not rows:
        raise ManifestError(f"manifest {str(p)!r} has no utterances", "add at least one line")
    return rows


# --------------------------------------------------------------------------- features
_FRONTEND = None


def compute_mel(audio_path: str) -> np.ndarray:
    """16 kHz wav -> float32 log-mel ``[64, L]`` (valid frames only) - the float side of the boundary."""
    from zsq_tvm.audio.mel import load_wav

    return compute_mel_pcm(load_wav(audio_path))


def compute_mel_pcm(x: np.ndarray) -> np.ndarray:
    """16 kHz float32 samples -> float32 log-mel ``[64, L]`` (valid frames only)."""
    import torch

    from zsq_tvm.audio.mel import MelFrontend

    global _FRONTEND
    if _FRONTEND is None:
        _FRONTEND = MelFrontend()
    if len(x) < 2:
        x = np.zeros(160, np.float32)
    feats, flen = _FRONTEND(torch.from_numpy(np.ascontiguousarray(x, np.float32))[None])
    return feats[0, :, : int(flen[0])].numpy().astype(np.float32)


# --------------------------------------------------------------------------- runners
class Runner:
    """``infer(x [1, F, T]) -> logits [T', V]`` with the class axis last."""

    kind = "?"
    frames: int | None = None  # static T, or None for any length
    features = 64

    def __init__(self, name: str, vocab, layout: str = "BTV"):
        self.name, self.layout = name, layout
        self.vocab = vocab if isinstance(vocab, Vocab) else Vocab(vocab)

    def infer(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def _last(self, y) -> np.ndarray:
        return _class_axis_last(np.asarray(y), self.layout, self.vocab.num_classes)[0]


class TorchRunner(Runner):
    kind = "torch"

    def __init__(self, model, name: str):
        super().__init__(name, model.vocab)
        self.model = model.eval()

    def infer(self, x):
        import torch

        with torch.no_grad():
            return self.model(torch.from_numpy(np.ascontiguousarray(x))).numpy()[0]


def _onnx_vocab_and_frames(path: str):
    import onnx

    proto = onnx.load(path, load_external_data=False)

    info = model_info(proto)
    labels = None
    for kv in proto.metadata_props:
        if kv.key in ("vocab", "vocabulary", "labels"):
            try:
                labels = json.loads(kv.value) or None
            except ValueError:
                pass
    return info, labels


class OrtRunner(Runner):
    kind = "onnxruntime"

    def __init__(self, path: str, threads: int | None = None):
        import onnxruntime as ort

        info, labels = _onnx_vocab_and_frames(path)
        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = threads
            so.inter_op_num_threads = 1
        try:
            self.sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise ModelLoadError(f"ONNX Runtime cannot load {path!r} ({str(e).splitlines()[0][:200]})",
                                 "re-export the model (opset 17)") from None
        self.input_name = info.input_name
        self.frames, self.features = info.file_frames, info.features or 64
        out = self.sess.get_outputs()[0].shape
        vocab = labels or QUARTZNET_VOCAB
        layout = "BVT" if len(out) == 3 and out[1] == len(vocab) + 1 and out[2] != len(vocab) + 1 else "BTV"
        super().__init__(path, vocab, layout)

    def infer(self, x):
        return self._last(self.sess.run(None, {self.input_name: np.ascontiguousarray(x, np.float32)})[0])


class TvmFloatRunner(Runner):
    """FP32 ONNX compiled by TVM (Relax, llvm) for a fixed T - the float baseline on the same compiler."""

    kind = "tvm-fp32"

    def __init__(self, path: str, frames: int | None):
        import onnx
        import tvm
        from tvm import relax
        from tvm.relax.frontend.onnx import from_onnx

        info, labels = _onnx_vocab_and_frames(path)
        T = info.file_frames or frames
        if T is None:
            raise ConfigError(f"{path!r} has a dynamic time axis and TVM compiles for a fixed T",
                              "pass --frames T (e.g. 1000) with --runtime tvm")
        if frames and info.file_frames and frames != info.file_frames:
            raise ConfigError(f"{path!r} is fixed to T={info.file_frames} frames, not {frames}",
                              f"drop --frames or pass --frames {info.file_frames}")
        self.frames, self.features = int(T), info.features or 64
        self.input_name = info.input_name
        proto = onnx.load(path)
        try:
            mod = from_onnx(proto, {info.input_name: [1, self.features, self.frames]}, keep_params_in_input=False)
            mod = relax.transform.DecomposeOpsForInference()(mod)
            ex = tvm.compile(mod, target="llvm")
        except Exception as e:
            raise ModelLoadError(f"TVM cannot compile {path!r} in FP32 ({str(e).strip().splitlines()[-1][:200]})",
                                 "use --runtime onnxruntime") from None
        self.vm = relax.VirtualMachine(ex, tvm.cpu())
        vocab = labels or QUARTZNET_VOCAB
        super().__init__(path, vocab, "auto")

    def infer(self, x):
        import tvm

        y = self.vm["main"](tvm.runtime.tensor(np.ascontiguousarray(x, np.float32)))
        if isinstance(y, (list, tuple)) or type(y).__name__ in ("Array", "Tuple"):
            y = y[0]
        return self._last(y.numpy())


class BuildRunner(Runner):
    """An integer build: ``Build.run`` quantizes the float mel with the input scale, then integer kernels."""

    kind = "integer-build"

    def __init__(self, build, name: str):
        if build.vocab is None:
            raise ConfigError(f"{name!r} has no vocabulary", "quantize with a vocab so the logits can be decoded")
        inp = build.manifest["io"]["inputs"][0]
        # frames None: a symbolic-T build, run on each utterance whole
        self.build, self.frames, self.features = build, build.frames, int(inp["shape"][1])
        self.takes_length = build.time_mask  # a --time-mask build is told each chunk's valid frames
        super().__init__(name, build.vocab, build.manifest.get("logits_layout", "auto"))

    def infer(self, x, length=None):
        return self._last(self.build.run(x, length=length))


def load_runner(model, runtime: str = "auto", frames: int | None = None, threads: int | None = None,
                workdir: str | None = None, longest_frames: int | None = None) -> Runner:
    """Resolve MODEL (shipped name, .pt, .onnx, quantized dir, build dir) to a :class:`Runner`.

    ``longest_frames``: the longest utterance it will run; an ONNX file with a dynamic T is checked against the
    memory budget at that length (``frames`` when given)."""

    if runtime not in RUNTIMES:
        raise ConfigError(f"unknown runtime {runtime!r}", "use one of: " + ", ".join(RUNTIMES))
    s = os.fspath(model)
    p = Path(s)
    if is_shipped(s) or (p.is_file() and p.suffix == ".pt"):
        m = load_torch(s)
        if runtime in ("auto", "torch"):
            return TorchRunner(m, s)
        from zsq_tvm.zoo.nets.export import export_onnx

        onnx_path = export_onnx(m, Path(workdir or tempfile.mkdtemp(prefix="zsq-eval-")) / f"{p.stem}.onnx",
                                frames=frames)
        return OrtRunner(str(onnx_path), threads) if runtime == "onnxruntime" else \
            TvmFloatRunner(str(onnx_path), frames)
    if p.is_dir():
        man = artifacts.read_manifest(p, verify=False)  # only its kind: the load below verifies the folder
        if runtime not in ("auto",):
            raise ConfigError(f"--runtime {runtime} does not apply to the {man['kind']} directory {s!r}",
                              "drop --runtime: quantized models and builds run their integer kernels")
        if man["kind"] == artifacts.KIND_BUILD:
            from zsq_tvm.build import Build

            return BuildRunner(Build.load(p), s)
        from zsq_tvm import pipeline

        return BuildRunner(pipeline.compile(s, target="host"), s)
    if p.is_file():
        if runtime == "torch":
            raise ConfigError("--runtime torch needs a shipped model name or a .pt checkpoint",
                              "use --runtime onnxruntime or tvm for .onnx files")
        from zsq_tvm.frontend.onnx_import import check_frames_memory, load_onnx

        proto = load_onnx(s)[0]  # clear errors for missing / corrupt / hostile files, before ORT or TVM reads it
        check_frames_memory(proto, s, frames or longest_frames)  # the input at the T it runs with fits the budget
        del proto
        return TvmFloatRunner(s, frames) if runtime == "tvm" else OrtRunner(s, threads)

    checkpoint_path(s)  # raises the "unknown model, shipped ones are ..." error
    raise ModelLoadError(f"cannot evaluate {s!r}", "pass a shipped name, .pt, .onnx, quantized or build directory")


# --------------------------------------------------------------------------- running
def run_fixed(infer: Callable[..., np.ndarray], mel: np.ndarray, T: int,
              with_length: bool = False) -> tuple[np.ndarray, int]:
    """Run a fixed-``T`` model on a mel ``[F, L]`` of any length: zero-pad / chunk, never truncate.

    Returns ``(logits [T'_total, V], n_chunks)``; output frames that belong to padding are dropped.
    ``with_length``: the model masks its padding (a ``--time-mask`` build), ``infer(x, valid)`` gets each
    chunk's number of valid frames.
    """
    F, L = mel.shape
    n = max(1, math.ceil(L / T))
    x = np.zeros((F, n * T), np.float32)
    x[:, :L] = mel
    outs = []
    for i in range(n):
        valid = min(T, L - i * T)
        chunk = x[None, :, i * T:(i + 1) * T]
        y = infer(chunk, valid) if with_length else infer(chunk)
        keep = y.shape[0] if valid >= T else max(1, math.ceil(valid * y.shape[0] / T))
        outs.append(y[:keep])
    return np.concatenate(outs, axis=0), n


def score(refs: Sequence[str], hyps: Sequence[str]) -> dict:
    """Corpus WER/CER with jiwer, cross-checked against :mod:`zsq_tvm.metrics`."""

    w, errs, n_words = metrics.wer(refs, hyps)
    c = metrics.cer(refs, hyps)
    out = {"wer": w, "cer": c, "word_errors": errs, "n_words": n_words,
           "n_chars": sum(len(r) for r in refs), "jiwer_checked": False}
    if all(r.strip() for r in refs):
        import jiwer

        jw, jc = float(jiwer.wer(list(refs), list(hyps))), float(jiwer.cer(list(refs), list(hyps)))
        if abs(jw - w) > 1e-9 or abs(jc - c) > 1e-9:
            raise RuntimeError(f"jiwer WER/CER {jw}/{jc} != zsq_tvm.metrics {w}/{c} (a bug in zsq_tvm.metrics)")
        out.update(wer=jw, cer=jc, jiwer_checked=True)
    return out


def evaluate(model, manifest, runtime: str = "auto", frames: int | None = None, frames_pad: int | None = None,
             threads: int | None = None, progress: bool | None = None, limit: int | None = None,
             hyps_out: str | None = None, runner: Runner | None = None) -> dict:
    """Evaluate ``model`` on ``manifest``; returns ``{"wer", "cer", "n_utterances", "n_words", ...}``."""
    from tqdm import tqdm

    rows = read_manifest(manifest)
    if limit:
        rows = rows[:limit]
    if not any(normalize_text(u.text).split() for u in rows):  # before any audio is decoded
        raise ManifestError(f"manifest {str(manifest)!r}: no reference transcript has a word after normalization "
                            "(a-z, space, apostrophe), so WER is undefined (the hypotheses' words would be "
                            "errors over zero reference words)",
                            "give the utterances their transcripts; empty ones are fine next to others (their "
                            "hypothesis words count as insertions)")
    if hyps_out is not None:  # a list this command writes, replaced each run -- but never one of its inputs
        from zsq_tvm import artifacts

        artifacts.check_output_file(hyps_out, overwrite=True, flag="--hyps")
        inputs = [manifest, model] + [u.audio_filepath for u in rows]
        if any(os.path.lexists(i) and os.path.samefile(i, hyps_out) for i in map(os.fspath, inputs)
               if os.path.lexists(hyps_out)):
            raise ConfigError(f"--hyps {str(hyps_out)!r} is an input of this command",
                              "write the hypotheses to another file")
    if threads:
        import torch

        torch.set_num_threads(threads)
        os.environ.setdefault("TVM_NUM_THREADS", str(threads))
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="zsq-eval-") as td:
        # a dynamic-length model runs each utterance whole: its memory is checked at the longest one
        longest = max((u.samples // HOP_LENGTH + 1 for u in rows if u.samples), default=None)
        r = runner or load_runner(model, runtime, frames or frames_pad, threads, td, longest_frames=longest)
        T = r.frames
        if frames_pad is not None:
            if isinstance(frames_pad, bool) or not isinstance(frames_pad, int) or frames_pad < 16:
                raise ConfigError(f"--frames-pad {frames_pad!r} must be an integer >= 16", "pass e.g. 1000")
            if T is not None and T != frames_pad:
                raise ConfigError(f"model {r.name!r} is fixed to T={T} frames, not --frames-pad {frames_pad}",
                                  f"drop --frames-pad or pass {T}")
            T = frames_pad
        t_load = time.time() - t0
        refs, hyps, n_chunked, n_padded, audio_s, t_model = [], [], 0, 0, 0.0, 0.0
        masked = bool(getattr(r, "takes_length", False))
        show = sys.stderr.isatty() if progress is None else progress
        for u in tqdm(rows, desc=f"eval {Path(str(r.name)).name}", unit="utt", disable=not show, file=sys.stderr,
                      mininterval=1.0):
            try:
                mel = compute_mel(u.audio_filepath)
            except ValueError as e:
                raise ManifestError(f"{manifest}:{u.line}: {e}", "convert the audio to 16 kHz mono 16-bit WAV") \
                    from None
            if mel.shape[1] == 0:  # read_manifest refuses < 160 samples; a file changed since is caught here
                raise ManifestError(f"{manifest}:{u.line}: {u.audio_filepath!r} gives no mel frame (under 10 ms)",
                                    "remove this line from the manifest or fix the audio file")
            if mel.shape[0] != r.features:
                raise ConfigError(f"model {r.name!r} takes {r.features} mel features, the front end gives "
                                  f"{mel.shape[0]}", "use a model with 64-bin mel input")
            audio_s += mel.shape[1] / 100.0
            ts = time.time()
            if T is None:
                logits = r.infer(mel[None])
            else:
                logits, n = run_fixed(r.infer, mel, T, with_length=masked)
                n_chunked += n > 1
                n_padded += mel.shape[1] % T != 0
            t_model += time.time() - ts
            hyp = greedy_decode(logits[None], r.vocab, "BTV")[0]
            hyps.append(" ".join(hyp.split()))
            refs.append(normalize_text(u.text))
    res = score(refs, hyps)
    out = {"wer": res["wer"], "cer": res["cer"], "n_utterances": len(rows), "n_words": res["n_words"],
           "word_errors": res["word_errors"], "n_chars": res["n_chars"], "jiwer_checked": res["jiwer_checked"],
           "model": os.fspath(model), "runtime": r.kind, "manifest": str(manifest), "frames": T,
           "n_chunked": n_chunked, "n_padded": n_padded, "time_mask": masked, "audio_seconds": round(audio_s, 2), "model_seconds": round(t_model, 2),
           "load_seconds": round(t_load, 2), "rtf": round(t_model / audio_s, 4) if audio_s else None,
           "examples": [{"ref": a, "hyp": b} for a, b in list(zip(refs, hyps))[:3]]}
    if hyps_out:
        from zsq_tvm import artifacts

        with artifacts.write_output_file(hyps_out, overwrite=True) as tmp, open(tmp, "w") as f:
            for u, a, b in zip(rows, refs, hyps):
                f.write(json.dumps({"audio_filepath": u.audio_filepath, "ref": a, "hyp": b}) + "\n")
    return out


def format_result(res: dict) -> str:
    """One line; for an integer build without the time mask that zero-padded utterances, a second line saying
    what the padding costs and the fix."""
    line = (f"WER {100 * res['wer']:.2f} %  CER {100 * res['cer']:.2f} %  ({res['n_utterances']} utterances, "
            f"{res['n_words']} words; {res['runtime']}"
            + (f", T={res['frames']}, {res['n_chunked']} chunked" if res.get("frames") else "") + ")")
    if res.get("runtime") == "integer-build" and res.get("n_padded") and not res.get("time_mask"):
        # measured: +3.4 WER points on QuartzNet-5x5, +5.1 on the Conformer at T = 700 (docs/results.md)
        line += (f"\nnote: {res['n_padded']} of {res['n_utterances']} utterances were zero-padded to T={res['frames']} "
                 "and this build has no time mask, so the padding leaks into every conv (and attention) and "
                 "costs WER; quantize without --no-time-mask (the default masks it as in training)")
    return line
