"""Approximate fits (Pathfinder, ADVI): the algebra, the labels, and recovery.

Pure tests check the Pathfinder normal against the explicit compact L-BFGS
inverse Hessian and Pathfinder on Gaussian targets (no model). Flow tests fit
the tiny trial approximately and run it through every table, save and load,
checking it is labelled approximate everywhere; recovery tests check that its
posterior means track the simulated truth.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from scipy.stats import multivariate_normal

from caltars_bayes.cli import main
from caltars_bayes.inference import approx as A
from caltars_bayes.inference.fit import fit_model, load_fit
from caltars_bayes.report.outputs import save_fit_directory
from caltars_bayes.spec.instrument import models_dir

# --------------------------------------------------------------------------- pure


def _explicit_inverse_hessian(alpha, s_mat, z_mat):
    """H = D + [S, D Z] M [S, D Z]' (Byrd, Nocedal & Schnabel 1994, eq. 3.13), written out."""
    d = np.diag(alpha)
    sty = s_mat.T @ z_mat
    r = np.triu(sty)
    r_inv = np.linalg.inv(r)
    dd = np.diag(np.diag(sty))
    w = np.hstack([s_mat, d @ z_mat])
    m = np.block(
        [
            [r_inv.T @ (dd + z_mat.T @ d @ z_mat) @ r_inv, -r_inv.T],
            [-r_inv, np.zeros_like(r)],
        ]
    )
    return d + w @ m @ w.T


@pytest.mark.parametrize("n", [30, 8])  # thin-QR branch (n > 2J) and full branch (n <= 2J)
def test_pathfinder_normal_is_the_lbfgs_inverse_hessian(n):
    rng = np.random.default_rng(n)
    j = 6
    x, grad = rng.normal(size=n), rng.normal(size=n)
    s_mat = rng.normal(size=(n, j))
    z_mat = np.exp(rng.normal(size=n))[:, None] * s_mat  # curvature s'z > 0 holds
    alpha = np.exp(0.3 * rng.normal(size=n))
    h = _explicit_inverse_hessian(alpha, s_mat, z_mat)
    normal = A._lbfgs_normal(x, grad, alpha, s_mat, z_mat)
    assert normal is not None
    np.testing.assert_allclose(normal.mean, x - h @ grad, rtol=1e-6, atol=1e-8)
    draws, log_q = normal.draw(rng, 50)
    # log q of each draw equals the N(mean, H) density: the draws have covariance H exactly
    ref = multivariate_normal(normal.mean, h).logpdf(draws)
    np.testing.assert_allclose(log_q, ref, rtol=1e-6, atol=1e-5)


class _Gaussian:
    """A fake flat model whose log density is a correlated normal (for Pathfinder)."""

    def __init__(self, n: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.n = n
        self.mean = rng.normal(size=n) * 2
        a = rng.normal(size=(n, n))
        self.cov = a @ a.T / n + np.diag(np.exp(rng.uniform(-1, 1, n)))
        self.prec = np.linalg.inv(self.cov)
        self.dist = multivariate_normal(self.mean, self.cov)

    def value_and_grad(self, x):
        return float(self.dist.logpdf(x)), -self.prec @ (x - self.mean)

    def logp(self, xs):
        return np.atleast_1d(self.dist.logpdf(np.atleast_2d(xs)))


def test_pathfinder_recovers_a_gaussian_target():
    g = _Gaussian(5, seed=3)
    rng = np.random.default_rng(0)
    path = A._single_path(g, rng.uniform(-2, 2, g.n), A.DEFAULTS["pathfinder"], rng)
    normal = path["normal"]
    assert normal is not None and path["iterations"] >= 3
    # a normalised target: the ELBO is at most 0, and close to 0 for a good normal
    assert -0.5 < path["elbo"] <= 0.05
    sd = np.sqrt(np.diag(g.cov))
    assert np.all(np.abs(normal.mean - g.mean) < 0.1 * sd)
    x, log_q = normal.draw(rng, 2000)
    _, khat = A._psis_khat(g.logp(x) - log_q)
    assert khat < A.KHAT_OK
    np.testing.assert_allclose(x.std(axis=0), sd, rtol=0.25)


def test_meanfield_advi_finds_the_known_optimum_on_a_gaussian():
    # For a normal target, the best mean-field normal has the target's mean and
    # sds 1 / sqrt(diag(precision)) (smaller than the marginal sds when correlated).
    g = _Gaussian(5, seed=3)
    opts = {**A.DEFAULTS["advi"], "iterations": 8000, "tolerance": 0.0}
    res = A._fit_advi(g, np.zeros(g.n), opts, np.random.default_rng(0), full_rank=False)
    sd = np.sqrt(np.diag(g.cov))
    assert np.all(np.abs(res["mu"] - g.mean) < 0.2 * sd)
    np.testing.assert_allclose(res["sd"] * np.sqrt(np.diag(g.prec)), 1.0, atol=0.12)
    assert np.all(res["sd"] < sd)  # and mean-field really is narrower than the marginals


def test_fullrank_advi_recovers_a_correlated_gaussian():
    g = _Gaussian(3, seed=5)
    opts = {**A.DEFAULTS["fullrank_advi"], "iterations": 8000, "tolerance": 0.0}
    res = A._fit_advi(g, np.zeros(g.n), opts, np.random.default_rng(1), full_rank=True)
    chol = res["low"] + np.diag(res["sd"])
    cov = chol @ chol.T
    corr = cov / np.sqrt(np.outer(np.diag(cov), np.diag(cov)))
    true_corr = g.cov / np.sqrt(np.outer(np.diag(g.cov), np.diag(g.cov)))
    np.testing.assert_allclose(np.sqrt(np.diag(cov)), np.sqrt(np.diag(g.cov)), rtol=0.2)
    np.testing.assert_allclose(corr, true_corr, atol=0.15)


def test_psis_khat_flags_a_too_narrow_approximation():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4000, 20)) * 0.5  # q: sd 0.5 in 20 dimensions; p: sd 1
    log_q = multivariate_normal(np.zeros(20), 0.25 * np.eye(20)).logpdf(x)
    log_p = multivariate_normal(np.zeros(20), np.eye(20)).logpdf(x)
    _, khat_bad = A._psis_khat(log_p - log_q)
    _, khat_good = A._psis_khat(log_p - log_p)
    assert khat_bad > A.KHAT_OK
    assert khat_good < A.KHAT_GOOD


