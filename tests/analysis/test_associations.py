"""Covariates in the joint model, latent associations and the hypothesis table.

Three tiers: the model's covariate density and derived correlations against
direct numpy/scipy computations; association, regression, gain and verdict
functions on hand-built posteriors (no MCMC); and seeded recovery fits
(marked slow) that check coverage, signs, attenuation, missing covariates and
verdicts against known latent correlations.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from scipy import stats

from caltars_bayes._core.errors import CaltarsError, SpecError
from caltars_bayes.analysis.associations import (
    associations,
    imputed_covariates,
    latent_regression,
    residualised_gain,
)
from caltars_bayes.analysis.validity import summarise_verdicts, test_hypotheses
from caltars_bayes.cli import main
from caltars_bayes.inference.diagnostics import Diagnostics
from caltars_bayes.inference.fit import Fit, load_fit
from caltars_bayes.model.build import AllianceModel
from caltars_bayes.model.plan import plan_model
from caltars_bayes.model.simulate import simulate_trial
from caltars_bayes.report.outputs import save_fit_directory, saved_hypotheses
from caltars_bayes.spec.hypotheses import check_hypotheses, hypotheses_from_dict, load_hypotheses
from caltars_bayes.spec.instrument import models_dir

# ----------------------------------------------------------------------------- model


@pytest.fixture(scope="module")
def cov_trial(calpas):
    return simulate_trial(
        calpas,
        n_subjects=15,
        n_sessions=2,
        n_judges=2,
        seed=4,
        subject_covariates={"a": {"PC": 0.5}, "b": {"PWC": -0.3}, "c": {}},
        session_covariates={"w": {"PC": 0.4}},
        covariate_missing_rate=0.2,
    )


def test_plan_lists_covariates_and_scaling(cov_trial):
    data = cov_trial.to_rating_data()
    plan = plan_model(data)
    assert plan.covariates == ["a", "b", "c"]
    assert plan.session_covariates == ["w"]
    a = data.covariates["a"]
    assert plan.covariate_scaling["a"] == pytest.approx([a.mean(), a.std(ddof=1)])


def test_session_covariates_can_be_aggregated_or_left_out(cov_trial):
    from dataclasses import replace

    data = cov_trial.to_rating_data()
    opts = replace(data.instrument.model, session_covariates="subject")
    plan = plan_model(data, opts)
    assert plan.covariates == ["a", "b", "c", "w"] and plan.session_covariates == []
    assert plan.aggregated == ["w"]
    assert any("averaged" in n for n in plan.notes)
    none = plan_model(data, replace(opts, session_covariates="none", covariates=False))
    assert none.covariates == [] and none.session_covariates == []
    assert len(none.notes) == 2  # both omissions are reported


def test_covariate_density_is_the_conditional_normal(cov_trial):
    """The model's covariate term equals scipy's MVN density of x given the latent values."""
    data = cov_trial.to_rating_data()
    am = AllianceModel(data)
    m = am.model
    point = m.initial_point()
    rng = np.random.default_rng(0)
    point = {k: v + rng.normal(0, 0.3, size=np.shape(v)) for k, v in point.items()}
    names = [
        "covariate_loglik",
        "theta",
        "sd_alliance",
        "covariate_intercept",
        "covariate_slope",
        "covariate_sd",
        "covariate_resid_corr_chol",
    ]
    outs = m.replace_rvs_by_values([m[n] for n in names])
    fn = m.compile_fn(outs, inputs=m.value_vars, on_unused_input="ignore", point_fn=False)
    logp, theta, sd, a, b, s, chol = fn(*[point[v.name] for v in m.value_vars])
    x, _ = am._covariate_matrix(am.plan.covariates, am.plan.covariate_scaling, "subject")
    miss = ~np.isfinite(x)
    x = x.copy()
    x[miss] = point["covariate_missing_z"]
    mean = a + (theta / sd) @ b
    cov = np.outer(s, s) * (chol @ chol.T)
    expected = sum(stats.multivariate_normal(mean[i], cov).logpdf(x[i]) for i in range(len(x)))
    assert logp == pytest.approx(expected, rel=1e-9)


def test_association_formula_matches_simulation():
    """association = R B / sd(x): check against a large numpy simulation of the block."""
    rng = np.random.default_rng(1)
    r = np.array([[1.0, 0.4, 0.1], [0.4, 1.0, -0.2], [0.1, -0.2, 1.0]])
    b = np.array([[0.5, 0.0], [-0.3, 0.2], [0.1, 0.6]])
    s = np.array([0.8, 1.2])
    re = np.array([[1.0, 0.3], [0.3, 1.0]])
    n = 400_000
    u = rng.multivariate_normal(np.zeros(3), r, size=n)
    e = rng.multivariate_normal(np.zeros(2), re, size=n) * s
    x = 0.2 + u @ b + e
    empirical = np.corrcoef(np.column_stack([u, x]).T)[:3, 3:]
    cov_x = b.T @ r @ b + np.outer(s, s) * re
    formula = (r @ b) / np.sqrt(np.diag(cov_x))[None, :]
    np.testing.assert_allclose(formula, empirical, atol=0.005)


# ----------------------------------------------------------------------------- synthetic posteriors


def _synthetic_fit(trial, draws: dict[str, np.ndarray]) -> Fit:
    """A Fit whose posterior is hand-built (1 chain) over a real trial's data."""
    data = trial.to_rating_data()
    plan = plan_model(data)
    k = data.n_scales
    n = next(iter(draws.values())).shape[0]
    coords = {
        "chain": [0],
        "draw": np.arange(n),
        "scale": list(data.scales),
        "scale2": list(data.scales),
        "covariate": plan.covariates,
        "covariate2": plan.covariates,
    }
    dims = {
        "association": ("scale", "covariate"),
        "factor_corr": ("scale", "scale2"),
        "covariate_corr": ("covariate", "covariate2"),
    }
    post = xr.Dataset(
        {v: (("chain", "draw", *dims[v]), a[None]) for v, a in draws.items()},
        coords={
            c: coords[c]
            for c in coords
            if c in {"chain", "draw"} | {d for v in draws for d in dims[v]}
        },
    )
    if "factor_corr" not in post:
        post["factor_corr"] = (
            ("chain", "draw", "scale", "scale2"),
            np.broadcast_to(np.eye(k), (1, n, k, k)).copy(),
        )
        post = post.assign_coords(scale2=list(data.scales))
    dt = xr.DataTree.from_dict({"posterior": post})
    diag = Diagnostics(False, np.nan, np.nan, np.nan, 0, 0, [], 1, n, problems=["synthetic"])
    return Fit(dt, data, plan, diag, {"sampler": "synthetic"})


