"""Model comparison: PSIS-LOO by rating and by session against ArviZ, the table, the
Pareto-k warning and K-fold fallback, the CLI; and the LOO proofs on short MCMC fits."""

from __future__ import annotations

import warnings

import matplotlib
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from arviz_stats import loo as az_loo
from synthetic import posterior_from_truth, synthetic_fit

from caltars_bayes import compare, predict
from caltars_bayes.cli import main
from caltars_bayes.compare import (
    COMPARE_COLUMNS,
    compare_fits,
    loo_fit,
    plot_compare,
    rating_folds,
    session_folds,
)
from caltars_bayes.errors import CaltarsError, CaltarsWarning
from caltars_bayes.simulate import simulate_trial

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def trial(calpas):
    return simulate_trial(calpas, n_subjects=10, n_sessions=3, n_judges=2, seed=6)


@pytest.fixture(scope="module")
def fits(trial):
    """The truth (draws near it) and a wrong model: every item's cutpoints shifted by 0.8."""
    data = trial.to_rating_data()
    good = posterior_from_truth(trial, data, n_chains=2, n_draws=200, noise=0.02, seed=1)
    bad = good.copy()
    bad["cutpoints"] = good["cutpoints"] + 0.8
    return {"truth": synthetic_fit(data, good), "shifted": synthetic_fit(data, bad)}


def _arviz_loo(fit, ll: xr.DataArray):
    dt = xr.DataTree.from_dict(
        {"posterior": fit.posterior, "log_likelihood": xr.Dataset({"rating": ll})}
    )
    return az_loo(dt, pointwise=True, var_name="rating")


def test_loo_by_rating_and_session_agree_with_arviz(fits, monkeypatch):
    fit = fits["truth"]
    ref = _arviz_loo(fit, predict.log_likelihood(fit, by="rating"))
    monkeypatch.setattr(compare, "CHUNK_ELEMENTS", 400 * 100)  # 100 ratings per chunk
    mine = loo_fit(fit, by="rating")
    assert mine.n_data_points == fit.data.n_ratings
    assert mine.elpd == pytest.approx(ref.elpd, rel=1e-10)
    assert mine.se == pytest.approx(ref.se, rel=1e-10)
    assert mine.p == pytest.approx(ref.p, rel=1e-8)
    np.testing.assert_allclose(mine.pareto_k.values, ref.pareto_k.values)
    ref_s = _arviz_loo(fit, predict.log_likelihood(fit, by="session"))
    cond = loo_fit(fit, by="session", marginal=False)
    assert cond.elpd == pytest.approx(ref_s.elpd, rel=1e-10)
    assert list(cond.elpd_i["session"].values) == list(fit.data.session_labels)
    ref_m = _arviz_loo(fit, predict.log_likelihood(fit, by="session", marginal=True))
    marg = loo_fit(fit, by="session")  # marginal by default
    assert marg.elpd == pytest.approx(ref_m.elpd, rel=1e-10)
    assert marg.elpd != pytest.approx(cond.elpd, rel=1e-6)


@pytest.mark.parametrize("by", ["rating", "session"])
def test_compare_table_ranks_the_true_model_first(fits, by):
    table = compare_fits(fits, by=by)
    assert list(table.columns) == COMPARE_COLUMNS
    assert list(table["name"]) == ["truth", "shifted"]
    best, other = table.iloc[0], table.iloc[1]
    assert best["elpd_diff"] == 0 and best["dse"] == 0
    assert other["elpd_diff"] == pytest.approx(other["elpd"] - best["elpd"])
    assert other["elpd_diff"] < -4 * other["dse"]
    assert table["weight"].sum() == pytest.approx(1.0) and best["weight"] > 0.9
    assert (table["method"] == "psis").all() and (table["n_high_k"] == 0).all()
    n = fits["truth"].data.n_ratings if by == "rating" else fits["truth"].data.n_sessions
    assert (table["n_units"] == n).all() and (table["by"] == by).all()
    assert table.attrs["warnings"] == [] and "truth:" in table.attrs["diagnostics"]
    assert best["elpd"] == pytest.approx(loo_fit(fits["truth"], by).elpd)
    fig = plot_compare(table)
    assert fig.axes[0].get_yticklabels()[0].get_text().startswith("truth")


def test_compare_refuses_different_data(fits, calpas):
    other = simulate_trial(calpas, n_subjects=10, n_sessions=3, n_judges=2, seed=7)
    data = other.to_rating_data()
    alien = synthetic_fit(data, posterior_from_truth(other, data, n_draws=20))
    with pytest.raises(CaltarsError, match="different data") as err:
        compare_fits({"truth": fits["truth"], "alien": alien})
    assert "\n" not in str(err.value)
    with pytest.raises(CaltarsError, match="at least two"):
        compare_fits({"truth": fits["truth"]})


