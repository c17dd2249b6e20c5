"""Word error rate without third-party dependencies (jiwer gives the same numbers)."""
from __future__ import annotations

import re
from typing import Sequence, Tuple

_ALLOWED = re.compile(r"[^a-z' ]+")


def edit_distance(ref: Sequence, hyp: Sequence) -> int:
    """Levenshtein distance (substitutions, insertions, deletions all cost 1)."""
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


def wer(refs: Sequence[str], hyps: Sequence[str]) -> Tuple[float, int, int]:
    """Corpus WER = total word edits / total reference words.  Returns (wer, errors, ref_words)."""
    errs = words = 0
    for r, h in zip(refs, hyps):
        rw, hw = r.split(), h.split()
        errs += edit_distance(rw, hw)
        words += len(rw)
    if not words:  # errors over zero reference words: no rate at all, never a flattering 0 %
        raise ValueError("WER is undefined when the references have no words")
    return errs / words, errs, words


def cer(refs: Sequence[str], hyps: Sequence[str]) -> float:
    errs = chars = 0
    for r, h in zip(refs, hyps):
        errs += edit_distance(r, h)
        chars += len(r)
    return errs / chars if chars else 0.0


def normalize_text(s: str) -> str:
    """Lower-case, map to the model vocabulary (a-z, space, apostrophe), squeeze spaces."""
    s = s.lower().replace("\u2019", "'").replace("-", " ").replace("&", " and ")
    s = _ALLOWED.sub(" ", s)
    s = re.sub(r"\s*'\s*(?![a-z])|(?<![a-z])'", " ", s)  # drop quote marks that aren't apostrophes
    return re.sub(r"\s+", " ", s).strip()