@pytest.fixture(scope="module")
def two_cov_trial(calpas):
    return simulate_trial(
        calpas,
        n_subjects=20,
        n_sessions=2,
        n_judges=2,
        seed=2,
        subject_covariates={"pre": {"PC": 0.3}, "post": {"PC": 0.5}},
    )


def test_association_probabilities_and_verdicts_on_synthetic_draws(two_cov_trial):
    rng = np.random.default_rng(3)
    n = 4000
    # PC~pre clearly positive, PWC~pre clearly negative, TUI~pre near zero, rest wide
    centre = np.array([[0.5, 0.5], [-0.5, 0.0], [0.0, 0.02], [0.1, -0.05]])
    spread = np.array([[0.1, 0.1], [0.1, 0.3], [0.03, 0.03], [0.3, 0.3]])
    a = np.clip(centre + spread * rng.normal(size=(n, 4, 2)), -0.99, 0.99)
    fit = _synthetic_fit(two_cov_trial, {"association": a})
    tab = associations(fit, rope=0.1)
    assert list(tab.columns[:3]) == ["scale", "covariate", "level"]
    row = tab[(tab["scale"] == "PC") & (tab["covariate"] == "pre")].iloc[0]
    assert row["p_positive"] == pytest.approx((a[:, 0, 0] > 0).mean())
    assert row["median"] == pytest.approx(np.median(a[:, 0, 0]))
    tui = tab[(tab["scale"] == "TUI") & (tab["covariate"] == "pre")].iloc[0]
    assert tui["p_rope"] == pytest.approx((abs(a[:, 2, 0]) < 0.1).mean())
    # classical column: Pearson r of observed subject means, as scipy computes it
    data = fit.data
    means = data.scale_scores("subject", by_judge=False).set_index("subject")["PC"]
    x = data.covariates["pre"]
    ok = x.notna()
    r, p = stats.pearsonr(means[ok.values].to_numpy(), x[ok].to_numpy())
    assert row["classical_r"] == pytest.approx(r) and row["classical_p"] == pytest.approx(p)

    hyps = hypotheses_from_dict(
        {
            "hypothesis": [
                {"scale": "PC", "covariate": "pre", "direction": "positive"},
                {"scale": "PWC", "covariate": "pre", "direction": "positive"},
                {"scale": "WSC", "covariate": "pre", "direction": "positive"},
                {"scale": "TUI", "covariate": "pre", "direction": "null"},
                {"scale": "PC", "covariate": "post", "direction": "null"},
            ]
        }
    )
    verdicts = test_hypotheses(fit, hyps)["verdict"].tolist()
    assert verdicts == ["supported", "contradicted", "inconclusive", "supported", "contradicted"]
    assert summarise_verdicts(test_hypotheses(fit, hyps)).startswith("5 hypotheses: 2 supported")


