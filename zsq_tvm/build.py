"""Compile an integer Relax module for a target, save/load the library, run it.

The build directory holds ``model.so`` (``export_library``), the integer Relax module it was
compiled from (``module.json``, so ``zsq check`` can re-lower and re-check it), the
quantization metadata, the vocabulary and ``manifest.json``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np

from zsq_tvm import artifacts
from zsq_tvm.core import intmath
from zsq_tvm.core.errors import ArtifactError, InputShapeError, NotAvailableError
from zsq_tvm.ctc import Vocab, _class_axis_last, greedy_decode
from zsq_tvm.targets import get_target

__all__ = ["lower", "compile_relax", "Build", "LIB_NAME"]

LIB_NAME = "model.so"


def lower(mod, target):
    """Relax → lowered IRModule (fused Relax + TIR PrimFuncs) for ``target``.

    Uses :func:`relax_passes.lowering.lower` (LegalizeOps + fusion, what the integer-only check
    inspects); the *same* lowered module is then compiled by :func:`compile_relax`.
    Returns ``(lowered, finish_pipeline)`` where ``finish_pipeline`` is the ``relax_pipeline``
    that ``tvm.compile`` still has to apply.

    For CPU (``llvm``) targets, integer scalar constants first become 1-element tensors
    (:class:`relax_passes.share_scalar_constants.ShareScalarConstants`), so layers that differ only in
    their requantization constants share one compiled kernel (Conformer-large: 18 layers, ~6x fewer
    PrimFuncs); the arithmetic is unchanged, so results stay bit-exact.
    """
    import inspect

    from tvm import relax

    if str(target.kind.name) == "llvm":
        from relax_passes.share_scalar_constants import ShareScalarConstants

        mod = ShareScalarConstants()(mod)

    try:
        from relax_passes.lowering import lower as core_lower  # owned by the core passes
    except ImportError:
        core_lower = None
    with target:
        if core_lower is not None:
            n = len(inspect.signature(core_lower).parameters)
            lowered = core_lower(mod, target) if n >= 2 else core_lower(mod)
            return lowered, "default"
        return relax.get_pipeline("default")(mod), None


def integer_only_report(lowered) -> dict:
    """Run the integer-only check on a lowered module; ``{"ok": bool, ...}``."""
    try:
        from relax_passes.integer_only_check import check_integer_only  # type: ignore
    except ImportError:
        return {"ok": None, "available": False,
                "message": "relax_passes.check_integer_only is not available yet"}
    try:
        rep = check_integer_only(lowered, lower=False)
    except TypeError:
        rep = check_integer_only(lowered)
    return _report_to_json(rep)


def _report_to_json(rep) -> dict:
    if isinstance(rep, dict):
        out = dict(rep)
    elif hasattr(rep, "to_json"):
        out = rep.to_json()
    elif hasattr(rep, "__dataclass_fields__"):
        from dataclasses import asdict

        out = asdict(rep)
    else:
        out = {"ok": bool(rep), "detail": str(rep)}
    if "ok" not in out:
        viol = out.get("violations", [])
        out["ok"] = not viol
    out.setdefault("available", True)
    return out


def takes_tuning(spec, tgt) -> bool:
    """Whether builds for this target apply a tuning database (CPU targets on TVM's own pipeline)."""
    return spec.compile is None and spec.compile_model is None and str(tgt.kind.name) == "llvm"


def compile_relax(mod, target: str = "host", tuning_db=None):
    """Lower, check and compile ``mod``; returns ``(executable, lowered, check_report, tvm_target)``.

    ``tuning_db``: the database folder to apply (``zsq compile --db``); without it the lookup order of
    :func:`zsq_tvm.tuning_db.find_db` ($ZSQ_TUNING_DB, the user cache, the shipped log)."""
    import tvm

    spec = get_target(target)
    tgt = spec.make()
    if tuning_db is not None:
        check_tuning_db(spec, tgt, target, tuning_db)
    if spec.prepare is not None:  # opt-in target rewrite (e.g. host-vnni kernels)
        mod = spec.prepare(mod)
    lowered, finish = lower(mod, tgt)
    tuning = None
    if takes_tuning(spec, tgt):  # `zsq tune` records (--db, $ZSQ_TUNING_DB, user cache, shipped log)
        from zsq_tvm.tuning_db import apply_tuning

        lowered, tuning = apply_tuning(lowered, tgt, tuning_db)
        from relax_passes.tir_inline import InlineOnceRead

        # what neither our kernels nor the log schedule: its elementwise chains in one loop, not one per op
        lowered = InlineOnceRead()(lowered)
    report = integer_only_report(lowered)
    if tuning and tuning.get("db"):
        report["tuning"] = tuning
    if spec.compile is not None:  # e.g. the CUDA targets: own kernel schedules + the rest of the pipeline
        ex = spec.compile(lowered, tgt)
    else:
        from relax_passes.tir_stack_scratch import register_pipeline

        # register tiles / scratch rows of the x86 kernels on the stack, not the workspace pool
        ex = tvm.compile(lowered, target=tgt, relax_pipeline=finish, tir_pipeline=register_pipeline())
    return ex, lowered, report, tgt


def check_tuning_db(spec, tgt, target: str, tuning_db) -> None:
    """A ``--db`` for a target that takes no tuning, or that is no database of its class: ConfigError."""
    from zsq_tvm.core.errors import ConfigError
    from zsq_tvm.tuning_db import check_db

    if not takes_tuning(spec, tgt):
        raise ConfigError(f"--db: target {target!r} applies no tuning database (only the CPU targets do)",
                          "leave --db out for this target")
    check_db(tuning_db, tgt)


def _main_io(mod) -> dict:
    """Input/output names, shapes and dtypes of ``main``."""
    import tvm

    def dim(d):  # a static size, or the expression of a symbolic one ("T", "(T - 1) // 2 + 1")
        return int(d) if isinstance(d, tvm.tirx.IntImm) else _expr_text(d)

    f = mod["main"]
    ps = []
    for p in f.params:
        ty = p.ty
        ps.append({"name": str(p.name), "shape": [dim(d) for d in ty.shape], "dtype": str(ty.dtype)})
    rs = f.ret_ty
    if hasattr(rs, "fields"):
        rs = rs.fields[0]
    out = {"shape": [dim(d) for d in rs.shape], "dtype": str(rs.dtype)}
    return {"inputs": ps, "output": out}


def _expr_text(e) -> str:
    """A shape expression in plain infix (``(T - 1) // 2 + 1``), as manifests spell a symbolic size."""
    from tvm import tirx

    ops = {tirx.Add: "+", tirx.Sub: "-", tirx.Mul: "*", tirx.FloorDiv: "//", tirx.FloorMod: "%"}
    if isinstance(e, tirx.IntImm):
        return str(int(e))
    if isinstance(e, tirx.Var):
        return str(e.name)
    for cls, sym in ops.items():
        if isinstance(e, cls):
            a, b = _expr_text(e.a), _expr_text(e.b)
            wrap = lambda x, sub: f"({x})" if isinstance(sub, tuple(ops)) else x  # noqa: E731
            return f"{wrap(a, e.a) if sym in ('*', '//', '%') else a} {sym} {wrap(b, e.b)}"
    return str(e)


#: distinct input lengths of symbolic-T builds after which the allocator's free blocks are released (Build._bound_pool);
#: process-wide, as the allocator is
POOL_LENGTHS = 8
_POOL_SEEN: set = set()
_POOL_LOCK = threading.Lock()


def pad_batch(a: np.ndarray, B: int) -> np.ndarray:
    """``a`` with zeros appended along axis 0 up to ``B`` items (a model compiled for batch ``B``)."""
    n = a.shape[0]
    return a if n >= B else np.concatenate([a, np.zeros((B - n,) + a.shape[1:], a.dtype)])


_ELF_MACHINES = {"x86_64": 62, "AMD64": 62, "aarch64": 183, "arm64": 183}


def check_shared_library(path, shown, machine: bool = True) -> None:
    """Refuse a file that is not a complete ELF shared library for this machine, *before* it is mapped.

    ``dlopen`` maps the file's segments; one that extends past the end of a truncated file is touched as
    memory and kills the process with SIGBUS -- no message, no cleanup.  The headers say what will be mapped,
    so the check reads them: magic, 64-bit little-endian, this CPU, a shared object, and every program
    header, loadable segment and the section table lying inside the file."""
    import platform
    import struct

    fix = "compile again with `zsq compile`"
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        hdr = f.read(64)
        if len(hdr) < 64 or hdr[:4] != b"\x7fELF" or hdr[4] != 2 or hdr[5] != 1:
            raise ArtifactError(f"{str(shown)!r} is not a 64-bit little-endian ELF shared library", fix)
        e_type, e_machine = struct.unpack_from("<HH", hdr, 16)
        phoff, shoff = struct.unpack_from("<QQ", hdr, 32)
        phentsize, phnum, shentsize, shnum = struct.unpack_from("<HHHH", hdr, 54)
        want = _ELF_MACHINES.get(platform.machine()) if machine else None
        if e_type != 3 or (want is not None and e_machine != want):
            raise ArtifactError(f"{str(shown)!r} is not a shared library for this machine "
                                f"(ELF type {e_type}, machine {e_machine})", fix)
        if phentsize < 56 or phoff + phnum * phentsize > size or shoff + shnum * shentsize > size:
            raise ArtifactError(f"{str(shown)!r} is truncated (its ELF headers point past its {size:,} bytes)", fix)
        f.seek(phoff)
        table = f.read(phnum * phentsize)
    for i in range(phnum):
        p_type, _flags, p_offset, _vaddr, _paddr, p_filesz = struct.unpack_from("<IIQQQQ", table, i * phentsize)
        if p_type == 1 and p_offset + p_filesz > size:  # PT_LOAD
            raise ArtifactError(f"{str(shown)!r} is truncated (segment {i} ends at byte {p_offset + p_filesz:,} "
                                f"of a {size:,}-byte file)", fix)


_CODE_DTYPES = ("int8", "uint8", "int16", "uint16", "int32", "uint32")


def _output_record(quant) -> dict | None:
    """``quant.json``'s ``output[0]`` (``{"dtype", "scale", ...}``), ``None`` where there is none; one that is no
    integer dtype and positive finite scale is an ArtifactError."""
    rec = quant.get("output") if isinstance(quant, dict) else None
    rec = rec[0] if isinstance(rec, list) and rec else None
    if not isinstance(rec, dict):
        return None
    scale = rec.get("scale")
    if rec.get("dtype") not in _CODE_DTYPES or isinstance(scale, bool) or not isinstance(scale, (int, float)) \
            or not 0 < scale < float("inf"):
        raise ArtifactError(f"quant.json's output record {str(rec)[:120]} has no integer dtype and positive scale",
                            "quantize and compile again with zsq")
    return {"dtype": rec["dtype"], "scale": float(scale)}


class Build:
    """A compiled model: ``run(mel) -> float32 logits`` (``run(mel, codes=True)``: the integer codes),
    ``transcribe(mel) -> [str]``, ``save(dir)``."""

    def __init__(self, executable, manifest: dict, module_json: str | None = None,
                 files: dict[str, Any] | None = None, lib_path: str | None = None):
        self._ex = executable
        self.manifest = manifest
        self._module_json = module_json
        self._files = files or {}
        self._lib_path = lib_path
        self._lib_sha256: str | None = None  # of the verified library a loaded build was read from
        # quant.json's record of the output codes (dtype, scale): what `run(codes=True)` returns
        q = self._files.get("quant.json")
        self._quant_output = _output_record(q) if isinstance(q, dict) else None
        self._tls = threading.local()  # one relax VM per thread: a VM is not re-entrant

    # ---- properties
    @property
    def frames(self) -> int | None:
        """The fixed input length T, or None for a symbolic-T build (``zsq quantize`` without ``--frames``)."""
        f = self.manifest.get("frames")
        return None if f is None else int(f)

    @property
    def target(self) -> str:
        return self.manifest["target"]

    @property
    def vocab(self) -> Vocab | None:
        v = self.manifest.get("vocab")
        return Vocab.from_json(v) if v else None

    @property
    def integer_only(self) -> dict:
        return self.manifest.get("integer_only", {})

    # ---- running
    def _vm_(self):
        """This thread's VM.  ``relax.VirtualMachine`` keeps its frames and registers in the object, so
        two threads calling one VM corrupt each other ("Check failed: reg < frame->register_file.size()");
        each thread gets its own VM on the shared executable instead, which makes :meth:`run` safe to
        call from several threads at once (``bench/steady_run.py``, ``tests/test_steady_run.py``)."""
        vm = getattr(self._tls, "vm", None)
        if vm is None:
            import tvm
            from tvm import relax

            if self._ex is None:  # a CUDA build loaded where its library cannot be, or load_library=False
                if get_target(self.target).device != "cuda":
                    raise NotAvailableError("this build was opened without loading its library",
                                            "open it with zsq_tvm.load(path) to run it")
                raise NotAvailableError(f"build target {self.target!r} needs an NVIDIA GPU and TVM's CUDA runtime",
                                        "run it on a GPU machine, or compile with --target host")
            gpu = get_target(self.target).device == "cuda"
            try:
                vm = self._tls.vm = relax.VirtualMachine(self._ex, tvm.cuda(0) if gpu else tvm.cpu())
            except Exception as e:  # noqa: BLE001 - a loadable library that is no Relax executable
                raise ArtifactError(f"the build's {LIB_NAME} is not a Relax executable ({type(e).__name__})",
                                    "compile again with `zsq compile`") from None
        return vm

    def _prepare(self, mel) -> np.ndarray:
        """Validate a mel where it enters the build; returns float32 ``[B, F, T]``.

        Contract (the CLI's ``zsq run`` exits 2 with the message on each error):

        * dtype: any floating type (float16/32/64) is accepted and converted to float32 (float64 values
          beyond float32's range are clamped to +-float32 max first); integer, bool, complex or object
          arrays are refused (an int16 array is usually raw PCM audio, not a mel);
        * shape ``[F, T]`` or ``[B, F, T]`` with this build's F and T exactly (a fixed-T build: pad or crop,
          or quantize again with ``--frames``; a symbolic-T build takes any T >= 1); B >= 1 and every axis
          non-empty;
        * NaN or +-Inf anywhere is an error (a log-mel of digital silence without an epsilon gives -inf);
        * large finite values are *not* an error: the input quantize saturates them to +-alpha, the
          calibrated input clipping value (``quant.json`` ``input[0].alpha`` = 127 x ``input_scale`` at 8 bits),
          like any value outside the calibrated range.
        """
        x = np.asarray(mel)
        inp = self.manifest["io"]["inputs"][0]
        F, T = inp["shape"][1], inp["shape"][2]
        if not isinstance(T, int) and x.ndim in (2, 3) and x.shape[-1] > 0:
            T = x.shape[-1]  # a symbolic-T build: any length (the VM checks nothing else varies)
        if x.dtype.kind != "f":
            hint = " (raw audio? compute the log-mel first)" if x.dtype.kind in "iu" else ""
            raise InputShapeError(f"input mel has dtype {x.dtype}{hint}; a mel spectrogram is floating point",
                                  f"pass a float32 array [{F}, {T}] or [B, {F}, {T}]")
        if x.ndim == 2:
            x = x[None]
        if x.ndim != 3 or x.shape[1] != F or x.shape[2] != T or x.shape[0] == 0:
            got = list(np.shape(mel))
            if x.ndim == 3 and x.shape[0] == 0:
                cause, fix = f"input mel {got} is an empty batch", f"pass at least one mel [{F}, {T}]"
            elif x.ndim == 3 and x.shape[1] == F and x.shape[2] == 0:
                cause, fix = f"input mel {got} has zero frames", f"pass {T} frames (zero-pad a short utterance)"
            elif x.ndim == 3 and x.shape[1] == F:
                how = "longer" if x.shape[2] > T else "shorter"
                cause = f"input mel has {x.shape[2]} frames, {how} than the {T} this build was compiled for"
                fix = (f"pad or crop the mel to {T} frames ({'crop or split' if how == 'longer' else 'zero-pad'} "
                       f"it), or quantize again with --frames {x.shape[2]}")
            else:
                cause = f"input mel has shape {got}, this build expects [B, {F}, {T}] (or [{F}, {T}])"
                fix = (f"pass {F} mel features per frame (features on axis -2, frames on axis -1); pad or crop "
                       f"to {T} frames" if x.ndim == 3 else f"pass a 2-D [{F}, {T}] or 3-D [B, {F}, {T}] array")
            raise InputShapeError(cause, fix)
        finite = np.isfinite(x)
        if not finite.all():
            nan, inf = int(np.isnan(x).sum()), int(np.isinf(x).sum())
            first = [int(i) for i in np.argwhere(~finite)[0]]
            raise InputShapeError(f"input mel contains {nan} NaN and {inf} infinite value(s) (first at [b, f, t] = "
                                  f"{first}); the integer model cannot represent them",
                                  "fix the front end (e.g. log(mel + 1e-6) instead of log(mel)) or replace them "
                                  "with numpy.nan_to_num")
        if x.dtype != np.float32:
            big = float(np.finfo(np.float32).max)
            x = np.clip(x, -big, big) if x.dtype.itemsize > 4 else x
            x = x.astype(np.float32)
        return x

    @property
    def time_mask(self) -> bool:
        """True for a ``--time-mask`` build: ``main`` takes the valid frames of each mel as a second input."""
        ins = self.manifest.get("io", {}).get("inputs", [])
        return len(ins) == 2 and ins[1].get("name") == "length"

    def _lengths(self, length, B: int, T: int) -> np.ndarray:
        """``length`` (None: all ``T`` frames valid; an int; or one per mel) as int32 ``[B]``, checked."""
        if length is None:
            return np.full(B, T, np.int32)
        arr = np.asarray(length)
        if arr.dtype.kind not in "iu" or arr.ndim > 1 or (arr.ndim == 1 and arr.shape[0] != B):
            raise InputShapeError(f"length {length!r} is not an integer or {B} integers (one per mel)",
                                  f"pass the number of valid frames of each mel, 1..{T}")
        arr = np.broadcast_to(arr, (B,))
        if arr.min() < 0 or arr.max() > T:
            raise InputShapeError(f"length {arr.tolist()} is outside 0..{T} (the build's frames)",
                                  f"pass the number of valid (unpadded) frames of each mel, at most {T}")
        return arr.astype(np.int32)

    def run(self, mel, length=None, *, codes: bool = False, dequantize=None) -> np.ndarray:
        """Mel ``[B, F, T]`` / ``[F, T]`` (float32) → float32 logits, the same on every target.

        ``codes=True``: the model's integer output codes instead -- the input of the output dequantize
        (``quant.json`` ``output[0]``: dtype, scale), bit-exact across targets; the logits are
        ``codes.astype(float32) * float32(output_scale)`` (:func:`zsq_tvm.core.intmath.dequantize`).
        ``length`` (an int or one per mel): how many leading frames of each zero-padded mel are real; a
        ``--time-mask`` build masks the rest (default: all ``T``); other builds refuse it (their output
        depends on the padding).  ``dequantize`` is deprecated: float logits are the default.
        """
        self._deprecated_dequantize(dequantize)
        return self._output(self._run_model(mel, length), codes)

    @staticmethod
    def _deprecated_dequantize(dequantize) -> None:
        if dequantize is not None:  # `run` of a Cortex-M build returned integer codes unless dequantize=True
            import warnings

            warnings.warn("run(dequantize=...) is deprecated: run returns float logits on every target; pass "
                          "codes=True for the integer output codes", DeprecationWarning, stacklevel=3)

    def _output_codes(self) -> tuple[float | None, str | None]:
        """``(scale, dtype)`` of the integer output codes."""
        rec = self._quant_output or {}
        scale = rec.get("scale", self.manifest.get("output_scale"))
        return scale, rec.get("dtype")

    def _output(self, y: np.ndarray, codes: bool) -> np.ndarray:
        """The model's output ``y`` (integer codes, or the float logits of a module that dequantizes) as
        float32 logits, or as the integer codes when ``codes``."""
        scale, dtype = self._output_codes()
        if np.issubdtype(y.dtype, np.integer):  # firmware, or a module quantized without its dequantize
            if codes:
                return y
            if scale is None:
                raise NotAvailableError("this build records no output scale to dequantize its integer output",
                                        "pass codes=True (zsq run --codes), or quantize and compile again")
            return intmath.dequantize(y, scale)
        if not codes:
            return y
        if scale is None or dtype is None:
            raise NotAvailableError("this build records no output scale and code dtype (quant.json output)",
                                    "compile again with `zsq compile`, or leave codes out for the float logits")
        try:
            return intmath.dequantized_codes(y, scale, dtype)
        except ValueError as e:
            raise ArtifactError(f"cannot recover the integer output codes: {e}",
                                "compile again with `zsq compile`, or leave codes out for the float logits") from None

    def _run_model(self, mel, length) -> np.ndarray:
        """The model's own output on ``mel`` (batches of the compiled size, padded and cut back)."""
        import tvm

        x = self._prepare(mel)
        if length is not None and not self.time_mask:
            raise InputShapeError("this build has no length input (it was quantized with --no-time-mask, or its "
                                  "graph could not be masked)",
                                  "drop length, or quantize again without --no-time-mask")
        lengths = self._lengths(length, x.shape[0], x.shape[2]) if self.time_mask else None
        inp = self.manifest["io"]["inputs"][0]
        B_model = inp["shape"][0]
        outs = []
        vm = self._vm_()
        for i in range(0, x.shape[0], B_model):
            n = min(B_model, x.shape[0] - i)
            chunk = self._encode_input(pad_batch(x[i:i + B_model], B_model), inp["dtype"])
            args = [tvm.runtime.tensor(chunk)]
            if lengths is not None:
                args.append(tvm.runtime.tensor(np.ascontiguousarray(pad_batch(lengths[i:i + B_model], B_model))))
            y = vm["main"](*args)
            if isinstance(y, (list, tuple)) or type(y).__name__ in ("Array", "Tuple"):
                y = y[0]
            outs.append(y.numpy()[:n])
        if self.frames is None:
            self._bound_pool(x.shape[2])
        return np.concatenate(outs)

    def _bound_pool(self, T: int) -> None:
        """A symbolic-T build allocates its intermediates per length, and TVM's pooled allocator keeps every freed
        block for reuse, so memory grew with each new length (QuartzNet-5x5: +450 MiB over 600 lengths).  After
        :data:`POOL_LENGTHS` distinct lengths the pool's free blocks are released (the blocks in use are not
        touched); a caller that repeats one length keeps its pool."""
        import tvm

        with _POOL_LOCK:
            _POOL_SEEN.add(int(T))
            if len(_POOL_SEEN) <= POOL_LENGTHS:
                return
            _POOL_SEEN.clear()
        tvm.get_global_func("vm.builtin.memory_manager.clear")()

    def _encode_input(self, x: np.ndarray, dtype: str) -> np.ndarray:
        if dtype.startswith("float"):
            return np.ascontiguousarray(x, dtype=dtype)
        # model takes the quantized mel: quantize with the calibrated input scale

        s = float(self.manifest["input_scale"])
        alpha = float(self.manifest.get("input_alpha", s * (2 ** (int(self.manifest["abits"]) - 1) - 1)))
        q = intmath.quantize(x, s, alpha, int(self.manifest["abits"]), unsigned=dtype.startswith("uint"))
        return np.ascontiguousarray(q, dtype=dtype)

    def decode(self, logits, length=None) -> list[str]:
        """Greedy CTC transcripts of ``run``'s logits; with ``length`` (valid input frames, an int or one per item)
        the output frames that belong to the padding are dropped first."""
        v = self.vocab
        if v is None:
            raise NotAvailableError("this model has no vocabulary", "quantize with a vocab (QuantConfig(vocab=...))")
        layout = self.manifest.get("logits_layout", "auto")
        if length is None:
            return greedy_decode(logits, v, layout)

        a = _class_axis_last(np.asarray(logits), layout, v.num_classes)  # [B, T', V]
        s = self.time_stride
        keep = [max(1, -(-int(n) // s)) for n in np.broadcast_to(np.asarray(length), (a.shape[0],))]
        return [greedy_decode(a[i:i + 1, :keep[i]], v, "BTV")[0] for i in range(a.shape[0])]  # ceil(n / stride)

    @property
    def time_stride(self) -> int:
        """Input frames per output frame (QuartzNet 2, the Conformer 4)."""
        from zsq_tvm.streaming import model_stride

        if self.manifest.get("time_stride"):
            return int(self.manifest["time_stride"])
        layout = self.manifest.get("logits_layout", "BTV")
        shape = self.manifest["io"]["output"]["shape"]
        return model_stride(self.frames, shape[2] if layout == "BVT" else shape[1])

    def transcribe(self, mel, length=None) -> list[str]:
        """``decode(run(mel))``; ``length``: see :meth:`run` (a ``--time-mask`` build)."""
        return self.decode(self.run(mel, length=length), length=length)

    def stream(self, context_frames: int | None = None, keep_logits: bool = False, on_window=None,
               window_frames: int | None = None, segment: bool = True):
        """A :class:`zsq_tvm.streaming.Stream` on this build: ``push(pcm_16k) -> new words``, ``finish()``; audio
        of any length in overlapping windows of :attr:`frames` frames (a symbolic-T build: ``window_frames``,
        default 20 s, and the last window runs at its own length), ``context_frames`` of context on each side
        (default 2 s), stitched on output frames; ``segment``: cut at pauses, one utterance at a time
        (:class:`zsq_tvm.streaming.Stream`)."""
        from zsq_tvm.streaming import DEFAULT_CONTEXT_FRAMES, DYNAMIC_WINDOW_FRAMES, Stream

        if self.vocab is None:
            raise NotAvailableError("this model has no vocabulary", "quantize with a vocab (QuantConfig(vocab=...))")
        layout = self.manifest.get("logits_layout", "BTV")
        masked, dynamic = self.time_mask, self.frames is None
        frames = (window_frames or DYNAMIC_WINDOW_FRAMES) if dynamic else self.frames

        def infer(mel, valid):
            if dynamic:
                return self.run(mel[:, :, :valid])
            return self.run(mel, length=valid) if masked else self.run(mel)

        # default: 2 s, but at most a fifth of the window each side, so a short build keeps 3/5 of each window
        ctx = min(DEFAULT_CONTEXT_FRAMES, frames // 5) if context_frames is None else int(context_frames)
        return Stream(infer, frames, self.time_stride, self.vocab, ctx, layout, keep_logits, on_window, segment)

    # ---- persistence
    def save(self, out_dir, overwrite: bool = False, inputs=()) -> Path:
        """Write the build folder atomically, its manifest listing every file's SHA-256; ``overwrite``
        replaces only an earlier build folder that holds none of ``inputs``."""
        out = Path(out_dir)
        with artifacts.atomic_dir(out, overwrite=overwrite, kind=artifacts.KIND_BUILD, inputs=inputs) as tmp:
            if self._lib_path and os.path.exists(self._lib_path) and self._lib_sha256 is not None:
                # a loaded build: copied and hashed in one pass, never re-blessing a library swapped since the load
                lib = Path(self._lib_path)
                artifacts.verified_copy(lib.parent, lib.name, {"files": {lib.name: {"sha256": self._lib_sha256}}}, tmp)
            elif self._lib_path and os.path.exists(self._lib_path):
                shutil.copy2(self._lib_path, tmp / LIB_NAME)
            else:
                self._ex.export_library(str(tmp / LIB_NAME))
            if self._module_json is not None:
                (tmp / "module.json").write_text(self._module_json)
            for name, obj in self._files.items():
                if isinstance(obj, str):  # text (the CUDA source of a CUDA build)
                    (tmp / name).write_text(obj)
                else:
                    artifacts.write_json(tmp / name, obj)
            written = artifacts.write_manifest(tmp, self.manifest)
        self._lib_path, self._lib_sha256 = str(out / LIB_NAME), written["files"][LIB_NAME]["sha256"]
        return out

    @classmethod
    def load(cls, path, load_library: bool = True) -> "Build":
        """Read a ``zsq compile`` folder.  Every file is checked against the manifest's SHA-256 first, and the
        library is loaded from a private verified copy (loading a library runs its code: README "Untrusted
        files").  ``load_library=False`` reads the folder without loading any code (``zsq check``)."""
        import tvm

        m = artifacts.read_manifest(path, artifacts.KIND_BUILD)
        spec = get_target(m.get("target"))
        if spec.load is not None:  # a backend's own build form (Cortex-M: firmware run under QEMU)
            return spec.load(path, m)
        if LIB_NAME not in m["files"]:
            raise ArtifactError(f"{str(path)!r} has no {LIB_NAME}", "compile again with `zsq compile`")
        lib = Path(path) / LIB_NAME
        module_json = artifacts.read_module_text(path, m)
        if not load_library:
            return cls._loaded(None, m, module_json, lib)
        if not spec.runs_on_host:
            raise NotAvailableError(f"build target {m['target']!r} cannot run on this machine",
                                    "run it on its device, or compile with --target host")
        if spec.device == "cuda" and not tvm.cuda(0).exist:  # loading needs a GPU; `zsq check` does not
            return cls._loaded(None, m, module_json, lib)
        rt, err = None, None
        # the private copy goes to the temp folder; where that is mounted noexec (no library maps from it), to a
        # private folder beside the build instead -- removed once loaded either way
        for where in (None, Path(path).absolute().parent):
            with tempfile.TemporaryDirectory(prefix=".zsq-lib-", dir=where) as td:
                private = artifacts.verified_copy(path, LIB_NAME, m, td)
                check_shared_library(private, lib)
                try:
                    rt = tvm.runtime.load_module(str(private))  # mapped: the copy may go once loaded
                    break
                except Exception as e:  # noqa: BLE001 - a library this TVM cannot load is a bad folder, not a crash
                    err = e
        if rt is None and spec.device != "cuda":  # CUDA: no CUDA runtime here, run() says so
            raise ArtifactError(f"{str(lib)!r} cannot be loaded ({type(err).__name__}: "
                                f"{str(err).strip().splitlines()[-1][:120] if str(err).strip() else ''})",
                                "compile again with `zsq compile` and this zsq/TVM version")
        return cls._loaded(rt, m, module_json, lib)

    @classmethod
    def _loaded(cls, rt, m: dict, module_json, lib: Path) -> "Build":
        b = cls(rt, artifacts.without_files(m), module_json, lib_path=str(lib))
        b._lib_sha256 = m["files"][LIB_NAME]["sha256"]
        b._quant_output = _output_record(artifacts.read_json_file(lib.parent, "quant.json", m))
        return b

    def module(self):
        """The integer Relax module this build was compiled from (checked: :mod:`zsq_tvm.module_check`)."""
        if self._module_json is None:
            raise ArtifactError("this build has no module.json", "compile again with `zsq compile`")
        return artifacts.parse_module_json(self._module_json, "the build's module.json")

    def __repr__(self):
        return f"Build(target={self.target!r}, frames={self.frames}, W{self.manifest.get('wbits')}A{self.manifest.get('abits')})"
