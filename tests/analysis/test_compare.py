"""Model comparison: PSIS-LOO by rating and by session against ArviZ, the table, the
Pareto-k warning and K-fold fallback, the CLI; and the LOO proofs on short MCMC fits."""

from __future__ import annotations

import copy
import dataclasses
import warnings

import matplotlib
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from arviz_stats import loo as az_loo
from arviz_stats.utils import ELPDDataLOOKFold
from scipy.special import logsumexp
from synthetic import posterior_from_truth, prior_fit, synthetic_fit

from caltars_bayes._core.errors import CaltarsError, CaltarsWarning
from caltars_bayes.analysis import compare
from caltars_bayes.analysis.compare import (
    COMPARE_COLUMNS,
    compare_fits,
    loo_fit,
    plot_compare,
    rating_folds,
    session_folds,
)
from caltars_bayes.analysis.compare import kfold as compare_kfold
from caltars_bayes.analysis.compare import loo as compare_loo
from caltars_bayes.analysis.compare import moment_match as compare_mm
from caltars_bayes.analysis.compare import table as compare_table
from caltars_bayes.cli import main
from caltars_bayes.inference import predict
from caltars_bayes.inference.record import PriorSource
from caltars_bayes.inference.unconstrained import UnconstrainedModel
from caltars_bayes.model.simulate import simulate_trial
from caltars_bayes.report import workflows

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def trial(calpas):
    return simulate_trial(calpas, n_subjects=10, n_sessions=3, n_judges=2, seed=6)


@pytest.fixture(scope="module")
def fits(trial):
    """The truth (draws near it) and a wrong model: every item's cutpoints shifted by 0.8."""
    data = trial.to_rating_data()
    good = posterior_from_truth(trial, data, n_chains=2, n_draws=200, noise=0.02, seed=1)
    bad = good.copy()
    bad["cutpoints"] = good["cutpoints"] + 0.8
    return {"truth": synthetic_fit(data, good), "shifted": synthetic_fit(data, bad)}


def _arviz_loo(fit, ll: xr.DataArray):
    dt = xr.DataTree.from_dict(
        {"posterior": fit.posterior, "log_likelihood": xr.Dataset({"rating": ll})}
    )
    return az_loo(dt, pointwise=True, var_name="rating")


def test_loo_by_rating_and_session_agree_with_arviz(fits, monkeypatch):
    fit = fits["truth"]
    ref = _arviz_loo(fit, predict.log_likelihood(fit, by="rating"))
    monkeypatch.setattr(compare_loo, "CHUNK_ELEMENTS", 400 * 100)  # 100 ratings per chunk
    mine = loo_fit(fit, by="rating")
    assert mine.n_data_points == fit.data.n_ratings
    assert mine.elpd == pytest.approx(ref.elpd, rel=1e-10)
    assert mine.se == pytest.approx(ref.se, rel=1e-10)
    assert mine.p == pytest.approx(ref.p, rel=1e-8)
    np.testing.assert_allclose(mine.pareto_k.values, ref.pareto_k.values)
    ref_s = _arviz_loo(fit, predict.log_likelihood(fit, by="session"))
    cond = loo_fit(fit, by="session", marginal=False)
    assert cond.elpd == pytest.approx(ref_s.elpd, rel=1e-10)
    assert list(cond.elpd_i["session"].values) == list(fit.data.session_labels)
    ref_m = _arviz_loo(fit, predict.log_likelihood(fit, by="session", marginal=True))
    marg = loo_fit(fit, by="session")  # marginal by default
    assert marg.elpd == pytest.approx(ref_m.elpd, rel=1e-10)
    assert marg.elpd != pytest.approx(cond.elpd, rel=1e-6)


@pytest.mark.parametrize("by", ["rating", "session"])
def test_compare_table_ranks_the_true_model_first(fits, by):
    table = compare_fits(fits, by=by)
    assert list(table.columns) == COMPARE_COLUMNS
    assert list(table["name"]) == ["truth", "shifted"]
    best, other = table.iloc[0], table.iloc[1]
    assert best["elpd_diff"] == 0 and best["dse"] == 0
    assert other["elpd_diff"] == pytest.approx(other["elpd"] - best["elpd"])
    assert other["elpd_diff"] < -4 * other["dse"]
    assert table["weight"].sum() == pytest.approx(1.0) and best["weight"] > 0.9
    assert (table["method"] == "psis").all() and (table["n_high_k"] == 0).all()
    n = fits["truth"].data.n_ratings if by == "rating" else fits["truth"].data.n_sessions
    assert (table["n_units"] == n).all() and (table["by"] == by).all()
    assert table.attrs["warnings"] == [] and "truth:" in table.attrs["diagnostics"]
    assert best["elpd"] == pytest.approx(loo_fit(fits["truth"], by).elpd)
    fig = plot_compare(table)
    assert fig.axes[0].get_yticklabels()[0].get_text().startswith("truth")


