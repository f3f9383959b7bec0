"""Bootstrap intervals have about their nominal coverage; resampling and hold-out behave."""

import numpy as np
import pandas as pd
import pytest
from test_scalinglaws_laws import COARSE, TRUE, chinchilla_data

from scalinglaws import ChinchillaLaw, PowerLaw, bootstrap, holdout_largest
from scalinglaws.bootstrap import resample_weights


def test_90pct_intervals_cover_true_parameters_at_about_the_nominal_rate():
    hits = []
    for draw in range(40):
        df = chinchilla_data(seed=100 + draw, sigma=0.01, n=6)
        law = ChinchillaLaw(y="loss", grid=COARSE).fit(df)
        ci = bootstrap(law, df, n=200, seed=draw).params_ci(level=0.9)
        hits.append({k: ci[k][0] <= TRUE[k] <= ci[k][1] for k in TRUE})
    coverage = pd.DataFrame(hits).mean()
    assert coverage.between(0.75, 1.0).all(), coverage.to_dict()
    assert 0.8 <= coverage.mean() <= 0.99, coverage.to_dict()


def test_prediction_band_contains_the_point_prediction_and_widens_with_extrapolation():
    df = chinchilla_data(seed=0, sigma=0.01, n=6)
    boot = bootstrap(ChinchillaLaw(y="loss", grid=COARSE), df, n=200, seed=0)
    band = boot.predict_ci(([1e8, 1e12], [1e10, 1e14]), 0.9)
    assert list(band.columns) == ["pred", "lo", "hi"]
    same = boot.predict_ci(pd.DataFrame({"n_params": [1e8, 1e12], "data_size": [1e10, 1e14]}), level=0.9)
    pd.testing.assert_frame_equal(band, same)
    assert (band["lo"] <= band["pred"]).all() and (band["pred"] <= band["hi"]).all()
    rel_width = (band["hi"] - band["lo"]) / band["pred"]
    assert rel_width[1] > 2 * rel_width[0]  # far outside the data the band is much wider


def test_bootstrap_leaves_a_fitted_law_untouched_and_fits_an_unfitted_one():
    df = chinchilla_data(seed=0, n=5)
    law = ChinchillaLaw(y="loss", grid=COARSE).fit(df)
    before = law.params
    boot = bootstrap(law, df, n=50)
    assert law.params == before and boot.law is law
    unfitted = ChinchillaLaw(y="loss", grid=COARSE)
    assert bootstrap(unfitted, df, n=50).law.params == pytest.approx(before)
    assert unfitted.theta_ is None
    assert boot.samples.shape == (50, 5) and list(boot.samples.columns) == list(before)


def test_group_resampling_draws_whole_groups():
    groups = np.array(["s0", "s0", "s1", "s1", "s1", "s2"])
    w = resample_weights(6, 100, np.random.default_rng(0), groups)
    assert (w[:, 0] == w[:, 1]).all() and (w[:, 2] == w[:, 3]).all() and (w[:, 3] == w[:, 4]).all()
    assert set(np.unique(w[:, 5])) <= {0, 1, 2, 3}  # a group's rows are drawn 0..3 times


def test_row_resampling_keeps_the_sample_size():
    w = resample_weights(7, 30, np.random.default_rng(0))
    assert (w.sum(axis=1) == 7).all()


def test_bootstrap_by_seed_groups_runs_on_a_column_name():
    df = pd.concat([chinchilla_data(seed=s, sigma=0.01, n=4).assign(seed=s) for s in range(3)], ignore_index=True)
    boot = bootstrap(ChinchillaLaw(y="loss", grid=COARSE), df, n=30, groups="seed")
    lo, hi = boot.params_ci(0.9)["alpha"]
    assert lo < hi


def test_holdout_largest_fits_on_smaller_sizes_and_reports_relative_error():
    df = chinchilla_data(seed=0, n=6)
    ho = holdout_largest(ChinchillaLaw(y="loss", grid=COARSE), df, k=2)
    largest = np.sort(df.n_params.unique())[-2:]
    assert set(ho.table["n_params"]) == set(largest)
    assert len(ho.table) == 12 and ho.law.n_points_ == 24
    np.testing.assert_allclose(ho.table["rel_error"], ho.table["predicted"] / ho.table["actual"] - 1)
    assert ho.mean_abs_rel_error < 0.02
    assert ho.to_dict()["k"] == 2


def test_holdout_rejects_holding_out_everything():
    df = pd.DataFrame({"n_params": [1e6, 1e7, 1e8], "loss": [3.0, 2.5, 2.2]})
    with pytest.raises(ValueError, match="k=3"):
        holdout_largest(PowerLaw(y="loss"), df, k=3)
