"""NeMo in: configs, ``.nemo`` files and checkpoints -> our torch nets -> ONNX (BatchNorm kept).

    from zsq_tvm import nemo_io
    net = nemo_io.load_nemo("stt_en_quartznet15x5.nemo")      # no NeMo install needed
    net = nemo_io.torch_from_config("quartznet15x5")            # random weights, NeMo's architecture
    nemo_io.export_nemo("quartznet5x5", "qn.onnx", frames=1000)  # what ``zsq export-nemo`` runs
    m = nemo_io.build_nemo("quartznet5x5")                      # a real NeMo EncDecCTCModel (needs nemo)
    net = nemo_io.nemo_to_torch(m)                              # ... and its weights in our net

Our nets (:mod:`zsq_tvm.zoo.nets`) have NeMo's ``encoder.*`` / ``decoder.*`` parameter names and
semantics (checked key-for-key and numerically by ``tests/test_nemo_io.py`` when NeMo is
installed), so a NeMo state dict loads with ``load_state_dict``; the ``preprocessor.*``
buffers are ignored because our front end is :mod:`zsq_tvm.audio.mel` (same features).

The packaged configs ``zsq_tvm/zoo/nets/configs/<arch>.yaml`` are NeMo ``model`` sections (the
format of a ``.nemo``'s ``model_config.yaml``) for the published QuartzNet-5x5/15x5 and
Jasper-10x5-DR and for our small variants.

Untrusted input is bounded before it is expanded:

* A ``.nemo`` is a tar archive.  :func:`safe_extract` checks every member header before writing
  anything and refuses the whole archive for any symlink, hard link, device, FIFO or sparse member
  (NeMo archives hold only regular files and directories, so a link is never extracted, not even
  one pointing inside: link chains are how CVE-2025-4517 escapes path checks), for absolute names,
  ``..`` components, NUL or backslash in names, duplicate files, and for more than
  :data:`MAX_NEMO_MEMBERS` members or :data:`MAX_NEMO_BYTES` member bytes (declared in the headers
  and counted again as written; tar headers are bounded by :data:`MAX_TAR_HEADER_BYTES`).  It then
  writes each file itself (``os.mkdir`` / ``O_CREAT|O_EXCL|O_NOFOLLOW`` relative to directory
  descriptors under the destination) and does not rely on Python's tar extraction filters, which
  some 3.11 patch releases get wrong.  :func:`read_nemo` extracts only ``model_config.yaml`` and
  ``model_weights.ckpt`` (a tokenizer or other file NeMo may ship is checked but not written: our
  models are character CTC, their vocabulary is in the config).
* Weights are read with ``torch.load(weights_only=True)`` unless the caller passes ``unsafe=True``.
* Config YAMLs (a user CONFIG.yaml and a ``.nemo``'s ``model_config.yaml``) are read by one loader
  that refuses files over :data:`MAX_YAML_BYTES` unread and, before constructing anything, YAML
  that nests deeper than :data:`MAX_CONFIG_DEPTH`, that expands (aliases counted at their full
  size, in linear time) to more than :data:`MAX_YAML_NODES` nodes, or has recursive aliases.  ``${...}``
  interpolations are resolved under the same node and depth limits; a cycle is an error that
  names the key chain.
"""
from __future__ import annotations

import contextlib
import errno
import gzip
import os
import re
import shutil
import tarfile
import tempfile
import zlib
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple

from zsq_tvm.core.errors import ConfigError, ModelLoadError, NotAvailableError

__all__ = ["CONFIG_DIR", "NEMO_ARCHS", "config_path", "load_config", "arch_config", "torch_from_config",
           "build_nemo", "preprocessor_mismatch", "safe_extract", "read_nemo", "load_nemo", "nemo_to_torch", "load_weights",
           "export_nemo", "UnsafeArchiveError", "MAX_NEMO_BYTES", "MAX_NEMO_MEMBERS", "MAX_TAR_HEADER_BYTES",
           "MAX_YAML_BYTES", "MAX_YAML_NODES", "MAX_CONFIG_DEPTH"]

