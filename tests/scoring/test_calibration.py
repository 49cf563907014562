"""Calibration and scoring: the maths against brute-force integration, drift, I/O, CLI.

Slow tests (marked) calibrate on an MCMC fit of a simulated trial, score a
second trial from the same parameters and compare with a joint refit.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from scipy.special import expit

from caltars_bayes._core.errors import DataError, FitIOError
from caltars_bayes._core.summaries import weighted_describe
from caltars_bayes.data.ratings import RatingData
from caltars_bayes.inference.diagnostics import Diagnostics
from caltars_bayes.model.density import cumulative_logit_derivatives
from caltars_bayes.model.plan import ModelPlan
from caltars_bayes.model.simulate import simulate_ratings, simulate_trial
from caltars_bayes.scoring.calibration import (
    Calibration,
    calibrate,
    load_calibration,
    oracle_calibration,
)
from caltars_bayes.scoring.design import _params, build_design
from caltars_bayes.scoring.drift import population_band
from caltars_bayes.scoring.engine import _Engine, _State
from caltars_bayes.scoring.trial import score, score_trial
from caltars_bayes.spec.instrument import parse_instrument

SCORE_COLUMNS = ["level", "subject", "session", "scale", "mean", "sd", "hdi_low", "hdi_high"]

# --------------------------------------------------------------------------- helpers


def _instrument(n_scales: int = 1, n_items: int = 3):
    scales = [
        {"code": c, "name": c, "items": [f"{c}{i + 1}" for i in range(n_items)]}
        for c in "AB"[:n_scales]
    ]
    doc = {"instrument": {"name": "T"}, "response": {"min": 1, "max": 5}, "scale": scales}
    return parse_instrument(doc, "<test>")


def _diag(converged: bool = True) -> Diagnostics:
    return Diagnostics(
        converged=converged, max_rhat=1.0, min_ess_bulk=1000.0, min_ess_tail=1000.0,
        divergences=0, treedepth_hits=0, ebfmi=[], n_chains=1, n_draws=1,
        problems=[] if converged else ["test: not converged"],
    )  # fmt: skip


def _plan(session_level: bool) -> ModelPlan:
    return ModelPlan(
        session_level=session_level, session_trend=False, judge_severity=False,
        judge_discrimination=False, judge_subject_interaction=False, cutpoints="item",
        centred_subjects=True, centred_judges=True, centred_sessions=True,
    )  # fmt: skip


#: two parameter sets of a 3-item, 5-category scale (a calibration's "posterior")
SETS = [
    {"load": [0.8, 1.0, 1.25], "shift": [-0.3, 0.0, 0.4], "sd": 1.2, "sd_ses": 0.6},
    {"load": [0.9, 1.1, 1.0], "shift": [-0.1, 0.2, 0.1], "sd": 0.9, "sd_ses": 0.4},
]
BASE_CUT = np.array([-2.0, -0.7, 0.5, 1.8])


def _one_scale_calibration(n_each: int, session_level: bool) -> Calibration:
    inst = _instrument()
    items = list(inst.items)
    vals = {k: [] for k in ("loading", "cutpoints", "sd_alliance", "sd_session")}
    for ps in SETS:
        vals["loading"] += [ps["load"]] * n_each
        vals["cutpoints"] += [BASE_CUT[None, :] + np.array(ps["shift"])[:, None]] * n_each
        vals["sd_alliance"] += [[ps["sd"]]] * n_each
        vals["sd_session"] += [[ps["sd_ses"]]] * n_each
    n = 2 * n_each
    coords = {"draw": np.arange(n), "item": items, "scale": ["A"], "scale2": ["A"],
              "cutpoint": np.arange(4)}  # fmt: skip
    ds = xr.Dataset(
        {
            "loading": (("draw", "item"), np.array(vals["loading"])),
            "cutpoints": (("draw", "item", "cutpoint"), np.array(vals["cutpoints"])),
            "sd_alliance": (("draw", "scale"), np.array(vals["sd_alliance"])),
            "factor_corr": (("draw", "scale", "scale2"), np.ones((n, 1, 1))),
        },
        coords=coords,
    )
    if session_level:
        ds["sd_session"] = (("draw", "scale"), np.array(vals["sd_session"]))
    meta = {"session_time_mean": 1.0, "source": {"n_subjects": 50, "n_judges": 1}}
    return Calibration(ds, inst, _plan(session_level), _diag(), meta)


def _ratings(inst, rows: list[tuple[str, str, str, str, int]]) -> RatingData:
    df = pd.DataFrame(rows, columns=["subject", "session", "judge", "item", "rating"])
    return RatingData.from_frame(df, inst, layout="long")


def _sheet(ratings: list[int]) -> list[tuple[str, str, str, str, int]]:
    """One judge's ratings of items A1.. in session 1 of subject S1."""
    return [("S1", "1", "J", f"A{i + 1}", r) for i, r in enumerate(ratings)]


