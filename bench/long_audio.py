"""Long recordings with bounded memory (issue 28): transcribing one long file costs no WER over its utterances
alone, real-time factor, flat peak RSS.

1. **Long files**: the first ``--utterances`` of the ``test`` split of the synthetic corpus (``lab.corpus``, seed 0:
   the same sentences, voices and prosody ``python3 -m lab.corpus synth`` makes; only those jobs are synthesized,
   into a temporary folder) are concatenated, with seeded 0.3-1.0 s silences between them, into long files of
   about ``--long-seconds`` each.  Each long file is transcribed with one :class:`zsq_tvm.streaming.Stream` of the
   shipped ``quartznet5x5`` integer build (``zsq_tvm.transcribe.load_build``: host target, T = 1000 frames, time
   mask on, default context), and each utterance alone with the same build, unsegmented (one window on exactly
   the utterance's frames: the model on the utterance, as ``zsq eval`` scores it).  The headline is the default
   stream, which cuts the audio at pauses (energy VAD, one utterance at a time through its own windows):
   its WER on the long files vs the utterances-alone WER, difference (acceptance: at most 0.1 WER points).
   Also reported: the old behaviour (``build.stream(segment=False)``: one window sequence over the whole file),
   each utterance alone through the segmenting stream (what ``zsq transcribe`` gives for a short file), how the
   utterances the VAD found line up with the true ones (utterances cut in two, merged, missed; the few
   utterances whose stitched words differ most from their alone transcript are printed), and FP32 torch
   controls (length-agnostic): alone, the whole file as one mel, and the long files through the same
   ``Stream`` windows, segmenting and not.
2. **Real-time factor** on a ``--minutes`` (30) file built from the same utterances (repeated, seeded silences):
   seconds of processing (VAD + mel + model + CTC decode, 1 thread) per second of audio, for the integer build
   (segmenting, the default, and unsegmented) and for ONNX Runtime FP32 and INT8 QDQ (``quantize_static`` as
   ``zsq bench`` does it: 8 seeded N(0, 1) calibration mels) of the same model exported at T = 1000, run through
   the same segmenting ``Stream``.  The model's share is timed by wrapping ``Stream.infer`` (the inner
   ``WindowStream`` of each utterance is created with it), the mel's by wrapping each inner stream's
   ``MelFrontend``; the utterances found and the windows run are reported.  ONNX Runtime gets no length, so
   every window shorter than T (each utterance's last) is zero-padded: its WER on the file is not comparable.
   The engines take turns, ``--rounds`` passes each.
3. **Peak RSS** (``ru_maxrss`` of a fresh ``python3 -m zsq_tvm.cli transcribe quartznet5x5 FILE`` per file) on
   one utterance and on 1-, 5- and ``--minutes``-minute files.

The WAV files live in a temporary folder (``--work`` to keep them).  Example (bench/results/long_audio.json)::

    python3 -m bench.long_audio --utterances 200 --json bench/results/long_audio.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SR = 16000
# Peak RSS of one command, measured in a fresh interpreter: RUSAGE_CHILDREN after its only child ended.
_RSS_WRAPPER = ("import json, resource, subprocess, sys, time\n"
                "t = time.perf_counter()\n"
                "r = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)\n"
                "print(json.dumps({'rc': r.returncode, 'wall_s': time.perf_counter() - t, "
                "'maxrss_kb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, "
                "'stdout': r.stdout, 'stderr': r.stderr[-2000:]}))\n")


# ---------------------------------------------------------------- corpus
def synth_test_split(out_dir: Path, n: int, seed: int, workers: int) -> list[dict]:
    """The first ``n`` utterances of lab.corpus's ``test`` split, synthesized into ``out_dir``; manifest rows
    (``audio_filepath`` absolute) in the corpus order; failed syntheses are skipped as lab.corpus does."""
    from concurrent.futures import ProcessPoolExecutor

    from tqdm import tqdm

    from lab.corpus import _job, collect_texts, plan_jobs

    texts = collect_texts(seed)
    jobs = [j for j in plan_jobs(texts, str(out_dir), 0.0, seed=seed) if j[1] == "test"][:n]
    (out_dir / "wav" / "test").mkdir(parents=True, exist_ok=True)
    rows = []
    with ProcessPoolExecutor(workers) as ex:
        for r in tqdm(ex.map(_job, jobs, chunksize=4), total=len(jobs), desc="synthesizing test", unit="utt",
                      file=sys.stderr):
            if r is not None:
                rows.append({**r, "audio_filepath": str(out_dir / r["audio_filepath"])})
    return rows


def _read_wav(path):
    import soundfile as sf

    x, sr = sf.read(str(path), dtype="float32")
    assert sr == SR and x.ndim == 1, (path, sr, x.shape)
    return x


def plan_concat(rows: list[dict], seconds: float, rng, cycle: bool = False) -> tuple[list[tuple[int, int]], float]:
    """``[(utterance index, silence samples before it)]`` filling at most ``seconds``; ``cycle``: repeat the rows."""
    out, total, i = [], 0, 0
    limit = int(round(seconds * SR))
    while True:
        if i >= len(rows) and not cycle:
            break
        k = i % len(rows)
        gap = 0 if not out else int(round(rng.uniform(0.3, 1.0) * SR))
        n = int(round(rows[k]["duration"] * SR))
        if total + gap + n > limit:
            break
        out.append((k, gap))
        total += gap + n
        i += 1
    return out, total / SR


def write_concat(path: Path, rows: list[dict], plan: list[tuple[int, int]], pad_to: float | None = None) -> float:
    """Write the planned concatenation as 16-bit PCM (the utterances are 16-bit, so samples are exact), block by
    block; ``pad_to``: trailing silence up to that many seconds.  Returns the file's seconds."""
    import numpy as np
    import soundfile as sf

    n = 0
    with sf.SoundFile(str(path), "w", SR, 1, "PCM_16") as f:
        for k, gap in plan:
            x = _read_wav(rows[k]["audio_filepath"])
            f.write(np.zeros(gap, np.float32))
            f.write(x)
            n += gap + len(x)
        if pad_to is not None and n < int(pad_to * SR):
            f.write(np.zeros(int(pad_to * SR) - n, np.float32))
            n = int(pad_to * SR)
    return n / SR


