"""Fit.to_datatree: the groups ArviZ reads, checked against direct computations,
and arviz_stats / arviz_plots run unchanged on the tree of the tiny fit."""

from __future__ import annotations

import arviz_base as azb
import arviz_plots as azp
import arviz_stats as azs
import matplotlib
import numpy as np
import pytest
import xarray as xr
from scipy.special import logsumexp

from caltars_bayes.inference.arviz_tree import with_session_coords
from caltars_bayes.inference.fit import load_fit
from caltars_bayes.inference.predict import (
    posterior_draws,
    rating_loglik,
    replicate_ratings,
    session_marginal_loglik,
)

matplotlib.use("Agg")
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::RuntimeWarning")


@pytest.fixture(scope="module")
def tree(tiny_fit):
    return tiny_fit.to_datatree(posterior_predictive=20)


@pytest.fixture(scope="module")
def rating_tree(tiny_fit):
    """Per-rating log likelihood and a replicate per draw: what plot_loo_pit needs."""
    return tiny_fit.to_datatree(log_likelihood="rating", posterior_predictive=10_000)


def _flat(da: xr.DataArray) -> np.ndarray:
    da = da.transpose("chain", "draw", ...)
    return da.values.reshape(-1, *da.shape[2:])


def test_observed_and_constant_data_are_the_ratings(tiny_fit, tree):
    data = tiny_fit.data
    obs = tree["observed_data"]["rating"]
    assert obs.dims == ("obs",)
    np.testing.assert_array_equal(obs.values, data.ratings["score"].to_numpy(dtype=int))
    np.testing.assert_array_equal(obs.values, data.y + data.instrument.response_min)
    for col in ("subject", "judge", "item"):
        np.testing.assert_array_equal(obs[col].values, data.ratings[col].astype(str).values)
    sessions = data.ratings["subject"].astype(str) + "|" + data.ratings["session"].astype(str)
    np.testing.assert_array_equal(obs["session"].values, sessions.values)
    const = tree["constant_data"]
    labels = {
        "subject": data.subjects,
        "session": data.session_labels,
        "judge": data.judges,
        "item": data.items,
    }
    for name, lab in labels.items():
        back = np.asarray(lab)[const[name].values]
        np.testing.assert_array_equal(back, obs[name].values)


def test_session_log_likelihood_is_predicts_marginal(tiny_fit, tree):
    ll = tree["log_likelihood"]["rating"]
    assert ll.dims == ("chain", "draw", "session")
    d = posterior_draws(tiny_fit.posterior, tiny_fit.data)
    direct = session_marginal_loglik(d, tiny_fit.data)
    np.testing.assert_allclose(_flat(ll), direct, rtol=1e-12)
    assert list(ll["session"].values) == list(tiny_fit.data.session_labels)


def test_rating_log_likelihood_is_predicts(tiny_fit, rating_tree):
    ll = rating_tree["log_likelihood"]["rating"]
    assert ll.dims == ("chain", "draw", "obs")
    d = posterior_draws(tiny_fit.posterior, tiny_fit.data)
    np.testing.assert_allclose(_flat(ll), rating_loglik(d, tiny_fit.data), rtol=1e-12)


def test_session_coordinates_group_by_subject(tiny_fit, tree):
    ll = tree["log_likelihood"]["rating"]
    sessions = tiny_fit.data.sessions
    np.testing.assert_array_equal(ll["subject"].values, sessions["subject"].values)
    np.testing.assert_array_equal(ll["session_number"].values, sessions["session_time"].values)
    per_subject = ll.groupby("subject").sum()
    first = sessions["subject"].iloc[0]
    rows = np.flatnonzero(sessions["subject"].values == first)
    np.testing.assert_allclose(
        per_subject.sel(subject=first).values, ll.isel(session=rows).sum("session").values
    )
    # in the posterior (which has a subject dim) the subject coordinate is session_subject
    post = tree["posterior"].to_dataset()
    xr.testing.assert_identical(post, with_session_coords(tiny_fit.posterior, tiny_fit.data))
    assert post["theta"]["subject"].dims == ("subject",)
    np.testing.assert_array_equal(post["session_subject"].values, sessions["subject"].values)
    np.testing.assert_array_equal(post["session_number"].values, sessions["session_time"].values)
    zeta_mean = post["zeta"].groupby("session_subject").mean()
    assert set(zeta_mean["session_subject"].values) == set(tiny_fit.data.subjects)
    np.testing.assert_allclose(
        zeta_mean.sel(session_subject=first).values,
        post["zeta"].isel(session=rows).mean("session").values,
    )
    # fit.posterior itself keeps only index coordinates
    assert "session_subject" not in tiny_fit.posterior.coords