def _loglik_grid(eta: np.ndarray, ratings: list[int], ps: dict) -> np.ndarray:
    """Exact log likelihood of one judge's ratings of the 3 items at each eta."""
    out = np.zeros_like(eta)
    for i, r in enumerate(ratings):
        tau = np.concatenate([[-np.inf], BASE_CUT + ps["shift"][i], [np.inf]])
        mu = ps["load"][i] * eta
        y = r - 1
        out += np.log(expit(tau[y + 1] - mu) - expit(tau[y] - mu))
    return out


def _grid_summary(x: np.ndarray, dens: np.ndarray) -> dict[str, float]:
    p = dens / dens.sum()
    mean = float((p * x).sum())
    sd = float(np.sqrt((p * (x - mean) ** 2).sum()))
    order = np.argsort(-p)  # HDI: the highest-density grid points holding 95%
    keep = order[: np.searchsorted(np.cumsum(p[order]), 0.95) + 1]
    return {"mean": mean, "sd": sd, "hdi_low": x[keep].min(), "hdi_high": x[keep].max()}


# --------------------------------------------------------------------------- pure maths


def test_weighted_describe_hand_values():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 500))
    st = weighted_describe(x)
    np.testing.assert_allclose(st["mean"], x.mean(1))
    np.testing.assert_allclose(st["sd"], x.std(1, ddof=1))
    # weights: 0.1, 0.1, 0.1, 0.7 on 0, 1, 2, 3
    st = weighted_describe(np.array([[0.0, 1.0, 2.0, 3.0]]), np.log([[0.1, 0.1, 0.1, 0.7]]), 0.75)
    assert st["mean"][0] == pytest.approx(2.4)
    assert (st["hdi_low"][0], st["hdi_high"][0]) == (2.0, 3.0)
    # uniform draws 0..99: the shortest 90% interval spans 90 of them
    st = weighted_describe(np.arange(100.0)[None, ::-1], prob=0.9)
    assert st["hdi_high"][0] - st["hdi_low"][0] == 89.0


def test_population_band_is_the_mixture_quantile():
    assert population_band(np.array([0.5]), 0.95) == pytest.approx(1.959964 * 0.5, rel=1e-6)
    rng = np.random.default_rng(1)
    sd = rng.gamma(4, 0.1, size=4000)
    q = population_band(sd, 0.99)
    sample = rng.normal(size=(50, sd.size)) * sd
    assert np.mean(np.abs(sample) > q) == pytest.approx(0.01, abs=0.003)


