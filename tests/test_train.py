"""Training tools: checkpoint averaging (SWA) and the constant-LR schedule with snapshots."""
import json

import numpy as np
import pytest
import torch

from lab import train
from zsq_tvm.zoo.nets import build_model

ARCH = "quartznet-tiny"


def _checkpoint(path, seed):
    torch.manual_seed(seed)
    m = build_model(ARCH)
    for mod in m.modules():  # non-trivial BN statistics, different per checkpoint
        if isinstance(mod, torch.nn.BatchNorm1d):
            mod.running_mean.uniform_(-1, 1)
            mod.running_var.uniform_(0.5, 2)
    train.save_checkpoint(m, path, {"steps": 10 * seed, "lr": 1e-3})
    return torch.load(path, weights_only=True)["state_dict"]


def _feats(d, n=6, frames=96, seed=0):
    """A feature cache as ``train prep`` writes it: equal lengths, so batches have no padding."""
    g = torch.Generator().manual_seed(seed)
    d.mkdir(parents=True, exist_ok=True)
    feats = [torch.randn(64, frames, generator=g).half() for _ in range(n)]
    torch.save({"feats": feats, "texts": ["ab cd"] * n}, d / "train.pt")
    return feats


def test_average_is_the_elementwise_mean(tmp_path):
    sds = [_checkpoint(tmp_path / f"c{i}.pt", i) for i in range(3)]
    meta = train.average([str(tmp_path / f"c{i}.pt") for i in range(3)], str(tmp_path / "avg.pt"))
    out = torch.load(tmp_path / "avg.pt", weights_only=True)
    assert out["arch"] == ARCH and meta["bn_statistics"] == "averaged"
    assert [s["steps"] for s in out["meta"]["averaged_from"]] == [0, 10, 20]
    n_float = 0
    for k, v in out["state_dict"].items():
        if v.is_floating_point():
            want = torch.stack([sd[k].float() for sd in sds]).mean(0)
            # the checkpoint is fp16: the mean of fp16 values rounded once more to fp16
            torch.testing.assert_close(v.float(), want.half().float(), rtol=0, atol=0)
            n_float += 1
        else:
            assert torch.equal(v, sds[0][k])
    assert n_float > 20
    # the average loads like any checkpoint
    build_model(ARCH).load_state_dict({k: v.float() if v.is_floating_point() else v
                                       for k, v in out["state_dict"].items()})


def test_average_reestimates_batchnorm_statistics(tmp_path):
    for i in range(2):
        _checkpoint(tmp_path / f"c{i}.pt", i)
    feats = _feats(tmp_path / "feats")
    train.average([str(tmp_path / "c0.pt"), str(tmp_path / "c1.pt")], str(tmp_path / "avg.pt"),
                  feats=str(tmp_path / "feats"), max_frames=10 ** 6)
    out = torch.load(tmp_path / "avg.pt", weights_only=True)
    assert "re-estimated on 1 batches" in out["meta"]["bn_statistics"]
    # the first BN's statistics must be those of its input on the training features, for the averaged weights
    m = build_model(ARCH)
    m.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in out["state_dict"].items()})
    bn = next(mod for mod in m.modules() if isinstance(mod, torch.nn.BatchNorm1d))
    seen = []
    bn.register_forward_hook(lambda mod, inp, o: seen.append(inp[0].detach()))
    m.eval()
    x = torch.stack([f.float() for f in feats])
    with torch.no_grad():
        m(x, torch.full((len(feats),), x.shape[2]))
    a = seen[0].transpose(0, 1).reshape(seen[0].shape[1], -1).double()
    mean, var = a.mean(1), a.var(1, unbiased=True)
    # fp16 storage of the statistics bounds the agreement
    assert torch.allclose(bn.running_mean.double(), mean, rtol=2e-3, atol=2e-3)
    assert torch.allclose(bn.running_var.double(), var, rtol=2e-3, atol=2e-3)
    sd0 = torch.load(tmp_path / "c0.pt", weights_only=True)["state_dict"]
    first = next(k for k in sd0 if k.endswith("running_mean"))
    assert not torch.allclose(out["state_dict"][first].float(), sd0[first].float())


def test_average_refuses_mixed_architectures(tmp_path):
    _checkpoint(tmp_path / "a.pt", 0)
    m = build_model("quartznet5x5")
    train.save_checkpoint(m, tmp_path / "b.pt", {"steps": 1})
    with pytest.raises(ValueError, match="only checkpoints of one architecture average"):
        train.average([str(tmp_path / "a.pt"), str(tmp_path / "b.pt")], str(tmp_path / "avg.pt"))
    assert not (tmp_path / "avg.pt").exists()
    with pytest.raises(ValueError, match="at least two"):
        train.average([str(tmp_path / "a.pt")], str(tmp_path / "avg.pt"))


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_fit_schedule_and_snapshots(tmp_path, schedule):
    _feats(tmp_path / "feats", n=4, frames=64)
    meta = train.fit(str(tmp_path / "feats"), ARCH, str(tmp_path / "ck"), minutes=0.12, device="cpu", lr=1e-3,
                     max_frames=128, warmup=1, log_every=1, schedule=schedule, snapshot_every_s=1.0)
    lrs = [e["lr"] for e in meta["log"]]
    assert len(lrs) >= 4, "too few steps to see the schedule"
    if schedule == "constant":
        assert lrs == [1e-3] * len(lrs)
    else:  # the cosine decay of the last 35 % of the budget
        assert lrs[-1] < 0.5e-3 and lrs[0] == 1e-3
    snaps = sorted((tmp_path / "ck").glob(f"{ARCH}.snap*.pt"))
    assert snaps, "no snapshot was kept"
    s = torch.load(snaps[0], weights_only=True)
    assert s["meta"]["snapshot"] == 1 and 0 < s["meta"]["steps"] <= meta["steps"]
    assert json.loads((tmp_path / "ck" / f"{ARCH}.json").read_text())["schedule"] == schedule


