"""NeMo in: configs, ``.nemo`` files and checkpoints -> our torch nets -> ONNX (BatchNorm kept).

    from zsq_tvm import nemo_io
    net = nemo_io.load_nemo("stt_en_quartznet15x5.nemo")      # no NeMo install needed
    net = nemo_io.torch_from_config("quartznet15x5")            # random weights, NeMo's architecture
    nemo_io.export_nemo("quartznet5x5", "qn.onnx", frames=1000)  # what ``zsq export-nemo`` runs
    m = nemo_io.build_nemo("quartznet5x5")                      # a real NeMo EncDecCTCModel (needs nemo)
    net = nemo_io.nemo_to_torch(m)                              # ... and its weights in our net

Our nets (:mod:`zsq_tvm.nets`) have NeMo's ``encoder.*`` / ``decoder.*`` parameter names and
semantics (checked key-for-key and numerically by ``tests/test_nemo_io.py`` when NeMo is
installed), so a NeMo state dict loads with ``load_state_dict``; the ``preprocessor.*``
buffers are ignored because our front end is :mod:`zsq_tvm.audio.mel` (same features).

The packaged configs ``zsq_tvm/nets/configs/<arch>.yaml`` are NeMo ``model`` sections (the
format of a ``.nemo``'s ``model_config.yaml``) for the published QuartzNet-5x5/15x5 and
Jasper-10x5-DR and for our small variants.

A ``.nemo`` is a tar archive; :func:`safe_extract` refuses absolute paths, ``..`` components,
links that leave the target directory and special files before anything is written, and
weights are read with ``torch.load(weights_only=True)`` unless the caller passes ``unsafe=True``.
"""
from __future__ import annotations

import contextlib
import copy
import os
import re
import shutil
import tarfile
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any, Dict, List, Optional, Tuple

from .errors import ConfigError, ModelLoadError, NotAvailableError

__all__ = ["CONFIG_DIR", "NEMO_ARCHS", "config_path", "load_config", "arch_config", "torch_from_config",
           "build_nemo", "preprocessor_mismatch", "safe_extract", "read_nemo", "load_nemo", "nemo_to_torch", "load_weights",
           "export_nemo", "UnsafeArchiveError"]

CONFIG_DIR = Path(__file__).resolve().parent / "nets" / "configs"
#: architectures with a packaged NeMo config
NEMO_ARCHS = ("quartznet5x5", "quartznet15x5", "jasper10x5dr", "jasper-dr-small", "quartznet-tiny",
              "conformer-ctc-small")

CONFIG_NAME = "model_config.yaml"
WEIGHTS_NAME = "model_weights.ckpt"


class UnsafeArchiveError(ModelLoadError):
    """A ``.nemo`` archive member would be written outside the extraction directory."""


# --------------------------------------------------------------------------------------------
# configs
# --------------------------------------------------------------------------------------------

def preprocessor_config() -> Dict[str, Any]:
    """NeMo ``AudioToMelSpectrogramPreprocessor`` settings equal to our :class:`MelFrontend`."""
    from .audio.mel import LOG_ZERO_GUARD, MelConfig

    m = MelConfig()
    return {
        "_target_": "nemo.collections.asr.modules.AudioToMelSpectrogramPreprocessor",
        "sample_rate": m.sample_rate, "normalize": "per_feature",
        "window_size": m.win_length / m.sample_rate, "window_stride": m.hop_length / m.sample_rate,
        "window": "hann", "features": m.n_mels, "n_fft": m.n_fft, "log": True, "frame_splicing": 1,
        "dither": m.dither, "pad_to": m.pad_to, "pad_value": 0.0, "preemph": m.preemph,
        "lowfreq": m.fmin, "highfreq": m.fmax, "mag_power": 2.0, "log_zero_guard_type": "add",
        "log_zero_guard_value": LOG_ZERO_GUARD, "mel_norm": "slaney",
    }