CONFIG_DIR = Path(__file__).resolve().parent / "zoo" / "nets" / "configs"
#: architectures with a packaged NeMo config
NEMO_ARCHS = ("quartznet5x5", "quartznet15x5", "jasper10x5dr", "jasper-dr-small", "quartznet-tiny",
              "conformer-ctc-small")

CONFIG_NAME = "model_config.yaml"
WEIGHTS_NAME = "model_weights.ckpt"

# Limits on untrusted input.  A NeMo model config is a few KB with a few thousand nodes and at most
# ~8 levels; the largest supported .nemo (Jasper10x5DR, 333 M fp32 parameters) holds ~1.3 GB in a
# handful of members.  The limits sit far above that and far below what exhausts a machine.
#: member bytes of one .nemo, checked on the declared sizes and again on the bytes written
MAX_NEMO_BYTES = 4 * 2 ** 30
#: members (files, directories, ...) of one .nemo
MAX_NEMO_MEMBERS = 1024
#: tar header bytes (pax / GNU long-name records included) of one .nemo, in total and per header
MAX_TAR_HEADER_BYTES = 16 * 2 ** 20
#: size of a config YAML, checked before it is read
MAX_YAML_BYTES = 4 * 2 ** 20
#: nodes of a config after expanding YAML aliases and ${...} interpolations
MAX_YAML_NODES = 200_000
#: nesting of a config: YAML collections, and collections plus ${...} hops once resolved
MAX_CONFIG_DEPTH = 64

_UNTRUSTED_FIX = "only use .nemo files from a source you trust; this one may be malicious"


class UnsafeArchiveError(ModelLoadError):
    """A ``.nemo`` archive member would be written outside the extraction directory."""


# --------------------------------------------------------------------------------------------
# configs
# --------------------------------------------------------------------------------------------

def preprocessor_config() -> Dict[str, Any]:
    """NeMo ``AudioToMelSpectrogramPreprocessor`` settings equal to our :class:`MelFrontend`."""
    from zsq_tvm.audio.mel import LOG_ZERO_GUARD, MelConfig

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
    """The NeMo ``model`` config of one of our architectures, generated from :mod:`zsq_tvm.zoo.nets`.

    This is how the packaged YAMLs were written (``python -m zsq_tvm.nemo_io --write-configs``);
    the published QuartzNet/Jasper dropouts are restored where our ARCHS simplified them.
    """
    from zsq_tvm.zoo.nets import ARCHS, CONFORMER_ARCHS, VOCAB

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


def _lookup(text: str, root) -> Optional[Tuple[str, Any]]:
    """``"${model.a.b}"`` / ``"${a.b}"`` -> (the key path it names in ``root``, its value); None if it names nothing."""
    m = _INTERP.match(text.strip())
    if not m:
        return None
    path = m.group(1)
    for p in (path, path[len("model."):] if path.startswith("model.") else None):
        if p is None:
            continue
        cur = root
        for part in p.split("."):
            if isinstance(cur, dict) and part in cur:
                cur = cur[part]
            else:
                break
        else:
            return p, cur
    return None


