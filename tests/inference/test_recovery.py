"""Parameter recovery on simulated trials with known truth (MCMC; marked slow).

Fits are shortened (2 chains x 300 + 300; one chain per core) to keep CI fast; coverage is checked
as a band pooled over parameters and seeds, as the issue asks: 90% intervals
should cover the truth for about 90% of judge, item and factor-correlation
parameters.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import xarray as xr

from caltars_bayes.inference.fit import fit_model
from caltars_bayes.model.build import AllianceModel
from caltars_bayes.model.simulate import simulate_trial

pytestmark = pytest.mark.slow

# The package's default backend (numba), not the JAX backend the other tests use
# (tests/conftest.py): these fits are large enough that sampling dominates, and
# nutpie's JAX backend costs about 4.5x numba per gradient (founding design: 1.19
# against 0.27 ms, measured 2026-12-07). In CI runs (two test files at a time,
# this machine's numba cache warm) this file's tests took 103 s against 346 s
# under JAX; alone with empty caches, 300 s (each of its graphs compiled once).
NUMBA = {"backend": "numba"}
DRAWS = dict(draws=300, tune=300, chains=2, progressbar=False, nuts=NUMBA)


def _interval(da: xr.DataArray, prob: float = 0.9) -> tuple[xr.DataArray, xr.DataArray]:
    q = (1 - prob) / 2
    return da.quantile(q, dim=("chain", "draw")), da.quantile(1 - q, dim=("chain", "draw"))


def covered(fit, truth: xr.Dataset, names: list[str]) -> np.ndarray:
    """For each named parameter element: is the truth inside the 90% interval?"""
    out = []
    post = fit.posterior
    for n in names:
        if n not in post:
            continue
        lo, hi = _interval(post[n])
        t = truth[n]
        if n == "factor_corr":
            k = t.sizes["scale"]
            iu = np.triu_indices(k, 1)
            lo_v, hi_v, t_v = (np.asarray(a.transpose("scale", "scale2"))[iu] for a in (lo, hi, t))
        else:
            t, lo, hi = xr.align(t, lo, hi, join="exact")
            lo_v, hi_v, t_v = (np.ravel(a.transpose(*t.dims).values) for a in (lo, hi, t))
        out.append((t_v >= lo_v) & (t_v <= hi_v))
    return np.concatenate(out)


def theta_correlations(fit, truth: xr.Dataset) -> np.ndarray:
    est = fit.posterior["theta"].mean(("chain", "draw"))
    tru = truth["theta"].sel(subject=est.subject)
    return np.array(
        [np.corrcoef(est.sel(scale=k), tru.sel(scale=k))[0, 1] for k in est.scale.values]
    )


PARAMS = ["severity", "discrimination", "loading", "cutpoints", "factor_corr"]


def _founding_fit(caltars, seed: int):
    trial = simulate_trial(caltars, seed=seed, factor_corr=_corr(caltars, seed))
    return trial, fit_model(trial.to_rating_data(), random_seed=seed, **DRAWS)


@pytest.fixture(scope="session")
def founding_fits(caltars):
    """One seeded founding-design trial in CI; `make test-long` pools a second one."""
    return [_founding_fit(caltars, 11)]


def _corr(inst, seed: int) -> np.ndarray:
    """A varied, valid factor correlation matrix (some near zero, some strong)."""
    rng = np.random.default_rng(seed)
    k = len(inst.scale_codes)
    a = rng.normal(size=(k, 2 * k))
    s = a @ a.T
    d = np.sqrt(np.diag(s))
    return s / np.outer(d, d)


def _check_founding(fits) -> None:
    cov = np.concatenate([covered(f, t.truth, PARAMS) for t, f in fits])
    assert cov.size > 150 * len(fits)
    rate = cov.mean()
    assert 0.75 <= rate <= 0.98, f"90% intervals cover {rate:.1%} of parameters"
    for t, f in fits:
        r = theta_correlations(f, t.truth)
        assert (r >= 0.9).all(), r
        # against the correlation of this sample's true scores: with 52 subjects the
        # population value is itself off by up to ~.25 (measured: max |pop - sample|
        # .27 for seed 11), which no estimator of this trial can recover
        est = f.posterior["factor_corr"].mean(("chain", "draw"))
        err = np.abs(est.values - t.truth["factor_corr_sample"].values)
        assert err.max() <= 0.15, err.max()


def test_founding_design_recovery(founding_fits):
    _check_founding(founding_fits)


@pytest.mark.long
def test_founding_design_recovery_two_seeds(founding_fits, caltars):
    fits = [*founding_fits, _founding_fit(caltars, 12)]
    _check_founding(fits)
    assert all(f.diagnostics.divergences == 0 for _, f in fits)


def test_founding_design_has_no_divergences_at_defaults(founding_fits):
    for _, f in founding_fits:
        assert f.diagnostics.divergences == 0
        assert f.diagnostics.max_rhat < 1.05


def test_sparse_many_judges_recovery(caltars):
    trial = simulate_trial(
        caltars,
        n_subjects=60,
        n_sessions=3,
        n_judges=40,
        judges_per_session=2,
        seed=21,
        factor_corr=0.4,
    )
    data = trial.to_rating_data()
    fit = fit_model(data, random_seed=21, **DRAWS)
    assert not fit.plan.centred_judges  # sparse judges are non-centred
    cov = covered(fit, trial.truth, PARAMS)
    assert 0.75 <= cov.mean() <= 0.98, cov.mean()
    assert (theta_correlations(fit, trial.truth) >= 0.85).all()
    assert fit.diagnostics.divergences == 0


def test_joint_form_recovery(caltars):
    """``parameterisation = "joint"`` (subject factors through each subject's
    average session alliance) fits the same model: it recovers a trial with
    unequal numbers of sessions per subject as the default form does."""
    trial = simulate_trial(caltars, n_subjects=40, min_sessions=2, seed=31, factor_corr=0.4)
    data = trial.to_rating_data()
    assert np.unique(np.bincount(np.asarray(data.session_subject_idx))).size > 1
    options = replace(data.instrument.model, parameterisation="joint")
    fit = fit_model(data, model=AllianceModel(data, options=options), random_seed=31, **DRAWS)
    assert fit.plan.joint_subject_sessions
    cov = covered(fit, trial.truth, [*PARAMS, "sd_session", "sd_alliance"])
    assert 0.75 <= cov.mean() <= 0.98, cov.mean()
    # 2-4 sessions per subject (fewer ratings than the founding design's 4): the
    # posterior means' correlation with the truth is itself about 0.9 for some
    # scales (0.899 seen in CI), so the bar is the sparse design's 0.85
    assert (theta_correlations(fit, trial.truth) >= 0.85).all()
    est = fit.posterior["zeta"].mean(("chain", "draw"))
    tru = trial.truth["zeta"].sel(session=est.session)
    r = [np.corrcoef(est.sel(scale=k), tru.sel(scale=k))[0, 1] for k in est.scale.values]
    assert min(r) > 0.5, r
    assert fit.diagnostics.divergences == 0
    assert fit.diagnostics.max_rhat < 1.05


def test_self_report_single_judge(tmp_path):
    from caltars_bayes.spec.instrument import load_instrument

    spec = tmp_path / "self.toml"
    spec.write_text(
        '[instrument]\nname = "SELF"\nrater = "self-report"\n[response]\nmin = 0\nmax = 4\n'
        f"[[scale]]\ncode = 'A'\nitems = {[f'A{i}' for i in range(1, 9)]}\n"
        f"[[scale]]\ncode = 'B'\nitems = {[f'B{i}' for i in range(1, 9)]}\n"
    )
    inst = load_instrument(spec)
    trial = simulate_trial(inst, n_subjects=150, n_sessions=4, n_judges=1, factor_corr=0.5, seed=31)
    ratings = trial.ratings.drop(columns="judge")  # self-report files have no judge column
    from caltars_bayes.data.ratings import RatingData

    data = RatingData.from_frame(ratings, inst, layout="long")
    fit = fit_model(data, random_seed=31, **DRAWS)
    # 600 sessions: a large design (joint form, data start) with too few session
    # deviations (1,200) for the shorter cap, so this checks recovery with those defaults
    assert fit.plan.large_design and fit.record.start == "data"
    assert not fit.plan.short_trajectory_cap
    assert not fit.plan.judge_severity and not fit.plan.judge_discrimination
    assert any("only one judge" in n for n in data.report.design_notes)
    est = fit.posterior["theta"].mean(("chain", "draw"))
    tru = trial.truth["theta"]
    for k in ("A", "B"):
        assert np.corrcoef(est.sel(scale=k), tru.sel(scale=k).values)[0, 1] >= 0.9
    cov = covered(fit, trial.truth, ["loading", "cutpoints", "factor_corr"])
    assert 0.75 <= cov.mean() <= 0.98, cov.mean()


def test_three_judge_single_scale_has_no_divergences():
    """The anchor benchmark's one-scale trial (3 judges, 6 items, 3,744 ratings).

    brms and hand-written PyMC models of it diverged 20-37 times in 4 x 1000
    draws. With the previous Gamma(2, .) judge-SD priors this model diverged
    too: 12-17 times in 4 x 1000 draws, and 33, 4 and 1 times in this test's
    2 x (500 + 500) setting with seeds 1, 2, 3 (0, 0, 0 now). The divergent
    draws sat at sd_log_discrimination near 0, where three centred log
    discriminations are squeezed together; the Gamma(4, .) priors keep that
    SD off zero.

    Since nutpie's trajectories are capped (``sampling.NUTPIE_DEFAULTS``) this fit
    takes 15 leapfrog steps per draw instead of 22-24, and the test samples 1000
    draws per chain instead of 500: about the same leapfrog steps (49,700) as
    before. Measured, seed 2: max R-hat 1.011 and min bulk ESS 457 now, against
    1.015 and 260 uncapped with 500 draws (1.025 and 211 capped with 500).
    """
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "single_scale.py"
    spec = importlib.util.spec_from_file_location("bench_single_scale", path)
    single = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(single)
    data = single.single_scale_data(single.simulate_bench_trial())
    settings = {**DRAWS, "draws": 1000, "tune": 500}  # 2 x (500 + 1000), no extension
    fit = fit_model(data, random_seed=2, max_draws=1000, **settings)
    assert fit.plan.centred_judges
    assert fit.diagnostics.divergences == 0
    assert fit.diagnostics.max_rhat < 1.02