def test_compare_posteriors_hand_computed():
    ref = pd.DataFrame(
        {
            "parameter": ["theta[a, X]", "theta[b, X]", "sd_alliance[X]", "loading[i1]"],
            "mean": [0.0, 1.0, 1.0, 1.0],
            "sd": [1.0, 0.5, 0.2, 0.0],  # a constant quantity (sd 0) is skipped
            "hdi_low": [-2.0, 0.0, 0.6, 1.0],
            "hdi_high": [2.0, 2.0, 1.4, 1.0],
        }
    )
    other = ref.copy()
    other["mean"] = [0.5, 0.0, 1.1, 3.0]
    other["hdi_low"] = [-1.0, 0.5, 0.8, 1.0]
    other["hdi_high"] = [1.0, 1.5, 1.2, 1.0]
    out = A.compare_posteriors(ref, other).set_index("group")
    assert list(out.index) == ["all", "theta", "sds and correlations"]
    # errors in sd units: 0.5, 2.0, 0.5; width ratios 0.5, 0.5, 0.5
    assert out.loc["all", "n"] == 3
    assert out.loc["all", "mean_abs_error_sd"] == pytest.approx(1.0)
    assert out.loc["all", "max_abs_error_sd"] == pytest.approx(2.0)
    assert out.loc["theta", "mean_abs_error_sd"] == pytest.approx(1.25)
    assert out.loc["sds and correlations", "mean_abs_error_sd"] == pytest.approx(0.5)
    assert out.loc["all", "width_ratio_median"] == pytest.approx(0.5)


def test_elbo_plateau_stops_only_on_a_flat_loss():
    stop = A._ElboPlateau(every=10, tolerance=1e-3)
    falling = np.linspace(1000, 500, 40)
    stop(None, falling, 40)  # still improving: no stop
    flat = np.r_[falling, np.full(20, 500.0)]
    with pytest.raises(StopIteration):
        stop(None, flat, 60)


def test_approximate_diagnostics_never_converged():
    post = xr.Dataset(
        {"theta": (("chain", "draw", "subject"), np.random.default_rng(0).normal(size=(1, 50, 3)))}
    )
    d = A.approximate_diagnostics(post, {"method": "pathfinder", "pareto_k": 1.3})
    assert d.approximate and not d.converged
    assert d.verdict.startswith("APPROXIMATE")
    assert "pathfinder" in d.banner() and "k-hat 1.30" in d.banner()
    assert "intervals unreliable" in str(d)
    assert A.khat_label(0.3) == "close to the posterior"
    assert A.khat_label(0.6) == "usable for means"


def test_unknown_method_is_refused(tiny_trial):
    with pytest.raises(ValueError, match="choose nuts or"):
        fit_model(tiny_trial.to_rating_data(), method="laplace", draws=10)


# --------------------------------------------------------------------------- flow


@pytest.fixture(scope="module")
def path_fit(tiny_trial):
    return fit_model(tiny_trial.to_rating_data(), draws=300, method="pathfinder", random_seed=4)


@pytest.fixture(scope="module")
def advi_fit(tiny_trial):
    return fit_model(
        tiny_trial.to_rating_data(),
        draws=300,
        method="advi",
        random_seed=4,
        approx={"iterations": 6000},
        progressbar=False,
    )