def arch_config(arch: str) -> Dict[str, Any]:
    """The NeMo ``model`` config of one of our architectures, generated from :mod:`zsq_tvm.nets`.

    This is how the packaged YAMLs were written (``python -m zsq_tvm.nemo_io --write-configs``);
    the published QuartzNet/Jasper dropouts are restored where our ARCHS simplified them.
    """
    from .nets import ARCHS, CONFORMER_ARCHS, VOCAB

    labels = list(VOCAB)
    cfg: Dict[str, Any] = {"sample_rate": 16000, "labels": labels, "train_ds": None, "validation_ds": None,
                           "test_ds": None, "preprocessor": preprocessor_config()}
    if arch in ARCHS:
        blocks = ARCHS[arch]()
        published_dropout = {"jasper10x5dr": [0.2] + [0.2] * 6 + [0.3] * 4 + [0.4, 0.4]}.get(arch)
        jasper = []
        for i, b in enumerate(blocks):
            e = {"filters": b.filters, "repeat": b.repeat, "kernel": [b.kernel], "stride": [b.stride],
                 "dilation": [b.dilation],
                 "dropout": published_dropout[i] if published_dropout else (0.0 if arch.startswith("quartznet")
                                                                          else b.dropout),
                 "residual": b.residual, "separable": b.separable}
            if b.residual_dense:
                e["residual_dense"] = True
            jasper.append(e)
        cfg["encoder"] = {"_target_": "nemo.collections.asr.modules.ConvASREncoder", "feat_in": 64,
                          "activation": "relu", "conv_mask": True, "jasper": jasper}
        feat_out = blocks[-1].filters
    elif arch in CONFORMER_ARCHS:
        p = CONFORMER_ARCHS[arch]
        cfg["encoder"] = {
            "_target_": "nemo.collections.asr.modules.ConformerEncoder", "feat_in": 64, "feat_out": -1,
            "n_layers": p["n_layers"], "d_model": p["d_model"], "subsampling": "striding",
            "subsampling_factor": 4, "subsampling_conv_channels": p["subsampling_channels"],
            "causal_downsampling": False, "ff_expansion_factor": p["ff_expansion"],
            "self_attention_model": "rel_pos", "n_heads": p["n_heads"], "att_context_size": [-1, -1],
            "att_context_style": "regular", "xscaling": True, "untie_biases": True, "pos_emb_max_len": 5000,
            "conv_kernel_size": p["conv_kernel"], "conv_norm_type": "batch_norm", "conv_context_size": None,
            "dropout": 0.1, "dropout_pre_encoder": 0.1, "dropout_emb": 0.0, "dropout_att": 0.1}
        feat_out = p["d_model"]
    else:
        raise ConfigError(f"unknown architecture {arch!r}", f"use one of: {', '.join(NEMO_ARCHS)}")
    cfg["decoder"] = {"_target_": "nemo.collections.asr.modules.ConvASRDecoder", "feat_in": feat_out,
                      "num_classes": len(labels), "vocabulary": labels}
    return cfg


def config_path(arch: str) -> Path:
    if arch not in NEMO_ARCHS:
        raise ConfigError(f"no packaged NeMo config for {arch!r}", f"use one of: {', '.join(NEMO_ARCHS)}, "
                          "or pass your own CONFIG.yaml / FILE.nemo")
    return CONFIG_DIR / f"{arch}.yaml"


_INTERP = re.compile(r"^\$\{([A-Za-z0-9_.]+)\}$")


def _resolve(node, root):
    """Resolve whole-string OmegaConf interpolations ``${model.a.b}`` / ``${a.b}`` (all NeMo ASR configs use)."""
    if isinstance(node, dict):
        return {k: _resolve(v, root) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve(v, root) for v in node]
    if isinstance(node, str):
        m = _INTERP.match(node.strip())
        if m:
            for path in (m.group(1), m.group(1)[len("model."):] if m.group(1).startswith("model.") else None):
                if path is None:
                    continue
                cur, ok = root, True
                for part in path.split("."):
                    if isinstance(cur, dict) and part in cur:
                        cur = cur[part]
                    else:
                        ok = False
                        break
                if ok:
                    return _resolve(cur, root)
    return node


