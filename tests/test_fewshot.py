"""Few-shot adaptation: the ridge probe against scikit-learn, support draws, and the probe
on a real model before and after training (in process, no Ray)."""

import numpy as np
import pytest
import torch
from sklearn.linear_model import RidgeClassifier

from reliscale.evaluation.fewshot import SHOTS, fewshot_metrics, ridge_probe, support_sets
from reliscale.spec.schema import expand, load_spec
from reliscale.tasks import build_evaluator, build_model, build_task
from reliscale.tasks.classification import CLASSIFICATION_METRICS


def _reference_scores(xs, ys, xq, l2):
    """sklearn's RidgeClassifier on the features centred and scaled by hand."""
    mean = xs.mean(axis=0)
    scale = np.sqrt(((xs - mean) ** 2).sum(axis=1).mean())
    clf = RidgeClassifier(alpha=l2).fit((xs - mean) / scale, ys)
    return clf.decision_function((xq - mean) / scale)


@pytest.mark.parametrize("n_per_class,dim", [(3, 40), (30, 8)])  # dual form (n < d), primal (n > d)
@pytest.mark.parametrize("l2", [1e-3, 0.01, 10.0])
def test_ridge_probe_matches_sklearns_ridge_classifier(n_per_class, dim, l2):
    rng = np.random.default_rng(0)
    ys = np.repeat(np.arange(5), n_per_class)
    xs = rng.normal(size=(len(ys), dim)) * 3 + 1
    xq = rng.normal(size=(50, dim)) * 3 + 1
    ours = ridge_probe(xs, ys, xq, np.arange(5), l2)
    np.testing.assert_allclose(ours, _reference_scores(xs, ys, xq, l2), rtol=1e-6, atol=1e-8)


def test_ridge_probe_does_not_depend_on_the_feature_scale_or_offset():
    rng = np.random.default_rng(1)
    ys = np.repeat(np.arange(4), 5)
    xs, xq = rng.normal(size=(20, 16)), rng.normal(size=(30, 16))
    a = ridge_probe(xs, ys, xq, np.arange(4))
    b = ridge_probe(1000 * xs + 7, ys, 1000 * xq + 7, np.arange(4))
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)


def test_support_sets_take_k_per_class_nested_and_seeded():
    labels = np.random.default_rng(0).integers(0, 10, 500)
    one, five = support_sets(labels, 1, 3, seed=4), support_sets(labels, 5, 3, seed=4)
    for a, b in zip(one, five, strict=True):
        assert np.bincount(labels[b], minlength=10).tolist() == [5] * 10
        assert set(a) <= set(b)  # a draw's 1-shot set is inside its 5-shot set
    assert len({tuple(s) for s in five}) == 3  # the draws differ
    np.testing.assert_array_equal(five[0], support_sets(labels, 5, 3, seed=4)[0])
    assert not np.array_equal(five[0], support_sets(labels, 5, 3, seed=5)[0])


def test_a_pool_short_of_one_class_is_a_clear_error():
    labels = np.array([0] * 30 + [1] * 3)
    with pytest.raises(ValueError, match=r"5-shot support needs 5 examples of every class; the pool has \{1: 3\}"):
        support_sets(labels, 5, 1, seed=0)


def test_probe_is_near_perfect_on_separated_clusters_and_at_chance_on_noise():
    rng = np.random.default_rng(2)
    centres = rng.normal(size=(10, 32)) * 5
    ys, yq = np.repeat(np.arange(10), 30), rng.integers(0, 10, 2000)
    xs = centres[ys] + rng.normal(size=(300, 32))
    xq = centres[yq] + rng.normal(size=(2000, 32))
    clustered, preds = fewshot_metrics(xs, ys, xq, yq, unseen=(8, 9), seed=0)
    assert preds.shape == (len(SHOTS), 5, 2000)
    assert min(clustered.values()) > 0.97, clustered
    noise, _ = fewshot_metrics(rng.normal(size=(300, 32)), ys, rng.normal(size=(2000, 32)), yq, (8, 9), 0)
    # chance is 0.1; the mean over 5 draws of 2,000 queries has a standard error below 0.01
    assert all(abs(v - 0.1) < 0.04 for k, v in noise.items() if not k.startswith("unseen")), noise


def test_evaluator_logs_fewshot_accuracy_that_training_improves(repo, tmp_path):
    torch.manual_seed(0)
    spec = load_spec(repo / "jobs" / "vit_plex_smoke.yaml", ["technique=none", "eval.examples=1000"])
    trial = expand(spec)[0]
    model, stream = build_model(trial), build_task(trial, 1, tmp_path)
    evaluator = build_evaluator(stream, trial)
    before = evaluator.run(model, "cpu", 0, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    for step in range(300):
        b = stream.train_batch(step, 0, 0, 64)
        loss = model({"x": torch.as_tensor(b["x"]), "y": torch.as_tensor(b["y"])}).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = evaluator.run(model, "cpu", 0, 1)
    for k in SHOTS:
        assert {f"eval/fewshot/accuracy_{k}shot", f"eval/fewshot/unseen_accuracy_{k}shot"} <= after.keys()
        assert {f"accuracy_{k}shot", f"unseen_accuracy_{k}shot"} <= set(CLASSIFICATION_METRICS)  # a spec may name them
    # Measured: 0.30 -> 0.62 at 25 shots after 500 steps; 1,000 queries, standard error ~0.015.
    assert after["eval/fewshot/accuracy_25shot"] > before["eval/fewshot/accuracy_25shot"] + 0.1
    assert after["eval/fewshot/accuracy_25shot"] > after["eval/fewshot/accuracy_1shot"]
    paths = evaluator.write_artifacts(tmp_path)
    saved = np.load(tmp_path / "predictions.npz")
    assert tmp_path / "predictions.npz" in paths
    assert saved["fewshot/predictions"].shape == (len(SHOTS), 5, 1000)
    correct = saved["fewshot/predictions"][-1] == saved["fewshot/labels"]
    assert correct.mean() == pytest.approx(after["eval/fewshot/accuracy_25shot"])
