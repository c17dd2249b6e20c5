"""Latency comparison of a zsq build against ONNX Runtime on the same input, in one process.

``compare_onnx(build, "model.onnx", threads=2)`` times, in alternating blocks on one seeded
input mel:

* ``zsq_int8``      -- the build (integer-only), through the Relax VM, input already quantized;
* ``ort_fp32``      -- ONNX Runtime on the given ONNX file;
* ``ort_int8_qdq``  -- ONNX Runtime on ``quantize_static`` of the same file (QDQ, per-channel int8
  weights, uint8 activations), calibrated on ``calib`` seeded N(0, 1) mels of the build's shape
  (ONNX Runtime's own recipe; it is *not* integer-only: requantization runs in float).

Each engine is warmed up, then the engines take turns, ``block`` timed runs each after one untimed run
(:func:`time_engines`: alternating spreads the noise of a shared machine over all of them; the untimed run
keeps ONNX Runtime's spinning workers out of the next engine's samples). Reported: median / min per engine in ms and the ratios
``other median / zsq median`` (> 1: zsq is faster).  Thread count: TVM reads ``TVM_NUM_THREADS``
when its thread pool starts, so :func:`set_threads` must run before the first TVM kernel of the
process (``zsq bench`` does); ONNX Runtime gets ``intra_op_num_threads``.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from zsq_tvm.build import Build
from zsq_tvm.core.errors import ConfigError, ModelLoadError, NotAvailableError
from zsq_tvm.frontend.onnx_import import load_onnx
from zsq_tvm.frontend.onnx_safety import check_static_shapes

__all__ = ["set_threads", "compare_onnx", "time_engines", "format_compare"]


def set_threads(n: int) -> None:
    """Use ``n`` threads in TVM kernels (call before the first TVM kernel runs) and in ONNX Runtime."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ConfigError(f"--threads {n!r} must be an integer >= 1", "pass --threads 1 or more")
    os.environ["TVM_NUM_THREADS"] = str(n)
    os.environ["OMP_NUM_THREADS"] = str(n)