def _normalize_config(cfg, source: str) -> Dict[str, Any]:
    if not isinstance(cfg, dict):
        raise ModelLoadError(f"{source}: not a NeMo model config (top level is {type(cfg).__name__})",
                             "pass a NeMo model config YAML with encoder/decoder sections")
    if "encoder" not in cfg and isinstance(cfg.get("model"), dict):
        cfg = cfg["model"]
    cfg = _resolve(copy.deepcopy(cfg), cfg)
    if not isinstance(cfg.get("encoder"), dict) or not isinstance(cfg.get("decoder"), dict):
        raise ModelLoadError(f"{source}: the config has no encoder/decoder section",
                             "pass a NeMo EncDecCTCModel config (model: {preprocessor, encoder, decoder})")
    return cfg


def load_config(arch_or_yaml) -> Dict[str, Any]:
    """Architecture name (packaged YAML) or a YAML path -> plain-dict NeMo model config (resolved)."""
    import yaml

    if isinstance(arch_or_yaml, dict):
        return _normalize_config(arch_or_yaml, "config")
    src = os.fspath(arch_or_yaml)
    path = config_path(src) if src in NEMO_ARCHS and not os.path.exists(src) else Path(src)
    if not path.is_file():
        raise ModelLoadError(f"config {src!r} not found",
                             f"pass an existing YAML file or one of: {', '.join(NEMO_ARCHS)}")
    try:
        cfg = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"cannot parse {str(path)!r} as YAML ({type(e).__name__})",
                             "pass a valid NeMo model config YAML") from None
    return _normalize_config(cfg, repr(str(path)))


def preprocessor_mismatch(cfg) -> List[str]:
    """Settings of the config's preprocessor that differ from our :class:`MelFrontend` (empty = same features).

    Our runtime computes features with :mod:`zsq_tvm.audio.mel` only, so a model trained on other
    features (e.g. 80 mels / 25 ms windows, common for NeMo Conformers) would see the wrong input.
    """
    pre = (cfg or {}).get("preprocessor") or {}
    ours = preprocessor_config()
    defaults = {"normalize": "per_feature", "window": "hann", "n_fft": None, "log": True, "frame_splicing": 1,
                "preemph": 0.97, "lowfreq": 0, "highfreq": None, "mag_power": 2.0, "log_zero_guard_type": "add",
                "log_zero_guard_value": 2 ** -24, "mel_norm": "slaney", "sample_rate": 16000,
                "window_size": 0.02, "window_stride": 0.01, "features": 64}
    out = []
    for k, default in defaults.items():
        theirs = pre.get(k, default)
        if k == "n_fft" and theirs is None:
            theirs = 512  # NeMo: next power of two of the window (320 samples -> 512)
        mine = ours[k]
        same = (abs(float(theirs) - float(mine)) < 1e-9 if isinstance(mine, (int, float)) and not isinstance(mine, bool)
                and isinstance(theirs, (int, float)) else theirs == mine)
        if not same:
            out.append(f"{k}={theirs!r} (ours {mine!r})")
    return out


def _vocab(cfg) -> List[str]:
    dec = cfg["decoder"]
    vocab = dec.get("vocabulary") or cfg.get("labels")
    if not vocab:
        raise ModelLoadError("the NeMo config has no decoder.vocabulary / labels",
                             "only character CTC models (ConvASRDecoder with a vocabulary) are supported")
    vocab = [str(v) for v in vocab]
    n = dec.get("num_classes", -1)
    if n not in (None, -1) and int(n) != len(vocab):
        raise ModelLoadError(f"decoder.num_classes={n} but the vocabulary has {len(vocab)} entries",
                             "fix the config (num_classes excludes the CTC blank)")
    return vocab


