"""Compute-optimal allocation, required sizes and metric correlations are right."""

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import minimize_scalar
from scipy.stats import pearsonr, spearmanr

from scalinglaws import (
    BrokenPowerLaw,
    ChinchillaLaw,
    PowerLaw,
    SigmoidOfLoss,
    compute_optimal,
    metric_correlation,
    required_size,
)

EPOCH = ChinchillaLaw.from_params(E=1.8172, A=482.01, B=2085.43, alpha=0.34781, beta=0.36585)


@pytest.mark.parametrize("flops", [1e18, 1e21, 1e24])
def test_compute_optimal_closed_form_matches_brute_force_minimisation(flops):
    def loss_at(log_n: float) -> float:
        n = np.exp(log_n)
        return EPOCH.predict(n, flops / (6 * n))[0]

    brute = minimize_scalar(loss_at, bounds=(np.log(1e3), np.log(1e16)), method="bounded",
                            options={"xatol": 1e-10})
    opt = compute_optimal(EPOCH, flops).iloc[0]
    assert opt["n_params"] == pytest.approx(np.exp(brute.x), rel=1e-4)
    assert opt["n_params"] * opt["data_size"] * 6 == pytest.approx(flops)
    assert opt["predicted"] == pytest.approx(brute.fun, rel=1e-10)


def test_compute_optimal_n_grows_as_c_to_beta_over_alpha_plus_beta():
    opt = compute_optimal(EPOCH, np.array([1e20, 1e24]))
    slope = np.diff(np.log(opt["n_params"])) / np.log(1e4)
    p = EPOCH.params
    assert slope[0] == pytest.approx(p["beta"] / (p["alpha"] + p["beta"]))
    assert slope[0] == pytest.approx(0.513, abs=0.002)  # Besiroglu et al.'s a = beta / (alpha + beta)


def test_compute_optimal_needs_a_chinchilla_law():
    with pytest.raises(TypeError, match="ChinchillaLaw"):
        compute_optimal(PowerLaw.from_params(E=1.0, A=1.0, alpha=0.5), 1e20)


def test_required_data_for_a_given_model_size_and_vice_versa_reach_the_target():
    need_d = required_size(EPOCH, 2.1, n_params=1e10)
    assert EPOCH.predict(need_d["n_params"], need_d["data_size"])[0] == pytest.approx(2.1)
    need_n = required_size(EPOCH, 2.1, data_size=1e12)
    assert EPOCH.predict(need_n["n_params"], need_n["data_size"])[0] == pytest.approx(2.1)
    with pytest.raises(ValueError, match="not reachable"):
        required_size(EPOCH, 2.0, n_params=1e8)  # 1e8 params cannot get below E + A/N^alpha ≈ 2.46


def test_required_size_without_a_fixed_axis_is_the_cheapest_allocation():
    need = required_size(EPOCH, 2.1)
    assert EPOCH.predict(need["n_params"], need["data_size"])[0] == pytest.approx(2.1, abs=1e-8)
    assert need["flops"] == pytest.approx(6 * need["n_params"] * need["data_size"])
    for factor in (0.5, 2.0):  # other splits of the same compute reach a higher loss
        n = need["n_params"] * factor
        assert EPOCH.predict(n, need["flops"] / (6 * n))[0] > 2.1


def test_required_size_inverts_one_input_laws():
    power = PowerLaw.from_params(E=0.5, A=50.0, alpha=0.3)
    assert power.predict(required_size(power, 0.8)["n_params"])[0] == pytest.approx(0.8)
    acc = PowerLaw.from_params(E=0.1, A=8.0, alpha=0.25, increasing=True)
    assert acc.predict(required_size(acc, 0.85)["n_params"])[0] == pytest.approx(0.85)
    with pytest.raises(ValueError, match="not reachable"):
        required_size(acc, 0.95)  # beyond 1 - E
    sig = SigmoidOfLoss.from_params(a=-0.6, k=3.0, L0=3.5, b=0.85)
    assert sig.predict(required_size(sig, 0.6)["train/loss"])[0] == pytest.approx(0.6)
    bnsl = BrokenPowerLaw.from_params(a=0.2, b=5.0, c0=0.1, c1=0.6, d1=1e4, f1=0.3)
    assert bnsl.predict(required_size(bnsl, 1.0)["data_size"])[0] == pytest.approx(1.0)


def test_metric_correlation_matches_scipy_and_brackets_the_estimate():
    rng = np.random.default_rng(0)
    loss = rng.uniform(2, 4, 60)
    df = pd.DataFrame({"loss": loss, "acc": 1.5 - 0.3 * loss + rng.normal(0, 0.05, 60),
                       "ece": np.exp(-loss) + rng.normal(0, 0.01, 60)})
    df.loc[3, "ece"] = np.nan
    corr = metric_correlation(df, "loss", ["acc", "ece"], n_boot=500)
    assert corr.loc["acc", "pearson"] == pytest.approx(pearsonr(df.loss, df.acc)[0])
    assert corr.loc["acc", "spearman"] == pytest.approx(spearmanr(df.loss, df.acc)[0])
    both = df[["loss", "ece"]].dropna()
    assert corr.loc["ece", "spearman"] == pytest.approx(spearmanr(both.loss, both.ece)[0])
    assert corr.loc["ece", "n"] == 59
    for name in ("pearson", "spearman"):
        assert (corr[f"{name}_lo"] <= corr[name]).all() and (corr[name] <= corr[f"{name}_hi"]).all()
    assert corr.loc["acc", "pearson_hi"] < -0.8  # clearly negative: lower loss, higher accuracy


def test_compute_optimal_refuses_a_law_whose_exponent_is_not_positive():
    law = ChinchillaLaw.from_params(E=1.0, A=400.0, B=400.0, alpha=0.3, beta=-0.1)
    with pytest.raises(ValueError, match=r"no compute-optimal frontier.*beta=-0\.1"):
        compute_optimal(law, np.array([1e20]))
