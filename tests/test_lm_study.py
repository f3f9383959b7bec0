"""Language-model trials: a tiny decoder learns the synthetic language through the whole platform."""

from __future__ import annotations

import pytest

from reliscale.spec.schema import load_spec

from conftest import run_trials

pytestmark = pytest.mark.slow


def test_lm_trial_beats_the_unigram_model_and_stays_above_the_floor(repo, tmp_path):
    spec = load_spec(repo / "jobs" / "lm_smoke.yaml")
    client, (run,), _ = run_trials(spec, tmp_path)
    m = run.data.metrics
    # Learning the Markov structure (context) is what takes the loss below the unigram model's.
    assert m["eval/id/loss"] < m["eval/id/baseline_unigram"] - 0.3, m
    assert m["eval/id/loss"] > m["eval/id/baseline_floor"] - 0.02  # nothing beats the true chain
    history = client.get_metric_history(run.info.run_id, "eval/id/loss")
    assert history[-1].value < history[0].value and history[-1].step == 250 * 32 * 32
    assert m["eval/id/perplexity"] == pytest.approx(2.718281828 ** m["eval/id/loss"], rel=1e-6)
