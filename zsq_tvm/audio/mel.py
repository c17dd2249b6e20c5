"""Log-mel front end matching NeMo's ``AudioToMelSpectrogramPreprocessor``.

This is the *float* side of the integer boundary: the model's first op quantizes its
output to int8 with the calibrated input scale.  Training, evaluation and the runtime
all call this one implementation, so features never drift between them.

Pipeline (NeMo ``FilterbankFeatures`` defaults used by the QuartzNet/Jasper/Conformer
configs):

1. pre-emphasis ``y[n] = x[n] - 0.97 x[n-1]`` (``y[0] = x[0]``), samples past each
   waveform's length zeroed again afterwards (as NeMo does);
2. STFT, ``n_fft=512``, Hann window of 320 samples (20 ms, symmetric), hop 160
   (10 ms), centred with zero padding -> ``len // 160 + 1`` STFT frames, of which the first
   ``len // 160`` are *valid* (NeMo >= 2.0 ``get_seq_len``: ``(len + 2*(n_fft//2) - n_fft) // hop``;
   the last, half-empty frame is zeroed like a padded one);
3. power spectrum ``|X|^2``, then a 64-band Slaney-style mel filterbank (0-8 kHz,
   Slaney area normalisation, as ``librosa.filters.mel(norm="slaney")``);
4. ``log(mel + 2**-24)``;
5. per-feature normalisation over the valid frames: ``(x - mean) / (std + 1e-5)``
   with the unbiased standard deviation;
6. frames past the valid length are zeroed and T is padded to a multiple of 16.
"""
from __future__ import annotations

import dataclasses
import math
import wave
from typing import Optional, Sequence, Tuple

import numpy as np
import torch

LOG_ZERO_GUARD = 2.0 ** -24
NORM_EPS = 1e-5


@dataclasses.dataclass(frozen=True)
class MelConfig:
    sample_rate: int = 16000
    n_fft: int = 512
    win_length: int = 320
    hop_length: int = 160
    n_mels: int = 64
    preemph: float = 0.97
    fmin: float = 0.0
    fmax: Optional[float] = None
    pad_to: int = 16
    dither: float = 1e-5


def _hz_to_mel_slaney(f):
    f = np.asarray(f, dtype=np.float64)
    f_sp = 200.0 / 3
    mel = f / f_sp
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = math.log(6.4) / 27.0
    return np.where(f >= min_log_hz, min_log_mel + np.log(np.maximum(f, 1e-10) / min_log_hz) / logstep, mel)


def _mel_to_hz_slaney(m):
    m = np.asarray(m, dtype=np.float64)
    f_sp = 200.0 / 3
    freqs = f_sp * m
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = math.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), freqs)


