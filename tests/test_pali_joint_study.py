"""PaLI-style joint scaling in real trials: a grid over two model sizes, and a law fitted in both."""

from __future__ import annotations

import contextlib
import io
import json

import pytest

from reliscale.driver.study import StudyPaths
from reliscale.spec.schema import load_spec
from scalinglaws import final_points, load_study
from scalinglaws.cli import main as fit_main

from conftest import run_trials

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def study(repo, tmp_path_factory):
    spec = load_spec(repo / "jobs" / "pali_joint_smoke.yaml")
    root = tmp_path_factory.mktemp("studies")
    run_trials(spec, root)
    return spec, StudyPaths(spec, root).tracking_uri, root


def test_grid_spans_both_size_axes_with_exact_parameter_counts(study):
    spec, uri, _ = study
    df = final_points(load_study(spec.name, uri))
    assert len(df) == 6
    assert df["n_params_enc"].nunique() == 3 and df["n_params_dec"].nunique() == 2
    assert (df["n_params_enc"] + df["n_params_dec"] <= df["n_params"]).all()  # + embeddings and head
    assert sorted(zip(df["size_enc"], df["size_dec"], strict=True)) == sorted(
        (e, d) for e in ("w64d2h2", "w96d3h3", "w128d6h4") for d in ("w64d2h2", "w96d3h3"))


def test_scalinglaws_fits_one_law_in_both_sizes(study, tmp_path):
    spec, uri, _ = study
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = fit_main(["fit", "--experiment", spec.name, "--tracking-uri", uri, "--metric", "eval/id/nll",
                         "--x", "n_params_enc,n_params_dec", "--json", "--report", str(tmp_path / "report")])
    assert code == 0
    fitted = json.loads(out.getvalue())
    assert fitted["n_points"] == 6 and set(fitted["params"]) == {"E", "A", "B", "alpha", "beta"}
    assert fitted["x"] == ["n_params_enc", "n_params_dec"]
    assert (tmp_path / "report" / "report.md").is_file()
