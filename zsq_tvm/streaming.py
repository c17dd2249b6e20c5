"""Any length through a fixed-length model: overlapping windows stitched on output-frame boundaries, CTC words
with times, and a push API for live audio.

A build takes ``T`` mel frames (10 ms each).  A recording of any length is cut into windows of ``T`` frames that
overlap by ``context`` frames on each side; of each window's output only the middle ``hop = T - 2 context``
frames (rounded to the model's output stride) are kept, so every kept output frame saw at least ``context``
frames of real audio on both sides (or the true start / end of the recording)::

    mel frames   0 ........................................................ L
    window 0     [ kept 0 ........ hop | right context ]
    window 1               [ left ctx | kept hop .......... | right ctx ]
    window 2                                     [ left ctx | kept ... L ]     (last: `length` = its valid frames)

The kept parts tile ``[0, L)`` exactly (:meth:`WindowPlan.windows`); their logits are concatenated and decoded
once, so a word cut by a window boundary is decoded as one word.  A recording no longer than ``T`` is one window
run on exactly its frames: with a time-mask build (the default for fixed builds) its output equals the whole
utterance's, bit for bit.  Each window's log-mel is computed from that window's audio and normalized over it
(NeMo's per-feature normalization, as for an utterance); memory is bounded by one window whatever the length.

:class:`Stream` does this incrementally: ``push(pcm)`` returns the words that became final (a word is final once
the decoder has emitted the space after it); ``finish()`` flushes the rest.  The same windows are used offline
and live, so pushing a recording in 10 ms pieces gives the same words and times as transcribing it at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

import numpy as np

from zsq_tvm.ctc import Vocab, _class_axis_last
from zsq_tvm.core.errors import ConfigError

__all__ = ["WindowPlan", "Window", "Word", "Transcript", "Stream", "WindowStream", "HOP_SAMPLES", "FRAME_SECONDS",
           "words_to_segments", "format_srt", "format_vtt", "model_stride"]

HOP_SAMPLES = 160  # audio samples per mel frame at 16 kHz
FRAME_SECONDS = 0.01
DEFAULT_CONTEXT_FRAMES = 200  # 2 s each side: NeMo's buffered CTC inference uses 1-2 s
DYNAMIC_WINDOW_FRAMES = 2000  # a symbolic-T build's windows: 20 s (memory bounded, 80 % of each window kept)


class Window(NamedTuple):
    start: int  # first mel frame of the window
    valid: int  # mel frames of real audio in it (< frames only for the last window)
    keep_from: int  # kept mel frames [keep_from, keep_to): multiples of the stride (keep_to: or the end)
    keep_to: int


@dataclass(frozen=True)
class WindowPlan:
    """How a recording of ``L`` mel frames is cut for a model of ``frames`` input frames (module doc)."""

    frames: int
    stride: int  # input frames per output frame
    context: int = DEFAULT_CONTEXT_FRAMES

    def __post_init__(self):
        if self.stride < 1 or self.frames < self.stride:
            raise ConfigError(f"window of {self.frames} frames with output stride {self.stride}",
                              "use a build with at least one output frame")
        if self.context < 0 or self.hop < self.stride:
            raise ConfigError(f"context of {self.context} frames leaves no kept frames in a {self.frames}-frame "
                              "window", f"use a context below {(self.frames - self.stride) // 2} frames "
                              "or a longer build (--frames)")

    @property
    def left(self) -> int:
        """Left context, a multiple of the stride (so kept output frames start on an output frame)."""
        return self.context // self.stride * self.stride

    @property
    def hop(self) -> int:
        """Kept frames per window: a multiple of the stride."""
        return max(0, (self.frames - 2 * self.left) // self.stride * self.stride)

    def window(self, k: int, total: int | None) -> Window:
        """Window ``k``; ``total``: the recording's mel frames (None: not known yet, the window must be full)."""
        keep_from = k * self.hop
        start = max(0, keep_from - self.left)
        end = start + self.frames
        if total is not None and end >= total:  # the last window: everything to the end is kept
            return Window(start, total - start, keep_from, total)
        return Window(start, self.frames, keep_from, keep_from + self.hop)

    def windows(self, total: int) -> list[Window]:
        out, k = [], 0
        while True:
            w = self.window(k, total)
            out.append(w)
            if w.keep_to >= total:
                return out
            k += 1

    def ready(self, k: int, available: int) -> bool:
        """Whether window ``k`` (not the last) can run with ``available`` mel frames of audio so far."""
        return self.window(k, None).start + self.frames < available  # "<": audio beyond it, so not the last


class Word(NamedTuple):
    text: str
    start: float  # seconds from the start of the recording
    end: float


