"""CI size of ``bench/steady_run.py``: 300 consecutive ``Build.run`` calls with flat RSS (< 5 % growth) and
identical outputs, then 1 and 2 Python threads running inference on one ``Build`` at once with outputs
equal to the single-thread ones.  (Before ``Build`` kept one VM per thread, the 2-thread run failed with
"Check failed: reg < frame->register_file.size()".)  The full run is ``python bench/steady_run.py``.
"""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path

import numpy as np
import pytest

import zsq_tvm
from _zsq_models import micro_onnx
from zsq_tvm.api import QuantConfig

ROOT = Path(__file__).resolve().parents[1]
FRAMES = 32


def _bench():
    spec = importlib.util.spec_from_file_location("steady_run", ROOT / "bench" / "steady_run.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    d = tmp_path_factory.mktemp("steady")
    q = zsq_tvm.quantize(micro_onnx(d / "micro.onnx", frames=FRAMES), QuantConfig(frames=FRAMES, num_batches=2))
    return zsq_tvm.compile(q, target="host")


def test_steady_run_ci_size(build):
    res = _bench().steady(build, inferences=300, per_thread=100, thread_counts=(1, 2), warmup=20)
    lr = res["long_run"]
    assert lr["mismatches"] == 0 and lr["inferences"] == 300
    assert lr["rss_growth_pct"] < 5.0, lr
    for c, n in zip(res["concurrent"], (1, 2)):
        assert c["threads"] == n and c["inferences"] == 100 * n
        assert c["errors"] == [] and c["mismatches"] == 0, c
    assert res["ok"]


def test_each_thread_gets_its_own_vm(build):
    vms = {}

    def grab(k):
        vms[k] = build._vm_()
        assert build._vm_() is vms[k]  # reused within a thread

    ts = [threading.Thread(target=grab, args=(k,)) for k in range(3)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert len({id(v) for v in vms.values()}) == 3
    assert all(build._vm_() is not v for v in vms.values())
    mel = np.zeros((64, FRAMES), np.float32)
    np.testing.assert_array_equal(build.run(mel), build.run(mel))
