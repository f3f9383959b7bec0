"""Pretraining data mixtures in real trials: every model on every pure class, a convex mix and
an unseen class, beside its best baseline."""

from __future__ import annotations

import pytest

from reliscale.spec import load_spec

from conftest import run_trials

pytestmark = pytest.mark.slow

SPLITS = ("id", "ood_class", "dense_linear", "sparse_linear", "convex-dense_linear-sinusoid")


@pytest.fixture(scope="module")
def runs(repo, tmp_path_factory):
    spec = load_spec(repo / "jobs" / "icl_mixtures_smoke.yaml")
    root = tmp_path_factory.mktemp("studies")
    _, found = run_trials(spec, root)
    return {r.data.params["mixture"]: r.data.metrics for r in found}


def test_every_model_is_scored_on_every_split_beside_its_best_baseline(runs):
    assert sorted(runs) == ["dense_linear", "dense_linear50+sparse_linear50"]
    for mixture, m in runs.items():
        for split in SPLITS:
            best = m[f"eval/{split}/baseline_best"]
            named = [m[f"eval/{split}/baseline_{b}"] for b in ("ls", "lasso", "avg", "knn")]
            assert best == min(named), (mixture, split)
            assert m[f"eval/{split}/best_ratio"] == pytest.approx(m[f"eval/{split}/mse"] / best, rel=1e-6)
    # the unseen class differs by mixture: sparse for the dense-only model, relu2nn for the other
    assert runs["dense_linear"]["eval/ood_class/baseline_lasso"] == pytest.approx(
        runs["dense_linear"]["eval/sparse_linear/baseline_lasso"], rel=0.3)


def test_mixture_model_reports_each_of_its_classes(runs):
    m = runs["dense_linear50+sparse_linear50"]
    assert {"eval/id/mse_dense_linear", "eval/id/mse_sparse_linear", "eval/id/worst_group_mse"} <= set(m)
    assert "eval/id/mse_dense_linear" not in runs["dense_linear"]  # one class: no per-group split


def test_both_models_learn_in_context_on_both_classes(runs):
    # Error falls with the number of in-context examples (measured ~1.1 -> 0.07-0.15 single-process).
    for mixture, m in runs.items():
        for split in ("dense_linear", "sparse_linear"):
            assert m[f"eval/{split}/mse_last"] < 0.5 * m[f"eval/{split}/mse_first"], (mixture, split)
