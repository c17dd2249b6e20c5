"""``zsq demo``: quantize + compile + check + run the shipped default model, end to end.

The default model is the shipped, trained ``quartznet5x5`` (``zsq_tvm/zoo/models/quartznet5x5.pt``),
exported to ONNX with its BatchNorm layers on the fly.  The input is a sentence spoken by
``espeak-ng`` when it is installed, else a tone sweep; the demo prints what the FP32 model and
the integer-only build transcribe.
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
DEMO_FRAMES = 400
DEMO_SENTENCE = "the quick brown fox jumps over the lazy dog"


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


def _demo_mel(features: int, frames: int) -> np.ndarray:
    """Mel of a spoken sentence (espeak-ng), else of a tone sweep, through the project's front end."""
    try:
        import shutil as _sh
        import subprocess

        import torch

        from zsq_tvm.audio import MelConfig, MelFrontend
        from zsq_tvm.audio.mel import resample, wav_bytes_to_float

        sr = 16000
        wave = None
        if _sh.which("espeak-ng"):
            data = subprocess.run(["espeak-ng", "-v", "en-us", "--stdout", DEMO_SENTENCE], capture_output=True,
                                  check=True).stdout
            x, r = wav_bytes_to_float(data)
            wave = resample(x, r)[: frames * 160 - 1]
        if wave is None:
            n = frames * 160 - 1
            t = np.arange(n) / sr
            wave = 0.3 * np.sin(2 * np.pi * (200 + 1800 * t / t[-1]) * t)
        mel = MelFrontend(MelConfig())(torch.tensor(wave[None], dtype=torch.float32))
        mel = mel[0] if isinstance(mel, tuple) else mel
        mel = mel.detach().numpy()[0]
        if mel.shape[0] == features:
            out = np.zeros((features, frames), np.float32)
            k = min(frames, mel.shape[1])
            out[:, :k] = mel[:, :k]
            return out
    except Exception:
        pass
    return np.random.default_rng(0).uniform(-1, 1, (features, frames)).astype(np.float32)


def run_demo(workdir=None, json_out: bool = False, keep: bool = False) -> int:
    tmp = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="zsq-demo-"))
    tmp.mkdir(parents=True, exist_ok=True)
    say = (lambda *a: print(*a, file=sys.stderr)) if json_out else print
    try:
        t0 = time.time()
        model, what = default_model(tmp)
        say(f"[1/5] model: {what} ({model})")
        q = pipeline.quantize(model, pipeline.QuantConfig(wbits=8, abits=8, frames=DEMO_FRAMES, calib="random",
                                                progress=not json_out))
        qdir = q.save(tmp / "quantized", overwrite=True)
        say(f"[2/5] quantized W8A8, {DEMO_FRAMES} frames, random calibration -> {qdir}")
        b = pipeline.compile(qdir, target="host")
        bdir = b.save(tmp / "build", overwrite=True)
        say(f"[3/5] compiled for {b.manifest['tvm_target']} -> {bdir}")
        rep = pipeline.check(bdir)
        say(f"[4/5] integer-only check: {'ok' if rep.get('ok') else rep.get('ok')}")
        feats = q.manifest["input"]["features"]
        mel = _demo_mel(feats, DEMO_FRAMES)
        from zsq_tvm.build import Build

        logits = Build.load(bdir).run(mel)
        text = b.decode(logits) if b.vocab else None
        agree, ref_text = None, None
        try:
            import onnxruntime as ort

            sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
            ref = sess.run(None, {sess.get_inputs()[0].name: mel[None]})[0]
            if ref.shape == logits.shape:
                agree = float((ref.argmax(-1) == logits.argmax(-1)).mean())
                ref_text = b.decode(ref) if b.vocab else None
        except Exception:
            pass
        r = q.report()
        say(f"[5/5] ran: logits {list(logits.shape)} {logits.dtype}; greedy CTC: {text[0] if text else '-'!r}")
        if agree is not None:
            say(f"      FP32 (ONNX Runtime) greedy CTC: {ref_text[0] if ref_text else '-'!r}")
            say(f"      frame argmax agreement with FP32 ONNX Runtime: {100 * agree:.1f} %")
        if "fp32" in r:
            say(f"      size {r['fp32']['size_mb']:.2f} -> {r['quantized']['size_mb']:.2f} MB, "
                f"BOPs(10 s) {r['fp32']['tbops']:.3f} -> {r['quantized']['tbops']:.4f} T")
        say(f"done in {time.time() - t0:.1f} s")
        if json_out:
            print(json.dumps({"model": str(model), "what": what, "integer_only": rep.get("ok"),
                              "logits_shape": list(logits.shape), "text": text, "report": r,
                              "argmax_agreement_fp32": agree,
                              "workdir": str(tmp) if (keep or workdir) else None}, indent=2, default=str))
        return 0 if rep.get("ok") is not False else 1
    finally:
        if not (keep or workdir):
            shutil.rmtree(tmp, ignore_errors=True)
