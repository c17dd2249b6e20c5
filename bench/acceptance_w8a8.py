"""Foundation acceptance: QuartzNet-5x5 (trained, shipped) and QuartzNet-15x5 (random weights),
10 s input (1000 frames x 64 mel), ONNX -> W8A8 -> host build.

For each model it records: `zsq check` verdict, bit-exactness of the TVM build against the numpy
integer reference, cosine similarity and CTC-argmax agreement of the INT8 logits vs the FP32
logits (ONNX Runtime), model size and BOPs (Table 1), and compile/run times.  Inputs are mel
spectrograms of espeak-ng speech (calibration and evaluation sentences disjoint).

    python3 -m bench.acceptance_w8a8 --json bench/results/acceptance_w8a8.json
"""
from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import zsq_tvm
from zsq_tvm.audio.mel import MelFrontend, wav_bytes_to_float
from lab.corpus import _resample
from zsq_tvm.zoo.nets import build_model, randomize_batchnorm

FRAMES = 1000
CALIB = ["the quick brown fox jumps over the lazy dog and runs far away into the forest",
         "she sells sea shells by the sea shore every morning before the sun rises",
         "a long lasting friendship is worth more than all the gold in the kingdom",
         "please call stella and ask her to bring these things with her from the store",
         "in the beginning god created the heaven and the earth",
         "he could not remember where he had left the keys to the old house",
         "the children sang songs while their parents prepared dinner in the kitchen",
         "our team will meet again next week to discuss the results of the experiment"]
EVAL = ["the war against crime goes on in every city of the country",
        "behold two men stood by them in white apparel",
        "the mountain climber started to hyperventilate near the top",
        "i can breathe better when the air is clean and cool"]


def tts_mels(sentences, voice="en-us"):
    fe = MelFrontend()
    out = []
    for s in sentences:
        wav = subprocess.run(["espeak-ng", "-v", voice, "--stdout", s], capture_output=True, check=True).stdout
        x, sr = wav_bytes_to_float(wav)
        x = _resample(x, sr)
        f, n = fe(torch.from_numpy(x)[None])
        m = np.zeros((1, 64, FRAMES), np.float32)
        k = min(FRAMES, int(n[0]))
        m[0, :, :k] = f[0, :, :k].numpy()
        out.append(m)
    return out


def load_model(name):
    if name == "quartznet5x5":
        ck = torch.load(Path(zsq_tvm.__file__).parent / "zoo" / "models" / "quartznet5x5.pt", weights_only=True)
        m = build_model(ck["arch"])
        m.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in ck["state_dict"].items()})
        return m, "trained (shipped checkpoint)"
    torch.manual_seed(0)
    m = build_model(name)
    # random weights, but non-trivial BatchNorm statistics so that folding is exercised
    randomize_batchnorm(m)  # torch's global RNG, seeded above: the same statistics as before
    return m, "random weights (seed 0)"


def export(model, path):
    model.eval()
    x = torch.zeros(1, 64, FRAMES)
    torch.onnx.export(model, x, path, input_names=["mel"], output_names=["logits"],
                      training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False, dynamo=False,
                      opset_version=17)


def run_one(name, calib, evals, workdir):
    import onnx
    import onnxruntime as ort
    from relax_passes.reference import run_reference

    model, weights = load_model(name)
    onnx_path = str(Path(workdir) / f"{name}.onnx")
    export(model, onnx_path)
    n_bn = sum(n.op_type == "BatchNormalization" for n in onnx.load(onnx_path).graph.node)
    t0 = time.time()
    q = zsq_tvm.quantize(onnx_path, zsq_tvm.QuantConfig(wbits=8, abits=8, frames=FRAMES, calib=calib,
                                                        calib_method="minmax", progress=False))
    t_quant = time.time() - t0
    t0 = time.time()
    b = zsq_tvm.compile(q, target="host")
    t_compile = time.time() - t0
    chk = zsq_tvm.check(b)
    sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    cos, agree, exact, t_run = [], [], [], []
    for x in evals:
        fp = sess.run(None, {"mel": x})[0]
        t0 = time.time()
        y = b.run(x)
        t_run.append(time.time() - t0)
        ref = run_reference(q.mod, x)
        ref = ref.numpy() if hasattr(ref, "numpy") else np.asarray(ref)
        exact.append(bool(np.array_equal(np.asarray(y), ref)))
        a, f = np.asarray(y, np.float64).ravel(), fp.astype(np.float64).ravel()
        cos.append(float(a @ f / (np.linalg.norm(a) * np.linalg.norm(f) + 1e-30)))
        agree.append(float(np.mean(np.asarray(y).argmax(-1) == fp.argmax(-1))))
    rep = q.report()
    return {"model": name, "weights": weights, "frames": FRAMES, "batchnorm_nodes_in_onnx": n_bn,
            "integer_only": bool(chk.get("ok")), "bit_exact_vs_reference": all(exact),
            "cosine_int8_vs_fp32": cos, "argmax_agreement": agree,
            "size_mb_fp32": rep.get("fp32", {}).get("size_mb"), "size_mb_w8a8": rep.get("quantized", {}).get("size_mb"),
            "tbops_fp32": rep.get("fp32", {}).get("tbops"), "tbops_w8a8": rep.get("quantized", {}).get("tbops"),
            "quantize_s": t_quant, "compile_s": t_compile, "run_s_median": float(np.median(t_run)),
            "report": rep}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["quartznet5x5", "quartznet15x5"])
    ap.add_argument("--json", default="bench/results/acceptance_w8a8.json")
    a = ap.parse_args()
    calib, evals = tts_mels(CALIB), tts_mels(EVAL, voice="en-gb")
    results = []
    with tempfile.TemporaryDirectory() as d:
        for name in a.models:
            r = run_one(name, calib, evals, d)
            results.append(r)
            print(json.dumps({k: v for k, v in r.items() if k != "report"}, indent=1), flush=True)
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
