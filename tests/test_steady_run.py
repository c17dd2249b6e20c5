"""Steady runs through the Python runtime (``Build.run``), at CI size: 300 consecutive calls with flat RSS
(< 5 % growth) and identical outputs, then 2 Python threads running inference on one ``Build`` at once with
outputs equal to the single-thread ones.  (Before ``Build`` kept one VM per thread, the 2-thread run failed
with "Check failed: reg < frame->register_file.size()".)  The long measured run (10 000 inferences, timings,
JSON) is ``python3 -m bench.steady_run``.
"""

from __future__ import annotations

import threading

import numpy as np
import psutil
import pytest

import zsq_tvm
from _zsq_models import micro_onnx
from zsq_tvm.api import QuantConfig

FRAMES = 32


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    d = tmp_path_factory.mktemp("steady")
    q = zsq_tvm.quantize(micro_onnx(d / "micro.onnx", frames=FRAMES), QuantConfig(frames=FRAMES, num_batches=2))
    return zsq_tvm.compile(q, target="host")


@pytest.fixture(scope="module")
def mels_and_refs(build):
    rng = np.random.default_rng(0)
    mels = [rng.uniform(-2, 2, (64, FRAMES)).astype(np.float32) for _ in range(8)]
    return mels, [build.run(m) for m in mels]  # single-thread reference outputs


def test_300_runs_keep_memory_flat_and_outputs_identical(build, mels_and_refs):
    mels, refs = mels_and_refs
    for i in range(20):  # warm-up: allocator pools and the VM's first-call caches settle
        build.run(mels[i % 8])
    rss0 = psutil.Process().memory_info().rss
    mismatches = sum(not np.array_equal(build.run(mels[i % 8]), refs[i % 8]) for i in range(300))
    growth_pct = 100.0 * (psutil.Process().memory_info().rss - rss0) / rss0
    assert mismatches == 0
    assert growth_pct < 5.0, f"RSS grew {growth_pct:.2f} % over 300 runs"


def test_two_threads_share_one_build(build, mels_and_refs):
    mels, refs = mels_and_refs
    mismatches, errors = [0, 0], []
    start = threading.Barrier(2)

    def work(k: int):
        try:
            start.wait()
            for i in range(100):
                j = (2 * i + k) % 8
                mismatches[k] += not np.array_equal(build.run(mels[j]), refs[j])
        except Exception as e:  # collected: an exception in a thread would otherwise only be printed
            errors.append(f"thread {k}: {type(e).__name__}: {e}")

    ts = [threading.Thread(target=work, args=(k,)) for k in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert errors == [] and mismatches == [0, 0]


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
