"""Pretraining data mixtures in real trials: every model on every pure class, a convex mix and
an unseen class, beside its best baseline; and the paper's model-selection effect."""

from __future__ import annotations

import pytest

from reliscale.spec.schema import load_spec
from reliscale.worker.loop import PROGRESS_REPORTS

from conftest import run_trials

pytestmark = pytest.mark.slow

SPLITS = ("id", "ood_class", "dense_linear", "sparse_linear", "convex-dense_linear-sinusoid")
MIXTURE = "dense_linear25+sparse_linear75"


@pytest.fixture(scope="module")
def study(repo, tmp_path_factory):
    spec = load_spec(repo / "jobs" / "icl_mixtures_smoke.yaml")
    _, found, results = run_trials(spec, tmp_path_factory.mktemp("studies"))
    return {r.data.params["mixture"]: r.data.metrics for r in found}, results


@pytest.fixture(scope="module")
def runs(study):
    return study[0]


def test_every_model_is_scored_on_every_split_beside_its_best_baseline(runs):
    assert sorted(runs) == ["dense_linear", MIXTURE]
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
    m = runs[MIXTURE]
    assert {"eval/id/mse_dense_linear", "eval/id/mse_sparse_linear", "eval/id/worst_group_mse"} <= set(m)
    assert "eval/id/mse_dense_linear" not in runs["dense_linear"]  # one class: no per-group split


def test_both_models_learn_in_context_on_both_classes(runs):
    # Error falls with the number of in-context examples (measured ~1.1 -> 0.07-0.15 single-process).
    for mixture, m in runs.items():
        for split in ("dense_linear", "sparse_linear"):
            assert m[f"eval/{split}/mse_last"] < 0.5 * m[f"eval/{split}/mse_first"], (mixture, split)


def test_each_model_is_better_on_the_class_it_was_pretrained_on(runs):
    # Yadlowsky et al.'s model selection, at smoke scale: with one non-zero weight in d = 4 the
    # mixture model exploits sparsity and the dense-only model cannot. Measured 2026-11-29 with
    # this job: sparse prompts 0.447 (dense-only) vs 0.407 (mixture), dense prompts the other way
    # round (0.448 vs 0.480). Trials are deterministic given the seed; the effect appears late
    # (no gap before ~6,000 steps), which is why this study is the longest in the suite.
    dense_only, mixture = runs["dense_linear"], runs[MIXTURE]
    assert mixture["eval/sparse_linear/mse"] < 0.95 * dense_only["eval/sparse_linear/mse"]
    assert dense_only["eval/dense_linear/mse"] < mixture["eval/dense_linear/mse"]


def test_long_trials_report_progress_between_their_eval_points(study):
    # 10,000 steps, 2 eval points: the live view gets a report every 500 steps, not two in all.
    _, results = study
    for r in results:
        seen = r.metrics_dataframe["data_seen"].tolist()
        assert len(seen) >= PROGRESS_REPORTS and seen == sorted(set(seen)), seen
        assert seen[-1] == r.metrics["data_size"]