def test_latent_regression_and_gain_match_closed_forms(two_cov_trial):
    """Per-draw formulas against hand computation on a fixed correlation matrix."""
    n = 10
    fc = np.eye(4)
    fc[0, 1] = fc[1, 0] = 0.3
    assoc = np.zeros((4, 2))
    assoc[0] = [0.3, 0.5]  # PC with pre, post
    assoc[1] = [0.1, 0.2]
    cc = np.array([[1.0, 0.6], [0.6, 1.0]])
    fit = _synthetic_fit(
        two_cov_trial,
        {
            "association": np.broadcast_to(assoc, (n, 4, 2)).copy(),
            "factor_corr": np.broadcast_to(fc, (n, 4, 4)).copy(),
            "covariate_corr": np.broadcast_to(cc, (n, 2, 2)).copy(),
        },
    )
    gain = residualised_gain(fit, pre="pre", post="post", name="gain").set_index("scale")
    expected = (0.5 - 0.3 * 0.6) / np.sqrt(1 - 0.6**2)
    assert gain.loc["PC", "median"] == pytest.approx(expected)
    assert gain.loc["PC", "covariate"] == "gain"
    reg = latent_regression(fit, "post", ["PC", "PWC"]).set_index("predictor")
    r_pp = np.array([[1.0, 0.3], [0.3, 1.0]])
    beta = np.linalg.solve(r_pp, [0.5, 0.2])
    assert reg.loc["PC", "median"] == pytest.approx(beta[0])
    assert reg.loc["PWC", "median"] == pytest.approx(beta[1])
    assert reg.loc["R2", "median"] == pytest.approx(float(np.dot([0.5, 0.2], beta)))
    with pytest.raises(CaltarsError, match="not a subject covariate"):
        residualised_gain(fit, pre="nope", post="post")


# ----------------------------------------------------------------------------- hypotheses files


def test_founding_hypotheses_file_parses_and_matches_the_simulator():
    from caltars_bayes.model.simulate import (
        FOUNDING_SESSION_COVARIATES,
        FOUNDING_SUBJECT_COVARIATES,
    )

    h = load_hypotheses(models_dir() / "caltars-1989-hypotheses.toml")
    covs = {x.covariate for x in h.hypotheses}
    assert covs <= set(FOUNDING_SUBJECT_COVARIATES) | set(FOUNDING_SESSION_COVARIATES)
    assert {x.direction for x in h.hypotheses} == {"positive", "negative", "null"}
    check_hypotheses(
        h,
        ["PPC", "PNC", "TPC", "TNC", "PTA"],
        [*FOUNDING_SUBJECT_COVARIATES, *FOUNDING_SESSION_COVARIATES],
    )


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"hypothesis": [{"scale": "PC", "covariate": "a", "direction": "up"}]}, "direction"),
        (
            {"hypothesis": [{"scale": "PC", "covariate": "a", "direction": "null", "x": 1}]},
            "unknown key",
        ),
        ({"hypothesis": [{"covariate": "a", "direction": "null"}]}, "either 'scale'"),
        (
            {
                "settings": {"rope": 2},
                "hypothesis": [{"scale": "PC", "covariate": "a", "direction": "null"}],
            },
            "rope",
        ),
        ({}, "no \\[\\[hypothesis\\]\\]"),
    ],
)
def test_bad_hypotheses_give_one_line_errors(doc, message):
    with pytest.raises(SpecError, match=message) as err:
        hypotheses_from_dict(doc, "h.toml")
    assert "\n" not in str(err.value) and str(err.value).startswith("h.toml")


