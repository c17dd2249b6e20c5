"""Audio files in, 16 kHz mono float32 blocks out: WAV, FLAC, OGG/Vorbis, ... through libsndfile (``soundfile``).

Why blocks: a 30-minute recording is 28.8 M samples; reading it whole and resampling it whole would make memory
grow with the file.  :func:`pcm_blocks` reads ``block_seconds`` at a time, down-mixes and resamples each block as
it comes, so memory is bounded by the block size whatever the file says about its own length (a hostile header
that declares 2^40 frames costs nothing: libsndfile stops where the data stops).

Resampling is the polyphase filter of :func:`scipy.signal.resample_poly`, run block by block
(:class:`StreamResampler`): each block is filtered together with enough input on both sides that every output
sample it returns sees exactly the input the whole-file filter would have seen, so the blocks' concatenation is
the whole-file result (to float rounding), wherever the block boundaries fall.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from zsq_tvm.core.errors import ZsqError

__all__ = ["AudioError", "AudioInfo", "SAMPLE_RATE", "audio_info", "pcm_blocks", "read_pcm", "StreamResampler"]

SAMPLE_RATE = 16000
MAX_CHANNELS = 64
MAX_BLOCK_SAMPLES = 1 << 20
_RATES = (1000, 768000)  # sample rates we accept: anything a real recording uses


class AudioError(ZsqError):
    """An audio file zsq cannot read: missing, not audio, empty, or an implausible format."""


@dataclass(frozen=True)
class AudioInfo:
    path: str
    sample_rate: int
    channels: int
    frames: int  # as the header says (progress bars only: never trusted for allocation)
    format: str  # "WAV", "FLAC", "OGG", ...

    @property
    def seconds(self) -> float:
        return self.frames / self.sample_rate

    def notices(self) -> list[str]:
        """One line per conversion the reader applies (nothing is converted silently)."""
        out = []
        if self.channels > 1:
            out.append(f"{self.path}: {self.channels} channels mixed down to mono")
        if self.sample_rate != SAMPLE_RATE:
            out.append(f"{self.path}: resampled from {self.sample_rate} Hz to {SAMPLE_RATE} Hz")
        return out


def audio_info(path) -> AudioInfo:
    """Open ``path`` far enough to know its format; :class:`AudioError` (one line: cause and fix) otherwise."""
    import soundfile as sf

    p = Path(os.fspath(path))
    if not p.exists():
        raise AudioError(f"audio file {str(p)!r} does not exist", "check the path")
    if not p.is_file():
        raise AudioError(f"{str(p)!r} is not a file", "pass an audio file (WAV, FLAC, OGG)")
    if not os.access(p, os.R_OK):
        raise AudioError(f"audio file {str(p)!r} is not readable", f"fix its permissions (chmod u+r {p.name})")
    try:
        info = sf.info(str(p))
    except (RuntimeError, sf.LibsndfileError, ValueError, OSError) as e:
        raise AudioError(f"{str(p)!r} is not a readable audio file ({' '.join(str(e).split())[:160]})",
                         "pass WAV, FLAC or OGG/Vorbis audio (convert other formats with: "
                         f"ffmpeg -i {p.name} -ar 16000 -ac 1 out.wav)") from None
    sr, ch, n = int(info.samplerate), int(info.channels), int(info.frames)
    if not (_RATES[0] <= sr <= _RATES[1]):
        raise AudioError(f"{str(p)!r} declares a sample rate of {sr} Hz", "pass a real recording (8-192 kHz)")
    if not (1 <= ch <= MAX_CHANNELS):
        raise AudioError(f"{str(p)!r} declares {ch} channels", f"pass audio with 1-{MAX_CHANNELS} channels")
    if n <= 0:
        raise AudioError(f"{str(p)!r} holds no audio samples", "pass a non-empty recording")
    return AudioInfo(str(p), sr, ch, n, str(info.format))


class StreamResampler:
    """``sample_rate`` -> 16 kHz, block by block, equal to :func:`scipy.signal.resample_poly` on the whole
    signal (module doc).  ``push(x)`` returns the output samples that are final; ``push(x, final=True)`` the
    rest."""

    def __init__(self, sample_rate: int):
        g = math.gcd(int(sample_rate), SAMPLE_RATE)
        self.up, self.down = SAMPLE_RATE // g, int(sample_rate) // g
        # resample_poly's filter spans 10 * max(up, down) samples of the up-sampled signal on each side: that
        # many / up input samples.  The context is kept a multiple of `down` so that block starts map to
        # whole output samples.
        reach = math.ceil(10 * max(self.up, self.down) / self.up) + 1
        self.context = math.ceil(reach / self.down) * self.down
        self._buf = np.zeros(0, np.float32)
        self._start = 0  # input index of _buf[0] (a multiple of `down`)
        self._emitted = 0  # output samples returned so far

    def push(self, x: np.ndarray, final: bool = False) -> np.ndarray:
        if self.up == self.down:
            return np.asarray(x, np.float32)
        from scipy.signal import resample_poly

        self._buf = np.concatenate([self._buf, np.asarray(x, np.float32)])
        end_in = self._start + len(self._buf)
        end_out = -(-end_in * self.up // self.down) if final else \
            max(0, (end_in - self.context) * self.up // self.down)
        if end_out <= self._emitted:
            return np.zeros(0, np.float32)
        y = resample_poly(self._buf, self.up, self.down).astype(np.float32)
        first = self._start * self.up // self.down  # output index of y[0]
        out = y[self._emitted - first:end_out - first]
        self._emitted = end_out
        keep_from = max(0, (self._emitted * self.down // self.up - self.context) // self.down * self.down)
        self._buf = self._buf[keep_from - self._start:]
        self._start = keep_from
        return out


def pcm_blocks(info: AudioInfo, block_seconds: float = 10.0) -> Iterator[np.ndarray]:
    """The file as 16 kHz mono float32 blocks in ``[-1, 1]`` (module doc); at most about ``block_seconds`` of
    input in memory at a time."""
    import soundfile as sf

    # at most ~1 M samples (4 MiB) per block whatever rate and channel count the header claims: soundfile
    # allocates a whole block before it knows how much data the file really has
    block = max(1, min(int(block_seconds * info.sample_rate), MAX_BLOCK_SAMPLES // info.channels))
    rs = StreamResampler(info.sample_rate)
    try:
        with sf.SoundFile(info.path) as f:
            for b in f.blocks(blocksize=block, dtype="float32", always_2d=True):
                mono = b[:, 0] if b.shape[1] == 1 else b.mean(axis=1, dtype=np.float32)
                out = rs.push(mono)
                if len(out):
                    yield out
    except (RuntimeError, sf.LibsndfileError) as e:
        raise AudioError(f"{info.path!r} is damaged ({' '.join(str(e).split())[:160]})",
                         "re-copy the file or convert it again") from None
    tail = rs.push(np.zeros(0, np.float32), final=True)
    if len(tail):
        yield tail


def read_pcm(path) -> tuple[np.ndarray, AudioInfo]:
    """The whole file as one 16 kHz mono float32 array (short clips; long files: :func:`pcm_blocks`)."""
    info = audio_info(path)
    blocks = list(pcm_blocks(info))
    return (np.concatenate(blocks) if blocks else np.zeros(0, np.float32)), info