@dataclass
class Transcript:
    text: str
    words: list[Word]
    seconds: float  # audio duration
    frames: int  # output frames decoded
    logits: np.ndarray | None = None  # [frames, V] when kept

    def segments(self, **kw) -> list[dict]:
        return words_to_segments(self.words, **kw)

    def to_json(self) -> dict:
        return {"text": self.text, "duration": round(self.seconds, 3),
                "words": [{"word": w.text, "start": round(w.start, 3), "end": round(w.end, 3)} for w in self.words],
                "segments": self.segments()}


class _CtcWords:
    """Greedy CTC over output frames as they arrive: collapse repeats, drop blanks, split at spaces."""

    def __init__(self, vocab: Vocab, frame_seconds: float, t0: float = 0.0):
        self.vocab, self.dt, self.t0 = vocab, frame_seconds, t0
        self.prev = -1
        self.chars: list[str] = []
        self.first = self.last = 0
        self.frame = 0  # global index of the next output frame

    def feed(self, ids: np.ndarray) -> list[Word]:
        out = []
        blank = self.vocab.blank
        for i in ids.tolist():
            if i != self.prev and i != blank:
                label = self.vocab.labels[i]
                if label == " ":
                    w = self._flush()
                    if w:
                        out.append(w)
                else:
                    if not self.chars:
                        self.first = self.frame
                    self.chars.append(label)
                    self.last = self.frame
            self.prev = i
            self.frame += 1
        return out

    def _flush(self) -> Word | None:
        if not self.chars:
            return None
        w = Word("".join(self.chars), round(self.t0 + self.first * self.dt, 3),
                 round(self.t0 + (self.last + 1) * self.dt, 3))
        self.chars = []
        return w

    def finish(self) -> list[Word]:
        w = self._flush()
        return [w] if w else []


@dataclass
class _Model:
    """What a stream runs: ``infer(mel [1, F, frames], valid) -> logits`` for one window of ``frames`` input frames,
    ``stride`` input frames per output frame, the CTC ``vocab``; ``context`` frames on each side of a window's kept
    part; ``on_window(mel frames done)``: progress."""

    infer: Callable[[np.ndarray, int], np.ndarray]
    frames: int
    stride: int
    vocab: Vocab
    context: int = DEFAULT_CONTEXT_FRAMES
    layout: str = "auto"
    keep_logits: bool = False
    on_window: Callable[[int], None] | None = None