def test_hypotheses_naming_unknown_scale_or_covariate_are_refused():
    h = hypotheses_from_dict(
        {"hypothesis": [{"scale": "PC", "covariate": "zzz", "direction": "positive"}]}, "h.toml"
    )
    with pytest.raises(SpecError, match=r"h\.toml hypothesis #1: covariate 'zzz'"):
        check_hypotheses(h, ["PC"], ["a"])
    h2 = hypotheses_from_dict(
        {"hypothesis": [{"scale": "XX", "covariate": "a", "direction": "positive"}]}, "h.toml"
    )
    with pytest.raises(SpecError, match="scale 'XX'"):
        check_hypotheses(h2, ["PC"], ["a"])


# ----------------------------------------------------------------------------- fitted


def test_tiny_fit_saves_associations_and_hypotheses(tiny_fit, tmp_path):
    h = hypotheses_from_dict(
        {"hypothesis": [{"scale": "PC", "covariate": "x", "direction": "positive"}]}
    )
    out = tmp_path / "fit"
    save_fit_directory(tiny_fit, out, hypotheses=h)
    for name in ("associations.csv", "hypotheses.csv", "associations.png", "associations.svg"):
        assert (out / name).is_file(), name
    tab = pd.read_csv(out / "hypotheses.csv")
    assert tab.loc[0, "verdict"] in ("supported", "contradicted", "inconclusive")
    assert not tab["converged"].any()  # the tiny fit is not converged, and the table says so
    back = load_fit(out)
    saved = saved_hypotheses(out)
    assert saved is not None and saved.hypotheses[0].covariate == "x"
    pd.testing.assert_frame_equal(
        associations(back).drop(columns="converged"),
        pd.read_csv(out / "associations.csv").drop(columns="converged"),
        check_dtype=False,
    )


