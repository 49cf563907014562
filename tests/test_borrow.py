"""Priors from an earlier trial: moment matching, the model hook, conflict, and a proof.

The slow test fits a small new trial (15 subjects) with and without borrowing
from a larger one drawn from the same parameters, and once from a trial whose
instrument and population differ.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from caltars_bayes.borrow import QUANTITIES, derive_priors, prior_conflict, transform
from caltars_bayes.errors import DataError
from caltars_bayes.fit import fit_model
from caltars_bayes.model import AllianceModel
from caltars_bayes.simulate import simulate_trial


def test_moment_matching_and_weight(tiny_fit, tiny_trial):
    data = tiny_trial.to_rating_data()
    b = derive_priors(tiny_fit, data, weight=1.0)
    post = tiny_fit.posterior
    logl = np.log(post["loading"].stack(s=("chain", "draw")).transpose("s", "item").values)
    mean, sd = b.informative["log_loading"]
    np.testing.assert_allclose(mean, logl.mean(0))
    np.testing.assert_allclose(sd, logl.std(0, ddof=1))
    assert set(b.informative) == {
        "log_loading", "cutpoint_location", "cutpoint_log_gap", "log_sd_alliance",
        "log_sd_session", "log_sd_severity", "log_sd_log_discrimination", "factor_corr_z",
    }  # fmt: skip
    # 4 scales: 6 correlations; 24 items x 5 gaps
    assert len(b.informative["factor_corr_z"][0]) == 6
    assert len(b.informative["cutpoint_log_gap"][0]) == 24 * 5
    quarter = derive_priors(tiny_fit, data, weight=0.25)
    np.testing.assert_allclose(quarter.informative["log_loading"][1], 2 * sd)
    assert derive_priors(tiny_fit, data, weight=0.0).informative == {}
    with pytest.raises(DataError, match="prior-weight"):
        derive_priors(tiny_fit, data, weight=1.5)
    doc = b.to_dict()
    json.dumps(doc)  # serialisable as prior_from.json
    assert doc["source"]["n_subjects"] == 12 and "NOT CONVERGED" in doc["source"]["verdict"]
    assert any("did NOT converge" in n for n in b.notes)


def test_cutpoint_location_is_free_of_the_scale_origin(tiny_trial):
    data = tiny_trial.to_rating_data()
    rng = np.random.default_rng(0)
    cut = np.sort(rng.normal(size=(3, 24, 6)), axis=-1)
    loc = transform("cutpoint_location", cut, data)
    shifted = transform("cutpoint_location", cut + 1.7, data)  # a new sample's origin
    np.testing.assert_allclose(loc, shifted)
    isc = np.asarray(data.item_scale_idx)
    for k in range(4):
        np.testing.assert_allclose(loc[:, isc == k].sum(axis=1), 0.0, atol=1e-12)


def test_model_hook_adds_the_borrowed_density(tiny_fit, tiny_trial):
    data = tiny_trial.to_rating_data()
    b = derive_priors(tiny_fit, data)
    plain = AllianceModel(data).model
    hooked = AllianceModel(data, informative=b.informative).model
    names = {v.name for v in hooked.potentials}
    assert {f"borrowed_{k}" for k in b.informative} <= names
    # at the initial point the log density differs by exactly the borrowed terms
    point = hooked.initial_point()
    fast = {"mode": "FAST_COMPILE"}
    diff = hooked.compile_logp(**fast)(point) - plain.compile_logp(**fast)(point)
    names = ["loading", "cutpoints", "sd_alliance", "sd_session", "sd_severity",
             "sd_log_discrimination", "factor_corr"]  # fmt: skip
    outs = hooked.replace_rvs_by_values([hooked[n] for n in names])
    f = hooked.compile_fn(
        outs, inputs=hooked.value_vars, point_fn=True, on_unused_input="ignore", **fast
    )
    values = dict(zip(names, f(point), strict=True))
    expected = 0.0
    for name, (m, s) in b.informative.items():
        value = transform(name, np.asarray(values[QUANTITIES[name][0]]), data).ravel()
        expected += -0.5 * (((value - m) / s) ** 2).sum()
    assert diff == pytest.approx(expected, rel=1e-8)


def test_conflict_flags_only_real_shifts(tiny_fit, tiny_trial):
    data = tiny_trial.to_rating_data()
    b = derive_priors(tiny_fit, data)
    same = prior_conflict(tiny_fit, b)  # the posterior is the prior: no conflict
    assert not same["conflict"].any() and same["z"].abs().max() < 1e-9
    assert same.attrs["summary"].startswith("no prior-data conflict")
    m, s = b.informative["log_sd_alliance"]
    moved = replace(b, informative={**b.informative, "log_sd_alliance": (m + 10 * s, s)})
    c = prior_conflict(tiny_fit, moved)
    assert c.loc[c["quantity"] == "log_sd_alliance", "conflict"].all()
    assert c.loc[c["quantity"] != "log_sd_alliance", "conflict"].sum() == 0
    assert "PRIOR-DATA CONFLICT" in c.attrs["summary"] and not c["converged"].any()


def test_refuses_another_instrument(tiny_fit, caltars):
    other = simulate_trial(caltars, n_subjects=3, n_sessions=1, n_judges=1, seed=1)
    with pytest.raises(DataError, match="other items"):
        derive_priors(tiny_fit, other.to_rating_data())


# --------------------------------------------------------------------------- proof (slow)

FIT = {"draws": 250, "tune": 250, "chains": 2, "progressbar": False}


def _widths(fit, names=("loading", "sd_alliance")) -> pd.Series:
    from caltars_bayes.tables import describe

    parts = []
    for n in names:
        d = describe(fit.posterior[n])
        parts.append((d["hdi_high"] - d["hdi_low"]).rename(n))
    return pd.concat(parts)


@pytest.mark.slow
def test_borrowing_narrows_without_bias_and_flags_conflict(calpas, calibration_fits):
    trial, fit_a = calibration_fits["trial"], calibration_fits["fit_A"]
    data_b = calibration_fits["B"]
    alone = fit_model(data_b, random_seed=2, **FIT)
    borrowed = derive_priors(fit_a, data_b)
    with_prior = fit_model(
        data_b, random_seed=2, model=AllianceModel(data_b, informative=borrowed.informative), **FIT
    )
    ratio = _widths(with_prior) / _widths(alone)
    assert ratio.median() < 0.75  # borrowing narrows the intervals
    # without bias: the truth stays inside the narrower intervals
    from caltars_bayes.tables import describe

    d = describe(with_prior.posterior["loading"])
    true = trial.truth["loading"].to_series()
    inside = (true.values >= d["hdi_low"].values) & (true.values <= d["hdi_high"].values)
    assert inside.mean() >= 0.85
    err_with = np.abs(d["mean"].values - true.values).mean()
    err_alone = np.abs(describe(alone.posterior["loading"])["mean"].values - true.values).mean()
    assert err_with <= err_alone
    same = prior_conflict(with_prior, borrowed)
    assert not same["conflict"].any(), same.attrs["summary"]
    # a trial whose items and population differ: conflict is flagged
    other = simulate_trial(
        calpas, n_subjects=15, n_sessions=2, n_judges=3, seed=99, sd_item_location=0.8,
        sd_log_loading=0.5, sd_alliance=0.5,
    ).to_rating_data()  # fmt: skip
    b2 = derive_priors(fit_a, other)
    fit_other = fit_model(
        other, random_seed=3, model=AllianceModel(other, informative=b2.informative), **FIT
    )
    c = prior_conflict(fit_other, b2)
    assert c["conflict"].any() and "PRIOR-DATA CONFLICT" in c.attrs["summary"]
    assert c.loc[c["quantity"] == "log_sd_alliance", "z"].lt(0).all()  # smaller SD than borrowed


def test_cli_fit_prior_from(tiny_fit, tiny_trial, tmp_path, capsys):
    from caltars_bayes.cli import main
    from caltars_bayes.spec import models_dir

    earlier = tmp_path / "earlier"
    tiny_fit.save(earlier)
    ratings = tmp_path / "new.csv"
    tiny_trial.ratings[tiny_trial.ratings["subject"].isin(["P01", "P02", "P03", "P04"])].to_csv(
        ratings, index=False
    )
    out = tmp_path / "new_fit"
    args = ["fit", str(ratings), "--instrument", str(models_dir() / "calpas.toml"), "--out",
            str(out), "--prior-from", str(earlier), "--prior-weight", "0.5", "--draws", "20",
            "--tune", "20", "--chains", "1", "--quiet"]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "borrowing" in printed and "weight 0.5" in printed
    assert "conflict" in printed.lower()
    doc = json.loads((out / "prior_from.json").read_text())
    assert doc["weight"] == 0.5 and doc["source"]["n_subjects"] == 12
    table = pd.DataFrame(doc["priors"])
    np.testing.assert_allclose(table["prior_sd"], table["sd"] * np.sqrt(2))
    conflict = pd.read_csv(out / "prior_conflict.csv")
    assert len(conflict) == len(table) and "z" in conflict.columns
    assert json.loads((out / "meta.json").read_text())["prior_from"]["weight"] == 0.5
    bad = ["fit", str(ratings), "--instrument", str(models_dir() / "calpas.toml"), "--out",
           str(tmp_path / "x"), "--prior-from", str(earlier), "--prior-weight", "2"]  # fmt: skip
    assert main(bad) == 2 and "prior-weight" in capsys.readouterr().err
