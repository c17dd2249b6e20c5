"""Adversarial corpus: hostile inputs against the installed ``zsq`` CLI, one subprocess each.

    python3 -m bench.adversarial                                   # the whole corpus (~115 cases)
    python3 -m bench.adversarial --only npy                        # cases whose name or category contains 'npy'
    python3 -m bench.adversarial --only archive.symlink,yaml.alias # several substrings, comma-separated
    python3 -m bench.adversarial --list                            # the cases, nothing built or run
    python3 -m bench.adversarial --work /tmp/adv --keep --json bench/results/adversarial.json --timeout 300

Every hostile input is built here, seeded and deterministic, in a fresh work folder, each case in its
own sub-folder: archives (``.nemo``), NeMo config YAML, ONNX models, ``.npy`` mels, WAV files and
manifests, tampered build folders and output paths.  Each case runs ``python3 -m zsq_tvm.cli ...`` with
its folder as the current directory, ``HOME``/``TMPDIR``/``XDG_CACHE_HOME`` inside that folder, and
hard safety caps set in the child (``RLIMIT_AS`` 8 GiB, ``RLIMIT_FSIZE`` 8 GiB: they protect this machine;
the 2 GiB peak-RSS bound is a separate verdict).  Attacks aim at a canary folder ``outside/`` next to the
case folders (symlinks, ``..`` members, external data, pickles, a shared-library constructor ...).

Measured per case: exit status, first line of stderr (stdout when stderr is empty), whether a Python
``Traceback`` reached the user, the child's own peak RSS (``os.wait4`` rusage), and the files written
outside the case folder: a snapshot (path, size, mtime_ns, inode, mode) of the whole work folder minus
the case folder, before and after; any new, changed or deleted entry counts.

Verdict PASS needs: the expected exit status (2 for a hostile input, with a first stderr line starting
``zsq: error:``; 0 for the few inputs that are benign by design and for the controls), no traceback,
no timeout, 0 outside writes, peak RSS < 2 GiB and, where a case names files that must survive (the
``--overwrite`` cases), those files unchanged.  ``LIMIT`` marks outside writes of a case documented as
a known limitation (a build folder made whole again by the attacker: its library is code, so its
constructor runs); they do not fail the run, but any other problem of that case still does.  Prints a markdown table and a summary; writes JSON (default
``bench/results/adversarial.json``); exits 1 if any verdict is FAIL or ERROR.

Uses only the installed CLI (never imports zsq_tvm, never edits sys.path); needs numpy, onnx, tqdm,
and gcc for the shared-library case.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import importlib.util
import io
import json
import os
import platform
import resource
import shutil
import signal
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

try:
    from tqdm import tqdm
except ImportError:  # pragma: no cover - tqdm is a dependency of zsq-tvm
    tqdm = None

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
RSS_LIMIT_MIB = 2048          # the acceptance bound per input
AS_CAP = 8 * GiB              # RLIMIT_AS in the child: protects the machine, not the verdict
FSIZE_CAP = 8 * GiB           # RLIMIT_FSIZE in the child (above the largest bomb below, so it never masks one)
REPO = Path(__file__).resolve().parents[1]
DEFAULT_JSON = REPO / "bench" / "results" / "adversarial.json"

F, C_HID, N_CLASSES, T = 64, 32, 29, 32   # the tiny model: [1,64,T] -> Conv(64->32,k3) -> BN -> Relu -> Conv(->29)
W1_SHAPE = (C_HID, F, 3)
QUANT_ARGS = ["--frames", str(T), "--calib", "random", "--num-batches", "1"]


# ============================================================================ cases

@dataclass
class Case:
    name: str
    category: str
    builder: Callable[["Ctx", Path], None]   # writes the inputs into the case folder
    argv: list                               # zsq arguments; {build} {q} {shared} {outside} {case} filled in
    expect: tuple = (2,)
    needs: tuple = ()                        # shared artifacts: "model", "q", "build", "nemo", "wav", "so"
    timeout: Optional[float] = None          # cap below --timeout for inputs that may hang
    cwd: str = ""                            # sub-folder of the case folder to run in
    survive: tuple = ()                      # files (relative to the case folder) that must be unchanged
    note: str = ""                           # why the expectation is what it is
    limitation: bool = False                 # documented known limitation: its outside writes give LIMIT, not FAIL


CASES: list[Case] = []


def case(name, category, argv, **kw):
    def deco(fn):
        CASES.append(Case(name, category, fn, list(argv), **kw))
        return fn
    return deco


def nothing(ctx, d):
    return None


# ============================================================================ shared context

class SetupError(RuntimeError):
    pass


class Ctx:
    """The work folder, the canary ``outside/`` folder and the lazily made shared artifacts."""

    def __init__(self, work: Path, timeout: float):
        self.work = work
        self.outside = work / "outside"
        self.shared = work / "_shared"
        self.timeout = timeout
        self._done: dict[str, object] = {}
        self.outside.mkdir()
        self.shared.mkdir()
        (self.outside / "victim.txt").write_text("canary: nothing may change me\n")
        (self.outside / "sub").mkdir()
        (self.outside / "sub" / "note.txt").write_text("canary\n")
        self.w1 = rng(1).normal(0, 0.1, W1_SHAPE).astype(np.float32)
        (self.outside / "secret.bin").write_bytes(self.w1.tobytes())   # exactly w1's size: only the path is wrong
        self.setup_log: list[dict] = []

    def fill(self, argv: list, d: Path) -> list:
        paths = {"build": self.shared / "build", "q": self.shared / "q", "shared": self.shared,
                 "outside": self.outside, "case": d}
        return [str(a).format(**{k: str(v) for k, v in paths.items()}) for a in argv]

    def require(self, what: str):
        if what in self._done:
            v = self._done[what]
            if isinstance(v, SetupError):
                raise v
            return v
        try:
            v = getattr(self, "_make_" + what)()
        except SetupError as e:
            self._done[what] = e
            raise
        self._done[what] = v
        return v

    # -- shared artifacts
    def _make_model(self):
        p = self.shared / "m.onnx"
        save_model(tiny_model(), p)
        return p

    def _cli_setup(self, argv, what):
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "zsq_tvm.cli", *argv], cwd=self.shared, capture_output=True,
                           text=True, timeout=self.timeout, env=child_env(self.shared / ".setup"))
        self.setup_log.append({"step": what, "argv": argv, "rc": r.returncode, "seconds": round(time.perf_counter() - t0, 1),
                               "stderr_tail": r.stderr[-400:]})
        if r.returncode != 0:
            line = first_line(r.stderr, r.stdout)
            raise SetupError(f"setup '{what}' failed (zsq {' '.join(argv)} -> exit {r.returncode}: {line[:160]})")

    def _make_q(self):
        self.require("model")
        self._cli_setup(["quantize", "m.onnx", *QUANT_ARGS, "-o", "q"], "quantize")
        return self.shared / "q"

    def _make_build(self):
        self.require("q")
        self._cli_setup(["compile", "q", "--target", "host", "-o", "build"], "compile")
        np.save(self.shared / "ok.npy", rng(2).normal(0, 1, (F, T)).astype(np.float32))
        return self.shared / "build"

    def _make_nemo(self):
        """A valid .nemo (packaged quartznet-tiny config + shipped weights) and its two parts."""
        spec = importlib.util.find_spec("zsq_tvm")   # locates the package without importing it
        if spec is None or not spec.submodule_search_locations:
            raise SetupError("zsq_tvm is not installed")
        root = Path(list(spec.submodule_search_locations)[0])
        cfg, w = root / "nets" / "configs" / "quartznet-tiny.yaml", root / "models" / "quartznet-tiny.pt"
        if not cfg.is_file() or not w.is_file():
            raise SetupError(f"packaged quartznet-tiny config/weights not found under {root}")
        parts = {"cfg": cfg.read_bytes(), "weights": w.read_bytes()}
        make_tar(self.shared / "good.nemo", nemo_members(parts["cfg"], parts["weights"]))
        return parts

    def _make_wav(self):
        p = self.shared / "good.wav"
        write_wav(p, noise(16000, 3))
        return p

    def _make_so(self):
        """A shared library whose constructor appends a line to outside/pwned_by_so.txt when loaded."""
        gcc = shutil.which("gcc") or shutil.which("cc")
        if gcc is None:
            raise SetupError("no C compiler (gcc/cc) for the shared-library case")
        target = self.outside / "pwned_by_so.txt"
        src = self.shared / "evil.c"
        src.write_text('#include <stdio.h>\n#include <unistd.h>\n'
                       '__attribute__((constructor)) static void zsq_adv_pwn(void) {\n'
                       f'  FILE *f = fopen("{target}", "a");\n'
                       '  if (f) { fprintf(f, "pwned by pid %d\\n", (int)getpid()); fclose(f); }\n}\n'
                       'int zsq_adv_marker(void) { return 42; }\n')
        so = self.shared / "evil.so"
        r = subprocess.run([gcc, "-shared", "-fPIC", "-O1", "-o", str(so), str(src)], capture_output=True, text=True)
        if r.returncode != 0:
            raise SetupError(f"gcc failed: {r.stderr.strip()[:200]}")
        return so


def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


# ============================================================================ builders: ONNX

def tiny_model(frames=T, seed=0, w1=None, b1=None, var=None, input_T=None):
    """[1,64,T] -> Conv1d(64->32,k3,pad1) -> BatchNormalization -> Relu -> Conv1d(32->29,k1) -> logits [1,29,T]."""
    import onnx
    from onnx import TensorProto, helper as h, numpy_helper as nh

    g = rng(seed)
    arr = {"w1": g.normal(0, 0.1, W1_SHAPE) if w1 is None else w1, "b1": g.normal(0, 0.1, C_HID) if b1 is None else b1,
           "gamma": g.uniform(0.5, 1.5, C_HID), "beta": g.normal(0, 0.1, C_HID), "mean": g.normal(0, 0.1, C_HID),
           "var": g.uniform(0.5, 1.5, C_HID) if var is None else var,
           "w2": g.normal(0, 0.1, (N_CLASSES, C_HID, 1)), "b2": g.normal(0, 0.1, N_CLASSES)}
    inits = [nh.from_array(np.asarray(v, np.float32), k) for k, v in arr.items()]
    nodes = [h.make_node("Conv", ["audio_signal", "w1", "b1"], ["c1"], pads=[1, 1], kernel_shape=[3], name="conv1"),
             h.make_node("BatchNormalization", ["c1", "gamma", "beta", "mean", "var"], ["bn"], epsilon=1e-3, name="bn1"),
             h.make_node("Relu", ["bn"], ["r"], name="relu1"),
             h.make_node("Conv", ["r", "w2", "b2"], ["logits"], kernel_shape=[1], name="conv2")]
    tin = frames if input_T is None else input_T
    graph = h.make_graph(nodes, "tiny", [h.make_tensor_value_info("audio_signal", TensorProto.FLOAT, [1, F, tin])],
                         [h.make_tensor_value_info("logits", TensorProto.FLOAT, [1, N_CLASSES, tin])], inits)
    m = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)], producer_name="zsq-adversarial")
    m.ir_version = 8
    return m


def save_model(m, path: Path):
    path.write_bytes(m.SerializeToString())


def external_w1(m, location: str, length: Optional[int] = None):
    """Turn initializer w1 into external data at ``location`` (nothing written)."""
    from onnx import TensorProto

    t = next(t for t in m.graph.initializer if t.name == "w1")
    t.ClearField("raw_data")
    t.ClearField("float_data")
    t.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", str(length if length is not None else
                                                                           int(np.prod(W1_SHAPE)) * 4))):
        e = t.external_data.add()
        e.key, e.value = k, v
    return m


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _pb_len(num: int, payload: bytes) -> bytes:
    return _varint(num << 3 | 2) + _varint(len(payload)) + payload


def _pb_int(num: int, v: int) -> bytes:
    return _varint(num << 3) + _varint(v)


# ============================================================================ builders: archives

def add_members(tf, members) -> None:
    """members: (TarInfo-attribute dict incl. name, bytes or None), added to the open tar ``tf``."""
    for info, data in members:
        info = dict(info)
        ti = tarfile.TarInfo(info.pop("name"))
        ti.mtime = 1_700_000_000
        for k, v in info.items():
            setattr(ti, k, v)
        if data is not None:
            ti.size = len(data)
        tf.addfile(ti, io.BytesIO(data) if data is not None else None)


def make_tar(path: Path, members, mode="w", fmt=tarfile.GNU_FORMAT):
    with tarfile.open(path, mode, format=fmt) as tf:
        add_members(tf, members)
    return path


def nemo_members(cfg: bytes, weights: bytes):
    return [({"name": "./", "type": tarfile.DIRTYPE, "mode": 0o755}, None),
            ({"name": "./model_config.yaml", "mode": 0o644}, cfg),
            ({"name": "./model_weights.ckpt", "mode": 0o644}, weights)]


def tar_header(name: str, size: int, typ=tarfile.REGTYPE, **kw) -> bytearray:
    ti = tarfile.TarInfo(name)
    ti.size, ti.type, ti.mtime, ti.mode = size, typ, 1_700_000_000, 0o644
    for k, v in kw.items():
        setattr(ti, k, v)
    return bytearray(ti.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape"))


def _rechecksum(buf: bytearray) -> bytearray:
    buf[148:156] = b" " * 8
    buf[148:155] = b"%06o\0" % sum(buf[:512])
    return buf


def valid_tar_bytes(parts) -> bytes:
    """The valid .nemo members as a tar stream without the end-of-archive blocks."""
    bio = io.BytesIO()
    with tarfile.open(fileobj=bio, mode="w", format=tarfile.GNU_FORMAT) as tf:
        add_members(tf, nemo_members(parts["cfg"], parts["weights"]))
        body = bio.getvalue()
    # tarfile.close() appended two zero blocks and padded to its record size: find the end of the last member
    end = len(body)
    while end >= 512 and body[end - 512:end] == b"\0" * 512:
        end -= 512
    return body[:end]


def gzip_member(data: bytes, level=9) -> bytes:
    return gzip.compress(data, compresslevel=level, mtime=0)


def zero_gzip_run(total: int, chunk=64 * MiB) -> list:
    """Concatenated gzip members that decompress to ``total`` zero bytes (multi-member gzip)."""
    assert total % chunk == 0
    one = gzip_member(b"\0" * chunk)
    return [one] * (total // chunk)


# ============================================================================ builders: WAV / npy

def noise(n: int, seed: int) -> np.ndarray:
    return (rng(seed).normal(0, 3000, n)).clip(-32768, 32767).astype("<i2")


def write_wav(path: Path, samples: np.ndarray, sr=16000, ch=1, width=2):
    with wave.open(str(path), "wb") as w:
        w.setnchannels(ch)
        w.setsampwidth(width)
        w.setframerate(sr)
        w.writeframes(samples.tobytes())


def wav_header(sr=16000, ch=1, bits=16, data_bytes=0, fmt=1) -> bytes:
    block = ch * bits // 8
    return (b"RIFF" + struct.pack("<I", (36 + data_bytes) & 0xFFFFFFFF) + b"WAVE" + b"fmt "
            + struct.pack("<IHHIIHH", 16, fmt, ch, sr, sr * block, block, bits) + b"data"
            + struct.pack("<I", data_bytes & 0xFFFFFFFF))


def manifest(d: Path, audio: str, text="hello world", name="m.json"):
    (d / name).write_text(json.dumps({"audio_filepath": audio, "duration": 1.0, "text": text}) + "\n")


def npy_bytes(header: dict, payload: bytes) -> bytes:
    """A .npy v1.0 file with an arbitrary (possibly lying) header dict."""
    h = repr(header).encode("latin1")
    pad = 64 - (10 + len(h) + 1) % 64
    h = h + b" " * pad + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(h)) + h + payload


class PickleCanary:
    """Unpickling this calls open(<outside>/pwned_by_pickle.txt, 'a'): creates a file outside."""

    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "a"))


# ============================================================================ builders: build folders

def copy_build(ctx, d: Path, name="B") -> Path:
    b = d / name
    shutil.copytree(ctx.require("build"), b, symlinks=True)
    return b


def rehash(b: Path):
    """Rewrite manifest.json's file list (size + SHA-256 of every file) as the attacker would."""
    mp = b / "manifest.json"
    m = json.loads(mp.read_text())
    if isinstance(m.get("files"), dict):
        files = {}
        for p in sorted(b.rglob("*")):
            rel = p.relative_to(b).as_posix()
            if rel == "manifest.json" or p.is_dir():
                continue
            files[rel] = {"size": p.stat().st_size, "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
        m["files"] = files
    mp.write_text(json.dumps(m, indent=2))


def edit_manifest(b: Path, fn):
    mp = b / "manifest.json"
    m = json.loads(mp.read_text())
    fn(m)
    mp.write_text(json.dumps(m, indent=2))


# ============================================================================ the corpus: controls

@case("control-quantize", "control", ["quantize", "m.onnx", *QUANT_ARGS, "-o", "q"], expect=(0,),
      note="benign: the tiny model quantizes")
def _(ctx, d):
    save_model(tiny_model(), d / "m.onnx")


@case("control-run", "control", ["run", "{build}", "--input", "ok.npy", "--output", "out.npy"], expect=(0,),
      needs=("build",), note="benign: the shared build runs")
def _(ctx, d):
    np.save(d / "ok.npy", rng(3).normal(0, 1, (F, T)).astype(np.float32))


@case("control-check", "control", ["check", "{build}"], expect=(0,), needs=("build",),
      note="benign: the shared build is integer-only")
def _(ctx, d):
    pass


@case("control-export-nemo", "control", ["export-nemo", "{shared}/good.nemo", "-o", "out.onnx"], expect=(0,),
      needs=("nemo",), note="benign: packaged config + shipped weights as a .nemo")
def _(ctx, d):
    pass


@case("control-eval", "control", ["eval", "quartznet-tiny", "--manifest", "m.json"], expect=(0,), needs=("wav",),
      note="benign: a 3 s 16 kHz mono 16-bit WAV")
def _(ctx, d):
    shutil.copy(ctx.require("wav"), d / "a.wav")
    manifest(d, "a.wav")


# ============================================================================ the corpus: archives (.nemo)

NEMO = ["export-nemo", "x.nemo", "-o", "out.onnx"]
NEMO_CK = ["export-nemo", "quartznet-tiny", "--checkpoint", "x.nemo", "-o", "out.onnx"]


def _outside_rel_climb(ctx, levels=24) -> str:
    """'../' x levels + the absolute outside path without its leading '/': reaches outside/ from any depth."""
    return "../" * levels + str(ctx.outside).lstrip("/")


@case("archive-absolute-member", "archive", NEMO, needs=("nemo",))
def _(ctx, d):
    p = ctx.require("nemo")
    make_tar(d / "x.nemo", nemo_members(p["cfg"], p["weights"]) +
             [({"name": str(ctx.outside / "pwned_abs.txt")}, b"pwned\n")])


@case("archive-dotdot-member", "archive", NEMO_CK, needs=("nemo",))
def _(ctx, d):
    p = ctx.require("nemo")
    make_tar(d / "x.nemo", nemo_members(p["cfg"], p["weights"]) +
             [({"name": _outside_rel_climb(ctx) + "/pwned_dotdot.txt"}, b"pwned\n")])


@case("archive-symlink-absolute", "archive", NEMO, needs=("nemo",),
      note="symlink to outside/, then a file written through it")
def _(ctx, d):
    p = ctx.require("nemo")
    make_tar(d / "x.nemo", nemo_members(p["cfg"], p["weights"]) +
             [({"name": "lnk", "type": tarfile.SYMTYPE, "linkname": str(ctx.outside)}, None),
              ({"name": "lnk/pwned_symlink.txt"}, b"pwned\n")])


@case("archive-symlink-relative", "archive", NEMO_CK, needs=("nemo",))
def _(ctx, d):
    p = ctx.require("nemo")
    make_tar(d / "x.nemo", nemo_members(p["cfg"], p["weights"]) +
             [({"name": "lnk", "type": tarfile.SYMTYPE, "linkname": _outside_rel_climb(ctx)}, None),
              ({"name": "lnk/pwned_symlink_rel.txt"}, b"pwned\n")])


@case("archive-hardlink-outside", "archive", NEMO, needs=("nemo",),
      note="hard link to outside/victim.txt, then the same name again as a regular file (writes through the link)")
def _(ctx, d):
    p = ctx.require("nemo")
    make_tar(d / "x.nemo", nemo_members(p["cfg"], p["weights"]) +
             [({"name": "hl", "type": tarfile.LNKTYPE, "linkname": str(ctx.outside / "victim.txt")}, None),
              ({"name": "hl"}, b"overwritten through a hard link\n")])


@case("archive-symlink-chain-lexical", "archive", NEMO, needs=("nemo",),
      note="'up' -> '../..' deep inside; 'esc' -> 'deep/up/../..' looks inside lexically, is outside physically")
def _(ctx, d):
    p = ctx.require("nemo")
    depth = 16
    deep = "/".join(f"d{i}" for i in range(depth))
    mem = [({"name": "/".join(f"d{i}" for i in range(k + 1)), "type": tarfile.DIRTYPE, "mode": 0o755}, None)
           for k in range(depth)]
    mem.append(({"name": deep + "/up", "type": tarfile.SYMTYPE, "linkname": "/".join([".."] * depth)}, None))
    climb = "/".join([".."] * (depth - 1))   # lexically stays inside (depth-1 < depth+1), physically from the root
    mem.append(({"name": "esc", "type": tarfile.SYMTYPE,
                 "linkname": f"{deep}/up/{climb}/{str(ctx.outside).lstrip('/')}"}, None))
    mem.append(({"name": "esc/pwned_chain.txt"}, b"pwned\n"))
    make_tar(d / "x.nemo", nemo_members(p["cfg"], p["weights"]) + mem)


@case("archive-symlink-pathmax-cve-2025-4517", "archive", NEMO_CK, needs=("nemo",),
      note="CVE-2025-4517: symlinks expanding past PATH_MAX so realpath() stops resolving, then escape")
def _(ctx, d):
    p = ctx.require("nemo")
    # zsq extracts into $TMPDIR/zsq-nemo-XXXXXXXX (TMPDIR = <case>/.tmp); size the components for that depth
    dest_len = len(str(d / ".tmp")) + 1 + len("zsq-nemo-") + 8
    steps = "abcdefghijklmnop"
    comp = "d" * min(250, (4096 - dest_len - 1) // (len(steps) + 1))
    mem, path = [], ""
    for s in steps:
        mem.append(({"name": os.path.join(path, comp), "type": tarfile.DIRTYPE, "mode": 0o755}, None))
        mem.append(({"name": os.path.join(path, s), "type": tarfile.SYMTYPE, "linkname": comp}, None))
        path = os.path.join(path, comp)
    linkpath = os.path.join(*steps, "l" * 254)
    mem.append(({"name": linkpath, "type": tarfile.SYMTYPE, "linkname": os.path.join(*([".."] * len(steps)))}, None))
    up = "/".join([".."] * (len(steps) - 1))
    mem.append(({"name": "escape", "type": tarfile.SYMTYPE,
                 "linkname": f"{linkpath}/{up}/{str(ctx.outside).lstrip('/')}"}, None))
    mem.append(({"name": "flaglink", "type": tarfile.LNKTYPE, "linkname": "escape/victim.txt"}, None))
    mem.append(({"name": "flaglink"}, b"overwritten via CVE-2025-4517\n"))
    mem.append(({"name": "escape/pwned_cve_2025_4517.txt"}, b"pwned\n"))
    make_tar(d / "x.nemo", nemo_members(p["cfg"], p["weights"]) + mem, fmt=tarfile.PAX_FORMAT)


@case("archive-char-device", "archive", NEMO, needs=("nemo",), note="a /dev/null-like character device member")
def _(ctx, d):
    p = ctx.require("nemo")
    make_tar(d / "x.nemo", nemo_members(p["cfg"], p["weights"]) +
             [({"name": "null", "type": tarfile.CHRTYPE, "devmajor": 1, "devminor": 3}, None)])


@case("archive-fifo", "archive", NEMO_CK, needs=("nemo",), timeout=60)
def _(ctx, d):
    p = ctx.require("nemo")
    make_tar(d / "x.nemo", [({"name": "model_config.yaml", "type": tarfile.FIFOTYPE}, None)] +
             nemo_members(p["cfg"], p["weights"])[2:])


@case("archive-duplicate-members", "archive", NEMO, needs=("nemo",),
      note="model_config.yaml twice with different contents (a checker and the extractor may see different files)")
def _(ctx, d):
    p = ctx.require("nemo")
    other = p["cfg"].replace(b"quartznet", b"jasper")
    make_tar(d / "x.nemo", nemo_members(p["cfg"], p["weights"]) + [({"name": "./model_config.yaml"}, other)])


@case("archive-huge-declared-size-truncated", "archive", NEMO, needs=("nemo",),
      note="a member whose header declares 1 TiB, file ends after 4 KiB of data")
def _(ctx, d):
    p = ctx.require("nemo")
    body = valid_tar_bytes(p) + bytes(tar_header("big.bin", 1 << 40)) + b"\0" * 4096
    (d / "x.nemo").write_bytes(body)


@case("archive-sparse-6gib", "archive", NEMO_CK, needs=("nemo",),
      note="valid model + a GNU sparse member of 6 GiB apparent size (512 bytes stored)")
def _(ctx, d):
    p = ctx.require("nemo")
    hdr = tar_header("sparse.bin", 512, typ=tarfile.GNUTYPE_SPARSE)
    hdr[386:398] = tarfile.itn(1 * GiB, 12, tarfile.GNU_FORMAT)      # map entry: offset 1 GiB ...
    hdr[398:410] = tarfile.itn(512, 12, tarfile.GNU_FORMAT)          # ... 512 bytes
    hdr[482] = 0                                                     # no extension headers
    hdr[483:495] = tarfile.itn(6 * GiB, 12, tarfile.GNU_FORMAT)      # real size
    _rechecksum(hdr)
    body = valid_tar_bytes(p) + bytes(hdr) + b"S" * 512 + b"\0" * 1024
    (d / "x.nemo").write_bytes(body)


@case("archive-200k-members", "archive", NEMO, needs=("nemo",),
      note="valid model + 200 000 empty members (gzip, ~2 MB)")
def _(ctx, d):
    p = ctx.require("nemo")
    tmpl = tar_header("junk/000000", 0)
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=6, mtime=0) as gz:
        gz.write(valid_tar_bytes(p))
        gz.write(bytes(tar_header("junk", 0, typ=tarfile.DIRTYPE, mode=0o755)))
        chunk = []
        for i in range(200_000):
            h = bytearray(tmpl)
            h[0:11] = b"junk/%06d" % i
            chunk.append(bytes(_rechecksum(h)))
            if len(chunk) == 10_000:
                gz.write(b"".join(chunk))
                chunk = []
        gz.write(b"".join(chunk) + b"\0" * 1024)
    (d / "x.nemo").write_bytes(out.getvalue())


def write_zero_bomb(path: Path, parts, header: bytearray, size: int, tail: bytes) -> None:
    """The valid .nemo members, then ``header`` declaring ``size`` bytes of zeros (gzipped), then ``tail``."""
    with open(path, "wb") as f:
        f.write(gzip_member(valid_tar_bytes(parts) + bytes(header)))
        for m in zero_gzip_run(size):
            f.write(m)
        f.write(gzip_member(tail))


@case("archive-gzip-bomb-6gib", "archive", NEMO_CK, needs=("nemo",),
      note="valid model + a 6 GiB member of zeros, ~6 MB gzipped: exit 0 means it was extracted")
def _(ctx, d):
    write_zero_bomb(d / "x.nemo", ctx.require("nemo"), tar_header("padding.bin", 6 * GiB), 6 * GiB, b"\0" * 1024)


@case("archive-pax-header-bomb", "archive", NEMO, needs=("nemo",),
      note="a PAX extended header declaring 3 GiB (zeros, gzipped): tarfile reads headers into memory")
def _(ctx, d):
    write_zero_bomb(d / "x.nemo", ctx.require("nemo"), tar_header("././@PaxHeader", 3 * GiB, typ=tarfile.XHDTYPE),
                    3 * GiB, bytes(tar_header("after.bin", 0)) + b"\0" * 1024)


@case("archive-truncated", "archive", NEMO, needs=("nemo",))
def _(ctx, d):
    ctx.require("nemo")
    b = (ctx.shared / "good.nemo").read_bytes()
    (d / "x.nemo").write_bytes(b[: len(b) * 6 // 10])


@case("archive-not-a-tar", "archive", NEMO_CK)
def _(ctx, d):
    (d / "x.nemo").write_bytes(rng(4).integers(0, 256, 64 * KiB, dtype=np.uint8).tobytes())


# ============================================================================ the corpus: YAML

def _base_cfg(ctx) -> bytes:
    return ctx.require("nemo")["cfg"]


def yaml_alias_bomb(levels=10, width=10) -> bytes:
    lines = ["lol0: &l0 [" + ", ".join(['"lol"'] * width) + "]"]
    for i in range(1, levels):
        lines.append(f"lol{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * width) + "]")
    return ("\n".join(lines) + "\n").encode()


def yaml_config_plus(base: bytes, extra: bytes, top="bomb") -> bytes:
    """The packaged config (a ``model:``-less NeMo model section) with ``extra`` YAML under a new key."""
    return base.rstrip(b"\n") + b"\n" + top.encode() + b":\n" + b"".join(b"  " + ln + b"\n" for ln in extra.splitlines())


YAML = ["export-nemo", "c.yaml", "-o", "out.onnx"]


@case("yaml-alias-bomb", "yaml", YAML, needs=("nemo",), timeout=150,
      note="billion laughs: 10 levels x 10 aliases beside a valid config")
def _(ctx, d):
    (d / "c.yaml").write_bytes(yaml_config_plus(_base_cfg(ctx), yaml_alias_bomb()))


@case("yaml-interpolation-cycle", "yaml", YAML, needs=("nemo",), timeout=150)
def _(ctx, d):
    (d / "c.yaml").write_bytes(_base_cfg(ctx).rstrip(b"\n") + b"\ncyc_a: ${cyc_b}\ncyc_b: ${cyc_a}\n")


@case("yaml-deep-nesting", "yaml", YAML, needs=("nemo",), timeout=150, note="100 000 nested '['")
def _(ctx, d):
    n = 100_000
    (d / "c.yaml").write_bytes(_base_cfg(ctx).rstrip(b"\n") + b"\ndeep: " + b"[" * n + b"]" * n + b"\n")


@case("yaml-python-tag", "yaml", YAML, needs=("nemo",),
      note="!!python/object/apply:os.system creating outside/pwned_by_yaml.txt")
def _(ctx, d):
    cmd = f"touch {ctx.outside / 'pwned_by_yaml.txt'}"
    (d / "c.yaml").write_bytes(_base_cfg(ctx).rstrip(b"\n") + f"\npwn: !!python/object/apply:os.system [{json.dumps(cmd)}]\n".encode())


@case("yaml-huge-file", "yaml", YAML, needs=("nemo",), timeout=150,
      note="a valid config followed by 64 MiB of comments: exit 0 means it was parsed in full")
def _(ctx, d):
    line = b"# " + b"x" * 1021 + b"\n"
    with open(d / "c.yaml", "wb") as f:
        f.write(_base_cfg(ctx).rstrip(b"\n") + b"\n")
        f.write(line * (64 * MiB // len(line)))


@case("yaml-non-utf8", "yaml", YAML, needs=("nemo",))
def _(ctx, d):
    (d / "c.yaml").write_bytes(_base_cfg(ctx).rstrip(b"\n") + b"\n# caf\xe9 \xff\xfe\n")


def _nemo_with_cfg(ctx, d, cfg: bytes):
    p = ctx.require("nemo")
    make_tar(d / "x.nemo", nemo_members(cfg, p["weights"]))


@case("yaml-in-nemo-alias-bomb", "yaml", NEMO, needs=("nemo",), timeout=150)
def _(ctx, d):
    _nemo_with_cfg(ctx, d, yaml_config_plus(_base_cfg(ctx), yaml_alias_bomb()))


@case("yaml-in-nemo-python-tag", "yaml", NEMO_CK, needs=("nemo",))
def _(ctx, d):
    cmd = f"touch {ctx.outside / 'pwned_by_nemo_yaml.txt'}"
    _nemo_with_cfg(ctx, d, _base_cfg(ctx).rstrip(b"\n") +
                   f"\npwn: !!python/object/apply:os.system [{json.dumps(cmd)}]\n".encode())


@case("yaml-in-nemo-interpolation-cycle", "yaml", NEMO, needs=("nemo",), timeout=150)
def _(ctx, d):
    _nemo_with_cfg(ctx, d, _base_cfg(ctx).rstrip(b"\n") + b"\ncyc_a: ${cyc_b}\ncyc_b: ${cyc_a}\n")


# ============================================================================ the corpus: ONNX

QUANT = ["quantize", "m.onnx", *QUANT_ARGS, "-o", "q"]
REPORT = ["report", "m.onnx"]


@case("onnx-external-absolute", "onnx", QUANT, note="w1 -> absolute path of outside/secret.bin (right size)")
def _(ctx, d):
    save_model(external_w1(tiny_model(), str(ctx.outside / "secret.bin")), d / "m.onnx")


@case("onnx-external-absolute-report", "onnx", REPORT)
def _(ctx, d):
    save_model(external_w1(tiny_model(), str(ctx.outside / "secret.bin")), d / "m.onnx")


@case("onnx-external-dotdot", "onnx", QUANT)
def _(ctx, d):
    save_model(external_w1(tiny_model(), "../outside/secret.bin"), d / "m.onnx")


@case("onnx-external-symlink", "onnx", QUANT)
def _(ctx, d):
    os.symlink(ctx.outside / "secret.bin", d / "w1.bin")
    save_model(external_w1(tiny_model(), "w1.bin"), d / "m.onnx")


@case("onnx-external-symlinked-dir", "onnx", QUANT)
def _(ctx, d):
    os.symlink(ctx.outside, d / "data")
    save_model(external_w1(tiny_model(), "data/secret.bin"), d / "m.onnx")


@case("onnx-external-missing", "onnx", QUANT)
def _(ctx, d):
    save_model(external_w1(tiny_model(), "nothere.bin"), d / "m.onnx")


@case("onnx-external-short", "onnx", QUANT)
def _(ctx, d):
    (d / "w1.bin").write_bytes(b"\0" * 100)
    save_model(external_w1(tiny_model(), "w1.bin"), d / "m.onnx")


def _cos_model():
    """The tiny model plus ConstantOfShape of 9 GiB (float32) reduced into the first conv's output."""
    from onnx import TensorProto, helper as h, numpy_helper as nh

    m = tiny_model()
    g = m.graph
    g.initializer.append(nh.from_array(np.array([9 * GiB // 4], np.int64), "big_shape"))
    big = [h.make_node("ConstantOfShape", ["big_shape"], ["big"], name="cos9g",
                       value=h.make_tensor("v", TensorProto.FLOAT, [1], [0.0])),
           h.make_node("ReduceSum", ["big"], ["big_sum"], keepdims=0, name="bigsum"),
           h.make_node("Add", ["c1", "big_sum"], ["c1b"], name="addbig")]
    for n in g.node:
        if n.op_type == "BatchNormalization":
            n.input[0] = "c1b"
    nodes = list(g.node)
    del g.node[:]
    g.node.extend(nodes[:1] + big + nodes[1:])
    return m


@case("onnx-constantofshape-9gib", "onnx", QUANT)
@case("onnx-constantofshape-9gib-report", "onnx", REPORT)
def _(ctx, d):
    save_model(_cos_model(), d / "m.onnx")


@case("onnx-input-dim-2e40-no-frames", "onnx", ["quantize", "m.onnx", "--calib", "random", "--num-batches", "1", "-o", "q"],
      note="input [1, 64, 2^40] and no --frames")
def _(ctx, d):
    save_model(tiny_model(input_T=1 << 40), d / "m.onnx")


def _huge_init_model():
    from onnx import TensorProto

    m = tiny_model()
    t = m.graph.initializer.add()
    t.name, t.data_type = "huge", TensorProto.FLOAT
    t.dims.extend([1 << 20, 1 << 20])
    return m


@case("onnx-declared-2e20x2e20-no-data", "onnx", QUANT)
@case("onnx-declared-2e20x2e20-no-data-report", "onnx", REPORT)
def _(ctx, d):
    save_model(_huge_init_model(), d / "m.onnx")


@case("onnx-nan-weight", "onnx", QUANT)
def _(ctx, d):
    w1 = rng(0).normal(0, 0.1, W1_SHAPE)
    w1[0, 0, 0] = np.nan
    save_model(tiny_model(w1=w1), d / "m.onnx")


@case("onnx-inf-bias", "onnx", QUANT)
def _(ctx, d):
    b1 = rng(5).normal(0, 0.1, C_HID)
    b1[3] = np.inf
    save_model(tiny_model(b1=b1), d / "m.onnx")


@case("onnx-nan-bn-variance", "onnx", QUANT)
def _(ctx, d):
    var = rng(6).uniform(0.5, 1.5, C_HID)
    var[1] = np.nan
    save_model(tiny_model(var=var), d / "m.onnx")


@case("onnx-negative-bn-variance", "onnx", QUANT, note="sqrt(var + eps) of a negative number")
def _(ctx, d):
    var = rng(6).uniform(0.5, 1.5, C_HID)
    var[2] = -4.0
    save_model(tiny_model(var=var), d / "m.onnx")


@case("onnx-random-bytes", "onnx", QUANT)
def _(ctx, d):
    (d / "m.onnx").write_bytes(rng(7).integers(0, 256, 16 * KiB, dtype=np.uint8).tobytes())


@case("onnx-truncated-protobuf", "onnx", QUANT)
def _(ctx, d):
    b = tiny_model().SerializeToString()
    (d / "m.onnx").write_bytes(b[: len(b) // 2])


@case("onnx-empty-file", "onnx", QUANT)
def _(ctx, d):
    (d / "m.onnx").write_bytes(b"")


@case("onnx-directory-named-model", "onnx", QUANT)
def _(ctx, d):
    (d / "m.onnx").mkdir()
    (d / "m.onnx" / "model.onnx").write_bytes(tiny_model().SerializeToString())


@case("onnx-deeply-nested-subgraph", "onnx", QUANT, note="an If node nesting 5000 then_branch subgraphs")
def _(ctx, d):
    m = tiny_model()
    inner = _pb_len(2, b"g_leaf")
    node = b""
    for i in range(5000):
        attr = _pb_len(1, b"then_branch") + _pb_int(20, 5) + _pb_len(6, inner)
        node = _pb_len(1, b"cond") + _pb_len(2, b"y%d" % i) + _pb_len(4, b"If") + _pb_len(5, attr)
        inner = _pb_len(1, node) + _pb_len(2, b"g%d" % i)
    graph = m.graph.SerializeToString() + _pb_len(1, node)
    m.ClearField("graph")
    (d / "m.onnx").write_bytes(m.SerializeToString() + _pb_len(7, graph))


@case("onnx-length-prefix-4gib", "onnx", QUANT, note="the graph field's length prefix says 4 GiB, 16 bytes follow")
def _(ctx, d):
    (d / "m.onnx").write_bytes(_pb_int(1, 8) + _varint(7 << 3 | 2) + _varint(4 * GiB) + b"\0" * 16)


@case("onnx-file-over-2gib-sparse", "onnx", QUANT, note="a valid model padded (sparse) past 2 GiB")
def _(ctx, d):
    with open(d / "m.onnx", "wb") as f:
        f.write(tiny_model().SerializeToString())
        f.truncate(2 * GiB + 4096)


@case("onnx-fifo", "onnx", QUANT, timeout=60, note="m.onnx is a FIFO nobody writes to (open() blocks)")
def _(ctx, d):
    os.mkfifo(d / "m.onnx")


@case("onnx-dev-zero", "onnx", ["quantize", "/dev/zero", *QUANT_ARGS, "-o", "q"], timeout=90,
      note="an endless character device as the model")
def _(ctx, d):
    pass


# ============================================================================ the corpus: npy mels (zsq run)

RUN = ["run", "{build}", "--input", "x.npy", "--output", "out.npy"]


def _npy(d, a):
    np.save(d / "x.npy", a, allow_pickle=True)


def _mel(seed=8):
    return rng(seed).normal(0, 1, (F, T)).astype(np.float32)


@case("npy-pickle-object-array", "npy", RUN, needs=("build",),
      note="object array whose element, when unpickled, creates outside/pwned_by_pickle.txt")
def _(ctx, d):
    a = np.empty(1, dtype=object)
    a[0] = PickleCanary(str(ctx.outside / "pwned_by_pickle.txt"))
    _npy(d, a)


@case("npy-nan-mel", "npy", RUN, needs=("build",))
def _(ctx, d):
    a = _mel()
    a[5, 7] = np.nan
    _npy(d, a)


@case("npy-inf-mel", "npy", RUN, needs=("build",))
def _(ctx, d):
    a = _mel()
    a[0, 0] = -np.inf
    _npy(d, a)


@case("npy-int16-mel", "npy", RUN, needs=("build",))
def _(ctx, d):
    _npy(d, (_mel() * 1000).astype(np.int16))


@case("npy-complex-mel", "npy", RUN, needs=("build",))
def _(ctx, d):
    _npy(d, _mel().astype(np.complex64))


@case("npy-huge-declared-shape", "npy", RUN, needs=("build",), note="header says (64, 2^40) float32, 64 bytes of data")
def _(ctx, d):
    (d / "x.npy").write_bytes(npy_bytes({"descr": "<f4", "fortran_order": False, "shape": (F, 1 << 40)}, b"\0" * 64))


@case("npy-truncated", "npy", RUN, needs=("build",))
def _(ctx, d):
    b = io.BytesIO()
    np.save(b, _mel())
    (d / "x.npy").write_bytes(b.getvalue()[: len(b.getvalue()) - 4000])


@case("npy-not-npy", "npy", RUN, needs=("build",))
def _(ctx, d):
    (d / "x.npy").write_bytes(b"\x93NUMPY garbage " + rng(9).integers(0, 256, 1000, dtype=np.uint8).tobytes())


@case("npy-npz-archive", "npy", RUN, needs=("build",), note="an .npz (zip) given as the .npy input")
def _(ctx, d):
    with open(d / "x.npy", "wb") as f:
        np.savez(f, mel=_mel())


@case("npy-wrong-features", "npy", RUN, needs=("build",))
def _(ctx, d):
    _npy(d, rng(10).normal(0, 1, (80, T)).astype(np.float32))


@case("npy-wrong-frames", "npy", RUN, needs=("build",))
def _(ctx, d):
    _npy(d, rng(11).normal(0, 1, (F, T + 1)).astype(np.float32))


@case("npy-zero-frames", "npy", RUN, needs=("build",))
def _(ctx, d):
    _npy(d, np.zeros((F, 0), np.float32))


@case("npy-empty-batch", "npy", RUN, needs=("build",))
def _(ctx, d):
    _npy(d, np.zeros((0, F, T), np.float32))


@case("npy-4d", "npy", RUN, needs=("build",))
def _(ctx, d):
    _npy(d, rng(12).normal(0, 1, (1, 1, F, T)).astype(np.float32))


@case("npy-large-finite-benign", "npy", RUN, needs=("build",), expect=(0,),
      note="benign by design: large finite values saturate to the calibrated range (README)")
def _(ctx, d):
    a = _mel()
    a[::2] = 3e38
    a[1::2] = -3e38
    _npy(d, a)


@case("npy-fortran-order-benign", "npy", RUN, needs=("build",), expect=(0,),
      note="benign by design: a valid float32 [64, T] mel stored in Fortran order")
def _(ctx, d):
    _npy(d, np.asfortranarray(_mel()))


@case("npy-float64-benign", "npy", RUN, needs=("build",), expect=(0,),
      note="benign by design: float64 mels are converted (README)")
def _(ctx, d):
    _npy(d, _mel().astype(np.float64))


@case("npy-calib-dir-pickle", "npy", ["quantize", "m.onnx", "--frames", str(T), "--calib", "mels", "-o", "q"],
      note="--calib DIR holding a pickle .npy that creates outside/pwned_by_calib_pickle.txt")
def _(ctx, d):
    save_model(tiny_model(), d / "m.onnx")
    (d / "mels").mkdir()
    np.save(d / "mels" / "a.npy", _mel())
    a = np.empty(1, dtype=object)
    a[0] = PickleCanary(str(ctx.outside / "pwned_by_calib_pickle.txt"))
    np.save(d / "mels" / "b.npy", a, allow_pickle=True)


@case("npy-calib-dir-nan", "npy", ["quantize", "m.onnx", "--frames", str(T), "--calib", "mels", "-o", "q"])
def _(ctx, d):
    save_model(tiny_model(), d / "m.onnx")
    (d / "mels").mkdir()
    a = _mel()
    a[3, 3] = np.nan
    np.save(d / "mels" / "a.npy", a)


# ============================================================================ the corpus: WAV / manifests (zsq eval)

EVAL = ["eval", "quartznet-tiny", "--manifest", "m.json"]


def _wav_case(d, data: bytes, text="hello world"):
    (d / "a.wav").write_bytes(data)
    manifest(d, "a.wav", text)


@case("wav-not-riff", "wav", EVAL)
def _(ctx, d):
    _wav_case(d, b"OggS" + rng(13).integers(0, 256, 8000, dtype=np.uint8).tobytes())


@case("wav-8khz", "wav", EVAL)
def _(ctx, d):
    write_wav(d / "a.wav", noise(8000, 14), sr=8000)
    manifest(d, "a.wav")


@case("wav-stereo", "wav", EVAL)
def _(ctx, d):
    write_wav(d / "a.wav", noise(32000, 15), ch=2)
    manifest(d, "a.wav")


@case("wav-24bit", "wav", EVAL)
def _(ctx, d):
    s = noise(16000, 16).astype("<i4") << 8
    raw = b"".join(int(v).to_bytes(4, "little", signed=True)[:3] for v in s[:4000])
    _wav_case(d, wav_header(bits=24, data_bytes=len(raw)) + raw)


@case("wav-float32", "wav", EVAL)
def _(ctx, d):
    raw = (noise(16000, 17).astype(np.float32) / 32768).tobytes()
    _wav_case(d, wav_header(bits=32, data_bytes=len(raw), fmt=3) + raw)


@case("wav-declared-size-over-file", "wav", EVAL, note="header declares 10 MB of samples, 2 KB present")
def _(ctx, d):
    _wav_case(d, wav_header(data_bytes=10_000_000) + noise(1000, 18).tobytes())


@case("wav-zero-bytes", "wav", EVAL)
def _(ctx, d):
    _wav_case(d, b"")


@case("wav-zero-samples", "wav", EVAL)
def _(ctx, d):
    _wav_case(d, wav_header(data_bytes=0))


@case("wav-10-hours-sparse", "wav", EVAL, timeout=150,
      note="a complete (sparse) 10 h WAV: 1.15 GB of samples, over the 30 min limit")
def _(ctx, d):
    n = 10 * 3600 * 16000
    with open(d / "a.wav", "wb") as f:
        f.write(wav_header(data_bytes=2 * n))
        f.truncate(44 + 2 * n)
    manifest(d, "a.wav")


@case("wav-manifest-absolute-outside", "wav", EVAL, note="audio_filepath = absolute path of outside/secret.bin")
def _(ctx, d):
    manifest(d, str(ctx.outside / "secret.bin"))


@case("wav-manifest-dev-zero", "wav", EVAL, timeout=90)
def _(ctx, d):
    manifest(d, "/dev/zero")


@case("wav-manifest-directory", "wav", EVAL)
def _(ctx, d):
    (d / "a.wav").mkdir()
    manifest(d, "a.wav")


@case("wav-manifest-empty-text", "wav", EVAL, needs=("wav",), note="the only reference is empty: WER undefined")
def _(ctx, d):
    shutil.copy(ctx.require("wav"), d / "a.wav")
    manifest(d, "a.wav", text="")


@case("wav-manifest-not-json", "wav", EVAL, needs=("wav",))
def _(ctx, d):
    shutil.copy(ctx.require("wav"), d / "a.wav")
    (d / "m.json").write_text("audio_filepath: a.wav, text: hello\n")


@case("wav-manifest-non-utf8", "wav", EVAL, needs=("wav",))
def _(ctx, d):
    shutil.copy(ctx.require("wav"), d / "a.wav")
    (d / "m.json").write_bytes(b'{"audio_filepath": "a.wav", "text": "caf\xe9 \xff"}\n')


# ============================================================================ the corpus: build folders

@case("build-evil-so-run", "build", ["run", "B", "--input", "ok.npy"], needs=("build", "so"),
      note="model.so replaced by a library whose constructor writes outside/pwned_by_so.txt")
def _(ctx, d):
    b = copy_build(ctx, d)
    shutil.copy(ctx.require("so"), b / "model.so")
    np.save(d / "ok.npy", _mel())


@case("build-evil-so-check", "build", ["check", "B"], needs=("build", "so"))
def _(ctx, d):
    b = copy_build(ctx, d)
    shutil.copy(ctx.require("so"), b / "model.so")


@case("build-evil-so-rehashed-run", "build", ["run", "B", "--input", "ok.npy"], needs=("build", "so"),
      limitation=True,
      note="known limitation (zsq_tvm/artifacts.py): a folder made whole again by the attacker is code")
def _(ctx, d):
    b = copy_build(ctx, d)
    shutil.copy(ctx.require("so"), b / "model.so")
    rehash(b)
    np.save(d / "ok.npy", _mel())


@case("build-so-truncated", "build", ["run", "B", "--input", "ok.npy"], needs=("build",))
def _(ctx, d):
    b = copy_build(ctx, d)
    with open(b / "model.so", "r+b") as f:
        f.truncate(1000)
    np.save(d / "ok.npy", _mel())


@case("build-so-truncated-rehashed", "build", ["run", "B", "--input", "ok.npy"], needs=("build",),
      note="the truncated library with a consistent manifest: the loader itself must fail cleanly")
def _(ctx, d):
    b = copy_build(ctx, d)
    with open(b / "model.so", "r+b") as f:
        f.truncate(1000)
    rehash(b)
    np.save(d / "ok.npy", _mel())


@case("build-so-symlink", "build", ["run", "B", "--input", "ok.npy"], needs=("build",),
      note="model.so is a symlink to the (genuine) shared build's library")
def _(ctx, d):
    b = copy_build(ctx, d)
    (b / "model.so").unlink()
    os.symlink(ctx.require("build") / "model.so", b / "model.so")
    np.save(d / "ok.npy", _mel())


@case("build-manifest-missing", "build", ["check", "B"], needs=("build",))
def _(ctx, d):
    (copy_build(ctx, d) / "manifest.json").unlink()


@case("build-manifest-garbled", "build", ["run", "B", "--input", "ok.npy"], needs=("build",))
def _(ctx, d):
    b = copy_build(ctx, d)
    raw = (b / "manifest.json").read_bytes()
    (b / "manifest.json").write_bytes(raw[: len(raw) // 3] + b"\xff\x00{{{")
    np.save(d / "ok.npy", _mel())


@case("build-manifest-symlink", "build", ["check", "B"], needs=("build",),
      note="manifest.json is a symlink to a copy in outside/")
def _(ctx, d):
    b = copy_build(ctx, d)
    shutil.copy(b / "manifest.json", ctx.outside / "manifest_copy.json")
    (b / "manifest.json").unlink()
    os.symlink(ctx.outside / "manifest_copy.json", b / "manifest.json")


@case("build-module-json-garbled", "build", ["check", "B"], needs=("build",))
def _(ctx, d):
    b = copy_build(ctx, d)
    (b / "module.json").write_text('{"root": 1, "nodes": [{"type_key": "relax.Function", "attrs": {"x": "')


@case("build-module-json-garbled-rehashed", "build", ["check", "B"], needs=("build",),
      note="garbled module.json with a consistent manifest: the parser itself must fail cleanly")
def _(ctx, d):
    b = copy_build(ctx, d)
    (b / "module.json").write_text('{"root": 1, "nodes": [{"type_key": "relax.Function", "attrs": {"x": "')
    rehash(b)


@case("build-extra-file", "build", ["run", "B", "--input", "ok.npy"], needs=("build",))
def _(ctx, d):
    b = copy_build(ctx, d)
    (b / "extra.so").write_bytes(b"\x7fELF not really")
    np.save(d / "ok.npy", _mel())


@case("build-manifest-kind-changed", "build", ["run", "B", "--input", "ok.npy"], needs=("build",))
def _(ctx, d):
    b = copy_build(ctx, d)
    edit_manifest(b, lambda m: m.update(kind="zsq-quantized"))
    np.save(d / "ok.npy", _mel())


@case("build-manifest-lists-outside-file", "build", ["run", "B", "--input", "ok.npy"], needs=("build",),
      note="manifest 'files' lists ../../outside/secret.bin with its true size and hash")
def _(ctx, d):
    b = copy_build(ctx, d)
    sec = (ctx.outside / "secret.bin").read_bytes()
    edit_manifest(b, lambda m: m.setdefault("files", {}).update(
        {"../../outside/secret.bin": {"size": len(sec), "sha256": hashlib.sha256(sec).hexdigest()}}))
    np.save(d / "ok.npy", _mel())


# ============================================================================ the corpus: output paths

@case("path-o-dot-overwrite", "path", ["quantize", "m.onnx", *QUANT_ARGS, "-o", ".", "--overwrite"],
      survive=("m.onnx",), note="-o . --overwrite in the folder holding the input: refuse, delete nothing")
def _(ctx, d):
    save_model(tiny_model(), d / "m.onnx")


@case("path-o-parent-overwrite", "path", ["quantize", "m.onnx", *QUANT_ARGS, "-o", "..", "--overwrite"],
      cwd="a/b", survive=("a/b/m.onnx", "a/keep.txt"), note="-o .. --overwrite (the parent of the current folder)")
def _(ctx, d):
    (d / "a" / "b").mkdir(parents=True)
    (d / "a" / "keep.txt").write_text("keep me\n")
    save_model(tiny_model(), d / "a" / "b" / "m.onnx")


@case("path-o-non-zsq-folder-overwrite", "path", ["quantize", "m.onnx", *QUANT_ARGS, "-o", "data", "--overwrite"],
      survive=("data/precious.txt",))
def _(ctx, d):
    save_model(tiny_model(), d / "m.onnx")
    (d / "data").mkdir()
    (d / "data" / "precious.txt").write_text("precious\n")


@case("path-compile-o-equals-input", "path", ["compile", "q", "-o", "q", "--overwrite"], needs=("q",),
      survive=("q/manifest.json",))
def _(ctx, d):
    shutil.copytree(ctx.require("q"), d / "q")


@case("path-o-symlink-to-outside-zsq", "path", ["quantize", "m.onnx", *QUANT_ARGS, "-o", "q", "--overwrite"],
      needs=("q",), note="-o q --overwrite where q is a symlink to a genuine quantized folder in outside/")
def _(ctx, d):
    tgt = ctx.outside / "zsq_q"
    if not tgt.exists():
        shutil.copytree(ctx.require("q"), tgt)
    os.symlink(tgt, d / "q")
    save_model(tiny_model(), d / "m.onnx")


@case("path-o-under-a-file", "path", ["quantize", "m.onnx", *QUANT_ARGS, "-o", "somefile/out"])
def _(ctx, d):
    save_model(tiny_model(), d / "m.onnx")
    (d / "somefile").write_text("a file, not a folder\n")


@case("path-o-in-proc", "path", ["quantize", "m.onnx", *QUANT_ARGS, "-o", "/proc/zsq-adversarial/q"],
      note="an unwritable place even for root")
def _(ctx, d):
    save_model(tiny_model(), d / "m.onnx")


@case("path-run-output-missing-dir", "path", ["run", "{build}", "--input", "ok.npy", "--output", "missing_dir/x.npy"],
      needs=("build",))
def _(ctx, d):
    np.save(d / "ok.npy", _mel())


@case("path-run-output-dangling-symlink", "path", ["run", "{build}", "--input", "ok.npy", "--output", "out.npy"],
      needs=("build",), note="out.npy is a dangling symlink to outside/victim.npy (planted)")
def _(ctx, d):
    np.save(d / "ok.npy", _mel())
    os.symlink(ctx.outside / "victim.npy", d / "out.npy")


@case("path-tune-db-is-a-file", "path", ["tune", "q", "--db", "dbfile", "--trials", "1"], needs=("q",), timeout=150)
def _(ctx, d):
    shutil.copytree(ctx.require("q"), d / "q")
    (d / "dbfile").write_text("not a database folder\n")


@case("path-export-nemo-o-folder", "path", ["export-nemo", "quartznet-tiny", "-o", "out.onnx"],
      survive=("out.onnx/keep.txt",))
def _(ctx, d):
    (d / "out.onnx").mkdir()
    (d / "out.onnx" / "keep.txt").write_text("keep me\n")


# ============================================================================ running

def child_env(d: Path) -> dict:
    env = dict(os.environ)
    for k, sub in (("HOME", ".home"), ("TMPDIR", ".tmp"), ("XDG_CACHE_HOME", ".cache")):
        p = d / sub
        p.mkdir(parents=True, exist_ok=True)
        env[k] = str(p)
    env.update(TVM_NUM_THREADS="1", OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1", PYTHONUNBUFFERED="1",
               PYTHONSAFEPATH="1", TQDM_DISABLE="1")  # PYTHONSAFEPATH: no case file shadows a module
    env.pop("PYTHONPATH", None)
    return env


def _limits():  # runs in the child between fork and exec
    resource.setrlimit(resource.RLIMIT_AS, (AS_CAP, AS_CAP))
    resource.setrlimit(resource.RLIMIT_FSIZE, (FSIZE_CAP, FSIZE_CAP))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def run_child(argv: list, cwd: Path, env: dict, timeout: float, out: Path, err: Path) -> dict:
    t0 = time.perf_counter()
    with open(out, "wb") as fo, open(err, "wb") as fe:
        p = subprocess.Popen([sys.executable, "-m", "zsq_tvm.cli", *argv], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                             stdout=fo, stderr=fe, preexec_fn=_limits, start_new_session=True)
    timed_out = False
    while True:
        pid, status, ru = os.wait4(p.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() - t0 > timeout:
            timed_out = True
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            pid, status, ru = os.wait4(p.pid, 0)
            break
        time.sleep(0.05)
    p.returncode = os.waitstatus_to_exitcode(status)   # reaped here; keep Popen from waiting again
    try:  # stray processes the command left in its own session (started by us)
        os.killpg(p.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    return {"rc": p.returncode, "timed_out": timed_out, "seconds": round(time.perf_counter() - t0, 2),
            "peak_rss_mib": round(ru.ru_maxrss / 1024, 1)}


def snapshot(root: Path, exclude: Path) -> dict:
    """relative path -> (size, mtime_ns, inode, mode) of every entry under root except ``exclude``'s tree."""
    out = {}
    ex = str(exclude)
    for dirpath, dirs, files in os.walk(root, followlinks=False):
        dirs[:] = [x for x in dirs if os.path.join(dirpath, x) != ex]
        for name in [*dirs, *files, ""] if dirpath == str(root) else [*dirs, *files]:
            full = os.path.join(dirpath, name) if name else dirpath
            try:
                st = os.lstat(full)
            except FileNotFoundError:
                continue
            out[os.path.relpath(full, root)] = (st.st_size, st.st_mtime_ns, st.st_ino, st.st_mode)
    return out


def diff(before: dict, after: dict) -> list:
    ch = [f"new {k}" for k in sorted(after.keys() - before.keys())]
    ch += [f"deleted {k}" for k in sorted(before.keys() - after.keys())]
    ch += [f"changed {k}" for k in sorted(before.keys() & after.keys()) if before[k] != after[k]]
    return ch


def first_line(*texts: str) -> str:
    for t in texts:
        for ln in t.splitlines():
            if ln.strip():
                return ln.strip()
    return ""


def _read(p: Path, cap=8 * MiB) -> str:
    with open(p, "rb") as f:
        return f.read(cap).decode("utf-8", "replace")


def _digest(p: Path) -> Optional[str]:
    try:
        return hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() and not p.is_symlink() else None
    except OSError:
        return None


def _count_entries(p: Path) -> int:
    return sum(len(ds) + len(fs) for _, ds, fs in os.walk(p)) if p.is_dir() else 0


def run_case(ctx: Ctx, i: int, c: Case, timeout: float) -> dict:
    d = ctx.work / f"{i:03d}_{c.name}"
    d.mkdir()
    res = {"n": i, "name": c.name, "category": c.category, "expect": list(c.expect), "note": c.note,
           "limitation": c.limitation}
    try:
        for n in c.needs:
            ctx.require(n)
        tb = time.perf_counter()
        c.builder(ctx, d)
        res["build_seconds"] = round(time.perf_counter() - tb, 2)
    except Exception as e:  # noqa: BLE001 - a setup/builder problem is the runner's, reported as ERROR
        res.update(verdict="ERROR", reasons=[f"could not build the input: {type(e).__name__}: {e}"[:300]],
                   command="", rc=None, first_line="", outside_writes=0, peak_rss_mib=None)
        return res
    argv = ctx.fill(c.argv, d)
    res["command"] = "zsq " + " ".join(argv)
    survive = {s: _digest(d / s) for s in c.survive}
    env = child_env(d)
    cwd = d / c.cwd
    before = snapshot(ctx.work, d)
    r = run_child(argv, cwd, env, min(timeout, c.timeout or timeout), d / ".stdout", d / ".stderr")
    after = snapshot(ctx.work, d)
    out, err = _read(d / ".stdout"), _read(d / ".stderr")
    outside = diff(before, after)
    err_lines = [ln for ln in err.splitlines() if ln.strip()]
    res.update(r, first_line=first_line(err, out), stderr_lines=len(err_lines), traceback="Traceback" in out + err,
               outside_writes=len(outside), outside_detail=outside[:20], stderr_tail=err[-1500:],
               tmp_leftovers=_count_entries(d / ".tmp"))
    reasons, known = [], []   # known: the outside writes of a documented limitation
    if r["timed_out"]:
        reasons.append(f"timed out after {r['seconds']:.0f} s")
    elif r["rc"] not in c.expect:
        reasons.append(f"exit {r['rc']}" + (f" (signal {-r['rc']})" if r["rc"] < 0 else "")
                       + f", expected {'/'.join(map(str, c.expect))}")
    if res["traceback"]:
        reasons.append("a Python traceback reached the user")
    if outside:
        (known if c.limitation else reasons).append(
            f"{len(outside)} write(s) outside the case folder: {', '.join(outside[:3])}")
    if r["peak_rss_mib"] >= RSS_LIMIT_MIB:
        reasons.append(f"peak RSS {r['peak_rss_mib']:.0f} MiB >= {RSS_LIMIT_MIB} MiB")
    if r["rc"] == 2 and not res["first_line"].startswith("zsq: error:"):
        reasons.append("exit 2 but the first line is not 'zsq: error: ...'")
    for s, h in survive.items():
        if _digest(d / s) != h:
            reasons.append(f"{s} was deleted or changed")
    res["reasons"] = reasons + [f"known limitation: {k}" for k in known]
    res["verdict"] = "FAIL" if reasons else "LIMIT" if known else "PASS"
    shutil.rmtree(d / ".tmp", ignore_errors=True)   # keep later snapshots cheap (leftovers were counted)
    return res


# ============================================================================ report

def _cell(s, n=None) -> str:
    s = str(s).replace("|", "\\|").replace("\n", " ")
    return s if n is None or len(s) <= n else s[: n - 1] + "…"


def table(results: list, work: Path) -> str:
    rows = ["| # | input | category | command | exit | first line (≤ 100 chars) | outside writes | peak RSS MiB | verdict |",
            "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        cmd = r.get("command", "").replace(str(work / f"{r['n']:03d}_{r['name']}") + "/", "").replace(str(work), "$WORK")
        rc = "timeout" if r.get("timed_out") else r.get("rc")
        rss = "" if r.get("peak_rss_mib") is None else f"{r['peak_rss_mib']:.0f}"
        rows.append(f"| {r['n']} | {_cell(r['name'])} | {r['category']} | `{_cell(cmd, 90)}` | {rc} | "
                    f"{_cell(r.get('first_line', ''), 100)} | {r.get('outside_writes', 0)} | {rss} | {r['verdict']} |")
    return "\n".join(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default=None, help="work folder (created; must be new or empty; kept). Default: a new "
                                                 "temporary folder, removed afterwards unless --keep")
    ap.add_argument("--json", default=str(DEFAULT_JSON), help=f"JSON output (default {DEFAULT_JSON.relative_to(REPO)})")
    ap.add_argument("--only", default=None, help="comma-separated substrings of case names or categories")
    ap.add_argument("--timeout", type=float, default=300, help="seconds per case (default 300)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary work folder")
    ap.add_argument("--list", action="store_true", help="list the cases and exit")
    a = ap.parse_args(argv)

    cases = CASES
    if a.only:
        keys = [k.strip() for k in a.only.split(",") if k.strip()]
        cases = [c for c in CASES if any(k in c.name or k == c.category for k in keys)]
    if a.list:
        for i, c in enumerate(cases, 1):
            print(f"{i:3d} {c.category:8s} {c.name:42s} expect {'/'.join(map(str, c.expect))}  zsq {' '.join(c.argv)}")
        print(f"{len(cases)} cases; by category: {_by_category(cases)}")
        return 0
    if not cases:
        print(f"no case matches --only {a.only!r}", file=sys.stderr)
        return 2

    if a.work:
        work = Path(a.work).absolute()
        if work.exists() and any(work.iterdir()):
            print(f"--work {a.work!r} exists and is not empty: pass a new folder", file=sys.stderr)
            return 2
        work.mkdir(parents=True, exist_ok=True)
    else:
        work = Path(tempfile.mkdtemp(prefix="zsq-adversarial-"))
    work = work.resolve()
    t0 = time.perf_counter()
    ctx = Ctx(work, a.timeout)
    print(f"work folder: {work}", file=sys.stderr)

    results = []
    it = tqdm(list(enumerate(cases, 1)), desc="adversarial", unit="case", file=sys.stderr) if tqdm else enumerate(cases, 1)
    for i, c in it:
        if tqdm:
            it.set_postfix_str(c.name)
        results.append(run_case(ctx, i, c, a.timeout))
    total = time.perf_counter() - t0

    counts = {v: sum(r["verdict"] == v for r in results) for v in ("PASS", "FAIL", "LIMIT", "ERROR")}
    max_rss = max((r["peak_rss_mib"] or 0 for r in results), default=0)
    outside = sum(r.get("outside_writes", 0) for r in results)
    tb = sum(bool(r.get("traceback")) for r in results)
    summary = (f"{len(results)} cases ({_by_category(cases)}): {counts['PASS']} PASS, {counts['FAIL']} FAIL, "
               f"{counts['LIMIT']} LIMIT (known limitation), {counts['ERROR']} ERROR; {tb} with a traceback, "
               f"{outside} outside write(s), max peak RSS {max_rss:.0f} MiB; {total:.0f} s")
    print(table(results, work))
    print()
    print(summary)
    for r in results:
        if r["verdict"] in ("FAIL", "ERROR", "LIMIT"):
            print(f"  {r['verdict']} {r['name']}: {'; '.join(r['reasons'])}")

    if a.json:
        jp = Path(a.json)
        jp.parent.mkdir(parents=True, exist_ok=True)
        zv = subprocess.run([sys.executable, "-m", "zsq_tvm.cli", "--version"], capture_output=True, text=True).stdout.strip()
        jp.write_text(json.dumps({
            "summary": summary, "counts": counts, "cases": len(results), "by_category": _by_category_dict(cases),
            "seconds": round(total, 1), "zsq_version": zv, "python": sys.version.split()[0], "machine": platform.machine(),
            "cpus": os.cpu_count(), "rss_limit_mib": RSS_LIMIT_MIB, "as_cap_gib": AS_CAP / GiB,
            "fsize_cap_gib": FSIZE_CAP / GiB, "timeout_s": a.timeout, "only": a.only, "setup": ctx.setup_log,
            "results": results}, indent=1) + "\n")
        print(f"JSON -> {jp}", file=sys.stderr)

    if a.work is None and not a.keep:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"kept {work}", file=sys.stderr)
    return 1 if counts["FAIL"] or counts["ERROR"] else 0


def _by_category_dict(cases) -> dict:
    out: dict[str, int] = {}
    for c in cases:
        out[c.category] = out.get(c.category, 0) + 1
    return out


def _by_category(cases) -> str:
    return ", ".join(f"{k} {v}" for k, v in _by_category_dict(cases).items())


if __name__ == "__main__":
    sys.exit(main())
