"""One-call Python API (torchao style).

    import zsq_tvm
    q = zsq_tvm.quantize("quartznet.onnx", zsq_tvm.QuantConfig(wbits=8, abits=8, frames=256))
    q.save("out/q")                      # or zsq_tvm.QuantizedModel.load("out/q")
    b = zsq_tvm.compile(q, target="host")
    logits = b.run(mel)                  # mel: float32 [B, 64, 256]
    print(b.transcribe(mel), zsq_tvm.check(b)["ok"], zsq_tvm.report(q))
"""

from __future__ import annotations

import os
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from zsq_tvm import artifacts
from zsq_tvm.build import (Build, check_tuning_db, _main_io, check_shared_library, compile_relax,
                           integer_only_report, lower)
from zsq_tvm.core.errors import (
    ArtifactError,
    BitWidthError,
    CalibrationError,
    ConfigError,
    IntegerOnlyViolation,
    NotAvailableError,
)
from zsq_tvm.cost import TEN_SECONDS_FRAMES, analyze_onnx, size_report
from zsq_tvm.ctc import QUARTZNET_VOCAB, Vocab
from zsq_tvm.frontend.onnx_import import import_onnx, load_onnx, model_info
from zsq_tvm.streaming import model_stride
from zsq_tvm.synthesize import SynthConfig, synthesize
from zsq_tvm.targets import get_target
from zsq_tvm.zoo.models import checkpoint_path, is_shipped

#: the length a model without a fixed T is calibrated and quantized at before its T becomes symbolic (10 s)
DYNAMIC_CALIB_FRAMES = 1000

__all__ = ["QuantConfig", "QuantizedModel", "TimeMaskWarning", "quantize", "compile", "check", "report", "load"]

CALIB_METHODS = ("minmax", "percentile")


class TimeMaskWarning(UserWarning):
    """``time_mask`` was on but this model is quantized without the mask (its time axis cannot be followed, or
    nothing in it mixes frames); the quantized model has no ``length`` input."""


