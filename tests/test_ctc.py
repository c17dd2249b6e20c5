import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zsq_tvm.ctc import QUARTZNET_VOCAB, Vocab, greedy_decode, greedy_ids
from zsq_tvm.core.errors import ConfigError

V = Vocab()
BLANK = V.blank


def onehot(ids, num_classes=29, dtype=np.float32, hi=5):
    a = np.zeros((len(ids), num_classes), dtype)
    a[np.arange(len(ids)), ids] = hi
    return a


def ids_of(text):
    return [QUARTZNET_VOCAB.index(c) for c in text]


def test_vocab_is_nemo_quartznet():
    assert QUARTZNET_VOCAB[0] == " " and QUARTZNET_VOCAB[1] == "a" and QUARTZNET_VOCAB[26] == "z"
    assert QUARTZNET_VOCAB[27] == "'" and len(QUARTZNET_VOCAB) == 28
    assert V.blank == 28 and V.num_classes == 29
    assert Vocab.from_json(V.to_json()) == V


def test_collapse_repeats_and_blanks():
    h, e, l, o = ids_of("helo")
    frames = [h, h, BLANK, e, l, l, BLANK, l, o, o, BLANK]
    assert greedy_decode(onehot(frames)) == ["hello"]
    assert greedy_ids(onehot(frames)) == [[h, e, l, l, o]]


def test_all_blank_and_empty():
    assert greedy_decode(onehot([BLANK] * 7)) == [""]


@pytest.mark.parametrize("dtype", [np.int8, np.int32, np.float32, np.float16])
def test_integer_and_float_logits(dtype):
    frames = ids_of("it's a test")
    x = onehot(frames, dtype=dtype, hi=100)
    assert greedy_decode(x) == ["it's a test"]


def test_batched_and_bvt_layout():
    a = onehot(ids_of("ab") + [BLANK, 1], hi=3)
    b = onehot(ids_of("cc") + [BLANK, 3], hi=3)
    btv = np.stack([a, b])  # [B, T, V]
    assert greedy_decode(btv) == ["aba", "cc"]
    bvt = btv.transpose(0, 2, 1)
    assert greedy_decode(bvt, layout="BVT") == ["aba", "cc"]
    assert greedy_decode(bvt) == ["aba", "cc"]  # auto: V=29 found on axis 1


def test_vocab_mismatch_is_clear():
    with pytest.raises(ConfigError, match="30 classes"):
        greedy_decode(np.zeros((1, 5, 30), np.float32))


def test_custom_vocab():
    v = Vocab(["x", "y"])
    assert greedy_decode(onehot([0, 2, 0, 1, 1], num_classes=3), v) == ["xxy"]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 28), min_size=0, max_size=40))
def test_property_matches_reference(seq):
    logits = onehot(seq, hi=7).astype(np.int8) if seq else np.zeros((0, 29), np.int8)
    if not seq:
        assert greedy_ids(np.zeros((1, 0, 29), np.int8)) == [[]]
        return
    ref, prev = [], None
    for s in seq:
        if s != prev and s != BLANK:
            ref.append(s)
        prev = s
    assert greedy_ids(logits) == [ref]