def _check_target(section: Dict[str, Any], expected: Tuple[str, ...], what: str):
    target = str(section.get("_target_", "")).rsplit(".", 1)[-1]
    if target and target not in expected:
        raise ModelLoadError(f"unsupported {what} {target!r}",
                             f"zsq supports {' / '.join(expected)} (CTC QuartzNet, Jasper, Conformer)")
    return target


def _unsupported(enc, allowed: Dict[str, Any], what: str):
    bad = [f"{k}={enc[k]!r}" for k, ok in allowed.items() if k in enc and enc[k] not in ok]
    if bad:
        raise ModelLoadError(f"unsupported {what} options: {', '.join(bad)}",
                             "zsq's torch nets implement the published QuartzNet/Jasper/Conformer-CTC settings")


def _conv_blocks(enc) -> list:
    from .nets.convasr import BlockCfg

    _unsupported(enc, {"activation": ("relu",), "normalization_mode": ("batch",), "residual_mode": ("add",),
                       "conv_mask": (True, False), "frame_splicing": (1,), "quantize": (False,)}, "ConvASREncoder")
    if enc.get("conv_mask", True) is False:
        raise ModelLoadError("ConvASREncoder with conv_mask: false has different parameter names",
                             "use a config with conv_mask: true (all published QuartzNet/Jasper configs)")
    blocks = []
    for i, b in enumerate(enc.get("jasper") or []):
        _unsupported(b, {"groups": (1,), "heads": (-1,), "se": (False,), "kernel_size_factor": (1, 1.0),
                         "stride_last": (False,), "future_context": (-1,), "residual_mode": ("add",)},
                     f"jasper block {i}")
        first = (lambda v: int(v[0]) if isinstance(v, (list, tuple)) else int(v))
        blocks.append(BlockCfg(filters=int(b["filters"]), repeat=int(b["repeat"]), kernel=first(b["kernel"]),
                               stride=first(b.get("stride", [1])), dilation=first(b.get("dilation", [1])),
                               dropout=float(b.get("dropout", 0.0)), residual=bool(b.get("residual", False)),
                               separable=bool(b.get("separable", False)),
                               residual_dense=bool(b.get("residual_dense", False))))
    if not blocks:
        raise ModelLoadError("ConvASREncoder config has no jasper blocks", "pass a complete NeMo config")
    return blocks


def _conformer_params(enc) -> dict:
    _unsupported(enc, {"subsampling": ("striding",), "subsampling_factor": (4,), "self_attention_model": ("rel_pos",),
                       "xscaling": (True,), "untie_biases": (True,), "conv_norm_type": ("batch_norm",),
                       "feat_out": (-1, None), "causal_downsampling": (False,), "reduction": (None,),
                       "global_tokens": (0,), "att_context_style": ("regular",), "conv_context_size": (None,),
                       "use_bias": (True,), "subsampling_conv_chunking_factor": (1,),
                       "att_context_size": (None, [-1, -1])}, "ConformerEncoder")
    d = int(enc["d_model"])
    ch = int(enc.get("subsampling_conv_channels", -1))
    return dict(d_model=d, n_layers=int(enc["n_layers"]), n_heads=int(enc.get("n_heads", 4)),
                ff_expansion=int(enc.get("ff_expansion_factor", 4)), conv_kernel=int(enc.get("conv_kernel_size", 31)),
                subsampling_channels=d if ch == -1 else ch)