def group_long(rows: list[dict], seconds: float, rng) -> list[list[tuple[int, int]]]:
    """Consecutive utterances in files of about ``seconds`` (at least that much; a short remainder joins the
    previous file)."""
    groups, cur, total = [], [], 0.0
    for i, r in enumerate(rows):
        gap = 0 if not cur else int(round(rng.uniform(0.3, 1.0) * SR))
        cur.append((i, gap))
        total += gap / SR + r["duration"]
        if total >= seconds:
            groups.append(cur)
            cur, total = [], 0.0
    if cur:
        if groups and total < seconds / 2:
            groups[-1] += [(cur[0][0], int(round(rng.uniform(0.3, 1.0) * SR)))] + cur[1:]
        else:
            groups.append(cur)
    return groups


# ---------------------------------------------------------------- transcription
def transcribe_stream(stream, pcm, block: int = 10 * SR) -> str:
    for i in range(0, len(pcm), block):
        stream.push(pcm[i:i + block])
    stream.finish()
    return " ".join(stream.transcript().text.split())


def transcribe_file(stream, path) -> str:
    """As ``zsq transcribe`` reads a file: :func:`zsq_tvm.audio.io.pcm_blocks` into one stream."""
    from zsq_tvm.audio.io import audio_info, pcm_blocks

    for b in pcm_blocks(audio_info(path)):
        stream.push(b)
    stream.finish()
    return " ".join(stream.transcript().text.split())


def score(refs, hyps) -> dict:
    """Corpus WER with jiwer (what ``zsq eval`` cross-checks against): ``zsq_tvm.evaluate.score`` also computes a
    pure-Python character edit distance, minutes per 30-minute transcript."""
    import jiwer

    o = jiwer.process_words(list(refs), list(hyps))
    errors = o.substitutions + o.deletions + o.insertions
    words = o.substitutions + o.deletions + o.hits
    return {"wer": errors / words, "word_errors": errors, "n_words": words, "jiwer_checked": True}


