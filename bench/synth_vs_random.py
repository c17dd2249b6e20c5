"""First small zero-shot comparison (paper Table 2 in miniature, NOT the 4-seed WER experiment).

QuartzNet-5x5 (shipped), W8A8 minmax, host build; calibration with
  * synthetic mels (a directory written by ``zsq synth``),
  * random uniform [-3, 3] (the paper's ablation, §4.1),
  * real mels (espeak-ng sentences, en-us),
evaluated on short espeak-ng sentences in other voices (disjoint text): cosine and frame-argmax
agreement of the INT8 logits vs FP32 (torch), and CER of the greedy decodes vs the reference text.

    python3 -m bench.synth_vs_random --synth /tmp/zsq_synth/qn5_syn --frames 256 --json out.json
"""
from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

import zsq_tvm
from zsq_tvm.audio.mel import MelFrontend, wav_bytes_to_float
from lab.corpus import _resample

CALIB = ["the quick brown fox jumps over the lazy dog", "she sells sea shells by the sea shore",
         "a long lasting friendship is worth more than gold", "please call stella and ask her to come",
         "in the beginning god created the heaven", "he could not remember where he left the keys",
         "the children sang songs in the kitchen", "our team will meet again next week"]
EVAL = ["the war against crime goes on", "behold two men stood by them", "the climber started near the top",
        "i can breathe better in clean air", "the old man sold his boat", "we walked home after the game",
        "the music was too loud for her", "they found a small black cat"]


def tts_mels(sentences, voice, frames):
    fe = MelFrontend()
    out = []
    for s in sentences:
        wav = subprocess.run(["espeak-ng", "-v", voice, "--stdout", s], capture_output=True, check=True).stdout
        x, sr = wav_bytes_to_float(wav)
        f, n = fe(torch.from_numpy(_resample(x, sr))[None])
        m = np.zeros((64, frames), np.float32)
        k = min(frames, int(n[0]))
        m[:, :k] = f[0, :, :k].numpy()
        out.append(m)
    return np.stack(out)


def cer(hyp: str, ref: str) -> float:
    import jiwer

    return float(jiwer.cer(ref, hyp)) if ref else float(bool(hyp))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--synth", required=True, help="directory of synthetic .npy batches (zsq synth)")
    ap.add_argument("--frames", type=int, default=256)
    ap.add_argument("--json", default=None)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from zsq_tvm.zoo.models import load_torch
    from zsq_tvm.synthesize import bn_loss

    T = a.frames
    fp = load_torch("quartznet5x5")
    synth = np.concatenate([np.load(f) for f in sorted(Path(a.synth).glob("*.npy"))])[..., :T]
    n = synth.shape[0]
    rng = np.random.default_rng(0)
    calibs = {
        "synthetic": synth,
        "random_u3": rng.uniform(-3, 3, size=(n, 64, T)).astype(np.float32),
        "real_tts": np.concatenate([tts_mels(CALIB, v, T) for v in ("en-us", "en-gb-x-rp")])[:n],
    }
    evals = np.concatenate([tts_mels(EVAL, v, T) for v in ("en-gb", "en-gb-x-gbcwmd")])
    refs = EVAL * 2
    with torch.no_grad():
        fp_logits = fp(torch.from_numpy(evals)).numpy()
    fp_text = zsq_tvm.greedy_decode(fp_logits)
    res = {"frames": T, "n_calib": n, "n_eval": len(evals),
           "fp32_cer_vs_ref": float(np.mean([cer(h, r) for h, r in zip(fp_text, refs)])),
           "bn_loss_of_calib_data": {k: float(sum(bn_loss(fp, v[:8]))) for k, v in calibs.items()}, "runs": {}}
    for name, data in calibs.items():
        t0 = time.time()
        q = zsq_tvm.quantize("quartznet5x5", zsq_tvm.QuantConfig(wbits=8, abits=8, frames=T, calib=list(data),
                                                                   calib_method="minmax"))
        b = zsq_tvm.compile(q, target="host")
        y = b.run(evals)
        cos = [float(np.dot(u.ravel(), v.ravel()) / (np.linalg.norm(u) * np.linalg.norm(v)))
               for u, v in zip(y.astype(np.float64), fp_logits.astype(np.float64))]
        agree = float(np.mean(y.argmax(-1) == fp_logits.argmax(-1)))
        text = b.decode(y)
        res["runs"][name] = {
            "cosine_mean": float(np.mean(cos)), "cosine_min": float(np.min(cos)), "argmax_agreement": agree,
            "cer_vs_fp32_decode": float(np.mean([cer(h, r) for h, r in zip(text, fp_text)])),
            "cer_vs_ref": float(np.mean([cer(h, r) for h, r in zip(text, refs)])),
            "input_scale": q.manifest["input_scale"], "seconds": time.time() - t0, "example": text[:2]}
        print(name, json.dumps(res["runs"][name]), flush=True)
    print(json.dumps({k: v for k, v in res.items() if k != "runs"}, indent=1))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
