"""Graph-level tests of the measurement model (no sampling)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pymc as pm
import pytensor.tensor as pt
import pytest

from caltars_bayes.model.build import AllianceModel
from caltars_bayes.model.components import (
    CentredOrdered,
    cumulative_logit_logp,
    origin_sd,
    sum_to_zero_basis,
)
from caltars_bayes.model.plan import plan_model
from caltars_bayes.model.simulate import simulate_trial
from caltars_bayes.spec.instrument import (
    ModelOptions,
    Prior,
    Priors,
    load_instrument,
    parse_instrument,
)


def to_point(m: pm.Model, values: dict) -> dict:
    """An unconstrained point of ``m`` with the given constrained values."""
    point = m.initial_point()
    for name, val in values.items():
        rv = m[name]
        tr = m.rvs_to_transforms.get(rv)
        vv = m.rvs_to_values[rv]
        point[vv.name] = (
            tr.forward(pt.as_tensor(val), *rv.owner.inputs).eval() if tr is not None else val
        )
    return point


@pytest.fixture(scope="module")
def founding_data(caltars):
    return simulate_trial(caltars, seed=1).to_rating_data()


def _exact_logp(y: int, mu: float, cut: np.ndarray) -> float:
    """log P(y) computed with 60-digit decimals (an independent reference)."""
    from decimal import Decimal, getcontext

    getcontext().prec = 60

    def expit(x: float) -> Decimal:
        return 1 / (1 + (-Decimal(x)).exp())

    hi = expit(cut[y] - mu) if y < len(cut) else Decimal(1)
    lo = expit(cut[y - 1] - mu) if y > 0 else Decimal(0)
    return float((hi - lo).ln())


def test_cumulative_logit_is_accurate_and_matches_pymc():
    rng = np.random.default_rng(0)
    n = 300
    cut = np.sort(rng.normal(0, 2, size=(7, 4)), axis=1)
    row = rng.integers(0, 7, n)
    y = rng.integers(0, 5, n)
    for scale in (1.0, 8.0, 30.0):  # includes very improbable categories
        mu = rng.normal(0, scale, n)
        ours = cumulative_logit_logp(y, mu, cut, row).eval()
        exact = np.array([_exact_logp(y[i], mu[i], cut[row[i]]) for i in range(n)])
        assert np.all(np.isfinite(ours))
        np.testing.assert_allclose(ours, exact, rtol=1e-9, atol=1e-14)
        ref = pm.logp(pm.OrderedLogistic.dist(eta=mu, cutpoints=cut[row]), y).eval()
        likely = ref > -15  # PyMC's form loses digits (or underflows) in the far tails
        np.testing.assert_allclose(ours[likely], ref[likely], rtol=1e-9, atol=1e-10)


def test_cumulative_logit_probabilities_sum_to_one():
    cut = np.array([[-1.0, 0.0, 2.0]])
    mu = np.array([0.3, -4.0, 6.0])
    total = sum(
        np.exp(cumulative_logit_logp(np.full(3, c), mu, cut, np.zeros(3, int)).eval())
        for c in range(4)
    )
    np.testing.assert_allclose(total, 1.0, rtol=1e-12)


def test_founding_model_has_named_dims_and_finite_logp(founding_data):
    am = AllianceModel(founding_data)
    m = am.model
    assert am.plan.session_level and am.plan.judge_severity and am.plan.judge_discrimination
    dims = m.named_vars_to_dims
    assert dims["theta"] == ("subject", "scale")
    assert dims["zeta"] == ("session", "scale")
    assert dims["severity"] == ("scale", "judge")
    assert dims["discrimination"] == ("judge",)
    assert dims["loading"] == ("item",)
    assert dims["cutpoints"] == ("item", "cutpoint")
    assert dims["factor_corr"] == ("scale", "scale2")
    assert len(m.coords["subject"]) == 52 and len(m.coords["session"]) == 208
    assert np.isfinite(m.compile_logp()(m.initial_point()))
    # dense data judges are centred, subjects centred
    assert am.plan.centred_judges and am.plan.centred_subjects


def test_logp_is_highest_near_the_truth(caltars):
    """The likelihood prefers the true parameters to perturbed ones."""
    trial = simulate_trial(caltars, n_subjects=30, seed=3)
    data = trial.to_rating_data()
    m = AllianceModel(data).model
    t = trial.truth
    f = m.compile_logp(vars=[m["rating"]])
    basis, _ = sum_to_zero_basis(np.asarray(data.item_scale_idx), data.n_scales, data.items)

    def at(noise: float, seed: int = 0) -> float:
        rng = np.random.default_rng(seed)
        values = {
            "theta_raw": t["theta"].values + noise * rng.normal(size=t["theta"].shape),
            "zeta_z": t["zeta"].values / t["sd_session"].values,
            "sd_session": t["sd_session"].values,
            "log_loading_contrast": basis.T @ np.log(t["loading"].values),
            "log_discrimination": np.log(t["discrimination"].values),
            "severity": t["severity"].values.T,
            "cutpoints": t["cutpoints"].values,
        }
        return float(f(to_point(m, values)))

    assert at(0.0) > at(0.5) > at(1.5)


def test_single_judge_single_session_drops_levels(caltars):
    data = simulate_trial(caltars, n_subjects=20, n_sessions=1, n_judges=1, seed=2).to_rating_data()
    plan = plan_model(data)
    assert not plan.session_level and not plan.judge_severity and not plan.judge_discrimination
    assert any("session level dropped" in n for n in plan.notes)
    assert any("judge severity dropped" in n for n in plan.notes)
    m = AllianceModel(data).model
    assert "zeta" not in m.named_vars and "severity" not in m.named_vars
    assert np.isfinite(m.compile_logp()(m.initial_point()))


def test_forcing_an_unidentified_level_is_noted(caltars):
    data = simulate_trial(caltars, n_subjects=10, n_sessions=1, seed=2).to_rating_data()
    plan = plan_model(data, ModelOptions(session_level=True))
    assert plan.session_level
    assert any("constrained only by its prior" in n for n in plan.notes)


def test_sparse_many_judges_are_noncentred(caltars):
    data = simulate_trial(
        caltars, n_subjects=40, n_judges=300, judges_per_session=2, seed=4
    ).to_rating_data()
    am = AllianceModel(data)
    assert not am.plan.centred_judges
    assert "severity_z" in am.model.named_vars
    assert np.isfinite(am.model.compile_logp()(am.model.initial_point()))


def test_one_item_per_scale_has_unit_loadings(tmp_path):
    spec = tmp_path / "one.toml"
    spec.write_text(
        '[instrument]\nname = "ONE"\n[response]\nmin = 1\nmax = 4\n'
        '[[scale]]\ncode = "A"\nitems = ["A1"]\n[[scale]]\ncode = "B"\nitems = ["B1"]\n'
    )
    inst = load_instrument(spec)
    data = simulate_trial(inst, n_subjects=10, seed=1).to_rating_data()
    m = AllianceModel(data).model
    draws = pm.draw(m["loading"], draws=5, random_seed=1)
    np.testing.assert_allclose(draws, 1.0)


def test_sum_to_zero_basis_spans_the_centred_log_loadings():
    groups = np.array([0, 0, 1, 0, 1, 1, 1, 2])  # a one-member group has no contrast
    b, labels = sum_to_zero_basis(groups, 3, list("abcdefgh"))
    assert b.shape == (8, 8 - 3) and len(labels) == 5
    np.testing.assert_allclose(b.T @ b, np.eye(5), atol=1e-12)  # orthonormal
    same = (groups[:, None] == groups[None, :]).astype(float)
    centring = np.eye(8) - same / same.sum(axis=0)  # subtract each group's mean
    # b b' is the projection onto within-group contrasts: iid Normal(0, s)
    # coordinates give exactly the law of iid Normal(mu, s) values centred per group
    np.testing.assert_allclose(b @ b.T, centring, atol=1e-12)


@pytest.mark.parametrize("n_cut", [1, 2, 4])
def test_centred_ordered_transform_is_exact(n_cut):
    """Cutpoints from (mean, log gaps): inverse of itself, ordered, and its log
    Jacobian equals the numerical log |det J| (so the prior is unchanged)."""
    import pytensor

    tr = CentredOrdered(n_cut)
    y = pt.dmatrix("y")
    x = tr.backward(y)
    f = pytensor.function([y], [x, tr.forward(x), tr.log_jac_det(y)])
    yv = np.random.default_rng(n_cut).normal(size=(3, n_cut))
    xv, back, log_jac = f(yv)
    np.testing.assert_allclose(back, yv, atol=1e-12)
    assert np.all(np.diff(xv, axis=1) > 0)
    np.testing.assert_allclose(xv.mean(axis=1), yv[:, 0], atol=1e-12)  # y[0] is the mean
    eps = 1e-6
    for row in range(3):
        jac = np.column_stack(
            [
                (
                    f(yv[[row]] + eps * np.eye(n_cut)[j])[0][0]
                    - f(yv[[row]] - eps * np.eye(n_cut)[j])[0][0]
                )
                / (2 * eps)
                for j in range(n_cut)
            ]
        )
        np.testing.assert_allclose(log_jac[row], np.log(abs(np.linalg.det(jac))), atol=1e-7)


def test_cutpoints_are_sampled_as_mean_and_log_gaps(founding_data):
    m = AllianceModel(founding_data).model
    value = m.rvs_to_values[m["cutpoints"]]
    assert isinstance(m.rvs_to_transforms[m["cutpoints"]], CentredOrdered)
    assert value.name == "cutpoints_centred_ordered__"
    start = m.initial_point()[value.name]
    np.testing.assert_allclose(start[:, 0], 0.0, atol=1e-12)  # initial cutpoints centred at 0


def test_log_loadings_sum_to_zero_per_scale_without_a_free_mean(founding_data):
    m = AllianceModel(founding_data).model
    assert "log_loading_raw" not in m.named_vars
    n_free = m.initial_point()["log_loading_contrast"].size
    assert n_free == founding_data.n_items - founding_data.n_scales
    draws = np.log(pm.draw(m["loading"], draws=200, random_seed=2))
    isc = np.asarray(founding_data.item_scale_idx)
    for k in range(founding_data.n_scales):
        np.testing.assert_allclose(draws[:, isc == k].sum(axis=1), 0.0, atol=1e-10)
    # marginal SD of a centred log loading: sigma * sqrt(1 - 1/n_k) (prior sigma 0.5)
    n_k = (isc == 0).sum()
    assert np.std(draws[:, 0]) == pytest.approx(0.5 * np.sqrt(1 - 1 / n_k), rel=0.15)
    # another prior family keeps the centred form
    pri = Priors(log_loading=Prior("StudentT", {"nu": 4.0, "mu": 0.0, "sigma": 0.5}))
    assert "log_loading_raw" in AllianceModel(founding_data, priors=pri).model.named_vars


def test_subject_origin_potential_leaves_the_deviations_exact(founding_data):
    """Centred subjects: the average of theta_raw gets a fixed narrow prior.

    The model's log density (theta_raw prior + origin potential) must split into
    a part in the deviations and the scale parameters, plus
    ``-N |m|^2 / (2 tau^2)`` in the average ``m`` alone: then changing ``m``
    changes nothing else, whatever the SDs and correlations.
    """
    am = AllianceModel(founding_data, options=ModelOptions(parameterisation="centred"))
    m = am.model
    f = m.compile_logp(vars=[m["theta_raw"], m["theta_origin"]])
    n, k = founding_data.n_subjects, founding_data.n_scales
    tau = origin_sd(founding_data)
    rng = np.random.default_rng(0)
    dev = rng.normal(size=(n, k))
    dev -= dev.mean(axis=0)
    m1, m2 = rng.normal(0, 0.3, size=k), rng.normal(0, 0.3, size=k)
    diffs = []
    for sd in (0.5, 2.0):
        pt_ = m.initial_point()
        pt_["sd_alliance_log__"] = np.full(k, np.log(sd))
        pt_["factor_corr_chol_cholesky_corr__"] = rng.normal(0, 0.5, size=k * (k - 1) // 2)
        a = f({**pt_, "theta_raw": dev + m1})
        b = f({**pt_, "theta_raw": dev + m2})
        diffs.append(a - b)
    expected = -0.5 * n * ((m1**2).sum() - (m2**2).sum()) / tau**2
    np.testing.assert_allclose(diffs, expected, rtol=1e-8)


def test_joint_form_keeps_the_prior_of_subjects_and_sessions(caltars):
    """``parameterisation = "joint"`` samples theta through each subject's average
    session alliance. The prior must stay the separate form's: zeta iid
    Normal(0, sd_session), independent of the subject factors, whose covariance
    is the factor model's - also with unequal numbers of sessions per subject."""
    data = simulate_trial(
        caltars, n_subjects=8, n_sessions=4, min_sessions=1, n_judges=2, seed=3
    ).to_rating_data()
    ss = np.asarray(data.session_subject_idx)
    n_sess = np.bincount(ss, minlength=data.n_subjects)
    assert np.unique(n_sess).size > 1 and n_sess.min() == 1  # the per-group path
    am = AllianceModel(data, options=ModelOptions(parameterisation="joint"))
    assert am.plan.joint_subject_sessions
    m = am.model
    assert {"subject_mean", "theta_z", "zeta_z"} <= {v.name for v in m.free_RVs}
    assert "theta_raw" not in m.named_vars
    assert np.isfinite(m.compile_logp()(m.initial_point()))
    theta, zeta, sd_a, sd_s, omega = pm.draw(
        [m["theta"], m["zeta"], m["sd_alliance"], m["sd_session"], m["factor_corr"]],
        draws=4000,
        random_seed=1,
    )
    z = zeta / sd_s[:, None, :]  # (draw, session, scale): iid standard normal
    assert np.abs(z.mean(axis=0)).max() < 0.07
    assert np.abs(z.var(axis=0) - 1.0).max() < 0.12
    t = theta / sd_a[:, None, :]  # centred over subjects: covariance (1 - 1/N) Omega
    shrink = 1.0 - 1.0 / data.n_subjects
    resid = t[:, :, :, None] * t[:, :, None, :] - shrink * omega[:, None]
    assert np.abs(resid.mean(axis=0)).max() < 0.12
    for s in range(data.n_sessions):  # no correlation within a subject
        p = ss[s]
        r_theta = [np.corrcoef(z[:, s, k], t[:, p, k])[0, 1] for k in range(data.n_scales)]
        assert np.abs(r_theta).max() < 0.07, (s, r_theta)
        others = np.flatnonzero((ss == p) & (np.arange(data.n_sessions) != s))
        for o in others:
            r = [np.corrcoef(z[:, s, k], z[:, o, k])[0, 1] for k in range(data.n_scales)]
            assert np.abs(r).max() < 0.07, (s, o, r)


