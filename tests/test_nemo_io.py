"""NeMo in: packaged configs -> our nets, safe .nemo extraction, export-nemo, and (with NeMo
installed) key-for-key / numerical equality with NeMo's modules and mel parity.

The NeMo tests are skipped when ``nemo_toolkit`` is absent (``pip install -e '.[nemo]' torch==2.13.0``).
"""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import yaml

from zsq_tvm import nemo_io
from zsq_tvm.cli import main
from zsq_tvm.core.errors import ModelLoadError
from zsq_tvm.nemo_io import UnsafeArchiveError, safe_extract
from zsq_tvm.zoo.nets import build_model, count_params
from conftest import add_tar_member

SMALL = ("quartznet-tiny", "jasper-dr-small", "conformer-ctc-small", "quartznet5x5")


def cli(capsys, *argv):
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def _tar(path: Path, members):
    """members: (TarInfo-kwargs dict, bytes or None)."""
    with tarfile.open(path, "w") as tf:
        for info, data in members:
            info = dict(info)
            add_tar_member(tf, info.pop("name"), data, **info)
    return path


def _fake_nemo(path: Path, arch="quartznet-tiny", seed=0) -> tuple[Path, torch.nn.Module]:
    """A .nemo as NeMo writes it (./model_config.yaml + ./model_weights.ckpt), built without NeMo."""
    torch.manual_seed(seed)
    net = nemo_io.torch_from_config(arch)
    sd = dict(net.state_dict())
    sd["preprocessor.featurizer.window"] = torch.hann_window(320, periodic=False)  # ignored on load
    sd["preprocessor.featurizer.fb"] = torch.zeros(1, 64, 257)
    buf = io.BytesIO()
    torch.save(sd, buf)
    cfg = nemo_io.config_path(arch).read_bytes()
    _tar(path, [({"name": "./", "type": tarfile.DIRTYPE}, None),
                ({"name": "./model_config.yaml"}, cfg), ({"name": "./model_weights.ckpt"}, buf.getvalue())])
    return path, net.eval()


# ------------------------------------------------------------------ configs -> our nets (no NeMo)

@pytest.mark.parametrize("arch,paper_m", [("quartznet5x5", 6.7), ("quartznet15x5", 18.9)])
def test_yaml_param_count_matches_paper(arch, paper_m):
    net = nemo_io.torch_from_config(arch)
    assert round(count_params(net) / 1e6, 1) == paper_m


@pytest.mark.parametrize("arch", nemo_io.NEMO_ARCHS)
def test_yaml_equals_arch_and_generator(arch):
    """The packaged YAML is what arch_config() writes, and it builds exactly build_model(arch)'s keys/shapes."""
    cfg = nemo_io.load_config(arch)
    assert cfg == nemo_io._normalize_config(nemo_io.arch_config(arch), arch)
    for k in ("preprocessor", "encoder", "decoder"):
        assert k in cfg
    assert cfg["decoder"]["num_classes"] == 28 and len(cfg["decoder"]["vocabulary"]) == 28
    if arch == "jasper10x5dr":  # 333 M params: compare the config, not two instantiated nets
        assert len(cfg["encoder"]["jasper"]) == 13
        return
    a = {k: tuple(v.shape) for k, v in nemo_io.torch_from_config(arch).state_dict().items()}
    b = {k: tuple(v.shape) for k, v in build_model(arch).state_dict().items()}
    assert a == b


def test_quartznet_last_block_is_a_plain_conv_like_nemo():
    """NeMo's quartznet_15x5.yaml: the 1024-wide k=1 block has no `separable` (a plain conv)."""
    cfg = nemo_io.load_config("quartznet15x5")
    last = cfg["encoder"]["jasper"][-1]
    assert last["filters"] == 1024 and last["kernel"] == [1] and last["separable"] is False
    sd = build_model("quartznet15x5").state_dict()
    assert tuple(sd["encoder.encoder.17.mconv.0.conv.weight"].shape) == (1024, 512, 1)
    assert "encoder.encoder.17.mconv.1.running_mean" in sd and "encoder.encoder.17.mconv.2.weight" not in sd


def test_old_separable_last_block_checkpoint_still_loads():
    """Checkpoints from before the fix (depthwise 1x1 + pointwise) load through the fold shim, same outputs."""
    import dataclasses

    from zsq_tvm.zoo.nets.convasr import ARCHS, ConvCTCModel

    blocks = ARCHS["quartznet-tiny"]()
    blocks[-1] = dataclasses.replace(blocks[-1], separable=True)
    torch.manual_seed(0)
    old = ConvCTCModel("quartznet-tiny", blocks=blocks).eval()
    for m in old.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2)
    new = build_model("quartznet-tiny").eval()
    new.load_state_dict(old.state_dict())  # strict
    x = torch.randn(1, 64, 96)
    with torch.no_grad():
        assert torch.allclose(old(x), new(x), atol=1e-4, rtol=1e-4)