def test_fit_rejects_an_unknown_schedule(tmp_path):
    with pytest.raises(ValueError, match="unknown schedule"):
        train.fit(str(tmp_path), ARCH, str(tmp_path / "ck"), minutes=0.01, device="cpu", lr=1e-3, schedule="linear")


def test_channels_last_depthwise_matches_plain_conv():
    """The CPU training fast path gives the plain model's outputs and gradients (float rounding apart)."""
    torch.manual_seed(0)
    plain = build_model(ARCH).train()
    fast = build_model(ARCH).train()
    fast.load_state_dict(plain.state_dict())
    n = train.use_channels_last_depthwise(fast)
    depthwise = [m for m in plain.modules() if isinstance(m, torch.nn.Conv1d) and m.groups > 1]
    # every depthwise layer is routed, the dilated epilogue conv (by phases) included
    assert n == len(depthwise) and any(m.dilation[0] > 1 for m in depthwise)
    x = torch.randn(3, 64, 150)
    lens = torch.tensor([150, 120, 97])
    outs = []
    for m in (plain, fast):
        y, olens = m(x, lens)
        (y.float().pow(2) * torch.linspace(0, 1, y.shape[-1])).sum().backward()
        outs.append((y, olens, {k: p.grad.clone() for k, p in m.named_parameters()}))
    torch.testing.assert_close(outs[1][0], outs[0][0], rtol=1e-4, atol=1e-4)
    assert torch.equal(outs[1][1], outs[0][1])
    for k, g in outs[0][2].items():
        torch.testing.assert_close(outs[1][2][k], g, rtol=1e-3, atol=1e-4 * float(g.abs().max()), msg=k)
    # the state dict, which checkpoints and the exporter use, is the plain model's
    assert list(fast.state_dict()) == list(plain.state_dict())


@pytest.mark.parametrize("k,d,t,pad", [(5, 2, 37, 4), (7, 3, 20, 9), (87, 2, 300, 86), (3, 2, 10, 0), (4, 3, 31, 5)])
def test_dilated_depthwise_by_phases_matches_conv1d(k, d, t, pad):
    """The phase decomposition of a dilated depthwise conv: odd/even lengths, "same" and other paddings."""
    torch.manual_seed(k + d + t)
    conv = torch.nn.Conv1d(6, 6, k, padding=pad, dilation=d, groups=6, bias=True).double()
    x = torch.randn(2, 6, t, dtype=torch.double)
    want = conv(x)
    assert train.use_channels_last_depthwise(conv) == 1
    got = conv(x)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_load_train_features_concatenates_caches_in_order(tmp_path):
    a = _feats(tmp_path / "a", n=3, seed=0)
    b = _feats(tmp_path / "b", n=2, seed=1)
    pool = train.load_train_features([str(tmp_path / "a"), str(tmp_path / "b")])
    assert len(pool["feats"]) == len(pool["texts"]) == 5
    for got, want in zip(pool["feats"], a + b):
        assert torch.equal(got, want)
    with pytest.raises(FileNotFoundError, match="train prep"):
        train.load_train_features([str(tmp_path / "a"), str(tmp_path / "missing")])


def test_fit_cli_trains_on_several_caches(tmp_path, capsys):
    """``--feats`` twice trains on both; the first cache's other splits are evaluated; rounds are recorded."""
    _feats(tmp_path / "a", n=3, frames=64, seed=0)
    _feats(tmp_path / "b", n=3, frames=64, seed=1)
    torch.save(torch.load(tmp_path / "a" / "train.pt"), tmp_path / "a" / "dev.pt")
    train.main(["fit", "--feats", str(tmp_path / "a"), "--feats", str(tmp_path / "b"), "--arch", ARCH,
                "-o", str(tmp_path / "ck"), "--minutes", "0.05", "--device", "cpu", "--warmup", "1",
                "--max-frames", "128", "--train-round", "1,3"])
    assert " 6 utterances," in capsys.readouterr().out  # both caches' 3 utterances
    meta = json.loads((tmp_path / "ck" / f"{ARCH}.json").read_text())
    assert meta["train_round"] == [1, 3] and meta["steps"] > 0
    assert list(meta["eval"]) == ["dev"]
    with pytest.raises(ValueError, match="one round per --feats"):
        train.fit([str(tmp_path / "a"), str(tmp_path / "b")], ARCH, str(tmp_path / "ck2"), minutes=0.01,
                  device="cpu", lr=1e-3, train_round=[1, 2, 3])
    with pytest.raises(SystemExit):
        train.main(["fit", "--feats", str(tmp_path / "a"), "--arch", ARCH, "-o", str(tmp_path / "ck3"),
                    "--train-round", "one"])