def _check_resolvable(node, root) -> None:
    """Refuse ${...} cycles, and a resolved config over MAX_YAML_NODES nodes or MAX_CONFIG_DEPTH levels.

    Runs before anything is expanded: ``b: [${a}, ${a}]`` doubles ``a`` per line, so a few lines
    (or shared YAML aliases) would otherwise expand without bound.  Sizes and heights are memoized
    per container and per interpolation target, so this is linear in the size of the document.
    """
    memo: Dict[Any, Tuple[int, int]] = {}  # id(container) / ("$", path) -> (expanded nodes, height)
    active: set = set()  # containers and ${...} targets being walked: meeting one again is a cycle
    trail: List[str] = []  # key paths of the ${...} hops being followed, for the error message

    def too_big(where):
        return ModelLoadError(f"the config expands to more than {MAX_YAML_NODES} values (at {where or 'top level'}; "
                              "YAML aliases and ${...} interpolations counted at their full size)",
                              "pass a plain NeMo model config; this one looks built to exhaust memory")

    def too_deep(where):
        return ModelLoadError(f"the config nests deeper than {MAX_CONFIG_DEPTH} levels once its ${{...}} "
                              f"interpolations are resolved (at {where or 'top level'})",
                              "pass a plain NeMo model config")

    def cycle(last):
        return ModelLoadError(f"the config's ${{...}} interpolations form a cycle ({' -> '.join(trail + [last])})",
                              "make each interpolation point at a value, not back at itself")

    def walk(n, where: str, depth: int) -> Tuple[int, int]:
        if depth > MAX_CONFIG_DEPTH:
            raise too_deep(where)
        if isinstance(n, str):
            hit = _lookup(n, root)
            if hit is None:
                return 1, 0
            path, target = hit
            key = ("$", path)
            if key not in memo:
                first = not trail
                if first:  # the key the walk started from is part of the chain ("a -> b -> a")
                    trail.append(where)
                    active.add(("$", where))
                try:
                    if key in active:
                        raise cycle(path)
                    trail.append(path)
                    active.add(key)
                    try:
                        size, height = walk(target, path, depth + 1)
                    finally:
                        active.discard(key)
                        trail.pop()
                finally:
                    if first:
                        active.discard(("$", trail.pop()))
                memo[key] = (size, height + 1)
            size, height = memo[key]
        elif isinstance(n, (dict, list)):
            key = id(n)
            if key not in memo:
                if key in active:  # a container reached again from inside itself
                    raise cycle(where or "top level")
                active.add(key)
                size, height = 1, 0
                try:
                    items = n.items() if isinstance(n, dict) else enumerate(n)
                    for k, v in items:
                        sub = (f"{where}.{k}" if where else str(k)) if isinstance(n, dict) else f"{where}[{k}]"
                        s, h = walk(v, sub, depth + 1)
                        size, height = size + s, max(height, h + 1)
                        if size > MAX_YAML_NODES:
                            raise too_big(sub)
                finally:
                    active.discard(key)
                memo[key] = (size, height)
            size, height = memo[key]
        else:
            return 1, 0
        if size > MAX_YAML_NODES:
            raise too_big(where)
        if depth + height > MAX_CONFIG_DEPTH:
            raise too_deep(where)
        return size, height

    walk(node, "", 0)


def _resolve(node, root):
    """Resolve whole-string OmegaConf interpolations ``${model.a.b}`` / ``${a.b}`` (all NeMo ASR configs use).

    Returns fresh containers (shared YAML aliases become independent copies).  The expansion is
    checked first by :func:`_check_resolvable`, so its size is bounded.
    """
    _check_resolvable(node, root)

    def build(n):
        if isinstance(n, dict):
            return {k: build(v) for k, v in n.items()}
        if isinstance(n, list):
            return [build(v) for v in n]
        if isinstance(n, str):
            hit = _lookup(n, root)
            if hit is not None:
                return build(hit[1])
        return n

    return build(node)


def _yaml_loader():
    import yaml

    # libyaml when available: a 4 MiB config parses in well under a second, the pure-Python parser
    # takes many.  Both are only used after _check_yaml_events, which bounds what they build.
    return getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _check_yaml_events(data: bytes, what: str) -> None:
    """Refuse YAML nested deeper than MAX_CONFIG_DEPTH, expanding to more than MAX_YAML_NODES nodes, or
    with recursive aliases — from the parser's event stream, before a node graph is composed.

    Events rather than ``yaml.compose``: composing recurses once per nesting level (a RecursionError,
    or with libyaml's Cython composer a C stack overflow, on ``[[[[...``) and builds the whole graph
    first.  Each anchor's expanded size is recorded when its node ends, so an alias costs one
    lookup and a "billion laughs" document is refused in time linear in its length.
    """
    import yaml

    anchors: Dict[str, int] = {}  # anchor -> expanded node count of the node it names
    open_anchors: set = set()  # anchors of collections not closed yet: an alias to one is recursive
    stack: List[List[Any]] = [[None, 0]]  # per open collection: [anchor, expanded nodes so far]

    def fail(cause):
        raise ModelLoadError(f"{what}: {cause}", "pass a plain NeMo model config; this one looks built to "
                                                 "exhaust memory")

    def add(size: int, anchor: Optional[str]):
        if anchor is not None:
            anchors[anchor] = size
        stack[-1][1] += size
        if stack[-1][1] > MAX_YAML_NODES:
            fail(f"the YAML expands to more than {MAX_YAML_NODES} values (aliases counted at their full size)")

    for ev in yaml.parse(data, Loader=_yaml_loader()):
        if isinstance(ev, yaml.ScalarEvent):
            add(1, ev.anchor)
        elif isinstance(ev, yaml.AliasEvent):
            if ev.anchor in open_anchors:
                fail(f"the YAML alias *{ev.anchor} refers to a collection that contains it")
            add(anchors.get(ev.anchor, 1), None)  # an undefined alias: the composer reports it
        elif isinstance(ev, yaml.CollectionStartEvent):
            if len(stack) > MAX_CONFIG_DEPTH:
                fail(f"the YAML nests deeper than {MAX_CONFIG_DEPTH} levels")
            stack.append([ev.anchor, 0])
            if ev.anchor is not None:
                open_anchors.add(ev.anchor)
        elif isinstance(ev, yaml.CollectionEndEvent):
            anchor, size = stack.pop()
            open_anchors.discard(anchor)
            add(size + 1, anchor)


