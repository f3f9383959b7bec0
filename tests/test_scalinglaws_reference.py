"""Published fits on public data are reproduced (provenance: tests/fixtures/README.md)."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from scalinglaws import BrokenPowerLaw, ChinchillaLaw, SigmoidOfLoss, bootstrap

FIXTURES = Path(__file__).parent / "fixtures"
REFERENCE = json.loads((FIXTURES / "chinchilla_epoch_reference.json").read_text())


def chinchilla_points(drop_highest: int = 5) -> pd.DataFrame:
    """Epoch's convention: D = C / 6N, the 5 highest-loss points dropped (240 left)."""
    df = pd.read_csv(FIXTURES / "chinchilla_epoch_svg_extracted.csv")
    df = df.rename(columns={"Model Size": "n_params"})
    df["data_size"] = df["Training FLOP"] / (6 * df["n_params"])
    return df[df.loss < df.loss.nlargest(drop_highest).min()] if drop_highest else df


@pytest.fixture(scope="module")
def chinchilla_fit() -> ChinchillaLaw:
    return ChinchillaLaw(y="loss").fit(chinchilla_points())


def test_chinchilla_grid_fit_reproduces_epoch_to_printed_digits(chinchilla_fit):
    ref = REFERENCE["huber_grid_fit"]
    assert chinchilla_fit.n_points_ == 240
    for k in ("E", "A", "B", "alpha", "beta"):
        assert chinchilla_fit.params[k] == pytest.approx(ref[k], rel=5e-4), k
    assert chinchilla_fit.loss_ == pytest.approx(ref["objective_value"], rel=1e-6)


def test_chinchilla_fit_matches_the_published_replication_estimate(chinchilla_fit):
    pub = REFERENCE["published_point_estimate"]  # E≈1.82, A≈482, B≈2085, α≈0.348, β≈0.366
    p = chinchilla_fit.params
    assert p["E"] == pytest.approx(pub["E"], rel=0.005)
    assert p["alpha"] == pytest.approx(pub["alpha"], rel=0.01)
    assert p["beta"] == pytest.approx(pub["beta"], rel=0.01)
    assert p["A"] == pytest.approx(pub["A"], rel=0.02)
    assert p["B"] == pytest.approx(pub["B"], rel=0.05)


def test_chinchilla_bootstrap_matches_epoch_standard_errors_and_intervals(chinchilla_fit):
    boot = bootstrap(chinchilla_fit, chinchilla_points(), n=1000, seed=42)
    ref = REFERENCE["bootstrap"]
    for k, se in boot.params_se().items():  # A and B have long right tails: noisier SEs
        assert se == pytest.approx(ref["se"][k], rel=0.3 if k in ("A", "B") else 0.15), k
    for k, (lo, hi) in boot.params_ci(0.95).items():
        ref_lo, ref_hi = ref["ci95_percentile"][k]
        assert lo == pytest.approx(ref_lo, rel=0.1) and hi == pytest.approx(ref_hi, rel=0.1), k
    assert boot.converged.all()


def test_keeping_all_245_points_moves_the_optimum_as_epoch_report():
    law = ChinchillaLaw(y="loss").fit(chinchilla_points(drop_highest=0))
    assert law.params["B"] == pytest.approx(12_800, rel=0.05)
    assert law.params["beta"] == pytest.approx(0.453, abs=0.005)


@pytest.mark.parametrize(("column", "paper"), [("c4_loss", 2.3444), ("hellaswag_val_bpb", 0.6531)])
def test_olmo_ladder_step1_predicts_13b_as_the_paper(column, paper):
    df = pd.read_csv(FIXTURES / "olmo_ladder_final_points.csv")
    law = ChinchillaLaw(x=("n_params", "tokens"), y=column).fit(df[df.role == "train"])
    target = df[df.run == "13B-5T"]
    assert law.predict(target)[0] == pytest.approx(paper, abs=0.001)


def test_olmo_ladder_step2_sigmoid_predicts_13b_hellaswag_accuracy_as_the_paper():
    ckpts = pd.read_csv(FIXTURES / "olmo_ladder_hellaswag_checkpoints.csv")
    law = SigmoidOfLoss("hellaswag_bpb", "hellaswag_acc").fit(ckpts)
    target = pd.read_csv(FIXTURES / "olmo_ladder_final_points.csv").set_index("run").loc["13B-5T"]
    assert law.predict(target["hellaswag_val_bpb"])[0] == pytest.approx(0.8416, abs=0.003)  # step2_main.csv
    assert law.predict(0.6531)[0] == pytest.approx(0.8530, abs=0.003)  # chained_main.csv: step-1 bpb
    assert abs(law.predict(target["hellaswag_val_bpb"])[0] / target["hellaswag_val_acc"] - 1) < 0.02


def test_bnsl_fit_on_4digit_addition_matches_caballero_fit_and_extrapolation():
    df = pd.read_csv(FIXTURES / "bnsl_4digit_addition.csv")
    fit, ext = df[df.split == "fit"], df[df.split == "extrapolate"]
    law = BrokenPowerLaw(x="train_set_size", y="test_cross_entropy").fit(fit)

    def rmsle(rows: pd.DataFrame) -> float:
        return float(np.sqrt(np.mean((np.log(law.predict(rows)) - np.log(rows.test_cross_entropy)) ** 2)))

    assert rmsle(fit) <= 0.0006 * 1.05  # reference fit: 0.0006
    assert rmsle(ext) <= 0.0109 * 1.10  # reference extrapolation: 0.0109
    ref = {"a": 0.41389, "b": 2.27727, "c0": 0.055077, "c1": 5.66290, "d1": 612.58, "f1": 0.059193}
    assert law.params == pytest.approx(ref, rel=0.02)
