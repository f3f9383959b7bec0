"""load_study reads a real MLflow sqlite store laid out by the platform's conventions."""

import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_scalinglaws_laws import TRUE

from scalinglaws import ChinchillaLaw, final_points, from_csv, load_study, subset

SIZES = {"S0": 2e7, "S1": 8e7, "S2": 3e8, "S3": 1e9}
DATA_SIZES = (2e9, 8e9, 3e10)
STEPS_PER_TRIAL = 3


def make_study(root: Path, name: str = "toy_study", seed: int = 0) -> str:
    """A study as the platform logs it: parent run, one child run per (size, data size)
    trial, params as strings, metrics stepped by tokens seen. Returns the tracking URI.

    Loss follows the Chinchilla law TRUE (1% noise); eval/ood/auroc only at the last step;
    trial t000 logs its final train/loss twice (the second value, 2.5, must win); one run
    without the trial tag must be ignored."""
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment(name, artifact_location=(root / "artifacts").as_uri())
    parent = client.create_run(exp_id, tags={"reliscale.role": "study"}, run_name=name).info.run_id
    client.create_run(exp_id, tags={"note": "not a trial"}, run_name="stray")
    truth = ChinchillaLaw.from_params(**TRUE)
    rng = np.random.default_rng(seed)
    for i, ((size, n), d) in enumerate(itertools.product(SIZES.items(), DATA_SIZES)):
        tid = f"t{i:03d}"
        tags = {"reliscale.role": "trial", "mlflow.parentRunId": parent, "reliscale.trial_id": tid}
        run_id = client.create_run(exp_id, tags=tags, run_name=tid).info.run_id
        params = {"trial_id": tid, "family": "decoder", "size": size, "n_params": int(n),
                  "n_params_nonembedding": int(0.8 * n), "data_size": int(d), "data_unit": "tokens",
                  "flops": f"{6 * n * d:.6e}", "objective": "erm", "technique": "none",
                  "mixture": "default", "seed": 0, "zero_stage": 2, "workers": 2}
        metrics = []
        for j, seen in enumerate(np.linspace(d / STEPS_PER_TRIAL, d, STEPS_PER_TRIAL).astype(int)):
            loss = float(truth.predict(n, seen)[0] * np.exp(rng.normal(0, 0.01)))
            values = {"train/loss": loss, "eval/val/loss": loss * 1.02, "eval/val/acc": float(np.exp(-loss))}
            if j == STEPS_PER_TRIAL - 1:
                values["eval/ood/auroc"] = float(1 - 0.1 * loss)
            metrics += [Metric(k, v, 1000 * j, int(seen)) for k, v in values.items()]
        if tid == "t000":
            metrics.append(Metric("train/loss", 2.5, 10_000, int(d)))
        client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()], metrics=metrics)
        client.set_terminated(run_id)
    return uri