def fp32_controls(model, rows, refs, files, long_refs, build) -> dict:
    """The FP32 torch model (length-agnostic): each utterance alone, each long file whole (one mel normalized over
    the file, no windows) and the long files through the same ``Stream`` windows as the integer build (each
    window run on its valid frames), segmenting (the default) and not.  Whole vs unsegmented is the cost of the
    windows alone; alone vs whole that of the long-file audio; segmented that of the VAD's cuts."""
    from zsq_tvm.ctc import greedy_decode
    from zsq_tvm.evaluate import TorchRunner, compute_mel
    from zsq_tvm.streaming import Stream
    from zsq_tvm.zoo.models import load_torch

    r = TorchRunner(load_torch(model), model)

    def dec(path):
        return " ".join(greedy_decode(r.infer(compute_mel(str(path))[None])[None], build.vocab, "BTV")[0].split())

    def infer(mel, valid):
        return r.infer(mel[:, :, :valid])[None]

    ref = build.stream()

    def stream(segment):
        return Stream(infer, ref.frames, ref.stride, build.vocab, context=ref.context, layout="BTV",
                      segment=segment)

    alone = [dec(x["audio_filepath"]) for x in rows]
    whole = [dec(p) for p, _ in files]
    seg = [transcribe_file(stream(True), p) for p, _ in files]
    unseg = [transcribe_file(stream(False), p) for p, _ in files]
    return {"wer_alone": score(refs, alone)["wer"], "wer_whole_file": score(long_refs, whole)["wer"],
            "wer_stitched_segmented": score(long_refs, seg)["wer"],
            "wer_stitched_unsegmented": score(long_refs, unseg)["wer"]}


