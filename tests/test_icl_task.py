"""In-context regression task: deterministic streams, calibrated classes, correct baselines."""

from __future__ import annotations

import numpy as np
import pytest

from reliscale.evaluate import eval_schedule
from reliscale.tasks.icl import ICLTask, baseline_errors, icl_metrics, ood_class, sample_prompts
from reliscale.tasks.registry import ICL_CLASSES


def task(tmp_path, **kw) -> ICLTask:
    args = {"mixture": {"dense_linear": 1.0}, "dim": 4, "points": 12, "noise_std": 0.0, "seed": 0,
            "eval_examples": 256, "cache_dir": tmp_path}
    return ICLTask(**{**args, **kw})


def test_training_batches_are_a_pure_function_of_seed_rank_step_micro(tmp_path):
    t = task(tmp_path)
    a, b = t.train_batch(5, 0, 1, 8), t.train_batch(5, 0, 1, 8)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    others = [t.train_batch(6, 0, 1, 8), t.train_batch(5, 1, 1, 8), t.train_batch(5, 0, 0, 8),
              task(tmp_path, seed=1).train_batch(5, 0, 1, 8)]
    assert all(not np.array_equal(a["x"], o["x"]) for o in others)


@pytest.mark.parametrize("cls", ICL_CLASSES)
def test_every_function_class_is_scaled_so_the_zero_predictor_scores_one(cls):
    p = sample_prompts(np.random.default_rng(0), 4000, {cls: 1.0}, dim=6, points=8)
    assert np.mean(p["y"] ** 2) / 6 == pytest.approx(1.0, rel=0.08)


def test_mixture_groups_follow_the_weights():
    p = sample_prompts(np.random.default_rng(0), 20000, {"dense_linear": 3, "sparse_linear": 1}, 4, 4)
    assert np.mean(p["group"] == 0) == pytest.approx(0.75, abs=0.015)


def test_sparse_linear_functions_have_k_nonzero_weights():
    # Recover w by least squares from 30 noiseless points in d=8: exactly 3 non-zeros.
    p = sample_prompts(np.random.default_rng(1), 20, {"sparse_linear": 1.0}, dim=8, points=30)
    w = np.stack([np.linalg.lstsq(x, y, rcond=None)[0] for x, y in zip(p["x"], p["y"], strict=True)])
    assert ((np.abs(w) > 1e-4).sum(axis=1) == 3).all()


def test_least_squares_baseline_matches_the_closed_form():
    # Min-norm least squares on k < d isotropic Gaussian points leaves E[err]/d = (d - k)/d,
    # and recovers w exactly from k >= d noiseless points.
    d, n = 5, 9
    p = sample_prompts(np.random.default_rng(2), 6000, {"dense_linear": 1.0}, d, n)
    curve = baseline_errors(p["x"], p["y"])["ls"].mean(axis=0)
    expected = np.array([max(d - k, 0) / d for k in range(n)])
    np.testing.assert_allclose(curve, expected, atol=0.04)


def test_averaging_and_knn_baselines_improve_with_more_examples():
    p = sample_prompts(np.random.default_rng(3), 3000, {"dense_linear": 1.0}, 2, 40)
    base = {k: v.mean(axis=0) for k, v in baseline_errors(p["x"], p["y"]).items()}
    assert base["avg"][-1] < base["avg"][2] and base["knn"][-1] < base["knn"][2]
    assert base["zero"].mean() == pytest.approx(1.0, rel=0.05)


def test_eval_splits_are_cached_and_reloaded_identically(tmp_path):
    t = task(tmp_path)
    first = t.split("id")
    assert len(list(tmp_path.glob("icl_id_*.npz"))) == 1
    again = task(tmp_path).split("id")
    assert np.array_equal(first.x, again.x) and np.array_equal(first.baselines["ls"], again.baselines["ls"])


def test_ood_splits_shift_what_they_say(tmp_path):
    t = task(tmp_path)
    iid, wnorm, xscale = t.split("id"), t.split("wnorm"), t.split("xscale")
    assert np.mean(wnorm.y**2) / np.mean(iid.y**2) == pytest.approx(4.0, rel=0.15)
    assert np.std(xscale.x) == pytest.approx(2 * np.std(iid.x), rel=0.05)
    assert ood_class({"dense_linear": 1.0}) == "sparse_linear"
    assert ood_class({"sparse_linear": 1.0, "dense_linear": 1.0}) == "relu2nn"


def test_icl_metrics_of_a_perfect_predictor_are_zero(tmp_path):
    split = task(tmp_path).split("id")
    metrics, curve = icl_metrics(split.y.copy(), split)
    assert metrics["mse"] == 0 and metrics["ls_ratio"] == 0 and not curve.any()
    metrics, _ = icl_metrics(np.zeros_like(split.y), split)
    assert metrics["mse"] == pytest.approx(metrics["baseline_zero"])


def test_eval_schedule_is_log_spaced_and_ends_at_the_budget():
    assert eval_schedule(64, 4) == [1, 4, 16, 64]
    assert eval_schedule(1000, 5)[-1] == 1000 and len(eval_schedule(1000, 5)) == 5
    assert eval_schedule(3, 10) == [1, 2, 3]