def _load_yaml(path: Path, what: str, fix: str):
    """The single YAML document in ``path``, loaded safely within MAX_YAML_BYTES / MAX_YAML_NODES / MAX_CONFIG_DEPTH."""
    import yaml

    data = b""
    try:
        size = path.stat().st_size
        if size <= MAX_YAML_BYTES:
            with open(path, "rb") as f:
                data = f.read(MAX_YAML_BYTES + 1)  # the file may grow between stat and read
    except OSError as e:
        raise ModelLoadError(f"cannot read {what} ({type(e).__name__}: {e.strerror or e})", fix) from None
    if size > MAX_YAML_BYTES or len(data) > MAX_YAML_BYTES:
        raise ModelLoadError(f"{what} is {max(size, len(data))} bytes; a config YAML may have at most "
                             f"{MAX_YAML_BYTES} (NeMo model configs are a few KB)", fix)
    try:
        _check_yaml_events(data, what)
        loader = _yaml_loader()(data)
        try:
            return loader.get_single_data()
        finally:
            loader.dispose()
    except (yaml.YAMLError, UnicodeDecodeError, ValueError, TypeError, OverflowError) as e:
        # ValueError: e.g. an integer of more digits than Python converts (a 5,000-digit scalar)
        raise ModelLoadError(f"{what} is not valid YAML ({type(e).__name__})", fix) from None


def _normalize_config(cfg, source: str) -> Dict[str, Any]:
    if not isinstance(cfg, dict):
        raise ModelLoadError(f"{source}: not a NeMo model config (top level is {type(cfg).__name__})",
                             "pass a NeMo model config YAML with encoder/decoder sections")
    if "encoder" not in cfg and isinstance(cfg.get("model"), dict):
        cfg = cfg["model"]
    cfg = _resolve(cfg, cfg)
    if not isinstance(cfg.get("encoder"), dict) or not isinstance(cfg.get("decoder"), dict):
        raise ModelLoadError(f"{source}: the config has no encoder/decoder section",
                             "pass a NeMo EncDecCTCModel config (model: {preprocessor, encoder, decoder})")
    return cfg


def load_config(arch_or_yaml) -> Dict[str, Any]:
    """Architecture name (packaged YAML) or a YAML path -> plain-dict NeMo model config (resolved)."""
    if isinstance(arch_or_yaml, dict):
        return _normalize_config(arch_or_yaml, "config")
    src = os.fspath(arch_or_yaml)
    path = config_path(src) if src in NEMO_ARCHS and not os.path.exists(src) else Path(src)
    if not path.is_file():
        raise ModelLoadError(f"config {src!r} not found",
                             f"pass an existing YAML file or one of: {', '.join(NEMO_ARCHS)}")
    cfg = _load_yaml(path, f"config {str(path)!r}", "pass a valid NeMo model config YAML")
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
    from zsq_tvm.zoo.nets.convasr import BlockCfg

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
    from zsq_tvm.zoo.nets import ConformerCTCModel, ConvCTCModel

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

try:
    import lzma

    _LZMA_ERRORS: Tuple[type, ...] = (lzma.LZMAError,)