def time_engines(engines: dict, runs: int, warmup: int = 3, progress: bool = False, block: int = 5) -> dict:
    """Timing of zero-argument callables; ``{"median_ms", "min_ms", "samples_ms"}`` (``runs`` samples each).

    The engines take turns in blocks of ``block`` timed runs, each block after one untimed run: ONNX Runtime's
    intra-op workers spin for a while after a run, and on a 2-core machine they would take the second core from
    the next engine's first run (measured: the Conformer build at 2 threads, 48 ms alone, read 84 ms when
    alternating run by run with ORT).  Turns still alternate, so a shared machine's noise spreads over all."""
    from tqdm.auto import tqdm

    for f in engines.values():
        for _ in range(warmup):
            f()
    samples = {k: [] for k in engines}
    block = max(1, int(block))
    for _ in tqdm(range(-(-runs // block)), desc="bench", unit="turn", disable=not progress):
        for k, f in engines.items():
            n = min(block, runs - len(samples[k]))
            if n <= 0:
                continue
            f()  # untimed: lets the previous engine's threads go idle
            for _ in range(n):
                t = time.perf_counter()
                f()
                samples[k].append((time.perf_counter() - t) * 1e3)
    return {"median_ms": {k: statistics.median(s) for k, s in samples.items()},
            "min_ms": {k: min(s) for k, s in samples.items()},
            "samples_ms": samples}


def _ort():
    try:
        import onnxruntime as ort
    except ImportError:  # pragma: no cover - onnxruntime is a dependency
        raise NotAvailableError("onnxruntime is not installed", "pip install onnxruntime") from None
    return ort


def _ort_session(path: str, threads: int):
    ort = _ort()
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def ort_int8_qdq(onnx_path: str, out_path: str, in_name: str, calib: list[np.ndarray]) -> str:
    """ONNX Runtime static quantization (QDQ, per-channel s8 weights, u8 activations) of ``onnx_path``."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{in_name: c} for c in calib])

        def get_next(self):
            return next(self.it, None)

    quantize_static(onnx_path, out_path, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return out_path


def _load_checked_onnx(onnx_path: str):
    """The ONNX file through zsq's own checks (:func:`~zsq_tvm.frontend.onnx_import.load_onnx`: external data
    inside the model's folder and complete, declared sizes, memory budget, finite weights) - ONNX Runtime
    reads the file by itself later and would crash or read outside the folder where these refuse."""

    if not Path(onnx_path).exists():  # the bench's own fix; a directory etc. is load_onnx's message
        raise ModelLoadError(f"ONNX file {onnx_path!r} does not exist", "pass the .onnx the build was quantized from")
    return load_onnx(onnx_path)[0]


def _onnx_input(proto, onnx_path: str, shape: list[int]):
    """Name of the ONNX model's (single) input after checking it accepts ``shape``."""
    inits = {i.name for i in proto.graph.initializer}
    ins = [i for i in proto.graph.input if i.name not in inits]
    if len(ins) != 1:
        raise ModelLoadError(f"{onnx_path!r} has {len(ins)} inputs, expected one mel input",
                             "pass a single-input model [B, F, T]")
    dims = [d.dim_value if d.HasField("dim_value") else None for d in ins[0].type.tensor_type.shape.dim]
    if len(dims) != len(shape) or any(d is not None and d != s for d, s in zip(dims, shape)):
        raise ConfigError(f"ONNX input {ins[0].name!r} has shape {['?' if d is None else d for d in dims]}, the build "
                          f"runs {shape}", "pass the ONNX model the build was quantized from (same F and T)")
    return ins[0].name


def compare_onnx(build, onnx_path, threads: int = 1, runs: int = 20, warmup: int = 3, seed: int = 0,
                 calib: int = 8, int8: bool = True, progress: bool = False, frames: int = 1000) -> dict:
    """zsq ``build`` (a :class:`zsq_tvm.Build` or build dir) vs ONNX Runtime FP32 / INT8 QDQ (see module doc);
    a symbolic-T build runs at ``frames``."""
    import tvm

    if not isinstance(runs, int) or runs < 1:
        raise ConfigError(f"--runs {runs!r} must be >= 1", "pass --runs 20")
    # cheap checks first: a bad ONNX file is refused before the build (and its library) is even loaded
    proto = _load_checked_onnx(str(onnx_path))
    b = build if isinstance(build, Build) else Build.load(build)
    if not hasattr(b, "_vm_"):
        raise NotAvailableError(f"build target {b.target!r} does not run in this process", "bench a host build")
    inp = b.manifest["io"]["inputs"][0]
    shape = [int(s) if isinstance(s, int) else int(frames) for s in inp["shape"]]  # symbolic T: `frames`
    in_name = _onnx_input(proto, str(onnx_path), shape)

    check_static_shapes(proto, str(onnx_path), {in_name: shape})  # what ORT allocates at the build's shape
    del proto  # ONNX Runtime loads its own copy
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32)
    res = {"build_target": b.target, "tvm_target": b.manifest.get("tvm_target"), "onnx": str(onnx_path),
           "input_shape": shape, "threads": threads, "runs": runs, "seed": seed}
    try:
        from zsq_tvm.backends.x86.cpu import host_cpu

        res["cpu"] = host_cpu()
    except Exception:  # pragma: no cover
        pass

    vm = b._vm_()
    xt = [tvm.runtime.tensor(b._encode_input(b._prepare(x), inp["dtype"]))]
    if b.time_mask:  # a --time-mask build: every frame valid (the same work as any length)
        xt.append(tvm.runtime.tensor(b._lengths(None, shape[0], shape[2])))
    engines = {"zsq_int8": lambda: vm["main"](*xt)}
    ort_fp32 = _ort_session(str(onnx_path), threads)
    engines["ort_fp32"] = lambda: ort_fp32.run(None, {in_name: x})
    with tempfile.TemporaryDirectory(prefix="zsq-bench-") as td:
        if int8:
            cal = [rng.standard_normal(shape).astype(np.float32) for _ in range(calib)]
            try:
                qp = ort_int8_qdq(str(onnx_path), str(Path(td) / "int8.onnx"), in_name, cal)
                ort_i8 = _ort_session(qp, threads)
                engines["ort_int8_qdq"] = lambda: ort_i8.run(None, {in_name: x})
            except Exception as e:  # ORT cannot quantize some graphs: report, do not abort the bench
                res["ort_int8_qdq_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        res.update(time_engines(engines, runs, warmup, progress))
    med = res["median_ms"]
    res["ratio_vs_zsq"] = {k: v / med["zsq_int8"] for k, v in med.items() if k != "zsq_int8"}
    return res


def format_compare(res: dict) -> str:
    lines = [f"{res['input_shape']} input, {res['threads']} thread(s), {res['runs']} interleaved runs "
             f"(zsq target {res['build_target']}, {res.get('cpu', '?')})"]
    for k, v in res["median_ms"].items():
        r = res["ratio_vs_zsq"].get(k)
        lines.append(f"  {k:14s} median {v:9.2f} ms   min {res['min_ms'][k]:9.2f} ms" +
                     (f"   zsq is {r:.2f}x faster" if r is not None and r >= 1 else
                      f"   zsq is {1 / r:.2f}x slower" if r is not None else ""))
    if "ort_int8_qdq_error" in res:
        lines.append(f"  ort_int8_qdq   not run: {res['ort_int8_qdq_error']}")
    return "\n".join(lines)
