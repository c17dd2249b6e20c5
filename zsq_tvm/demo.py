"""``zsq demo``: quantize + compile + check + run the shipped default model, end to end.

The default model is the shipped, trained ``quartznet5x5`` (``zsq_tvm/zoo/models/quartznet5x5.pt``),
exported to ONNX with its BatchNorm layers on the fly.  The input is the speech clip shipped in the
package (``zsq_tvm/zoo/clips/small_device.flac``); the demo prints what was said, what the FP32 model and
what the integer-only build transcribe, side by side.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from zsq_tvm import pipeline
from zsq_tvm.zoo.models import MODELS_DIR
from zsq_tvm.zoo.toy import export_convasr

DEFAULT_MODEL = "quartznet5x5"
DEMO_FRAMES = 500  # the clip is 4.68 s = 467 frames: one window, its padding masked
DEMO_CLIP = MODELS_DIR.parent / "clips" / "small_device.flac"  # espeak-ng, see zsq_tvm/zoo/clips/README.md
DEMO_SENTENCE = "speech recognition on a small device open the door and wait for me"


def default_model(workdir: Path) -> tuple[Path, str]:
    """Path of the shipped default ONNX model, or a freshly exported random-weight stand-in."""
    if (MODELS_DIR / f"{DEFAULT_MODEL}.pt").exists():
        from zsq_tvm.zoo.nets.export import export_onnx

        path = export_onnx(DEFAULT_MODEL, workdir / f"{DEFAULT_MODEL}.onnx", frames=DEMO_FRAMES)
        return Path(path), f"shipped trained {DEFAULT_MODEL}"

    try:
        import zsq_tvm.zoo.nets.convasr  # noqa: F401

        arch = "quartznet-tiny"
    except ImportError:
        arch = "micro"
    path = workdir / f"{arch}-random.onnx"
    export_convasr(path, arch=arch, frames=DEMO_FRAMES)
    return path, f"{arch} with random weights (no trained model shipped yet)"


def _demo_mel(features: int) -> tuple[np.ndarray, str]:
    """Log-mel ``[F, L]`` of the speech clip shipped in the package (:data:`DEMO_CLIP`) and what it says."""
    from zsq_tvm.audio.io import read_pcm
    from zsq_tvm.evaluate import compute_mel_pcm

    pcm, _ = read_pcm(DEMO_CLIP)
    mel = compute_mel_pcm(pcm)
    if mel.shape[0] != features:
        raise ValueError(f"the demo model takes {features} mel features, the front end makes {mel.shape[0]}")
    return mel, DEMO_SENTENCE


def run_demo(workdir=None, json_out: bool = False, keep: bool = False) -> int:
    tmp = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="zsq-demo-"))
    tmp.mkdir(parents=True, exist_ok=True)
    say = (lambda *a: print(*a, file=sys.stderr)) if json_out else print
    try:
        t0 = time.time()
        model, what = default_model(tmp)
        say(f"[1/5] model: {what} ({model})")
        q = pipeline.quantize(model, pipeline.QuantConfig(wbits=8, abits=8, frames=DEMO_FRAMES, calib="random",
                                                time_mask=True, progress=not json_out))
        qdir = q.save(tmp / "quantized", overwrite=True)
        say(f"[2/5] quantized W8A8, {DEMO_FRAMES} frames (padding masked), random calibration -> {qdir}")
        b = pipeline.compile(qdir, target="host")
        bdir = b.save(tmp / "build", overwrite=True)
        say(f"[3/5] compiled for {b.manifest['tvm_target']} -> {bdir}")
        rep = pipeline.check(bdir)
        say(f"[4/5] integer-only check: {'ok' if rep.get('ok') else rep.get('ok')}")
        feats = q.manifest["input"]["features"]
        mel, spoken = _demo_mel(feats)
        L = mel.shape[1]
        padded = np.zeros((1, feats, DEMO_FRAMES), np.float32)
        padded[0, :, :L] = mel
        from zsq_tvm.build import Build

        built = Build.load(bdir)
        logits = built.run(padded, length=L if built.time_mask else None)
        text = built.decode(logits, length=L if built.time_mask else None)[0] if built.vocab else None
        ref_text = None
        try:  # the FP32 model on the same, unpadded mel
            from zsq_tvm.evaluate import load_runner

            fp32 = load_runner(DEFAULT_MODEL) if what.startswith("shipped") else None
            if fp32 is not None:
                from zsq_tvm.ctc import greedy_decode

                ref_text = greedy_decode(fp32.infer(mel[None])[None], fp32.vocab, "BTV")[0]
        except Exception:  # the comparison is informative: never fail the demo on it
            pass
        r = q.report()
        say(f"[5/5] ran the shipped clip ({L / 100:.2f} s, {DEMO_CLIP.name}): logits {list(logits.shape)} "
            f"{logits.dtype}")
        say(f"      spoken:              {spoken!r}")
        say(f"      FP32 (PyTorch):      {ref_text if ref_text is not None else '-'!r}")
        say(f"      integer-only build:  {text if text is not None else '-'!r}")
        if "fp32" in r:
            say(f"      size {r['fp32']['size_mb']:.2f} -> {r['quantized']['size_mb']:.2f} MB, "
                f"BOPs(10 s) {r['fp32']['tbops']:.3f} -> {r['quantized']['tbops']:.4f} T")
        say("      transcribe any audio file: zsq transcribe quartznet5x5 FILE.wav")
        say(f"done in {time.time() - t0:.1f} s")
        if json_out:
            print(json.dumps({"model": str(model), "what": what, "integer_only": rep.get("ok"),
                              "logits_shape": list(logits.shape), "text": text, "fp32_text": ref_text,
                              "spoken": spoken, "report": r,
                              "workdir": str(tmp) if (keep or workdir) else None}, indent=2, default=str))
        return 0 if rep.get("ok") is not False else 1
    finally:
        if not (keep or workdir):
            shutil.rmtree(tmp, ignore_errors=True)