@dataclass
class WindowStream(_Model):
    """One stretch of audio through overlapping windows (module doc): ``push(pcm)`` -> words that became final,
    ``finish()`` -> the rest.  :class:`Stream` runs one per utterance.

    ``infer(mel [1, F, frames], valid) -> logits`` runs one window; ``frames``/``stride`` describe the model;
    ``pcm`` is 16 kHz mono float32 in [-1, 1] (:func:`zsq_tvm.audio.io.pcm_blocks` converts files); ``frame0``:
    where the stretch starts in the recording (mel frames), for the word times and the progress callback."""

    frame0: int = 0
    plan: WindowPlan = field(init=False)

    def __post_init__(self):
        from zsq_tvm.audio.mel import MelFrontend

        self.plan = WindowPlan(self.frames, self.stride, self.context)
        self._mel = MelFrontend()
        self._audio = np.zeros(0, np.float32)
        self._audio_start = 0  # sample index of _audio[0]
        self._samples = 0  # samples pushed so far
        self._k = 0  # next window
        self._done = False
        self._words = _CtcWords(self.vocab, self.stride * FRAME_SECONDS, self.frame0 * FRAME_SECONDS)
        self._logits: list[np.ndarray] = []
        self.all_words: list[Word] = []

    # ---- feeding
    def push(self, pcm) -> list[Word]:
        if self._done:
            raise ConfigError("push() after finish()", "start a new stream for new audio")
        x = np.asarray(pcm, np.float32).reshape(-1)
        self._audio = np.concatenate([self._audio, x])
        self._samples += len(x)
        new = []
        while self.plan.ready(self._k, self._samples // HOP_SAMPLES):
            new += self._run(self.plan.window(self._k, None))
            self._k += 1
        return new

    def finish(self) -> list[Word]:
        """Run the remaining windows on what was pushed; returns the last words."""
        if self._done:
            return []
        self._done = True
        total = self._samples // HOP_SAMPLES
        new = []
        if total > 0:
            while True:
                w = self.plan.window(self._k, total)
                new += self._run(w)
                self._k += 1
                if w.keep_to >= total:
                    break
        last = self._words.finish()
        self.all_words += last
        return new + last

    def transcript(self) -> Transcript:
        """Everything so far (after :meth:`finish`: the whole recording)."""
        text = " ".join(w.text for w in self.all_words)
        logits = np.concatenate(self._logits) if self._logits else None
        return Transcript(text, list(self.all_words), self._samples / (HOP_SAMPLES / FRAME_SECONDS),
                          self._words.frame, logits)

    # ---- one window
    def _run(self, w: Window) -> list[Word]:
        import torch

        a0 = w.start * HOP_SAMPLES - self._audio_start
        seg = self._audio[a0:a0 + w.valid * HOP_SAMPLES]
        feats, flen = self._mel(torch.from_numpy(np.ascontiguousarray(seg))[None])
        n = min(int(flen[0]), w.valid)
        mel = np.zeros((1, feats.shape[1], self.frames), np.float32)
        mel[0, :, :n] = feats[0, :, :n].numpy()
        y = _class_axis_last(np.asarray(self.infer(mel, n)), self.layout, self.vocab.num_classes)[0]
        lo = (w.keep_from - w.start) // self.stride
        hi = -(-(w.keep_to - w.start) // self.stride)
        kept = y[lo:min(hi, y.shape[0])]
        if self.keep_logits:
            self._logits.append(np.array(kept))
        words = self._words.feed(kept.argmax(axis=-1))  # ties -> lowest index, as greedy_decode
        self.all_words += words
        # audio before the next window's start is never read again
        nxt = self.plan.window(self._k + 1, None).start * HOP_SAMPLES
        drop = max(0, nxt - self._audio_start)
        if drop:
            self._audio = self._audio[drop:]
            self._audio_start += drop
        if self.on_window:
            self.on_window(self.frame0 + w.keep_to)
        return words


@dataclass
class Stream(_Model):
    """Live transcription: ``push(pcm)`` -> words that became final, ``finish()`` -> the rest, ``transcript()``.

    Why utterances: the models hear one trimmed utterance at a time in training; a window holding several
    utterances and the silences between them loses words (QuartzNet-5x5 FP32: 15.1 % WER per utterance, 30.3 % on
    the same utterances in 5-minute files, bench/results/long_audio.json).  So the audio is cut at pauses: a
    10 ms frame is silent when its energy is below ``silence_db`` dBFS or ``relative_db`` below the loudest
    frame so far; ``min_pause`` silent frames end an utterance; each utterance keeps ``keep_silence`` frames of
    silence on both sides (as the training audio) and runs through its own :class:`WindowStream` (overlapping
    windows when it is longer than one).  Silence shorter than a pause at the very start or end of the recording
    is kept whole, so a recording of one utterance is transcribed exactly as it is.  Words are final at the end of
    their window or utterance.  The decisions depend only on the audio, not on how it was pushed: 10 ms pieces
    give the offline result.
    ``segment=False``: one :class:`WindowStream` over everything (no cuts)."""

    segment: bool = True
    min_pause: int = 30  # frames: 0.3 s of silence ends an utterance
    keep_silence: int = 10  # frames: 0.1 s kept before and after speech
    silence_db: float = -50.0
    relative_db: float = 40.0

    def __post_init__(self):
        if not 0 <= self.keep_silence < self.min_pause:
            raise ConfigError(f"keep_silence {self.keep_silence} must be below min_pause {self.min_pause}",
                              "keep less silence around speech than a pause lasts")
        self._inner = None if self.segment else self._new_inner(0)
        self._pcm = np.zeros(0, np.float32)
        self._pcm_start = 0  # sample index of _pcm[0]
        self._samples = 0
        self._frames_seen = 0  # 10 ms frames whose energy was looked at
        self._peak_db = -np.inf
        self._silent_run = 0
        self._last_speech = -1
        self._last_end = 0  # end frame of the previous utterance
        self._seg_start: int | None = None
        self._fed = 0  # sample index up to which the open utterance was pushed
        self._done = False
        self._logits: list[np.ndarray] = []
        self.all_words: list[Word] = []
        self.segments: list[tuple[int, int]] = []  # the utterances found, as mel frame ranges

    def _new_inner(self, frame0: int) -> WindowStream:
        return WindowStream(self.infer, self.frames, self.stride, self.vocab, self.context, self.layout,
                            self.keep_logits, self.on_window, frame0)

    # ---- feeding
    def push(self, pcm) -> list[Word]:
        if self._done:
            raise ConfigError("push() after finish()", "start a new stream for new audio")
        x = np.asarray(pcm, np.float32).reshape(-1)
        self._samples += len(x)
        if not self.segment:
            return self._collect(self._inner.push(x))
        self._pcm = np.concatenate([self._pcm, x])
        new = []
        n_full = self._samples // HOP_SAMPLES
        if n_full > self._frames_seen:
            a = self._frames_seen * HOP_SAMPLES - self._pcm_start
            fr = self._pcm[a:a + (n_full - self._frames_seen) * HOP_SAMPLES].reshape(-1, HOP_SAMPLES)
            db = 10 * np.log10(np.mean(fr.astype(np.float64) ** 2, axis=1) + 1e-12)
            for v in db:
                new += self._frame(float(v))
        if self._seg_start is not None:  # the open utterance, up to where it surely still runs
            new += self._feed((self._frames_seen - self.min_pause + self.keep_silence) * HOP_SAMPLES)
        # audio no utterance can still need: before what was fed, or before the earliest start of a new one
        need = self._fed if self._seg_start is not None else \
            max(self._last_end, self._frames_seen - self.keep_silence) * HOP_SAMPLES
        if need > self._pcm_start:
            self._pcm = self._pcm[need - self._pcm_start:]
            self._pcm_start = need
        return new

    def _frame(self, db: float) -> list[Word]:
        f = self._frames_seen
        self._frames_seen += 1
        self._peak_db = max(self._peak_db, db)
        if db >= max(self.silence_db, self._peak_db - self.relative_db):  # speech
            if self._seg_start is None:  # a shorter silence at the very start is no pause: kept whole
                first = self._last_end == 0 and not self.segments and f < self.min_pause
                self._seg_start = 0 if first else max(f - self.keep_silence, self._last_end)
                self._fed = self._seg_start * HOP_SAMPLES
                self._inner = self._new_inner(self._seg_start)
            self._last_speech, self._silent_run = f, 0
            return []
        self._silent_run += 1
        if self._seg_start is not None and self._silent_run >= self.min_pause:
            return self._close(self._last_speech + 1 + self.keep_silence)
        return []

    def _feed(self, upto: int) -> list[Word]:
        if upto <= self._fed:
            return []
        a, b = self._fed - self._pcm_start, upto - self._pcm_start
        self._fed = upto
        return self._collect(self._inner.push(self._pcm[a:b]))

    def _close(self, end: int) -> list[Word]:
        words = self._feed(end * HOP_SAMPLES) + self._collect(self._inner.finish())
        if self.keep_logits and self._inner._logits:
            self._logits += self._inner._logits
        self.segments.append((self._seg_start, end))
        self._last_end, self._seg_start, self._inner = end, None, None
        return words

    def _collect(self, words: list[Word]) -> list[Word]:
        self.all_words += words
        return words

    def finish(self) -> list[Word]:
        """Transcribe what is left; returns the last words."""
        if self._done:
            return []
        self._done = True
        if not self.segment:
            out = self._collect(self._inner.finish())
            self._logits = self._inner._logits
            return out
        if self._seg_start is None:
            return []
        total = self._samples // HOP_SAMPLES
        # a silence at the very end shorter than a pause is kept whole too: a recording of one utterance with
        # short silent edges is transcribed exactly as a whole (bit for bit)
        short_tail = total - (self._last_speech + 1) < self.min_pause
        return self._close(total if short_tail else min(total, self._last_speech + 1 + self.keep_silence))

    def transcript(self) -> Transcript:
        """Everything so far (after :meth:`finish`: the whole recording)."""
        text = " ".join(w.text for w in self.all_words)
        logits = np.concatenate(self._logits) if self._logits else None
        return Transcript(text, list(self.all_words), self._samples / (HOP_SAMPLES / FRAME_SECONDS),
                          0 if logits is None else len(logits), logits)


def words_to_segments(words: list[Word], max_gap: float = 0.6, max_seconds: float = 6.0,
                      max_words: int = 14) -> list[dict]:
    """Group words into subtitle segments: a new one after a pause of ``max_gap`` s, or when the current one would
    grow past ``max_seconds`` or ``max_words``."""
    segs: list[dict] = []
    cur: list[Word] = []
    for w in words:
        if cur and (w.start - cur[-1].end > max_gap or w.end - cur[0].start > max_seconds or len(cur) >= max_words):
            segs.append(cur)
            cur = []
        cur.append(w)
    if cur:
        segs.append(cur)
    return [{"start": s[0].start, "end": s[-1].end, "text": " ".join(w.text for w in s)} for s in segs]


def _stamp(t: float, sep: str) -> str:
    ms = int(round(t * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def format_srt(segments: list[dict]) -> str:
    return "".join(f"{i}\n{_stamp(s['start'], ',')} --> {_stamp(s['end'], ',')}\n{s['text']}\n\n"
                   for i, s in enumerate(segments, 1))


def format_vtt(segments: list[dict]) -> str:
    return "WEBVTT\n\n" + "".join(f"{_stamp(s['start'], '.')} --> {_stamp(s['end'], '.')}\n{s['text']}\n\n"
                                  for s in segments)


def model_stride(frames: int, out_frames: int) -> int:
    """Input frames per output frame of a model that maps ``frames`` to ``out_frames`` (1, 2, 4, 8 ...)."""
    s = max(1, round(frames / out_frames))
    if math.ceil(frames / s) != out_frames:
        raise ConfigError(f"the model maps {frames} input frames to {out_frames} output frames, not a whole "
                          "output stride", "transcribe needs a CTC model whose output is its input subsampled")
    return s