@pytest.mark.parametrize("ratings", [[4, 5, 4], [5, 5, 5], [1, 2, 1]])
def test_one_rating_sheet_matches_brute_force(ratings):
    """One subject, one session, one judge, no session level: a 1-D integral per draw."""
    cal = _one_scale_calibration(4000, session_level=False)
    data = _ratings(cal.instrument, _sheet(ratings))
    grid = np.linspace(-10, 10, 8001)
    dens = np.zeros_like(grid)
    for ps in SETS:  # the calibration is an equal mixture of the two parameter sets
        lp = _loglik_grid(grid, ratings, ps) - 0.5 * (grid / ps["sd"]) ** 2
        post = np.exp(lp - lp.max())
        dens += post / post.sum()
    truth = _grid_summary(grid, dens)
    # Monte Carlo SE of the mean ~ 0.7 / sqrt(8000) = 0.008
    for importance, tol in ((True, 0.03), (False, 0.08)):
        sc = score(data, cal, seed=2, importance=importance)
        row = sc[sc["level"] == "subject"].iloc[0]
        assert row["mean"] == pytest.approx(truth["mean"], abs=tol)
        assert row["sd"] == pytest.approx(truth["sd"], rel=0.06)
        assert row["hdi_low"] == pytest.approx(truth["hdi_low"], abs=4 * tol)
        assert row["hdi_high"] == pytest.approx(truth["hdi_high"], abs=4 * tol)
    # without a session level the session score is the subject score
    ses = sc[sc["level"] == "session"].iloc[0]
    assert ses["mean"] == pytest.approx(row["mean"])


def test_session_level_matches_brute_force_2d():
    """One session with a session level: theta and zeta are separated only by the prior."""
    ratings = [5, 4, 5]
    cal = _one_scale_calibration(4000, session_level=True)
    data = _ratings(cal.instrument, _sheet(ratings))
    th = np.linspace(-7, 7, 561)[:, None]
    ze = np.linspace(-4, 4, 321)[None, :]
    eta = th + ze
    p_theta = np.zeros(th.shape[0])
    m_eta = v_eta = 0.0
    moments = []
    for ps in SETS:
        lp = (
            _loglik_grid(eta, ratings, ps)
            - 0.5 * (th / ps["sd"]) ** 2
            - 0.5 * (ze / ps["sd_ses"]) ** 2
        )
        post = np.exp(lp - lp.max())
        post /= post.sum()
        p_theta += post.sum(1) / 2
        e1 = float((post * eta).sum())
        moments.append((e1, float((post * eta**2).sum())))
    m_eta = np.mean([m[0] for m in moments])
    v_eta = np.mean([m[1] for m in moments]) - m_eta**2
    truth = _grid_summary(th[:, 0], p_theta)
    sc = score(data, cal, seed=4)
    sub = sc[sc["level"] == "subject"].iloc[0]
    ses = sc[sc["level"] == "session"].iloc[0]
    assert sub["mean"] == pytest.approx(truth["mean"], abs=0.03)
    assert sub["sd"] == pytest.approx(truth["sd"], rel=0.06)
    assert ses["mean"] == pytest.approx(m_eta, abs=0.03)
    assert ses["sd"] == pytest.approx(np.sqrt(v_eta), rel=0.06)
    assert ses["mean"] > sub["mean"] > 0  # the session is pulled less than the subject


def test_scale_without_ratings_follows_the_factor_correlation():
    """Scale B unrated: theta_B | theta_A ~ N(r sd_B / sd_A theta_A, sd_B^2 (1 - r^2))."""
    inst = _instrument(n_scales=2)
    n, r, sd = 3000, 0.6, np.array([1.0, 2.0])
    corr = np.array([[1.0, r], [r, 1.0]])
    ds = xr.Dataset(
        {
            "loading": (("draw", "item"), np.ones((n, 6))),
            "cutpoints": (("draw", "item", "cutpoint"), np.broadcast_to(BASE_CUT, (n, 6, 4))),
            "sd_alliance": (("draw", "scale"), np.broadcast_to(sd, (n, 2))),
            "factor_corr": (("draw", "scale", "scale2"), np.broadcast_to(corr, (n, 2, 2))),
        },
        coords={
            "draw": np.arange(n),
            "item": list(inst.items),
            "scale": ["A", "B"],
            "scale2": ["A", "B"],
            "cutpoint": np.arange(4),
        },
    )
    cal = Calibration(ds, inst, _plan(False), _diag(), {"source": {}})
    data = _ratings(inst, _sheet([5, 4, 5]))
    sc = score(data, cal, seed=1).set_index(["level", "scale"])
    a, b = sc.loc[("subject", "A")], sc.loc[("subject", "B")]
    slope = r * sd[1] / sd[0]
    assert b["mean"] == pytest.approx(slope * a["mean"], abs=0.05)
    expected_sd = np.sqrt(slope**2 * a["sd"] ** 2 + sd[1] ** 2 * (1 - r**2))
    assert b["sd"] == pytest.approx(expected_sd, rel=0.05)


