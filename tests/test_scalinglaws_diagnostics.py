"""Fit diagnostics fire on laws that should not be believed, for the reason they name, and
stay silent on a clean law with enough points."""

import json

import numpy as np
import pandas as pd
import pytest
from test_scalinglaws_laws import COARSE, chinchilla_data

from scalinglaws import (
    BrokenPowerLaw,
    ChinchillaLaw,
    PowerLaw,
    bootstrap,
    holdout_largest,
    write_report,
)
from scalinglaws.bootstrap import BootstrapResult
from scalinglaws.diagnostics import diagnose


def codes(diagnostics) -> list[str]:
    return [d.code for d in diagnostics]


def demo_like() -> pd.DataFrame:
    """An ICL-like study: 3 sizes x 3 data sizes, mse from a Chinchilla law with 5% noise."""
    truth = ChinchillaLaw.from_params(E=0.12, A=30.0, B=300.0, alpha=0.5, beta=0.6)
    n, d = np.meshgrid([1e5, 4e5, 1.6e6], [1e5, 4e5, 1.6e6])
    df = pd.DataFrame({"n_params": n.ravel(), "data_size": d.ravel()})
    df["eval/id/mse"] = truth.predict(df) * np.exp(np.random.default_rng(3).normal(0, 0.05, len(df)))
    return df


@pytest.fixture(scope="module")
def demo_fit():
    df = demo_like()
    law = ChinchillaLaw(y="eval/id/mse").fit(df)
    return df, law, bootstrap(law, df, n=200, seed=0)


def test_a_3x3_study_fits_5_parameters_on_9_points_with_exponent_intervals_too_wide(demo_fit):
    df, law, boot = demo_fit
    assert codes(law.diagnostics_) == ["few_points"]  # 4 residual degrees of freedom
    found = diagnose(law, df, boot=boot)
    assert "few_points" in codes(found) and "wide_ci" in codes(found)
    lo, hi = np.quantile(boot.samples["alpha"], [0.025, 0.975])  # the reason, computed independently
    assert lo > 0 and hi / lo > 3
    assert any(d.code == "wide_ci" and "of alpha" in d.message and f"{hi:.3g}" in d.message for d in found)
    assert "few_points" not in codes(diagnose(law, df, boot=boot, min_points_per_param=1))  # a threshold


def test_a_clean_law_with_enough_points_has_no_diagnostics():
    df = chinchilla_data(seed=0, sigma=0.005, n=6)
    law = ChinchillaLaw(y="loss", grid=COARSE).fit(df)
    assert law.diagnostics_ == []
    boot = bootstrap(law, df, n=100, seed=0)
    assert diagnose(law, df, boot=boot, holdout=holdout_largest(law, df, k=1)) == []


def test_two_sizes_are_too_few_levels_and_five_are_not():
    rng = np.random.default_rng(0)
    truth = PowerLaw.from_params(E=0.5, A=50.0, alpha=0.3)
    for sizes, fires in (([1e6, 1e8], True), (np.geomspace(1e6, 1e9, 5), False)):
        x = np.repeat(sizes, 4)
        law = PowerLaw().fit(x, truth.predict(x) * np.exp(rng.normal(0, 0.005, x.size)))
        assert ("few_levels" in codes(law.diagnostics_)) is fires, sizes


def test_a_vanished_irreducible_term_is_at_its_bound():
    rng = np.random.default_rng(0)
    x = np.geomspace(1e6, 1e9, 10)
    pure = 50.0 * x**-0.3 * np.exp(rng.normal(0, 0.01, x.size))  # no E: the fit drives E to 0
    law = PowerLaw().fit(x, pure)
    assert law.params["E"] < 1e-3 * pure.min()  # independently: E is negligible at every point
    assert [d.message.split(" ")[0] for d in law.diagnostics_ if d.code == "at_bound"] == ["E"]
    floored = PowerLaw().fit(x, 0.5 + pure)
    assert "at_bound" not in codes(floored.diagnostics_)


def test_a_power_law_through_a_broken_curve_leaves_same_signed_residuals_at_the_ends():
    rng = np.random.default_rng(1)
    x = np.repeat(np.geomspace(1e2, 1e6, 8), 6)
    broken = BrokenPowerLaw.from_params(a=0.05, b=5.0, c0=0.05, c1=0.6, d1=1e4, f1=0.2).predict(x)
    law = PowerLaw(loss="mse").fit(x, broken * np.exp(rng.normal(0, 0.002, x.size)))
    flagged = [d for d in law.diagnostics_ if d.code == "residual_signs"]
    assert flagged
    r = pd.Series(np.log(broken) - np.log(law.predict(x))).groupby(x)
    same_sign = r.apply(lambda g: (g > 0).all() or (g < 0).all())
    for d in flagged:  # each flagged size has its residuals on one side, by the test's own count
        size = float(d.message.split("n_params=")[1].split(" ")[0])
        assert same_sign[min(same_sign.index, key=lambda s: abs(s / size - 1))]
    clean_y = PowerLaw.from_params(E=0.5, A=50.0, alpha=0.3).predict(x) * np.exp(rng.normal(0, 0.005, x.size))
    assert "residual_signs" not in codes(PowerLaw().fit(x, clean_y).diagnostics_)


def test_an_exponent_interval_across_zero_is_flagged():
    law = PowerLaw.from_params(E=0.5, A=50.0, alpha=0.2)
    df = pd.DataFrame({"n_params": np.geomspace(1e6, 1e9, 8)})
    df["loss"] = law.predict(df)
    law.y = "loss"
    alphas = np.linspace(-0.1, 0.5, 101)
    thetas = np.column_stack([np.full(101, np.log(50.0)), np.full(101, np.log(0.5)), alphas])
    found = diagnose(law, df, boot=BootstrapResult(law, thetas, np.ones(101, bool)))
    assert [d.message for d in found] == ["the 95% bootstrap interval of alpha [-0.085, 0.485] includes 0"]
    narrow = BootstrapResult(law, thetas[60:], np.ones(41, bool))  # alpha in [0.26, 0.5]: a factor < 2
    assert diagnose(law, df, boot=narrow) == []


def test_a_regime_change_at_the_largest_size_is_missed_by_the_held_out_fit():
    df = chinchilla_data(seed=0, sigma=0.005, n=6)
    df.loc[df.n_params == df.n_params.max(), "loss"] *= 1.15
    law = ChinchillaLaw(y="loss", grid=COARSE).fit(df)
    ho = holdout_largest(law, df, k=1)
    error = np.mean(np.abs(ho.table["predicted"] / ho.table["actual"] - 1))
    assert error > 0.05
    assert [d.code for d in diagnose(law, df, holdout=ho)].count("holdout_error") == 1
    assert "holdout_error" not in codes(diagnose(law, df, holdout=ho, max_holdout_error=error + 0.01))


def test_report_lists_the_diagnostics_in_report_md_and_laws_json(tmp_path):
    summary = write_report(demo_like(), tmp_path, ["eval/id/mse"], n_boot=100)
    law = json.loads((tmp_path / "laws.json").read_text())["laws"]["eval/id/mse"]
    assert law == json.loads(json.dumps(summary["laws"]["eval/id/mse"]))
    assert {"few_points", "wide_ci"} <= {d["code"] for d in law["diagnostics"]}
    md = (tmp_path / "report.md").read_text()
    for d in law["diagnostics"]:
        assert f"- `{d['code']}`: {d['message']}" in md