def torch_from_config(cfg_or_arch, name: Optional[str] = None):
    """NeMo model config (dict, YAML path or packaged arch name) -> our torch net, random init, eval mode."""
    from .nets import ConformerCTCModel, ConvCTCModel

    cfg = load_config(cfg_or_arch)
    enc = cfg["encoder"]
    vocab = _vocab(cfg)
    _check_target(cfg["decoder"], ("ConvASRDecoder",), "decoder")
    kind = _check_target(enc, ("ConvASREncoder", "ConformerEncoder"), "encoder")
    feat_in = int(enc.get("feat_in") or cfg.get("preprocessor", {}).get("features", 64))
    label = name or (cfg_or_arch if isinstance(cfg_or_arch, str) and cfg_or_arch in NEMO_ARCHS else "nemo")
    if kind == "ConformerEncoder" or (not kind and "d_model" in enc):
        net = ConformerCTCModel(label, feat_in=feat_in, vocab=vocab, params=_conformer_params(enc),
                                dropout=float(enc.get("dropout", 0.1)))
    else:
        net = ConvCTCModel(label, feat_in=feat_in, vocab=vocab, blocks=_conv_blocks(enc))
    dec_in = cfg["decoder"].get("feat_in")
    if dec_in not in (None, -1) and int(dec_in) != net.encoder.feat_out:
        raise ModelLoadError(f"decoder.feat_in={dec_in} but the encoder outputs {net.encoder.feat_out} channels",
                             "fix the config")
    net.name = label
    net.nemo_config = cfg
    return net.eval()


# --------------------------------------------------------------------------------------------
# NeMo itself (optional dependency)
# --------------------------------------------------------------------------------------------

def _require_nemo():
    try:
        from nemo.collections.asr.models import EncDecCTCModel  # noqa: F401
    except ImportError as e:
        raise NotAvailableError(f"NeMo is not installed ({e.__class__.__name__}: {str(e)[:80]})",
                                "pip install 'zsq-tvm[nemo]' torch==2.13.0") from None
    return EncDecCTCModel


def build_nemo(arch_or_yaml):
    """Build NeMo's ``EncDecCTCModel`` (random weights, eval mode) from our YAML / a YAML path / dict."""
    EncDecCTCModel = _require_nemo()
    from omegaconf import OmegaConf

    cfg = load_config(arch_or_yaml)
    for k in ("train_ds", "validation_ds", "test_ds"):
        cfg[k] = None
    with _quiet_nemo():
        model = EncDecCTCModel(cfg=OmegaConf.create(cfg), trainer=None)
    return model.eval()


@contextlib.contextmanager
def _quiet_nemo():
    try:
        from nemo.utils import logging as nlog

        level = nlog.get_verbosity()
        nlog.set_verbosity(nlog.ERROR)
    except Exception:  # pragma: no cover - logging API differences
        nlog = None
    try:
        yield
    finally:
        if nlog is not None:
            nlog.set_verbosity(level)


# --------------------------------------------------------------------------------------------
# .nemo archives
# --------------------------------------------------------------------------------------------

def _member_problem(m: tarfile.TarInfo, dest: Path) -> Optional[str]:
    name = m.name
    p = PurePosixPath(name)
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or p.is_absolute():
        return "absolute path"
    if ".." in p.parts or ".." in PurePosixPath(name.replace("\\", "/")).parts:
        return "'..' path component"
    target = (dest / name).resolve()
    if target != dest and dest not in target.parents:
        return "path outside the target directory"
    if m.issym() or m.islnk():
        link = m.linkname
        if not link:
            return "empty link target"
        if link.startswith(("/", "\\")) or PurePosixPath(link).is_absolute():
            return f"link to an absolute path ({link!r})"
        base = (dest / name).parent if m.issym() else dest
        lt = (base / link).resolve()
        if lt != dest and dest not in lt.parents:
            return f"link escaping the target directory ({link!r})"
        return None
    if not (m.isfile() or m.isdir()):
        return "special file (device, fifo)"
    return None