# --------------------------------------------------------------------------- new judges: algebra


@pytest.fixture(scope="module")
def small_trial(calpas):
    return simulate_trial(calpas, n_subjects=8, n_sessions=2, n_judges=3, seed=7)


def test_block_elimination_matches_dense_newton(small_trial):
    """The Schur-complement Newton step and new-judge precision equal a dense solve."""
    cal = oracle_calibration(small_trial, n_draws=1)
    data = small_trial.to_rating_data().subset_subjects(["P01", "P02", "P03"])
    design, _ = build_design(data, cal, all_new=True)
    eng = _Engine(design, _params(cal, slice(0, 1)))
    rng = np.random.default_rng(0)
    st = _State(
        rng.normal(size=eng.d.n_subjects * 4).reshape(1, -1, 4) * 0.5,
        rng.normal(size=eng.d.n_sessions * 4).reshape(1, -1, 4) * 0.3,
        rng.normal(size=(1, 3, 4)) * 0.2,
        rng.normal(size=(1, 3)) * 0.1,
    )
    p_n, n_n, k_n = eng.d.n_subjects, eng.d.n_sessions, 4

    def flat(s: _State) -> np.ndarray:
        return np.concatenate([s.zeta.ravel(), s.theta.ravel(), s.sev.ravel(), s.ld.ravel()])

    def unflat(x: np.ndarray) -> _State:
        a, b, c = n_n * k_n, n_n * k_n + p_n * k_n, n_n * k_n + p_n * k_n + 12
        return _State(
            x[a:b].reshape(1, p_n, k_n), x[:a].reshape(1, n_n, k_n),
            x[b:c].reshape(1, 3, k_n), x[c:].reshape(1, 3),
        )  # fmt: skip

    x0 = flat(st)
    mu0 = eng._mu(st)[0][0]
    jac = np.empty((mu0.size, x0.size))  # d mu / d x by central differences
    for i in range(x0.size):
        e = np.zeros_like(x0)
        e[i] = 1e-6
        jac[:, i] = (eng._mu(unflat(x0 + e))[0][0] - eng._mu(unflat(x0 - e))[0][0]) / 2e-6
    g, h = cumulative_logit_derivatives(mu0, eng.tau_lo[0], eng.tau_hi[0])
    p = eng.p
    prior = np.concatenate(
        [
            np.tile(1.0 / p.sd_ses[0] ** 2, n_n),
            np.zeros(p_n * k_n),
            np.full(12, 1.0 / p.sd_sev[0] ** 2),
            np.full(3, 1.0 / p.sd_ld[0] ** 2),
        ]
    )
    hess = jac.T @ (-h[:, None] * jac) + np.diag(prior)
    th = slice(n_n * k_n, n_n * k_n + p_n * k_n)
    for q in range(p_n):
        blk = slice(th.start + q * k_n, th.start + (q + 1) * k_n)
        hess[blk, blk] += p.prec[0]
    grad = jac.T @ g - prior * x0
    grad[th] -= (st.theta[0] @ p.prec[0]).ravel()
    dense_step = np.linalg.solve(hess, grad)
    sysm = eng.system(st)
    red = eng.reduce(sysm)
    # the volume correction is not part of the Newton system: take it back out
    var_th = np.diagonal(red["Ainv"], axis1=2, axis2=3)[:, design.ses_subj, :]
    r = sysm["L"] * sysm["inv_d"]
    corr = np.einsum("snkj,snk->sj", sysm["lj"], (1 - r) ** 2 * var_th + sysm["inv_d"])
    red["gv"][:, 12:] += corr
    step = eng.step(st, sysm, red)
    np.testing.assert_allclose(flat(step), dense_step, rtol=1e-5, atol=1e-7)
    v = slice(th.stop, None)
    u = slice(0, th.stop)
    schur = hess[v, v] - hess[v, u] @ np.linalg.solve(hess[u, u], hess[u, v])
    np.testing.assert_allclose(red["Sv"][0], schur, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- oracle recovery


@pytest.fixture(scope="module")
def drift_setup(calpas):
    """A trial, and new subjects rated by a calibrated judge plus three new judges."""
    trial = simulate_trial(calpas, n_subjects=60, n_sessions=2, n_judges=3, seed=7)
    new_subjects = [f"P{i:02d}" for i in range(41, 61)]
    groups = {"N1": new_subjects[:7], "N2": new_subjects[7:14], "N3": new_subjects[14:]}
    params = {"N1": (0.15, 1.0), "N2": (1.5, 1.0), "N3": (-0.1, 0.45)}
    r = trial.ratings
    parts = [r[r["subject"].isin(new_subjects) & (r["judge"] == "J1")]]
    for j, subs in groups.items():
        parts.append(simulate_ratings(trial, {j: params[j]}, subjects=subs, seed=3))
    data = RatingData.from_frame(pd.concat(parts, ignore_index=True), calpas, layout="long")
    return trial, data


def _truth_frames(trial):
    th = trial.truth["theta"].to_dataframe("true").reset_index()[["subject", "scale", "true"]]
    eta = trial.truth["eta"].to_dataframe("true").reset_index()
    eta[["subject", "session"]] = eta["session"].str.split("|", expand=True)
    return th, eta[["subject", "session", "scale", "true"]]


def test_oracle_scores_recover_truth(calpas):
    """Known parameters: posterior means track the truth and 90% intervals cover it."""
    trial = simulate_trial(calpas, n_subjects=80, n_sessions=2, n_judges=3, seed=8)
    cal = oracle_calibration(trial, n_draws=300)
    data = trial.to_rating_data().subset_subjects([f"P{i:02d}" for i in range(41, 81)])
    res = score_trial(data, cal, seed=1)
    assert list(res.scores.columns) == [*SCORE_COLUMNS, "converged"]
    th, eta = _truth_frames(trial)
    ninety = res.intervals(0.9)
    sub = ninety[ninety["level"] == "subject"].merge(th, on=["subject", "scale"])
    ses = ninety[ninety["level"] == "session"].merge(eta, on=["subject", "session", "scale"])
    assert len(sub) == 40 * 4 and len(ses) == 80 * 4
    for m in (sub, ses):
        assert np.corrcoef(m["mean"], m["true"])[0, 1] >= 0.85
        cover = ((m["true"] >= m["hdi_low"]) & (m["true"] <= m["hdi_high"])).mean()
        assert 0.8 <= cover <= 0.97
    # 95% HDIs of the scores table are wider than the 90% ones
    wide = res.scores.set_index(["level", "subject", "session", "scale"])
    narrow = ninety.set_index(["level", "subject", "session", "scale"])
    assert (wide["hdi_high"] - wide["hdi_low"] > narrow["hdi_high"] - narrow["hdi_low"]).all()


def test_oracle_flags_drifting_judges(drift_setup):
    trial, data = drift_setup
    cal = oracle_calibration(trial, n_draws=300)
    res = score_trial(data, cal, seed=1)
    nj = res.new_judges
    drift = nj.groupby("judge")["drift"].first()
    assert drift.to_dict() == {"N1": False, "N2": True, "N3": True}
    n2 = nj[(nj["judge"] == "N2") & (nj["parameter"] == "severity")]
    assert n2["flagged"].all() and set(n2["direction"]) == {"severe"}
    assert n2["own_mean"].between(1.0, 2.0).all()  # own estimate near the true 1.5
    n3 = nj[(nj["judge"] == "N3") & (nj["parameter"] == "discrimination")].iloc[0]
    assert n3["flagged"] and n3["direction"].startswith("low discrimination")
    assert not nj[(nj["judge"] == "N3") & (nj["parameter"] == "severity")]["flagged"].any()
    n_rated = nj.groupby("judge")["n_ratings"].first().to_dict()
    assert n_rated == {"N1": 7 * 2 * 24, "N2": 7 * 2 * 24, "N3": 6 * 2 * 24}


def test_calibrated_judges_are_known_and_can_be_checked(calpas):
    """Known judges use their calibrated values; new_judges='all' re-estimates them."""
    trial = simulate_trial(calpas, n_subjects=40, n_sessions=2, n_judges=3, seed=11)
    cal = oracle_calibration(trial, n_draws=200)
    data = trial.to_rating_data()
    res = score_trial(data, cal)
    assert res.new_judges.empty and res.report["new_judges"] == []
    checked = score_trial(data, cal, new_judges="all").new_judges
    assert set(checked["judge"]) == {"J1", "J2", "J3"}
    assert not checked["drift"].any()
    disc = checked[checked["parameter"] == "discrimination"].set_index("judge")
    err = (disc["own_mean"] - trial.truth["discrimination"].to_series()).abs()
    assert (err < 3 * disc["own_sd"]).all() and err.max() < 0.25
    sev = checked[checked["parameter"] == "severity"].set_index(["judge", "scale"])
    true_sev = trial.truth["severity"].to_series()
    assert np.corrcoef(sev["own_mean"], true_sev.loc[sev.index])[0, 1] > 0.8


def test_one_subject_one_session_one_judge(calpas, small_trial):
    cal = oracle_calibration(small_trial, n_draws=200)
    r = small_trial.ratings
    one = r[(r["subject"] == "P01") & (r["session"] == 1) & (r["judge"] == "J2")]
    data = RatingData.from_frame(one.iloc[:10], calpas, layout="long")  # some items missing
    sc = score(data, cal)
    assert len(sc) == 2 * 4
    assert sc["sd"].gt(0).all() and np.isfinite(sc[["mean", "hdi_low", "hdi_high"]]).all().all()
    assert (sc["hdi_low"] < sc["mean"]).all() and (sc["mean"] < sc["hdi_high"]).all()
    # a new judge with one sheet: reported, not flagged
    res = score_trial(data.__class__.from_frame(one.assign(judge="X"), calpas, layout="long"), cal)
    assert set(res.new_judges["judge"]) == {"X"} and not res.new_judges["flagged"].any()


def test_score_progress_counts_the_calibration_draws(small_trial, monkeypatch):
    """One progress line per chunk of calibration draws, ending at all of them; the
    progress does not change the scores."""
    from caltars_bayes.scoring import engine

    cal = oracle_calibration(small_trial, n_draws=30)
    data = small_trial.to_rating_data().subset_subjects(["P01", "P02"])
    monkeypatch.setattr(engine, "CHUNK_ELEMENTS", 7 * int(data.n_ratings))  # chunks of 7 draws
    silent = score(data, cal, seed=2, progress=False)
    lines: list[str] = []
    chunked = score(data, cal, seed=2, progress=lines.append)
    assert [line.split("]")[0] for line in lines] == [
        "[7/30",
        "[14/30",
        "[21/30",
        "[28/30",
        "[30/30",
    ]
    assert all("score: calibration draws" in line and "ETA" in line for line in lines)
    pd.testing.assert_frame_equal(silent, chunked)


def test_refuses_other_instrument(caltars, small_trial):
    cal = oracle_calibration(small_trial, n_draws=10)
    other = simulate_trial(caltars, n_subjects=2, n_sessions=1, n_judges=1, seed=1)
    with pytest.raises(DataError, match="other items"):
        score(other.to_rating_data(), cal)


# --------------------------------------------------------------------------- I/O and CLI


def test_calibration_save_load_roundtrip(tiny_fit, tiny_trial, tmp_path):
    cal = calibrate(tiny_fit, n_draws=50)
    assert cal.n_draws == 50 and cal.judges == ["J1", "J2", "J3"]
    assert "NOT CONVERGED" in repr(cal)
    cal.save(tmp_path / "cal")
    with pytest.raises(FitIOError, match="--force"):
        cal.save(tmp_path / "cal")
    back = load_calibration(tmp_path / "cal")
    xr.testing.assert_identical(back.draws, cal.draws)
    assert back.meta["session_time_mean"] == cal.meta["session_time_mean"]
    sc = score(tiny_trial.to_rating_data(), back, seed=3)
    assert list(sc.columns) == [*SCORE_COLUMNS, "converged"]
    assert not sc["converged"].any()  # the tiny fit did not converge: scores say so
    assert "NOT CONVERGED" in sc.attrs["diagnostics"]
    # an edited calibration is refused
    meta = json.loads((tmp_path / "cal" / "calibration.json").read_text())
    meta["draws_hash"] = "0" * 16
    (tmp_path / "cal" / "calibration.json").write_text(json.dumps(meta))
    with pytest.raises(FitIOError, match="hash mismatch"):
        load_calibration(tmp_path / "cal")


def test_cli_calibrate_and_score(tiny_fit, tiny_trial, tmp_path, capsys):
    from caltars_bayes.cli import main

    fitdir = tmp_path / "fit"
    tiny_fit.save(fitdir)
    ratings = tmp_path / "new.csv"
    r = tiny_trial.ratings
    new = r[r["subject"].isin(["P01", "P02"])].copy()
    new.loc[new["judge"] == "J3", "judge"] = "NEW"
    new.to_csv(ratings, index=False)
    log = tmp_path / "run.log"
    cal_args = ["calibrate", str(fitdir), "--out", str(tmp_path / "cal"), "--draws", "40"]
    assert main([*cal_args, "--quiet", "--log", str(log)]) == 0
    for cal_dir in (tmp_path / "cal", fitdir):  # a fit directory works as a calibration too
        out = tmp_path / f"scores_{cal_dir.name}"
        args = ["score", str(ratings), "--calibration", str(cal_dir), "--out", str(out)]
        rc = main([*args, "--quiet", "--log", str(log)])
        assert rc == 0
        sc = pd.read_csv(out / "scores.csv", keep_default_na=False)
        assert list(sc.columns) == [*SCORE_COLUMNS, "converged"]
        assert set(sc["subject"]) == {"P01", "P02"}
        nj = pd.read_csv(out / "new_judges.csv")
        assert set(nj["judge"]) == {"NEW"}
        assert (out / "data_report.json").is_file() and (out / "score_report.json").is_file()
    printed = capsys.readouterr()
    assert "NOT CONVERGED" in printed.out and "judge NEW" in printed.out
    # --quiet: no progress on the terminal; the log has it, and every printed line
    assert "score: calibration draws" not in printed.err + printed.out
    logged = [line[20:] for line in log.read_text().splitlines()]  # after the timestamp
    assert logged[0].startswith("caltars-bayes calibrate ") and "keeping 40 of its draws" in logged
    assert set(printed.out.splitlines()) <= set(logged)
    done = [x.split("]")[0] for x in logged if re.match(r"\[(\d+)/\1\] score: calibration", x)]
    # the last line of each score run counts all its calibration draws: the 40 kept,
    # and the tiny fit's 2 x 60 when its directory is the calibration
    assert done == ["[40/40", "[120/120"]
    rc = main(["score", str(ratings), "--calibration", str(tmp_path / "cal"), "--out", str(out)])
    assert rc == 2 and "--force" in capsys.readouterr().err


# --------------------------------------------------------------------------- proof (slow)


def _describe_draws(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sd over the first axis (stacked draws)."""
    return x.mean(axis=0), x.std(axis=0, ddof=1)


@pytest.mark.slow
def test_calibrated_scoring_recovers_truth_and_agrees_with_joint_refit(calibration_fits):
    """Calibrate on A (MCMC), score B; compare with the truth and with a joint refit of A+B.

    Tolerance for the joint refit: the two targets differ (the joint fit also
    updates the instrument and populations with B, a third of the data here) and
    both carry Monte Carlo error (the short joint fit has bulk ESS ~100, i.e.
    ~0.1 posterior SD on a mean), so the means must agree to a fraction of the
    posterior SD: on average within 0.25 SD, every one within 0.8 SD, and the
    SDs within 20% of each other on median.
    """
    from caltars_bayes.inference.fit import fit_model

    trial, data, fit_a = (
        calibration_fits["trial"],
        calibration_fits["data"],
        calibration_fits["fit_A"],
    )
    a_subjects = list(calibration_fits["A"].subjects)
    cal = calibrate(fit_a, n_draws=500)
    res = score_trial(calibration_fits["B"], cal, seed=5)
    # truth in the calibration's frame: origin at trial A's average subject
    th, eta = _truth_frames(trial)
    shift = th[th["subject"].isin(a_subjects)].groupby("scale")["true"].mean()
    th["true"] -= th["scale"].map(shift)
    eta["true"] -= eta["scale"].map(shift)
    ninety = res.intervals(0.9)
    sub = ninety[ninety["level"] == "subject"].merge(th, on=["subject", "scale"])
    ses = ninety[ninety["level"] == "session"].merge(eta, on=["subject", "session", "scale"])
    assert len(sub) == 15 * 4 and len(ses) == 30 * 4
    both = pd.concat([sub, ses])
    assert np.corrcoef(sub["mean"], sub["true"])[0, 1] >= 0.85
    assert np.corrcoef(ses["mean"], ses["true"])[0, 1] >= 0.85
    cover = ((both["true"] >= both["hdi_low"]) & (both["true"] <= both["hdi_high"])).mean()
    assert 0.8 <= cover <= 0.97

    joint = fit_model(data, draws=250, tune=250, chains=2, random_seed=4, progressbar=False)
    theta = joint.posterior["theta"].stack(s=("chain", "draw")).transpose("s", "subject", "scale")
    origin = theta.sel(subject=a_subjects).mean("subject")  # A's average subject, per draw
    b_theta = (theta - origin).sel(subject=list(calibration_fits["B"].subjects))
    m, s = _describe_draws(b_theta.values)
    ref = pd.DataFrame(
        {
            "subject": np.repeat(b_theta["subject"].values, 4),
            "scale": np.tile(b_theta["scale"].values, len(b_theta["subject"])),
            "joint_mean": m.ravel(),
            "joint_sd": s.ravel(),
        }
    )
    cmp = res.scores[res.scores["level"] == "subject"].merge(ref, on=["subject", "scale"])
    z = (cmp["mean"] - cmp["joint_mean"]).abs() / cmp["joint_sd"]
    assert z.mean() <= 0.25 and z.max() <= 0.8, z.describe()
    assert 0.8 <= (cmp["sd"] / cmp["joint_sd"]).median() <= 1.25


@pytest.mark.slow
def test_mcmc_calibration_flags_a_severe_new_judge(calibration_fits):
    """With the panel's population estimated from 3 judges, a severe new judge is caught."""
    trial, fit_a = calibration_fits["trial"], calibration_fits["fit_A"]
    b = list(calibration_fits["B"].subjects)
    r = trial.ratings
    parts = [
        r[r["subject"].isin(b) & (r["judge"] == "J1")],
        simulate_ratings(trial, {"SEVERE": (2.0, 1.0), "ORDINARY": (0.1, 1.05)}, b, seed=8),
    ]
    data = RatingData.from_frame(pd.concat(parts), trial.instrument, layout="long")
    res = score_trial(data, calibrate(fit_a, n_draws=500), seed=2)
    drift = res.new_judges.groupby("judge")["drift"].first().to_dict()
    assert drift == {"ORDINARY": False, "SEVERE": True}
    severe = res.new_judges.query("judge == 'SEVERE' and parameter == 'severity'")
    assert severe["flagged"].all() and set(severe["direction"]) == {"severe"}