def test_config_with_interpolations_and_model_wrapper(tmp_path):
    cfg = nemo_io.arch_config("quartznet-tiny")
    cfg["decoder"]["vocabulary"] = "${model.labels}"
    cfg["encoder"]["feat_in"] = "${model.preprocessor.features}"
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"name": "x", "model": cfg}))
    net = nemo_io.torch_from_config(str(p))
    assert net.vocab == cfg["labels"] and count_params(net) == count_params(build_model("quartznet-tiny"))


def test_unsupported_config_is_refused(tmp_path):
    cfg = nemo_io.arch_config("quartznet-tiny")
    cfg["encoder"]["jasper"][1]["se"] = True
    with pytest.raises(ModelLoadError, match="se=True"):
        nemo_io.torch_from_config(cfg)
    cfg = nemo_io.arch_config("conformer-ctc-small")
    cfg["encoder"]["subsampling"] = "dw_striding"
    with pytest.raises(ModelLoadError, match="dw_striding"):
        nemo_io.torch_from_config(cfg)


# ------------------------------------------------------------------ safe .nemo extraction (no NeMo)

@pytest.mark.parametrize("member,why", [
    ({"name": "../evil.txt"}, "'..'"),
    ({"name": "./a/../../evil.txt"}, "'..'"),
    ({"name": "/tmp/zsq-evil-abs.txt"}, "absolute"),
    ({"name": "link", "type": tarfile.SYMTYPE, "linkname": "/etc/passwd"}, "absolute"),
    ({"name": "link", "type": tarfile.SYMTYPE, "linkname": "../../outside"}, "escaping"),
    ({"name": "hard", "type": tarfile.LNKTYPE, "linkname": "../outside"}, "escaping"),
    ({"name": "dev", "type": tarfile.CHRTYPE}, "special"),
])
def test_safe_extract_refuses_malicious_members(tmp_path, member, why):
    dest = tmp_path / "x" / "dest"
    dest.mkdir(parents=True)
    data = b"pwned" if member.get("type", tarfile.REGTYPE) == tarfile.REGTYPE else None
    bad = _tar(tmp_path / "bad.nemo", [({"name": "./model_config.yaml"}, b"a: 1\n"), (dict(member), data)])
    with pytest.raises(UnsafeArchiveError, match=why) as e:
        safe_extract(bad, dest)
    assert member["name"] in str(e.value) and "\n" not in str(e.value)
    assert list(dest.iterdir()) == []  # checked before anything is written
    assert not (tmp_path / "x" / "evil.txt").exists() and not Path("/tmp/zsq-evil-abs.txt").exists()


def test_symlink_then_write_through_it_is_refused(tmp_path):
    """The classic two-step attack: a symlink to outside, then a file written 'inside' it."""
    dest = tmp_path / "dest"
    dest.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    bad = _tar(tmp_path / "bad.nemo", [({"name": "d", "type": tarfile.SYMTYPE, "linkname": str(outside)}, None),
                                      ({"name": "d/evil.txt"}, b"pwned")])
    with pytest.raises(UnsafeArchiveError):
        safe_extract(bad, dest)
    assert list(outside.iterdir()) == [] and list(dest.iterdir()) == []


def test_safe_extract_refuses_even_internal_links(tmp_path):
    """NeMo archives hold no links; one that stays inside is refused too (link chains are how a member escapes)."""
    ok = _tar(tmp_path / "ok.nemo", [({"name": "./model_config.yaml"}, b"a: 1\n"),
                                    ({"name": "./alias.yaml", "type": tarfile.SYMTYPE,
                                      "linkname": "model_config.yaml"}, None)])
    dest = tmp_path / "d"
    dest.mkdir()
    with pytest.raises(UnsafeArchiveError, match="symbolic link"):
        safe_extract(ok, dest)
    assert list(dest.iterdir()) == []


def test_load_nemo_without_nemo(tmp_path):
    path, net = _fake_nemo(tmp_path / "m.nemo")
    before = set(os.listdir(tempfile_dir()))
    got = nemo_io.load_nemo(path)
    assert set(os.listdir(tempfile_dir())) == before  # the temp extraction dir is gone
    x = torch.randn(1, 64, 128)
    with torch.no_grad():
        assert torch.equal(got(x), net(x))


class _Arbitrary:  # any non-allowlisted class: weights_only=True refuses to unpickle it
    pass


def tempfile_dir():
    import tempfile

    return tempfile.gettempdir()


