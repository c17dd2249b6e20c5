"""Time one batch of MetaSchedule candidates built by ``zsq tune DIR --runner files:OUT`` (runtime-only TVM).

    python3 tools/tune_runner.py OUT/round-NNN        # on the device machine (or this CPU for a host batch)

Reads ``batch.json`` of the round folder, checks every library's size and SHA-256 against it *before*
loading any (libraries are code: only what the batch names and hashes is loaded, from a private copy of
the bytes that were hashed), allocates random arguments of the batch's shapes/dtypes on the batch's
device, times each candidate with ``time_evaluator`` and writes ``results.json`` atomically beside it.
A candidate that fails to load or run gets ``{"id", "error"}``; a batch that does not verify writes
nothing and exits 2 with one line.  Needs only ``numpy`` and a runtime-only ``tvm`` (CUDA: the bundled
``libtvm_runtime_cuda.so`` next to ``libtvm_runtime.so`` is loaded if present).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import tempfile

MAX_BATCH_BYTES = 4 << 20
MAX_LIB_BYTES = 256 << 20
FILE_RE = re.compile(r"^c\d{3,6}\.so$")
DTYPES = {"int8", "uint8", "int16", "int32", "int64", "float16", "float32", "float64", "bool"}


class Refused(Exception):
    pass


def _read_batch(rdir: str) -> tuple[dict, str]:
    p = os.path.join(rdir, "batch.json")
    if not os.path.isfile(p) or os.path.islink(p) or os.path.getsize(p) > MAX_BATCH_BYTES:
        raise Refused(f"{p} is missing, not a regular file or over {MAX_BATCH_BYTES} bytes")
    with open(p, "rb") as f:
        raw = f.read(MAX_BATCH_BYTES + 1)
    try:
        b = json.loads(raw)
        assert b["zsq_tune_batch"] == 1 and type(b["round"]) is int and b["device"] in ("cpu", "cuda")
        for k in ("number", "repeat", "min_repeat_ms"):
            assert type(b[k]) is int and 0 <= b[k] <= 10000
        ids = set()
        for c in b["candidates"]:
            assert isinstance(c["id"], str) and c["id"] not in ids and FILE_RE.match(c["file"])
            assert re.fullmatch(r"[0-9a-f]{64}", c["sha256"]) and type(c["bytes"]) is int
            ids.add(c["id"])
            for a in c["args"]:
                assert a["dtype"] in DTYPES and all(type(s) is int and 0 < s <= 1 << 28 for s in a["shape"])
    except Exception as e:  # noqa: BLE001 - any malformed batch is refused the same way
        raise Refused(f"{p} is not a valid batch ({type(e).__name__})") from None
    return b, hashlib.sha256(raw).hexdigest()


def _verified_copies(rdir: str, batch: dict, into: str) -> dict:
    """Every library's bytes read once, checked against batch.json, written to a private folder."""
    out = {}
    for c in batch["candidates"]:
        p = os.path.join(rdir, c["file"])
        if not os.path.isfile(p) or os.path.islink(p) or os.path.getsize(p) > MAX_LIB_BYTES:
            raise Refused(f"{p} is missing or not a regular file of at most {MAX_LIB_BYTES} bytes")
        with open(p, "rb") as f:
            data = f.read(MAX_LIB_BYTES + 1)
        if len(data) != c["bytes"] or hashlib.sha256(data).hexdigest() != c["sha256"]:
            raise Refused(f"{p} does not match the size/sha256 batch.json gives it; nothing was loaded")
        q = os.path.join(into, c["file"])
        with open(q, "wb") as f:
            f.write(data)
        out[c["id"]] = q
    return out


def _load_runtime_libs() -> None:
    import ctypes

    import tvm

    d = os.path.join(os.path.dirname(tvm.__file__), "lib")
    for n in ("libcudart.so.13", "libtvm_runtime_cuda.so", "libtvm_runtime_extra.so"):
        p = os.path.join(d, n)
        if os.path.exists(p):
            ctypes.CDLL(p, mode=ctypes.RTLD_GLOBAL)


def _random(dtype: str, shape, rng):
    import numpy as np

    if dtype == "bool":
        return rng.integers(0, 2, shape).astype("bool")
    if dtype.startswith(("int", "uint")):
        info = np.iinfo(dtype)
        return rng.integers(max(info.min, -100), min(info.max, 100) + 1, shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


def run(rdir: str) -> dict:
    import numpy as np

    batch, digest = _read_batch(rdir)
    work = tempfile.mkdtemp(prefix="zsq-runner-")
    try:
        libs = _verified_copies(rdir, batch, work)
        if batch["device"] == "cuda":
            try:
                _load_runtime_libs()
            except OSError as e:  # no driver (libcuda.so.1) or one too old for the bundled libcudart
                raise Refused(f"the CUDA runtime does not load here ({e})") from None
        import tvm

        dev = tvm.runtime.device(batch["device"], 0)
        if not dev.exist:
            raise Refused(f"no {batch['device']} device 0 on this machine")
        rng = np.random.default_rng(0)
        results = []
        for c in batch["candidates"]:
            try:
                mod = tvm.runtime.load_module(libs[c["id"]])
                args = [tvm.runtime.tensor(_random(a["dtype"], a["shape"], rng), dev) for a in c["args"]]
                f = mod.time_evaluator(mod.entry_name, dev, number=max(1, batch["number"]),
                                       repeat=max(1, batch["repeat"]), min_repeat_ms=batch["min_repeat_ms"])
                dev.sync()
                secs = [float(t) for t in f(*args).results]
                results.append({"id": c["id"], "run_secs": secs})
            except Exception as e:  # noqa: BLE001 - a candidate that fails is reported, the batch goes on
                results.append({"id": c["id"], "error": f"{type(e).__name__}: {str(e)[-400:]}"})
            print(f"{c['id']}: {results[-1].get('run_secs', results[-1].get('error'))}", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = {"zsq_tune_results": 1, "round": batch["round"], "batch_sha256": digest, "results": results}
    tmp = os.path.join(rdir, ".results.json.tmp")
    with open(tmp, "w") as f:
        json.dump(out, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(rdir, "results.json"))
    return out


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0].startswith("-"):
        print("usage: python3 tools/tune_runner.py ROUND_DIR", file=sys.stderr)
        return 2
    try:
        out = run(argv[0])
    except Refused as e:
        print(f"tune_runner: refused: {e}", file=sys.stderr)
        return 2
    ok = sum(1 for r in out["results"] if "run_secs" in r)
    print(f"measured {ok}/{len(out['results'])} candidate(s) -> {os.path.join(argv[0], 'results.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
