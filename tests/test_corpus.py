"""Corpus planning (lab.corpus.plan_jobs): split hygiene, reproducibility and training rounds.

Only the plan is tested here (which sentence, voice, prosody and seed each utterance gets); no TTS runs.
"""
import hashlib

import pytest

from lab.corpus import ROUND_STRIDE, plan_jobs

TEXTS = [f"sentence number {i} has words" for i in range(3000)]


def _split(jobs, name):
    return [j for j in jobs if j[1] == name]


def test_round0_plan_is_the_one_the_shipped_models_were_trained_on():
    # Digest of the plan made by the corpus code the shipped checkpoints were trained with (before
    # training rounds existed): round 0 must never change, or the model cards stop being reproducible.
    jobs = plan_jobs(TEXTS, "out", 0.5)
    assert hashlib.sha256(repr(jobs).encode()).hexdigest() == \
        "038bcfb8db82c93f304af4f62683e985ac2f9a55dc08df58fe800310072ebb6f"


def test_eval_sentences_never_in_train_in_any_round():
    texts = [f"s {i}" for i in range(ROUND_STRIDE + 2000)]
    for r in (0, 1, 2):
        jobs = plan_jobs(texts, "out", 1.0, train_round=r)
        evals = {j[4] for j in jobs if j[1] != "train"}
        assert evals and not evals & {j[4] for j in _split(jobs, "train")}


def test_later_round_keeps_eval_splits_and_draws_fresh_training_data():
    texts = [f"s {i}" for i in range(2 * ROUND_STRIDE + 2000)]
    r0 = plan_jobs(texts, "out", 1.0)
    r1 = plan_jobs(texts, "out", 1.0, train_round=1)
    assert [j for j in r0 if j[1] != "train"] == [j for j in r1 if j[1] != "train"]
    t0, t1 = _split(r0, "train"), _split(r1, "train")
    assert len(t1) > 100
    assert not {j[4] for j in t0} & {j[4] for j in t1}           # new sentences
    assert {j[9] for j in t0}.isdisjoint({j[9] for j in t1})     # new augmentation seeds
    assert [j[2:4] for j in t0[:50]] != [j[2:4] for j in t1[:50]]  # new voice draws
    assert plan_jobs(texts, "out", 1.0, train_round=1) == r1      # seeded


def test_negative_round_is_an_error():
    with pytest.raises(ValueError, match="train_round"):
        plan_jobs(TEXTS, "out", 0.1, train_round=-1)