except ImportError:  # pragma: no cover - Python built without lzma
    lzma, _LZMA_ERRORS = None, ()

# What a damaged or hostile stream makes tarfile / the decompressors raise.  RecursionError: tarfile
# follows consecutive pax headers by recursion, so a few thousand of them (a few MB) exhaust the stack.
_ARCHIVE_ERRORS = (tarfile.TarError, EOFError, OSError, zlib.error, ValueError, RecursionError) + _LZMA_ERRORS
_CHUNK = 1 << 20  # bytes copied per read when writing a member (well under MAX_TAR_HEADER_BYTES)


class _BoundedStream:
    """Seekable read-only view of an archive stream (decompressed if need be) that tarfile reads through.

    tarfile reads a whole header in one call (a pax or GNU long-name header may declare gigabytes)
    and skips member data by seeking, which on a compressed stream means decompressing it — all
    before it hands us a member to check.  Refusing any single read over MAX_TAR_HEADER_BYTES and
    any position past ``limit`` bounds its memory and CPU on a small hostile file.
    """

    def __init__(self, f, limit: int, source: str):
        self._f, self._limit, self._source = f, limit, source

    def _refuse(self, cause: str):
        raise UnsafeArchiveError(f"refusing to extract {self._source!r}: {cause}", _UNTRUSTED_FIX)

    def read(self, n: Optional[int] = -1) -> bytes:
        if n is None or n < 0 or n > MAX_TAR_HEADER_BYTES:  # our own reads are _CHUNK; only headers come here
            self._refuse(f"a tar header is larger than {MAX_TAR_HEADER_BYTES} bytes")
        if self._f.tell() + n > self._limit:
            self._refuse(f"it holds more than {self._limit} bytes of tar data")
        return self._f.read(n)

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence not in (0, 1):
            raise OSError(errno.ESPIPE, "only absolute and relative seeks are supported")
        target = offset if whence == 0 else self._f.tell() + offset
        if target > self._limit:
            self._refuse(f"it holds more than {self._limit} bytes of tar data")
        return self._f.seek(target)

    def tell(self) -> int:
        return self._f.tell()

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True


@contextlib.contextmanager
def _open_tar(tar_path, max_bytes: int):
    """Open a plain, gzip, bzip2 or xz tar through :class:`_BoundedStream` (``tarfile.open`` would not bound it)."""
    src = str(tar_path)
    with contextlib.ExitStack() as stack:
        try:
            raw = stack.enter_context(open(tar_path, "rb"))
            magic = raw.read(6)
            raw.seek(0)
            f = raw
            if magic[:2] == b"\x1f\x8b":  # NeMo < 1.7 wrote .tar.gz
                f = stack.enter_context(gzip.GzipFile(fileobj=raw, mode="rb"))
            elif magic[:3] == b"BZh":
                import bz2

                f = stack.enter_context(bz2.BZ2File(raw))
            elif magic == b"\xfd7zXZ\x00" and lzma is not None:
                f = stack.enter_context(lzma.LZMAFile(raw))
            stream = _BoundedStream(f, max_bytes + MAX_TAR_HEADER_BYTES, src)
            tf = stack.enter_context(tarfile.open(fileobj=stream, mode="r:"))
        except _ARCHIVE_ERRORS as e:
            raise ModelLoadError(f"{src!r} is not a readable .nemo (tar) archive ({type(e).__name__})",
                                 "re-download the file; a .nemo is a tar of model_config.yaml + model_weights.ckpt") \
                from None
        yield tf


def _is_tar(path) -> bool:
    """``tarfile.is_tarfile`` through the same bounds as extraction (it would read a hostile first header unbounded)."""
    try:
        with _open_tar(path, MAX_NEMO_BYTES):
            return True
    except UnsafeArchiveError:  # a tar, and a hostile one: loading it reports why
        return True
    except ModelLoadError:
        return False


