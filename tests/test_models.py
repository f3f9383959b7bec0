"""Every family builds for its tasks with every reliability technique, on real inputs."""

from __future__ import annotations

import pytest
import torch

from reliscale.models.build import count_params
from reliscale.spec.schema import expand, validate
from reliscale.tasks import build_model, meta_param_counts
from reliscale.tasks.mnist1d import NUM_CLASSES

from conftest import tiny_icl_spec


def image_trial(family: str, technique: str, size="S0"):
    doc = tiny_icl_spec(model={"family": family, "sizes": [size]}, technique=technique)
    doc["data"] = {"task": "mnist1d", "sizes": [256], "batch_size": 32}
    return expand(validate(doc))[0]


@pytest.mark.parametrize("technique", ["none", "batchensemble", "gp", "het"])
@pytest.mark.parametrize("family", ["vit", "encdec", "decoder"])
def test_classifier_trains_and_predicts_probabilities(family, technique):
    torch.manual_seed(0)
    model = build_model(image_trial(family, technique))
    batch = {"x": torch.randn(6, 1, 1, 40), "y": torch.randint(0, NUM_CLASSES, (6,))}
    losses = model(batch)
    assert losses.shape == (6,) and torch.isfinite(losses).all()
    losses.mean().backward()
    assert all(p.grad is not None for p in model.head.parameters())
    model.eval()
    with torch.no_grad():
        pred = model.predict(batch)
    assert pred.probs.shape == (6, NUM_CLASSES)
    torch.testing.assert_close(pred.probs.sum(1), torch.ones(6))
    assert (pred.variance is not None) == (technique == "gp")


def test_technique_parameters_are_counted_in_n_params():
    counts = {t: meta_param_counts(image_trial("vit", t))["n_params"] for t in ("none", "batchensemble", "het")}
    assert counts["batchensemble"] > counts["none"] and counts["het"] > counts["none"]
    model = build_model(image_trial("vit", "batchensemble"))
    assert count_params(model)[0] == counts["batchensemble"]


def test_two_axis_vit_counts_both_stacks():
    doc = tiny_icl_spec(model={"family": "vit", "sizes": [{"enc": "S1", "dec": "S0"}]})
    doc["data"] = {"task": "mnist1d", "sizes": [256], "batch_size": 32}
    trial = expand(validate(doc))[0]
    counts = meta_param_counts(trial)
    assert trial.trial_id.startswith("vit-S1xS0_")
    assert counts["n_params_enc"] > counts["n_params_dec"] > 0
    assert counts["n_params"] > counts["n_params_enc"] + counts["n_params_dec"]  # + bridge, query, head
    model = build_model(trial)
    assert model({"x": torch.randn(2, 1, 1, 40), "y": torch.tensor([0, 1])}).shape == (2,)