def safe_extract(tar_path, dest) -> Path:
    """Extract ``tar_path`` into the existing directory ``dest``, refusing unsafe members.

    Every member is checked before anything is written: absolute names, ``..`` components,
    symlinks/hardlinks whose target leaves ``dest`` and special files raise
    :class:`UnsafeArchiveError` naming the member.  Extraction then also runs under Python's
    ``"data"`` filter (defence in depth).  Corrupt archives raise :class:`ModelLoadError`.
    """
    dest = Path(dest).resolve()
    try:
        tf = tarfile.open(tar_path, "r:*")
    except (tarfile.TarError, EOFError, OSError) as e:
        raise ModelLoadError(f"{str(tar_path)!r} is not a readable .nemo (tar) archive ({type(e).__name__})",
                             "re-download the file; a .nemo is a tar of model_config.yaml + model_weights.ckpt") \
            from None
    with tf:
        try:
            members = tf.getmembers()
        except (tarfile.TarError, EOFError, OSError) as e:
            raise ModelLoadError(f"{str(tar_path)!r} is a truncated or corrupt archive ({type(e).__name__})",
                                 "re-download the file") from None
        for m in members:
            why = _member_problem(m, dest)
            if why:
                raise UnsafeArchiveError(f"refusing to extract {str(tar_path)!r}: member {m.name!r} is unsafe ({why})",
                                         "only use .nemo files from a source you trust; this one may be malicious")
        try:
            kw = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tf.extractall(dest, members=members, **kw)
        except tarfile.FilterError as e:
            raise UnsafeArchiveError(f"refusing to extract {str(tar_path)!r}: {e}",
                                     "only use .nemo files from a source you trust") from None
        except (tarfile.TarError, EOFError, OSError) as e:
            raise ModelLoadError(f"{str(tar_path)!r} is a truncated or corrupt archive ({type(e).__name__})",
                                 "re-download the file") from None
    return dest


def _find(root: Path, name: str) -> Optional[Path]:
    hits = sorted(p for p in root.rglob(name) if p.is_file())
    return min(hits, key=lambda p: len(p.parts)) if hits else None


def load_weights(path, unsafe: bool = False) -> Dict[str, Any]:
    """``torch.load`` a checkpoint (``weights_only=True`` unless ``unsafe``) -> flat state dict.

    Accepts a plain state dict (``model_weights.ckpt``), a Lightning checkpoint (``{"state_dict": ...}``)
    or a ``zsq_tvm.train`` checkpoint (``{"arch", "state_dict"}``).
    """
    import torch

    path = Path(os.fspath(path))
    if not path.is_file():
        raise ModelLoadError(f"checkpoint {str(path)!r} not found", "pass an existing weights file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not unsafe)
    except Exception as e:  # pickle.UnpicklingError, RuntimeError, EOFError, zipfile errors ...
        hint = ("if you trust this file, load it with unsafe=True (it may execute code)" if not unsafe
                and "weights_only" in str(e) else "re-download the file")
        raise ModelLoadError(f"cannot read weights {str(path)!r} ({type(e).__name__}: {str(e).splitlines()[0][:100]})",
                             hint) from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(k, str) for k in obj):
        raise ModelLoadError(f"{str(path)!r} holds no state dict", "pass a NeMo model_weights.ckpt or a .nemo file")
    return obj


def read_nemo(path, unsafe: bool = False) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """``.nemo`` -> (resolved model config dict, state dict).  Nothing is left on disk."""
    import yaml

    path = Path(os.fspath(path))
    if not path.is_file():
        raise ModelLoadError(f".nemo file {str(path)!r} not found", "pass an existing .nemo file")
    tmp = Path(tempfile.mkdtemp(prefix="zsq-nemo-"))
    try:
        safe_extract(path, tmp)
        cfg_file, w_file = _find(tmp, CONFIG_NAME), _find(tmp, WEIGHTS_NAME)
        if cfg_file is None or w_file is None:
            missing = [n for n, f in ((CONFIG_NAME, cfg_file), (WEIGHTS_NAME, w_file)) if f is None]
            raise ModelLoadError(f"{str(path)!r} has no {' / '.join(missing)}",
                                 "pass a .nemo saved by NeMo's model.save_to()")
        try:
            cfg = yaml.safe_load(cfg_file.read_text())
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise ModelLoadError(f"{str(path)!r}: {CONFIG_NAME} is not valid YAML ({type(e).__name__})",
                                 "re-download the file") from None
        cfg = _normalize_config(cfg, repr(str(path)))
        sd = load_weights(w_file, unsafe=unsafe)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return cfg, sd