def _link_problem(m: tarfile.TarInfo, parts: List[str]) -> str:
    """Why a link member is refused; the target is classified (lexically) only to make the message useful."""
    kind, link = ("symbolic link" if m.issym() else "hard link"), m.linkname
    if not link:
        where = "with an empty target"
    elif link.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", link):
        where = f"to an absolute path ({link!r})"
    else:
        level, escapes = len(parts) - 1 if m.issym() else 0, False  # symlinks are relative to their folder
        for part in link.replace("\\", "/").split("/"):
            if part == "..":
                level -= 1
                escapes = escapes or level < 0
            elif part not in ("", "."):
                level += 1
        where = f"escaping the target directory ({link!r})" if escapes else f"to {link!r}"
    return f"{kind} {where}; a .nemo holds only regular files and directories, so links are never extracted"


def _member_problem(m: tarfile.TarInfo) -> Tuple[List[str], Optional[str]]:
    """(normalized name parts, None) for a regular file or directory with a clean relative name, else (_, why).

    Purely lexical: no member is ever a link, so a name means the same on disk as in the archive.
    """
    name = m.name
    if "\x00" in name:
        return [], "NUL in the name"
    if "\\" in name:  # a separator on Windows, and never in a NeMo archive
        return [], "backslash in the name"
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        return [], "absolute path"
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        return parts, "'..' path component"
    if len(name) > 1024 or any(len(p.encode("utf-8", "surrogateescape")) > 255 for p in parts):
        return parts, "name too long"
    if m.issym() or m.islnk():
        return parts, _link_problem(m, parts)
    if m.isreg() and m.issparse():
        return parts, "sparse file"
    if m.ischr() or m.isblk() or m.isfifo():
        return parts, "special file (device, fifo)"
    if not (m.isreg() or m.isdir()):
        return parts, f"unsupported member type {m.type!r}"
    if m.isreg() and not parts:
        return parts, "file without a name"
    return parts, None