def test_compare_refuses_different_data(fits, calpas):
    other = simulate_trial(calpas, n_subjects=10, n_sessions=3, n_judges=2, seed=7)
    data = other.to_rating_data()
    alien = synthetic_fit(data, posterior_from_truth(other, data, n_draws=20))
    with pytest.raises(CaltarsError, match="different data") as err:
        compare_fits({"truth": fits["truth"], "alien": alien})
    assert "\n" not in str(err.value)
    with pytest.raises(CaltarsError, match="at least two"):
        compare_fits({"truth": fits["truth"]})


def test_high_pareto_k_warns_and_falls_back(calpas):
    # a vague posterior (draws far from each other) makes importance sampling fail
    trial = simulate_trial(calpas, n_subjects=6, n_sessions=2, n_judges=2, seed=2, min_sessions=1)
    data = trial.to_rating_data()
    assert (np.bincount(data.session_subject_idx) == 1).any()
    post = posterior_from_truth(trial, data, n_chains=2, n_draws=100, noise=0.4, seed=3)
    pair = {
        "a": synthetic_fit(data, post),
        "b": synthetic_fit(data, post.isel(draw=slice(None, None, -1))),
    }
    with pytest.warns(CaltarsWarning, match="Pareto k > 0.7") as rec:
        table = compare_fits(pair, by="session", fallback="none")
    assert (table["n_high_k"] > 0).all() and (table["method"] == "psis").all()
    assert "fallback disabled" in str(rec[0].message)
    assert table["pareto_k_max"].min() > 0.7
    # moment matching needs the model's free variables, which these hand-built posteriors
    # lack; K-fold by session needs two sessions per subject: each says so, PSIS is kept
    with pytest.warns(CaltarsWarning) as rec:
        table = compare_fits(pair, by="session")
    messages = [str(w.message) for w in rec if w.category is CaltarsWarning]
    assert "moment matching their high-k units" in messages[0]
    assert "moment matching not possible" in messages[1] and "lacks the free" in messages[1]
    assert "K-fold not possible" in messages[2] and "one session" in messages[2]
    assert (table["method"] == "psis").all() and table.attrs["warnings"] == messages


def test_folds_keep_every_subject_and_session_in_training(trial):
    data = trial.to_rating_data()
    for k in (2, 3, 5):
        folds = session_folds(data, k, seed=1)
        subj = np.asarray(data.session_subject_idx)
        for f in range(k):
            held = folds == f
            # every subject keeps at least one session in the training set
            assert set(subj[~held]) == set(range(data.n_subjects))
        # sessions of a subject are spread, not stacked, over the folds
        for p in range(data.n_subjects):
            fp = folds[subj == p]
            assert len(set(fp)) == min(len(fp), k)
        rf = rating_folds(data, k, seed=1)
        for f in range(k):
            assert len(set(np.asarray(data.session_idx)[rf != f])) == data.n_sessions
    with pytest.raises(ValueError):
        session_folds(data, 1)


def test_kfold_bookkeeping_through_arviz_loo_kfold(fits, monkeypatch):
    """K-fold by rating with every refit stubbed by the full fit (no MCMC): arviz's
    ``loo_kfold`` with our folds and RefitWrapper gives each rating the log of its mean
    density over the draws (so p = 0 exactly), each fold one refit with its own seed."""
    fit = fits["truth"]
    data = fit.data
    seeds, sizes = [], []

    def stub_fit_model(train, **kwargs):
        seeds.append(kwargs["random_seed"])
        sizes.append(train.n_ratings)
        return fit

    monkeypatch.setattr(compare_kfold, "fit_model", stub_fit_model)
    res = compare.kfold_fit(
        fit, "rating", 3, seed=2, fit_options={"draws": 7}, scheduler="serial", quiet=True
    )
    assert isinstance(res, ELPDDataLOOKFold) and res.n_folds == 3
    assert seeds == [1001, 2001, 3001]
    assert sum(sizes) == 2 * data.n_ratings  # each rating held out exactly once
    ll = predict.rating_loglik(predict.posterior_draws(fit.posterior, data), data)
    expected = logsumexp(ll, axis=0) - np.log(ll.shape[0])
    np.testing.assert_allclose(res.elpd_i.values, expected, rtol=1e-12)
    assert res.elpd == pytest.approx(expected.sum(), rel=1e-12)
    assert res.se == pytest.approx(np.sqrt(len(expected) * np.var(expected)), rel=1e-12)
    assert res.p == pytest.approx(0.0, abs=1e-8) and np.abs(res.p_kfold_i.values).max() < 1e-10


