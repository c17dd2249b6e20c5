"""Character vocabulary and greedy CTC decoding.

Works on float or integer logits (int8/int32): greedy decoding only needs the argmax, which
an integer-only model gives exactly.  Logits may be ``[T', V]``, ``[B, T', V]`` or
``[B, V, T']`` (say ``layout="BVT"``); ``V = len(vocab) + 1`` with the blank last (NeMo).
"""

from __future__ import annotations

import string
from typing import Sequence

import numpy as np

from zsq_tvm.core.errors import ConfigError

__all__ = ["QUARTZNET_VOCAB", "Vocab", "greedy_decode", "greedy_ids"]

#: NeMo's English character vocabulary for QuartzNet/Jasper: space, a..z, apostrophe.
QUARTZNET_VOCAB: tuple[str, ...] = (" ",) + tuple(string.ascii_lowercase) + ("'",)


class Vocab:
    """Labels plus the CTC blank, which is the last class (index ``len(labels)``)."""

    def __init__(self, labels: Sequence[str] = QUARTZNET_VOCAB):
        labels = tuple(labels)
        if not labels or any(not isinstance(s, str) for s in labels):
            raise ConfigError("vocabulary must be a non-empty list of strings", "pass e.g. [' ', 'a', ..., \"'\"]")
        self.labels = labels

    @property
    def blank(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.labels) + 1

    def to_json(self) -> dict:
        return {"labels": list(self.labels), "blank": self.blank}

    @classmethod
    def from_json(cls, obj) -> "Vocab":
        if isinstance(obj, dict):
            obj = obj["labels"]
        return cls(obj)

    def __len__(self):
        return len(self.labels)

    def __eq__(self, other):
        return isinstance(other, Vocab) and other.labels == self.labels

    def __repr__(self):
        return f"Vocab({len(self.labels)} labels + blank)"


def _class_axis_last(logits: np.ndarray, layout: str, num_classes: int | None) -> np.ndarray:
    a = np.asarray(logits)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise ConfigError(f"logits must be [T, V] or [B, T, V] / [B, V, T], got shape {a.shape}",
                          "pass the model output unchanged")
    if layout == "auto":
        if num_classes is not None and a.shape[1] == num_classes and a.shape[2] != num_classes:
            layout = "BVT"
        else:
            layout = "BTV"
    if layout == "BVT":
        a = a.transpose(0, 2, 1)
    elif layout != "BTV":
        raise ConfigError(f"unknown logits layout {layout!r}", "use 'BTV', 'BVT' or 'auto'")
    return a


def greedy_ids(logits, blank: int | None = None, layout: str = "auto") -> list[list[int]]:
    """Per utterance: argmax per frame, collapse repeats, drop blanks → list of class ids."""
    a = _class_axis_last(logits, layout, None if blank is None else blank + 1)
    if blank is None:
        blank = a.shape[-1] - 1
    best = a.argmax(axis=-1)  # ties → lowest index, same for int and float
    out = []
    for row in best:
        keep = np.ones(row.shape, dtype=bool)
        keep[1:] = row[1:] != row[:-1]
        out.append([int(i) for i in row[keep] if i != blank])
    return out


def greedy_decode(logits, vocab: Vocab | Sequence[str] | None = None, layout: str = "auto") -> list[str]:
    """Greedy CTC decode to strings (one per batch item)."""
    vocab = vocab if isinstance(vocab, Vocab) else Vocab(vocab if vocab is not None else QUARTZNET_VOCAB)
    a = _class_axis_last(logits, layout, vocab.num_classes)
    if a.shape[-1] != vocab.num_classes:
        raise ConfigError(
            f"logits have {a.shape[-1]} classes but the vocabulary has {len(vocab)} labels + blank",
            "pass the vocabulary the model was trained with",
        )
    return ["".join(vocab.labels[i] for i in ids) for ids in greedy_ids(a, vocab.blank, "BTV")]
