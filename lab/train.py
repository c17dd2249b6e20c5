"""Train the reference CTC models (plain torch, NeMo-compatible parameter names).

Two steps, so that several models can train at once from one feature cache:

    python3 -m lab.train prep  --corpus corpus/ -o feats/          # mel features, once
    python3 -m lab.train fit   --feats feats/ --arch quartznet5x5 -o ckpt/ --minutes 60

``fit`` is budgeted by wall time (what a lent GPU or a CPU session gives us): linear
warm-up over the first steps, a constant peak, then cosine decay over the last 35 % of
the budget.  Utterances are bucketed by length; the first 10 % of the budget uses only
short utterances (CTC leaves its all-blank phase faster on them).  SpecAugment is
switched on after warm-up.  It checkpoints (fp16) every few minutes and resumes from
``--resume``.  At the end it decodes every split greedily and writes WER/CER to JSON.

Checkpoint averaging (SWA): ``fit --schedule constant --snapshot-every M`` keeps the weights every M
minutes of a constant-LR phase, and

    python3 -m lab.train average ck/ARCH.snap*.pt [more.pt] -o avg.pt [--feats feats/]

writes their element-wise mean as a normal checkpoint (``--feats``: BN statistics re-estimated on the
training features instead of averaged).

Several feature caches train as one pool (fresh corpus rounds added to ones the model has seen):
``fit --feats feats_r1/ --feats feats_r3/ --train-round 1,3``; the splits evaluated after training come
from the first cache.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import time
import types
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch

from zsq_tvm.audio.mel import MelFrontend, load_wav
from zsq_tvm.ctc import greedy_ids
from zsq_tvm.evaluate import read_manifest
from zsq_tvm.metrics import cer, wer
from zsq_tvm.zoo.nets import VOCAB, build_model, count_params

CHAR_TO_ID = {c: i for i, c in enumerate(VOCAB)}
BLANK = len(VOCAB)


def prep(corpus: str, out: str, device: str = "cpu", workers: int = 8) -> None:
    """Compute mel features of every ``*.json`` manifest in ``corpus`` -> ``out/{split}.pt`` (fp16)."""
    from tqdm import tqdm
    fe = MelFrontend().to(device)
    Path(out).mkdir(parents=True, exist_ok=True)
    for man in sorted(Path(corpus).glob("*.json")):
        rows = read_manifest(str(man), check_audio=False)
        with ThreadPoolExecutor(workers) as ex:
            wavs = list(ex.map(lambda r: load_wav(r.audio_filepath), rows))
        feats = []
        order = np.argsort([len(w) for w in wavs])
        for s in tqdm(range(0, len(order), 64), desc=f"mel {man.stem}", mininterval=5):
            idx = order[s:s + 64]
            lens = torch.tensor([len(wavs[i]) for i in idx])
            batch = torch.zeros(len(idx), int(lens.max()))
            for k, i in enumerate(idx):
                batch[k, :len(wavs[i])] = torch.from_numpy(wavs[i])
            f, fl = fe(batch.to(device), lens.to(device))
            for k, i in enumerate(idx):
                feats.append((int(i), f[k, :, :int(fl[k])].half().cpu()))
        feats.sort(key=lambda t: t[0])
        torch.save({"feats": [f for _, f in feats], "texts": [r.text for r in rows]}, Path(out) / f"{man.stem}.pt")
        print(f"{man.stem}: {len(rows)} utterances", flush=True)


def encode_text(t: str) -> List[int]:
    return [CHAR_TO_ID[c] for c in t if c in CHAR_TO_ID]


def greedy_decode(logits: torch.Tensor, lens: torch.Tensor) -> List[str]:
    """Greedy CTC decode of ``[B, T', C]`` logits, each row cut to its valid length, spaces squeezed."""
    a, out = logits.float().cpu().numpy(), []
    for row, n in zip(a, lens.cpu().numpy()):
        ids = greedy_ids(row[None, :n], blank=BLANK, layout="BTV")[0]
        out.append(" ".join("".join(VOCAB[i] for i in ids).split()))
    return out


def _batches(lengths: np.ndarray, max_frames: int, max_utts: int, rng: random.Random, limit: int = 0):
    idx = [i for i in np.argsort(lengths) if not limit or lengths[i] <= limit]
    batches, cur = [], []
    for i in idx:
        if cur and (len(cur) + 1) * lengths[i] > max_frames or len(cur) >= max_utts:
            batches.append(cur)
            cur = []
        cur.append(i)
    if cur:
        batches.append(cur)
    rng.shuffle(batches)
    return batches


def _depthwise_channels_last_forward(self: torch.nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
    """``self(x)`` for a depthwise ``Conv1d``, run as a channels-last ``conv2d``.

    Undilated: ``x`` as ``[B, C, 1, T]``, the kernel as ``[C, 1, 1, K]``, stride and padding on the width
    axis.  Dilated (d > 1, stride 1), by phases: with ``x'`` the zero-padded input,
    ``y[d·q + r] = Σ_j w[j] · x'[d·(q + j) + r]``, so phase ``r``'s outputs are an *undilated* conv of the
    phase-``r`` samples ``x'[r::d]``.  Reshaping ``x'`` (padded to a multiple of d) to ``[B, C, d, T'/d]``
    puts the d phases on the height axis of one conv2d with a ``[C, 1, 1, K]`` kernel; the output is
    interleaved back.  Same result up to float rounding.
    """
    d, k, p = self.dilation[0], self.kernel_size[0], self.padding[0]
    w = self.weight.unsqueeze(2)
    if d == 1:
        x4 = x.unsqueeze(2).contiguous(memory_format=torch.channels_last)
        y = torch.nn.functional.conv2d(x4, w, self.bias, (1, self.stride[0]), (0, p), 1, self.groups)
        # back to the plain [B, C, T] layout, so the pointwise conv, BN and their backward run as before
        return y.squeeze(2).contiguous()
    b, c, t = x.shape
    length = t + 2 * p
    t_out = length - d * (k - 1)
    m = -(-length // d)  # samples per phase
    xp = torch.nn.functional.pad(x, (p, p + m * d - length))
    x4 = xp.view(b, c, m, d).transpose(2, 3).contiguous(memory_format=torch.channels_last)
    y = torch.nn.functional.conv2d(x4, w, self.bias, 1, 0, 1, self.groups)  # [B, C, d, m - k + 1]
    return y.transpose(2, 3).reshape(b, c, -1)[:, :, :t_out].contiguous()


def use_channels_last_depthwise(model: torch.nn.Module) -> int:
    """Route ``model``'s depthwise ``Conv1d`` layers through oneDNN's channels-last kernels.

    Why: PyTorch runs a ``Conv1d`` with ``groups == channels`` on the plain-layout path, which on our 2-core
    CPU is ~40x less efficient per MAC than the pointwise convs: for QuartzNet-5x5 the depthwise convs took
    ~3.2 s of a 4.4 s training step (12,000 frames).  The channels-last kernel runs a 512-channel k=75 layer's
    forward and backward ~3x faster.  Dilated layers (QuartzNet's epilogue) were slower as a dilated
    channels-last conv2d, so they run as an undilated one over the d phases of the input
    (:func:`_depthwise_channels_last_forward`); dilated layers with a stride keep the plain path.
    A whole QuartzNet-5x5 step (24 x 500 frames, 2 threads): 4.4 s plain -> 2.5 s with all 27 layers routed
    (2.8 s with the dilated one left plain; `bench/train_step_speed.py`).

    Training-time only: it replaces ``forward`` on the module instances; parameter names, the state dict and
    the exported ONNX graph (built from a fresh model) are unchanged.  Returns how many layers it routed.
    """
    n = 0
    for mod in model.modules():
        if (isinstance(mod, torch.nn.Conv1d) and mod.groups > 1 and mod.groups == mod.in_channels
                and (mod.dilation[0] == 1 or mod.stride[0] == 1)
                and mod.padding_mode == "zeros" and isinstance(mod.padding, tuple)):
            mod.forward = types.MethodType(_depthwise_channels_last_forward, mod)
            n += 1
    return n


def _collate(data, idx, device):
    feats = [data["feats"][i] for i in idx]
    lens = torch.tensor([f.shape[1] for f in feats])
    x = torch.zeros(len(idx), feats[0].shape[0], int(lens.max()), dtype=torch.float16)
    for k, f in enumerate(feats):
        x[k, :, :f.shape[1]] = f
    tgt = [encode_text(data["texts"][i]) for i in idx]
    tl = torch.tensor([len(t) for t in tgt])
    return x.to(device).float(), lens.to(device), torch.tensor(sum(tgt, [])).to(device), tl.to(device)


def spec_augment(x: torch.Tensor, rng: torch.Generator, n_freq=2, f_width=15, n_time=2, t_width=25):
    b, f, t = x.shape
    for _ in range(n_freq):
        w = torch.randint(0, f_width + 1, (b,), generator=rng)
        s = (torch.rand(b, generator=rng) * (f - w)).long()
        m = (torch.arange(f)[None] >= s[:, None]) & (torch.arange(f)[None] < (s + w)[:, None])
        x = x.masked_fill(m[:, :, None].to(x.device), 0.0)
    for _ in range(n_time):
        w = torch.randint(0, t_width + 1, (b,), generator=rng)
        s = (torch.rand(b, generator=rng) * (t - w).clamp(min=1)).long()
        m = (torch.arange(t)[None] >= s[:, None]) & (torch.arange(t)[None] < (s + w)[:, None])
        x = x.masked_fill(m[:, None, :].to(x.device), 0.0)
    return x


@torch.no_grad()
def evaluate(model, data, device, max_frames=40000) -> Dict[str, float]:
    model.eval()
    lengths = np.array([f.shape[1] for f in data["feats"]])
    hyps, refs = [None] * len(lengths), data["texts"]
    for idx in _batches(lengths, max_frames, 256, random.Random(0)):
        x, lens, _, _ = _collate(data, idx, device)
        with torch.autocast(device_type="cuda" if device.startswith("cuda") else "cpu", dtype=torch.bfloat16,
                            enabled=device.startswith("cuda")):
            logits, olens = model(x, lens)
        for i, h in zip(idx, greedy_decode(logits.float(), olens)):
            hyps[i] = h
    w, e, n = wer(refs, hyps)
    model.train()
    return {"wer": w, "cer": cer(refs, hyps), "n_utterances": len(refs), "n_words": n,
            "examples": [[refs[i], hyps[i]] for i in range(min(3, len(refs)))]}


def save_checkpoint(model, path: Path, meta: dict) -> None:
    sd = {k: (v.half() if v.is_floating_point() else v).cpu() for k, v in model.state_dict().items()}
    tmp = path.with_suffix(".tmp")
    torch.save({"arch": model.arch, "vocab": model.vocab, "state_dict": sd, "meta": meta}, tmp)
    os.replace(tmp, path)


def load_train_features(feats: Sequence[str]) -> dict:
    """``train.pt`` of each feature cache in ``feats``, concatenated in order into one training pool.

    The order is kept so that a run over ``[a, b]`` draws the same batches as one over a cache whose
    ``train.pt`` is ``a``'s utterances followed by ``b``'s.
    """
    pool: dict = {"feats": [], "texts": []}
    for d in feats:
        f = Path(d) / "train.pt"
        if not f.is_file():
            raise FileNotFoundError(f"{f} does not exist: make it with `python3 -m lab.train prep "
                                    f"--corpus CORPUS -o {d}`")
        data = torch.load(f)
        if len(data["feats"]) != len(data["texts"]):
            raise ValueError(f"{f}: {len(data['feats'])} feature matrices but {len(data['texts'])} texts; "
                             "re-run `train prep`")
        pool["feats"] += data["feats"]
        pool["texts"] += data["texts"]
    return pool


def fit(feats: Union[str, Sequence[str]], arch: str, out: str, minutes: float, device: str, lr: float, seed: int = 0,
        resume: str = "", max_frames: int = 24000, warmup: int = 300, ckpt_every_s: float = 120.0,
        deadline: float = 0.0, log_every: int = 50, json_dir: str = "",
        eval_splits: Optional[List[str]] = None, train_round: Union[int, Sequence[int]] = 0,
        schedule: str = "cosine", snapshot_every_s: float = 0.0) -> dict:
    """Train ``arch`` for ``minutes`` on ``feats/train.pt``; checkpoint, evaluate, write ``out/{arch}.pt``.

    ``feats``: one feature cache or several, whose training splits form one pool
    (:func:`load_train_features`); the other splits of the first are evaluated.  ``train_round``: the
    corpus round of each cache, recorded in the checkpoint (an int for one cache, else a list).

    ``schedule``: ``cosine`` (warm-up, constant peak, cosine decay over the last 35 %) or ``constant``
    (warm-up, then ``lr`` to the end: the phase whose snapshots :func:`average` combines, as in SWA).
    ``snapshot_every_s`` > 0 also keeps a copy of the weights every that many seconds,
    ``out/{arch}.snapNN.pt``.
    """
    if schedule not in ("cosine", "constant"):
        raise ValueError(f"unknown schedule {schedule!r}: use cosine or constant")
    feats = [feats] if isinstance(feats, (str, os.PathLike)) else list(feats)
    if not feats:
        raise ValueError("no feature cache given: pass --feats DIR (more than once to train on several)")
    rounds = [train_round] if isinstance(train_round, int) else list(train_round)
    if len(rounds) > 1 and len(rounds) != len(feats):
        raise ValueError(f"{len(rounds)} training rounds for {len(feats)} feature caches: give one round "
                         "per --feats, in the same order")
    train_round = rounds[0] if len(rounds) == 1 else rounds
    torch.manual_seed(seed)
    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    start = time.time()
    end = start + minutes * 60 if not deadline else min(deadline, start + minutes * 60)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    train = load_train_features(feats)
    model = build_model(arch).to(device)
    if device == "cpu":
        use_channels_last_depthwise(model)
    steps_done, previous_runs = 0, []
    if resume and Path(resume).exists():
        ck = torch.load(resume, map_location="cpu", weights_only=True)
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in ck["state_dict"].items()})
        prev = ck["meta"]
        steps_done = prev.get("steps", 0)
        # the model card's training history: what each earlier run did, without its step log
        previous_runs = list(prev.get("previous_runs", [])) + [
            {k: prev[k] for k in ("steps", "hours_seen", "minutes", "lr", "device", "gpu", "train_round") if k in prev}]
        warmup = min(warmup, 20)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=1e-3)
    ctc = torch.nn.CTCLoss(blank=BLANK, zero_infinity=True)
    lengths = np.array([f.shape[1] for f in train["feats"]])
    cuda = device.startswith("cuda")
    step, seen_s, losses = 0, 0.0, []
    last_ck = last_snap = time.time()
    n_snap = 0
    log = []
    print(f"[{arch}] {count_params(model) / 1e6:.2f} M params, {len(lengths)} utterances, "
          f"{lengths.sum() / 100 / 3600:.1f} h, budget {(end - start) / 60:.1f} min", flush=True)
    model.train()
    while time.time() < end:
        frac = (time.time() - start) / max(end - start, 1)
        limit = 500 if frac < 0.1 and not resume else 0
        for idx in _batches(lengths, max_frames, 128, rng, limit):
            now = time.time()
            if now >= end:
                break
            frac = (now - start) / (end - start)
            scale = min(1.0, (step + 1) / warmup)
            if frac > 0.65 and schedule == "cosine":
                scale *= 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * (frac - 0.65) / 0.35))
            for pg in opt.param_groups:
                pg["lr"] = lr * scale
            x, lens, tgt, tl = _collate(train, idx, device)
            if step >= warmup:
                x = spec_augment(x, g)
            with torch.autocast(device_type="cuda" if cuda else "cpu", dtype=torch.bfloat16, enabled=cuda):
                logits, olens = model(x, lens)
            lp = torch.log_softmax(logits.float(), -1).transpose(0, 1)
            loss = ctc(lp, tgt, olens, tl)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            step += 1
            seen_s += float(lens.sum()) / 100
            losses.append(float(loss.detach()))
            if step % log_every == 0:
                msg = {"step": step, "loss": float(np.mean(losses[-log_every:])), "lr": lr * scale,
                       "hours_seen": seen_s / 3600, "elapsed_min": (time.time() - start) / 60}
                log.append(msg)
                print(f"[{arch}] " + json.dumps(msg), flush=True)
            if time.time() - last_ck > ckpt_every_s:
                save_checkpoint(model, out_dir / f"{arch}.pt", {"steps": steps_done + step, "log": log})
                last_ck = time.time()
            if snapshot_every_s and time.time() - last_snap > snapshot_every_s:
                n_snap += 1
                save_checkpoint(model, out_dir / f"{arch}.snap{n_snap:02d}.pt",
                                {"arch": arch, "steps": steps_done + step, "hours_seen": seen_s / 3600,
                                 "lr": lr * scale, "train_round": train_round, "snapshot": n_snap})
                last_snap = time.time()
        else:
            continue
        break
    meta = {"arch": arch, "params": count_params(model), "steps": steps_done + step, "hours_seen": seen_s / 3600,
            "minutes": (time.time() - start) / 60, "lr": lr, "seed": seed, "device": device,
            "gpu": torch.cuda.get_device_name(0) if cuda else "cpu", "log": log,
            "train_round": train_round, "previous_runs": previous_runs, "schedule": schedule}
    save_checkpoint(model, out_dir / f"{arch}.pt", meta)
    results = {}
    for split_file in sorted(Path(feats[0]).glob("*.pt")):
        if split_file.stem == "train" or (eval_splits and split_file.stem not in eval_splits):
            continue
        results[split_file.stem] = evaluate(model, torch.load(split_file), device)
        print(f"[{arch}] {split_file.stem}: WER {results[split_file.stem]['wer'] * 100:.2f} % "
              f"CER {results[split_file.stem]['cer'] * 100:.2f} %", flush=True)
    meta["eval"] = results
    save_checkpoint(model, out_dir / f"{arch}.pt", meta)
    (Path(json_dir or out_dir) / f"{arch}.json").write_text(json.dumps({k: v for k, v in meta.items()}, indent=1))
    return meta