@dataclass
class QuantConfig:
    """How to quantize.

    calib: ``"random"`` (uniform noise in ``calib_range``, seeded), a directory of ``.npy`` mel
    files / one ``.npy`` file (each ``[F, T]`` or ``[B, F, T]``), or an iterable of arrays.
    frames: the static number of mel frames T the model is compiled for (100 per second);
    ``None`` takes T from the ONNX file when it is fixed there.
    calib ``"synthetic"``: zero-shot (paper §2.3) — mels synthesized from the model's own BatchNorm
    statistics (:func:`zsq_tvm.synthesize`; ``synth`` overrides its defaults; T = min(``frames``, 64), zero-padded).
    seed: of the random / synthetic calibration, and of the random weights when the model is an architecture
    name without a shipped checkpoint (``conformer-ctc-large``).
    time_mask (default True): give the integer model a second input ``length`` (valid frames of the zero-padded
    mel) and zero the frames past it before every time-mixing conv (:class:`relax_passes.time_mask.TimeMask`,
    NeMo's masked convs and attention), so a short utterance padded to ``frames`` decodes as it would unpadded
    (QuartzNet, Jasper, the Conformer; every target: the Cortex-M firmware's ``zsq_run`` then takes ``length``
    too).  A model whose time axis the pass cannot follow (or that mixes no frames) is quantized unmasked, with a
    :class:`TimeMaskWarning`; the manifest's ``time_mask`` says which one was built.  ``False``: never mask.
    """

    wbits: int = 8
    abits: int = 8
    # bits of the integer logits the graph ends with (8 or 16).  16 (the default) is better for WER: the logits feed
    # only the argmax (or a beam search), and at 8 bits near-ties between characters collapse -- W8A8 QuartzNet-5x5
    # loses 0.49 WER points with int8 logits vs ~0.1 with int16 (docs/results.md, issue 4).  Every target writes
    # int16 logits from its integer kernels (x86 VNNI, CUDA dp4a/WMMA, Cortex-M C); 8 halves the output buffer
    out_bits: int = 16
    calib: Any = "random"
    calib_method: str = "minmax"
    frames: int | None = None
    seed: int = 0
    num_batches: int = 8
    calib_range: tuple[float, float] = (-3.0, 3.0)  # the paper's random-calibration ablation (§4.1)
    percentile: float | None = None
    vocab: Sequence[str] | None = None
    features: int | None = None
    progress: bool = False
    synth: dict | None = None  # calib="synthetic": zsq_tvm.SynthConfig overrides (num_batches, iters, lr, ...)
    time_mask: bool = True

    def validate(self) -> "QuantConfig":
        for name in ("wbits", "abits"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 2 <= v <= 8:
                raise BitWidthError(f"{name}={v!r} is outside the supported range 2..8",
                                    f"pass --{name} with an integer from 2 to 8 (8 is the usual choice)")
        if isinstance(self.out_bits, bool) or self.out_bits not in (8, 16):
            raise BitWidthError(f"out_bits={self.out_bits!r} is not supported",
                                "pass --out-bits 8 (int8 logits) or 16 (int16 logits)")
        if self.calib_method not in CALIB_METHODS:
            raise ConfigError(f"unknown calibration method {self.calib_method!r}",
                              "use --calib-method minmax or percentile")
        if not isinstance(self.num_batches, int) or self.num_batches < 1:
            raise ConfigError(f"num_batches={self.num_batches!r} must be a positive integer", "pass e.g. 8")
        lo, hi = self.calib_range
        if not lo < hi:
            raise ConfigError(f"calib_range {self.calib_range} is empty", "pass (low, high) with low < high")
        if not isinstance(self.time_mask, bool):
            raise ConfigError(f"time_mask={self.time_mask!r} must be True or False", "pass time_mask=True or drop it")
        return self

    def to_json(self) -> dict:
        d = asdict(self)
        if not isinstance(self.calib, (str, os.PathLike)):
            d["calib"] = f"<{type(self.calib).__name__}>"
        else:
            d["calib"] = str(self.calib)
        d.pop("progress")
        return d


# --------------------------------------------------------------------------- calibration data
def _fit_frames(x: np.ndarray, frames: int) -> np.ndarray:
    T = x.shape[-1]
    if T >= frames:
        return x[..., :frames]
    return np.concatenate([x, np.zeros(x.shape[:-1] + (frames - T,), x.dtype)], axis=-1)


def _as_items(arr, F: int, frames: int, where: str) -> list[np.ndarray]:
    a = np.asarray(arr, dtype=np.float32)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3 or a.shape[1] != F:
        raise CalibrationError(f"calibration array {where} has shape {list(a.shape)}, expected [F={F}, T] or "
                               f"[B, {F}, T]", f"save mel spectrograms with {F} features per frame")
    if not np.isfinite(a).all():
        raise CalibrationError(f"calibration array {where} contains NaN/inf", "clean the calibration data")
    return [_fit_frames(a[i:i + 1], frames) for i in range(a.shape[0])]


def calibration_batches(cfg: QuantConfig, features: int, frames: int) -> list[np.ndarray]:
    """Calibration inputs as a list of float32 ``[1, F, frames]`` arrays."""
    c = cfg.calib
    if isinstance(c, str) and c == "random":
        rng = np.random.default_rng(cfg.seed)
        lo, hi = cfg.calib_range
        return [rng.uniform(lo, hi, size=(1, features, frames)).astype(np.float32) for _ in range(cfg.num_batches)]
    if isinstance(c, (str, os.PathLike)):
        p = Path(c)
        if p.is_dir():
            files = sorted(p.glob("*.npy"))
        elif p.is_file() and p.suffix == ".npy":
            files = [p]
        else:
            raise CalibrationError(f"calibration source {str(c)!r} is neither 'random', a .npy file nor a directory",
                                   "pass --calib random or a directory of .npy mel spectrograms [F, T]")
        if not files:
            raise CalibrationError(f"calibration directory {str(c)!r} has no .npy files",
                                   "put mel spectrograms saved with numpy.save ([F, T] float32) there")
        items = []
        for f in files:
            try:
                arr = np.load(f, allow_pickle=False)
            except Exception as e:
                raise CalibrationError(f"cannot read calibration file {str(f)!r} ({type(e).__name__})",
                                       "save it with numpy.save") from None
            items += _as_items(arr, features, frames, repr(str(f)))
        return items
    try:
        it = iter(c)
    except TypeError:
        raise CalibrationError(f"calib={c!r} is not 'random', a path or an iterable of arrays",
                               "pass one of those") from None
    items = []
    for i, arr in enumerate(it):
        items += _as_items(arr, features, frames, f"#{i}")
    if not items:
        raise CalibrationError("the calibration iterable is empty", "pass at least one mel spectrogram")
    return items


def synthetic_batches(model, cfg: QuantConfig, features: int, frames: int) -> list[np.ndarray]:
    """Zero-shot calibration inputs: :func:`zsq_tvm.synthesize` on ``model`` (ONNX with BatchNorm kept).

    The mels are synthesized at SynthConfig's (short) T, at most ``frames``, unless ``cfg.synth`` sets
    ``frames``; each is then zero-padded to the model's T like any shorter calibration mel."""

    kw = {"seed": cfg.seed, "progress": cfg.progress, "frames": min(frames, SynthConfig.frames),
          **(cfg.synth or {}), "features": features}
    items = []
    for i, arr in enumerate(synthesize(model, SynthConfig(**kw))):
        items += _as_items(arr, features, frames, f"synthetic #{i}")
    return items


# --------------------------------------------------------------------------- the core pipeline
def _pipeline():
    """Import the core passes; a clear error while they are not there."""
    try:
        from relax_passes.fold_batchnorm import fold_batchnorm  # type: ignore
        from relax_passes.quantize import quantize_module  # type: ignore
        from zsq_tvm import calibrate as calib_mod  # type: ignore
    except ImportError as e:
        raise NotAvailableError(f"the quantization passes are not available ({e})",
                                "install zsq-tvm completely (pip install -e .)") from None
    return fold_batchnorm, quantize_module, calib_mod


def _to_jsonable(obj):
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    if isinstance(obj, dict):
        return {str(k): _to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if hasattr(obj, "to_json"):
        return _to_jsonable(obj.to_json())
    if hasattr(obj, "__dataclass_fields__"):
        return _to_jsonable(asdict(obj))
    return str(obj)


def _run_passes(fmod, batches, cfg: QuantConfig, proto=None):
    fold_batchnorm, quantize_module, calib_mod = _pipeline()
    folded, bn_stats = fold_batchnorm(fmod, onnx_model=proto)
    bn_stats = _to_jsonable(bn_stats)
    kw = {"method": cfg.calib_method, "progress": cfg.progress}
    if cfg.percentile is not None:
        kw["percentile"] = cfg.percentile
    ranges = calib_mod.calibrate(folded, batches, **kw)
    qmod, meta = quantize_module(folded, ranges, wbits=cfg.wbits, abits=cfg.abits, out_bits=cfg.out_bits)
    if cfg.time_mask:
        qmod, meta["time_mask"] = _apply_time_mask(qmod)
    return qmod, _to_jsonable(meta) or {}, _to_jsonable(ranges), bn_stats


def _apply_time_mask(qmod):
    """``(module, quant.json's "time_mask" record)``: the masked module, or -- when :class:`TimeMask` cannot
    follow this graph's time axis (or finds nothing that mixes frames) -- the module unchanged, with a
    :class:`TimeMaskWarning` naming why (the build then works as without ``time_mask``)."""
    from collections import Counter

    from relax_passes.time_mask import TimeMaskError, time_mask

    try:
        qmod, masked = time_mask(qmod)
    except TimeMaskError as e:
        msg = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        warnings.warn(f"quantized without the time mask (padding is not masked; pad inputs to the build's frames): "
                      f"{msg}", TimeMaskWarning, stacklevel=4)
        return qmod, {"masked": {}, "skipped": msg}
    return qmod, {"masked": dict(Counter(m["op"] for m in masked))}  # e.g. {"conv1d": 27}


def _scale(meta: dict, which: str):
    """``meta["input"][0]["scale"]`` (Quantize's metadata layout), or None."""
    rec = meta.get(which)
    if isinstance(rec, list) and rec and isinstance(rec[0], dict):
        return rec[0].get("scale")
    return meta.get(f"{which}_scale")


# --------------------------------------------------------------------------- QuantizedModel
class QuantizedModel:
    """Integer Relax module + metadata (scales, dyadic constants, vocab, size/BOPs)."""

    def __init__(self, mod, manifest: dict, metadata: dict, ranges: Any = None, report: dict | None = None,
                 bn_stats: list | None = None):
        self.mod = mod
        self.bn_stats = bn_stats
        self.manifest = manifest
        self.metadata = metadata
        self.ranges = ranges
        self._report = report

    @property
    def frames(self) -> int | None:
        """The fixed input length T, or None for a symbolic-T model (any length)."""
        f = self.manifest.get("frames")
        return None if f is None else int(f)

    @property
    def vocab(self) -> Vocab | None:
        v = self.manifest.get("vocab")
        return Vocab.from_json(v) if v else None

    def report(self) -> dict:
        return self._report or {}

    def save(self, out_dir, overwrite: bool = False, inputs=()) -> Path:
        """Write the folder atomically; ``overwrite`` replaces only an earlier quantized folder that holds
        none of ``inputs`` (:func:`zsq_tvm.artifacts.ensure_output_free`)."""
        import tvm

        with artifacts.atomic_dir(out_dir, overwrite=overwrite, kind=artifacts.KIND_QUANTIZED, inputs=inputs) as tmp:
            (tmp / "module.json").write_text(tvm.ir.save_json(self.mod))
            try:
                (tmp / "module.py").write_text(self.mod.script(show_meta=False))
            except Exception:  # script printing is a convenience only
                pass
            artifacts.write_json(tmp / "quant.json", self.metadata)
            artifacts.write_json(tmp / "calibration.json", self.ranges)
            artifacts.write_json(tmp / "report.json", self._report or {})
            if self.bn_stats is not None:
                artifacts.write_json(tmp / "bn_stats.json", self.bn_stats)
            if self.manifest.get("vocab"):
                artifacts.write_json(tmp / "vocab.json", self.manifest["vocab"])
            artifacts.write_manifest(tmp, self.manifest)
        return Path(out_dir)

    @classmethod
    def load(cls, path) -> "QuantizedModel":
        """Read a ``zsq quantize`` folder; every file is checked against the manifest's hashes first."""
        m = artifacts.read_manifest(path, artifacts.KIND_QUANTIZED)
        p = Path(path)
        mod = artifacts.load_module_json(p, m)
        rd = lambda n: artifacts.read_json_file(p, n, m)  # noqa: E731
        return cls(mod, artifacts.without_files(m), rd("quant.json") or {}, rd("calibration.json"), rd("report.json"), rd("bn_stats.json"))

    def __repr__(self):
        return (f"QuantizedModel(W{self.manifest['wbits']}A{self.manifest['abits']}, frames={self.frames}, "
                f"source={self.manifest['source']['path']!r})")


def _vocab_for(proto, cfg: QuantConfig, num_classes: int | None) -> dict | None:
    labels = cfg.vocab
    if labels is None:
        for kv in proto.metadata_props:
            if kv.key in ("vocab", "vocabulary", "labels"):
                import json

                try:
                    labels = json.loads(kv.value)
                except ValueError:
                    pass
    if labels is None and num_classes == len(QUARTZNET_VOCAB) + 1:
        labels = QUARTZNET_VOCAB
    if labels is None:
        return None
    v = Vocab(labels)
    if num_classes is not None and v.num_classes != num_classes:
        raise ConfigError(f"vocabulary has {len(v)} labels + blank but the model outputs {num_classes} classes",
                          "pass the vocabulary the model was trained with")
    return v.to_json()


def _logits_layout(shape: list[int], frames: int, num_classes_hint: int | None) -> tuple[str, int]:
    """Guess ``BTV`` vs ``BVT`` for a ``[B, a, b]`` output."""
    _, a, b = shape
    if num_classes_hint is not None:
        return ("BVT", a) if a == num_classes_hint and b != num_classes_hint else ("BTV", b)
    # the time axis is the one that scales with frames (≈ frames / stride); classes are fixed
    return ("BTV", b) if abs(frames / a - round(frames / a)) < abs(frames / b - round(frames / b)) or a >= b \
        else ("BVT", a)


def _resolve_model(model, frames: int | None = None, seed: int = 0):
    """A shipped model name (``zsq_tvm.zoo.models.SHIPPED``) -> ONNX ``ModelProto`` exported on the fly
    (BatchNorm kept, ``frames`` fixes T); an architecture name without a shipped checkpoint
    (``zsq_tvm.zoo.nets.ALL_ARCHS``, e.g. ``conformer-ctc-large``) -> the same with random weights
    (NeMo-style init, torch seed ``seed``) and random BatchNorm statistics
    (:func:`zsq_tvm.zoo.nets.randomize_batchnorm`, same seed); anything else is returned unchanged.
    A ``.nemo`` file -> its ONNX export, as ``zsq export-nemo FILE.nemo`` writes it (:func:`zsq_tvm.nemo_io.export_nemo`:
    the archive and its YAML are read as untrusted input, the weights with ``weights_only``; NeMo itself is not
    needed), through a temporary folder removed afterwards.
    ``(model, label | None)`` where the label (``"shipped:NAME"`` / ``"arch:NAME ..."`` / ``"nemo:PATH"``) names
    the source."""
    from zsq_tvm.zoo.nets import ALL_ARCHS

    if isinstance(model, (str, os.PathLike)) and os.fspath(model).endswith(".nemo"):
        return _export_nemo_file(os.fspath(model), frames)
    random_arch = isinstance(model, str) and model in ALL_ARCHS and not is_shipped(model) and not os.path.exists(model)
    if not is_shipped(model) and not random_arch:
        if isinstance(model, str) and not os.path.exists(model) and not model.endswith((".onnx", ".pt")):
            checkpoint_path(model)  # "unknown model ...; use one of the shipped models: ..."
        return model, None
    import tempfile

    import onnx

    from zsq_tvm.zoo.nets.export import export_onnx

    with tempfile.TemporaryDirectory(prefix="zsq-export-") as td:
        if random_arch:
            import torch

            from zsq_tvm.nemo_io import _model_from_source
            from zsq_tvm.zoo.nets import randomize_batchnorm

            net = _model_from_source(model, seed=seed)
            # a fresh net's identity BatchNorms let the activations vanish over QuartzNet-10x5/15x5's blocks (tiny
            # calibrated scales, biases past int32): give them trained-like statistics, seeded like the weights
            randomize_batchnorm(net, torch.Generator().manual_seed(seed))
            out = export_onnx(net, Path(td) / f"{model}.onnx", frames=frames)
            return onnx.load(str(out)), f"arch:{model} (random weights, seed {seed})"
        return onnx.load(str(export_onnx(model, Path(td) / f"{model}.onnx", frames=frames))), f"shipped:{model}"


def _export_nemo_file(path: str, frames: int | None):
    """``.nemo`` -> (ONNX ``ModelProto``, ``"nemo:PATH"``); cheap checks (a readable regular file) first."""
    import tempfile

    import onnx

    from zsq_tvm.core.errors import ModelLoadError
    from zsq_tvm.nemo_io import export_nemo

    p = Path(path)
    if not p.exists():
        raise ModelLoadError(f".nemo file {path!r} does not exist", "check the path")
    if not p.is_file():  # a folder, a FIFO (blocks the read forever), a device
        raise ModelLoadError(f".nemo path {path!r} is not a regular file", "pass the .nemo file itself")
    if not os.access(p, os.R_OK):
        raise ModelLoadError(f".nemo file {path!r} is not readable (permission denied)",
                             "check the file's permissions")
    with tempfile.TemporaryDirectory(prefix="zsq-nemo-export-") as td:
        out = export_nemo(p, Path(td) / "model.onnx", frames=frames)  # unsafe=False: torch.load(weights_only=True)
        return onnx.load(str(out)), f"nemo:{path}"


def quantize(model, config: QuantConfig | None = None, **overrides) -> QuantizedModel:
    """ONNX model (path / ``ModelProto``), ``.nemo`` file or shipped model name → :class:`QuantizedModel`
    (integer-only Relax)."""
    cfg = config or QuantConfig()
    if overrides:
        cfg = QuantConfig(**{**asdict(cfg), **overrides})
    cfg.validate()
    model, label = _resolve_model(model, cfg.frames, seed=cfg.seed)
    proto, sha, source = load_onnx(model)
    if label:
        source = label

    info0 = model_info(proto, sha, source)
    frames = cfg.frames if cfg.frames is not None else info0.file_frames
    dynamic = frames is None  # no --frames and a dynamic file: one build for every length (SymbolicTime)
    if dynamic:
        frames = DYNAMIC_CALIB_FRAMES
        cfg = replace(cfg, time_mask=False)  # each input runs at its own length: there is no padding to mask
    fmod, info, proto_s = import_onnx(proto, frames=frames, batch=1, features=cfg.features)
    info.sha256, info.source = sha, source
    features = info.features
    io = _main_io(fmod)
    out_shape = io["output"]["shape"]
    hint = len(cfg.vocab) + 1 if cfg.vocab is not None else None
    if len(out_shape) == 3:
        layout, ncls = _logits_layout(out_shape, frames, hint or (29 if 29 in out_shape[1:] else None))
    else:
        layout, ncls = "auto", None
    vocab = _vocab_for(proto, cfg, ncls)
    if isinstance(cfg.calib, str) and cfg.calib == "synthetic":
        batches = synthetic_batches(model if isinstance(model, (str, os.PathLike)) else proto, cfg, features, frames)
    else:
        batches = calibration_batches(cfg, features, frames)
    qmod, meta, ranges, bn_stats = _run_passes(fmod, batches, cfg, proto_s)
    out_T = out_shape[1 if layout != "BVT" else 2] if len(out_shape) == 3 else None
    try:  # input frames per output frame, for streaming and decoding; None when the output is not time-subsampled
        time_stride = model_stride(frames, int(out_T)) if out_T is not None else None
    except ConfigError:
        time_stride = None
    if dynamic:
        from relax_passes.symbolic_time import symbolic_time

        qmod = symbolic_time(qmod)
    if not bn_stats:  # the frontend folded them (onnxsim: Conv + BN): report the file's own statistics
        from relax_passes.fold_batchnorm import onnx_bn_stats

        bn_stats = onnx_bn_stats(proto)
    try:
        cost = analyze_onnx(proto, frames=TEN_SECONDS_FRAMES)
        rep = size_report(cost, cfg.wbits, cfg.abits)
    except Exception as e:  # report is informative; never block quantization on it
        rep = {"error": f"{type(e).__name__}: {e}"}
    if isinstance(meta.get("overflow"), dict):  # accumulator headroom proved by Quantize
        from zsq_tvm.core.overflow import summary as _overflow_summary

        rep["overflow"] = _overflow_summary(meta["overflow"])
    qio = _main_io(qmod)
    masked = [i.get("name") for i in qio.get("inputs", [])][1:] == ["length"]  # what was built, not what was asked
    manifest = artifacts.new_manifest(
        artifacts.KIND_QUANTIZED,
        source={"path": source, "sha256": sha},
        input={"name": info.input_name, "features": features},
        frames=None if dynamic else int(frames),
        time_stride=time_stride,
        wbits=cfg.wbits,
        abits=cfg.abits,
        calib={"source": cfg.to_json()["calib"], "method": cfg.calib_method, "seed": cfg.seed,
               "num_inputs": len(batches)},
        input_scale=_scale(meta, "input"),
        output_scale=_scale(meta, "output"),
        vocab=vocab,
        logits_layout=layout,
        time_mask=masked,
        io=qio,
        float_io=io,
        config=cfg.to_json(),
    )
    return QuantizedModel(qmod, artifacts.normalize(manifest), meta, ranges, rep, bn_stats)


# --------------------------------------------------------------------------- compile / check / report
def load(path):
    """Load a quantized directory (→ :class:`QuantizedModel`) or a build directory (→ :class:`Build`)."""
    m = artifacts.read_manifest(path, verify=False)  # only its kind: the load below verifies the folder
    if m["kind"] == artifacts.KIND_BUILD:
        return Build.load(path)
    return QuantizedModel.load(path)


def compile(qmodel, target: str = "host", tuning_db=None) -> Build:  # noqa: A001 - mirrors tvm.compile
    """Quantized model (object or directory) → :class:`Build` for ``target`` (default: this CPU).

    ``tuning_db``: a ``zsq tune`` database folder to apply (``zsq compile --db DIR``); a folder that is no
    database is a ConfigError before any work.  Without it: ``$ZSQ_TUNING_DB``, else the user cache, else
    the log shipped for the target's class (:func:`zsq_tvm.tuning_db.find_db`).  The build's
    ``integer_only["tuning"]`` names the database applied and how many kernels took a record."""
    import tvm

    spec = get_target(target)  # fail fast on unknown targets
    if tuning_db is not None:  # before loading or lowering anything
        check_tuning_db(spec, spec.make(), target, tuning_db)
    q = qmodel if isinstance(qmodel, QuantizedModel) else QuantizedModel.load(qmodel)
    if spec.compile_model is not None:  # the backend builds the whole model itself (Cortex-M firmware)
        return spec.compile_model(q, target)
    ex, lowered, io_report, tgt = compile_relax(q.mod, target, tuning_db=tuning_db)
    m = dict(q.manifest)
    m.update(artifacts.new_manifest(artifacts.KIND_BUILD))
    m.update(target=target, tvm_target=str(tgt), integer_only=io_report,
             quantized_from={"created": q.manifest.get("created"), "source": q.manifest.get("source")})
    files = {"quant.json": q.metadata, "report.json": q.report()}
    if m.get("vocab"):
        files["vocab.json"] = m["vocab"]
    if spec.extra_files is not None:  # e.g. a CUDA build's kernel source, which `zsq check` compiles to SASS
        files.update(spec.extra_files(ex))
    return Build(ex, artifacts.normalize(m), tvm.ir.save_json(q.mod), files)


def check(build_or_dir, recheck: bool = True, raise_on_violation: bool = False) -> dict:
    """Integer-only report of a build (re-lowers and re-checks the stored module by default).

    Beyond the IR check, the target's backend checks its machine code (``TargetSpec.check``): a CUDA build's
    kernels are compiled by nvcc and their SASS checked (``rep["sass"]``), a Cortex-M build's linked firmware
    is checked for float helpers (``rep["firmware"]``); a violation there makes ``ok`` false.

    A folder is verified against its manifest's hashes and read without loading its library (no code
    of it runs); the verdict is derived again from its ``module.json``, never taken from the manifest."""
    b = build_or_dir if isinstance(build_or_dir, Build) else Build.load(build_or_dir, load_library=False)
    spec = get_target(b.target)
    if not isinstance(build_or_dir, Build):
        recheck = True
        if b._module_json is None:
            raise ArtifactError(f"{str(build_or_dir)!r} has no module.json to check",
                                "compile again with `zsq compile`")
        if b._lib_path is not None and spec.load is None:  # a library: read, never loaded
            check_shared_library(b._lib_path, b._lib_path, machine=False)  # e.g. an x86 build checked on an Arm host
    rep = b.integer_only
    if recheck and b._module_json is not None:
        mod = spec.prepare(b.module()) if spec.prepare is not None else b.module()
        rep = integer_only_report(lower(mod, spec.make())[0])
    rep = dict(rep)
    rep.setdefault("ok", None)
    if spec.check is not None:
        fields, violations = spec.check(b)
        rep.update(fields)
        if violations:
            rep["ok"] = False
            rep["violations"] = list(rep.get("violations", [])) + list(violations)
    if raise_on_violation and rep["ok"] is False:
        raise IntegerOnlyViolation(f"build {b.target!r} executes floating point: {rep.get('summary', rep)}",
                                   "report this model to the zsq-tvm developers with the check output")
    return rep


def report(model, wbits: int | None = None, abits: int | None = None, frames: int = TEN_SECONDS_FRAMES) -> dict:
    """Size and BOPs: of a quantized model/dir (stored at quantize time) or of an ONNX model."""
    if isinstance(model, QuantizedModel):
        return model.report()
    if isinstance(model, Build):
        return model._files.get("report.json") or {}
    p = Path(os.fspath(model)) if isinstance(model, (str, os.PathLike)) else None
    if p is not None and p.is_dir():
        m = artifacts.read_manifest(p)
        rep = artifacts.read_json_file(p, "report.json", m) or {}
        if isinstance(rep, dict) and "overflow" not in rep:  # older dirs: from the metadata
            ov = (artifacts.read_json_file(p, "quant.json", m) or {}).get("overflow")
            if isinstance(ov, dict):
                from zsq_tvm.core.overflow import summary as _overflow_summary

                rep["overflow"] = _overflow_summary(ov)
        return rep
    cfg = QuantConfig(wbits=wbits or 8, abits=abits or 8).validate()
    cost = analyze_onnx(_resolve_model(model)[0], frames=frames)
    return size_report(cost, cfg.wbits, cfg.abits)
