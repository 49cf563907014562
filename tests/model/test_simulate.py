"""The trial simulator: reproducibility, design options, identification, covariates."""

from __future__ import annotations

import numpy as np
import pytest

from caltars_bayes.model.simulate import (
    FOUNDING_SESSION_COVARIATES,
    FOUNDING_SUBJECT_COVARIATES,
    simulate_trial,
)


def test_same_seed_same_trial_and_different_seed_differs(caltars):
    a = simulate_trial(caltars, n_subjects=8, seed=3, subject_covariates={"x": {"PPC": 0.5}})
    b = simulate_trial(caltars, n_subjects=8, seed=3, subject_covariates={"x": {"PPC": 0.5}})
    c = simulate_trial(caltars, n_subjects=8, seed=4, subject_covariates={"x": {"PPC": 0.5}})
    assert a.ratings.equals(b.ratings)
    assert a.covariates.equals(b.covariates)
    assert a.truth.identical(b.truth)
    assert not a.ratings["rating"].equals(c.ratings["rating"])


def test_founding_design_is_the_default(caltars):
    t = simulate_trial(caltars, seed=1)
    assert t.ratings.shape[0] == 52 * 4 * 3 * 30
    assert t.ratings["subject"].nunique() == 52
    assert t.ratings["judge"].nunique() == 3
    assert t.ratings.groupby("subject")["session"].nunique().eq(4).all()
    assert t.ratings["rating"].between(1, 5).all()
    # every category is used
    assert set(t.ratings["rating"].unique()) == {1, 2, 3, 4, 5}


def test_identification_constraints_hold_in_truth(caltars):
    t = simulate_trial(caltars, n_subjects=20, n_judges=4, seed=2).truth
    np.testing.assert_allclose(t["severity"].sum("judge"), 0.0, atol=1e-12)
    np.testing.assert_allclose(np.log(t["discrimination"]).sum(), 0.0, atol=1e-12)
    log_l = np.log(t["loading"]).groupby(t["item_scale"]).sum()
    np.testing.assert_allclose(log_l, 0.0, atol=1e-12)
    np.testing.assert_allclose(t["theta"].mean("subject"), 0.0, atol=1e-12)
    assert (np.diff(t["cutpoints"].values, axis=1) > 0).all()


def test_sparse_unequal_design(caltars):
    t = simulate_trial(
        caltars,
        n_subjects=30,
        n_sessions=6,
        min_sessions=2,
        n_judges=40,
        judges_per_session=2,
        seed=5,
    )
    r = t.ratings
    per_session = r.groupby(["subject", "session"])["judge"].nunique()
    assert per_session.eq(2).all()
    n_ses = r.groupby("subject")["session"].nunique()
    assert n_ses.min() >= 2 and n_ses.max() <= 6 and n_ses.nunique() > 1
    assert r["judge"].nunique() > 20
    assert len(t.truth.session) == len(per_session)


def test_missing_rate_and_reverse_keys(tmp_path):
    from caltars_bayes.spec.instrument import load_instrument

    spec = tmp_path / "s.toml"
    spec.write_text(
        '[instrument]\nname = "T"\nreverse_keyed = ["A2"]\n[response]\nmin = 1\nmax = 4\n'
        '[[scale]]\ncode = "A"\nitems = ["A1", "A2", "A3"]\n'
    )
    inst = load_instrument(spec)
    t = simulate_trial(inst, n_subjects=400, n_sessions=1, n_judges=1, missing_rate=0.2, seed=1)
    full = 400 * 3
    assert 0.15 < 1 - len(t.ratings) / full < 0.25
    # a reverse-keyed item's raw rating is negatively related to the factor
    th = t.truth["theta"].to_series()
    r = t.ratings.pivot_table(index="subject", columns="item", values="rating")
    assert r["A1"].corr(th.loc[r.index]) > 0.3
    assert r["A2"].corr(th.loc[r.index]) < -0.3


def test_latent_covariate_correlations_and_attenuation(caltars):
    """Latent r is as asked; observed scale means give the attenuated r.

    With uncorrelated factors and a covariate related to one factor only,
    corr(observed mean, x) = r * corr(observed mean, theta) in the population.
    """
    r_true = 0.5
    t = simulate_trial(
        caltars,
        n_subjects=3000,
        n_sessions=2,
        n_judges=2,
        factor_corr=0.0,
        subject_covariates={"x": {"PPC": r_true}},
        seed=11,
    )
    x = t.covariates.set_index("subject")["x"]
    theta = t.truth["theta"].sel(scale="PPC").to_series()
    assert np.corrcoef(theta, x.loc[theta.index])[0, 1] == pytest.approx(r_true, abs=0.04)
    ppc = t.ratings[t.ratings["item"].str.startswith("PPC")]
    means = ppc.groupby("subject")["rating"].mean()
    r_obs = np.corrcoef(means, x.loc[means.index])[0, 1]
    rel = np.corrcoef(means, theta.loc[means.index])[0, 1]
    assert r_obs < r_true  # attenuated
    assert r_obs == pytest.approx(r_true * rel, abs=0.04)


def test_founding_covariates_are_feasible_and_signed(caltars):
    t = simulate_trial(
        caltars,
        n_subjects=2000,
        subject_covariates=FOUNDING_SUBJECT_COVARIATES,
        session_covariates=FOUNDING_SESSION_COVARIATES,
        seed=7,
    )
    assert list(t.covariates.columns[1:]) == list(FOUNDING_SUBJECT_COVARIATES)
    theta = t.truth["theta"].to_pandas()
    cov = t.covariates.set_index("subject").loc[theta.index]
    assert np.corrcoef(theta["PPC"], cov["motivation"])[0, 1] > 0.35
    assert np.corrcoef(theta["PPC"], cov["life_events"])[0, 1] < -0.25
    assert abs(np.corrcoef(theta["PPC"], cov["pretreatment_symptoms"])[0, 1]) < 0.07
    eta = t.truth["eta"].to_pandas()
    ses = t.session_covariates
    assert np.corrcoef(eta["PNC"], ses["resistance_emphasis"])[0, 1] > 0.3


def test_impossible_covariate_correlations_are_refused(caltars):
    with pytest.raises(ValueError, match="impossible"):
        simulate_trial(
            caltars,
            n_subjects=10,
            factor_corr=0.9,
            subject_covariates={"x": {"PPC": 0.9, "PNC": -0.9}},
            seed=1,
        )


def test_write_outputs(caltars, tmp_path):
    from caltars_bayes._core.errors import FitIOError

    t = simulate_trial(caltars, n_subjects=5, seed=1, subject_covariates={"x": {"PPC": 0.3}})
    paths = t.write(tmp_path / "sim")
    assert sorted(p.name for p in paths) == [
        "covariates.csv",
        "ratings.csv",
        "session_covariates.csv",
        "truth.nc",
    ]
    with pytest.raises(FitIOError, match="--force"):
        t.write(tmp_path / "sim")
    import xarray as xr

    back = xr.open_dataset(tmp_path / "sim" / "truth.nc", engine="h5netcdf").load()
    np.testing.assert_allclose(back["theta"], t.truth["theta"])
