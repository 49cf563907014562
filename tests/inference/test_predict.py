"""Predictions in numpy: the linear predictor and log densities against the PyMC graph,
the integrated session likelihood against brute-force quadrature, replicated
ratings against exact category probabilities. No MCMC."""

from __future__ import annotations

import dataclasses

import numpy as np
import pymc as pm
import pytensor
import pytest
from scipy.special import expit, logsumexp
from synthetic import posterior_from_truth, prior_fit, synthetic_fit

from caltars_bayes.data.ratings import RatingData
from caltars_bayes.inference import predict
from caltars_bayes.model.density import (
    cumulative_logit_derivatives,
    cumulative_logit_logp,
    pad_cutpoints,
)
from caltars_bayes.model.simulate import simulate_trial


def _with_options(inst, **options):
    return dataclasses.replace(inst, model=dataclasses.replace(inst.model, **options))


VARIANTS = {
    # judge x subject interaction, session trend, missing ratings
    "interaction_trend": (
        {"judge_subject_interaction": True, "session_trend": True},
        {"n_judges": 3, "sd_interaction": 0.5, "session_trend": 0.2, "missing_rate": 0.1},
    ),
    # bifactor: general factor over all items
    "bifactor": ({"bifactor": True}, {"n_judges": 2}),
    # one judge (no judge effects), cutpoints per scale
    "one_judge_scale_cutpoints": ({"cutpoints": "scale"}, {"n_judges": 1}),
}


@pytest.fixture(scope="module", params=list(VARIANTS))
def prior_case(request, calpas):
    options, design = VARIANTS[request.param]
    inst = _with_options(calpas, **options)
    trial = simulate_trial(inst, n_subjects=6, n_sessions=3, seed=2, **design)
    data = RatingData.from_frame(trial.ratings, inst, layout="long")
    fit, am = prior_fit(data, draws=6)
    return request.param, fit, am


def test_linear_predictor_and_loglik_match_the_pymc_graph(prior_case):
    name, fit, am = prior_case
    m = am.model
    rv = m["rating"]
    mu_graph = rv.owner.inputs[2]  # CustomDist inputs: rng, size, mu, cutpoints, row
    logp_graph = pm.logp(rv, np.asarray(fit.data.y))
    fn = pytensor.function(
        m.free_RVs, [mu_graph, logp_graph], on_unused_input="ignore", mode="FAST_COMPILE"
    )
    mu = predict.linear_predictor(fit)
    ll = predict.log_likelihood(fit, by="rating")
    assert mu.dims == ("chain", "draw", "obs") and ll.dims == ("chain", "draw", "obs")
    post = fit.posterior
    plan = fit.plan
    if name == "interaction_trend":
        assert plan.judge_subject_interaction and plan.session_trend
    if name == "bifactor":
        assert plan.bifactor and "general" in post
    if name == "one_judge_scale_cutpoints":
        assert "severity" not in post and post["cutpoints"].dims[2] == "scale"
    for d in range(post.sizes["draw"]):
        vals = [post[v.name].isel(chain=0, draw=d).values for v in m.free_RVs]
        mu_ref, lp_ref = fn(*vals)
        np.testing.assert_allclose(mu.isel(chain=0, draw=d).values, mu_ref, rtol=0, atol=1e-12)
        np.testing.assert_allclose(ll.isel(chain=0, draw=d).values, lp_ref, rtol=1e-10, atol=1e-9)


@pytest.fixture(scope="module")
def near_truth(calpas):
    inst = _with_options(calpas, judge_subject_interaction=True)
    trial = simulate_trial(inst, n_subjects=5, n_sessions=3, n_judges=2, seed=4, sd_interaction=0.3)
    data = RatingData.from_frame(trial.ratings, inst, layout="long")
    post = posterior_from_truth(trial, data, n_chains=2, n_draws=3, noise=0.1, seed=1)
    return trial, synthetic_fit(data, post)


def test_grouped_loglik_is_the_sum_of_rating_logliks(near_truth):
    _, fit = near_truth
    data = fit.data
    by_rating = predict.log_likelihood(fit, by="rating").values
    by_session = predict.log_likelihood(fit, by="session")
    by_subject = predict.log_likelihood(fit, by="subject")
    assert list(by_session["session"].values) == list(data.session_labels)
    assert list(by_subject["subject"].values) == list(data.subjects)
    for s in range(data.n_sessions):
        np.testing.assert_allclose(
            by_session.values[..., s], by_rating[..., data.session_idx == s].sum(-1), rtol=1e-12
        )
    np.testing.assert_allclose(by_subject.values.sum(-1), by_rating.sum(-1), rtol=1e-12)
    thin = predict.log_likelihood(fit, by="session", draws=[0, 2])
    np.testing.assert_array_equal(thin["draw"].values, [0, 2])
    np.testing.assert_allclose(thin.values, by_session.values[:, [0, 2]])
    with pytest.raises(ValueError, match="by must be"):
        predict.log_likelihood(fit, by="judge")


def test_small_chunks_give_the_same_values(near_truth, monkeypatch):
    _, fit = near_truth
    full = predict.log_likelihood(fit, by="session", marginal=True).values
    rating = predict.log_likelihood(fit, by="rating").values
    monkeypatch.setattr(predict, "CHUNK_ELEMENTS", 50)  # one draw per chunk
    np.testing.assert_allclose(predict.log_likelihood(fit, by="session", marginal=True), full)
    np.testing.assert_allclose(predict.log_likelihood(fit, by="rating"), rating)


