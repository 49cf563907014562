"""Posterior predictive checks: the statistics by hand, the table and verdict on the tiny
fit, the CLI check command, and misfit detection (hand-built and MCMC)."""

from __future__ import annotations

import dataclasses

import matplotlib
import numpy as np
import pandas as pd
import pytest
from synthetic import posterior_from_truth, synthetic_fit

from caltars_bayes.analysis.ppc import (
    CHECKS,
    PPC_COLUMNS,
    category_shares,
    exact_agreement,
    judge_agreement,
    ppc,
    ppp_value,
    rating_pairs,
)
from caltars_bayes.cli import main
from caltars_bayes.data.ratings import RatingData
from caltars_bayes.model.simulate import simulate_trial

matplotlib.use("Agg")


# --------------------------------------------------------------------------- statistics


def test_category_shares_by_hand():
    y = np.array([[0, 1, 1, 2, 0], [2, 2, 2, 2, 2]])
    groups = np.array([0, 0, 1, 1, 1])
    s = category_shares(y, groups, 3, 3)
    np.testing.assert_allclose(s[0, 0], [0.5, 0.5, 0])
    np.testing.assert_allclose(s[0, 1], [1 / 3, 1 / 3, 1 / 3])
    np.testing.assert_allclose(s[1, 1], [0, 0, 1])
    assert np.isnan(s[0, 2]).all()  # an empty group


def test_judge_agreement_by_hand():
    # 4 sessions x 2 judges of one scale; judge 1 misses session 3
    session = np.array([0, 0, 1, 1, 2, 2, 3])
    judge = np.array([0, 1, 0, 1, 0, 1, 0])
    scores = np.array([[1.0, 2.0, 2.0, 2.5, 3.0, 5.0, 4.0]])
    out = judge_agreement(scores, session, judge, 4, 2)
    a, b = np.array([1.0, 2.0, 3.0]), np.array([2.0, 2.5, 5.0])
    assert out["judge_r"][0] == pytest.approx(np.corrcoef(a, b)[0, 1])
    assert out["judge_spread"][0] == pytest.approx(np.mean([0.25, 0.0625, 1.0]))


def test_rating_pairs_and_exact_agreement(calpas):
    trial = simulate_trial(calpas, n_subjects=3, n_sessions=2, n_judges=3, seed=1)
    data = trial.to_rating_data()
    first, second = rating_pairs(data)
    # 6 sessions x 24 items x 3 judge pairs
    assert len(first) == 6 * 24 * 3
    assert (data.session_idx[first] == data.session_idx[second]).all()
    assert (data.item_idx[first] == data.item_idx[second]).all()
    assert (data.judge_idx[first] != data.judge_idx[second]).all()
    y = np.asarray(data.y)[None, :]
    wide = data.wide()
    items = list(data.items)
    by_hand = []
    for _, g in wide.groupby(["subject", "session"]):
        v = g[items].to_numpy(dtype=float)
        for a in range(3):
            for b in range(a + 1, 3):
                by_hand.append(v[a] == v[b])
    assert exact_agreement(y, first, second)[0] == pytest.approx(np.mean(by_hand))


def test_ppp_value():
    assert ppp_value(2.0, np.array([1.0, 2.0, 3.0, 4.0])) == pytest.approx(0.5 + 0.125)
    assert ppp_value(10.0, np.arange(5.0)) == 0.0
    assert np.isnan(ppp_value(np.nan, np.arange(5.0)))


# --------------------------------------------------------------------------- the check


def test_ppc_of_the_tiny_fit(tiny_fit):
    res = ppc(tiny_fit, n_draws=40, seed=1)
    t = res.table
    assert list(t.columns) == PPC_COLUMNS
    assert set(t["check"]) == set(CHECKS)
    data = tiny_fit.data
    n_cat = data.instrument.n_categories
    assert (t["check"] == "category_item").sum() == data.n_items * n_cat
    assert (t["check"] == "category_judge").sum() == data.n_judges * n_cat
    # observed statistics are the data's own
    obs = data.ratings.groupby("item")["score"].apply(lambda s: (s == 1).mean())
    rows = t[(t["check"] == "category_item") & (t["statistic"] == "P(score = 1)")]
    np.testing.assert_allclose(rows.set_index("group")["observed"], obs.loc[rows["group"]])
    scores = data.scale_scores(level="session", by_judge=True)
    mean = t[(t["check"] == "scale_score") & (t["statistic"] == "mean")].set_index("group")
    for scale in data.scales:
        assert mean.loc[scale, "observed"] == pytest.approx(scores[scale].mean())
    assert ((t["p_value"] >= 0) & (t["p_value"] <= 1)).all()
    assert (t["rep_low"] <= t["rep_high"]).all()
    assert (t["flag"] == ((t["p_value"] < 0.05) | (t["p_value"] > 0.95))).all()
    # the verdict: stamped, one row per check
    assert not t["converged"].any() and "NOT CONVERGED" in t.attrs["diagnostics"]
    assert list(res.verdict["check"]) == list(CHECKS)
    assert not res.verdict["converged"].any()
    assert "NOT CONVERGED" in res.summary
    fig = res.plot()
    assert len(fig.axes) == len(CHECKS) and "NOT CONVERGED" in fig._suptitle.get_text()
    assert len(res.plot("agreement").axes) == 1


