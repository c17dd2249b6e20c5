"""Paper Tables 1-2 on our trained models: FP32 vs integer-only W8A8 / W6A8 calibrated with synthetic
(zero-shot, eq. 2), random (uniform [-3, 3], the paper's ablation) and real (train split) mels, with
min/max (the paper's) and percentile calibration, averaged over seeds, plus size and BOPs.

    python3 -m bench.zeroshot_table --model quartznet5x5 --seeds 0 1 --limit 200 \\
        --json bench/results/zeroshot_quartznet5x5.json
    python3 -m bench.zeroshot_table --table bench/results/zeroshot_quartznet5x5.json ...   # markdown only

Every quantized cell is an integer-only TVM build (``--target``, default ``host-vnni`` where the CPU
has AVX-512 VNNI, else ``host``; both bit-exact with the numpy reference) of fixed length
``--frames`` T, evaluated with the ``zsq eval`` machinery (:func:`zsq_tvm.evaluate.run_fixed`:
zero-pad / chunk, never truncate; greedy CTC; :func:`zsq_tvm.evaluate.score`).  The FP32 baseline
runs the torch model padded the same way (``zsq eval MODEL --frames-pad T``), so the comparison
is like for like; the unpadded FP32 WER is reported next to it.  With ``--time-mask`` the builds mask
their zero padding (``zsq quantize --time-mask``), and the FP32 row runs the same T-frame chunks unpadded.  Each split uses its first
``--limit`` utterances (the same subset for every row); their mels are computed once.

Per seed: synthesis (``--synth-*``; batch ``b`` of seed ``s`` is seeded by ``[s, b]``), random
calibration data drawn with the seed, and a seeded subset of the ``--real-calib`` manifest; all
three sources give the same number of calibration mels.  Calibration does not depend on the bit
width, so each (source, seed, method) is calibrated once and quantized at every ``--wbits``.
Results are written to the JSON after every cell, so an interrupted run keeps what it measured.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np


SPLITS = {"test": "/tmp/corpus/test.json", "test-heldout-voice": "/tmp/corpus/test-heldout-voice.json",
          "real": str(Path(__file__).resolve().parents[1] / "tests/fixtures/real/real.json")}


def load_split(manifest, limit):
    from lab.corpus import normalize_text
    from zsq_tvm.evaluate import compute_mel, read_manifest

    rows = read_manifest(manifest)
    rows = rows[:limit] if limit else rows
    return [(compute_mel(u.audio_filepath), normalize_text(u.text)) for u in rows]


def wer_of(infer, vocab, data, T, masked=False, unpadded=False):
    """``zsq eval``'s loop on cached mels: fixed-T run (pad / chunk), greedy CTC, corpus WER/CER.

    ``masked``: the model is told each chunk's valid frames (a ``--time-mask`` build, ``infer(x, valid)``).
    ``unpadded``: the FP32 twin of a masked build, each T-frame chunk run on its valid frames only (the
    whole utterance when it fits in one chunk).
    """
    from zsq_tvm.ctc import greedy_decode
    from zsq_tvm.evaluate import run_fixed, score

    refs, hyps = [], []
    for mel, ref in data:
        if unpadded:
            logits = np.concatenate([infer(mel[None, :, i:i + T]) for i in range(0, mel.shape[1], T)], axis=0)
        else:
            logits = run_fixed(infer, mel, T, with_length=masked)[0] if T else infer(mel[None])
        hyps.append(" ".join(greedy_decode(logits[None], vocab, "BTV")[0].split()))
        refs.append(ref)
    r = score(refs, hyps)
    return {"wer": r["wer"], "cer": r["cer"], "n_utterances": len(data), "n_words": r["n_words"]}


def real_calibration(manifest, n, seed):
    from zsq_tvm.evaluate import compute_mel, read_manifest

    rows = read_manifest(manifest)
    idx = np.random.default_rng(seed).choice(len(rows), size=min(n, len(rows)), replace=False)
    return [compute_mel(rows[i].audio_filepath) for i in sorted(idx)]


def load_synth_dir(d, seed, a):
    """Batches written by ``zsq synth`` (or ``--save-synth``), checked against this run's settings."""
    if not (d / "synth.json").exists():  # a --save-synth folder: .npy only, settings not recorded
        print(f"note: {d} has no synth.json; its synthesis settings are taken on trust", flush=True)
        meta, cfg = {}, None
    else:
        meta = json.loads((d / "synth.json").read_text())
        cfg = meta.get("config", {})
    want = {"seed": seed, "num_batches": a.synth_batches, "iters": a.synth_iters, "frames": a.synth_frames,
            "lr": a.synth_lr, "batch_size": 8}
    bad = {k: (cfg.get(k), v) for k, v in want.items() if cfg.get(k) != v} if cfg is not None else {}
    if bad:
        raise SystemExit(f"{d}/synth.json does not match this run (have, want): {bad}")
    mels = [np.load(f) for f in sorted(d.glob("synth_*.npy"))]
    hist = meta.get("loss") or []
    return mels, {"dir": str(d), "seconds": meta.get("seconds"),
                  "loss_initial": float(np.mean([h["initial"] for h in hist])) if hist else None,
                  "loss_final": float(np.mean([h["final"] for h in hist])) if hist else None}


