"""A law of downstream reliability against pretraining scale: `fit --role finetune`."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from test_scalinglaws_laws import TRUE

from scalinglaws import ChinchillaLaw, load_study
from scalinglaws.cli import main

SIZES = (2e7, 5e7, 1.2e8, 3e8)
DATA_SIZES = (2e9, 6e9, 2e10)
FINETUNE_SIZE = 50_000
# the fine-tunes' downstream NLL: a Chinchilla law of the base's size and pretraining data
DOWNSTREAM = {"E": 0.9, "A": 300.0, "B": 900.0, "alpha": 0.3, "beta": 0.26}


def make_study(root: Path) -> str:
    """A 4 sizes x 3 data sizes grid and one downstream fine-tune per trial, logged as the
    platform logs them: role `trial` and role `finetune` child runs of one parent."""
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("adapt", artifact_location=(root / "artifacts").as_uri())
    parent = client.create_run(exp, tags={"reliscale.role": "study"}, run_name="adapt").info.run_id
    pretrain, downstream = ChinchillaLaw.from_params(**TRUE), ChinchillaLaw.from_params(**DOWNSTREAM)
    for i, (n, d) in enumerate(itertools.product(SIZES, DATA_SIZES)):
        base = f"t{i:02d}"
        for role, tid, data_size, value, extra in (
                ("trial", base, d, pretrain.predict(n, d)[0], {}),
                ("finetune", f"{base}_ft-pets", FINETUNE_SIZE, downstream.predict(n, d)[0],
                 {"base_trial": base, "pretrain_data_size": int(d), "init_from": "step_000000100"})):
            tags = {"reliscale.role": role, "mlflow.parentRunId": parent, "reliscale.trial_id": tid}
            run_id = client.create_run(exp, tags=tags, run_name=tid).info.run_id
            params = {"trial_id": tid, "size": f"S{i // 3}", "n_params": int(n), "data_size": int(data_size),
                      "lr": 1e-3, "seed": 0, **extra}
            client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()],
                             metrics=[Metric("eval/id/nll", float(value), 0, int(data_size))])
            client.set_terminated(run_id)
    return uri


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> str:
    return make_study(tmp_path_factory.mktemp("adapt"))


def test_load_study_reads_one_role_at_a_time(study):
    trials, finetunes = load_study("adapt", study), load_study("adapt", study, role="finetune")
    assert len(trials) == len(finetunes) == 12
    assert not trials["trial_id"].str.contains("_ft-").any() and finetunes["trial_id"].str.endswith("_ft-pets").all()
    assert (finetunes["data_size"] == FINETUNE_SIZE).all()
    assert sorted(finetunes["pretrain_data_size"].unique()) == list(DATA_SIZES)
    assert finetunes["base_trial"].tolist() == trials["trial_id"].tolist()  # a label, not a number
    with pytest.raises(LookupError, match="no patch runs"):
        load_study("adapt", study, role="patch")


def test_fit_role_finetune_recovers_the_downstream_law_against_pretraining_size(study, capsys, tmp_path):
    from mlflow.tracking import MlflowClient

    code = main(["fit", "--experiment", "adapt", "--tracking-uri", study, "--metric", "eval/id/nll",
                 "--role", "finetune", "--report", str(tmp_path / "adapt_nll"), "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    result = json.loads(out.out)
    assert result["x"] == ["n_params", "pretrain_data_size"] and result["n_points"] == 12
    for k, v in DOWNSTREAM.items():  # noiseless points: the generating law comes back
        assert result["params"][k] == pytest.approx(v, rel=0.02), k
    client = MlflowClient(tracking_uri=study)
    parent = client.search_runs([client.get_experiment_by_name("adapt").experiment_id],
                                "tags.`reliscale.role` = 'study'")[0]
    assert parent.data.metrics["law/finetune/eval/id/nll/E"] == pytest.approx(result["params"]["E"])
    assert parent.data.tags["law/finetune/eval/id/nll/x"] == "n_params,pretrain_data_size"
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "scalinglaws")} == {"scalinglaws/adapt_nll"}


def test_the_grid_law_is_untouched_by_the_fine_tunes(study, capsys):
    assert main(["fit", "--experiment", "adapt", "--tracking-uri", study, "--metric", "eval/id/nll", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["x"] == ["n_params", "data_size"]
    for k, v in TRUE.items():
        assert result["params"][k] == pytest.approx(v, rel=0.02), k


def test_role_applies_to_a_study_only(tmp_path, capsys):
    (tmp_path / "points.csv").write_text("n_params,data_size,y\n1,1,1\n")
    assert main(["fit", "--csv", str(tmp_path / "points.csv"), "--metric", "y", "--role", "finetune"]) == 2
    assert "--role: applies with --experiment only" in capsys.readouterr().err


def test_where_fits_one_slice_and_logs_it_beside_the_whole(study, capsys, tmp_path):
    from mlflow.tracking import MlflowClient

    argv = ["fit", "--experiment", "adapt", "--tracking-uri", study, "--metric", "eval/id/nll", "--role", "finetune"]
    code = main([*argv, "--where", "size=S1", "--x", "pretrain_data_size", "--form", "power",
                 "--report", str(tmp_path / "s1_nll"), "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    result = json.loads(out.out)
    assert result["where"] == {"size": "S1"} and result["n_points"] == len(DATA_SIZES)
    client = MlflowClient(tracking_uri=study)
    parent = client.search_runs([client.get_experiment_by_name("adapt").experiment_id],
                                "tags.`reliscale.role` = 'study'")[0]
    assert parent.data.tags["law/finetune/size-S1/eval/id/nll/x"] == "pretrain_data_size"
    assert parent.data.metrics["law/finetune/size-S1/eval/id/nll/alpha"] == pytest.approx(result["params"]["alpha"])
    for where, message in (("size=S9", "--where size=S9: no rows have it; values: S0, S1, S2, S3"),
                           ("technique=gp", "--where technique=gp: no column 'technique'; available:"),
                           ("size", "--where: 'size' is not allowed; allowed: COL=VALUE, e.g. technique=gp")):
        assert main([*argv, "--where", where]) == 2
        assert message in capsys.readouterr().err, where