def test_joint_form_needs_a_session_level(caltars):
    data = simulate_trial(caltars, n_subjects=10, n_sessions=1, seed=2).to_rating_data()
    plan = plan_model(data, ModelOptions(parameterisation="joint"))
    assert not plan.session_level and not plan.joint_subject_sessions
    assert any("joint subject/session form needs a session level" in n for n in plan.notes)
    assert not plan_model(data).joint_subject_sessions  # never by default


def test_auto_parameterisation_is_joint_for_large_designs(caltars):
    """The rule at its threshold (``LARGE_DESIGN_SESSIONS``, 400): 99 subjects x 4
    sessions keep the default form, 100 x 4 get the joint form (stated in the
    plan's notes), and an explicit parameterisation is kept at any size. With
    CALTARS's 5 scales 400 sessions are also 2,000 session deviations
    (``LARGE_DESIGN_SESSION_SCALES``), from which the trajectory cap is shorter;
    a 2-scale instrument needs 1,000 sessions for that."""
    from caltars_bayes.model.plan import LARGE_DESIGN_SESSION_SCALES, LARGE_DESIGN_SESSIONS

    assert (LARGE_DESIGN_SESSIONS, LARGE_DESIGN_SESSION_SCALES) == (400, 2000)
    plans = {}
    for n in (99, 100):
        trial = simulate_trial(caltars, n_subjects=n, n_sessions=4, n_judges=1, seed=3)
        data = trial.to_rating_data()
        assert data.n_sessions == 4 * n
        plans[n] = plan_model(data)
    assert not plans[99].joint_subject_sessions and not plans[99].large_design
    assert not plans[99].short_trajectory_cap
    assert plans[100].joint_subject_sessions and plans[100].large_design
    assert plans[100].short_trajectory_cap
    assert any(note.startswith("large design (400 sessions >= 400)") for note in plans[100].notes)
    explicit = plan_model(data, ModelOptions(parameterisation="noncentred"))
    assert not explicit.joint_subject_sessions and not explicit.large_design
    assert not explicit.centred_subjects and not explicit.centred_sessions
    assert not explicit.short_trajectory_cap
    # two scales: large from 400 sessions, the shorter cap from 1,000
    two = parse_instrument(
        {
            "instrument": {"name": "TWO"},
            "response": {"min": 1, "max": 5},
            "scale": [
                {"code": "A", "name": "A", "items": ["A1", "A2", "A3"]},
                {"code": "B", "name": "B", "items": ["B1", "B2", "B3"]},
            ],
        },
        "<test>",
    )
    for n, cap in ((150, False), (249, False), (250, True)):
        trial = simulate_trial(two, n_subjects=n, n_sessions=4, n_judges=1, seed=3)
        plan = plan_model(trial.to_rating_data())
        assert plan.large_design and plan.joint_subject_sessions
        assert plan.short_trajectory_cap is cap, n


