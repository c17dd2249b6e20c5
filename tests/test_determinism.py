"""Determinism: same model, seed and calibration -> byte-identical quantized parameters and identical
outputs, in two separate processes (this one and a child with another ``PYTHONHASHSEED``).

Compared: every file of the quantized directory byte for byte (``module.json`` holds the integer
weights, biases and dyadic multipliers; ``quant.json`` the scales; ``calibration.json`` the ranges) -
except ``manifest.json``, whose ``created`` timestamp is the only field allowed to differ - and the
logits of the compiled builds on the same mels.  A different seed must change the calibration, so the
comparison can fail.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

import zsq_tvm
from _zsq_models import micro_onnx
from zsq_tvm.api import QuantConfig

FRAMES = 32

PIPELINE = """
import sys
import numpy as np
import zsq_tvm
from zsq_tvm.api import QuantConfig

def pipeline(model, qdir, mels):
    q = zsq_tvm.quantize(model, QuantConfig(frames=32, num_batches=2, seed=0))
    q.save(qdir)
    return zsq_tvm.compile(qdir).run(mels)

if __name__ == "__main__":
    model, qdir, mels, out = sys.argv[1:5]
    np.save(out, pipeline(model, qdir, np.load(mels)))
"""


def _pipeline(model, qdir, mels):
    q = zsq_tvm.quantize(model, QuantConfig(frames=FRAMES, num_batches=2, seed=0))
    q.save(qdir)
    return zsq_tvm.compile(qdir).run(mels)


def test_two_processes_give_identical_parameters_and_outputs(tmp_path):
    model = micro_onnx(tmp_path / "micro.onnx", frames=FRAMES)
    mels = np.random.default_rng(7).uniform(-2, 2, (3, 64, FRAMES)).astype(np.float32)
    np.save(tmp_path / "mels.npy", mels)
    (tmp_path / "pipeline.py").write_text(PIPELINE)
    env = dict(os.environ, PYTHONHASHSEED="1234", PYTHONWARNINGS="ignore")
    child = subprocess.Popen([sys.executable, str(tmp_path / "pipeline.py"), str(model), str(tmp_path / "qB"),
                              str(tmp_path / "mels.npy"), str(tmp_path / "yB.npy")], env=env,
                             stderr=subprocess.PIPE, text=True)
    try:
        yA = _pipeline(model, tmp_path / "qA", mels)  # meanwhile, in this process
    finally:
        _, err = child.communicate(timeout=600)
    assert child.returncode == 0, err[-3000:]

    qA, qB = tmp_path / "qA", tmp_path / "qB"
    names = sorted(p.name for p in qA.iterdir())
    assert names == sorted(p.name for p in qB.iterdir())
    assert {"module.json", "quant.json", "calibration.json"} <= set(names)
    for n in names:
        if n == "manifest.json":
            a, b = (json.loads((d / n).read_text()) for d in (qA, qB))
            a.pop("created"), b.pop("created")
            assert a == b
        else:
            assert (qA / n).read_bytes() == (qB / n).read_bytes(), f"{n} differs between the two processes"
    yB = np.load(tmp_path / "yB.npy")
    assert yA.dtype == yB.dtype and yA.shape == yB.shape == (3,) + yA.shape[1:]
    np.testing.assert_array_equal(yA, yB)

    # the comparison can fail: another seed draws other calibration inputs -> other ranges / parameters
    zsq_tvm.quantize(model, QuantConfig(frames=FRAMES, num_batches=2, seed=1)).save(tmp_path / "qC")
    assert (tmp_path / "qC" / "calibration.json").read_bytes() != (qA / "calibration.json").read_bytes()
    assert (tmp_path / "qC" / "module.json").read_bytes() != (qA / "module.json").read_bytes()
