"""The joint subject/session form for designs of any size.

The joint form (``_subject_session_block``) takes the design through data
(``pm.Data``), not constants of the graph: two designs of different sizes that
take it have the same log density and deterministics graph, so one compiled
model serves both (:func:`caltars_bayes.inference.nutpie_cache.same_model`).
The density itself is checked against a per-subject numpy computation of the
block's formulas.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from scipy import stats

from caltars_bayes.inference import nutpie_cache
from caltars_bayes.model.build import AllianceModel
from caltars_bayes.model.simulate import simulate_trial


def joint_model(instrument, n_subjects: int, n_sessions: int, seed: int, **kw) -> AllianceModel:
    """An explicitly joint-form model of a small simulated design."""
    options = kw.pop("options", {})
    trial = simulate_trial(
        instrument, n_subjects=n_subjects, n_sessions=n_sessions, n_judges=2, seed=seed, **kw
    )
    data = trial.to_rating_data()
    am = AllianceModel(
        data, options=replace(data.instrument.model, parameterisation="joint", **options)
    )
    assert am.plan.joint_subject_sessions
    return am


def session_counts(am: AllianceModel) -> set[int]:
    d = am.data
    return set(np.bincount(np.asarray(d.session_subject_idx), minlength=d.n_subjects).tolist())


COVARIATES = dict(subject_covariates={"x": {"PC": 0.5}}, covariate_missing_rate=0.3)
#: Python implementations: a single evaluation, no C compilation
FAST = "FAST_COMPILE"
TREND_AND_INTERACTION = {"session_trend": True, "judge_subject_interaction": True}


@pytest.mark.parametrize(
    "first, second",
    [
        # every subject with the same number of sessions: 4 vs 3 of them
        (dict(n_subjects=8, n_sessions=4, seed=1), dict(n_subjects=11, n_sessions=3, seed=2)),
        # unequal numbers of sessions, another set of distinct numbers
        (
            dict(n_subjects=8, n_sessions=4, min_sessions=1, seed=3),
            dict(n_subjects=11, n_sessions=5, min_sessions=2, seed=4),
        ),
        # with covariates (other missing cells), a session trend and the interaction
        (
            dict(n_subjects=8, n_sessions=4, min_sessions=1, seed=3, **COVARIATES,
                 options=TREND_AND_INTERACTION),
            dict(n_subjects=11, n_sessions=4, min_sessions=2, seed=4, **COVARIATES,
                 options=TREND_AND_INTERACTION),
        ),
    ],
    ids=["equal-sessions", "unequal-sessions", "covariates-trend-interaction"],
)  # fmt: skip
def test_joint_designs_of_any_size_share_a_compilation(caltars, first, second):
    a, b = joint_model(caltars, **first), joint_model(caltars, **second)
    assert a.data.n_subjects != b.data.n_subjects and a.data.n_sessions != b.data.n_sessions
    if "min_sessions" in first:  # the per-subject conditionals come from other counts
        assert len(session_counts(a)) > 1 and len(session_counts(b)) > 1
        assert session_counts(a) != session_counts(b)
    sig_a = nutpie_cache.model_signature(a.model, None, True)
    sig_b = nutpie_cache.model_signature(b.model, None, True)
    assert nutpie_cache.same_model(sig_a, sig_b)
    # the size-specific signature (nutpie's own layout) still tells them apart
    assert not nutpie_cache.same_model(
        nutpie_cache.model_signature(a.model, None, False),
        nutpie_cache.model_signature(b.model, None, False),
    )


@pytest.mark.parametrize("min_sessions", [None, 1], ids=["equal-sessions", "unequal-sessions"])
def test_joint_block_equals_its_formulas_per_subject(caltars, min_sessions):
    """At a random point, ``theta``, ``zeta`` and the log density of the subject
    means equal the block's formulas computed subject by subject with numpy:
    ``D = diag(sd_session^2) / n`` for a subject with ``n`` sessions,
    ``u ~ MVN(0, S + D)``, ``theta_raw = S (S + D)^-1 u + chol(D - D (S + D)^-1 D) b``,
    ``zeta[s] = (u - theta_raw)[p] + sd_session (z[s] - mean of z over p's sessions)``."""
    kw = {} if min_sessions is None else {"min_sessions": min_sessions}
    am = joint_model(caltars, n_subjects=8, n_sessions=4, seed=3, **kw)
    d, m = am.data, am.model
    assert (len(session_counts(am)) > 1) is (min_sessions is not None)
    rng = np.random.default_rng(5)
    point = {k: v + rng.normal(0.0, 0.4, np.shape(v)) for k, v in m.initial_point().items()}
    names = ["sd_alliance", "sd_session", "subject_mean", "theta_z", "zeta_z", "theta", "zeta"]
    names += ["factor_corr"]
    fn = m.compile_fn(
        m.replace_rvs_by_values([m[n] for n in names]),
        inputs=m.value_vars,
        on_unused_input="ignore",
    )
    v = dict(zip(names, fn(point), strict=True))
    logp_u = float(m.compile_logp(vars=[m["subject_mean"]], mode=FAST)(point))

    sd_a, sd_s, u, b, z = (
        v[n] for n in ("sd_alliance", "sd_session", "subject_mean", "theta_z", "zeta_z")
    )
    cov = np.outer(sd_a, sd_a) * v["factor_corr"]
    ss = np.asarray(d.session_subject_idx)
    n_sess = np.bincount(ss, minlength=d.n_subjects)
    theta_raw = np.empty_like(u)
    expected_logp = 0.0
    for p in range(d.n_subjects):
        dmat = np.diag(sd_s**2 / n_sess[p])
        s_plus_d = cov + dmat
        a_mat = cov @ np.linalg.inv(s_plus_d)
        b_mat = dmat - dmat @ np.linalg.solve(s_plus_d, dmat)
        theta_raw[p] = a_mat @ u[p] + np.linalg.cholesky(b_mat) @ b[p]
        expected_logp += stats.multivariate_normal(np.zeros(len(sd_a)), s_plus_d).logpdf(u[p])
    z_mean = np.stack([z[ss == p].mean(axis=0) for p in range(d.n_subjects)])
    zeta = (u - theta_raw)[ss] + sd_s * (z - z_mean[ss])
    np.testing.assert_allclose(
        v["theta"], theta_raw - theta_raw.mean(axis=0), rtol=1e-10, atol=1e-10
    )
    np.testing.assert_allclose(v["zeta"], zeta, rtol=1e-10, atol=1e-10)
    assert logp_u == pytest.approx(expected_logp, rel=1e-10)
