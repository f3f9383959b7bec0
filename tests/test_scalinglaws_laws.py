"""Laws recover known parameters from noisy synthetic data; Huber resists outliers, MSE not."""

import itertools

import numpy as np
import pandas as pd
import pytest

from scalinglaws import BrokenPowerLaw, ChinchillaLaw, PowerLaw, SigmoidOfLoss

TRUE = {"E": 1.7, "A": 400.0, "B": 1100.0, "alpha": 0.34, "beta": 0.29}
# 144 starts instead of the 4,500 of the default grid: keeps the synthetic tests fast.
COARSE = np.array(list(itertools.product([0.0, 5.0, 10.0], [0.0, 5.0, 10.0], [0.0, 0.5], [0.25, 0.5], [0.25, 0.5])))


def chinchilla_data(seed: int, sigma: float = 0.005, outliers: int = 0, n: int = 8) -> pd.DataFrame:
    """An n x n grid of (N, D), loss from TRUE with log-normal noise; outliers x1.5 (diverged runs)."""
    rng = np.random.default_rng(seed)
    N, D = np.meshgrid(np.geomspace(1e7, 1e10, n), np.geomspace(1e9, 1e12, n))
    df = pd.DataFrame({"n_params": N.ravel(), "data_size": D.ravel()})
    df["loss"] = ChinchillaLaw.from_params(**TRUE).predict(df) * np.exp(rng.normal(0, sigma, len(df)))
    if outliers:
        df.loc[rng.choice(len(df), outliers, replace=False), "loss"] *= 1.5
    return df


def rel_errors(params: dict, truth: dict) -> dict:
    return {k: abs(params[k] / truth[k] - 1) for k in truth}


def test_chinchilla_default_grid_recovers_parameters_despite_noise_and_outliers():
    law = ChinchillaLaw(y="loss").fit(chinchilla_data(seed=0, outliers=3))
    err = rel_errors(law.params, TRUE)
    assert err["E"] < 0.03 and err["alpha"] < 0.05 and err["beta"] < 0.05
    assert err["A"] < 0.4 and err["B"] < 0.4
    assert law.n_points_ == 64 and law.converged_


def test_huber_resists_outliers_where_least_squares_does_not():
    df = chinchilla_data(seed=4, outliers=3)
    huber = ChinchillaLaw(y="loss", grid=COARSE).fit(df)
    mse = ChinchillaLaw(y="loss", loss="mse", grid=COARSE).fit(df)
    far = (1e11, 1e13)  # 10x beyond the largest N and D: where a bad fit shows
    truth = ChinchillaLaw.from_params(**TRUE).predict(*far)[0]
    assert abs(huber.predict(*far)[0] / truth - 1) < 0.01
    assert abs(mse.predict(*far)[0] / truth - 1) > 0.03
    assert max(rel_errors(huber.params, TRUE).values()) < 0.5
    assert rel_errors(mse.params, TRUE)["alpha"] > 0.3


def test_power_law_recovers_parameters():
    rng = np.random.default_rng(1)
    x = np.geomspace(1e6, 1e9, 15)
    truth = {"E": 0.5, "A": 50.0, "alpha": 0.3}
    y = PowerLaw.from_params(**truth).predict(x) * np.exp(rng.normal(0, 0.003, x.size))
    law = PowerLaw().fit(x, y)
    err = rel_errors(law.params, truth)
    assert err["E"] < 0.03 and err["alpha"] < 0.05 and err["A"] < 0.3


def test_increasing_power_law_fits_the_complement_of_an_accuracy():
    x = np.geomspace(1e5, 1e8, 12)
    truth = {"E": 0.1, "A": 8.0, "alpha": 0.25}  # error = 1 - acc = E + A x^-alpha
    acc = 1 - PowerLaw.from_params(**truth).predict(x)
    df = pd.DataFrame({"n_params": x, "acc": acc})
    law = PowerLaw(y="acc", increasing=True).fit(df)
    assert max(rel_errors(law.params, truth).values()) < 1e-3
    np.testing.assert_allclose(law.predict(df), acc, rtol=1e-5)
    assert np.all(np.diff(law.predict(np.geomspace(1e5, 1e12, 20))) > 0)
    assert law.predict(1e30)[0] == pytest.approx(1 - truth["E"], abs=1e-6)


def test_sigmoid_of_loss_recovers_parameters_and_reports_positive_k():
    rng = np.random.default_rng(2)
    loss = np.linspace(2.5, 5.0, 40)
    truth = {"a": -0.6, "k": 3.0, "L0": 3.5, "b": 0.85}
    metric = SigmoidOfLoss.from_params(**truth).predict(loss) + rng.normal(0, 0.003, loss.size)
    law = SigmoidOfLoss().fit(loss, metric)
    p = law.params
    assert p["k"] > 0
    assert p["a"] == pytest.approx(-0.6, abs=0.03) and p["b"] == pytest.approx(0.85, abs=0.02)
    assert p["k"] == pytest.approx(3.0, rel=0.1) and p["L0"] == pytest.approx(3.5, abs=0.05)