def test_load_nemo_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        nemo_io.load_nemo(tmp_path / "missing.nemo")
    (tmp_path / "junk.nemo").write_bytes(b"not a tar at all")
    with pytest.raises(ModelLoadError, match="not a readable"):
        nemo_io.load_nemo(tmp_path / "junk.nemo")
    path, _ = _fake_nemo(tmp_path / "full.nemo")
    (tmp_path / "trunc.nemo").write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ModelLoadError):
        nemo_io.load_nemo(tmp_path / "trunc.nemo")
    _tar(tmp_path / "noweights.nemo", [({"name": "./model_config.yaml"}, nemo_io.config_path("quartznet-tiny").read_bytes())])
    with pytest.raises(ModelLoadError, match="model_weights.ckpt"):
        nemo_io.load_nemo(tmp_path / "noweights.nemo")
    # weights that need pickle code execution are refused unless unsafe=True
    buf = io.BytesIO()
    torch.save({"encoder.x": torch.zeros(1), "obj": _Arbitrary()}, buf)
    _tar(tmp_path / "pickle.nemo", [({"name": "./model_config.yaml"}, nemo_io.config_path("quartznet-tiny").read_bytes()),
                                    ({"name": "./model_weights.ckpt"}, buf.getvalue())])
    with pytest.raises(ModelLoadError, match="unsafe=True"):
        nemo_io.load_nemo(tmp_path / "pickle.nemo")


def test_wrong_weights_for_config(tmp_path):
    _, net = _fake_nemo(tmp_path / "a.nemo", arch="quartznet-tiny")
    with pytest.raises(ModelLoadError, match="do not match"):
        nemo_io.nemo_to_torch(net.state_dict(), "jasper-dr-small")


# ------------------------------------------------------------------ export-nemo (no NeMo)

def _bn_count(path):
    return Counter(n.op_type for n in onnx.load(str(path)).graph.node)["BatchNormalization"]


def test_export_nemo_arch_name_keeps_batchnorm(capsys, tmp_path):
    out = tmp_path / "qt.onnx"
    rc, so, se = cli(capsys, "export-nemo", "quartznet-tiny", "--frames", 128, "-o", out)
    assert rc == 0, se
    assert "random weights" in so and _bn_count(out) == 15  # 15 BN in quartznet-tiny: none folded
    m = onnx.load(str(out))
    assert [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim] == [1, 64, 128]


def test_export_nemo_yaml_and_nemo_files(capsys, tmp_path):
    import onnxruntime as ort

    rc, _, se = cli(capsys, "export-nemo", nemo_io.config_path("conformer-ctc-small"), "--frames", 64,
                    "-o", tmp_path / "c.onnx")
    assert rc == 0, se
    assert _bn_count(tmp_path / "c.onnx") == 8  # one per conformer conv module
    path, net = _fake_nemo(tmp_path / "m.nemo")
    rc, _, se = cli(capsys, "export-nemo", path, "--frames", 96, "-o", tmp_path / "m.onnx")
    assert rc == 0, se
    x = np.random.default_rng(0).standard_normal((1, 64, 96)).astype(np.float32)
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
    assert np.abs(got - ref).max() < 1e-3


def test_export_nemo_errors_one_line_nothing_left(capsys, tmp_path):
    out = tmp_path / "o" / "x.onnx"
    bad = _tar(tmp_path / "bad.nemo", [({"name": "../evil"}, b"x")])
    (tmp_path / "junk.nemo").write_bytes(b"junk")
    for src in (tmp_path / "missing.nemo", tmp_path / "junk.nemo", bad, "no-such-arch"):
        rc, _, err = cli(capsys, "export-nemo", src, "-o", out)
        assert rc == 2 and len(err.strip().splitlines()) == 1 and err.startswith("zsq: error:"), err
        assert not out.exists() and not (tmp_path / "evil").exists()
    assert not out.parent.exists() or list(out.parent.iterdir()) == []
    rc, _, err = cli(capsys, "export-nemo", "quartznet-tiny", "--checkpoint", bad, "-o", out)
    assert rc == 2 and "unsafe" in err and not out.exists()


def test_quantize_a_nemo_file_is_export_nemo_then_quantize(capsys, tmp_path, monkeypatch):
    """``zsq quantize x.nemo`` = ``zsq export-nemo x.nemo`` + ``zsq quantize m.onnx``, file for file; the export's
    temporary folder is gone afterwards."""
    import tempfile

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    path, _ = _fake_nemo(tmp_path / "x.nemo")
    rc, so, se = cli(capsys, "quantize", path, "--frames", 48, "--num-batches", 1, "-o", tmp_path / "q")
    assert rc == 0 and "time mask" in so, se
    assert list(tmp.iterdir()) == []
    rc, _, se = cli(capsys, "export-nemo", path, "-o", tmp_path / "m.onnx", "--frames", 48)
    assert rc == 0, se
    rc, _, se = cli(capsys, "quantize", tmp_path / "m.onnx", "--frames", 48, "--num-batches", 1, "-o", tmp_path / "q2")
    assert rc == 0, se
    m1, m2 = (json.loads((tmp_path / d / "manifest.json").read_text()) for d in ("q", "q2"))
    for f in ("module.json", "quant.json", "calibration.json"):
        assert m1["files"][f] == m2["files"][f], f
    assert m1["source"]["path"] == f"nemo:{path}" and m1["source"]["sha256"] == m2["source"]["sha256"]


