"""Downstream fine-tunes of the image task: their trial, their starting weights, their spec errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from reliscale.data.local_images import digit_splits, write_digits
from reliscale.driver.laws import fit_argv, law_name
from reliscale.driver.plan import plan
from reliscale.models.build import image_classifier
from reliscale.spec.finetune import finetune_trial, finetune_trials
from reliscale.spec.schema import SpecError, expand, load_spec
from reliscale.tasks import TASKS
from reliscale.worker.checkpoints import HEAD_PREFIX, StartFrom, load_start


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("digits")
    return {"folder": write_digits(root / "folder"), "parquet": write_digits(root / "parquet", "parquet")}


def smoke_spec(repo: Path, digits: dict[str, Path] | None = None, *overrides: str):
    digits = digits or {"folder": "/nowhere", "parquet": "/elsewhere"}  # spec checks never open them
    return load_spec(repo / "jobs" / "images_smoke.yaml",
                     [f"data.images.root={digits['folder']}", f"data.images.downstream_root={digits['parquet']}",
                      *overrides])


def test_finetune_trial_trains_the_downstream_dataset_with_a_new_split_list(repo):
    spec = smoke_spec(repo, None, "finetune.batch_size=16")
    base = expand(spec)[0]
    ft = finetune_trial(base)
    im = ft.spec.data.images
    assert ft.trial_id == f"{base.trial_id}_ft-elsewhere"
    assert (ft.size, ft.seed, ft.technique) == (base.size, base.seed, base.technique)
    assert im.root == "/elsewhere" and im.downstream_root is None and im.ood_classes == ("9",)
    assert (im.image_size, im.corruptions) == (base.spec.data.images.image_size, base.spec.data.images.corruptions)
    assert ft.data_size == 3200 and ft.spec.data.batch_size == 16 and ft.steps == 200
    assert ft.lr == 1e-3 and base.lr == 2e-3
    splits = ft.spec.splits()
    assert splits[0] == "id" and "ood" in splits and "fewshot" not in splits and "gaussian_noise_5" in splits
    assert ft.spec.finetune is None and base.spec.finetune is not None  # a fine-tune is not fine-tuned again


def test_finetune_trials_are_the_named_ones_or_every_trial(repo):
    spec = smoke_spec(repo)
    grid = expand(spec)
    assert [b.trial_id for b, _ in finetune_trials(spec, grid)] == [t.trial_id for t in grid]
    named = smoke_spec(repo, None, f"finetune.trials=[{grid[2].trial_id}]")
    assert [b.trial_id for b, _ in finetune_trials(named, expand(named))] == [grid[2].trial_id]


@pytest.mark.parametrize("technique", ["none", "batchensemble", "gp", "het"])
def test_a_new_head_starts_fresh_on_the_pretrained_backbone(repo, tmp_path, technique):
    spec = smoke_spec(repo, None, f"technique=[{technique}]")
    trial = expand(spec)[0]
    torch.manual_seed(0)
    pretrained = image_classifier(trial, 32, 8, 1, num_classes=8)
    saved = tmp_path / "pretrained.pt"
    torch.save(pretrained.state_dict(), saved)
    torch.manual_seed(1)
    downstream = image_classifier(trial, 32, 8, 1, num_classes=9)
    fresh = {k: v.clone() for k, v in downstream.state_dict().items()}

    load_start(downstream, StartFrom(str(saved), new_head=True))
    after, before = downstream.state_dict(), pretrained.state_dict()
    backbone = [k for k in after if not k.startswith(HEAD_PREFIX)]
    head = [k for k in after if k.startswith(HEAD_PREFIX)]
    assert backbone and head
    assert all(torch.equal(after[k], before[k]) for k in backbone)
    assert all(torch.equal(after[k], fresh[k]) for k in head)
    assert not all(torch.equal(fresh[k], before[k]) for k in backbone)  # the load changed something

    with pytest.raises(ValueError, match="do not fit the model"):  # the whole model: the head's shape differs
        load_start(image_classifier(trial, 32, 8, 1, num_classes=9), StartFrom(str(saved)))


def test_finetune_section_errors_name_the_key_the_value_and_what_is_allowed(repo):
    cases = {
        "finetune.size=10": "finetune.size: 10 is smaller than the batch size 32",
        "finetune.size=100.5": "finetune.size: 100.5 is not allowed; allowed: a positive integer",
        "finetune.batch_size=15": "finetune.batch_size: 15 is not divisible by resources.workers=2",
        "finetune.trials=[vit-S0_nope]": "finetune.trials[0]: 'vit-S0_nope' is not a trial of this grid",
        "finetune.ood_classes=[9, 9]": "finetune.ood_classes: ['9', '9'] repeats a class",
        "data.images.downstream_root=null": "finetune: fine-tunes need data.task 'images' with "
                                            "data.images.downstream_root",
        "finetune.epochs=2": "finetune.epochs",
    }
    for override, message in cases.items():
        with pytest.raises(SpecError) as e:
            smoke_spec(repo, None, override)
        assert message in str(e.value), (override, str(e.value))
    with pytest.raises(SpecError, match=r"analysis.laws\[0\].role: 'finetune' fits the fine-tunes"):
        smoke_spec(repo, None, "finetune=null", "analysis={laws: [{metric: eval/id/ece, role: finetune}]}")


def test_preflight_checks_the_downstream_classes_and_images(repo, digits):
    images = TASKS["images"]
    assert images.preflight(smoke_spec(repo, digits)) is None
    unknown = images.preflight(smoke_spec(repo, digits, "finetune.ood_classes=[nine]"))
    assert unknown.startswith("finetune.ood_classes: 'nine' is not a class of") and "allowed: 0, 1, 2" in unknown
    nothing_left = images.preflight(smoke_spec(repo, digits, "finetune.ood_classes=[1, 2, 3, 4, 5, 6, 7, 8, 9]"))
    assert nothing_left == f"finetune.ood_classes: leave 1 class(es) of {digits['parquet']} to fine-tune; need >= 2"
    wrong_head = images.preflight(smoke_spec(repo, digits, "finetune.num_classes=10"))
    assert wrong_head == (f"finetune.num_classes: 10, but {digits['parquet']} has 9 classes to fine-tune "
                          "(10 less 1 finetune.ood_classes)")
    too_few = images.preflight(smoke_spec(repo, digits, "finetune.batch_size=1600", "finetune.size=3200"))
    _, _train, labels = digit_splits()["train"]
    assert too_few == (f"data.images.downstream_root: {(labels != 9).sum()} training images of the classes to "
                       "fine-tune in 'train'; need >= 1600")


def test_plan_lists_each_fine_tune_after_the_grid_with_the_downstream_head(repo):
    rows, warnings = plan(smoke_spec(repo))
    grid, fts = rows[:4], rows[4:]
    assert [f.trial_id for f in fts] == [f"{g.trial_id}_ft-elsewhere" for g in grid] and warnings == []
    for g, f in zip(grid, fts, strict=True):
        assert (f.size, f.data_size) == (g.size, 3200)
        assert f.flops == pytest.approx(g.flops * 3200 / g.data_size, rel=0.02)  # same model, a quarter of the data
    # 8 classes pretrained, 9 fine-tuned: one more row of the classifier (width + bias), one per
    # member for BatchEnsemble; the GP and heteroscedastic heads grow by more
    none, be = fts[0].n_params - grid[0].n_params, fts[1].n_params - grid[1].n_params
    width = expand(smoke_spec(repo))[0].size.enc.width
    assert none == width + 1 and be >= none and fts[2].n_params - grid[2].n_params > none
    fewer = plan(smoke_spec(repo, None, "finetune.num_classes=2", "finetune.ood_classes=[2, 3, 4, 5, 6, 7, 8, 9]"))[0]
    assert fewer[4].n_params - grid[0].n_params == -6 * (width + 1)


def test_a_law_of_the_spec_with_role_finetune_fits_the_fine_tunes(repo):
    spec = smoke_spec(repo, None, "analysis={laws: [{metric: eval/id/ece, role: finetune}, {metric: eval/id/ece}]}")
    downstream, grid = (fit_argv(law, spec.name, "sqlite:///m.db", "/r") for law in spec.analysis.laws)
    assert downstream[downstream.index("--role") + 1] == "finetune" and "--role" not in grid
    assert [law_name(law) for law in spec.analysis.laws] == ["finetune_eval_id_ece", "eval_id_ece"]


def test_a_law_of_the_spec_may_fit_one_technique(repo):
    spec = smoke_spec(repo, None, "analysis={laws: [{metric: eval/id/nll, role: finetune, where: {technique: gp}}]}")
    (law,) = spec.analysis.laws
    argv = fit_argv(law, spec.name, "sqlite:///m.db", "/r")
    assert argv[argv.index("--where") + 1] == "technique=gp" and law_name(law) == "finetune_technique-gp_eval_id_nll"
    for where, message in (("{technique: sngp}", "analysis.laws[0].where.technique: 'sngp' is not a value of the "
                                                 "grid; allowed: none, batchensemble, gp, het"),
                           ("{lr: 0.1}", "analysis.laws[0].where.lr: 'lr' is not an axis a law can be sliced by; "
                                         "allowed: technique, objective, mixture, seed, family")):
        with pytest.raises(SpecError) as e:
            smoke_spec(repo, None, f"analysis={{laws: [{{metric: eval/id/nll, where: {where}}}]}}")
        assert message in str(e.value)