def test_options_switch_parts(founding_data):
    opts = ModelOptions(
        session_trend=True,
        judge_subject_interaction=True,
        cutpoints="scale",
        parameterisation="noncentred",
    )
    am = AllianceModel(founding_data, options=opts)
    m = am.model
    assert "session_trend" in m.named_vars and "interaction" in m.named_vars
    assert m.named_vars_to_dims["cutpoints"] == ("scale", "cutpoint")
    assert "theta_z" in m.named_vars and "zeta_z" in m.named_vars
    assert np.isfinite(m.compile_logp()(m.initial_point()))


def test_priors_from_spec_are_used(founding_data):
    pri = Priors(sd_session=Prior("Exponential", {"lam": 3.0}))
    m = AllianceModel(founding_data, priors=pri).model
    rv = m["sd_session"]
    assert rv.owner.op.__class__.__name__.lower().startswith("exponential")


def test_prior_predictive_ratings_in_range(founding_data):
    m = AllianceModel(founding_data).model
    with m:
        prior = pm.sample_prior_predictive(draws=3, random_seed=1)
    y = prior["prior_predictive"]["rating"].values
    assert y.min() >= 0 and y.max() <= 4
    assert y.shape[-1] == founding_data.n_ratings


def test_prior_predictive_check_and_plot(caltars, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from caltars_bayes.model.prior_predictive import (
        category_frequencies,
        plot_prior_predictive,
        prior_predictive,
    )

    data = simulate_trial(caltars, n_subjects=10, n_sessions=2, n_judges=2, seed=9).to_rating_data()
    pp = prior_predictive(data, draws=40, random_seed=2)
    assert pp["rating"].shape == (40, data.n_ratings)
    freq = category_frequencies(data, pp["rating"])
    assert len(freq) == data.n_items * 5
    np.testing.assert_allclose(freq.groupby("item")["observed"].sum(), 1.0)
    assert (freq["sim_low"] <= freq["sim_median"]).all()
    assert (freq["sim_median"] <= freq["sim_high"]).all()
    assert freq["sim_high"].max() > freq["sim_low"].min()
    # weakly informative priors: observed proportions mostly inside the 90% prior bands
    assert freq["inside"].mean() > 0.8
    fig = plot_prior_predictive(data, pp)
    fig.savefig(tmp_path / "ppc.png")
    assert (tmp_path / "ppc.png").stat().st_size > 1000


# ----------------------------------------------------------------------------- bifactor


def test_bifactor_structure_builds_a_general_factor(caltars):
    from caltars_bayes.spec.instrument import instrument_from_dict

    inst = caltars.with_structure("bifactor")
    assert inst.model.bifactor and [s.code for s in inst.scales] == list(caltars.scale_codes)
    # the flag survives the round trip through a saved spec
    assert instrument_from_dict(caltars.spec_dict()).structures["bifactor"].bifactor
    trial = simulate_trial(caltars, n_subjects=8, n_sessions=2, n_judges=2, seed=3)
    from caltars_bayes.data.ratings import RatingData

    data = RatingData.from_frame(trial.ratings, inst, layout="long")
    am = AllianceModel(data)
    assert am.plan.bifactor
    m = am.model
    names = {v.name for v in m.free_RVs} | {v.name for v in m.deterministics}
    assert {"general", "general_loading"} <= names
    assert "factor_corr" not in names and "factor_corr_chol" not in names
    assert m.named_vars_to_dims["general"] == ("subject",)
    assert np.isfinite(m.point_logps()["rating"])


def test_bifactor_refused_where_it_does_not_identify(caltars):
    from dataclasses import replace

    from caltars_bayes._core.errors import SpecError

    two = caltars.with_structure("patient_therapist")
    two = replace(two, model=replace(two.model, bifactor=True))
    trial = simulate_trial(caltars, n_subjects=6, n_sessions=1, n_judges=1, seed=3)
    from caltars_bayes.data.ratings import RatingData

    data = RatingData.from_frame(trial.ratings, two, layout="long")
    with pytest.raises(SpecError, match="at least 3 specific factors"):
        plan_model(data)


@pytest.mark.slow
def test_bifactor_general_factor_tracks_the_common_alliance(caltars):
    """Data with strongly correlated scales: the general factor recovers their common part."""
    from caltars_bayes.data.ratings import RatingData
    from caltars_bayes.inference.fit import fit_model

    trial = simulate_trial(
        caltars, n_subjects=40, n_sessions=2, n_judges=2, factor_corr=0.7, seed=8
    )
    data = RatingData.from_frame(trial.ratings, caltars.with_structure("bifactor"), layout="long")
    fit = fit_model(data, draws=200, tune=300, chains=2, random_seed=8, progressbar=False)
    general = fit.posterior["general"].mean(("chain", "draw")).values
    common = trial.truth["theta"].mean("scale").values
    assert np.corrcoef(general, common)[0, 1] > 0.85
    assert float(fit.posterior["general_loading"].median()) > 0.3


def test_rating_simulator_does_not_depend_on_cutpoint_order():
    """PyMC's prior sampler leaves cutpoints unsorted; simulated ratings must not care."""
    from caltars_bayes.model.components import _cumulative_logit_random

    rng = np.random.default_rng(4)
    cut = np.sort(rng.normal(size=(3, 4)), axis=1)
    row = rng.integers(0, 3, 500)
    mu = rng.normal(size=500)
    a = _cumulative_logit_random(mu, cut, row, rng=np.random.default_rng(1))
    b = _cumulative_logit_random(mu, cut[:, ::-1], row, rng=np.random.default_rng(1))
    np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------- dense layout


@pytest.mark.parametrize(
    "extra",
    [
        {},
        dict(
            judge_subject_interaction=True,
            cutpoints="scale",
            session_trend=True,
            parameterisation="noncentred",
        ),
    ],
)
def test_dense_layout_has_the_long_layouts_density_and_gradient(caltars, extra):
    from caltars_bayes.model.simulate import (
        FOUNDING_SESSION_COVARIATES,
        FOUNDING_SUBJECT_COVARIATES,
    )

    trial = simulate_trial(
        caltars,
        n_subjects=4,
        n_sessions=2,
        n_judges=3,
        seed=4,
        subject_covariates=FOUNDING_SUBJECT_COVARIATES,
        session_covariates=FOUNDING_SESSION_COVARIATES,
    )
    data = trial.to_rating_data()
    long = AllianceModel(data, options=ModelOptions(**extra))
    dense = AllianceModel(data, options=ModelOptions(likelihood_layout="dense", **extra))
    assert long.plan.likelihood_layout == "vector"
    assert dense.plan.likelihood_layout == "dense"
    ml, md = long.model, dense.model
    assert md.named_vars_to_dims["rating"] == ("session", "judge", "item")
    assert [v.name for v in ml.value_vars] == [v.name for v in md.value_vars]
    f_l, f_d = _logp_and_grad(ml), _logp_and_grad(md)
    rng = np.random.default_rng(0)
    for _ in range(3):
        point = {k: v + rng.normal(0, 0.3, np.shape(v)) for k, v in ml.initial_point().items()}
        (lp_l, g_l), (lp_d, g_d) = f_l(point), f_d(point)
        np.testing.assert_allclose(lp_d, lp_l, rtol=1e-12)
        np.testing.assert_allclose(g_d, g_l, rtol=1e-9, atol=1e-9)


def _logp_and_grad(m: pm.Model):
    """Log density and its gradient as the JAX samplers see them (compiles in seconds)."""
    import jax
    from pymc.sampling.jax import get_jaxified_logp

    f = jax.jit(jax.value_and_grad(get_jaxified_logp(m)))
    names = [v.name for v in m.value_vars]

    def evaluate(point: dict) -> tuple[float, np.ndarray]:
        value, grad = f([np.asarray(point[n]) for n in names])
        return float(value), np.concatenate([np.ravel(g) for g in grad])

    return evaluate


def test_dense_layout_bifactor_and_ratings(caltars):
    from caltars_bayes.model.plan import dense_cells

    inst = caltars.with_structure("bifactor")
    trial = simulate_trial(caltars, n_subjects=5, n_sessions=2, n_judges=2, seed=3)
    from caltars_bayes.data.ratings import RatingData

    data = RatingData.from_frame(trial.ratings, inst, layout="long")
    ml = AllianceModel(data).model
    md = AllianceModel(data, options=replace(inst.model, likelihood_layout="dense")).model
    point = ml.initial_point()
    np.testing.assert_allclose(
        _logp_and_grad(md)(point)[0], _logp_and_grad(ml)(point)[0], rtol=1e-12
    )
    # the dense array holds every rating in its cell
    y = dense_cells(data)
    assert y.shape == (data.n_sessions, data.n_judges, data.n_items)
    np.testing.assert_array_equal(y[data.session_idx, data.judge_idx, data.item_idx], data.y)
    with md:
        draws = pm.sample_prior_predictive(draws=2, random_seed=1)["prior_predictive"]["rating"]
    assert draws.shape[-3:] == y.shape and 0 <= int(draws.min()) and int(draws.max()) <= 4


def test_dense_layout_falls_back_on_incomplete_designs(caltars):
    trial = simulate_trial(caltars, n_subjects=5, n_sessions=2, n_judges=2, seed=3)
    ratings = trial.ratings.iloc[1:]  # one cell missing
    from caltars_bayes.data.ratings import RatingData

    data = RatingData.from_frame(ratings, caltars, layout="long")
    am = AllianceModel(data, options=ModelOptions(likelihood_layout="dense"))
    assert am.plan.likelihood_layout == "vector"
    assert any(
        "dense likelihood layout requested but the design is incomplete" in n for n in am.plan.notes
    )
    assert am.model.named_vars_to_dims["rating"] == ("obs",)


def test_auto_likelihood_layout_is_dense_for_jax_samplers_on_complete_designs(caltars):
    from caltars_bayes.data.ratings import RatingData

    trial = simulate_trial(caltars, n_subjects=5, n_sessions=2, n_judges=2, seed=3)
    data = trial.to_rating_data()
    assert plan_model(data, sampler="numpyro").likelihood_layout == "dense"
    assert plan_model(data, sampler="blackjax").likelihood_layout == "dense"
    assert plan_model(data, sampler="nutpie").likelihood_layout == "vector"
    assert plan_model(data).likelihood_layout == "vector"
    sparse = RatingData.from_frame(trial.ratings.iloc[1:], caltars, layout="long")
    plan = plan_model(sparse, sampler="numpyro")
    assert plan.likelihood_layout == "vector" and not any("dense" in n for n in plan.notes)


def test_likelihood_layout_option_is_checked():
    from caltars_bayes._core.errors import SpecError

    opts = ModelOptions.parse({"likelihood_layout": "dense"}, "[model]")
    assert opts.likelihood_layout == "dense"
    with pytest.raises(SpecError, match="likelihood_layout"):
        ModelOptions.parse({"likelihood_layout": "long"}, "[model]")