def test_posterior_predictive_reuses_replicate_ratings(tiny_fit, rating_tree):
    pp = rating_tree["posterior_predictive"]["rating"]
    post = tiny_fit.posterior
    n_chain, n_draw = post.sizes["chain"], post.sizes["draw"]
    assert pp.dims == ("chain", "draw", "obs")
    assert pp.shape == (n_chain, n_draw, tiny_fit.data.n_ratings)
    rep = replicate_ratings(tiny_fit, n_draws=n_chain * n_draw, seed=0)
    np.testing.assert_array_equal(_flat(pp), rep.values + tiny_fit.data.instrument.response_min)


def test_thinned_posterior_predictive(tiny_fit, tree):
    pp = tree["posterior_predictive"]["rating"]
    assert pp.sizes["draw"] == 20 and pp.sizes["chain"] == tiny_fit.posterior.sizes["chain"]
    inst = tiny_fit.data.instrument
    assert pp.min() >= inst.response_min and pp.max() <= inst.response_max


def test_loo_elpd_is_the_sum_of_psis_pointwise_values(tiny_fit, tree):
    res = azs.loo(tree, pointwise=True)
    assert res.n_data_points == tiny_fit.data.n_sessions
    ll = tree["log_likelihood"]["rating"]
    n = ll.sizes["chain"] * ll.sizes["draw"]
    # r_eff as loo computes it: mean ESS of every posterior variable over the draws
    ess = tree["posterior"].to_dataset().azstats.ess(method="mean")
    reff = np.mean(np.hstack([v.values.ravel() for v in ess.data_vars.values()])) / n
    # PSIS weights of the leave-one-session-out ratios (psislw negates the log likelihood)
    lw, _ = ll.azstats.psislw(r_eff=reff, dim=["chain", "draw"])
    elpd_i = logsumexp(_flat(lw) + _flat(ll), axis=0)
    np.testing.assert_allclose(res.elpd_i.values, elpd_i, rtol=1e-10)
    assert res.elpd == pytest.approx(elpd_i.sum())


def test_compare_ranks_two_trees(tiny_fit, tree):
    worse = tree.copy()
    ll = tree["log_likelihood"].to_dataset()
    worse["log_likelihood"] = xr.DataTree(ll - 0.5)  # 0.5 nats worse on every session
    table = azs.compare({"fit": tree, "worse": worse})
    assert list(table.index) == ["fit", "worse"]
    # ArviZ 1: elpd_diff is the model's elpd minus the best one's
    assert table.loc["worse", "elpd_diff"] == pytest.approx(-0.5 * tiny_fit.data.n_sessions)


def test_plot_ppc_rootogram_draws_the_observed_counts(tree):
    pc = azp.plot_ppc_rootogram(tree)
    offsets = np.asarray(pc.viz["observed_markers"]["rating"].item().get_offsets(), dtype=float)
    counts = np.bincount(tree["observed_data"]["rating"].values)
    cats = offsets[:, 0].astype(int)
    np.testing.assert_array_equal(offsets[:, 1], counts[cats])
    assert offsets[:, 1].sum() == tree["observed_data"].sizes["obs"]
    pred = np.asarray(pc.viz["predictive_markers"]["rating"].item().get_offsets(), dtype=float)
    assert len(pred) == len(offsets)


def test_plot_loo_pit_draws_an_ecdf(rating_tree):
    pc = azp.plot_loo_pit(rating_tree)
    x = np.asarray(pc.viz["ecdf_lines"]["rating"].item().get_xdata(), dtype=float)
    assert len(x) > 10 and x.min() >= 0.0 and x.max() <= 1.0