def shared_study(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One store per test session (a fresh MLflow sqlite store costs seconds of migrations)."""
    root = tmp_path_factory.getbasetemp() / "scalinglaws_study"
    if not (root / "mlflow.db").exists():
        root.mkdir(exist_ok=True)
        make_study(root)
    return f"sqlite:///{root / 'mlflow.db'}"


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> str:
    return shared_study(tmp_path_factory)


def test_one_row_per_trial_and_eval_point_with_numeric_params(study):
    df = load_study("toy_study", study)
    n_trials = len(SIZES) * len(DATA_SIZES)
    assert len(df) == n_trials * STEPS_PER_TRIAL
    assert df["run_id"].nunique() == n_trials
    for col in ("n_params", "n_params_nonembedding", "data_size", "flops", "seed", "zero_stage", "workers"):
        assert pd.api.types.is_numeric_dtype(df[col]), col
    for col in ("trial_id", "size", "family", "objective", "mixture"):
        assert df[col].map(type).eq(str).all(), col
    assert list(df.columns[-4:]) == ["train/loss", "eval/ood/auroc", "eval/val/acc", "eval/val/loss"]
    assert df["parent_run_id"].nunique() == 1 and (df["status"] == "FINISHED").all()
    assert (df.groupby("trial_id")["data_seen"].max() == df.groupby("trial_id")["data_size"].first()).all()


def test_a_metric_logged_twice_at_one_step_keeps_the_last_value(study):
    df = load_study("toy_study", study)
    last = df[df.trial_id == "t000"].sort_values("data_seen").iloc[-1]
    assert last["train/loss"] == 2.5


def test_metrics_missing_at_a_step_are_nan(study):
    df = load_study("toy_study", study)
    assert df["eval/ood/auroc"].isna().sum() == len(df) - df["run_id"].nunique()


def test_final_points_give_one_row_per_trial_at_its_largest_data_seen(study):
    df = load_study("toy_study", study)
    fp = final_points(df)
    assert len(fp) == df["run_id"].nunique()
    assert (fp["data_seen"] == fp["data_size"]).all()
    assert fp["eval/ood/auroc"].notna().all()


def test_final_points_take_each_metrics_last_logged_value():
    df = pd.DataFrame({"trial_id": ["a", "a", "a"], "data_seen": [10, 20, 30],
                       "train/loss": [3.0, 2.0, np.nan], "eval/val/loss": [np.nan, 2.5, 2.4]})
    fp = final_points(df)
    assert fp.loc[0, "data_seen"] == 30 and fp.loc[0, "train/loss"] == 2.0 and fp.loc[0, "eval/val/loss"] == 2.4


def test_final_points_leave_out_trials_not_trained_through_their_budget():
    # A running, failed or diverged trial's last point is at a smaller data size than its data_size.
    df = pd.DataFrame({"trial_id": ["done", "done", "running", "diverged", "failed"],
                       "status": ["FINISHED", "FINISHED", "RUNNING", "FINISHED", "FAILED"],
                       "outcome": [np.nan, np.nan, np.nan, "diverged", np.nan],
                       "data_seen": [10, 20, 10, 5, 10], "loss": [2.0, 1.0, 3.0, np.nan, 2.5]})
    with pytest.warns(UserWarning, match=r"3 trial\(s\) left out .*: running \(RUNNING\), "
                                         r"diverged \(diverged\), failed \(FAILED\)"):
        fp = final_points(df)
    assert fp["trial_id"].tolist() == ["done"] and fp.loc[0, "loss"] == 1.0


def test_a_frame_without_trials_is_already_final():
    df = pd.DataFrame({"n_params": [1.0, 2.0], "loss": [3.0, 2.0]})
    pd.testing.assert_frame_equal(final_points(df), df)


def test_subset_keeps_one_value_of_a_column_as_text_or_number():
    df = pd.DataFrame({"technique": ["none", "gp", "gp", "het"], "seed": [0, 0, 1, 0], "loss": [1.0, 2.0, 3.0, 4.0]})
    assert subset(df, {"technique": "gp"})["loss"].tolist() == [2.0, 3.0]
    assert subset(df, {"technique": "gp", "seed": "0"})["loss"].tolist() == [2.0]  # "0" as MLflow logs it
    assert subset(df, {"seed": 0.0}).index.tolist() == [0, 1, 2] and subset(df, {}).equals(df)
    with pytest.raises(ValueError, match=r"^technique=sngp: no rows have it; values: gp, het, none$"):
        subset(df, {"technique": "sngp"})
    with pytest.raises(ValueError, match=r"^seed=first: no rows have it; values: 0, 1$"):
        subset(df, {"seed": "first"})
    with pytest.raises(ValueError, match=r"^mixture=a: no column 'mixture'; available: technique, seed, loss$"):
        subset(df, {"mixture": "a"})


def test_csv_round_trip_gives_the_same_final_points(study, tmp_path):
    df = load_study("toy_study", study)
    df.to_csv(tmp_path / "study.csv", index=False)
    again = final_points(from_csv(tmp_path / "study.csv"))
    pd.testing.assert_frame_equal(again, final_points(df), check_dtype=False)


def test_unknown_experiment_is_a_clear_error(study):
    with pytest.raises(LookupError, match="no MLflow experiment named 'nope'"):
        load_study("nope", study)
