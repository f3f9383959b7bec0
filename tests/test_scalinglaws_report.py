"""write_report renders readable PNG/SVG plots, report.md and laws.json, and logs to MLflow."""

import json

import numpy as np
import pandas as pd
import pytest
from test_scalinglaws_laws import COARSE, TRUE, chinchilla_data
from test_scalinglaws_load import shared_study

from scalinglaws import ChinchillaLaw, PowerLaw, SigmoidOfLoss, bootstrap, load_study, write_report
from scalinglaws.plots import plot_correlation, plot_fit, plot_isoflop, save_figure

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def study_frame() -> pd.DataFrame:
    """Final points of a 6 x 6 (N, D) study with a loss and two bounded, growing metrics."""
    df = chinchilla_data(seed=0, sigma=0.01, n=6).rename(columns={"loss": "eval/val/loss"})
    df["eval/val/acc"] = np.exp(1.2 - df["eval/val/loss"])
    df["eval/ood/auroc"] = 1 - 0.1 * df["eval/val/loss"]
    return df


def assert_png(path):
    assert path.is_file() and path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 10_000, path
    assert path.with_suffix(".svg").is_file(), path


def test_report_fits_every_metric_and_renders_all_plots(tmp_path):
    laws = {"eval/val/loss": ChinchillaLaw(y="eval/val/loss", grid=COARSE),
            "eval/val/acc": ChinchillaLaw(y="eval/val/acc", increasing=True, grid=COARSE)}
    summary = write_report(study_frame(), tmp_path, laws, upstream="eval/val/loss", n_boot=50, holdout=1)
    for name in ("fit_eval_val_loss", "holdout_eval_val_loss", "isoflop_eval_val_loss",
                 "fit_eval_val_acc", "holdout_eval_val_acc", "corr_eval_val_acc"):
        assert_png(tmp_path / f"{name}.png")
    assert not (tmp_path / "isoflop_eval_val_acc.png").exists()  # iso-FLOP plots are for losses
    laws = json.loads((tmp_path / "laws.json").read_text())
    assert laws == json.loads(json.dumps(summary))
    loss_law = laws["laws"]["eval/val/loss"]
    assert loss_law["form"] == "chinchilla" and set(loss_law["ci"]) == set(TRUE)
    assert loss_law["params"]["E"] == pytest.approx(TRUE["E"], rel=0.05)
    assert loss_law["holdout"]["mean_abs_rel_error"] < 0.05
    assert laws["downstream"]["eval/val/acc"]["form"] == "sigmoid-of-loss"
    assert laws["correlation"]["eval/val/acc"]["spearman"] == pytest.approx(-1.0)
    md = (tmp_path / "report.md").read_text()
    for image in [line.split("(")[1].rstrip(")") for line in md.splitlines() if line.startswith("![")]:
        assert (tmp_path / image).is_file(), image
    assert "| alpha |" in md


def test_report_detects_bounded_growing_metrics_as_increasing(tmp_path):
    write_report(study_frame(), tmp_path, ["eval/val/acc"], n_boot=0)
    law = json.loads((tmp_path / "laws.json").read_text())["laws"]["eval/val/acc"]
    assert law["form"] == "chinchilla" and law["ci"] == {}
    assert "log(1 - y)" in (tmp_path / "report.md").read_text()


def test_report_uses_given_laws_and_a_power_law_when_one_axis_varies(tmp_path):
    df = study_frame()
    one_d = df[df.data_size == df.data_size.max()]
    given = PowerLaw(y="eval/val/loss")
    summary = write_report(one_d, tmp_path, {"eval/val/loss": given}, n_boot=20)
    assert given.theta_ is not None and summary["laws"]["eval/val/loss"]["form"] == "power"
    summary = write_report(one_d, tmp_path, ["eval/val/acc"], n_boot=0)
    assert summary["laws"]["eval/val/acc"]["form"] == "power"
    assert_png(tmp_path / "fit_eval_val_acc.png")


def test_report_is_logged_as_artifacts_of_an_mlflow_run(tmp_path_factory, tmp_path):
    from mlflow.tracking import MlflowClient

    uri = shared_study(tmp_path_factory)
    df = load_study("toy_study", uri)
    run_id = df["parent_run_id"].iloc[0]
    write_report(df, tmp_path, ["train/loss"], n_boot=20, log_to_run=run_id, tracking_uri=uri)
    folder = f"scalinglaws/{tmp_path.name}"  # one folder per report: several laws do not overwrite each other
    logged = {a.path for a in MlflowClient(tracking_uri=uri).list_artifacts(run_id, folder)}
    assert {f"{folder}/report.md", f"{folder}/laws.json", f"{folder}/fit_train_loss.png"} <= logged


def test_individual_plots_render(tmp_path):
    df = study_frame()
    law = ChinchillaLaw(y="eval/val/loss", grid=COARSE).fit(df)
    boot = bootstrap(law, df, n=30)
    save_figure(plot_fit(law, df, boot=boot), tmp_path, "fit")
    save_figure(plot_isoflop(law, budgets=[1e18, 1e20, 1e22]), tmp_path, "iso")
    sig = SigmoidOfLoss("eval/val/loss", "eval/val/acc").fit(df)
    save_figure(plot_fit(sig, df), tmp_path, "sig")
    save_figure(plot_correlation(df, "eval/val/loss", "eval/val/acc", law=sig), tmp_path, "corr")
    for stem in ("fit", "iso", "sig", "corr"):
        assert_png(tmp_path / f"{stem}.png")
    with pytest.raises(ValueError, match="budgets or data"):
        plot_isoflop(law)
