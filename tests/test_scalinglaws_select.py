"""Per-cell selection of a learning-rate sweep; `fit --best-of` and the report on the parent run."""

import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_scalinglaws_laws import TRUE

from scalinglaws import ChinchillaLaw, final_points, load_study
from scalinglaws.cli import main
from scalinglaws.select import cell_columns, select_best

SIZES = {"S0": 2e7, "S1": 8e7, "S2": 3e8}
DATA_SIZES = (2e9, 8e9, 3e10)
LRS = (1e-3, 3e-3, 1e-2)
CELL = ["size", "data_size"]
# lr optimum per size: inside the sweep, except at S2 where it lies above the largest lr swept.
LR_OPT = {"S0": 3e-3, "S1": 2e-3, "S2": 3e-2}
PRUNED, DIVERGED = ("S0", 2e9, 1e-3), ("S1", 2e9, 1e-2)


def sweep_loss(size: str, d: float, lr: float) -> float:
    return float(ChinchillaLaw.from_params(**TRUE).predict(SIZES[size], d)[0]) * (1 + 0.05 * np.log(lr / LR_OPT[size]) ** 2)


def make_sweep(root: Path) -> str:
    """A 3 sizes x 3 data sizes x 3 lr study as the platform logs it (parent run, child runs
    with params as strings, metrics stepped by tokens); one trial pruned, one diverged."""
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("sweep", artifact_location=(root / "artifacts").as_uri())
    parent = client.create_run(exp, tags={"reliscale.role": "study"}, run_name="sweep").info.run_id
    for i, (size, d, lr) in enumerate(itertools.product(SIZES, DATA_SIZES, LRS)):
        tid = f"t{i:02d}"
        outcome = {PRUNED: "pruned", DIVERGED: "diverged"}.get((size, d, lr))
        tags = {"reliscale.role": "trial", "mlflow.parentRunId": parent, "reliscale.trial_id": tid,
                **({"reliscale.outcome": outcome} if outcome else {})}
        run_id = client.create_run(exp, tags=tags, run_name=tid).info.run_id
        params = {"trial_id": tid, "family": "decoder", "size": size, "n_params": int(SIZES[size]),
                  "data_size": int(d), "flops": f"{6 * SIZES[size] * d:.6e}", "lr": lr, "batch_size": 32,
                  "weight_decay": 0.1, "seed": 0}
        last = d if outcome is None else d / 4
        metrics = [Metric(key, value, 1000 * j, int(seen))
                   for j, seen in enumerate((last / 2, last))
                   for key, value in (("eval/id/loss", sweep_loss(size, seen, lr)),
                                      ("train/loss", 0.98 * sweep_loss(size, seen, lr)))]
        client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()], metrics=metrics)
        client.set_terminated(run_id)
    return uri


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> str:
    return make_sweep(tmp_path_factory.mktemp("sweep"))


@pytest.fixture(scope="module")
def raw(sweep) -> pd.DataFrame:
    return load_study("sweep", sweep)


def test_cells_are_the_varying_axes_and_the_winner_per_cell_is_the_groupby_minimum(raw):
    with pytest.warns(UserWarning):
        points = final_points(raw)
        selected = final_points(raw, best_of=["lr"], by="eval/id/loss")
    assert cell_columns(points, ["lr", "eval/id/loss"]) == CELL  # not n_params, flops, batch_size
    expected = points.loc[points.groupby(CELL)["eval/id/loss"].idxmin(), "trial_id"]
    assert sorted(selected["trial_id"]) == sorted(expected)
    winners = pd.DataFrame(selected.attrs["winners"])
    assert list(winners.columns) == [*CELL, "lr", "eval/id/loss", "candidates", "unbracketed"]
    assert winners["candidates"].tolist() == points.groupby(CELL).size().tolist()
    for _, w in winners.iterrows():
        assert w["lr"] == min(LRS, key=lambda lr: sweep_loss(w["size"], w["data_size"], lr))


def test_pruned_and_diverged_trials_are_left_out_of_the_candidates_on_one_warning(raw):
    with pytest.warns(UserWarning, match=r"2 trial\(s\) left out .*: t00 \(pruned\), t11 \(diverged\)"):
        points = final_points(raw, best_of=["lr"], by="eval/id/loss")
    assert not {"t00", "t11"} & set(points["trial_id"])
    winners = pd.DataFrame(points.attrs["winners"]).set_index(CELL)
    assert winners.loc[("S0", 2e9), "candidates"] == 2 and winners.loc[("S1", 2e9), "candidates"] == 2


def test_a_best_lr_at_the_end_of_the_sweep_is_flagged_and_a_bracketed_one_is_not(raw):
    with pytest.warns(UserWarning) as caught:
        points = final_points(raw, best_of=["lr"], by="eval/id/loss")
    unbracketed = [str(w.message) for w in caught if "did not bracket" in str(w.message)]
    assert unbracketed == [f"the sweep did not bracket the optimum at size=S2, data_size={d}: best lr 0.01 "
                           "is the largest swept (3 values, by eval/id/loss)" for d in ("2e9", "8e9", "3e10")]
    winners = pd.DataFrame(points.attrs["winners"])
    assert winners.loc[winners["unbracketed"] == "lr", "size"].tolist() == ["S2"] * 3
    # S1 at 2e9: the largest lr diverged, yet it was swept: the best (0.003) is bracketed by it
    assert winners.set_index(CELL).loc[("S1", 2e9), ["lr", "unbracketed"]].tolist() == [0.003, ""]


