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
    # the shipped clip, which the shipped model gets right in FP32 and integer-only (zsq_tvm/zoo/clips/README.md)
    assert res["text"] == res["fp32_text"] == res["spoken"] == "speech recognition on a small device open the door and wait for me"
    assert res["integer_only"] is True
    assert res["report"]["quantized"]["wbits"] == 8
    w = tmp_path / "w"
    assert (w / "quantized" / "manifest.json").exists() and (w / "build" / "model.so").exists()