def test_plot_forest_and_rank_on_the_posterior(tiny_fit, tree):
    post = tiny_fit.posterior["sd_session"]
    pc = azp.plot_forest(tree, var_names=["sd_session"])
    points = pc.viz["point_estimate"]["sd_session"]
    assert points.sizes == {"chain": post.sizes["chain"], "scale": post.sizes["scale"]}
    est = azb.rcParams["stats.point_estimate"]
    want = getattr(post, est)("draw") if est != "mode" else None
    if want is not None:
        for c in range(points.sizes["chain"]):
            for k in range(points.sizes["scale"]):
                x = np.asarray(points.values[c, k].get_offsets(), dtype=float)[0, 0]
                assert x == pytest.approx(float(want.values[c, k]))
    pc = azp.plot_rank(tree, var_names=["sd_session"])
    assert pc.viz["plot"]["sd_session"].size == post.sizes["scale"]
    assert pc.viz["ecdf_lines"]["sd_session"].shape == (post.sizes["scale"], post.sizes["chain"])


def test_generic_arviz_summary_still_works(tiny_fit, tree):
    # non-index coordinates on a dim only some variables have break arviz-base's
    # to_stacked_array: the documented way is session_coords=False (if a later
    # arviz-base accepts them, drop that advice from Fit.to_datatree's docstring)
    try:
        azs.summary(tree, var_names=["sd_session", "zeta"])
    except ValueError as err:
        assert "session_subject" in str(err)
    table = azs.summary(tiny_fit.to_datatree(log_likelihood=None, session_coords=False))
    assert len(table) > 100
    assert "zeta[" + str(tiny_fit.data.session_labels[0]) in " ".join(table.index)


def test_bad_arguments(tiny_fit, tmp_path):
    with pytest.raises(ValueError, match="log_likelihood"):
        tiny_fit.to_datatree(log_likelihood="subject")
    with pytest.raises(ValueError, match="groups"):
        tiny_fit.save(tmp_path / "f", groups=("posterior_predictive", "nope"))
    assert not (tmp_path / "f").exists()


def test_save_with_groups_round_trips(tiny_fit, tree, tmp_path):
    plain = tiny_fit.save(tmp_path / "plain")
    assert set(xr.open_datatree(plain / "posterior.nc").children) == {"posterior", "sample_stats"}
    out = tiny_fit.save(tmp_path / "more", groups=("observed_data", "log_likelihood"))
    fit = load_fit(out)
    assert {"observed_data", "log_likelihood"} <= set(fit.datatree.children)
    xr.testing.assert_allclose(
        fit.datatree["log_likelihood"].to_dataset(), tree["log_likelihood"].to_dataset()
    )
    np.testing.assert_array_equal(
        fit.datatree["observed_data"]["rating"].values, tree["observed_data"]["rating"].values
    )
    assert (out / "posterior.nc").stat().st_size > (plain / "posterior.nc").stat().st_size
    # the reloaded fit gives the same tree
    xr.testing.assert_allclose(
        fit.to_datatree()["log_likelihood"].to_dataset(), tree["log_likelihood"].to_dataset()
    )


@pytest.mark.slow
def test_prior_groups(tiny_fit):
    t = tiny_fit.to_datatree(log_likelihood="session", prior=40, seed=2)
    pp = t["prior_predictive"]["rating"]
    inst = tiny_fit.data.instrument
    assert pp.sizes["draw"] == 40 and pp.sizes["obs"] == tiny_fit.data.n_ratings
    assert pp.min() >= inst.response_min and pp.max() <= inst.response_max
    assert t["prior"]["sd_session"].sizes["draw"] == 40
    # log prior of sd_severity ~ Gamma(4, rate 8) at each posterior draw, directly
    from scipy.stats import gamma

    prior = inst.priors.sd_severity
    assert prior.dist == "Gamma"
    x = tiny_fit.posterior["sd_severity"].values
    want = gamma.logpdf(x, prior.params["alpha"], scale=1 / prior.params["beta"])
    np.testing.assert_allclose(t["log_prior"]["sd_severity"].values, want, rtol=1e-8, atol=1e-8)
    assert azs.psense_summary(t, var_names=["sd_session"]).shape[0] == 4