def test_two_swept_axes_and_max_mode_on_a_plain_table():
    df = pd.DataFrame(itertools.product(["a", "b"], [1e-3, 1e-2, 1e-1], [16, 64]), columns=["size", "lr", "bs"])
    df["acc"] = -np.abs(np.log10(df["lr"]) + 2) - np.abs(np.log2(df["bs"]) - 4) / 10
    df.loc[df["size"] == "b", "acc"] += 1
    with pytest.warns(UserWarning, match="best bs 16 is the smallest swept") as caught:
        selected, winners = select_best(df, ["lr", "bs"], by="acc", mode="max")
    assert len(caught) == 2  # one per cell, and lr (0.01, inside) is not flagged
    assert selected[["size", "lr", "bs"]].values.tolist() == [["a", 0.01, 16], ["b", 0.01, 16]]
    assert winners["unbracketed"].tolist() == ["bs", "bs"] and winners["candidates"].tolist() == [6, 6]


def test_bad_selection_input_names_the_argument_and_the_choices():
    df = pd.DataFrame({"size": ["a", "b"], "lr": [1e-3, 1e-2], "loss": [1.0, 2.0]})
    with pytest.raises(KeyError, match=r"best_of: column\(s\) \['wd'\] not found; available: size, lr, loss"):
        select_best(df, ["wd"], by="loss")
    with pytest.raises(ValueError, match="mode='lowest'; allowed: min"):
        select_best(df, ["lr"], by="loss", mode="lowest")


def test_cli_json_has_the_winners_and_the_diagnostics(sweep, capsys):
    code = main(["fit", "--experiment", "sweep", "--tracking-uri", sweep, "--metric", "eval/id/loss",
                 "--best-of", "lr", "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    result = json.loads(out.out)
    assert result["n_points"] == 9
    assert [d["code"] for d in result["diagnostics"]] == ["few_points"]  # 5 parameters on 9 cells
    sel = result["selection"]
    assert sel["best_of"] == ["lr"] and sel["by"] == "eval/id/loss" and sel["mode"] == "min"
    assert len(sel["winners"]) == 9 and {w["size"] for w in sel["winners"] if w["unbracketed"]} == {"S2"}
    assert sum("did not bracket" in line for line in out.err.splitlines()) == 3


def test_cli_prints_the_winners_table_and_one_warning_line_per_diagnostic(sweep, capsys):
    args = ["fit", "--experiment", "sweep", "--tracking-uri", sweep, "--metric", "train/loss",
            "--best-of", "lr", "--by", "eval/id/loss"]
    assert main([*args, "--json"]) == 0
    diagnostics = json.loads(capsys.readouterr().out)["diagnostics"]
    assert main(args) == 0
    out = capsys.readouterr()
    assert "best lr per cell by eval/id/loss (min):" in out.out and "unbracketed" in out.out
    lines = [line for line in out.err.splitlines() if line.startswith("warning: ") and "did not bracket" not in line
             and "left out" not in line]
    assert lines == [f"warning: {d['code']}: {d['message']}" for d in diagnostics] and lines


def test_report_is_logged_to_the_study_parent_run(sweep, tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    code = main(["fit", "--experiment", "sweep", "--tracking-uri", sweep, "--metric", "eval/id/loss",
                 "--best-of", "lr", "--bootstrap", "30", "--report", str(tmp_path), "--json"])
    result = json.loads(capsys.readouterr().out)
    assert code == 0
    client = MlflowClient(tracking_uri=sweep)
    parent = client.search_runs([client.get_experiment_by_name("sweep").experiment_id],
                                "tags.`reliscale.role` = 'study'")[0]
    folder = f"scalinglaws/{tmp_path.name}"
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, folder)}
    assert {f"{folder}/report.md", f"{folder}/laws.json", f"{folder}/fit_eval_id_loss.png"} <= logged
    metrics, tags = parent.data.metrics, parent.data.tags
    for k, v in result["params"].items():
        assert metrics[f"law/eval/id/loss/{k}"] == pytest.approx(v)
        assert metrics[f"law/eval/id/loss/{k}_lo"] == pytest.approx(result["ci"][k][0])
    assert tags["law/eval/id/loss/form"] == "chinchilla" and tags["law/eval/id/loss/x"] == "n_params,data_size"
    assert tags["law/eval/id/loss/diagnostics"] == ",".join(dict.fromkeys(d["code"] for d in result["diagnostics"]))
    assert "Hyperparameter selection" in (tmp_path / "report.md").read_text()


def test_no_log_writes_the_report_without_touching_the_parent_run(sweep, tmp_path):
    from mlflow.tracking import MlflowClient

    assert main(["fit", "--experiment", "sweep", "--tracking-uri", sweep, "--metric", "train/loss",
                 "--best-of", "lr", "--report", str(tmp_path), "--no-log", "--json"]) == 0
    assert (tmp_path / "report.md").is_file()
    client = MlflowClient(tracking_uri=sweep)
    parent = client.search_runs([client.get_experiment_by_name("sweep").experiment_id],
                                "tags.`reliscale.role` = 'study'")[0]
    assert not any(k.startswith("law/train/loss/") for k in parent.data.metrics)


@pytest.mark.parametrize(("args", "message"), [
    (["--best-of", "momentum"], "--best-of: column 'momentum' not found; available: run_id"),
    (["--best-of", "lr", "--by", "eval/ood/loss"], "--by: column 'eval/ood/loss' not found"),
    (["--by", "eval/id/loss"], "--by: applies with --best-of only"),
    (["--no-log"], "--no-log: applies with --experiment and --report only"),
])
def test_bad_selection_options_exit_2(sweep, capsys, args, message):
    assert main(["fit", "--experiment", "sweep", "--tracking-uri", sweep, "--metric", "eval/id/loss", *args]) == 2
    assert message in capsys.readouterr().err
