"""Reliability as posteriors: pure formulas, classical column, judges, decision study, coverage.

Three tiers: pure-function tests on hand-computed values and brute-force
simulation (no MCMC); synthetic posteriors built by hand from a simulated
trial's truth (``synthetic_fit``, no MCMC); and a slow coverage test that fits
simulated trials by MCMC and checks that the 90% intervals cover the truth.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from scipy import stats

from caltars_bayes._core.errors import CaltarsError
from caltars_bayes.analysis.classical import ANOVA_METHOD, REML_METHOD, icc_shrout_fleiss
from caltars_bayes.analysis.reliability import (
    COMPONENTS,
    LOGISTIC_VAR,
    classical_reliability,
    coefficient_from_components,
    dstudy,
    judge_reliability,
    judges_table,
    latent_components,
    lognormal_moments,
    observed_components,
    parse_counts,
    reliability,
    reliability_draws,
    true_reliability,
)
from caltars_bayes.data.ratings import RatingData
from caltars_bayes.inference.diagnostics import Diagnostics
from caltars_bayes.inference.fit import Fit
from caltars_bayes.model.plan import plan_model
from caltars_bayes.model.simulate import simulate_trial
from caltars_bayes.spec.instrument import parse_instrument

KEYS = ["scale", "level", "judges", "route", "coefficient", "generalizes_over"]


# --------------------------------------------------------------------------- helpers


def synthetic_fit(
    trial,
    chains: int = 2,
    draws: int = 40,
    overrides: dict | None = None,
    converged: bool = True,
) -> Fit:
    """A Fit whose posterior is the trial's truth in every draw (no MCMC).

    ``overrides`` maps a posterior variable to ``(dims, array)`` with leading
    ``(chain, draw)`` axes, to build posteriors with spread by hand.
    """
    data = trial.to_rating_data()
    t = trial.truth

    def rep(name: str, dims: tuple[str, ...]):
        v = np.asarray(t[name].transpose(*dims).values, dtype=float)
        return (("chain", "draw", *dims), np.broadcast_to(v, (chains, draws, *v.shape)).copy())

    post = {
        "theta": rep("theta", ("subject", "scale")),
        "zeta": rep("zeta", ("session", "scale")),
        "sd_alliance": rep("sd_alliance", ("scale",)),
        "sd_session": rep("sd_session", ("scale",)),
        "loading": rep("loading", ("item",)),
        "cutpoints": rep("cutpoints", ("item", "cutpoint")),
        "discrimination": rep("discrimination", ("judge",)),
        "severity": rep("severity", ("scale", "judge")),
        "sd_severity": rep("sd_severity", ()),
        "sd_log_discrimination": rep("sd_log_discrimination", ()),
    }
    post.update(overrides or {})
    coords = {
        "chain": np.arange(chains),
        "draw": np.arange(draws),
        **{d: t[d].values for d in ("subject", "session", "judge", "item", "scale", "cutpoint")},
    }
    dt = xr.DataTree.from_dict({"posterior": xr.Dataset(post, coords=coords)})
    diag = Diagnostics(
        converged, 1.0, 1000.0, 1000.0, 0, 0, [1.0], chains, draws,
        problems=[] if converged else ["synthetic"],
    )  # fmt: skip
    return Fit(dt, data, plan_model(data), diag, {})


@pytest.fixture(scope="module")
def small_trial(calpas):
    return simulate_trial(calpas, n_subjects=30, n_sessions=3, n_judges=3, seed=11)


@pytest.fixture(scope="module")
def point_fit(small_trial):
    return synthetic_fit(small_trial)


def _standardise(x: np.ndarray, sd: float, axis: int = 0) -> np.ndarray:
    """Centre and scale so that the realised SD along ``axis`` is exactly ``sd``."""
    x = x - x.mean(axis=axis, keepdims=True)
    return x / x.std(axis=axis, ddof=1, keepdims=True) * sd


# --------------------------------------------------------------------------- pure formulas


def test_lognormal_moments_match_monte_carlo() -> None:
    m, v = lognormal_moments(0.0)
    assert (m, v) == (1.0, 0.0)
    z = np.exp(np.random.default_rng(1).normal(0, 0.5, 2_000_000))
    m, v = lognormal_moments(0.5)
    assert m == pytest.approx(z.mean(), rel=2e-3)
    assert v == pytest.approx(z.var(), rel=1e-2)


def test_coefficients_from_components_hand_values() -> None:
    c = {"var_subject": 1.0, "var_session": 0.5, "var_judge": 0.2,
         "var_subject_judge": 0.1, "var_residual": 0.4}  # fmt: skip
    f = coefficient_from_components
    # session level, 2 judges: (1 + .5) / (1.5 + (.2 + .1 + .4) / 2) = 1.5 / 1.85
    assert f(c, judges=2) == pytest.approx(1.5 / 1.85)
    # consistency drops the judge main effect: 1.5 / (1.5 + .5 / 2) = 1.5 / 1.75
    assert f(c, judges=2, coefficient="consistency") == pytest.approx(1.5 / 1.75)
    # treatment level, interrater, n = 4: (1 + .125) / (1.125 + (.2 + .1 + .1) / 2)
    assert f(c, judges=2, sessions=4, level="treatment") == pytest.approx(1.125 / 1.325)
    # generalizability: 1 / (1 + .5/4 + (.2 + .1)/2 + .4/8) = 1 / 1.325
    g = f(c, judges=2, sessions=4, level="treatment", generalize_sessions=True)
    assert g == pytest.approx(1 / 1.325)
    g3 = f(c, judges=2, sessions=4, level="treatment", coefficient="consistency",
           generalize_sessions=True)  # fmt: skip
    assert g3 == pytest.approx(1 / 1.225)
    # broadcasting over a grid of judges and sessions, monotone in both
    k = xr.DataArray([1, 2, 4], dims="judges")
    n = xr.DataArray([1, 3, 9], dims="sessions")
    grid = f(c, judges=k, sessions=n, level="treatment", generalize_sessions=True)
    assert set(grid.dims) == {"judges", "sessions"}
    assert (grid.diff("judges") > 0).all() and (grid.diff("sessions") > 0).all()
    with pytest.raises(ValueError, match="treatment level only"):
        f(c, generalize_sessions=True)


def test_latent_components_hand_values() -> None:
    # equal discrimination: the latent components are plain variances
    c = latent_components(1.0, 0.5, 1.0, 6, sd_severity=0.3)
    assert c["var_subject"] == pytest.approx(1.0)
    assert c["var_session"] == pytest.approx(0.25)
    assert c["var_judge"] == pytest.approx(0.09)
    assert c["var_subject_judge"] == pytest.approx(0.0)
    assert c["var_residual"] == pytest.approx(np.pi**2 / 18)
    # session-level single-judge agreement by hand: 1.25 / (1.25 + .09 + pi^2/18)
    r = coefficient_from_components(c)
    assert r == pytest.approx(1.25 / (1.25 + 0.09 + np.pi**2 / 18))
    # unequal discrimination and loadings: sd_log 0.4, mean loading 1.2, interaction .2
    ea, va = np.exp(0.08), (np.exp(0.16) - 1) * np.exp(0.16)
    c = latent_components(1.0, 0.5, 1.2, 4, sd_log_discrimination=0.4, sd_interaction=0.2)
    assert c["var_subject"] == pytest.approx(ea**2 * 1.44)
    assert c["var_session"] == pytest.approx(ea**2 * 1.44 * 0.25)
    assert c["var_subject_judge"] == pytest.approx(va * 1.44 + 0.04)
    assert c["var_residual"] == pytest.approx(va * 1.44 * 0.25 + LOGISTIC_VAR / 4)


def test_latent_formula_matches_brute_force_latent_ratings() -> None:
    """Simulate latent responses of many judges; their classical ICCs equal the formula."""
    rng = np.random.default_rng(7)
    n_p, n_s, n_j = 300, 3, 300
    load = np.array([0.7, 0.9, 1.1, 1.5])
    sd_a, sd_s, sd_sev, sd_ld, sd_int = 1.0, 0.6, 0.4, 0.5, 0.3
    theta = _standardise(rng.normal(size=n_p), sd_a)
    zeta = _standardise(rng.normal(size=(n_p, n_s)).ravel(), sd_s).reshape(n_p, n_s)
    eta = theta[:, None] + zeta  # (P, S)
    # judges at the population's quantiles (shuffled): their moments are the population's
    quantiles = stats.norm.ppf((np.arange(n_j) + 0.5) / n_j)
    alpha = np.exp(sd_ld * rng.permutation(quantiles))
    sev = sd_sev * rng.permutation(quantiles)
    inter = _standardise(rng.normal(size=(n_j, n_p)).ravel(), sd_int).reshape(n_j, n_p)
    mu = (
        alpha[:, None, None, None] * load[None, None, None, :] * eta[None, :, :, None]
        - sev[:, None, None, None]
        + inter[:, :, None, None]
    )  # (J, P, S, I)
    ystar = mu + rng.logistic(size=mu.shape)
    x = ystar.mean(-1)  # latent scale scores (J, P, S)
    comps = latent_components(
        sd_a, sd_s, load.mean(), len(load), sd_severity=sd_sev,
        sd_log_discrimination=sd_ld, sd_interaction=sd_int,
    )  # fmt: skip
    session_table = x.reshape(n_j, n_p * n_s).T
    subject_table = x.mean(-1).T
    for level, table, n in (("session", session_table, 1), ("treatment", subject_table, n_s)):
        sf = icc_shrout_fleiss(table).set_index("type")["icc"]
        for case, coef in (("2", "agreement"), ("3", "consistency")):
            expect = coefficient_from_components(
                comps, judges=1, sessions=n, level=level, coefficient=coef
            )
            assert sf[f"ICC({case},1)"] == pytest.approx(expect, abs=0.015), (level, coef)
    # the formula is not insensitive: without the discrimination terms it is off
    wrong = latent_components(sd_a, sd_s, load.mean(), len(load), sd_severity=sd_sev,
                              sd_interaction=sd_int)  # fmt: skip
    sf = icc_shrout_fleiss(session_table).set_index("type")["icc"]
    assert (
        abs(sf["ICC(3,1)"] - coefficient_from_components(wrong, coefficient="consistency")) > 0.03
    )
    # components of the crossed design, by brute force, equal the formula's
    est = observed_components(session_table, np.repeat(np.arange(n_p), n_s))
    for name in COMPONENTS:
        assert est[name] == pytest.approx(comps[name], abs=0.05 * comps["var_subject"]), name


def test_observed_components_recover_known_variances_unbalanced() -> None:
    rng = np.random.default_rng(3)
    n_p, n_j = 400, 40
    n_ses = rng.integers(2, 6, n_p)  # 2..5 sessions per subject
    subj = np.repeat(np.arange(n_p), n_ses)
    true = {"var_subject": 1.0, "var_session": 0.4, "var_judge": 0.2,
            "var_subject_judge": 0.15, "var_residual": 0.5}  # fmt: skip
    p = _standardise(rng.normal(size=n_p), 1.0)
    s = _standardise(rng.normal(size=len(subj)), np.sqrt(0.4))
    j = _standardise(rng.normal(size=n_j), np.sqrt(0.2))
    pj = _standardise(rng.normal(size=(n_p, n_j)).ravel(), np.sqrt(0.15)).reshape(n_p, n_j)
    r = rng.normal(0, np.sqrt(0.5), (len(subj), n_j))
    x = 3 + p[subj][:, None] + s[:, None] + j[None, :] + pj[subj] + r
    est = observed_components(x, subj)
    for name, v in true.items():
        assert est[name] == pytest.approx(v, abs=0.06), name
    # batched input gives the same numbers per batch element
    both = observed_components(np.stack([x, x + 1.0]), subj)
    np.testing.assert_allclose(both["var_subject"], [est["var_subject"]] * 2)


def test_observed_route_truth_is_what_classical_iccs_of_large_trials_estimate() -> None:
    """Brute force by an independent path: simulate_trial with 30 judges, classical ICCs.

    The observed-route truth (new subjects, sessions and judges replicated by
    this module) must agree, on average over trials, with the Shrout & Fleiss
    ICCs of large trials drawn by :func:`simulate_trial` from the same
    parameters; the latent coefficients of a 2-item scale must not.
    """
    doc = {
        "instrument": {"name": "T"},
        "response": {"min": 1, "max": 5},
        "scale": [
            {"code": "A", "name": "A", "items": ["A1", "A2", "A3"]},
            {"code": "B", "name": "B", "items": ["B1", "B2"]},
        ],
    }
    inst = parse_instrument(doc, "<test>")
    rows = []
    for seed in range(6):
        trial = simulate_trial(
            inst, n_subjects=400, n_sessions=2, n_judges=30, sd_severity=0.6,
            sd_log_discrimination=0.3, sd_alliance=1.5, seed=seed,
        )  # fmt: skip
        cls = classical_reliability(trial.to_rating_data()).set_index(["scale", "level", "type"])
        truth = true_reliability(trial.truth, inst, k_judges=1, seed=seed)
        truth = truth[(truth["judges"] == 1) & (truth["generalizes_over"] == "judges")]
        for r in truth.itertuples():
            case = "2" if r.coefficient == "agreement" else "3"
            icc = float(cls.loc[(r.scale, r.level, f"ICC({case},1)"), "icc"])
            rows.append((r.scale, r.level, r.coefficient, r.route, icc - r.value))
    d = pd.DataFrame(rows, columns=["scale", "level", "coefficient", "route", "diff"])
    mean = d.groupby(["route", "scale", "level", "coefficient"])["diff"].mean()
    assert mean["observed"].abs().max() < 0.03, mean["observed"]
    assert abs(d.loc[d["route"] == "observed", "diff"].mean()) < 0.012
    # the latent route describes the latent scale: for 2 items of 5 categories it is higher
    assert mean[("latent", "B", "session")].max() < -0.02


# --------------------------------------------------------------------------- synthetic posteriors


def test_point_mass_posterior_gives_the_true_coefficients(point_fit, small_trial, calpas) -> None:
    rel = reliability(point_fit, prob=0.9)
    truth = true_reliability(small_trial.truth, calpas, n_replicates=2, n_new_judges=300)
    m = rel.merge(truth, on=KEYS, validate="one_to_one")
    posterior_rows = rel[rel["route"] != "classical"]  # alpha and omega have no truth here
    assert len(m) == len(posterior_rows) == len(truth) == 4 * (2 * 2 * 2 * 2 + 2 * 2 * 2)
    lat = m[m["route"] == "latent"]
    np.testing.assert_allclose(lat["median"], lat["value"], rtol=1e-10)
    np.testing.assert_allclose(lat["hdi_low"], lat["value"], rtol=1e-10)
    # observed route: new judges replicated per draw agree with the brute-force truth
    obs = m[m["route"] == "observed"]
    np.testing.assert_allclose(obs["median"], obs["value"], atol=0.02)
    assert (obs["n_draws"] == 80).all()
    assert rel["converged"].all() and "Converged" in rel.attrs["diagnostics"]
    assert rel.attrs["observed_draws"] == 80
    # the design's judges and sessions
    assert set(rel["judges"]) == {1, 3}
    assert set(rel.loc[rel["level"] == "treatment", "sessions"]) == {3.0}


def test_reliability_draws_dims_and_thinning(point_fit) -> None:
    ds = reliability_draws(point_fit, k_judges=5, max_observed_draws=10)
    assert ds["agreement"].dims == ("chain", "draw", "scale", "level", "judges", "route")
    assert ds["generalizability"].dims == ("chain", "draw", "scale", "judges", "route")
    assert list(ds["judges"].values) == [1, 5]
    assert list(ds["level"].values) == ["session", "treatment"]
    obs = ds["agreement"].sel(route="observed", level="session", judges=1)
    assert int(np.isfinite(obs).all("scale").sum()) == 10 == ds.attrs["observed_draws"]
    assert np.isfinite(ds["agreement"].sel(route="latent")).all()
    # more judges, higher reliability; consistency >= agreement
    a = ds["agreement"].sel(route="latent")
    assert (a.sel(judges=5) > a.sel(judges=1)).all()
    assert (ds["consistency"].sel(route="latent") >= a).all()
    for name in COMPONENTS:
        assert ds[name].dims == ("chain", "draw", "scale", "route")


def test_optional_model_terms_enter_the_components(small_trial) -> None:
    """Interaction, bifactor general factor and per-scale cutpoints (hand-built posterior)."""
    chains, draws = 1, 8
    t = small_trial.truth
    n_k, n_i = t.sizes["scale"], t.sizes["item"]
    pairs = [f"{j}|{p}" for j in t["judge"].values for p in t["subject"].values]
    gl = np.linspace(0.2, 0.6, n_i)
    over = {
        "sd_interaction": (("chain", "draw"), np.full((chains, draws), 0.3)),
        "interaction": (
            ("chain", "draw", "judge_subject", "scale"),
            np.random.default_rng(0).normal(0, 0.3, (chains, draws, len(pairs), n_k)),
        ),
        "general_loading": (("chain", "draw", "item"), np.broadcast_to(gl, (chains, draws, n_i))),
        "general": (
            ("chain", "draw", "subject"),
            np.broadcast_to(np.linspace(-1.5, 1.5, t.sizes["subject"]), (chains, draws, 30)),
        ),
        "cutpoints": (
            ("chain", "draw", "scale", "cutpoint"),
            np.broadcast_to(np.linspace(-2, 2, 6), (chains, draws, n_k, 6)).copy(),
        ),
    }
    fit = synthetic_fit(small_trial, chains, draws, overrides=over)
    fit.datatree["posterior"] = fit.posterior.assign_coords(judge_subject=pairs)
    ds = reliability_draws(fit, max_observed_draws=4)
    lat = ds.sel(route="latent").isel(chain=0, draw=0)
    ea, va = lognormal_moments(float(t["sd_log_discrimination"]))
    for k, scale in enumerate(t["scale"].values):
        in_k = t["item_scale"].values == scale
        lam, g = t["loading"].values[in_k].mean(), gl[in_k].mean()
        tp = lam**2 * float(t["sd_alliance"][k]) ** 2 + g**2
        assert float(lat["var_subject"].sel(scale=scale)) == pytest.approx(ea**2 * tp)
        assert float(lat["var_subject_judge"].sel(scale=scale)) == pytest.approx(va * tp + 0.09)
    obs = ds["agreement"].sel(route="observed")
    assert int(np.isfinite(obs).all(["scale", "level", "judges"]).sum()) == 4
    assert float(obs.min()) > 0 and float(obs.max()) < 1
    jr = judge_reliability(fit)
    assert jr["median"].between(0, 1).all() and len(jr) == 3 * n_k


def test_designs_with_one_session_or_one_judge(calpas) -> None:
    one_session = simulate_trial(calpas, n_subjects=15, n_sessions=1, n_judges=2, seed=2)
    fit = synthetic_fit(one_session, 1, 6)
    del fit.datatree["posterior"]["sd_session"]
    del fit.datatree["posterior"]["zeta"]
    rel = reliability(fit, max_observed_draws=3)
    # one session per subject: session and treatment level coincide
    idx = ["scale", "judges", "route", "coefficient"]
    ses = rel[(rel["level"] == "session") & (rel["route"] != "classical")]
    ses = ses.set_index(idx)["median"]
    trt = rel[(rel["level"] == "treatment") & (rel["generalizes_over"] == "judges")]
    trt = trt.set_index(idx)["median"]
    np.testing.assert_allclose(ses.sort_index(), trt.sort_index(), rtol=1e-9)
    assert rel["classical"].notna().any()

    one_judge = simulate_trial(calpas, n_subjects=15, n_sessions=2, n_judges=1, seed=2)
    fit = synthetic_fit(one_judge, 1, 6)
    for v in ("severity", "discrimination", "sd_severity", "sd_log_discrimination"):
        del fit.datatree["posterior"][v]
    rel = reliability(fit, max_observed_draws=3)
    assert set(rel["judges"]) == {1}
    assert rel["classical"].isna().all()  # no classical ICC with one judge
    lat = rel[rel["route"] == "latent"]
    # no judge effects: agreement equals consistency
    a = lat[lat["coefficient"] == "agreement"]["median"].to_numpy()
    np.testing.assert_allclose(a, lat[lat["coefficient"] == "consistency"]["median"].to_numpy())
    jr = judge_reliability(fit)
    assert not jr["flag"].any() and jr["prob_below_panel"].isna().all()
    assert dstudy(fit, judges=[1, 2], sessions=[1, 2]).table["median"].notna().all()


def test_classical_column_is_spearman_brown_of_single_judge_icc(point_fit) -> None:
    rel = reliability(point_fit)
    cls = classical_reliability(point_fit.data).set_index(["scale", "level", "type"])["icc"]
    inter = rel[rel["generalizes_over"] == "judges"]
    for row in inter.itertuples():
        case = "2" if row.coefficient == "agreement" else "3"
        single = cls[(row.scale, row.level, f"ICC({case},1)")]
        k = row.judges
        assert row.classical == pytest.approx(k * single / (1 + (k - 1) * single))
        if k == 3:  # equals Shrout & Fleiss's average-measure coefficient
            assert row.classical == pytest.approx(cls[(row.scale, row.level, f"ICC({case},k)")])
    assert inter.loc[inter["coefficient"] == "consistency", "classical_oneway"].isna().all()
    assert rel.loc[rel["generalizes_over"] != "judges", "classical"].isna().all()
    assert (inter["classical_method"] == ANOVA_METHOD).all()


# --------------------------------------------------------------------------- classical


def _one_item_instrument(lo: int, hi: int):
    doc = {
        "instrument": {"name": "SF"},
        "response": {"min": lo, "max": hi},
        "scale": [{"code": "A", "name": "A", "items": ["A1"]}],
    }
    return parse_instrument(doc, "<test>")


def test_classical_reproduces_shrout_fleiss_example() -> None:
    sf = np.array([[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8],
                   [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]])  # fmt: skip
    long = pd.DataFrame(
        [(f"S{t}", "1", f"J{j}", "A1", int(sf[t, j])) for t in range(6) for j in range(4)],
        columns=["subject", "session", "judge", "item", "rating"],
    )
    data = RatingData.from_frame(long, _one_item_instrument(1, 10), layout="long")
    res = classical_reliability(data)
    ses = res[res["level"] == "session"].set_index("type")
    expect = {"ICC(1,1)": 0.17, "ICC(2,1)": 0.29, "ICC(3,1)": 0.71,
              "ICC(1,k)": 0.44, "ICC(2,k)": 0.62, "ICC(3,k)": 0.91}  # fmt: skip
    for t, v in expect.items():
        assert round(float(ses.loc[t, "icc"]), 2) == v, t
    assert (ses["k"] == 4).all() and (ses["method"] == ANOVA_METHOD).all()


def _pingouin_style(x: np.ndarray) -> dict[str, float]:
    """ICCs from mean squares written out with loops (psych / pingouin formulas)."""
    n, k = x.shape
    g = sum(sum(r) for r in x) / (n * k)
    rm = [sum(r) / k for r in x]
    cm = [sum(x[i][j] for i in range(n)) / n for j in range(k)]
    ssr = k * sum((m - g) ** 2 for m in rm)
    ssc = n * sum((m - g) ** 2 for m in cm)
    sst = sum((x[i][j] - g) ** 2 for i in range(n) for j in range(k))
    sse = sst - ssr - ssc
    msr, msc = ssr / (n - 1), ssc / (k - 1)
    mse, msw = sse / ((n - 1) * (k - 1)), (ssc + sse) / (n * (k - 1))
    return {
        "ICC(1,1)": (msr - msw) / (msr + (k - 1) * msw),
        "ICC(2,1)": (msr - mse) / (msr + (k - 1) * mse + k * (msc - mse) / n),
        "ICC(3,1)": (msr - mse) / (msr + (k - 1) * mse),
        "ICC(1,k)": (msr - msw) / msr,
        "ICC(2,k)": (msr - mse) / (msr + (msc - mse) / n),
        "ICC(3,k)": (msr - mse) / msr,
    }


def test_classical_matches_pingouin_formulas_on_balanced_scale_scores(small_trial) -> None:
    data = small_trial.to_rating_data()
    res = classical_reliability(data).set_index(["scale", "level", "type"])["icc"]
    items = [i for i in data.items if data.instrument.item_scale[i] == "PWC"]
    r = data.ratings[data.ratings["item"].isin(items)]
    ses = r.groupby(["subject", "session", "judge"])["score"].mean().unstack("judge")
    sub = ses.groupby(level="subject").mean()
    for level, table in (("session", ses), ("treatment", sub)):
        ref = _pingouin_style(table.to_numpy())
        for t, v in ref.items():
            assert res[("PWC", level, t)] == pytest.approx(v, rel=1e-10), (level, t)


def test_classical_unbalanced_design_uses_reml_without_deletion(calpas) -> None:
    trial = simulate_trial(calpas, n_subjects=25, n_sessions=2, n_judges=4,
                           judges_per_session=2, seed=4)  # fmt: skip
    data = trial.to_rating_data()
    res = classical_reliability(data)
    ses = res[(res["level"] == "session") & (res["scale"] == "PC")]
    assert (ses["method"] == REML_METHOD).all()
    assert ses["n_obs"].iloc[0] == 25 * 2 * 2  # every session score used, none deleted
    assert ses["n_targets"].iloc[0] == 50
    assert ses["icc"].between(0, 1).all()


# --------------------------------------------------------------------------- judges


def test_judge_correlation_matches_brute_force_ratings(point_fit, small_trial) -> None:
    res = judge_reliability(point_fit).set_index(["judge", "scale"])
    t = small_trial.truth
    data = point_fit.data
    rng = np.random.default_rng(2)
    items = list(t["item"].values)
    k_of = np.array([list(t["scale"].values).index(s) for s in t["item_scale"].values])
    eta = t["eta"].values  # (session, scale)
    tau = t["cutpoints"].values
    for j, judge in enumerate(data.judges):
        a = float(t["discrimination"].values[j])
        sev = t["severity"].values[j]  # (scale,)
        mu = a * t["loading"].values[None, :] * eta[:, k_of] - sev[k_of][None, :]
        reps = 300
        ystar = mu[None] + rng.logistic(size=(reps, *mu.shape))
        y = (ystar[..., None] > tau[None, None]).sum(-1)  # (R, S, I)
        for k, scale in enumerate(t["scale"].values):
            sc = y[:, :, k_of == k].mean(-1)  # (R, S)
            e = np.broadcast_to(eta[:, k], sc.shape)
            r = np.corrcoef(sc.ravel(), e.ravel())[0, 1]
            assert res.loc[(judge, scale), "median"] == pytest.approx(r, abs=0.01)
    assert len(items) == 24


def test_low_discrimination_judge_is_flagged(small_trial) -> None:
    rng = np.random.default_rng(5)
    chains, draws = 2, 100
    disc = np.stack(
        [rng.normal(1.25, 0.08, (chains, draws)), rng.normal(1.2, 0.08, (chains, draws)),
         rng.normal(0.5, 0.04, (chains, draws))], axis=-1,
    )  # fmt: skip
    fit = synthetic_fit(
        small_trial, chains, draws,
        overrides={"discrimination": (("chain", "draw", "judge"), disc)},
    )  # fmt: skip
    res = judge_reliability(fit)
    low = res["judge"] == fit.data.judges[2]
    assert res.loc[low, "flag"].all()
    assert not res.loc[~low, "flag"].any()
    assert (res.loc[low, "prob_below_panel"] > 0.99).all()
    assert (res.loc[low, "median"] < res.loc[~low, "median"].min()).all()
    tab = judges_table(fit)
    assert set(tab["parameter"]) == {"severity", "discrimination", "correlation"}
    corr = tab[tab["parameter"] == "correlation"]
    assert len(corr) == 3 * 4 and corr["flag"].sum() == 4
    assert tab.loc[tab["parameter"] != "correlation", "flag"].isna().all()
    assert {"prob_below_panel", "flag", "converged", "n_ratings"} <= set(tab.columns)


# --------------------------------------------------------------------------- decision study


def test_dstudy_point_mass_matches_formula_and_smallest_rule(point_fit, small_trial) -> None:
    t = small_trial.truth
    study = dstudy(point_fit, judges=range(1, 5), sessions=[1, 2, 4, 8], target=0.85)
    tab = study.table
    assert len(tab) == 4 * 4 * 4
    item_scale = list(t["item_scale"].values)
    for scale in t["scale"].values:
        lam = t["loading"].values[[s == scale for s in item_scale]]
        comps = latent_components(
            float(t["sd_alliance"].sel(scale=scale)), float(t["sd_session"].sel(scale=scale)),
            lam.mean(), len(lam), sd_severity=float(t["sd_severity"]),
            sd_log_discrimination=float(t["sd_log_discrimination"]),
        )  # fmt: skip
        s = tab[tab["scale"] == scale]
        expect = [
            coefficient_from_components(comps, judges=j, sessions=n, level="treatment",
                                        generalize_sessions=True)
            for j, n in zip(s["judges"], s["sessions"], strict=True)
        ]  # fmt: skip
        np.testing.assert_allclose(s["median"], expect, rtol=1e-10)
        np.testing.assert_allclose(s["p_reach"], (np.array(expect) >= 0.85).astype(float))
        # smallest: fewest judges x sessions among designs reaching .85, then fewest judges
        ok = [(j * n, j, n) for j, n, e in zip(s["judges"], s["sessions"], expect, strict=True)
              if e >= 0.85]  # fmt: skip
        best = study.smallest.set_index("scale").loc[scale]
        if ok:
            _, bj, bn = min(ok)
            assert (best["judges"], best["sessions"]) == (bj, bn) and best["reached"]
            flagged = s[s["smallest"]]
            assert len(flagged) == 1 and flagged["judges"].iloc[0] == bj
        else:
            assert not best["reached"]
    assert tab["converged"].all()


def test_dstudy_items_levels_routes_and_errors(point_fit) -> None:
    st = dstudy(point_fit, judges=[1, 2], sessions=[2], items=[3, 6, 12])
    assert "items" in st.table.columns
    for _, g in st.table.groupby(["scale", "judges"]):
        assert g.sort_values("items")["median"].is_monotonic_increasing
    assert (st.table["ratings"] == st.table["judges"] * 2 * st.table["items"]).all()
    ses = dstudy(point_fit, judges=[1, 2, 3], level="session")
    assert (ses.table["sessions"] == 1).all() and len(ses.table) == 4 * 3
    obs = dstudy(point_fit, judges=[1, 3], sessions=[1, 3], route="observed",
                 max_observed_draws=10)  # fmt: skip
    lat = dstudy(point_fit, judges=[1, 3], sessions=[1, 3])
    np.testing.assert_allclose(obs.table["median"], lat.table["median"], atol=0.05)
    with pytest.raises(CaltarsError, match="latent route"):
        dstudy(point_fit, route="observed", items=[3])
    with pytest.raises(CaltarsError, match="target"):
        dstudy(point_fit, target=1.5)
    with pytest.raises(CaltarsError, match="judges"):
        dstudy(point_fit, judges=[0, 1])


def test_dstudy_save_writes_csv_and_figures_and_refuses_overwrite(point_fit, tmp_path) -> None:
    study = dstudy(point_fit, judges=[1, 2, 3], sessions=[1, 2, 3])
    paths = study.save(tmp_path / "ds")
    assert sorted(p.name for p in paths) == ["dstudy.csv", "dstudy.png", "dstudy.svg"]
    back = pd.read_csv(tmp_path / "ds" / "dstudy.csv")
    assert {"scale", "judges", "sessions", "median", "low", "high", "p_reach", "smallest",
            "converged"} <= set(back.columns)  # fmt: skip
    with pytest.raises(CaltarsError, match="already exists"):
        study.save(tmp_path / "ds")
    study.save(tmp_path / "ds", force=True)


def test_parse_counts() -> None:
    assert parse_counts("1-8", "--judges") == list(range(1, 9))
    assert parse_counts("1,2,4", "--judges") == [1, 2, 4]
    assert parse_counts("1-3, 6", "--judges") == [1, 2, 3, 6]
    for bad in ("0-3", "a", "3-1", "1.5", ""):
        with pytest.raises(CaltarsError, match="--judges"):
            parse_counts(bad, "--judges")


# --------------------------------------------------------------------------- fit and CLI


def test_fit_directory_has_reliability_and_judge_columns(tiny_fit, tmp_path) -> None:
    from caltars_bayes.report.outputs import save_fit_directory

    out = tmp_path / "fit"
    save_fit_directory(tiny_fit, out)
    rel = pd.read_csv(out / "reliability.csv")
    assert list(rel.columns[:11]) == [
        "scale", "level", "judges", "sessions", "route", "coefficient", "generalizes_over",
        "median", "mean", "hdi_low", "hdi_high",
    ]  # fmt: skip
    assert {"classical", "converged"} <= set(rel.columns)
    assert not rel["converged"].any()  # the tiny fit is not converged, and says so
    assert set(rel["level"]) == {"session", "treatment"}
    assert set(rel["route"]) == {"latent", "observed", "classical"}
    assert rel["median"].between(0, 1).all()
    # Cronbach's alpha in reliability.csv against pandas on the saved ratings
    ratings = pd.read_csv(out / "ratings.csv", dtype={"subject": str, "session": str})
    item_scale = tiny_fit.data.instrument.item_scale
    wide = ratings.pivot_table(
        index=["subject", "session", "judge"], columns="item", values="rating"
    )
    alpha = rel[rel["coefficient"] == "alpha"].set_index("scale")
    assert list(alpha.index) == list(tiny_fit.data.scales)
    for scale in tiny_fit.data.scales:
        table = wide[[i for i in wide.columns if item_scale[i] == scale]].dropna()
        k = table.shape[1]
        expect = k / (k - 1) * (1 - table.var().sum() / table.sum(axis=1).var())
        assert alpha.loc[scale, "median"] == pytest.approx(expect, abs=0.001)
        assert alpha.loc[scale, "n_obs"] == len(table) == 12 * 2 * 3
        assert alpha.loc[scale, "hdi_low"] < expect < alpha.loc[scale, "hdi_high"]
    assert set(rel.loc[rel["route"] == "classical", "coefficient"]) == {"alpha", "omega"}
    judges = pd.read_csv(out / "judges.csv")
    assert "correlation" in set(judges["parameter"]) and "flag" in judges.columns


def test_cli_dstudy_smoke(tiny_fit, tmp_path, capsys) -> None:
    from caltars_bayes.cli import main

    fit_dir = tiny_fit.save(tmp_path / "fit")
    rc = main(["dstudy", str(fit_dir), "--judges", "1-3", "--sessions", "1,2,4"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "NOT CONVERGED" in out and "smallest design" in out
    tab = pd.read_csv(fit_dir / "dstudy" / "dstudy.csv")
    assert len(tab) == 4 * 3 * 3 and (fit_dir / "dstudy" / "dstudy.svg").is_file()
    assert main(["dstudy", str(fit_dir)]) == 2  # exists: needs --force
    assert "already exists" in capsys.readouterr().err
    assert main(["dstudy", str(fit_dir), "--judges", "0-2", "--force"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--judges" in err
    rc = main(["dstudy", str(fit_dir), "--level", "session", "--route", "observed",
               "--out", str(tmp_path / "ses")])  # fmt: skip
    assert rc == 0 and (tmp_path / "ses" / "dstudy.png").is_file()


# --------------------------------------------------------------------------- coverage (MCMC)


@pytest.mark.slow
@pytest.mark.long
def test_posterior_intervals_cover_true_coefficients(calpas) -> None:
    """90% HDIs of every coefficient cover the truth at about the nominal rate.

    Six simulated trials (20 subjects x 3 sessions x 3 judges, CALPAS, the
    simulator's default parameters), each fitted by MCMC (2 chains x 200
    draws); 24 coefficients x 4 scales per trial, pooled. Intervals within a
    trial are strongly correlated (they share the judge and alliance SDs), so
    six trials cannot pin the rate down: the band is wide, and the intervals
    must also be informative (narrow) and centred on the truth. A 16-trial run
    of the same study gave a pooled coverage of 0.92 (docs/reliability.md).
    """
    from caltars_bayes.inference.fit import fit_model

    rows = []
    for seed in range(6):
        trial = simulate_trial(calpas, n_subjects=20, n_sessions=3, n_judges=3, seed=100 + seed)
        fit = fit_model(
            trial.to_rating_data(), draws=200, tune=300, chains=2, random_seed=seed,
            progressbar=False,
        )  # fmt: skip
        rel = reliability(fit, prob=0.9)
        truth = true_reliability(trial.truth, calpas, seed=seed)
        rows.append(rel.merge(truth, on=KEYS, validate="one_to_one"))
    m = pd.concat(rows, ignore_index=True)
    assert len(m) == 6 * 4 * 24
    cover = (m["hdi_low"] <= m["value"]) & (m["value"] <= m["hdi_high"])
    assert 0.75 <= cover.mean() <= 1.0, cover.mean()
    for route in ("latent", "observed"):
        assert cover[m["route"] == route].mean() >= 0.7, route
    width = m["hdi_high"] - m["hdi_low"]
    assert width.mean() < 0.25
    assert (m["median"] - m["value"]).abs().mean() < 0.06


def test_classical_alpha_and_omega_rows(point_fit) -> None:
    from caltars_bayes.analysis.classical import scale_internal_consistency

    rel = reliability(point_fit, max_observed_draws=4, n_boot=300, seed=2)
    cls = rel[rel["route"] == "classical"]
    assert list(zip(cls["scale"], cls["coefficient"], strict=True)) == [
        (s, c) for s in point_fit.data.scales for c in ("alpha", "omega")
    ]
    # last rows of each scale, one judge's session score, generalizing over items
    last = rel.groupby("scale", sort=False).tail(2)
    assert (last["route"] == "classical").all()
    assert (cls["level"] == "session").all() and (cls["judges"] == 1).all()
    assert (cls["sessions"] == 1.0).all() and (cls["generalizes_over"] == "items").all()
    assert (cls["median"] == cls["mean"]).all() and (cls["n_draws"] == 300).all()
    assert cls["classical"].isna().all() and cls["classical_oneway"].isna().all()
    assert rel.loc[rel["route"] != "classical", ["n_obs", "n_items"]].isna().all().all()
    ref = scale_internal_consistency(point_fit.data, n_boot=300, seed=2, prob=0.95)
    np.testing.assert_allclose(cls["median"], ref["estimate"])
    np.testing.assert_allclose(cls["hdi_low"], ref["ci_low"])
    np.testing.assert_allclose(cls["hdi_high"], ref["ci_high"])
    assert (cls["n_obs"] == 30 * 3 * 3).all() and (cls["n_items"] == 6).all()
    assert cls["classical_method"].str.contains("bootstrap over subjects").all()
    # six congeneric items of one factor: omega at least alpha, both well inside (0, 1)
    wide = cls.pivot(index="scale", columns="coefficient", values="median")
    assert (wide["omega"] >= wide["alpha"] - 1e-9).all()
    assert wide.stack().between(0.5, 0.95).all()
