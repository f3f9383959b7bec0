"""Language-model trials: a tiny decoder learns the synthetic language through the whole platform."""

from __future__ import annotations

import pytest
import ray
from mlflow.tracking import MlflowClient

from reliscale.spec import load_spec
from reliscale.study import StudyPaths, run_study

pytestmark = pytest.mark.slow


def test_lm_trial_beats_the_unigram_model_and_stays_above_the_floor(repo, tmp_path):
    spec = load_spec(repo / "jobs" / "lm_smoke.yaml")
    ray.init(num_cpus=2)
    try:
        results = run_study(spec, tmp_path, progress_interval_s=60)
    finally:
        ray.shutdown()
    assert not [r for r in results if r.error]
    client = MlflowClient(StudyPaths(spec, tmp_path).tracking_uri)
    exp = client.get_experiment_by_name(spec.name)
    (run,) = client.search_runs([exp.experiment_id], "tags.`reliscale.role` = 'trial'")
    m = run.data.metrics
    # Learning the Markov structure (context) is what takes the loss below the unigram model's.
    assert m["eval/id/loss"] < m["eval/id/baseline_unigram"] - 0.3, m
    assert m["eval/id/loss"] > m["eval/id/baseline_floor"] - 0.02  # nothing beats the true chain
    history = client.get_metric_history(run.info.run_id, "eval/id/loss")
    assert history[-1].value < history[0].value and history[-1].step == 250 * 32 * 32
    assert m["eval/id/perplexity"] == pytest.approx(2.718281828 ** m["eval/id/loss"], rel=1e-6)
