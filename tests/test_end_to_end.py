"""The README's first command: `zsq demo` on the shipped default model, as a user runs it."""

import json
import os
import subprocess
import sys


def test_zsq_demo_json(tmp_path):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    p = subprocess.run([sys.executable, "-m", "zsq_tvm.cli", "demo", "--json", "--workdir", str(tmp_path / "w")],
                       capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 0, p.stderr[-2000:]
    res = json.loads(p.stdout)
    assert res["logits_shape"][0] == 1 and res["logits_shape"][-1] == 29
    assert isinstance(res["text"][0], str)
    assert res["integer_only"] in (True, None)  # None only while the checker is not installed
    assert res["report"]["quantized"]["wbits"] == 8
    assert res["argmax_agreement_fp32"] is None or res["argmax_agreement_fp32"] > 0.5
    w = tmp_path / "w"
    assert (w / "quantized" / "manifest.json").exists() and (w / "build" / "model.so").exists()
