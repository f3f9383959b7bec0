"""Task-robust pre-training in real trials: minimax lowers the worst group's loss below ERM's."""

from __future__ import annotations

import pytest

from reliscale.spec.schema import load_spec

from conftest import run_trials

pytestmark = pytest.mark.slow

GROUPS = ("dense_linear", "sparse_linear", "sinusoid")


@pytest.fixture(scope="module")
def runs(repo, tmp_path_factory):
    spec = load_spec(repo / "jobs" / "task_robust_smoke.yaml")
    root = tmp_path_factory.mktemp("studies")
    _, found, _ = run_trials(spec, root)
    return {r.data.params["objective"]: r.data.metrics for r in found}


def test_minimax_worst_group_loss_is_lower_than_erms(runs):
    # Measured (single process, same data): ERM 1.17 (sinusoid), minimax 1.06.
    erm, minimax = runs["erm"]["eval/id/worst_group_mse"], runs["minimax"]["eval/id/worst_group_mse"]
    assert minimax < erm - 0.03, (erm, minimax)


def test_both_objectives_log_every_groups_loss_and_weight(runs):
    for objective, m in runs.items():
        for g in GROUPS:
            assert f"eval/id/mse_{g}" in m and f"train/group_loss/{g}" in m, (objective, g)
        weights = [m[f"train/group_weight/{g}"] for g in GROUPS]
        assert sum(weights) == pytest.approx(1.0, abs=1e-6)
    assert [runs["erm"][f"train/group_weight/{g}"] for g in GROUPS] == pytest.approx([1 / 3] * 3)


def test_minimax_moves_weight_to_the_group_erm_leaves_worst(runs):
    erm, minimax = runs["erm"], runs["minimax"]
    worst = max(GROUPS, key=lambda g: erm[f"eval/id/mse_{g}"])
    share = {"dense_linear": 4 / 6, "sparse_linear": 1 / 6, "sinusoid": 1 / 6}[worst]
    assert minimax[f"train/group_weight/{worst}"] > 1.5 * share, (worst, minimax)
