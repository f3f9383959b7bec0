"""Language-model task: a synthetic language with a known loss floor, and local token files."""

from __future__ import annotations

import numpy as np
import pytest

from reliscale.tasks.lm import LMTask, MarkovLanguage


def test_loss_floor_matches_the_mean_log_loss_of_the_true_chain_on_samples():
    lang = MarkovLanguage(50)
    seqs = lang.sample(np.random.default_rng(0), 4000, 17)
    prob = np.zeros((50, 50))
    np.add.at(prob, (np.arange(50)[:, None], lang.succ), lang.probs)
    nll = -np.log(prob[seqs[:, :-1], seqs[:, 1:]])
    assert nll.mean() == pytest.approx(lang.loss_floor(17), rel=0.02)


def test_synthetic_language_is_far_more_predictable_than_its_unigram_distribution(tmp_path):
    split = LMTask(64, 32, seed=0, eval_examples=512, cache_dir=tmp_path).split("id")
    assert split["baseline_floor"] < 0.6 * split["baseline_unigram"]
    assert split["baseline_unigram"] <= np.log(64) + 0.01


def test_training_batches_are_a_pure_function_of_seed_rank_step_micro(tmp_path):
    task = LMTask(64, 16, seed=3, eval_examples=8, cache_dir=tmp_path)
    a = task.train_batch(4, 1, 0, 5)["tokens"]
    assert a.shape == (5, 17) and np.array_equal(a, task.train_batch(4, 1, 0, 5)["tokens"])
    assert not np.array_equal(a, task.train_batch(4, 1, 1, 5)["tokens"])