def test_ppc_flags_a_posterior_without_the_interaction(calpas):
    """Hand-built posterior at the truth but without the judge x subject interaction
    that generated the data: judges disagree more than the model can reproduce."""
    trial = simulate_trial(calpas, n_subjects=20, n_sessions=3, n_judges=2, seed=5,
                           sd_interaction=1.0)  # fmt: skip
    data = trial.to_rating_data()  # the default model: no interaction
    fit = synthetic_fit(data, posterior_from_truth(trial, data, n_draws=100, noise=0.02))
    res = ppc(fit, n_draws=200)
    agree = res.table[res.table["check"] == "agreement"].set_index(["group", "statistic"])
    spread = agree.xs("judge_spread", level="statistic")
    assert (spread["p_value"] < 0.01).all(), spread
    assert (spread["observed"] > spread["rep_high"]).all()
    assert res.verdict.set_index("check").loc["agreement", "verdict"] == "misfit"
    # the same ratings and truth with the interaction in the model: no misfit there
    inst = dataclasses.replace(
        calpas, model=dataclasses.replace(calpas.model, judge_subject_interaction=True)
    )
    data2 = RatingData.from_frame(trial.ratings, inst, layout="long")
    post2 = posterior_from_truth(trial, data2, n_draws=100, noise=0.02)
    post2["sd_interaction"] = post2["sd_interaction"] * 2  # the truth: 1.0
    ok = ppc(synthetic_fit(data2, post2), n_draws=200)
    spread2 = ok.table[
        (ok.table["check"] == "agreement") & (ok.table["statistic"] == "judge_spread")
    ]
    assert spread2["p_value"].between(0.01, 0.99).all(), spread2


def test_cli_check_writes_tables_and_figures(tiny_fit, tmp_path, capsys):
    fitdir = tmp_path / "fit"
    tiny_fit.save(fitdir)
    assert main(["check", str(fitdir), "--draws", "30"]) == 0
    out = fitdir / "check"
    for f in ("loadings.csv", "classical_structure.csv", "factor_correlations.csv", "ppc.csv",
              "ppc_verdict.csv", "ppc.png", "ppc.svg", "factor_correlations.png",
              "factor_correlations.svg"):  # fmt: skip
        assert (out / f).is_file(), f
    table = pd.read_csv(out / "ppc.csv")
    assert list(table.columns) == PPC_COLUMNS and not table["converged"].any()
    load = pd.read_csv(out / "loadings.csv")
    assert len(load) == tiny_fit.data.n_items and load["median"].between(0, 1).all()
    assert "NOT CONVERGED" in capsys.readouterr().out
    assert main(["check", str(fitdir), "--draws", "30"]) == 2  # exists: needs --force
    assert main(["check", str(fitdir), "--draws", "30", "--force"]) == 0


# --------------------------------------------------------------------------- MCMC proof


@pytest.mark.long  # its own 70 s fit: run by `make test-long`, not in CI
def test_ppc_flags_a_fitted_model_without_the_interaction(
    interaction_misfit, correlated_factor_fits
):
    _, fit = interaction_misfit
    res = ppc(fit)
    verdict = res.verdict.set_index("check")
    assert verdict.loc["agreement", "verdict"] == "misfit", res.table
    spread = res.table[res.table["statistic"] == "judge_spread"]
    assert (spread["p_value"] < 0.05).sum() >= 3, spread
    # a model fitted to data it describes is not flagged there
    good = ppc(correlated_factor_fits[1]["default"])
    assert good.verdict.set_index("check").loc["agreement", "verdict"] != "misfit", good.table
    spread = good.table[good.table["statistic"] == "judge_spread"]
    assert spread["p_value"].between(0.05, 0.95).all(), spread