def test_cli_refuses_bad_hypotheses_before_fitting(tiny_trial, tmp_path, capsys):
    tiny_trial.write(tmp_path / "trial")
    bad = tmp_path / "h.toml"
    bad.write_text('[[hypothesis]]\nscale = "PC"\ncovariate = "nope"\ndirection = "positive"\n')
    rc = main(
        [
            "fit",
            str(tmp_path / "trial" / "ratings.csv"),
            "--instrument",
            str(models_dir() / "calpas.toml"),
            "--covariates",
            str(tmp_path / "trial" / "covariates.csv"),
            "--hypotheses",
            str(bad),
            "--out",
            str(tmp_path / "fit"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "covariate 'nope'" in err and "Traceback" not in err
    assert not (tmp_path / "fit").exists()


# ----------------------------------------------------------------------------- recovery (slow)

RECOVERY_SUBJECT = {
    "a": {"PC": 0.6, "TUI": 0.3},
    "b": {"PWC": -0.5},
    "c": {"WSC": 0.45, "PC": -0.2},
    "d": {},
}
RECOVERY_SESSION = {"w": {"PC": 0.5, "WSC": -0.3}}


def _recovery_fit(calpas, seed: int):
    """A seeded trial with known latent correlations, 20% of covariate values missing.

    Modest alliance variance and two judges x two sessions make observed scale
    means unreliable enough that attenuation of the classical r is visible.
    """
    from caltars_bayes.inference.fit import fit_model

    trial = simulate_trial(
        calpas,
        n_subjects=90,
        n_sessions=2,
        n_judges=2,
        sd_alliance=0.9,
        sd_session=0.5,
        factor_corr=0.2,
        subject_covariates=RECOVERY_SUBJECT,
        session_covariates=RECOVERY_SESSION,
        covariate_missing_rate=0.2,
        seed=seed,
    )
    fit = fit_model(
        trial.to_rating_data(),
        draws=400,
        tune=600,
        chains=2,
        random_seed=seed,
        progressbar=False,
        nuts={"backend": "numba"},  # sampling-bound: numba, as tests/inference/test_recovery.py
    )
    return trial, fit


@pytest.fixture(scope="session")
def recovery_fit(calpas):
    """The first recovery trial (seed 21): the CI tests need only this one."""
    return _recovery_fit(calpas, 21)


@pytest.fixture(scope="session")
def recovery_fits(calpas, recovery_fit):
    """Both recovery trials (seeds 21 and 22), for the `long` tests."""
    return [recovery_fit, _recovery_fit(calpas, 22)]


def _truth_table(trial) -> pd.DataFrame:
    t = trial.truth
    sub = t["covariate_corr"].to_dataframe(name="truth").reset_index().assign(level="subject")
    ses = (
        t["session_covariate_corr"]
        .to_dataframe(name="truth")
        .reset_index()
        .rename(columns={"session_covariate": "covariate"})
        .assign(level="session")
    )
    return pd.concat([sub, ses], ignore_index=True)[["scale", "covariate", "level", "truth"]]


@pytest.mark.long  # about 2.5 minutes of fitting: run by `make test-long`, not in CI
def test_latent_associations_recover_truth(recovery_fits):
    rows = []
    for trial, fit in recovery_fits:
        assert fit.diagnostics.divergences == 0
        rows.append(
            associations(fit).merge(_truth_table(trial), on=["scale", "covariate", "level"])
        )
    tab = pd.concat(rows, ignore_index=True)
    assert len(tab) == 2 * (4 * 4 + 4)
    covered = ((tab["hdi_low"] <= tab["truth"]) & (tab["truth"] <= tab["hdi_high"])).mean()
    # 95% HDIs over 40 pairs: about 38 expected; fewer than 34 has probability < 1%
    assert covered >= 34 / 40, covered
    strong = tab[tab["truth"].abs() >= 0.4]
    assert len(strong) >= 8
    assert (np.sign(strong["median"]) == np.sign(strong["truth"])).all()
    # less attenuated than the classical r of observed means (which the ratings' error shrinks)
    nonzero = tab[tab["truth"].abs() >= 0.3]
    ratio_bayes = (nonzero["median"] / nonzero["truth"]).mean()
    ratio_classical = (nonzero["classical_r"] / nonzero["truth"]).mean()
    assert ratio_classical < 0.95, ratio_classical
    assert ratio_bayes > ratio_classical + 0.04, (ratio_bayes, ratio_classical)


@pytest.mark.slow
def test_missing_covariates_are_imputed_not_dropped(recovery_fit):
    _, fit = recovery_fit
    n_missing = int(fit.data.covariates.isna().sum().sum())
    n_missing_ses = int(fit.data.session_covariates.isna().sum().sum())
    assert n_missing > 0 and n_missing_ses > 0
    imp = imputed_covariates(fit)
    assert len(imp) == n_missing + n_missing_ses
    assert set(imp["level"]) == {"subject", "session"}
    # the data report says how many were missing
    assert sum(fit.data.report.covariates["missing"].values()) == n_missing


DESIGNED_HYPOTHESES = {
    "hypothesis": [
        {"scale": "PC", "covariate": "a", "direction": "positive"},  # true .6
        {"scale": "PWC", "covariate": "b", "direction": "positive"},  # true -.5
        {"scale": "WSC", "covariate": "c", "direction": "negative"},  # true .45
        {"scale": "PC", "covariate": "w", "direction": "positive"},  # true .5
        {"scale": "TUI", "covariate": "d", "direction": "positive"},  # true 0
    ]
}


def _check_designed_verdicts(fit) -> None:
    v = test_hypotheses(fit, hypotheses_from_dict(DESIGNED_HYPOTHESES))["verdict"].tolist()
    assert v[:4] == ["supported", "contradicted", "contradicted", "supported"], v
    assert v[4] != "supported"


@pytest.mark.slow
def test_hypothesis_verdicts_on_a_designed_trial(recovery_fit):
    _check_designed_verdicts(recovery_fit[1])


@pytest.mark.long  # a second seeded trial (about 85 s of fitting): `make test-long`
def test_hypothesis_verdicts_on_a_second_designed_trial(recovery_fits):
    _check_designed_verdicts(recovery_fits[1][1])