def mel_filterbank(sr: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: Optional[float] = None) -> np.ndarray:
    """Triangular Slaney mel filters with area normalisation, shape ``[n_mels, n_fft//2+1]``.

    Same construction as ``librosa.filters.mel(..., htk=False, norm="slaney")``: band
    edges equally spaced on the Slaney mel scale (linear below 1 kHz, logarithmic
    above), each triangle scaled by ``2 / (f_hi - f_lo)`` so every band has equal area.
    """
    fmax = sr / 2.0 if fmax is None else fmax
    fftfreqs = np.linspace(0, sr / 2.0, n_fft // 2 + 1)
    mels = np.linspace(_hz_to_mel_slaney(fmin), _hz_to_mel_slaney(fmax), n_mels + 2)
    mel_f = _mel_to_hz_slaney(mels)
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fftfreqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    enorm = 2.0 / (mel_f[2 : n_mels + 2] - mel_f[:n_mels])
    return (weights * enorm[:, None]).astype(np.float32)


class MelFrontend(torch.nn.Module):
    """Waveforms ``[B, S]`` (float, 16 kHz) + lengths -> features ``[B, 64, T]`` + frame lengths."""

    def __init__(self, config: MelConfig = MelConfig()):
        super().__init__()
        self.config = config
        self.register_buffer("window", torch.hann_window(config.win_length, periodic=False), persistent=False)
        fb = mel_filterbank(config.sample_rate, config.n_fft, config.n_mels, config.fmin, config.fmax)
        self.register_buffer("fb", torch.from_numpy(fb), persistent=False)

    def frame_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Valid frames per waveform: ``len // hop`` (NeMo 3.0's ``FilterbankFeatures.get_seq_len``)."""
        cfg = self.config
        pad = (cfg.n_fft // 2) * 2
        return torch.div(lengths + pad - cfg.n_fft, cfg.hop_length, rounding_mode="floor")

    @torch.no_grad()
    def forward(self, audio: torch.Tensor, lengths: Optional[torch.Tensor] = None, dither: bool = False
                ) -> Tuple[torch.Tensor, torch.Tensor]:
        cfg = self.config
        if audio.dim() == 1:
            audio = audio[None]
        audio = audio.float()
        if lengths is None:
            lengths = torch.full((audio.shape[0],), audio.shape[1], dtype=torch.long, device=audio.device)
        flen = self.frame_lengths(lengths)
        if dither and cfg.dither > 0:
            audio = audio + cfg.dither * torch.randn_like(audio)
        x = torch.cat([audio[:, :1], audio[:, 1:] - cfg.preemph * audio[:, :-1]], dim=1)
        in_time = torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]
        x = x.masked_fill(~in_time, 0.0)
        spec = torch.stft(x, n_fft=cfg.n_fft, hop_length=cfg.hop_length, win_length=cfg.win_length,
                          window=self.window, center=True, pad_mode="constant", return_complex=True)
        power = spec.real.pow(2) + spec.imag.pow(2)
        mel = torch.matmul(self.fb, power)
        logmel = torch.log(mel + LOG_ZERO_GUARD)
        t = logmel.shape[-1]
        valid = torch.arange(t, device=audio.device)[None, :] < flen[:, None]  # [B, T]
        vm = valid[:, None, :].float()
        n = flen.clamp(min=2).float()[:, None]
        mean = (logmel * vm).sum(-1) / flen.clamp(min=1).float()[:, None]
        var = (((logmel - mean[..., None]) * vm) ** 2).sum(-1) / (n - 1)
        std = var.sqrt() + NORM_EPS
        feats = (logmel - mean[..., None]) / std[..., None]
        feats = feats * vm
        if cfg.pad_to > 0 and t % cfg.pad_to:
            feats = torch.nn.functional.pad(feats, (0, cfg.pad_to - t % cfg.pad_to))
        return feats, flen


def load_wav(path: str, expected_rate: int = 16000) -> np.ndarray:
    """Read a 16-bit PCM mono WAV as float32 in [-1, 1].

    Refuses (ValueError naming the file) other sample rates, stereo and non-PCM16 data
    instead of silently resampling: features of a wrong-rate file would be garbage; and a truncated
    file (fewer bytes than its header declares), whose missing tail would silently vanish.
    """
    with wave.open(str(path), "rb") as w:
        sr, ch, width, n = w.getframerate(), w.getnchannels(), w.getsampwidth(), w.getnframes()
        raw = w.readframes(n)
    if len(raw) < n * ch * width:
        raise ValueError(f"{path}: truncated: its header declares {n} samples but the file holds "
                         f"{len(raw) // max(1, ch * width)} (re-copy it, or rewrite the header with: sox in.wav out.wav)")
    if ch != 1:
        raise ValueError(f"{path}: {ch} channels; zsq needs mono audio (convert with: sox in.wav -c 1 out.wav)")
    if sr != expected_rate:
        raise ValueError(f"{path}: sample rate {sr} Hz; zsq needs {expected_rate} Hz "
                         f"(resample with: sox in.wav -r {expected_rate} out.wav)")
    if width != 2:
        raise ValueError(f"{path}: {8 * width}-bit samples; zsq needs 16-bit PCM (sox in.wav -b 16 out.wav)")
    return np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0


def wav_bytes_to_float(data: bytes) -> Tuple[np.ndarray, int]:
    """Parse an in-memory RIFF/WAV (e.g. ``espeak-ng --stdout``), tolerating the bogus sizes streamers write."""
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError("not a RIFF/WAVE stream")
    pos, sr, ch, width = 12, None, None, None
    while pos + 8 <= len(data):
        cid, size = data[pos:pos + 4], int.from_bytes(data[pos + 4:pos + 8], "little")
        if cid == b"fmt ":
            ch = int.from_bytes(data[pos + 10:pos + 12], "little")
            sr = int.from_bytes(data[pos + 12:pos + 16], "little")
            width = int.from_bytes(data[pos + 22:pos + 24], "little") // 8
        elif cid == b"data":
            body = data[pos + 8:]
            if size and size < len(body) and size != 0xFFFFFFFF and size != 0x7FFFFFFF:
                body = body[:size]
            body = body[: len(body) // 2 * 2]
            if width != 2 or ch != 1:
                raise ValueError(f"unsupported WAV stream: {ch} channels, {width} bytes per sample")
            return np.frombuffer(body, dtype="<i2").astype(np.float32) / 32768.0, sr
        pos += 8 + size + (size & 1)
    raise ValueError("WAV stream has no data chunk")


def resample(x: np.ndarray, sr: int) -> np.ndarray:
    """``x`` sampled at ``sr`` Hz, resampled to 16 kHz (polyphase)."""
    if sr == 16000:
        return x
    from math import gcd
    from scipy.signal import resample_poly
    g = gcd(sr, 16000)
    return resample_poly(x, 16000 // g, sr // g).astype(np.float32)
