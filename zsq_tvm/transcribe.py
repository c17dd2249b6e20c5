"""``zsq transcribe MODEL_OR_BUILD AUDIO...``: audio files in, text (or JSON / SRT / VTT with word times) out.

MODEL_OR_BUILD is a build folder (run as it is), a quantized folder (compiled for this CPU in memory), or
anything ``zsq quantize`` takes (a shipped name such as ``quartznet5x5``, an ``.onnx`` or ``.nemo`` file): that is
quantized (default config, any length: symbolic T; a graph that fixes its length gets :data:`WINDOW_FRAMES`-frame
windows with the padding masked) and compiled for this CPU once, and the build is kept in the per-user cache (``${XDG_CACHE_HOME:-~/.cache}/zsq-tvm/builds/``), keyed by the model
file's SHA-256, the length, the zsq and TVM versions and this CPU's class, so the next call starts at once.

Audio of any length, format and rate goes through :func:`zsq_tvm.audio.io.pcm_blocks` (16 kHz mono, one notice
per conversion) and :class:`zsq_tvm.streaming.Stream` (overlapping windows, stitched on output frames), so memory
stays bounded by one window and a few seconds of audio.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Callable

from zsq_tvm import artifacts
from zsq_tvm.audio.io import AudioInfo, audio_info, pcm_blocks
from zsq_tvm.core.errors import ConfigError, ZsqError
from zsq_tvm.streaming import FRAME_SECONDS, format_srt, format_vtt

__all__ = ["transcribe", "load_build", "format_transcript", "FORMATS", "WINDOW_FRAMES",
           "build_cache_dir"]

FORMATS = ("text", "json", "srt", "vtt")
WINDOW_FRAMES = 1000  # 10 s windows: 6 s kept per window with 2 s of context on each side
_PROGRESS_SECONDS = 60.0  # show a progress bar for files longer than this


def build_cache_dir() -> Path:
    """``${XDG_CACHE_HOME:-~/.cache}/zsq-tvm/builds``, beside the tuning cache."""
    from zsq_tvm.tuning_db import cache_root

    return cache_root() / "builds"


def _model_identity(model: str) -> tuple[str, str]:
    """``(short name, SHA-256 of what defines the model)`` for the build cache key."""
    from zsq_tvm.zoo.models import is_shipped
    from zsq_tvm.zoo.nets import ALL_ARCHS

    if is_shipped(model):
        from zsq_tvm.zoo.models import checkpoint_path

        path = checkpoint_path(model)
    elif model in ALL_ARCHS and not os.path.exists(model):
        return model, hashlib.sha256(f"arch:{model}:seed0".encode()).hexdigest()  # seeded random weights
    else:
        path = Path(model)
        if not path.is_file():
            raise ConfigError(f"{model!r} is not a build folder, a quantized folder, a model file or a shipped model",
                              "pass one of those (e.g. quartznet5x5, model.onnx, model.nemo, build/)")
    return Path(model).stem, artifacts.sha256_file(path)


def load_build(model, frames: int | None = None, say: Callable[[str], None] = print, cache: bool = True):
    """MODEL_OR_BUILD (module doc) -> a :class:`zsq_tvm.build.Build` that runs on this machine.  A model is
    built for any length (symbolic T) unless ``frames`` is given or its graph fixes the length (then windows of
    :data:`WINDOW_FRAMES`)."""
    from zsq_tvm import pipeline
    from zsq_tvm.build import Build

    s = os.fspath(model)
    p = Path(s)
    if p.is_dir():
        man = artifacts.read_manifest(p, verify=False)  # its kind; the loads below verify the folder
        if man["kind"] == artifacts.KIND_BUILD:
            return Build.load(p)
        if man["kind"] == artifacts.KIND_QUANTIZED:
            say(f"compiling the quantized model {s} for this CPU (once per call; `zsq compile` keeps a build)")
            return pipeline.compile(s, target="host")
        raise ConfigError(f"{s!r} is a {man['kind']} folder", "pass a build, a quantized folder or a model")
    import tvm

    from zsq_tvm import __version__
    from zsq_tvm.targets import get_target
    from zsq_tvm.tuning_db import target_key

    name, sha = _model_identity(s)
    key = hashlib.sha256(json.dumps([sha, frames or "any", __version__, tvm.__version__,
                                     target_key(get_target("host").make())]).encode()).hexdigest()[:16]
    where = build_cache_dir() / f"{name}-{key}"
    if cache and where.is_dir():
        return Build.load(where)
    what = f"{frames}-frame windows" if frames else "any length"
    say(f"building {s} for this CPU ({what}; first use only, about half a minute)")
    if frames is None:
        from relax_passes.symbolic_time import SymbolicTimeError

        try:
            q = pipeline.quantize(s, pipeline.QuantConfig(progress=False))
        except SymbolicTimeError:  # e.g. the Conformer: its graph fixes T; padded windows, the padding masked
            say(f"{s} takes a fixed length: building {WINDOW_FRAMES}-frame windows instead")
            q = pipeline.quantize(s, pipeline.QuantConfig(frames=WINDOW_FRAMES, time_mask=True, progress=False))
    else:
        q = pipeline.quantize(s, pipeline.QuantConfig(frames=frames, time_mask=True, progress=False))
    b = pipeline.compile(q, target="host")
    if cache:
        try:
            where.parent.mkdir(parents=True, exist_ok=True)
            b.save(where)
            say(f"cached the build in {where}")
            return Build.load(where)
        except (OSError, ZsqError) as e:  # a read-only home or a full disk must not stop the transcription
            say(f"could not cache the build in {where} ({' '.join(str(e).split())[:120]}); using it in memory")
    return b


def _transcribe_file(build, info: AudioInfo, context_frames: int | None, progress: bool) -> dict:
    bar = None
    if progress and info.seconds > _PROGRESS_SECONDS:
        from tqdm import tqdm

        bar = tqdm(total=round(info.seconds, 1), unit="s", desc=Path(info.path).name, file=sys.stderr,
                   bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s audio [{elapsed}<{remaining}]")

    def on_window(mel_frames):
        if bar is not None:
            bar.update(min(info.seconds, mel_frames * FRAME_SECONDS) - bar.n)

    stream = build.stream(context_frames=context_frames, on_window=on_window)
    try:
        for block in pcm_blocks(info):
            stream.push(block)
        stream.finish()
    finally:
        if bar is not None:
            bar.close()
    t = stream.transcript()
    return {"audio": info.path, **t.to_json(), "notices": info.notices()}


def transcribe(model, audio, context_frames: int | None = None, frames: int | None = None,
               progress: bool = True, say: Callable[[str], None] = print) -> list[dict]:
    """Transcribe each audio file with MODEL_OR_BUILD (module doc); one dict per file: ``text``, ``words``
    (``word``, ``start``, ``end`` in seconds), ``segments``, ``duration``, ``notices``."""
    paths = [audio] if isinstance(audio, (str, os.PathLike)) else list(audio)
    if not paths:
        raise ConfigError("no audio files given", "pass one or more WAV / FLAC / OGG files")
    infos = [audio_info(a) for a in paths]  # every file readable before any model work
    build = load_build(model, frames=frames, say=say)
    if build.vocab is None:
        raise ConfigError(f"{os.fspath(model)!r} has no vocabulary", "quantize a model with a CTC vocabulary")
    out = []
    for info in infos:
        for n in info.notices():
            say(n)
        out.append(_transcribe_file(build, info, context_frames, progress))
    return out


def format_transcript(result: dict, fmt: str) -> str:
    """One file's result as ``text`` / ``json`` / ``srt`` / ``vtt``."""
    if fmt == "text":
        return result["text"] + "\n"
    if fmt == "json":
        return json.dumps(result, indent=2) + "\n"
    if fmt == "srt":
        return format_srt(result["segments"])
    if fmt == "vtt":
        return format_vtt(result["segments"])
    raise ConfigError(f"unknown format {fmt!r}", "use one of: " + ", ".join(FORMATS))