def test_approximate_posterior_has_the_model_dims(path_fit):
    from caltars_bayes.model.build import AllianceModel

    model = AllianceModel(path_fit.data).model
    post = path_fit.posterior
    assert dict(post.sizes)["chain"] == 1 and dict(post.sizes)["draw"] == 300
    for name in ("theta", "zeta", "loading", "cutpoints", "severity", "association"):
        dims = model.named_vars_to_dims[name]
        assert post[name].dims == ("chain", "draw", *dims)
        for d in dims:
            assert list(post[name][d].values) == list(model.coords[d])
    assert not any(v.endswith("__") for v in post.data_vars)  # no transformed values
    # loadings keep the model's constraint: geometric mean 1 within each scale
    scale_of = path_fit.data.item_scale_idx
    logl = np.log(post["loading"].values[0])
    for k in np.unique(scale_of):
        np.testing.assert_allclose(logl[:, scale_of == k].mean(axis=1), 0.0, atol=1e-9)


def test_approximate_fit_is_labelled_everywhere(path_fit, tmp_path):
    assert not path_fit.converged
    assert path_fit.record.method == "pathfinder"
    assert np.isfinite(path_fit.record.approximation["pareto_k"])
    assert "APPROXIMATE" in repr(path_fit)
    for table in (path_fit.summary(), path_fit.scores(), path_fit.judges()):
        assert not table["converged"].any()
        assert (table["approximate"] == "pathfinder").all()
        assert "approximate fit (pathfinder" in table.attrs["diagnostics"]
    s = path_fit.summary()
    assert s["r_hat"].isna().all() and s["ess_bulk"].isna().all()
    out = tmp_path / "fit"
    save_fit_directory(path_fit, out)
    back = load_fit(out)
    assert back.diagnostics.approximate and not back.converged
    assert back.diagnostics.pareto_k == pytest.approx(path_fit.diagnostics.pareto_k)
    assert back.record.method == "pathfinder"
    saved = pd.read_csv(out / "summary.csv")
    assert (saved["approximate"] == "pathfinder").all() and not saved["converged"].any()
    xr.testing.assert_allclose(back.posterior["theta"], path_fit.posterior["theta"])


def _theta_r(fit, truth) -> float:
    est = fit.posterior["theta"].mean(("chain", "draw"))
    true = truth["theta"].sel(subject=est.subject, scale=est.scale).transpose(*est.dims)
    return float(np.corrcoef(est.values.ravel(), true.values.ravel())[0, 1])


def test_pathfinder_recovers_subject_alliance(path_fit, tiny_trial):
    assert _theta_r(path_fit, tiny_trial.truth) > 0.8


def test_advi_recovers_subject_alliance(advi_fit, tiny_trial):
    assert advi_fit.record.method == "advi" and not advi_fit.converged
    assert (advi_fit.scores()["approximate"] == "advi").all()
    assert _theta_r(advi_fit, tiny_trial.truth) > 0.8
    # severity signs: the judges' true severities are recovered in order
    est = advi_fit.posterior["severity"].mean(("chain", "draw"))
    true = tiny_trial.truth["severity"].sel(scale=est.scale, judge=est.judge)
    true = true.transpose(*est.dims)
    assert float(np.corrcoef(est.values.ravel(), true.values.ravel())[0, 1]) > 0.8


def test_fullrank_advi_runs_on_a_small_design(calpas):
    from caltars_bayes.model.simulate import simulate_trial

    trial = simulate_trial(calpas, n_subjects=4, n_sessions=2, n_judges=2, seed=9)
    fit = fit_model(
        trial.to_rating_data(),
        draws=100,
        method="fullrank_advi",
        random_seed=1,
        approx={"iterations": 300},
        progressbar=False,
    )
    assert fit.diagnostics.approx_method == "fullrank_advi" and not fit.converged
    assert np.isfinite(fit.posterior["theta"].values).all()


def test_cli_fit_method_pathfinder(tiny_trial, tmp_path, capsys):
    tiny_trial.write(tmp_path / "sim")
    out = tmp_path / "fit"
    args = [
        "fit",
        str(tmp_path / "sim" / "ratings.csv"),
        "--instrument",
        str(models_dir() / "calpas.toml"),
        "--method",
        "pathfinder",
        "--draws",
        "100",
        "--out",
        str(out),
    ]  # not --quiet: that silences the "fitting ... APPROXIMATELY" line too
    # --strict demands a converged MCMC fit: an approximation never is one (exit 3),
    # but the labelled results are still written
    assert main([*args, "--strict"]) == 3
    text = capsys.readouterr().out
    assert "APPROXIMATELY with pathfinder" in text and "approximate fit (pathfinder" in text
    scores = pd.read_csv(out / "scores.csv")
    assert (scores["approximate"] == "pathfinder").all() and not scores["converged"].any()