def nemo_to_torch(nemo_model_or_state_dict, cfg=None, name: Optional[str] = None):
    """NeMo ``EncDecCTCModel`` (or its state dict + config) -> our torch net with its weights, eval mode.

    Loading is strict on ``encoder.*`` / ``decoder.*`` keys (missing or extra keys raise
    :class:`ModelLoadError` listing them); ``preprocessor.*`` and other non-network entries are ignored.
    """
    if isinstance(nemo_model_or_state_dict, dict):
        sd = nemo_model_or_state_dict
        if cfg is None:
            raise ConfigError("nemo_to_torch(state_dict) needs the model config",
                              "pass cfg= (a dict, YAML path or architecture name)")
    else:
        model = nemo_model_or_state_dict
        sd = model.state_dict()
        if cfg is None:
            from omegaconf import OmegaConf

            cfg = OmegaConf.to_container(model.cfg, resolve=True)
    net = torch_from_config(cfg, name=name)
    keep = {k: v for k, v in sd.items() if k.startswith(("encoder.", "decoder."))}
    keep = {k: (v.float() if v.is_floating_point() else v) for k, v in keep.items()}
    ours = set(net.state_dict())
    missing = sorted(ours - set(keep))
    extra = sorted(set(keep) - ours)
    if missing or extra:
        def show(ks):
            return ", ".join(ks[:4]) + (f", … (+{len(ks) - 4})" if len(ks) > 4 else "")
        # old-layout checkpoints are remapped by the nets' own load hooks: let load_state_dict try first
        try:
            net.load_state_dict(keep, strict=True)
        except RuntimeError:
            raise ModelLoadError(f"the weights do not match the config's architecture (missing: {show(missing) or '-'}; "
                                 f"unexpected: {show(extra) or '-'})",
                                 "pass the config the weights were trained with") from None
    else:
        try:
            net.load_state_dict(keep, strict=True)
        except RuntimeError as e:
            raise ModelLoadError(f"the weights do not fit the config's architecture ({str(e).splitlines()[-1][:160]})",
                                 "pass the config the weights were trained with") from None
    return net.float().eval()


def load_nemo(path, unsafe: bool = False):
    """``.nemo`` file -> our torch net with its weights (NeMo need not be installed)."""
    cfg, sd = read_nemo(path, unsafe=unsafe)
    net = nemo_to_torch(sd, cfg, name=Path(os.fspath(path)).stem)
    _warn_preprocessor(net, cfg, path)
    return net


def _warn_preprocessor(net, cfg, source):
    import warnings

    net.preprocessor_mismatch = preprocessor_mismatch(cfg)
    if net.preprocessor_mismatch:
        warnings.warn(f"{source}: the model was trained on other features than zsq's mel front end "
                      f"({', '.join(net.preprocessor_mismatch)}); its accuracy with zsq's features will be worse",
                      stacklevel=3)


# --------------------------------------------------------------------------------------------
# export
# --------------------------------------------------------------------------------------------