def test_high_pareto_k_warns_and_falls_back(calpas):
    # a vague posterior (draws far from each other) makes importance sampling fail
    trial = simulate_trial(calpas, n_subjects=6, n_sessions=2, n_judges=2, seed=2, min_sessions=1)
    data = trial.to_rating_data()
    assert (np.bincount(data.session_subject_idx) == 1).any()
    post = posterior_from_truth(trial, data, n_chains=2, n_draws=100, noise=0.4, seed=3)
    pair = {
        "a": synthetic_fit(data, post),
        "b": synthetic_fit(data, post.isel(draw=slice(None, None, -1))),
    }
    with pytest.warns(CaltarsWarning, match="Pareto k > 0.7") as rec:
        table = compare_fits(pair, by="session", fallback="none")
    assert (table["n_high_k"] > 0).all() and (table["method"] == "psis").all()
    assert "fallback disabled" in str(rec[0].message)
    assert table["pareto_k_max"].min() > 0.7
    # K-fold by session needs two sessions per subject: it says so and keeps PSIS
    with pytest.warns(CaltarsWarning) as rec:
        table = compare_fits(pair, by="session")
    messages = [str(w.message) for w in rec]
    assert any("K-fold not possible" in m and "one session" in m for m in messages)
    assert (table["method"] == "psis").all() and len(table.attrs["warnings"]) == 2


def test_folds_keep_every_subject_and_session_in_training(trial):
    data = trial.to_rating_data()
    for k in (2, 3, 5):
        folds = session_folds(data, k, seed=1)
        subj = np.asarray(data.session_subject_idx)
        for f in range(k):
            held = folds == f
            # every subject keeps at least one session in the training set
            assert set(subj[~held]) == set(range(data.n_subjects))
        # sessions of a subject are spread, not stacked, over the folds
        for p in range(data.n_subjects):
            fp = folds[subj == p]
            assert len(set(fp)) == min(len(fp), k)
        rf = rating_folds(data, k, seed=1)
        for f in range(k):
            assert len(set(np.asarray(data.session_idx)[rf != f])) == data.n_sessions
    with pytest.raises(ValueError):
        session_folds(data, 1)


def test_cli_compare_writes_table_and_plot(fits, tmp_path, capsys):
    dirs = []
    for name, fit in fits.items():
        fit.save(tmp_path / name)
        dirs.append(str(tmp_path / name))
    out = tmp_path / "cmp"
    assert main(["compare", *dirs, "--out", str(out), "--by", "rating"]) == 0
    for f in ("compare.csv", "compare.png", "compare.svg"):
        assert (out / f).is_file()
    table = pd.read_csv(out / "compare.csv")
    assert list(table.columns) == COMPARE_COLUMNS and list(table["name"]) == ["truth", "shifted"]
    direct = compare_fits(fits, by="rating")
    np.testing.assert_allclose(table["elpd"], direct["elpd"], rtol=1e-6)
    assert "shifted" in capsys.readouterr().out
    # no overwrite without --force; one fit is not a comparison
    assert main(["compare", *dirs, "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["compare", dirs[0], "--out", str(tmp_path / "one")]) == 2


# --------------------------------------------------------------------------- MCMC proofs


@pytest.mark.slow
def test_loo_prefers_the_true_correlated_factors(correlated_factor_fits):
    """Data from four correlated factors: their structure beats one factor by > 4 SE."""
    _, fits = correlated_factor_fits
    pair = {"scales": fits["default"], "one factor": fits["general"]}
    with warnings.catch_warnings(record=True):  # a rare rating may have k > 0.7
        warnings.simplefilter("always", CaltarsWarning)
        by_rating = compare_fits(pair, by="rating", fallback="none")
    assert list(by_rating["name"]) == ["scales", "one factor"]
    worse = by_rating.iloc[1]
    assert worse["elpd_diff"] < -4 * worse["dse"], by_rating
    assert (by_rating["n_high_k"] <= 0.01 * by_rating["n_units"]).all(), by_rating
    # leave one session out: with 4 sessions per subject many sessions have high k, so
    # every model is re-estimated by K-fold (2 folds, short refits)
    with pytest.warns(CaltarsWarning, match="Pareto k"):
        by_session = compare_fits(
            pair, by="session", n_folds=2, fit_options={"draws": 150, "tune": 150}
        )
    assert by_session["method"].eq("kfold(2)").all(), by_session
    assert list(by_session["name"]) == ["scales", "one factor"]
    worse = by_session.iloc[1]
    assert worse["elpd_diff"] < -4 * worse["dse"], by_session
    # K-fold estimates the same target as session PSIS-LOO, with half the sessions
    psis = loo_fit(fits["default"], by="session").elpd
    kfold = by_session.set_index("name").loc["scales", "elpd"]
    assert abs(kfold - psis) < 0.05 * abs(psis)


@pytest.mark.slow
def test_extra_factors_gain_nothing_on_one_factor_data(one_factor_fits):
    _, fits = one_factor_fits
    with warnings.catch_warnings(record=True):  # a rare rating may have k > 0.7
        warnings.simplefilter("always", CaltarsWarning)
        table = compare_fits(
            {"scales": fits["default"], "one factor": fits["general"]},
            by="rating",
            fallback="none",
        )
    assert (table["n_high_k"] <= 0.01 * table["n_units"]).all(), table
    row = table.set_index("name")
    gain = row.loc["scales", "elpd"] - row.loc["one factor", "elpd"]
    dse = table["dse"].max()
    assert gain < 2 * dse, table  # no credible gain for the four-factor model
    assert row.loc["scales", "p_loo"] > row.loc["one factor", "p_loo"]
