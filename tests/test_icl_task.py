"""In-context regression task: deterministic streams, calibrated classes, correct baselines."""

from __future__ import annotations

import numpy as np
import pytest

from reliscale.evaluation.icl import icl_metrics
from reliscale.evaluation.predict import eval_schedule
from reliscale.tasks.icl import (
    ICL_CLASSES,
    ICLTask,
    baseline_errors,
    lasso,
    ood_class,
    parse_convex_split,
    sample_prompts,
)


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


def test_lasso_matches_sklearn_coordinate_descent():
    from sklearn.linear_model import Lasso

    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((20, 7, 5)), rng.standard_normal((20, 7))
    ours = lasso(x, y, alpha=0.1)
    ref = np.stack([Lasso(alpha=0.1, fit_intercept=False, tol=1e-12, max_iter=100_000).fit(a, b).coef_
                    for a, b in zip(x, y, strict=True)])
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_lasso_beats_least_squares_on_sparse_functions_with_few_examples():
    # k < d examples of a 1-sparse function: lasso finds the one coordinate, min-norm LS spreads it.
    p = sample_prompts(np.random.default_rng(5), 800, {"sparse_linear": 1.0}, dim=8, points=8, sparse_k=1)
    base = {k: v[:, 3:7].mean() for k, v in baseline_errors(p["x"], p["y"]).items()}
    assert base["lasso"] < 0.6 * base["ls"]


def test_convex_split_mixes_two_classes_at_the_named_weight(tmp_path):
    t = task(tmp_path, dim=6)
    half, quarter = t.split("convex-dense_linear-sinusoid"), t.split("convex-dense_linear-sinusoid-25")
    assert np.mean(half.y**2) / 6 == pytest.approx(1.0, rel=0.1)  # still E[y²] = d
    # 25 % sinusoid is closer to linear than 50 %: least squares explains more of it.
    assert quarter.baselines["ls"][:, -1].mean() < half.baselines["ls"][:, -1].mean()
    assert parse_convex_split("convex-dense_linear-sinusoid-25") == ("dense_linear", "sinusoid", 0.25)
    assert parse_convex_split("convex-dense_linear-dense_linear") is None
    assert parse_convex_split("convex-dense_linear-nope") is None


def test_pure_class_split_holds_only_that_class_and_names_its_group(tmp_path):
    t = task(tmp_path, mixture={"dense_linear": 1.0, "sparse_linear": 1.0}, dim=6, sparse_k=1)
    sparse = t.split("sparse_linear")
    assert sparse.group_names == ("sparse_linear",)
    w = np.stack([np.linalg.lstsq(x, y, rcond=None)[0] for x, y in zip(sparse.x, sparse.y, strict=True)])
    assert ((np.abs(w) > 1e-3).sum(axis=1) == 1).all()
    assert t.split("id").group_names == ("dense_linear", "sparse_linear")


def test_best_baseline_is_the_lowest_non_trivial_baseline(tmp_path):
    split = task(tmp_path).split("id")
    metrics, _ = icl_metrics(np.zeros_like(split.y), split)
    named = [metrics[f"baseline_{b}"] for b in ("ls", "lasso", "avg", "knn")]
    assert metrics["baseline_best"] == min(named)
    assert metrics["best_ratio"] == pytest.approx(metrics["mse"] / min(named))