def _model_from_source(source, checkpoint=None, seed: int = 0, unsafe: bool = False):
    import torch

    from .nets import ALL_ARCHS

    src = os.fspath(source)
    if src.endswith(".nemo") or (os.path.isfile(src) and tarfile.is_tarfile(src)):
        if checkpoint is not None:
            raise ConfigError("--checkpoint cannot be combined with a .nemo file (it has its own weights)",
                              "drop --checkpoint, or pass the architecture / config YAML instead")
        return load_nemo(src, unsafe=unsafe)
    if src.endswith((".yaml", ".yml")) or src in NEMO_ARCHS:
        cfg = load_config(src)
        name = src if src in NEMO_ARCHS else Path(src).stem
    elif src in ALL_ARCHS:  # an architecture without a packaged NeMo config (quartznet10x5, conformer-ctc-large)
        cfg, name = arch_config(src), src
    else:
        raise ModelLoadError(f"{src!r} is neither a .nemo file, a config .yaml nor an architecture",
                             f"pass FILE.nemo, CONFIG.yaml or one of: {', '.join(ALL_ARCHS)}")
    if checkpoint is not None:
        ck = os.fspath(checkpoint)
        from .models import checkpoint_path, is_shipped

        if is_shipped(ck):  # a shipped model name: its .pt
            ck = os.fspath(checkpoint_path(ck))
        if ck.endswith(".nemo"):
            _, sd = read_nemo(ck, unsafe=unsafe)
        else:
            sd = load_weights(ck, unsafe=unsafe)
        return nemo_to_torch(sd, cfg, name=name)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = torch_from_config(cfg, name=name)
    net.name = name
    return net.eval()


def export_nemo(source, output, frames: Optional[int] = None, checkpoint=None, seed: int = 0,
                unsafe: bool = False) -> Path:
    """``zsq export-nemo``: architecture name / config YAML / ``.nemo`` -> ONNX (encoder + decoder, BN kept).

    Without ``checkpoint`` an architecture or YAML gets random weights (seeded, NeMo-style init).
    The export is :func:`zsq_tvm.nets.export.export_onnx`, which fails when no BatchNormalization
    node survives and writes the file atomically.
    """
    from .nets.export import count_batchnorm, export_onnx

    model = _model_from_source(source, checkpoint=checkpoint, seed=seed, unsafe=unsafe)
    out = export_onnx(model, output, frames=frames)
    import onnx

    n_bn = count_batchnorm(onnx.load(str(out), load_external_data=False))
    if n_bn == 0:  # export_onnx checks this too; keep the guarantee here whatever it does
        os.unlink(out)
        raise ModelLoadError(f"the ONNX export of {source!r} has no BatchNormalization node",
                             "report this as a bug: zero-shot synthesis needs the BN statistics")
    return out


def _config_dumper():
    import yaml

    class D(yaml.SafeDumper):
        def ignore_aliases(self, data):
            return True

    def seq(dumper, data):  # short lists of scalars (labels, kernel: [33]) on one line
        flow = all(not isinstance(v, (list, dict)) for v in data)
        return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)

    D.add_representer(list, seq)
    return D


def _write_configs():  # pragma: no cover - maintenance helper
    global _ConfigDumper
    _ConfigDumper = _config_dumper()
    import yaml

    CONFIG_DIR.mkdir(parents=True, exist_ok=True)
    for arch in NEMO_ARCHS:
        cfg = arch_config(arch)
        head = (f"# NeMo EncDecCTCModel config for {arch} (the `model:` section; same format as a .nemo's\n"
                f"# model_config.yaml).  Generated by `python -m zsq_tvm.nemo_io --write-configs` from\n"
                f"# zsq_tvm.nets; preprocessor = zsq_tvm.audio.mel.MelFrontend's settings.  No dataset paths:\n"
                f"# train_ds/validation_ds/test_ds are null (build with EncDecCTCModel(cfg)).\n")
        (CONFIG_DIR / f"{arch}.yaml").write_text(head + yaml.dump(cfg, Dumper=_ConfigDumper, sort_keys=False,
                                                                  width=110))


if __name__ == "__main__":  # pragma: no cover
    import sys

    if "--write-configs" in sys.argv:
        _write_configs()
        print(f"wrote {len(NEMO_ARCHS)} configs to {CONFIG_DIR}")