def _plan(tf: tarfile.TarFile, src: str, max_bytes: int, max_members: int):
    """Check every member header, reading one at a time -> (files {name: member} in archive order, dirs).

    The budgets are checked as each header is read, before tarfile seeks past (decompresses) its data.
    """
    def refuse(cause):
        raise UnsafeArchiveError(f"refusing to extract {src!r}: {cause}", _UNTRUSTED_FIX)

    files: Dict[str, tarfile.TarInfo] = {}
    dirs: set = set()
    count = total = header_bytes = end_of_data = 0
    for m in tf:
        count += 1
        if count > max_members:
            refuse(f"it has more than {max_members} members")
        header_bytes += m.offset_data - end_of_data
        if header_bytes > MAX_TAR_HEADER_BYTES:
            refuse(f"its tar headers take more than {MAX_TAR_HEADER_BYTES} bytes")
        data = m.size if m.isreg() else 0
        end_of_data = m.offset_data + -(-data // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
        total += data
        if total > max_bytes:
            refuse(f"its members hold more than {max_bytes} bytes (at member {m.name!r})")
        parts, why = _member_problem(m)
        if why:
            refuse(f"member {m.name!r} is unsafe ({why})")
        name = "/".join(parts)
        for i in range(1, len(parts)):
            up = "/".join(parts[:i])
            if up in files:
                refuse(f"member {m.name!r} is unsafe (inside {up!r}, which is a file)")
            dirs.add(up)
        if m.isdir():
            if name in files:
                refuse(f"member {m.name!r} is unsafe (a directory with the name of a file)")
            if name:
                dirs.add(name)
        elif name in files or name in dirs:
            refuse(f"member {m.name!r} is unsafe (duplicate name)")
        else:
            files[name] = m
    return files, dirs


def _open_dir(root_fd: int, parts: List[str]) -> int:
    """fd of the directory ``parts`` under ``root_fd``, made with os.mkdir where missing; never follows a link."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.dup(root_fd)
    try:
        for part in parts:
            try:
                os.mkdir(part, 0o700, dir_fd=fd)
            except FileExistsError:
                pass
            nfd = os.open(part, flags, dir_fd=fd)
            os.close(fd)
            fd = nfd
    except BaseException:
        os.close(fd)
        raise
    return fd


def safe_extract(tar_path, dest, max_bytes: Optional[int] = None, max_members: Optional[int] = None,
                 only: Optional[Iterable[str]] = None) -> Path:
    """Extract the plain/gzip/bzip2/xz tar ``tar_path`` into the existing directory ``dest``.

    All member headers are checked before anything is written; :class:`UnsafeArchiveError` (naming
    the member) refuses the whole archive for a symlink, hard link, device, FIFO or sparse member,
    an absolute name, a ``..`` component, NUL or backslash in a name, a duplicate file, more than
    ``max_members`` members (default :data:`MAX_NEMO_MEMBERS`) or more than ``max_bytes`` member bytes
    (default :data:`MAX_NEMO_BYTES`; the bytes written are counted against it too).  Files are then
    written here, not by tarfile: directories with ``os.mkdir`` and files with
    ``O_CREAT|O_EXCL|O_NOFOLLOW``, each opened relative to its parent's descriptor, mode 0600/0700, so
    nothing is written through a link or over an existing file, whatever the interpreter's tar
    filters do.  ``only``: base names to write (for each, the least deeply nested regular file with
    that name); other members are checked but not written.  Corrupt archives raise
    :class:`ModelLoadError`; on an error ``dest`` may hold the files written so far.
    """
    max_bytes = MAX_NEMO_BYTES if max_bytes is None else int(max_bytes)
    max_members = MAX_NEMO_MEMBERS if max_members is None else int(max_members)
    dest = Path(dest).resolve()
    src = str(tar_path)
    if not dest.is_dir():
        raise ModelLoadError(f"extraction directory {str(dest)!r} does not exist", "create it first")
    with _open_tar(tar_path, max_bytes) as tf:
        try:
            files, dirs = _plan(tf, src, max_bytes, max_members)
        except _ARCHIVE_ERRORS as e:
            raise _corrupt(src, e) from None
        if only is not None:
            picked = set()
            for base in only:
                hits = [n for n in files if n.rsplit("/", 1)[-1] == base]
                if hits:
                    picked.add(min(hits, key=lambda n: (n.count("/"), n)))
            files = {n: m for n, m in files.items() if n in picked}  # archive order: one forward pass
            dirs = {"/".join(n.split("/")[:i]) for n in files for i in range(1, n.count("/") + 1)}
        root_fd = os.open(dest, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
        try:
            for d in sorted(dirs, key=lambda d: (d.count("/"), d)):
                _write_guard(src, d, lambda: os.close(_open_dir(root_fd, d.split("/"))))
            written = 0
            for name, m in files.items():
                fd = _write_guard(src, name, lambda: _create_file(root_fd, name.split("/")))
                try:
                    f = tf.extractfile(m)
                    while True:
                        chunk = f.read(_CHUNK)
                        if not chunk:
                            break
                        written += len(chunk)
                        if written > max_bytes:  # the real bytes, whatever the headers declared
                            raise UnsafeArchiveError(f"refusing to extract {src!r}: its members hold more than "
                                                     f"{max_bytes} bytes (at member {m.name!r})", _UNTRUSTED_FIX)
                        _write_guard(src, name, lambda: _write_all(fd, chunk))
                except _ARCHIVE_ERRORS as e:  # reading the archive; write errors are ZsqErrors by now
                    raise _corrupt(src, e) from None
                finally:
                    os.close(fd)
        finally:
            os.close(root_fd)
    return dest


def _corrupt(src: str, e: BaseException) -> ModelLoadError:
    return ModelLoadError(f"{src!r} is a truncated or corrupt archive ({type(e).__name__})", "re-download the file")


def _create_file(root_fd: int, parts: List[str]) -> int:
    """A new file ``parts`` under ``root_fd``: O_EXCL and O_NOFOLLOW, so never an existing file or a link."""
    parent = _open_dir(root_fd, parts[:-1])
    try:
        return os.open(parts[-1], os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
                       | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0), 0o600, dir_fd=parent)
    finally:
        os.close(parent)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _write_guard(src: str, name: str, op):
    """Run a filesystem write for member ``name``; its OSError becomes a one-line error."""
    try:
        return op()
    except OSError as e:
        if e.errno in (errno.EEXIST, errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
            # something other than a directory we made is in the way (a link or file already in dest)
            raise UnsafeArchiveError(f"refusing to extract {src!r}: member {name!r} would be written through or "
                                     f"over an existing {'file' if e.errno == errno.EEXIST else 'link or file'}",
                                     "extract into an empty directory") from None
        raise ModelLoadError(f"cannot extract {name!r} from {src!r} ({type(e).__name__}: {e.strerror or e})",
                             "free disk space in the temporary directory (TMPDIR) and retry") from None


def _find(root: Path, name: str) -> Optional[Path]:
    hits = sorted(p for p in root.rglob(name) if p.is_file())
    return min(hits, key=lambda p: len(p.parts)) if hits else None


def load_weights(path, unsafe: bool = False) -> Dict[str, Any]:
    """``torch.load`` a checkpoint (``weights_only=True`` unless ``unsafe``) -> flat state dict.

    Accepts a plain state dict (``model_weights.ckpt``), a Lightning checkpoint (``{"state_dict": ...}``)
    or a ``lab.train`` checkpoint (``{"arch", "state_dict"}``).
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


def read_nemo(path, unsafe: bool = False, max_bytes: Optional[int] = None) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """``.nemo`` -> (resolved model config dict, state dict).  Nothing is left on disk.

    Only ``model_config.yaml`` and ``model_weights.ckpt`` are extracted (see :func:`safe_extract`;
    ``max_bytes`` defaults to :data:`MAX_NEMO_BYTES`), into a private temporary directory.
    """
    path = Path(os.fspath(path))
    if not path.is_file():
        raise ModelLoadError(f".nemo file {str(path)!r} not found", "pass an existing .nemo file")
    tmp = Path(tempfile.mkdtemp(prefix="zsq-nemo-"))
    try:
        safe_extract(path, tmp, max_bytes=max_bytes, only=(CONFIG_NAME, WEIGHTS_NAME))
        cfg_file, w_file = _find(tmp, CONFIG_NAME), _find(tmp, WEIGHTS_NAME)
        if cfg_file is None or w_file is None:
            missing = [n for n, f in ((CONFIG_NAME, cfg_file), (WEIGHTS_NAME, w_file)) if f is None]
            raise ModelLoadError(f"{str(path)!r} has no {' / '.join(missing)}",
                                 "pass a .nemo saved by NeMo's model.save_to()")
        cfg = _load_yaml(cfg_file, f"{str(path)!r}: {CONFIG_NAME}", "re-download the file")
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

    from zsq_tvm.zoo.nets import ALL_ARCHS

    src = os.fspath(source)
    if src.endswith(".nemo") or (os.path.isfile(src) and _is_tar(src)):
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
        from zsq_tvm.zoo.models import checkpoint_path, is_shipped

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
                unsafe: bool = False, overwrite: bool = False) -> Path:
    """``zsq export-nemo``: architecture name / config YAML / ``.nemo`` -> ONNX (encoder + decoder, BN kept).

    Without ``checkpoint`` an architecture or YAML gets random weights (seeded, NeMo-style init).
    The export is :func:`zsq_tvm.zoo.nets.export.export_onnx`, which fails when no BatchNormalization
    node survives and writes the file atomically.  An existing ``output`` is an error unless
    ``overwrite`` (like every other command's ``-o``); it and a directory / unwritable folder as
    ``output`` are refused before the model is loaded.
    """
    from zsq_tvm.zoo.nets.export import check_export_path, count_batchnorm, export_onnx

    check_export_path(output, overwrite)  # cheap checks first: loading + tracing takes seconds to minutes
    model = _model_from_source(source, checkpoint=checkpoint, seed=seed, unsafe=unsafe)
    out = export_onnx(model, output, frames=frames, overwrite=overwrite)
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
                f"# zsq_tvm.zoo.nets; preprocessor = zsq_tvm.audio.mel.MelFrontend's settings.  No dataset paths:\n"
                f"# train_ds/validation_ds/test_ds are null (build with EncDecCTCModel(cfg)).\n")
        (CONFIG_DIR / f"{arch}.yaml").write_text(head + yaml.dump(cfg, Dumper=_ConfigDumper, sort_keys=False,
                                                                  width=110))


if __name__ == "__main__":  # pragma: no cover
    import sys

    if "--write-configs" in sys.argv:
        _write_configs()
        print(f"wrote {len(NEMO_ARCHS)} configs to {CONFIG_DIR}")