def summarize(cells):
    groups = {}
    for c in cells:
        for split, r in c["splits"].items():
            groups.setdefault((c["wbits"], c["calib"], c["method"], split), []).append(100 * r["wer"])
    return [{"wbits": k[0], "abits": 8, "calib": k[1], "method": k[2], "split": k[3], "n_seeds": len(v),
             "wer_mean": float(np.mean(v)), "wer_min": float(np.min(v)), "wer_max": float(np.max(v)),
             "wer_std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0} for k, v in sorted(groups.items())]


def merge(results):
    """Results of the same model and settings run in several processes (e.g. one per seed) -> one."""
    out = {}
    for r in results:
        k = (r["config"]["model"], r["config"]["frames"], r["config"]["limit"], r["config"]["n_calib"],
             r["config"]["synth_frames"], r["config"]["synth_iters"], r["config"].get("out_bits", 8),
             r["config"].get("time_mask", False))  # only runs of the same settings merge
        if k not in out:
            out[k] = {**r, "cells": list(r["cells"]), "runs": [r["config"]]}
        else:
            # baselines of every split any run measured (a helper run may have none, or other splits)
            out[k]["fp32"] = {**r["fp32"], **out[k]["fp32"]}
            out[k]["fp32_unpadded"] = {**r.get("fp32_unpadded", {}), **out[k].get("fp32_unpadded", {})}
            seen = {(c["seed"], c["calib"], c["method"], c["wbits"]): c for c in out[k]["cells"]}
            for c in r["cells"]:
                key = (c["seed"], c["calib"], c["method"], c["wbits"])
                if key in seen:  # the same cell on other splits (a run per split): join them
                    seen[key] = dict(seen[key], splits={**c["splits"], **seen[key]["splits"]})
                else:
                    seen[key] = c
            out[k]["cells"] = list(seen.values())
            out[k]["synth"] = out[k].get("synth", []) + r.get("synth", [])
            out[k]["runs"].append(r["config"])
            cfg = out[k]["config"] = dict(out[k]["config"])  # rows of every run's settings in the table
            for f in ("calib", "methods", "wbits", "seeds", "splits"):
                cfg[f] = list(dict.fromkeys(list(cfg.get(f, [])) + list(r["config"].get(f, []))))
    for r in out.values():
        r["summary"] = summarize(r["cells"])
    return list(out.values())


def markdown(results):
    """One table per model: rows = FP32 and W/A x calibration x method, columns = splits (mean (min-max))."""
    out = []
    for res in results:
        if not res["fp32"]:  # a --no-fp32 helper run: merge it with a run that has the baseline (--table)
            out.append(f"**{res['config']['model']}**: no FP32 baseline in this run; "
                       f"merge it with one that has it: --table A.json B.json\n")
            continue
        splits = [x for x in res["config"].get("splits", []) if x in res["fp32"]] or list(res["fp32"])
        sz = res["size"]
        n = {s: res["fp32"][s]["n_utterances"] for s in splits}
        w = {s: res["fp32"][s]["n_words"] for s in splits}
        c = res["config"]
        out.append(f"**{c['model']}** (T = {c['frames']}; {c['n_calib']} calibration mels per source; synthetic: "
                   f"{c['synth_batches']} x 8 x {c['synth_frames']} frames, {c['synth_iters']} Adam steps; "
                   f"int{c.get('out_bits', 8)} logits; "
                   + ("padding masked (`--time-mask`), FP32 on the same chunks unpadded; " if c.get("time_mask") else "")
                   + ", ".join(f"`{s}`: {n[s]} utt. / {w[s]} words" for s in splits) + ")\n")
        out.append("| W/A | calibration | method | size (MB) | BOPs (T, 10 s) | "
                   + " | ".join(f"{s} WER %" for s in splits) + f" | Δ {splits[0]} | seeds |")
        out.append("|---|---|---|---|---|" + "---|" * len(splits) + "---|---|")
        out.append(f"| 32/32 | - | - | {sz['fp32']['size_mb']:.2f} | {sz['fp32']['tbops']:.2f} | "
                   + " | ".join(f"{100 * res['fp32'][s]['wer']:.2f}" for s in splits) + " | - | - |")
        by = {(r["wbits"], r["calib"], r["method"], r["split"]): r for r in res.get("summary", [])}
        for wb in res["config"]["wbits"]:
            for calib in res["config"]["calib"]:
                for m in res["config"]["methods"]:
                    cells = [by.get((wb, calib, m, s)) for s in splits]
                    if not any(cells):
                        continue
                    q = sz[str(wb)]["quantized"]
                    txt = [f"{c['wer_mean']:.2f} ({c['wer_min']:.2f}-{c['wer_max']:.2f})" if c and c["n_seeds"] > 1
                           else f"{c['wer_mean']:.2f}" if c else "-" for c in cells]
                    ns = max(c["n_seeds"] for c in cells if c)
                    d0 = f"{cells[0]['wer_mean'] - 100 * res['fp32'][splits[0]]['wer']:+.2f}" if cells[0] else "-"
                    out.append(f"| {wb}/8 | {calib} | {m} | {q['size_mb']:.2f} | {q['tbops']:.3f} | "
                               + " | ".join(txt) + f" | {d0} | {ns} |")
        out.append("")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="quartznet5x5")
    ap.add_argument("--splits", nargs="+", default=list(SPLITS), help=f"names ({', '.join(SPLITS)}) or NAME=MANIFEST")
    ap.add_argument("--limit", type=int, default=200, help="first N utterances of each split (0: all)")
    ap.add_argument("--frames", type=int, default=400, help="T of the builds (longer utterances are chunked)")
    ap.add_argument("--target", default=None, help="default: host-vnni where the CPU has AVX-512 VNNI, else host")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    ap.add_argument("--wbits", type=int, nargs="+", default=[8, 6])
    ap.add_argument("--time-mask", action="store_true",
                    help="builds mask their zero padding (`zsq quantize --time-mask`); the FP32 row runs each chunk "
                         "unpadded")
    ap.add_argument("--out-bits", type=int, default=16, help="bits of the integer logits (8 or 16; zsq default 16)")
    ap.add_argument("--calib", nargs="+", default=["synthetic", "random", "real"])
    ap.add_argument("--methods", nargs="+", default=["minmax", "percentile"])
    ap.add_argument("--synth-batches", type=int, default=20)
    ap.add_argument("--synth-iters", type=int, default=200)
    ap.add_argument("--synth-frames", type=int, default=64)
    ap.add_argument("--synth-lr", type=float, default=0.05)
    ap.add_argument("--real-calib", default="/tmp/corpus/train.json", help="manifest of the 'real' calibration data")
    ap.add_argument("--save-synth", default=None, help="directory: save each seed's synthetic mels (.npy)")
    ap.add_argument("--load-synth", nargs="+", default=None, metavar="SEED=DIR",
                    help="use these `zsq synth` outputs (synth_*.npy + synth.json) instead of synthesizing, e.g. "
                         "0=/tmp/synth_s0 (the synth.json must match --synth-* and the seed)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-fp32", action="store_true", help="skip the FP32 baseline (helper runs, see --table)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--table", nargs="+", default=None, help="only print the markdown table of these result JSONs")
    ap.add_argument("--md", default=None, help="also write the markdown table here")
    ap.add_argument("--merged-json", default=None, help="--table: also write the merged results here")
    a = ap.parse_args()
    if a.table:
        md = markdown(merge([json.loads(Path(p).read_text()) for p in a.table]))
        print(md)
        if a.merged_json:
            Path(a.merged_json).write_text(json.dumps(merge([json.loads(Path(p).read_text()) for p in a.table]),
                                                      indent=1))
        if a.md:
            Path(a.md).write_text(md + "\n")
        return

    os.environ.setdefault("TVM_NUM_THREADS", str(a.threads))
    import torch
    from tqdm import tqdm

    import zsq_tvm
    import zsq_tvm.calibrate as calib_mod
    from zsq_tvm.evaluate import BuildRunner, TorchRunner
    from zsq_tvm.zoo.models import load_torch
    from zsq_tvm.backends.x86.cpu import host_features

    torch.set_num_threads(a.threads)
    target = a.target or ("host-vnni" if "avx512_vnni" in host_features() else "host")
    n_calib = a.synth_batches * 8
    out = Path(a.json or f"bench/results/zeroshot_{a.model}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    res = {"config": {**vars(a), "target": target, "n_calib": n_calib}, "fp32": {}, "fp32_unpadded": {},
           "size": {}, "cells": [], "synth": []}

    def dump():
        res["summary"] = summarize(res["cells"])
        out.write_text(json.dumps(res, indent=1))

    t0 = time.time()
    splits = dict(s.split("=", 1) if "=" in s else (s, SPLITS[s]) for s in a.splits)
    data = {s: load_split(m, a.limit) for s, m in tqdm(splits.items(), desc="mels", file=sys.stderr)}
    print(f"mels of {sum(len(v) for v in data.values())} utterances in {time.time() - t0:.0f} s", flush=True)
    net = load_torch(a.model)
    fp = TorchRunner(net, a.model)
    for s, d in data.items():
        if a.no_fp32:  # a helper run (e.g. more seeds in parallel): --table takes FP32 from another result
            break
        res["fp32"][s] = wer_of(fp.infer, fp.vocab, d, a.frames, unpadded=a.time_mask)
        res["fp32_unpadded"][s] = wer_of(fp.infer, fp.vocab, d, None)
        print("FP32", s, res["fp32"][s], "unpadded", res["fp32_unpadded"][s]["wer"], flush=True)
    for wb in a.wbits:
        res["size"][str(wb)] = zsq_tvm.report(a.model, wbits=wb, abits=8)
    res["size"]["fp32"] = res["size"][str(a.wbits[0])]["fp32"]
    dump()

    # calibration does not depend on the bit width: calibrate each (source, seed, method) once
    cache, key = {}, [None]
    orig_calibrate = calib_mod.calibrate

    def cached_calibrate(mod, batches, method="minmax", **kw):
        k = (*key[0], method)
        if k not in cache:
            cache[k] = orig_calibrate(mod, batches, method=method, **kw)
        return cache[k]

    calib_mod.calibrate = cached_calibrate
    loaded = {}
    for spec in a.load_synth or []:
        seed_s, d = spec.split("=", 1)
        loaded[int(seed_s)] = load_synth_dir(Path(d), int(seed_s), a)
    n_cells = len(a.seeds) * len(a.calib) * len(a.methods) * len(a.wbits)
    bar = tqdm(total=n_cells, desc=f"cells {a.model}", file=sys.stderr)
    for seed in a.seeds:
        for calib in a.calib:
            ts = time.time()
            if calib == "synthetic" and seed in loaded:
                mels, info = loaded[seed]
                res["synth"].append({"seed": seed, "loaded_from": info["dir"], "seconds": info.get("seconds"),
                                     "loss_initial": info.get("loss_initial"), "loss_final": info.get("loss_final")})
                print("synth (loaded)", res["synth"][-1], flush=True)
                src = mels
            elif calib == "synthetic":
                hist = []
                mels = zsq_tvm.synthesize(net, zsq_tvm.SynthConfig(
                    num_batches=a.synth_batches, batch_size=8, iters=a.synth_iters, frames=a.synth_frames,
                    lr=a.synth_lr, seed=seed, threads=a.threads, progress=True), history=hist)
                res["synth"].append({"seed": seed, "seconds": time.time() - ts,
                                     "loss_initial": float(np.mean([h["initial"] for h in hist])),
                                     "loss_final": float(np.mean([h["final"] for h in hist]))})
                print("synth", res["synth"][-1], flush=True)
                if a.save_synth:
                    d = Path(a.save_synth) / f"{a.model}_seed{seed}"
                    d.mkdir(parents=True, exist_ok=True)
                    for i, m in enumerate(mels):
                        np.save(d / f"synth_{i:03d}.npy", m)
                src = mels
            elif calib == "random":
                src = "random"
            else:
                src = real_calibration(a.real_calib, n_calib, seed)
            src_seconds = time.time() - ts
            key[0] = (calib, seed)
            for method in a.methods:
                for wb in a.wbits:
                    tc = time.time()
                    q = zsq_tvm.quantize(a.model, zsq_tvm.QuantConfig(
                        wbits=wb, abits=8, out_bits=a.out_bits, frames=a.frames, calib=src, calib_method=method, seed=seed,
                        num_batches=n_calib, time_mask=a.time_mask))
                    b = zsq_tvm.compile(q, target=target)
                    tq = time.time() - tc
                    r = BuildRunner(b, f"{a.model}-W{wb}A8-{calib}-{method}-s{seed}")
                    cell = {"seed": seed, "calib": calib, "method": method, "wbits": wb, "abits": 8,
                            "n_calib_inputs": q.manifest["calib"]["num_inputs"], "splits": {},
                            "source_seconds": src_seconds, "quantize_compile_seconds": tq}
                    te = time.time()
                    for s, d in data.items():
                        cell["splits"][s] = wer_of(r.infer, r.vocab, d, a.frames, masked=r.takes_length)
                    cell["eval_seconds"] = time.time() - te
                    res["cells"].append(cell)
                    bar.update(1)
                    print({k: v for k, v in cell.items() if k != "splits"},
                          {s: round(100 * v["wer"], 2) for s, v in cell["splits"].items()}, flush=True)
                    dump()
    bar.close()
    calib_mod.calibrate = orig_calibrate
    res["seconds"] = time.time() - t0
    dump()
    print(markdown([res]))


if __name__ == "__main__":
    main()
