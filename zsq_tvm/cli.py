"""``zsq`` command line: a thin shell over :mod:`zsq_tvm.api`.

Errors the user can fix print one line on stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from zsq_tvm import api
from zsq_tvm.core.errors import ConfigError, InputShapeError, IntegerOnlyViolation, NotAvailableError, ZsqError


def _print_json(obj):

    print(json.dumps(obj, indent=2, default=api.jsonable))


def _add_json(p):
    p.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")


def _int_arg(s: str) -> int:
    try:
        return int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not an integer") from None


def cmd_quantize(a) -> int:
    cfg = api.QuantConfig(wbits=a.wbits, abits=a.abits, out_bits=a.out_bits, calib=a.calib, calib_method=a.calib_method,
                          frames=a.frames, seed=a.seed, num_batches=a.num_batches, time_mask=a.time_mask,
                          progress=not a.json and sys.stderr.isatty() or a.progress,
                          synth={k: v for k, v in (("num_batches", a.synth_batches), ("iters", a.synth_iters))
                                 if v is not None} or None)
    cfg.validate()

    out = Path(a.output)
    inputs = [a.model, a.calib]
    api.ensure_output_free(out, a.overwrite, api.KIND_QUANTIZED, inputs)  # fail on an unwritable/existing OUT_DIR before any work
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", api.TimeMaskWarning)
        q = api.quantize(a.model, cfg)
    for w in caught:  # the time-mask fallback: one line; anything else as Python shows it
        if issubclass(w.category, api.TimeMaskWarning):
            print(f"zsq: note: {w.message}", file=sys.stderr)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    q.save(out, overwrite=a.overwrite, inputs=inputs)
    m = q.manifest
    if a.json:
        _print_json({"output": str(out), "frames": m["frames"], "wbits": m["wbits"], "abits": m["abits"],
                     "input_scale": m["input_scale"], "output_scale": m["output_scale"], "report": q.report()})
    else:
        length = f"{m['frames']} frames" if m["frames"] is not None else "any length: symbolic T"
        print(f"quantized W{m['wbits']}A{m['abits']} ({length}"
              f"{', time mask: input length' if m.get('time_mask') else ''}) -> {out}")
    return 0


def cmd_synth(a) -> int:

    api.ensure_output_free(a.output, a.overwrite, api.KIND_SYNTH, [a.model])  # fail before minutes of work
    cfg = api.SynthConfig(num_batches=a.batches, batch_size=a.batch_size, iters=a.iters, lr=a.lr, frames=a.frames,
                      seed=a.seed, kl=a.kl, threads=a.threads,
                      progress=not a.json and sys.stderr.isatty() or a.progress).validate()
    hist: list = []
    batches = api.synthesize(a.model, cfg, history=hist)
    api.save_synth(batches, a.output, cfg, hist, source=str(a.model), overwrite=a.overwrite)
    res = {"output": a.output, "files": len(batches), "shape": list(batches[0].shape),
           "loss_initial": sum(h["initial"] for h in hist) / len(hist) if cfg.iters else None,
           "loss_final": sum(h["final"] for h in hist) / len(hist)}
    if a.png:

        res["png"] = api.plot_synth_figure(a.model, batches, cfg, a.png)
    if a.json:
        _print_json(res)
    else:
        li = "-" if res["loss_initial"] is None else f"{res['loss_initial']:.4g}"
        print(f"synthesized {len(batches)} x {list(batches[0].shape)} mels (eq. 2 loss {li} -> "
              f"{res['loss_final']:.4g}) -> {a.output}" + (f"; figure -> {a.png}" if a.png else ""))
    return 0


def cmd_compile(a) -> int:

    api.ensure_output_free(a.output, a.overwrite, api.KIND_BUILD, [a.qdir])  # fail before the build, not after it
    b = api.compile(a.qdir, target=a.target, tuning_db=a.db)
    b.save(a.output, overwrite=a.overwrite, inputs=[a.qdir])
    rep = b.integer_only
    if a.json:
        _print_json({"output": a.output, "target": b.target, "tvm_target": b.manifest["tvm_target"],
                     "integer_only": rep})
    else:
        print(f"compiled for {b.manifest['tvm_target']} -> {a.output} (integer-only: {_ok(rep)})")
        if hasattr(b, "summary"):  # Cortex-M firmware: flash / RAM / arena
            print("  " + b.summary())
    return 0


def _ok(rep) -> str:
    return {True: "ok", False: "VIOLATIONS", None: "not checked"}[rep.get("ok")]


def cmd_check(a) -> int:
    rep = api.check(a.build_dir)
    if a.json:
        _print_json(rep)
    else:
        print(f"integer-only: {_ok(rep)}")
        for v in rep.get("violations", [])[:50]:
            if isinstance(v, dict):
                v = f"{v.get('func')}: {v.get('op')} ({v.get('dtype')}) x{v.get('count', 1)}"
            print(f"  {v}")
        if rep.get("ok"):
            b = rep.get("boundary", {})
            print(f"  {rep.get('prim_funcs', '?')} kernels; float only in the boundary kernels "
                  f"{', '.join(sum((list(x) for x in b.values()), [])) or '-'}")
        if "sass" in rep:
            sa = rep["sass"]
            print(f"  SASS ({sa.get('arch')}): {'ok' if sa['ok'] else 'VIOLATIONS'} (no float instruction in "
                  f"{sa['sass_functions'] - len(sa['boundary_kernels'])} kernels; {sa['int8_ops']})"
                  if sa.get("available") else f"  SASS: not checked ({sa.get('message')})")
        if "firmware" in rep:
            print(f"  fw.elf: {'ok' if rep['firmware']['ok'] else 'VIOLATIONS'} (no soft-float, libm or malloc "
                  f"among {rep['firmware']['symbols']} symbols)")
    if rep.get("ok") is False:
        return IntegerOnlyViolation.exit_code
    if rep.get("ok") is None:
        print("zsq: " + str(NotAvailableError("the integer-only checker is not available",
                                             "install zsq-tvm completely")), file=sys.stderr)
        return 2
    return 0


def cmd_run(a) -> int:
    import numpy as np

    if a.output:  # before the model runs: a missing folder or an existing file is found now, not after
        api.check_output_file(a.output, a.overwrite)
    b = api.Build.load(a.build_dir)
    try:
        mel = np.load(a.input, allow_pickle=False)
    except FileNotFoundError:
        raise InputShapeError(f"input file {a.input!r} does not exist", "pass a .npy mel spectrogram [F, T]") from None
    except Exception as e:
        raise InputShapeError(f"cannot read {a.input!r} as .npy ({type(e).__name__})",
                              "save the mel with numpy.save") from None
    length = None
    if b.time_mask and isinstance(mel, np.ndarray) and mel.ndim in (2, 3) and 0 < mel.shape[-1] < b.frames:
        # a --time-mask build: pad a short mel here and tell the model how many frames are real
        length = mel.shape[-1]
        mel = np.concatenate([mel, np.zeros(mel.shape[:-1] + (b.frames - length,), mel.dtype)], axis=-1)
    logits = b.run(mel, length=length, codes=a.codes)
    if a.output:
        with api.write_output_file(a.output, a.overwrite) as tmp:
            with open(tmp, "wb") as f:  # np.save(path) would append ".npy" to the temporary name
                np.save(f, logits)
    text = b.decode(logits, length=length) if a.decode else None
    if a.json:
        _print_json({"output": a.output, "shape": list(logits.shape), "dtype": str(logits.dtype),
                     **({"text": text} if text is not None else {})})
    else:
        if a.output:
            print(f"{'codes' if a.codes else 'logits'} {list(logits.shape)} {logits.dtype} -> {a.output}")
        for t in text or []:
            print(t)
    return 0


def cmd_report(a) -> int:
    p = Path(a.model)
    if p.is_dir():
        rep = api.report(p)
    else:
        rep = api.report(a.model, wbits=a.wbits, abits=a.abits, frames=a.frames)  # str: shipped names too
    if "fp32" not in rep:
        raise ConfigError(f"no size/BOPs report available for {a.model!r}", "run `zsq report MODEL.onnx`")
    if a.json:
        _print_json(rep)
    else:
        print(api.format_report(rep))
    return 0


def cmd_export_nemo(a) -> int:

    out = api.export_nemo(a.model, a.output, frames=a.frames, checkpoint=a.checkpoint, seed=a.seed,
                      overwrite=a.overwrite)
    weights = "weights of " + str(a.checkpoint) if a.checkpoint else (
        "weights from the .nemo" if str(a.model).endswith(".nemo") else f"random weights, seed {a.seed}")
    print(f"exported {a.model} ({weights}) -> {out}")
    return 0


def cmd_eval(a) -> int:

    res = api.evaluate(a.model, a.manifest, runtime=a.runtime, frames=a.frames, frames_pad=a.frames_pad,
                   threads=a.threads, progress=True if a.progress else None, limit=a.limit, hyps_out=a.hyps)
    if a.json:
        _print_json(res)
    else:
        print(api.format_eval(res))
    return 0


def cmd_tune(a) -> int:

    if a.runner is not None:
        return _tune_files(a)
    if a.per_round is not None or a.batch_mib is not None:
        raise ConfigError("--per-round and --batch-mib go with --runner files:DIR", "add --runner files:DIR")
    res = api.tune(a.dir, target=a.target, trials=a.trials, db_path=a.db, rpc_tracker=a.rpc_tracker, rpc_key=a.rpc_key,
               seed=a.seed, progress=not a.json and sys.stderr.isatty() or a.progress)
    if a.json:
        _print_json(res)
    else:
        print(f"tuned {res['tasks']} distinct kernel(s) ({res['kernels']} in the model): {res['trials_run']} new "
              f"trial(s) in {res['seconds']:.0f} s, {res['records_after']} record(s) in {res['db']}")
        for e in res.get("errors", [])[:1]:
            print(f"  first failed candidate: {e.splitlines()[-1] if e.strip() else e}")
    return 0


def _tune_files(a) -> int:
    if a.rpc_tracker is not None or a.rpc_key is not None:
        raise ConfigError("--runner files:DIR and --rpc-tracker/--rpc-key are two ways to measure", "pass one of them")
    if not a.runner.startswith("files:") or a.runner == "files:":
        raise ConfigError(f"--runner {a.runner!r} is not files:DIR", "pass e.g. --runner files:tune-rounds")
    kw = {k: v for k, v in (("per_round", a.per_round), ("batch_mib", a.batch_mib)) if v is not None}
    res = api.tune_files(a.dir, a.runner[len("files:"):], target=a.target, trials=a.trials, db_path=a.db,
                         seed=a.seed, **kw)
    if a.json:
        _print_json(res)
        return 0
    ing = res.get("ingested")
    if ing:
        print(f"round {ing['round']}: {ing['measured']} measured record(s) added to {res['db']} "
              f"({ing['failed']} failed on the device, {ing['missing']} not reported)")
    if res.get("waiting"):
        print(f"{res['waiting']} has no results yet: run on the device machine\n  {res['command']}\n"
              f"then copy its results.json into {res['out']}/{res['waiting']}/ and run this command again")
    elif res.get("done"):
        print(f"done: {res['records']} record(s) in {res['db']} (--trials {a.trials}); "
              f"`zsq compile --db {res['db']}` applies them")
    else:
        print(f"round {res['round']}: {res['candidates']} candidate(s), {res['batch_bytes'] / 2**20:.1f} MiB "
              f"in {res['batch']} ({res['records']} record(s) so far over {res['tasks']} distinct kernel(s)); "
              f"run on the device machine\n  {res['command']}\nthen copy its results.json into {res['batch']}/ "
              f"and run this command again")
    return 0


def cmd_bench(a) -> int:

    api.set_threads(a.threads)  # before the first TVM kernel of this process
    res = api.compare_onnx(a.build_dir, a.compare_onnx, threads=a.threads, runs=a.runs, seed=a.seed,
                       int8=not a.no_int8, progress=not a.json and sys.stderr.isatty() or a.progress)
    if a.json:
        _print_json(res)
    else:
        print(api.format_compare(res))
    return 0


def cmd_transcribe(a) -> int:
    fmt = "json" if a.json else a.format
    ext = {"text": ".txt", "json": ".json", "srt": ".srt", "vtt": ".vtt"}[fmt]
    if a.output and len(a.audio) > 1:
        raise ConfigError(f"-o names one file but {len(a.audio)} audio files were given",
                          "use --output-dir DIR (one file per input) or transcribe one file")
    outs = []  # checked before any model work: a missing folder or an existing file is found now
    if a.output:
        outs = [api.check_output_file(a.output, a.overwrite)]
    elif a.output_dir:
        d = Path(a.output_dir)
        if not d.is_dir():
            raise ConfigError(f"--output-dir {a.output_dir!r} is not a directory", "create it first")
        outs = [api.check_output_file(d / (Path(x).stem + ext), a.overwrite, flag="--output-dir") for x in a.audio]
        if len({str(o) for o in outs}) < len(outs):
            raise ConfigError("two audio files have the same name stem, so their outputs would collide",
                              "transcribe them into different --output-dir folders")

    def say(msg):
        print(f"zsq: {msg}", file=sys.stderr)

    results = api.transcribe(a.model, a.audio, context_frames=_seconds_to_frames(a.context), frames=a.frames,
                             progress=a.progress or sys.stderr.isatty(), say=say)
    if a.json and not outs:
        _print_json({"model": a.model, "results": results})
        return 0
    for i, r in enumerate(results):
        text = api.format_transcript(r, fmt)
        if outs:
            with api.write_output_file(outs[i], a.overwrite) as tmp:
                Path(tmp).write_text(text)
            say(f"{r['audio']} -> {outs[i]}")
        elif len(results) > 1 and fmt == "text":
            print(f"{r['audio']}: {text}", end="")
        else:
            print(text, end="")
    return 0


def _seconds_to_frames(s: str | None) -> int | None:
    if s is None:
        return None
    try:
        v = float(s)
    except ValueError:
        v = -1.0
    if not (0 <= v <= 60):
        raise ConfigError(f"--context {s!r} is not a number of seconds in 0..60", "pass e.g. --context 2")
    return int(round(v * 100))


def cmd_demo(a) -> int:

    return api.run_demo(workdir=a.workdir, json_out=a.json, keep=a.keep)


def _parser_quantize(sub) -> None:
    s = sub.add_parser("quantize", help="ONNX model -> quantized (integer-only) model directory")
    s.add_argument("model", help="ONNX model with a mel input [B, F, T], a NeMo FILE.nemo (exported to ONNX as by "
                                 "`zsq export-nemo`, into a temporary folder), a shipped model name (quartznet5x5, "
                                 "...) or an architecture name (conformer-ctc-large, ...: random weights, --seed)")
    s.add_argument("--calib", default="random",
                   help="'random', 'synthetic' (zero-shot: mels synthesized from the model's BatchNorm statistics; "
                        "needs BatchNormalization in the ONNX) or a directory of .npy mels [F, T] (default random)")
    s.add_argument("--synth-batches", type=_int_arg, default=None, help="--calib synthetic: batches of 8 (default 20)")
    s.add_argument("--synth-iters", type=_int_arg, default=None, help="--calib synthetic: Adam iterations (default 200)")
    s.add_argument("--calib-method", default="minmax", help="minmax or percentile (default minmax)")
    s.add_argument("--wbits", type=_int_arg, default=8, help="weight bits, 2..8 (default 8)")
    s.add_argument("--abits", type=_int_arg, default=8, help="activation bits, 2..8 (default 8)")
    s.add_argument("--out-bits", type=_int_arg, default=16,
                   help="bits of the integer logits, 8 or 16 (default 16: keeps near-ties of the CTC argmax apart, "
                        "better WER, see docs/results.md; 8 halves the logits buffer)")
    s.add_argument("--frames", type=_int_arg, default=None, help="static input frames T (100 per second)")
    s.add_argument("--no-time-mask", dest="time_mask", action="store_false",
                   help="do not mask the padding. By default the model gets an input 'length' (valid frames) and "
                        "the padding is masked before every time-mixing conv and attention, so a short utterance "
                        "padded to T decodes as unpadded (a model the mask cannot follow is quantized unmasked, "
                        "with a note)")
    s.add_argument("--time-mask", dest="time_mask", action="store_true", help=argparse.SUPPRESS)  # the default;
    # kept for scripts written when the mask was opt-in
    s.add_argument("--seed", type=_int_arg, default=0,
                   help="seed of the random calibration (and of the weights of an architecture name; default 0)")
    s.add_argument("--num-batches", type=_int_arg, default=8, help="random calibration inputs (default 8)")
    s.add_argument("--progress", action="store_true", help="show progress bars even when not on a terminal")
    s.add_argument("-o", "--output", required=True, help="output directory (must not exist)")
    s.add_argument("--overwrite", action="store_true")
    _add_json(s)
    s.set_defaults(func=cmd_quantize)


def _parser_synth(sub) -> None:
    s = sub.add_parser("synth", help="zero-shot calibration data: mels synthesized from BatchNorm statistics")
    s.add_argument("model", help="shipped model name, .pt checkpoint, or ONNX file with BatchNormalization nodes")
    s.add_argument("-o", "--output", required=True, help="output directory of .npy batches [B, 64, T]")
    s.add_argument("--batches", type=_int_arg, default=20, help="number of batches (default 20)")
    s.add_argument("--batch-size", type=_int_arg, default=8, help="mels per batch (default 8)")
    s.add_argument("--iters", type=_int_arg, default=200, help="Adam iterations per batch (default 200)")
    s.add_argument("--lr", type=float, default=0.05, help="Adam learning rate (default 0.05)")
    s.add_argument("--frames", type=_int_arg, default=64, help="frames T per mel (default 64 = 0.64 s)")
    s.add_argument("--seed", type=_int_arg, default=0)
    s.add_argument("--kl", default="batch-first", choices=["batch-first", "running-first"],
                   help="KL direction: KL(N(batch) || N(running)) (default) or KL(N(running) || N(batch))")
    s.add_argument("--threads", type=_int_arg, default=None, help="torch CPU threads (default: torch's)")
    s.add_argument("--png", default=None, help="also write a Figure-3-like PNG (real / random / synthetic)")
    s.add_argument("--progress", action="store_true", help="show the progress bar even when not on a terminal")
    s.add_argument("--overwrite", action="store_true")
    _add_json(s)
    s.set_defaults(func=cmd_synth)


def _parser_compile(sub) -> None:
    s = sub.add_parser("compile", help="quantized directory -> compiled build directory")
    s.add_argument("qdir")
    s.add_argument("--target", default="host", help="one of: " + ", ".join(api.list_targets()) + " (default host)")
    s.add_argument("-o", "--output", required=True)
    s.add_argument("--overwrite", action="store_true")
    s.add_argument("--db", default=None, metavar="DIR",
                   help="tuning database to apply (a `zsq tune --db DIR` folder); default: $ZSQ_TUNING_DB, else "
                        "the user cache ${XDG_CACHE_HOME:-~/.cache}/zsq-tvm/tuning/<key>/, else the shipped log")
    _add_json(s)
    s.set_defaults(func=cmd_compile)


def _parser_check(sub) -> None:
    s = sub.add_parser("check", help="integer-only report of a build (exit 1 on violation)")
    s.add_argument("build_dir")
    _add_json(s)
    s.set_defaults(func=cmd_check)


def _parser_run(sub) -> None:
    s = sub.add_parser("run", help="run a build on a mel .npy")
    s.add_argument("build_dir")
    s.add_argument("--input", required=True, help="mel spectrogram .npy, [F, T] or [B, F, T]")
    s.add_argument("--output", help="write logits .npy here (float32 on every target)")
    s.add_argument("--decode", action="store_true", help="greedy CTC decode and print the text")
    s.add_argument("--codes", action="store_true",
                   help="write the integer output codes instead (int16/int8, before the output dequantize)")
    s.add_argument("--dequantize", action="store_true", help=argparse.SUPPRESS)  # the default now; old scripts
    s.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    _add_json(s)
    s.set_defaults(func=cmd_run)


def _parser_report(sub) -> None:
    s = sub.add_parser("report", help="model size and BOPs (10 s input) of a quantized dir or an ONNX file")
    s.add_argument("model")
    s.add_argument("--wbits", type=_int_arg, default=8)
    s.add_argument("--abits", type=_int_arg, default=8)
    s.add_argument("--frames", type=_int_arg, default=1000, help="input frames for BOPs (default 1000 = 10 s)")
    _add_json(s)
    s.set_defaults(func=cmd_report)


def _parser_export_nemo(sub) -> None:
    s = sub.add_parser("export-nemo", help="NeMo model/config -> ONNX with BatchNorm kept")
    s.add_argument("model", help="architecture name (random weights), NeMo CONFIG.yaml, or FILE.nemo")
    s.add_argument("-o", "--output", required=True)
    s.add_argument("--frames", type=_int_arg, default=None, help="static input frames T (default: dynamic)")
    s.add_argument("--checkpoint", default=None,
                   help="weights for an architecture/YAML: .nemo, NeMo .ckpt, zsq .pt or a shipped model name")
    s.add_argument("--seed", type=_int_arg, default=0, help="seed of the random weights (default 0)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    s.set_defaults(func=cmd_export_nemo)


def _parser_eval(sub) -> None:
    s = sub.add_parser("eval", help="WER/CER of a model on a NeMo manifest (shipped name, .onnx, quantized or build dir)")
    s.add_argument("model", help="shipped model name (e.g. quartznet5x5), .pt, .onnx, quantized dir or build dir")
    s.add_argument("--manifest", required=True, help="NeMo JSON-lines manifest (audio_filepath, text), 16 kHz wav")
    s.add_argument("--runtime", default="auto", help="auto | torch | onnxruntime | tvm (FP32; default: torch for "
                                                     "shipped names, onnxruntime for .onnx)")
    s.add_argument("--frames", type=_int_arg, default=None, help="T for exporting / compiling a dynamic model")
    s.add_argument("--frames-pad", type=_int_arg, default=None,
                   help="run a dynamic-length model as if fixed to T frames (zero-pad / chunk like a build)")
    s.add_argument("--threads", type=_int_arg, default=None, help="CPU threads (default: the runtime's default)")
    s.add_argument("--limit", type=_int_arg, default=None, help="only the first N utterances")
    s.add_argument("--hyps", default=None, help="write per-utterance ref/hyp JSON lines here")
    s.add_argument("--progress", action="store_true", help="show the progress bar even when not on a terminal")
    _add_json(s)
    s.set_defaults(func=cmd_eval)


def _parser_tune(sub) -> None:
    s = sub.add_parser("tune", help="MetaSchedule (XGBoost) tuning of a model's kernels into a resumable database")
    s.add_argument("dir", help="quantized directory (zsq quantize) or build directory (zsq compile)")
    s.add_argument("--target", default="host",
                   help="host (default: what the hand-written kernels leave on this CPU), host-generic (every kernel "
                        "on TVM's default lowering), x86-avx2-generic (likewise for any AVX2 CPU), x86-avx2, x86-avx512vnni, "
                        "or a CUDA target (t4, cuda-sm_90, ...) with --rpc-tracker or --runner files:DIR")
    s.add_argument("--trials", type=_int_arg, default=64,
                   help="total measured candidates over all kernels, counting records already in the database")
    s.add_argument("--db", default=None, help="database folder (default $ZSQ_TUNING_DB, else the user cache "
                                              "${XDG_CACHE_HOME:-~/.cache}/zsq-tvm/tuning/<target key>/, "
                                              "which `zsq compile` applies automatically)")
    s.add_argument("--rpc-tracker", default=None, metavar="HOST:PORT", help="measure on RPC servers of this tracker")
    s.add_argument("--rpc-key", default=None, help="device key of the RPC servers")
    s.add_argument("--runner", default=None, metavar="files:DIR",
                   help="measure on another machine through files: each call ingests DIR's newest round's "
                        "results.json, builds the next batch into DIR/round-NNN/ and prints the "
                        "tools/tune_runner.py command to run there")
    s.add_argument("--per-round", type=_int_arg, default=None, help="candidates per files round (default 16)")
    s.add_argument("--batch-mib", type=float, default=None, help="size cap of a files round's libraries (default 48)")
    s.add_argument("--seed", type=_int_arg, default=0)
    s.add_argument("--progress", action="store_true", help="show the progress bar even when not on a terminal")
    _add_json(s)
    s.set_defaults(func=cmd_tune)


def _parser_bench(sub) -> None:
    s = sub.add_parser("bench", help="latency of a build vs ONNX Runtime FP32 / INT8 QDQ (same input, one process)")
    s.add_argument("build_dir")
    s.add_argument("--compare-onnx", required=True, metavar="MODEL.onnx",
                   help="the ONNX model the build came from (ORT FP32 runs it; ORT INT8 runs its quantize_static QDQ)")
    s.add_argument("--threads", type=_int_arg, default=1, help="threads for TVM and ONNX Runtime (default 1)")
    s.add_argument("--runs", type=_int_arg, default=20, help="timed interleaved rounds (default 20)")
    s.add_argument("--seed", type=_int_arg, default=0, help="seed of the input and ORT calibration mels")
    s.add_argument("--no-int8", action="store_true", help="skip ONNX Runtime INT8 (quantize_static)")
    s.add_argument("--progress", action="store_true", help="show the progress bar even when not on a terminal")
    _add_json(s)
    s.set_defaults(func=cmd_bench)


def _parser_transcribe(sub) -> None:
    s = sub.add_parser("transcribe", help="audio files (WAV/FLAC/OGG, any rate, length) -> text, JSON, SRT or VTT")
    s.add_argument("model", help="build dir, quantized dir, shipped model name (quartznet5x5, ...), .onnx or .nemo "
                                 "(models are quantized + compiled for this CPU once and cached)")
    s.add_argument("audio", nargs="+", help="audio files; other rates are resampled to 16 kHz, stereo mixed down")
    s.add_argument("--format", default="text", choices=["text", "json", "srt", "vtt"],
                   help="text (default), json (words and segments with times), srt or vtt subtitles")
    s.add_argument("-o", "--output", default=None, help="write the result of the one audio file here")
    s.add_argument("--output-dir", default=None, help="write one file per audio file here (NAME.txt/.json/.srt/.vtt)")
    s.add_argument("--overwrite", action="store_true")
    s.add_argument("--context", default=None, metavar="SECONDS",
                   help="audio on each side of a window's kept part, for recordings longer than one window "
                        "(default 2, at most a fifth of the window)")
    s.add_argument("--frames", type=_int_arg, default=None,
                   help="build fixed T-frame windows when MODEL is quantized here (default: any length, or 1000 "
                        "for a model whose graph fixes its length)")
    s.add_argument("--progress", action="store_true", help="show the progress bar even when not on a terminal")
    _add_json(s)
    s.set_defaults(func=cmd_transcribe)


def _parser_demo(sub) -> None:
    s = sub.add_parser("demo", help="quantize + compile + check + run the shipped default model")
    s.add_argument("--workdir", default=None, help="keep artifacts here (default: a temp dir)")
    s.add_argument("--keep", action="store_true")
    _add_json(s)
    s.set_defaults(func=cmd_demo)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="zsq", description="Integer-only quantization of CTC speech models with TVM.")
    p.add_argument("--version", action="version", version=f"zsq-tvm {api.__version__}")
    p.add_argument("--max-memory", default=None, metavar="SIZE",
                   help="largest tensor an input file may declare, e.g. 8G (default 4G, or $ZSQ_MAX_MEMORY): "
                        "larger ones are refused before anything is allocated; raise it only for files you trust")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    for add in (_parser_quantize, _parser_synth, _parser_compile, _parser_check, _parser_run, _parser_report,
                _parser_export_nemo, _parser_eval, _parser_tune, _parser_bench, _parser_transcribe, _parser_demo):
        add(sub)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    try:
        a = parser.parse_args(argv)
    except SystemExit as e:  # argparse: usage errors exit 2 already
        return int(e.code or 0)

    restore = []  # the flag is for this command only: main() may be called in-process (tests, scripts)
    try:
        if a.max_memory is not None:
            restore.append(api.set_memory_budget(a.max_memory))
        return int(a.func(a) or 0)
    except ZsqError as e:
        print(f"zsq: error: {e}", file=sys.stderr)
        return e.exit_code
    except OSError as e:  # a disk that fills, a file that cannot be read or written: the user's to fix
        if e.errno in api.DISK_ERRNOS:
            print(f"zsq: error: {api.disk_error(e, repr(e.filename or 'an output file'))}", file=sys.stderr)
            return 2
        if e.filename is None:  # not about a file the user named: a bug, keep its traceback
            raise
        print(f"zsq: error: cannot access {str(e.filename)!r} ({e.strerror or type(e).__name__}). Fix: check the "
              "path and its permissions.", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("zsq: interrupted", file=sys.stderr)
        return 130
    finally:
        for previous in restore:
            api.set_memory_budget(previous)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
