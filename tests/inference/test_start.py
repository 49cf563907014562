"""Data-based starting values (caltars_bayes.inference.start)."""

from __future__ import annotations

import numpy as np
import pytest
from pymc.initial_point import make_initial_point_fn

import caltars_bayes.inference.sampling as sampling
from caltars_bayes import AllianceModel, fit_model, simulate_trial
from caltars_bayes.inference.start import rating_scores, starting_values
from caltars_bayes.spec.instrument import ModelOptions


@pytest.fixture(scope="module")
def trial(caltars):
    return simulate_trial(caltars, n_subjects=80, seed=4)


def test_rating_scores_are_ordered_and_centred(trial):
    data = trial.to_rating_data()
    score, cuts = rating_scores(data, data.instrument.n_categories)
    assert np.all(np.diff(cuts, axis=1) > 0)
    y, item = np.asarray(data.y), np.asarray(data.item_idx)
    for i in range(3):  # a higher category always scores higher within an item
        s = [score[(item == i) & (y == c)] for c in range(data.instrument.n_categories)]
        means = [v.mean() for v in s if v.size]
        assert np.all(np.diff(means) > 0)
    assert abs(np.median(score)) < 1.0


@pytest.mark.parametrize("parameterisation", ["centred", "noncentred", "joint"])
def test_starting_values_track_the_truth(trial, parameterisation):
    data = trial.to_rating_data()
    am = AllianceModel(data, options=ModelOptions(parameterisation=parameterisation))
    start = starting_values(data, am.plan, data.instrument.n_categories)
    free = {rv.name for rv in am.model.free_RVs}
    assert set(start) <= free, set(start) - free  # only the model's own variables
    if am.plan.joint_subject_sessions:  # the subject's average over its sessions
        theta = start["subject_mean"]
        assert set(start) >= {"subject_mean", "theta_z", "zeta_z"}
    elif am.plan.centred_subjects:
        theta = start["theta_raw"]
    else:
        theta = start["theta_z"] * start["sd_alliance"]
    true_theta = trial.truth["theta"].values
    for k in range(data.n_scales):
        assert np.corrcoef(theta[:, k], true_theta[:, k])[0, 1] > 0.8
    sev = (
        start["severity"]
        if am.plan.centred_judges
        else (start["severity_z"] * start["sd_severity"])
    )
    np.testing.assert_allclose(sev.sum(axis=1), 0.0, atol=1e-12)  # zero-sum over judges
    true_sev = trial.truth["severity"].values.T  # scale x judge
    assert np.corrcoef(sev.ravel(), true_sev.ravel())[0, 1] > 0.5
    cut = start["cutpoints"]
    assert np.all(np.diff(cut, axis=1) > 0)
    assert np.corrcoef(cut.ravel(), trial.truth["cutpoints"].values.ravel())[0, 1] > 0.8
    # the start is far more probable than the default one
    m = am.model
    logp = m.compile_logp()
    default = float(logp(m.initial_point()))
    # the same route nutpie and pm.sample take: overrides on the constrained scale
    point = make_initial_point_fn(model=m, overrides=start, return_transformed=True)(0)
    assert float(logp(point)) > default + 1000


def test_fit_passes_data_based_starts_to_the_sampler(trial, monkeypatch):
    data = simulate_trial(trial.instrument, n_subjects=6, n_sessions=2, seed=1).to_rating_data()
    seen = {}
    real = sampling.compile_nutpie

    def spy(model, backend, initial_points=None, gradient_backend=None, var_names=None):
        seen["initial_points"] = initial_points
        return real(model, backend, initial_points, gradient_backend, var_names)

    monkeypatch.setattr(sampling, "compile_nutpie", spy)
    fit = fit_model(data, draws=20, tune=20, chains=2, start="data", progressbar=False)
    assert seen["initial_points"] is not None and "cutpoints" in seen["initial_points"]
    assert fit.posterior["theta"].shape[:2] == (2, 20)
    with pytest.raises(ValueError, match="start"):
        fit_model(data, draws=5, tune=5, chains=1, start="prior", progressbar=False)
