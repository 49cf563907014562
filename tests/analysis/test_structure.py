"""Factor structure: standardised loadings and factor correlations (hand-built posteriors
against hand-computed values; short MCMC fits against the truth), and the classical
PCA/varimax column against a direct numpy/scipy computation."""

from __future__ import annotations

import dataclasses

import matplotlib
import numpy as np
import pandas as pd
import pytest
from scipy import linalg, optimize
from synthetic import posterior_from_truth, synthetic_fit

from caltars_bayes.analysis.structure import (
    GENERAL,
    classical_structure,
    factor_correlations,
    item_means,
    plot_factor_correlations,
    standardised_loadings,
)
from caltars_bayes.data.ratings import RatingData
from caltars_bayes.model.simulate import simulate_trial

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def constant_case(calpas):
    inst = dataclasses.replace(
        calpas, model=dataclasses.replace(calpas.model, judge_subject_interaction=True)
    )
    trial = simulate_trial(
        inst, n_subjects=30, n_sessions=2, n_judges=2, seed=3, sd_interaction=0.4
    )
    data = RatingData.from_frame(trial.ratings, inst, layout="long")
    post = posterior_from_truth(trial, data, n_chains=1, n_draws=4, constant=True)
    return trial, data, post


def test_standardised_loadings_by_hand(constant_case):
    trial, data, post = constant_case
    fit = synthetic_fit(data, post)
    t = trial.truth
    items = list(data.items)
    lam = t["loading"].sel(item=items).values
    k = np.asarray(data.item_scale_idx)
    sa, ss = t["sd_alliance"].values[k], t["sd_session"].values[k]
    resid = np.pi**2 / 3 + 0.5**2  # logistic residual + sd_interaction (0.5 in the posterior)
    expect_session = lam * np.sqrt(sa**2 + ss**2) / np.sqrt(lam**2 * (sa**2 + ss**2) + resid)
    expect_subject = lam * sa / np.sqrt(lam**2 * (sa**2 + ss**2) + resid)
    tab = standardised_loadings(fit)
    assert list(tab["item"]) == items and (tab["factor"] == tab["scale"]).all()
    np.testing.assert_allclose(tab["median"], expect_session, rtol=1e-12)
    np.testing.assert_allclose(tab["hdi_low"], expect_session, rtol=1e-12)
    np.testing.assert_allclose(
        standardised_loadings(fit, level="subject")["median"], expect_subject, rtol=1e-12
    )
    assert (tab["converged"] == fit.converged).all() and "diagnostics" in tab.attrs
    # a bifactor posterior: general loadings enter the denominator and get rows of their own
    g = np.linspace(0.2, 1.2, len(items))
    post2 = post.assign(
        general_loading=(("chain", "draw", "item"), np.broadcast_to(g, (1, 4, len(items))))
    )
    tab2 = standardised_loadings(synthetic_fit(data, post2))
    total = lam**2 * (sa**2 + ss**2) + g**2 + resid
    spec = tab2[tab2["factor"] != GENERAL]
    gen = tab2[tab2["factor"] == GENERAL]
    np.testing.assert_allclose(spec["median"], lam * np.sqrt(sa**2 + ss**2) / np.sqrt(total))
    np.testing.assert_allclose(gen["median"], g / np.sqrt(total))
    assert gen["classical_component"].eq("PC1 (unrotated)").all()


def test_factor_correlations_by_hand(constant_case):
    _, data, post = constant_case
    rng = np.random.default_rng(0)
    scales = list(data.scales)
    n = len(scales)
    centre = np.array([[0.0, 0.3, -0.2, 0.5], [0.3, 0, 0.1, 0.6], [-0.2, 0.1, 0, 0.4],
                       [0.5, 0.6, 0.4, 0]])  # fmt: skip
    z = centre + 0.2 * rng.normal(size=(1, 400, n, n))
    z = (z + np.swapaxes(z, -1, -2)) / 2  # symmetric per draw
    r = np.tanh(np.arctanh(np.clip(centre, -0.99, 0.99)) + (z - centre))
    r[..., np.arange(n), np.arange(n)] = 1.0
    post2 = post.isel(draw=[0] * 400).assign_coords(draw=np.arange(400))
    post2["factor_corr"] = (("chain", "draw", "scale", "scale2"), r)
    fit = synthetic_fit(data, post2)
    tab = factor_correlations(fit)
    assert len(tab) == n * (n - 1) // 2
    observed = data.scale_scores(level="session", by_judge=False)[scales].corr()
    for row in tab.itertuples():
        a, b = scales.index(row.scale), scales.index(row.scale2)
        assert a < b
        draws = r[0, :, a, b]
        assert row.median == pytest.approx(np.median(draws))
        assert row.mean == pytest.approx(draws.mean())
        inside = ((draws >= row.hdi_low) & (draws <= row.hdi_high)).mean()
        assert 0.94 <= inside <= 0.96
        assert row.classical_r == pytest.approx(observed.iloc[a, b])
    fig = plot_factor_correlations(fit)
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert f"{tab['median'].iloc[0]:.2f}\n[{tab['hdi_low'].iloc[0]:.2f}, " in texts[0]
    # orthogonal factors (no factor_corr, as in a bifactor model): an empty table, a figure
    # that says why
    none = factor_correlations(synthetic_fit(data, post2.drop_vars("factor_corr")))
    assert none.empty and {"scale", "scale2", "median", "hdi_low"} <= set(none.columns)
    fig = plot_factor_correlations(synthetic_fit(data, post2.drop_vars("factor_corr")))
    assert "No factor correlations" in fig.axes[0].texts[0].get_text()