def test_sigmoid_equivalent_parametrisations_are_canonicalised():
    flipped = SigmoidOfLoss.from_params(a=0.6, k=-3.0, L0=3.5, b=0.25)  # same curve as a=-0.6, k=3, b=0.85
    loss = np.linspace(2.5, 5.0, 30)
    law = SigmoidOfLoss().fit(loss, flipped.predict(loss))
    assert law.params == pytest.approx({"a": -0.6, "k": 3.0, "L0": 3.5, "b": 0.85}, rel=1e-3)


def test_broken_power_law_recovers_a_smooth_break():
    rng = np.random.default_rng(3)
    x = np.geomspace(1e2, 1e6, 30)
    truth = {"a": 0.2, "b": 5.0, "c0": 0.1, "c1": 0.6, "d1": 1e4, "f1": 0.3}
    y = BrokenPowerLaw.from_params(**truth).predict(x) * np.exp(rng.normal(0, 0.002, x.size))
    law = BrokenPowerLaw().fit(x, y)
    p = law.params
    assert p["d1"] == pytest.approx(1e4, rel=0.3)
    assert p["c0"] == pytest.approx(0.1, abs=0.03) and p["c1"] == pytest.approx(0.6, abs=0.1)
    x_far = np.geomspace(1e6, 1e7, 5)
    np.testing.assert_allclose(law.predict(x_far), BrokenPowerLaw.from_params(**truth).predict(x_far), rtol=0.03)


def test_laws_accept_dataframes_arrays_and_separate_columns_alike():
    law = ChinchillaLaw.from_params(**TRUE)
    N, D = np.array([1e8, 1e9]), np.array([1e10, 2e10])
    by_cols = law.predict(N, D)
    np.testing.assert_array_equal(by_cols, law.predict(np.c_[N, D]))
    np.testing.assert_array_equal(by_cols, law.predict(pd.DataFrame({"n_params": N, "data_size": D})))
    assert law.predict(1e8, D).shape == (2,)  # broadcast


def test_repr_shows_parameters_and_clone_is_unfitted():
    law = PowerLaw.from_params(E=0.5, A=50.0, alpha=0.3, y="loss")
    assert repr(law) == "PowerLaw(E=0.5, A=50, alpha=0.3)"
    assert "unfitted" in repr(law.clone())
    assert law.clone().y == "loss"


def test_bad_input_gives_clear_errors():
    df = pd.DataFrame({"n_params": [1e6, 1e7, 1e8, 1e9], "loss": [3.0, 2.5, 2.2, 2.0]})
    with pytest.raises(KeyError, match="not in data"):
        PowerLaw(y="nope").fit(df)
    with pytest.raises(ValueError, match="takes 2 x column"):
        ChinchillaLaw(x="n_params")
    with pytest.raises(ValueError, match="loss="):
        PowerLaw(loss="l1")
    with pytest.raises(ValueError, match="y <= 0"):
        PowerLaw(y="loss").fit(df.assign(loss=[1.0, 0.0, -1.0, 2.0]))
    with pytest.raises(RuntimeError, match="not fitted"):
        PowerLaw().predict([1.0])


def test_rows_with_missing_values_are_ignored():
    df = chinchilla_data(seed=0, n=5)
    df.loc[[0, 3], "loss"] = np.nan
    law = ChinchillaLaw(y="loss", grid=COARSE).fit(df)
    assert law.n_points_ == 23


def test_joint_law_in_two_model_sizes_recovers_both_exponents():
    # PaLI-style: vision-encoder size x text-decoder size at fixed data, same additive form.
    truth = {"E": 0.4, "A": 30.0, "B": 8.0, "alpha": 0.3, "beta": 0.2}
    enc, dec = np.meshgrid(np.geomspace(1e6, 1e9, 5), np.geomspace(1e6, 1e9, 4))
    df = pd.DataFrame({"n_params_enc": enc.ravel(), "n_params_dec": dec.ravel()})
    law = ChinchillaLaw(x=("n_params_enc", "n_params_dec"), y="nll", grid=COARSE)
    df["nll"] = law.from_params(x=law.x, **truth).predict(df) * np.exp(
        np.random.default_rng(1).normal(0, 0.003, len(df)))
    err = rel_errors(law.fit(df).params, truth)
    assert err["alpha"] < 0.1 and err["beta"] < 0.1 and err["E"] < 0.05
