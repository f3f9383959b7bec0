"""`python -m scalinglaws fit` on a CSV and on an MLflow store; bad input exits 2."""

import json
import subprocess
import sys

import pytest
from test_scalinglaws_laws import TRUE, chinchilla_data
from test_scalinglaws_load import shared_study

from scalinglaws.cli import main

KEYS = {"form", "x", "y", "params", "ci", "n_points", "loss", "diagnostics"}


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scalinglaws", "fit", *args],
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def csv_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "points.csv"
    chinchilla_data(seed=0, n=6).to_csv(path, index=False)
    return path


def test_csv_fit_prints_the_json_contract(csv_path):
    out = run_cli("--csv", str(csv_path), "--x", "n_params,data_size", "--y", "loss",
                  "--form", "chinchilla", "--bootstrap", "100", "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert set(result) == KEYS
    assert result["form"] == "chinchilla" and result["n_points"] == 36
    assert list(result["params"]) == ["E", "A", "B", "alpha", "beta"]
    assert result["params"]["E"] == pytest.approx(TRUE["E"], rel=0.05)
    for k, (lo, hi) in result["ci"].items():
        assert lo <= result["params"][k] <= hi, k
    assert result["loss"] > 0
    assert result["diagnostics"] == []  # 36 clean points: nothing to distrust


def test_csv_fit_with_holdout_adds_the_extrapolation_errors(csv_path):
    out = run_cli("--csv", str(csv_path), "--x", "n_params", "--y", "loss", "--form", "power",
                  "--holdout-largest", "1", "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert set(result) == KEYS | {"holdout"} and result["ci"] == {}
    assert list(result["params"]) == ["E", "A", "alpha"]
    assert result["holdout"]["x"] == "n_params" and len(result["holdout"]["points"]) == 6


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> str:
    return shared_study(tmp_path_factory)


def test_mlflow_fit_uses_each_trials_final_point_and_writes_a_report(study, tmp_path):
    out = run_cli("--experiment", "toy_study", "--tracking-uri", study, "--metric", "eval/val/loss",
                  "--bootstrap", "50", "--report", str(tmp_path / "report"))
    assert out.returncode == 0, out.stderr
    assert "chinchilla law of eval/val/loss on n_params, data_size" in out.stdout
    assert "12 points" in out.stdout and "95% CI" in out.stdout
    assert (tmp_path / "report" / "fit_eval_val_loss.png").is_file()
    assert (tmp_path / "report" / "laws.json").is_file()


def test_unknown_column_exits_2_naming_the_option_value_and_choices(csv_path):
    out = run_cli("--csv", str(csv_path), "--y", "nope", "--x", "n_params", "--json")
    assert out.returncode == 2
    assert "--metric: column 'nope' not found; available: n_params, data_size, loss" in out.stderr
    assert out.stdout == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--form", "cubic"], "invalid choice: 'cubic'"),
        (["--x", "n_params", "--form", "chinchilla"], "--x: form 'chinchilla' takes 2 column(s), got 1"),
        (["--x", "n_params,size"], "--x: column 'size' not found"),
        (["--form", "sigmoid-of-loss"], "--x: required for --form sigmoid-of-loss"),
        (["--form", "broken-power", "--increasing", "--x", "n_params"], "--increasing: applies to"),
    ],
)
def test_bad_options_exit_2_with_a_clear_message(csv_path, capsys, args, message):
    assert main(["fit", "--csv", str(csv_path), "--y", "loss", *args]) == 2
    assert message in capsys.readouterr().err


def test_missing_inputs_exit_2(study, tmp_path, capsys):
    assert main(["fit", "--csv", str(tmp_path / "none.csv"), "--y", "loss"]) == 2
    assert "--csv: file not found" in capsys.readouterr().err
    assert main(["fit", "--experiment", "ghost", "--tracking-uri", study, "--metric", "train/loss"]) == 2
    assert "--experiment: no MLflow experiment named 'ghost'" in capsys.readouterr().err


def test_main_accepts_arguments_without_the_fit_command(csv_path, capsys):
    assert main(["--csv", str(csv_path), "--x", "n_params", "--y", "loss", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["form"] == "power"


def test_help_exits_0(capsys):
    assert main(["fit", "--help"]) == 0
    assert "--holdout-largest" in capsys.readouterr().out


def test_trials_left_out_of_the_fit_are_named_on_one_warning_line(tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("mixed")
    for i, (size, outcome) in enumerate([(100, None), (200, None), (400, None), (800, "diverged")]):
        tags = {"reliscale.role": "trial", **({"reliscale.outcome": outcome} if outcome else {})}
        run = client.create_run(exp, tags=tags)
        client.log_param(run.info.run_id, "trial_id", f"t{i}")
        client.log_param(run.info.run_id, "data_size", size)
        seen = size if outcome is None else size // 4
        client.log_metric(run.info.run_id, "eval/val/loss", 1 + 10 * seen ** -0.5, step=seen)
        client.set_terminated(run.info.run_id)
    code = main(["fit", "--experiment", "mixed", "--tracking-uri", uri, "--metric", "eval/val/loss",
                 "--form", "power", "--x", "data_size", "--json"])
    captured = capsys.readouterr()
    assert code == 0 and json.loads(captured.out)["n_points"] == 3
    warned = [line for line in captured.err.splitlines() if "left out" in line]
    assert warned == ["warning: 1 trial(s) left out of the final points, not trained through their budget: t3 (diverged)"]


def test_the_points_a_study_fit_used_are_written_as_a_csv_that_refits_to_the_same_law(study, tmp_path):
    args = ("--metric", "eval/val/loss", "--form", "chinchilla", "--json")
    points = tmp_path / "points.csv"
    first = run_cli("--experiment", "toy_study", "--tracking-uri", study, "--points-csv", str(points), *args)
    assert first.returncode == 0, first.stderr
    again = run_cli("--csv", str(points), *args)
    assert again.returncode == 0, again.stderr
    a, b = json.loads(first.stdout), json.loads(again.stdout)
    assert a["n_points"] == b["n_points"] == 12
    assert b["params"] == pytest.approx(a["params"], rel=1e-9)