def test_cli_compare_writes_table_and_plot(fits, tmp_path, capsys):
    dirs = []
    for name, fit in fits.items():
        fit.save(tmp_path / name)
        dirs.append(str(tmp_path / name))
    out = tmp_path / "cmp"
    assert main(["compare", *dirs, "--out", str(out), "--by", "rating"]) == 0
    for f in ("compare.csv", "compare.png", "compare.svg"):
        assert (out / f).is_file()
    table = pd.read_csv(out / "compare.csv")
    assert list(table.columns) == COMPARE_COLUMNS and list(table["name"]) == ["truth", "shifted"]
    direct = compare_fits(fits, by="rating")
    np.testing.assert_allclose(table["elpd"], direct["elpd"], rtol=1e-6)
    assert "shifted" in capsys.readouterr().out
    # no overwrite without --force; one fit is not a comparison
    assert main(["compare", *dirs, "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["compare", dirs[0], "--out", str(tmp_path / "one")]) == 2


# --------------------------------------------------------------------------- MCMC proofs


@pytest.mark.slow
def test_loo_prefers_the_true_correlated_factors(correlated_factor_fits):
    """Data from four correlated factors: their structure beats one factor by > 4 SE."""
    _, fits = correlated_factor_fits
    pair = {"scales": fits["default"], "one factor": fits["general"]}
    with warnings.catch_warnings(record=True):  # a rare rating may have k > 0.7
        warnings.simplefilter("always", CaltarsWarning)
        by_rating = compare_fits(pair, by="rating", fallback="none")
    assert list(by_rating["name"]) == ["scales", "one factor"]
    worse = by_rating.iloc[1]
    assert worse["elpd_diff"] < -4 * worse["dse"], by_rating
    assert (by_rating["n_high_k"] <= 0.01 * by_rating["n_units"]).all(), by_rating
    # leave one session out: with 4 sessions per subject many sessions have high k, so
    # every model is re-estimated by K-fold (2 folds, short refits)
    with pytest.warns(CaltarsWarning, match="Pareto k"):
        by_session = compare_fits(
            pair, by="session", fallback="kfold", n_folds=2,
            fit_options={"draws": 150, "tune": 150},
        )  # fmt: skip
    assert by_session["method"].eq("kfold(2)").all(), by_session
    assert list(by_session["name"]) == ["scales", "one factor"]
    worse = by_session.iloc[1]
    assert worse["elpd_diff"] < -4 * worse["dse"], by_session
    # K-fold estimates the same target as session PSIS-LOO, with half the sessions
    psis = loo_fit(fits["default"], by="session").elpd
    kfold = by_session.set_index("name").loc["scales", "elpd"]
    assert abs(kfold - psis) < 0.05 * abs(psis)


@pytest.mark.slow
def test_extra_factors_gain_nothing_on_one_factor_data(one_factor_fits):
    _, fits = one_factor_fits
    with warnings.catch_warnings(record=True):  # a rare rating may have k > 0.7
        warnings.simplefilter("always", CaltarsWarning)
        table = compare_fits(
            {"scales": fits["default"], "one factor": fits["general"]},
            by="rating",
            fallback="none",
        )
    assert (table["n_high_k"] <= 0.01 * table["n_units"]).all(), table
    row = table.set_index("name")
    gain = row.loc["scales", "elpd"] - row.loc["one factor", "elpd"]
    dse = table["dse"].max()
    assert gain < 2 * dse, table  # no credible gain for the four-factor model
    assert row.loc["scales", "p_loo"] > row.loc["one factor", "p_loo"]


# --------------------------------------------------------------------------- moment matching


def _design(instrument, **options):
    inst = instrument
    if options:
        inst = dataclasses.replace(inst, model=dataclasses.replace(inst.model, **options))
    return inst


@pytest.fixture(scope="module", params=["covariates", "bifactor+interaction+trend"])
def prior_model(request, calpas, caltars):
    """Prior draws of a small model (no MCMC) and its UnconstrainedModel."""
    if request.param == "covariates":
        trial = simulate_trial(
            calpas, n_subjects=6, n_sessions=2, n_judges=2, seed=6,
            subject_covariates={"x": {"PC": 0.5}},
        )  # fmt: skip
    else:
        inst = _design(
            caltars.with_structure("bifactor"), judge_subject_interaction=True, session_trend=True
        )
        trial = simulate_trial(inst, n_subjects=6, n_sessions=3, n_judges=2, seed=6)
    fit, _ = prior_fit(trial.to_rating_data(), draws=6, seed=2)
    return fit, UnconstrainedModel(fit, mode="FAST_COMPILE")


def test_unconstrained_logp_is_the_models_logp(prior_model):
    fit, um = prior_model
    upars = um.upars(fit.posterior)
    assert upars.shape == (1, 6, um.n_params) and np.isfinite(upars.values).all()
    mine = um.logp(upars.values)
    assert mine.shape == (6,)
    logp = um.model.compile_logp(jacobian=True, mode="FAST_COMPILE")
    flat = upars.values.reshape(6, -1)
    for s in range(6):  # every draw: a batched graph that mixed draws would show here
        point = {
            n: flat[s, sl].reshape(shape)
            for n, sl, shape in zip(um.names, um._slices, um._shapes, strict=True)
        }
        assert mine[s] == pytest.approx(float(logp(point)), rel=1e-10, abs=1e-8)
    assert np.ptp(mine) > 1.0  # the draws differ, so a constant would fail above


def test_unconstrained_draws_round_trip(prior_model):
    fit, um = prior_model
    post = fit.posterior
    upars = um.upars(post)
    back = um.posterior(upars)
    for name in um.outputs:
        assert back[name].dims == post[name].dims, name
        np.testing.assert_allclose(back[name].values, post[name].values, atol=1e-10, err_msg=name)
    np.testing.assert_allclose(um.upars(back).values, upars.values, atol=1e-10)
    # what the likelihood reads is unchanged: the integrated session likelihood agrees
    a = predict.session_marginal_loglik(predict.posterior_draws(back, fit.data), fit.data)
    b = predict.session_marginal_loglik(predict.posterior_draws(post, fit.data), fit.data)
    np.testing.assert_allclose(a, b, rtol=1e-10)
    # and one session's likelihood from the unconstrained draws is that column
    s = fit.data.n_sessions - 1
    np.testing.assert_allclose(
        compare_mm._unit_loglik_at(um, fit.data, "session", s, upars), b[:, s], rtol=1e-10
    )
    r = fit.data.n_ratings - 1
    np.testing.assert_allclose(
        compare_mm._unit_loglik_at(um, fit.data, "rating", r, upars),
        predict.rating_loglik(predict.posterior_draws(post, fit.data), fit.data)[:, r],
        rtol=1e-10,
    )


def test_local_moment_matching_moves_only_the_units_own_parameters(prior_model):
    """The held-out session's subject factors and session deviations, nothing else."""
    fit, um = prior_model
    data = fit.data
    s = data.n_sessions - 1
    p = int(np.asarray(data.session_subject_idx)[s])
    labels = [um.labels[c] for c in compare_mm._local_columns(um, data, "session", s)]
    names = ("theta_raw", "theta_z", "subject_mean")
    theta = [f"{n}[{p},{k}]" for n in names for k in range(data.n_scales)]
    zeta = [f"{n}[{s},{k}]" for n in ("zeta", "zeta_z") for k in range(data.n_scales)]
    general = [f"general_z[{p}]"]
    expected = [lab for lab in um.labels if lab in {*theta, *zeta, *general}]
    assert sorted(labels) == sorted(expected)
    assert any(lab.startswith("zeta") for lab in labels)
    assert any(lab.startswith("theta") for lab in labels)
    # a rating's unit is its session
    r = int(np.flatnonzero(np.asarray(data.session_idx) == s)[0])
    by_rating = compare_mm._local_columns(um, data, "rating", r)
    np.testing.assert_array_equal(by_rating, compare_mm._local_columns(um, data, "session", s))


def test_unconstrained_model_refuses_what_it_cannot_rebuild(fits, prior_model):
    with pytest.raises(CaltarsError, match="lacks the free variables"):
        UnconstrainedModel(fits["truth"]).upars(fits["truth"].posterior)
    fit, _ = prior_model
    record = dataclasses.replace(fit.record, prior_from=PriorSource("a", 1.0))
    borrowed = dataclasses.replace(fit, record=record)
    with pytest.raises(CaltarsError, match="borrowed priors"):
        UnconstrainedModel(borrowed)


@pytest.fixture(scope="module")
def vague_pair(calpas):
    """Two fits of a design with two sessions per subject whose PSIS-LOO has high k."""
    trial = simulate_trial(calpas, n_subjects=6, n_sessions=2, n_judges=2, seed=2)
    data = trial.to_rating_data()
    post = posterior_from_truth(trial, data, n_chains=2, n_draws=100, noise=0.4, seed=3)
    return {
        "a": synthetic_fit(data, post),
        "b": synthetic_fit(data, post.isel(draw=slice(None, None, -1))),
    }


def _fake_kfold(calls):
    def kfold(fits, by, n_folds, **kwargs):
        out = {}
        for name, fit in fits.items():
            calls.append(("kfold", n_folds))
            lo = loo_fit(fit, by)
            out[name] = ELPDDataLOOKFold(
                elpd=lo.elpd - 1.0, se=lo.se, p=lo.p, n_samples=lo.n_samples,
                n_data_points=lo.n_data_points, scale="log", warning=False, good_k=None,
                elpd_i=lo.elpd_i - 1.0 / lo.n_data_points, pareto_k=None, n_folds=n_folds,
                p_kfold_i=lo.p_loo_i,
            )  # fmt: skip
        return out

    return kfold


def _fake_mm(calls, k_after):
    def mm(fit, loo, by, **kwargs):
        calls.append(("mm", by))
        out = copy.deepcopy(loo)
        out.pareto_k = loo.pareto_k * 0 + k_after
        out.elpd_i = loo.elpd_i + 0.5 / loo.n_data_points
        out.elpd = loo.elpd + 0.5
        return out

    return mm


@pytest.mark.parametrize(
    ("fallback", "k_after", "expected", "n_warnings"),
    [
        ("moment_match", 0.3, ["mm", "mm"], 1),
        # the first model's units stay high: K-fold follows, the second is not matched
        ("moment_match", 0.9, ["mm", "kfold", "kfold"], 2),
        ("kfold", 0.3, ["kfold", "kfold"], 1),
        ("none", 0.3, [], 1),
    ],
)
def test_compare_fallback_routing(vague_pair, monkeypatch, fallback, k_after, expected, n_warnings):
    calls = []
    monkeypatch.setattr(compare_table, "loo_moment_match_fit", _fake_mm(calls, k_after))
    monkeypatch.setattr(compare_table, "kfold_fits", _fake_kfold(calls))
    with pytest.warns(CaltarsWarning, match="Pareto k > 0.7") as rec:
        table = compare_fits(vague_pair, by="session", fallback=fallback, n_folds=3)
    assert [c[0] for c in calls] == expected
    ours = [w for w in rec if w.category is CaltarsWarning]
    assert len(ours) == n_warnings and len(table.attrs["warnings"]) == n_warnings
    psis = {n: loo_fit(f, "session") for n, f in vague_pair.items()}
    row = table.set_index("name")
    for n, lo in psis.items():
        if "kfold" in expected:
            assert row.loc[n, "method"] == "kfold(3)" and row.loc[n, "elpd"] == pytest.approx(
                lo.elpd - 1.0
            )
        elif "mm" in expected:
            assert row.loc[n, "method"] == "psis+mm"
            assert row.loc[n, "elpd"] == pytest.approx(lo.elpd + 0.5)
        else:
            assert row.loc[n, "method"] == "psis" and row.loc[n, "elpd"] == pytest.approx(lo.elpd)
        # k columns: after moment matching where that is the method, else PSIS's own
        k_max = k_after if row.loc[n, "method"] == "psis+mm" else float(lo.pareto_k.max())
        assert row.loc[n, "pareto_k_max"] == pytest.approx(k_max)
    if n_warnings == 2:
        assert "after moment matching" in table.attrs["warnings"][1]
    with pytest.raises(ValueError, match="fallback"):
        compare_fits(vague_pair, fallback="reloo")


def test_compare_without_high_k_never_falls_back(fits, monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("no fallback expected")

    monkeypatch.setattr(compare_table, "loo_moment_match_fit", boom)
    monkeypatch.setattr(compare_table, "kfold_fits", boom)
    table = compare_fits(fits, by="session")
    assert (table["method"] == "psis").all() and table.attrs["warnings"] == []


def test_cli_compare_fallback_flag(fits, tmp_path, monkeypatch, capsys):
    dirs = []
    for name, fit in fits.items():
        fit.save(tmp_path / name)
        dirs.append(str(tmp_path / name))
    seen = []
    real = compare.compare_fits

    def spy(fits, **kwargs):
        seen.append(kwargs["fallback"])
        return real(fits, **kwargs)

    # the command calls the library's workflow, which calls compare_fits
    monkeypatch.setattr(workflows, "compare_fits", spy)
    for n, extra in enumerate(
        [[], ["--fallback", "kfold"], ["--fallback", "none"], ["--no-kfold"]]
    ):
        assert main(["compare", *dirs, "--out", str(tmp_path / f"c{n}"), *extra]) == 0
    assert seen == ["moment_match", "kfold", "none", "none"]
    with pytest.raises(SystemExit):
        main(["compare", *dirs, "--out", str(tmp_path / "bad"), "--fallback", "reloo"])
    assert "invalid choice" in capsys.readouterr().err


@pytest.mark.long  # about 75 s: run by `make test-long`, not in CI
def test_moment_matching_recovers_the_exact_left_out_session(calpas):
    """An outlying session (its ratings lowered by 3 categories): moment matching lowers
    its Pareto k and lands next to the exact leave-that-session-out elpd from a refit.

    Design: CALPAS as one factor with scale cutpoints, 8 subjects x 5 sessions x 1 judge
    (960 ratings, about 80 parameters), 2 x 500 draws. The exact value is the held-out
    session's integrated likelihood averaged over a refit without it (2 x 1500 draws);
    its Monte Carlo SE, from four batches of draws, is about 0.05. Measured when written
    (seeded): k 0.70 -> 0.47; elpd_i exact -33.63, PSIS -33.73, moment matched -33.62.
    The tolerance (0.2) is three SEs of the difference (the moment-matched value, from
    1,000 draws, has a Monte Carlo error of the same size as the exact one). At k ~ 0.7
    PSIS is still nearly right, so "closer than PSIS" is not asserted: after the fused
    likelihood Op changed the draws (same seed), PSIS was off by 0.02 and moment matching
    by 0.145 (exact -33.63), where it had been 0.1 and 0.01 before.
    (Those numbers were measured moving all parameters; the default now moves only the
    session's and its subject's own, and passes the same checks.)
    Since the cutpoints are sampled as mean and log gaps (2026-11-28; same seed, JAX
    backend): k 0.68 -> 0.62, elpd_i exact -33.69, PSIS -33.56, moment matched -33.60.
    Moment matching lowers k but not reliably below 0.6, so that is no longer asserted:
    over fit seeds 1-5 (numba backend) this session's k was 0.53-0.79, moved by moment
    matching only in the one run above the threshold (0.79 -> 0.69); sessions lowered
    by 4 categories had k 0.91-1.14, lowered by at most 0.18. (Before the cutpoint change,
    2026-11-28, k was 0.43 with this seed and the test failed its first check.)
    """
    from caltars_bayes.data.ratings import RatingData
    from caltars_bayes.inference.fit import fit_model

    inst = _design(calpas.with_structure("general"), cutpoints="scale")
    trial = simulate_trial(inst, n_subjects=8, n_sessions=5, n_judges=1, seed=3)
    r = trial.ratings.copy()
    means = r.groupby(["subject", "session"])["rating"].mean()
    subject, session = means.sort_values(ascending=False).index[20]
    sel = (r["subject"] == subject) & (r["session"] == session)
    r.loc[sel, "rating"] = (r.loc[sel, "rating"] - 3).clip(1, 7)
    data = RatingData.from_frame(r, inst, layout="long")
    s = list(data.session_labels).index(f"{subject}|{session}")
    opts = {"draws": 500, "tune": 500, "chains": 2, "random_seed": 1, "progressbar": False}
    fit = fit_model(data, **opts)
    psis = loo_fit(fit, "session")
    mm = compare.loo_moment_match_fit(fit, psis, "session")
    k0, k1 = float(psis.pareto_k[s]), float(mm.pareto_k[s])
    assert k0 > psis.good_k and float(mm.influence_pareto_k[s]) == k0
    assert k1 < k0, (k0, k1)
    assert mm.elpd == pytest.approx(float(mm.elpd_i.sum()))
    # units below the threshold are untouched
    low = psis.pareto_k.values <= psis.good_k
    np.testing.assert_array_equal(mm.elpd_i.values[low], psis.elpd_i.values[low])
    # exact: refit without the session, integrate its deviations out
    held = np.asarray(data.session_idx) == s
    train = compare_kfold._train_data(data, ~held)
    refit = fit_model(train, **{**opts, "draws": 1500, "random_seed": 2, "max_draws": 1500})
    rows = compare_kfold._Rows(data, held)
    d = predict.posterior_draws(
        refit.posterior,
        rows,
        time_mean=float(np.asarray(train.sessions["session_time"], float).mean()),
        allow_new_sessions=True,
    )
    ll = predict.session_marginal_loglik(d, rows)[:, s]
    exact = float(logsumexp(ll) - np.log(ll.size))
    batches = logsumexp(ll.reshape(4, -1), axis=1) - np.log(ll.size / 4)
    mc_se = float(np.std(batches, ddof=1) / 2)
    assert mc_se < 0.1, batches
    err_mm = abs(float(mm.elpd_i[s]) - exact)
    err_psis = abs(float(psis.elpd_i[s]) - exact)
    assert err_mm < 0.2, (exact, float(mm.elpd_i[s]), float(psis.elpd_i[s]), err_psis)


def test_kfold_refits_write_progress_lines_to_a_non_terminal(vague_pair, monkeypatch, capsys):
    """compare's K-fold fallback says which refit of how many (no MCMC: refits stubbed)."""
    refits = []

    def stub_fit_model(train, **kwargs):
        refits.append(train.n_ratings)
        return vague_pair["a"]  # the full fit stands in for each refit

    monkeypatch.setattr(compare_kfold, "fit_model", stub_fit_model)
    with pytest.warns(CaltarsWarning):
        compare_fits(vague_pair, by="session", fallback="kfold", n_folds=3, scheduler="serial")
    err = capsys.readouterr().err.splitlines()
    assert len(refits) == 6
    for k in range(1, 7):
        done = [line for line in err if line.startswith(f"[{k}/6] compare: K-fold refit")]
        assert done, (k, err)
    assert any(line.endswith("b, fold 3 of 3") for line in err)
    assert "ETA" in err[-1]
    with pytest.warns(CaltarsWarning):
        compare_fits(
            vague_pair, by="session", fallback="kfold", n_folds=3, scheduler="serial", quiet=True
        )
    assert "K-fold refit" not in capsys.readouterr().err


# --------------------------------------------------------------------------- parallel refits


def test_parallel_refits_equal_serial_ones(vague_pair, thread_client, monkeypatch):
    """Both models' refits pooled on Dask give the serial K-fold exactly: each refit is
    the fit's draws subsampled by its seed (a wrong seed or fold would change elpd_i),
    and the progress counts one step per finished refit."""
    seen = []

    def stub_fit_model(train, random_seed, **kwargs):
        seen.append((random_seed, train.n_ratings))
        post = vague_pair["a"].posterior
        keep = np.random.default_rng(random_seed).choice(post.sizes["draw"], 40, replace=False)
        return synthetic_fit(vague_pair["a"].data, post.isel(draw=np.sort(keep)))

    monkeypatch.setattr(compare_kfold, "fit_model", stub_fit_model)
    kw = {"by": "session", "n_folds": 3, "seed": 4}
    serial = compare.kfold_fits(vague_pair, **kw, scheduler="serial", quiet=True)
    lines = []
    with compare_kfold.Progress("K-fold refit", 6, say=lines.append) as bar:
        pooled = compare.kfold_fits(vague_pair, **kw, scheduler=thread_client, progress=bar)
    assert sorted(seen[:6]) == sorted(seen[6:])  # the same refits, in whatever order
    assert sorted({s for s, _ in seen}) == [1001, 2001, 3001]
    assert [line[:5] for line in lines] == [f"[{k}/6]" for k in range(1, 7)]
    for name in vague_pair:
        np.testing.assert_array_equal(pooled[name].elpd_i.values, serial[name].elpd_i.values)
        assert pooled[name].elpd == serial[name].elpd and pooled[name].se == serial[name].se
    # by default, 2 cores and refits of 2 chains: one refit at a time, here (stub reached)
    monkeypatch.setattr("caltars_bayes._core.parallel.os.cpu_count", lambda: 2)
    n_calls = len(seen)
    default = compare.kfold_fits(vague_pair, **kw, quiet=True)
    assert len(seen) == n_calls + 6 and default["b"].elpd == serial["b"].elpd
    # the seed-dependent refits matter: another fit seed gives other numbers
    other = {n: dataclasses.replace(f, record=dataclasses.replace(f.record, random_seed=2))
             for n, f in vague_pair.items()}  # fmt: skip
    moved = compare.kfold_fits(other, **kw, scheduler="serial", quiet=True)
    assert moved["a"].elpd != serial["a"].elpd


def test_compare_refuses_a_bad_scheduler_before_any_refit(vague_pair, monkeypatch):
    monkeypatch.setattr(compare_kfold, "fit_model", lambda *a, **k: pytest.fail("refit"))
    with pytest.raises(CaltarsError, match="--scheduler 'threads'"):
        compare_fits(vague_pair, fallback="kfold", scheduler="threads")


def test_cli_compare_passes_workers_and_scheduler(fits, tmp_path, monkeypatch):
    dirs = []
    for name, fit in fits.items():
        fit.save(tmp_path / name)
        dirs.append(str(tmp_path / name))
    seen = []

    def spy(fits, **kwargs):
        seen.append((kwargs["scheduler"], kwargs["workers"]))
        return compare.compare_fits(fits, **kwargs)

    monkeypatch.setattr(workflows, "compare_fits", spy)
    runs = [[], ["--workers", "2"], ["--scheduler", "serial"], ["--scheduler", "tcp://h:8786"]]
    for n, extra in enumerate(runs):
        assert main(["compare", *dirs, "--out", str(tmp_path / f"c{n}"), *extra]) == 0
    assert seen == [(None, None), (None, 2), ("serial", None), ("tcp://h:8786", None)]
    assert main(["compare", *dirs, "--out", str(tmp_path / "bad"), "--scheduler", "h:1"]) == 2


@pytest.mark.long
def test_kfold_refits_in_worker_processes_equal_serial_refits(vague_pair, dask_client):
    """Real (tiny) NUTS refits in two Dask worker processes give exactly the serial numbers."""
    fit = vague_pair["a"]
    kw = {"by": "session", "n_folds": 2, "fit_options": {"draws": 20, "tune": 20}, "quiet": True}
    serial = compare.kfold_fit(fit, scheduler="serial", **kw)
    parallel = compare.kfold_fit(fit, scheduler=dask_client, **kw)
    np.testing.assert_array_equal(parallel.elpd_i.values, serial.elpd_i.values)
    assert parallel.elpd == serial.elpd and np.isfinite(serial.elpd)


def test_refits_take_the_full_fits_settings_not_its_outcome(vague_pair):
    """Refits ask for the draws the full fit asked for, with its cap and sampler
    options, and store what it stored (so that they reuse its compiled model)."""
    fit = copy.copy(vague_pair["a"])
    extended = {"requested_draws": 1000, "max_draws": 4000, "draws": 1500}
    fit.record = dataclasses.replace(
        fit.record, sampler="nutpie", draws=1500, max_draws=4000, extension=extended, nuts={},
        timings={"sampling_s": 1.0, "deterministics_s": 0.2},
    )  # fmt: skip
    opts = compare_kfold._plan("a", fit, "session", 3, 0, None).opts
    assert (opts["draws"], opts["max_draws"]) == (1000, 4000)
    assert opts["nuts"]["deterministics"] == "after"
    fit.record = dataclasses.replace(fit.record, extension=None, timings={"sampling_s": 1.0})
    opts = compare_kfold._plan("a", fit, "session", 3, 0, {"draws": 50}).opts
    assert opts["draws"] == 50 and opts["nuts"]["deterministics"] == "during"
    fit.record = dataclasses.replace(fit.record, nuts={"deterministics": "after", "maxdepth": 8})
    nuts = compare_kfold._plan("a", fit, "session", 3, 0, None).opts["nuts"]
    assert (nuts["deterministics"], nuts["maxdepth"]) == ("after", 8)  # the caller's options


def test_moment_matching_stops_at_the_first_unit_that_stays_high(calpas, monkeypatch):
    """``stop_above``: the units after the first one still above it keep their PSIS values."""
    trial = simulate_trial(calpas, n_subjects=6, n_sessions=2, n_judges=2, seed=6)
    fit, _ = prior_fit(trial.to_rating_data(), draws=40, seed=2)  # prior draws: high k
    um = UnconstrainedModel(fit, mode="FAST_COMPILE")
    psis = loo_fit(fit, "session")
    high = np.flatnonzero(psis.pareto_k.values > psis.good_k)
    assert high.size >= 2, psis.pareto_k.values
    calls = []

    def stays_high(self, tree_, sub_, log_prob_, log_lik_i_, upars_):
        calls.append(1)
        out = copy.deepcopy(sub_)
        out.pareto_k = sub_.pareto_k * 0 + 0.95
        return out

    monkeypatch.setattr(compare_mm._Matcher, "match", stays_high)
    every = compare.loo_moment_match_fit(fit, psis, "session", model=um)
    assert len(calls) == high.size
    np.testing.assert_allclose(every.pareto_k.values[high], 0.95)
    calls.clear()
    first = compare.loo_moment_match_fit(fit, psis, "session", model=um, stop_above=0.7)
    assert len(calls) == 1
    assert first.pareto_k.values[high[0]] == pytest.approx(0.95)
    np.testing.assert_array_equal(first.pareto_k.values[high[1:]], psis.pareto_k.values[high[1:]])
    np.testing.assert_array_equal(first.elpd_i.values[high[1:]], psis.elpd_i.values[high[1:]])