def average(checkpoints: List[str], out: str, feats: str = "", bn_batches: int = 100, max_frames: int = 12000,
            seed: int = 0) -> dict:
    """Average the weights of checkpoints of one architecture (SWA / checkpoint averaging) -> ``out``.

    Float parameters: the element-wise mean θ̄ = (1/n) Σ θ_i.  BatchNorm running statistics are averaged like
    the rest by default; with ``feats`` they are re-estimated for θ̄ instead (a BN's statistics depend on every
    weight before it): the cumulative mean and (unbiased) variance of each BN input over ``bn_batches``
    training batches (``feats/train.pt``, no SpecAugment) — SWA's ``update_bn``.  On QuartzNet-5x5, trained
    with SpecAugment, averaging was the better of the two (docs/models/quartznet5x5.md).  The result is a
    normal checkpoint (fp16), its ``meta`` lists the sources.
    """
    if len(checkpoints) < 2:
        raise ValueError("average needs at least two checkpoints")
    cks = [torch.load(c, map_location="cpu", weights_only=True) for c in checkpoints]
    arch = cks[0]["arch"]
    for c, ck in zip(checkpoints, cks):
        if ck["arch"] != arch or set(ck["state_dict"]) != set(cks[0]["state_dict"]):
            raise ValueError(f"{c} is a {ck['arch']!r} checkpoint with other parameters than {checkpoints[0]} "
                             f"({arch!r}): only checkpoints of one architecture average")
    sd = {}
    for k, v in cks[0]["state_dict"].items():
        sd[k] = (torch.stack([ck["state_dict"][k].float() for ck in cks]).mean(0) if v.is_floating_point()
                 else v)  # integer buffers (num_batches_tracked) are counters, not weights
    model = build_model(arch)
    model.load_state_dict(sd)
    bn_info = "averaged"
    if feats:
        bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative moving average: the plain mean over the batches seen
        data = load_train_features([feats])
        lengths = np.array([f.shape[1] for f in data["feats"]])
        batches = _batches(lengths, max_frames, 128, random.Random(seed))[:bn_batches]
        model.train()
        with torch.no_grad():
            for idx in batches:
                x, lens, _, _ = _collate(data, idx, "cpu")
                model(x, lens)
        model.eval()
        bn_info = f"re-estimated on {len(batches)} batches of {feats}/train.pt"
    meta = dict(cks[0]["meta"])
    meta.pop("eval", None)  # the sources' WER does not describe the average
    meta["averaged_from"] = [{"path": str(c), **{k: ck["meta"].get(k) for k in ("steps", "hours_seen", "lr",
                                                                                  "train_round", "snapshot")
                                                 if k in ck["meta"]}} for c, ck in zip(checkpoints, cks)]
    meta["bn_statistics"] = bn_info
    model.vocab = cks[0]["vocab"]  # build_model gives the default vocabulary; keep the checkpoints'
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(model, Path(out), meta)
    return meta