# ------------------------------------------------------------------ against NeMo itself

@pytest.fixture(scope="module")
def nemo():
    pytest.importorskip("nemo.collections.asr", reason="NeMo not installed (pip install -e '.[nemo]' torch==2.13.0)")
    return nemo_io


def _randomize_bn(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)


@pytest.mark.parametrize("arch", SMALL)
def test_nets_equal_nemo_key_for_key_and_numerically(nemo, arch):
    m = nemo.build_nemo(arch)
    _randomize_bn(m)
    sd = m.state_dict()
    nemo_keys = {k for k in sd if k.startswith(("encoder.", "decoder."))}
    ours = nemo.torch_from_config(arch)
    assert nemo_keys == set(ours.state_dict())
    assert {k.split(".")[0] for k in sd} - {"encoder", "decoder"} <= {"preprocessor"}
    assert all(tuple(sd[k].shape) == tuple(v.shape) for k, v in ours.state_dict().items())
    assert count_params(ours) == sum(p.numel() for n, p in m.named_parameters() if not n.startswith("preprocessor"))
    net = nemo.nemo_to_torch(m)
    T = 160
    x = torch.randn(2, 64, T, generator=torch.Generator().manual_seed(2))
    lens = torch.tensor([T, T // 2 + 3])
    with torch.no_grad():
        ref_full = m.forward(processed_signal=x, processed_signal_length=torch.tensor([T, T]))[0]
        got_full = torch.log_softmax(net(x), -1)
        ref, ref_len = m.forward(processed_signal=x, processed_signal_length=lens)[:2]
        got, got_len = net(x, lens)
        got = torch.log_softmax(got, -1)
    assert (ref_full - got_full).abs().max().item() < 1e-4
    assert torch.equal(ref_len.long(), got_len.long())
    for b in range(2):  # padded batch: the valid frames agree (NeMo's masking reproduced)
        n = int(ref_len[b])
        assert (ref[b, :n] - got[b, :n]).abs().max().item() < 1e-4


def test_mel_parity_with_nemo_preprocessor(nemo, tmp_path):
    """Our MelFrontend vs NeMo's AudioToMelSpectrogramPreprocessor (our YAML settings, dither 0, eval)."""
    from scipy.signal import resample_poly

    from zsq_tvm.audio.mel import MelFrontend, wav_bytes_to_float

    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng not installed")
    from nemo.collections.asr.modules import AudioToMelSpectrogramPreprocessor

    wav = subprocess.run(["espeak-ng", "--stdout", "the quick brown fox jumps over the lazy dog"],
                         capture_output=True, check=True).stdout
    audio, sr = wav_bytes_to_float(wav)
    audio = resample_poly(audio, 16000, sr).astype(np.float32) if sr != 16000 else audio
    pcfg = {k: v for k, v in nemo.load_config("quartznet5x5")["preprocessor"].items() if k != "_target_"}
    pcfg["dither"] = 0.0
    pp = AudioToMelSpectrogramPreprocessor(**pcfg).eval()
    ours = MelFrontend().eval()
    a = torch.from_numpy(audio)
    batch = torch.zeros(2, len(a))
    batch[0], batch[1, : len(a) * 2 // 3] = a, a[: len(a) * 2 // 3]
    lens = torch.tensor([len(a), len(a) * 2 // 3])
    with torch.no_grad():
        ref, ref_len = pp(input_signal=batch, length=lens)
        got, got_len = ours(batch, lens)
    assert ref.shape == got.shape and torch.equal(ref_len.long(), got_len.long())
    err = (ref - got).abs().max().item()
    assert err < 1e-4, f"mel parity {err:.3g}"  # measured ~7e-7 (NeMo 3.0.0, torch 2.13 CPU)


def test_preprocessor_mismatch_is_reported(tmp_path):
    for arch in nemo_io.NEMO_ARCHS:
        assert nemo_io.preprocessor_mismatch(nemo_io.load_config(arch)) == []
    cfg = nemo_io.arch_config("quartznet-tiny")
    cfg["preprocessor"].update(features=80, window_size=0.025)  # NeMo Conformer-CTC's features
    got = nemo_io.preprocessor_mismatch(cfg)
    assert any(g.startswith("features=80") for g in got) and any(g.startswith("window_size=0.025") for g in got)