def _varimax_criterion(load: np.ndarray) -> float:
    """Kaiser-normalised varimax criterion: sum over columns of the variance of squared loadings."""
    h = np.sqrt((load**2).sum(1, keepdims=True))
    x = (load / h) ** 2
    return float(((x - x.mean(0)) ** 2).sum())


def _direct_varimax(load0: np.ndarray, starts: int = 6, seed: int = 0) -> np.ndarray:
    """Varimax by general-purpose optimisation over rotations R = expm(A - A')."""
    m = load0.shape[1]
    iu = np.triu_indices(m, 1)
    rng = np.random.default_rng(seed)

    def rot(v: np.ndarray) -> np.ndarray:
        a = np.zeros((m, m))
        a[iu] = v
        return linalg.expm(a - a.T)

    best = None
    for _ in range(starts):
        res = optimize.minimize(
            lambda v: -_varimax_criterion(load0 @ rot(v)),
            rng.normal(scale=1.0, size=len(iu[0])),
            method="BFGS",
            options={"gtol": 1e-10},
        )
        if best is None or res.fun < best.fun:
            best = res
    return load0 @ rot(best.x)


def test_classical_column_agrees_with_numpy_scipy(calpas):
    trial = simulate_trial(calpas, n_subjects=40, n_sessions=2, n_judges=2, seed=8, factor_corr=0.3)
    data = trial.to_rating_data()
    # item means per session over judges, straight from the simulated long table
    r = trial.ratings.assign(
        label=trial.ratings["subject"] + "|" + trial.ratings["session"].astype(str)
    )
    direct = r.pivot_table(index="label", columns="item", values="rating", aggfunc="mean")
    mine = item_means(data)
    pd.testing.assert_frame_equal(
        mine.sort_index(), direct.loc[mine.index, mine.columns].sort_index(), check_names=False
    )
    # PCA of the correlation matrix and varimax found by direct optimisation
    x = mine.to_numpy()
    evals, evecs = np.linalg.eigh(np.corrcoef(x, rowvar=False))
    order = np.argsort(evals)[::-1][:4]
    load0 = evecs[:, order] * np.sqrt(evals[order])
    rotated = _direct_varimax(load0)
    tab = classical_structure(data)
    pcs = tab[["PC1", "PC2", "PC3", "PC4"]].to_numpy()
    assert _varimax_criterion(pcs) == pytest.approx(_varimax_criterion(rotated), rel=1e-6)
    # same columns up to order and sign
    for c in range(4):
        col = pcs[:, c]
        dist = [min(np.abs(col - rotated[:, d]).max(), np.abs(col + rotated[:, d]).max())
                for d in range(4)]  # fmt: skip
        assert min(dist) < 2e-3
    np.testing.assert_allclose(tab.attrs["eigenvalues"].to_numpy()[:4], evals[order], rtol=1e-10)
    # matching: every scale gets its own component, on which its items load most
    match = tab.attrs["matching"]
    assert sorted(match.values()) == ["PC1", "PC2", "PC3", "PC4"]
    for scale, comp in match.items():
        rows = tab[tab["scale"] == scale]
        ss = (rows[["PC1", "PC2", "PC3", "PC4"]] ** 2).sum()
        assert ss.idxmax() == comp
        np.testing.assert_allclose(rows["loading"], rows[comp])
    # and the posterior table carries this column
    post = posterior_from_truth(trial, data, n_chains=1, n_draws=4, constant=True)
    load = standardised_loadings(synthetic_fit(data, post))
    np.testing.assert_allclose(load["classical_loading"], tab["loading"])
    assert (load["classical_component"] == tab["component"]).all()


# --------------------------------------------------------------------------- MCMC proofs


@pytest.mark.slow
def test_posterior_structure_recovers_the_truth(correlated_factor_fits):
    trial, fits = correlated_factor_fits
    fit = fits["default"]
    t = trial.truth
    corr = factor_correlations(fit)
    true_r = t["factor_corr_sample"]
    covered = [
        row.hdi_low <= float(true_r.sel(scale=row.scale, scale2=row.scale2)) <= row.hdi_high
        for row in corr.itertuples()
    ]
    assert sum(covered) >= 5, corr  # 6 pairs at 95%
    assert corr["median"].max() < 0.65
    # standardised loadings against the true ones (no interaction in the truth)
    data = fit.data
    k = np.asarray(data.item_scale_idx)
    lam = t["loading"].sel(item=list(data.items)).values
    v = t["sd_alliance"].values[k] ** 2 + t["sd_session"].values[k] ** 2
    true_std = lam * np.sqrt(v) / np.sqrt(lam**2 * v + np.pi**2 / 3)
    load = standardised_loadings(fit)
    inside = (load["hdi_low"] <= true_std) & (true_std <= load["hdi_high"])
    assert inside.mean() >= 0.8, load.assign(true=true_std)
    assert np.corrcoef(load["median"], true_std)[0, 1] > 0.5
    # the classical column sits beside it and points the same way
    assert (load["classical_loading"] > 0.3).mean() > 0.9
    assert load["classical_component"].nunique() == data.n_scales


@pytest.mark.slow
def test_one_factor_data_gives_factor_correlations_near_one(
    one_factor_fits, correlated_factor_fits
):
    _, fits = one_factor_fits
    corr = factor_correlations(fits["default"])
    assert (corr["median"] > 0.8).all(), corr
    assert (corr["hdi_high"] > 0.95).all(), corr
    assert (corr["hdi_low"] > 0.4).all(), corr
    other = factor_correlations(correlated_factor_fits[1]["default"])
    assert corr["median"].min() > other["median"].max() + 0.2
