"""The README's "passes in your own TVM flow" example runs as written, on a NeMo-style ONNX file."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx

from zsq_tvm.zoo.nets.export import export_onnx

ROOT = Path(__file__).resolve().parents[1]


def _readme_block(heading: str) -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index(heading):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_passes_in_your_own_tvm_flow_example_runs(tmp_path, monkeypatch):
    # a NeMo export names the mel input "audio_signal"; ours says "mel": rename it, as the example expects NeMo's
    model = onnx.load(str(export_onnx("quartznet-tiny", tmp_path / "exported.onnx", frames=256)))
    old = model.graph.input[0].name
    for node in model.graph.node:
        node.input[:] = ["audio_signal" if i == old else i for i in node.input]
    model.graph.input[0].name = "audio_signal"
    onnx.save(model, str(tmp_path / "model.onnx"))
    monkeypatch.chdir(tmp_path)
    np.random.seed(0)
    scope: dict = {}
    exec(compile(_readme_block("## The passes in your own TVM flow"), "README.md", "exec"), scope)  # noqa: S102
    assert scope["bn_stats"] and scope["meta"]["overflow"]["checks"]  # the values the functions return
    assert scope["ex"] is not None