def utterance_spans(rows, plan) -> list[tuple[int, int, int]]:
    """``[(utterance index, first mel frame, end mel frame)]`` of a planned concatenation."""
    out, pos = [], 0
    for k, gap in plan:
        pos += gap
        n = int(round(rows[k]["duration"] * SR))
        out.append((k, pos // 160, (pos + n) // 160))
        pos += n
    return out


def match_segments(segments, spans) -> dict:
    """How the utterances the VAD found (mel frame ranges) line up with the true ones: utterances overlapped by
    more than one found segment (cut), found segments overlapping more than one utterance (merged), utterances
    no segment overlaps (missed)."""
    def over(a, b):
        return a[0] < b[1] and b[0] < a[1]

    per_utt = [[j for j, sg in enumerate(segments) if over(sg, (s0, s1))] for _, s0, s1 in spans]
    per_seg = [[i for i, (_, s0, s1) in enumerate(spans) if over(sg, (s0, s1))] for sg in segments]
    return {"cut": [spans[i][0] for i, js in enumerate(per_utt) if len(js) > 1],
            "missed": [spans[i][0] for i, js in enumerate(per_utt) if not js],
            "merged": [[spans[i][0] for i in is_] for is_ in per_seg if len(is_) > 1],
            "per_utt_segments": per_utt}


def words_per_utterance(words, spans) -> list[str]:
    """The stream's words assigned to the utterances by their middle time (boundaries half-way in the pauses)."""
    bounds = [(spans[i][2] + spans[i + 1][1]) / 2 / 100 for i in range(len(spans) - 1)]
    out = [[] for _ in spans]
    import bisect

    for w in words:
        out[bisect.bisect_right(bounds, (w.start + w.end) / 2)].append(w.text)
    return [" ".join(x) for x in out]


def _timed(f, acc: list):
    """``f`` that adds its seconds to ``acc[0]`` and counts its calls in ``acc[1]``."""
    def g(*a, **k):
        t = time.perf_counter()
        y = f(*a, **k)
        acc[0] += time.perf_counter() - t
        acc[1] += 1
        return y
    return g


def rtf_pass(make_stream, pcm) -> dict:
    """One pass of a stream over ``pcm``: wall / CPU seconds, the model's and the mel's shares (``Stream.infer``
    and each inner ``WindowStream``'s mel frontend wrapped), the windows run and the utterances found."""
    st = make_stream()
    model, mel = [0.0, 0], [0.0, 0]
    st.infer = _timed(st.infer, model)
    if st._inner is not None:  # segment=False: the one inner stream exists already
        st._inner.infer = st.infer
        st._inner._mel = _timed(st._inner._mel, mel)
    new_inner = st._new_inner

    def timed_inner(frame0):
        w = new_inner(frame0)
        w._mel = _timed(w._mel, mel)
        return w
    st._new_inner = timed_inner
    c0, t0 = time.process_time(), time.perf_counter()
    text = transcribe_stream(st, pcm)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    audio = len(pcm) / SR
    return {"wall_s": wall, "cpu_s": cpu, "model_s": model[0], "mel_s": mel[0],
            "rest_s": wall - model[0] - mel[0], "rtf": wall / audio, "windows": model[1],
            "utterances_found": len(st.segments) if st.segment else None, "text": text}


# ---------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m bench.long_audio", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="quartznet5x5", help="shipped model (load_build: T = 1000, time mask)")
    ap.add_argument("--utterances", type=int, default=200, help="first N utterances of the test split")
    ap.add_argument("--long-seconds", type=float, default=300.0, help="length of each stitched file")
    ap.add_argument("--minutes", type=float, default=30.0, help="length of the RTF / RSS file")
    ap.add_argument("--rounds", type=int, default=2, help="RTF passes per engine, engines taking turns")
    ap.add_argument("--show", type=int, default=5,
                    help="utterances whose stitched words differ most from alone, printed")
    ap.add_argument("--max-diff", type=float, default=0.1, help="acceptance, WER points")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2, help="synthesis processes")
    ap.add_argument("--work", default=None, help="keep the WAV files here (default: a temporary folder)")
    ap.add_argument("--skip", nargs="*", default=[], choices=["wer", "rtf", "rss"])
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)

    # one thread everywhere, before TVM's pool or torch start
    for v in ("TVM_NUM_THREADS", "OMP_NUM_THREADS"):
        os.environ[v] = "1"
    import numpy as np
    import torch

    torch.set_num_threads(1)

    from zsq_tvm.metrics import normalize_text
    from zsq_tvm.streaming import WindowPlan
    from zsq_tvm.transcribe import load_build

    res: dict = {"command": "python3 -m bench.long_audio " + " ".join(argv if argv is not None else sys.argv[1:]),
                 "model": a.model, "frames": 1000, "seed": a.seed, "threads": 1,
                 "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()}}
    try:
        from zsq_tvm.backends.x86.cpu import host_cpu

        res["machine"]["cpu"] = host_cpu()
    except Exception:  # pragma: no cover
        pass
    try:
        res["machine"]["model_name"] = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                                            if l.startswith("model name"))
        flags = next(l for l in open("/proc/cpuinfo") if l.startswith("flags")).split()
        res["machine"]["avx512_vnni"] = "avx512_vnni" in flags
        res["machine"]["load_avg_start"] = os.getloadavg()
    except (OSError, StopIteration):  # pragma: no cover
        pass

    with tempfile.TemporaryDirectory(prefix="zsq_long_") as td:
        work = Path(a.work) if a.work else Path(td)
        work.mkdir(parents=True, exist_ok=True)
        t = time.time()
        rows = synth_test_split(work / "corpus", a.utterances, a.seed, a.workers)
        res["synth_seconds"] = round(time.time() - t, 1)
        refs = [normalize_text(r["text"]) for r in rows]
        print(f"{len(rows)} test utterances, {sum(r['duration'] for r in rows) / 60:.1f} min of speech "
              f"({res['synth_seconds']:.0f} s to synthesize)", flush=True)

        build = load_build(a.model)
        default_ctx = build.stream().context
        res["context_frames_default"] = default_ctx

        # ---- 1. long files vs utterances alone
        if "wer" not in a.skip:
            from tqdm import tqdm

            pcms = [_read_wav(r["audio_filepath"]) for r in rows]
            alone = [transcribe_stream(build.stream(segment=False), x)
                     for x in tqdm(pcms, desc="utterances alone", unit="utt", file=sys.stderr)]
            alone_seg, alone_nseg = [], []
            for x in tqdm(pcms, desc="utterances alone, segmenting", unit="utt", file=sys.stderr):
                st = build.stream()
                alone_seg.append(transcribe_stream(st, x))
                alone_nseg.append(len(st.segments))
            del pcms
            s_alone, s_alone_seg = score(refs, alone), score(refs, alone_seg)
            groups = group_long(rows, a.long_seconds, np.random.default_rng(a.seed))
            files, long_refs, long_alone, spans = [], [], [], []
            for g_i, g in enumerate(groups):
                p = work / f"long_{g_i:02d}.wav"
                sec = write_concat(p, rows, g)
                files.append((p, sec))
                long_refs.append(" ".join(refs[k] for k, _ in g))
                long_alone.append(" ".join(w for w in (alone[k] for k, _ in g) if w))
                spans.append(utterance_spans(rows, g))

            def long_run(segment):
                hyps, streams = [], []
                for p, _ in files:
                    st = build.stream(segment=segment)
                    hyps.append(transcribe_file(st, p))
                    streams.append(st)
                return score(long_refs, hyps), score(long_alone, hyps), streams

            s_seg, agree_seg, seg_streams = long_run(True)
            s_unseg, agree_unseg, _ = long_run(False)
            # where the segmented transcript differs from the utterances alone
            cut, merged, missed, per_utt = [], [], [], {}
            for st, sp in zip(seg_streams, spans):
                m = match_segments(st.segments, sp)
                cut += m["cut"]
                merged += m["merged"]
                missed += m["missed"]
                for (k, s0, s1), hyp, js in zip(sp, words_per_utterance(st.all_words, sp), m["per_utt_segments"]):
                    per_utt[k] = (hyp, [st.segments[j] for j in js], s0, s1)
            import jiwer

            edits = {k: (jiwer.process_words(alone[k], h).wer * max(1, len(alone[k].split())) if alone[k] else
                         len(h.split())) for k, (h, *_) in per_utt.items()}
            differ = sorted((k for k in edits if edits[k] > 0), key=lambda k: -edits[k])
            s_seg_utt = score(refs, [per_utt[k][0] for k in range(len(rows))])
            fp32 = fp32_controls(a.model, rows, refs, files, long_refs, build)
            diff = 100 * (s_seg["wer"] - s_alone["wer"])
            wer_res = {"utterances": len(rows), "words": s_alone["n_words"], "long_files": len(files),
                       "long_file_seconds": [round(s, 1) for _, s in files],
                       "context_frames": default_ctx, "max_diff_points": a.max_diff,
                       "wer_alone": s_alone["wer"], "word_errors_alone": s_alone["word_errors"],
                       "alone_note": "each utterance through build.stream(segment=False): one window on exactly "
                                     "its frames",
                       "wer_stitched": s_seg["wer"], "word_errors_stitched": s_seg["word_errors"],
                       "stitched_note": "each long file through one build.stream() (default: cut at pauses)",
                       "words_stitched_refs": s_seg["n_words"], "diff_points": diff,
                       "pass": abs(diff) <= a.max_diff, "jiwer_checked": s_seg["jiwer_checked"],
                       "stitched_vs_alone_transcripts_wer": agree_seg["wer"],
                       "stitched_vs_alone_word_edits": agree_seg["word_errors"],
                       "wer_stitched_per_utterance_words": s_seg_utt["wer"],
                       "segments": {"true_utterances": len(rows),
                                    "found_per_file": [len(st.segments) for st in seg_streams],
                                    "utterances_cut": len(cut), "segments_merging_utterances": len(merged),
                                    "utterances_missed": len(missed),
                                    "utterances_whose_words_differ_from_alone": len(differ),
                                    "cut_ids": cut, "merged_ids": merged},
                       "unsegmented": {"wer_stitched": s_unseg["wer"], "word_errors": s_unseg["word_errors"],
                                       "diff_points": 100 * (s_unseg["wer"] - s_alone["wer"]),
                                       "stitched_vs_alone_word_edits": agree_unseg["word_errors"],
                                       "windows_per_file": [len(WindowPlan(build.stream().frames, build.time_stride,
                                                                           default_ctx).windows(int(s * 100)))
                                                            for _, s in files],
                                       "note": "build.stream(segment=False): one window sequence over the file"},
                       "alone_segmenting": {"wer": s_alone_seg["wer"], "word_errors": s_alone_seg["word_errors"],
                                            "utterances_cut_in_two_or_more": sum(n > 1 for n in alone_nseg),
                                            "utterances_with_no_speech_found": sum(n == 0 for n in alone_nseg),
                                            "note": "each utterance alone through build.stream() (segmenting)"},
                       "fp32_controls": fp32}
            print(f"[long] {len(rows)} utterances, {s_alone['n_words']} words, {len(files)} files "
                  f"({', '.join(f'{s:.0f} s' for _, s in files)}): WER alone {100 * s_alone['wer']:.2f} % "
                  f"({s_alone['word_errors']} errors), long files segmented {100 * s_seg['wer']:.2f} % "
                  f"({s_seg['word_errors']}), difference {diff:+.2f} points ({'PASS' if wer_res['pass'] else 'FAIL'}"
                  f" at {a.max_diff}); {agree_seg['word_errors']} word edits vs the alone transcripts; unsegmented "
                  f"{100 * s_unseg['wer']:.2f} % ({s_unseg['word_errors']}); alone through the segmenting stream "
                  f"{100 * s_alone_seg['wer']:.2f} %", flush=True)
            print(f"[long] VAD: {sum(len(st.segments) for st in seg_streams)} utterances found for {len(rows)}; "
                  f"{len(cut)} cut, {len(merged)} merged segments, {len(missed)} missed; {len(differ)} utterances' "
                  f"words differ from alone.  FP32 torch: alone {100 * fp32['wer_alone']:.2f} %, whole file "
                  f"{100 * fp32['wer_whole_file']:.2f} %, segmented {100 * fp32['wer_stitched_segmented']:.2f} %, "
                  f"unsegmented {100 * fp32['wer_stitched_unsegmented']:.2f} %", flush=True)
            for k in differ[:a.show]:
                h, segs, s0, s1 = per_utt[k]
                print(f"  utt {k} frames [{s0}, {s1}), segments {segs}, {edits[k]:.0f} edits\n"
                      f"    ref    : {refs[k]}\n    alone  : {alone[k]}\n    in file: {h}", flush=True)
            res["stitching"] = wer_res

        # ---- the 1 / 5 / N-minute files
        rng = np.random.default_rng(a.seed + 1)
        plan_n, _ = plan_concat(rows, a.minutes * 60, rng, cycle=True)
        lengths = {k: v for k, v in (("1min", 60.0), ("5min", 300.0)) if v < a.minutes * 60}
        lengths[f"{a.minutes:g}min"] = a.minutes * 60
        paths = {}
        for name, sec in lengths.items():
            sub = [(k, g) for (k, g), end in zip(plan_n, np.cumsum(
                [g + int(round(rows[k]["duration"] * SR)) for k, g in plan_n])) if end <= sec * SR]
            paths[name] = (work / f"file_{name}.wav", sub)
            write_concat(paths[name][0], rows, sub, pad_to=sec)
        big_name = f"{a.minutes:g}min"
        big_path, big_plan = paths[big_name]
        big_refs = " ".join(refs[k] for k, _ in big_plan)

        # ---- 2. real-time factor
        if "rtf" not in a.skip:
            from zsq_tvm.audio.io import read_pcm
            from zsq_tvm.benchmark import _ort_session, ort_int8_qdq
            from zsq_tvm.streaming import Stream
            from zsq_tvm.zoo.nets.export import export_onnx

            pcm, _ = read_pcm(big_path)
            ref_stream = build.stream()
            # the same length handling as the build: a symbolic-T build -> an ONNX model with a dynamic T, run on
            # exactly each window's frames; a fixed build -> fixed T, windows zero-padded
            dynamic = build.frames is None
            onnx_path = export_onnx(a.model, work / "model.onnx", frames=build.frames)
            shape = [1, 64, build.frames or 1000]
            r0 = np.random.default_rng(0)
            r0.standard_normal(shape)  # the timing input of zsq bench, then its calibration mels
            cal = [r0.standard_normal(shape).astype(np.float32) for _ in range(8)]
            qdq = ort_int8_qdq(str(onnx_path), str(work / "model_int8.onnx"), "mel", cal)
            sessions = {"ort_fp32": _ort_session(str(onnx_path), 1), "ort_int8_qdq": _ort_session(qdq, 1)}

            def ort_stream(sess):
                def infer(mel, valid):  # fixed T: no length input, the last window runs zero-padded
                    return sess.run(None, {"mel": mel[:, :, :valid] if dynamic else mel})[0]
                return lambda: Stream(infer, ref_stream.frames, ref_stream.stride, build.vocab,
                                      context=ref_stream.context, layout="auto")

            engines = {"zsq_int8": lambda: build.stream(),
                       "zsq_int8_unsegmented": lambda: build.stream(segment=False),
                       **{k: ort_stream(s) for k, s in sessions.items()}}
            warm = np.zeros(30 * SR, np.float32)
            for mk in engines.values():  # warm-up: 30 s, 5 windows
                rtf_pass(mk, warm)
            passes = {k: [] for k in engines}
            order = list(engines)
            for r in range(a.rounds):
                for k in (order if r % 2 == 0 else order[::-1]):
                    p = rtf_pass(engines[k], pcm)
                    passes[k].append(p)
                    print(f"[rtf] round {r} {k}: {p['wall_s']:.1f} s for {len(pcm) / SR:.0f} s, RTF {p['rtf']:.4f} "
                          f"({p['windows']} windows, {p['utterances_found']} utterances found) "
                          f"(model {p['model_s']:.1f} s, mel {p['mel_s']:.1f} s, rest {p['rest_s']:.1f} s, "
                          f"CPU {p['cpu_s']:.1f} s)", flush=True)
            rtf = {"audio_seconds": len(pcm) / SR, "windows": passes["zsq_int8"][0]["windows"],
                   "utterances_found": passes["zsq_int8"][0]["utterances_found"],
                   "utterances_in_file": len(big_plan), "rounds": a.rounds,
                   "note": "VAD + mel + model + CTC decode, 1 thread; " + (
                       "symbolic-T build: every engine runs each window at its own length (ONNX exported with a "
                       "dynamic T)" if dynamic else
                       "ONNX Runtime gets no length: every window shorter than T (each utterance's last) is "
                       "zero-padded, so its WER on the file is not comparable"),
                   "onnx_int8_calibration": "8 seeded N(0, 1) mels, as zsq bench (zsq_tvm.benchmark)",
                   "engines": {}}
            for k, ps in passes.items():
                best = min(ps, key=lambda p: p["wall_s"])
                wer_k = score([big_refs], [ps[0]["text"]])
                rtf["engines"][k] = {"rtf_best": best["rtf"], "rtf_all": [p["rtf"] for p in ps],
                                     "wall_s_all": [round(p["wall_s"], 2) for p in ps],
                                     "model_s": best["model_s"], "mel_s": best["mel_s"], "rest_s": best["rest_s"],
                                     "cpu_s": best["cpu_s"], "windows": best["windows"],
                                     "utterances_found": best["utterances_found"], "model_ms_per_window": 1e3 * best["model_s"] /
                                     best["windows"], "mel_ms_per_window": 1e3 * best["mel_s"] / best["windows"],
                                     "wer_on_file": wer_k["wer"], "words_on_file": wer_k["n_words"]}
            z = rtf["engines"]["zsq_int8"]["rtf_best"]
            for k, e in rtf["engines"].items():
                e["slower_than_zsq"] = e["rtf_best"] / z
            res["rtf"] = rtf
            del pcm

        # ---- 3. peak RSS of `zsq transcribe`, a fresh process per file
        if "rss" not in a.skip:
            files = {"one_utterance": (Path(rows[0]["audio_filepath"]), rows[0]["duration"]),
                     **{k: (p, lengths[k]) for k, (p, _) in paths.items()}}
            env = {**os.environ, "TVM_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
            rss = {}
            for k, (p, sec) in files.items():
                cmd = [sys.executable, "-m", "zsq_tvm.cli", "transcribe", a.model, str(p)]
                out = subprocess.run([sys.executable, "-c", _RSS_WRAPPER, *cmd], capture_output=True, text=True,
                                     env=env, check=True)
                r = json.loads(out.stdout.strip().splitlines()[-1])
                if r["rc"] != 0:
                    raise RuntimeError(f"zsq transcribe {p} failed ({r['rc']}): {r['stderr']}")
                rss[k] = {"audio_seconds": round(sec, 2), "peak_rss_mb": r["maxrss_kb"] / 1024,
                          "wall_s": round(r["wall_s"], 1), "words": len(r["stdout"].split())}
                print(f"[rss] {k}: {sec:.0f} s audio, peak RSS {r['maxrss_kb'] / 1024:.1f} MiB, "
                      f"{r['wall_s']:.1f} s wall", flush=True)
            peaks = [v["peak_rss_mb"] for v in rss.values()]
            res["rss"] = {"command": f"python3 -m zsq_tvm.cli transcribe {a.model} FILE (TVM_NUM_THREADS=1)",
                          "files": rss, "max_minus_min_mb": max(peaks) - min(peaks)}
    try:
        res["machine"]["load_avg_end"] = os.getloadavg()
    except OSError:  # pragma: no cover
        pass

    print()
    print(format_table(res))
    if a.json:
        for e in res.get("rtf", {}).get("engines", {}).values():
            e.pop("text", None)
        Path(a.json).write_text(json.dumps(res, indent=1) + "\n")
    return 0


def format_table(res: dict) -> str:
    lines = [f"machine: {res['machine'].get('model_name', '?')} ({res['machine'].get('cpu')}), "
             f"{res['machine'].get('cores')} cores, 1 thread"]
    s = res.get("stitching")
    if s:
        g, u, f = s["segments"], s["unsegmented"], s["fp32_controls"]
        lines += ["", f"long files ({s['utterances']} test utterances, {s['words']} words, {s['long_files']} files of "
                      f"~{sum(s['long_file_seconds']) / s['long_files']:.0f} s, context {s['context_frames']} frames)",
                  f"  WER alone (one window per utterance)  {100 * s['wer_alone']:6.2f} %  "
                  f"({s['word_errors_alone']} errors)",
                  f"  WER long files, segmenting (default)  {100 * s['wer_stitched']:6.2f} %  "
                  f"({s['word_errors_stitched']} errors)",
                  f"  difference                            {s['diff_points']:+6.2f} points  "
                  f"({'pass' if s['pass'] else 'FAIL'}, limit {s['max_diff_points']})",
                  f"  WER long files, segment=False         {100 * u['wer_stitched']:6.2f} %  "
                  f"({u['word_errors']} errors, {u['diff_points']:+.2f} points)",
                  f"  WER alone through segmenting stream   {100 * s['alone_segmenting']['wer']:6.2f} %",
                  f"  VAD: {sum(g['found_per_file'])} utterances found for {g['true_utterances']}: "
                  f"{g['utterances_cut']} cut, {g['segments_merging_utterances']} merged, {g['utterances_missed']} "
                  f"missed; {g['utterances_whose_words_differ_from_alone']} utterances' words differ from alone",
                  f"  FP32 torch: alone {100 * f['wer_alone']:.2f} %, whole file at once "
                  f"{100 * f['wer_whole_file']:.2f} %, segmenting {100 * f['wer_stitched_segmented']:.2f} %, "
                  f"segment=False {100 * f['wer_stitched_unsegmented']:.2f} %"]
    r = res.get("rtf")
    if r:
        lines += ["", f"real-time factor, {r['audio_seconds'] / 60:.0f}-minute file ({r['utterances_in_file']} "
                      f"utterances, {r['utterances_found']} found), best of {r['rounds']} (model / mel / rest in s)"]
        for k, e in r["engines"].items():
            lines.append(f"  {k:20s} RTF {e['rtf_best']:.4f}  ({e['slower_than_zsq']:.2f}x zsq)  {e['windows']:4d} "
                         f"windows  model "
                         f"{e['model_s']:6.1f}  mel {e['mel_s']:5.1f}  rest {e['rest_s']:5.1f}  "
                         f"WER on file {100 * e['wer_on_file']:.2f} %")
    m = res.get("rss")
    if m:
        lines += ["", "peak RSS of zsq transcribe (fresh process per file)"]
        for k, v in m["files"].items():
            lines.append(f"  {k:13s} {v['audio_seconds']:7.0f} s audio  {v['peak_rss_mb']:7.1f} MiB  "
                         f"{v['wall_s']:6.1f} s wall")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