def test_integrated_session_loglik_matches_brute_force_quadrature(near_truth):
    """Each session's deviations integrated over Normal(0, sd_session) on a fine grid."""
    _, fit = near_truth
    data = fit.data
    marg = predict.log_likelihood(fit, by="session", marginal=True)
    d = predict.posterior_draws(fit.posterior, data)
    y = np.asarray(data.y)
    grid = np.linspace(-8, 8, 6401)
    step = grid[1] - grid[0]
    for n in range(d.n_samples):
        sl = slice(n, n + 1)
        mu0, slope = predict._mu(d, data, sl, with_zeta=False)
        lo, hi = predict._bounds(d, y, sl, slice(None))
        for s in range(data.n_sessions):
            total = 0.0
            for k in range(data.n_scales):
                sel = (data.session_idx == s) & (data.scale_idx == k)
                mu = mu0[0, sel][None, :] + slope[0, sel][None, :] * grid[:, None]
                lp = cumulative_logit_logp(mu, lo[0, sel][None], hi[0, sel][None]).sum(1)
                sd = d.sd_session[n, k]
                lp = lp - 0.5 * (grid / sd) ** 2 - np.log(sd * np.sqrt(2 * np.pi))
                total += logsumexp(lp) + np.log(step)
            chain, draw = divmod(n, fit.posterior.sizes["draw"])
            assert marg.values[chain, draw, s] == pytest.approx(total, abs=1e-5)
    # integrating never gives the conditional value (the deviations are not fixed) ...
    cond = predict.log_likelihood(fit, by="session")
    assert not np.allclose(marg, cond)
    # ... and without a session level there is nothing to integrate
    flat = fit.posterior.drop_vars(["zeta", "sd_session"])
    nolevel = synthetic_fit(data, flat)
    np.testing.assert_allclose(
        predict.log_likelihood(nolevel, by="session", marginal=True),
        predict.log_likelihood(nolevel, by="session"),
    )


def test_density_derivatives_match_finite_differences():
    """model.density: log density against the plain formula, its derivatives in mu
    against central differences, in the middle of the scale and far in both tails."""
    rng = np.random.default_rng(0)
    n = 400
    cut = np.sort(rng.normal(0, 2, size=(n, 4)), axis=1)
    y = rng.integers(0, 5, size=n)
    padded = pad_cutpoints(cut)
    assert padded.shape == (n, 6) and (padded[:, 0] < -1e9).all() and (padded[:, -1] > 1e9).all()
    lo, hi = padded[np.arange(n), y], padded[np.arange(n), y + 1]
    mu = np.concatenate([rng.normal(0, 3, size=n - 40), np.full(20, 25.0), np.full(20, -25.0)])

    def lp(m):
        return cumulative_logit_logp(m, lo, hi)

    def d1_of(m):
        return cumulative_logit_derivatives(m, lo, hi)[0]

    d1, d2 = cumulative_logit_derivatives(mu, lo, hi)
    plain = np.log(expit(hi - mu) - expit(lo - mu))
    ok = plain > -20  # the plain formula cancels in the tails; the safe side does not
    np.testing.assert_allclose(lp(mu)[ok], plain[ok], rtol=1e-10, atol=1e-14)
    assert np.isfinite(lp(mu)).all()
    h = 1e-5
    np.testing.assert_allclose(d1, (lp(mu + h) - lp(mu - h)) / (2 * h), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(d2, (d1_of(mu + h) - d1_of(mu - h)) / (2 * h), rtol=1e-6, atol=1e-9)
    h2 = 1e-4  # second differences of the log density itself
    fd2 = (lp(mu + h2) - 2 * lp(mu) + lp(mu - h2)) / h2**2
    np.testing.assert_allclose(d2, fd2, rtol=1e-4, atol=1e-4)
    assert (d2 <= 0).all()  # concave in mu


def test_replicated_ratings_follow_the_category_probabilities(calpas):
    trial = simulate_trial(calpas, n_subjects=6, n_sessions=2, n_judges=2, seed=9)
    data = trial.to_rating_data()
    post = posterior_from_truth(trial, data, n_chains=1, n_draws=400, constant=True)
    fit = synthetic_fit(data, post)
    rep = predict.replicate_ratings(fit, n_draws=400, seed=3)
    assert rep.dims == ("sample", "obs") and rep.shape == (400, data.n_ratings)
    assert rep.values.min() >= 0 and rep.values.max() < calpas.n_categories
    # exact P(y = c) from the truth, independently of the package
    t = trial.truth
    mu = predict.linear_predictor(fit, draws=[0]).values[0, 0]
    tau = t["cutpoints"].sel(item=list(data.items)).values[data.item_idx]
    cum = np.column_stack([np.zeros(len(mu)), expit(tau - mu[:, None]), np.ones(len(mu))])
    prob = np.diff(cum, axis=1)  # (obs, C)
    counts = np.stack([(rep.values == c).sum(0) for c in range(calpas.n_categories)], axis=1)
    expected = prob.sum(0) * 400
    sd = np.sqrt((prob * (1 - prob)).sum(0) * 400)
    z = (counts.sum(0) - expected) / sd
    assert np.all(np.abs(z) < 4), z
    # per rating: the most likely category is the most frequent one when it clearly dominates
    clear = prob.max(1) > 0.7
    assert (counts[clear].argmax(1) == prob[clear].argmax(1)).mean() > 0.95
    again = predict.replicate_ratings(fit, n_draws=400, seed=3)
    np.testing.assert_array_equal(again.values, rep.values)
    other = predict.replicate_ratings(fit, n_draws=400, seed=4)
    assert (other.values != rep.values).mean() > 0.1