def _rounds(text: str) -> List[int]:
    try:
        rounds = [int(r) for r in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a round number or a comma-separated list of them")
    if any(r < 0 for r in rounds):
        raise argparse.ArgumentTypeError(f"rounds must be >= 0, got {text!r}")
    return rounds


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python3 -m lab.train")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prep")
    p.add_argument("--corpus", required=True)
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    f = sub.add_parser("fit")
    f.add_argument("--feats", required=True, action="append",
                   help="feature cache from `prep`; repeat it to train on the union of several")
    f.add_argument("--arch", required=True)
    f.add_argument("-o", "--output", required=True)
    f.add_argument("--minutes", type=float, default=60)
    f.add_argument("--deadline", type=float, default=0.0, help="absolute unix time to stop training by")
    f.add_argument("--lr", type=float, default=2e-3)
    f.add_argument("--warmup", type=int, default=300)
    f.add_argument("--max-frames", type=int, default=24000)
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--resume", default="")
    f.add_argument("--log-every", type=int, default=50)
    f.add_argument("--json-dir", default="")
    f.add_argument("--eval-splits", default="", help="comma-separated splits to evaluate after training "
                   "(default: every split in --feats except train)")
    f.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    f.add_argument("--train-round", type=_rounds, default=[0], help="the corpus round (`lab.corpus "
                   "synth --train-round`) the training split in --feats was made with, comma-separated for several "
                   "--feats (e.g. 1,3); recorded in the checkpoint")
    f.add_argument("--schedule", choices=("cosine", "constant"), default="cosine",
                   help="cosine: decay over the last 35 %% of the budget; constant: the SWA phase (see average)")
    f.add_argument("--snapshot-every", type=float, default=0.0,
                   help="minutes: also keep the weights every this often as ARCH.snapNN.pt (for average)")
    v = sub.add_parser("average", help="average checkpoints of one architecture (SWA)")
    v.add_argument("checkpoints", nargs="+")
    v.add_argument("-o", "--output", required=True)
    v.add_argument("--feats", default="", help="feature cache whose train.pt re-estimates the BN statistics "
                   "(default: average them too)")
    v.add_argument("--bn-batches", type=int, default=100)
    v.add_argument("--max-frames", type=int, default=12000)
    v.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    if a.cmd == "prep":
        prep(a.corpus, a.output, a.device)
    elif a.cmd == "average":
        meta = average(a.checkpoints, a.output, a.feats, a.bn_batches, a.max_frames, a.seed)
        print(f"{a.output}: mean of {len(a.checkpoints)} checkpoints, BN statistics {meta['bn_statistics']}")
    else:
        fit(a.feats, a.arch, a.output, a.minutes, a.device, a.lr, a.seed, a.resume, a.max_frames, a.warmup,
            deadline=a.deadline, log_every=a.log_every, json_dir=a.json_dir,
            eval_splits=[s for s in a.eval_splits.split(",") if s] or None, train_round=a.train_round,
            schedule=a.schedule, snapshot_every_s=a.snapshot_every * 60)


if __name__ == "__main__":
    main()
