"""The joint hierarchical measurement model, built as a PyMC model.

For the rating ``y`` that judge ``j`` gives item ``i`` (scale ``k = k(i)``) in
session ``s`` of subject ``p`` (``C`` ordered categories)::

    theta[p, :]  ~ MVN(0, diag(sd_alliance) Omega diag(sd_alliance))   treatment level
    zeta[s, k]   ~ Normal(0, sd_session[k])            session deviation from the subject
    eta[s, k]    = theta[p(s), k] + zeta[s, k] (+ session_trend[k] * time[s])
    mu           = discrimination[j] * loading[i] * eta[s, k] - severity[k, j] (+ interaction)
    P(y <= c)    = logistic(cutpoints[i, c] - mu)       graded response, cumulative logit

Identification (see ``docs/model.md``):

* scale of the latent factors: log loadings sum to zero within each scale
  (geometric mean loading 1, "effects coding"), so ``sd_alliance`` and
  ``sd_session`` are in logit units of the average item and judge; loadings are
  positive, so signs are fixed (reverse-keyed items are reversed before
  modelling), and every item loads on one factor, so there is no rotation;
* origin: each scale's origin is the sample's average subject (``theta`` is
  centred over subjects). Otherwise the common shift of all subjects against
  all cutpoints is identified only by the prior: a long correlated direction
  that costs NUTS many leapfrog steps and leaves cutpoints with low ESS;
* location: severities sum to zero over judges within each scale, so the item
  cutpoints carry the panel's average severity;
* judge discrimination: log discriminations sum to zero over judges (geometric
  mean 1), so loadings describe the average judge.

Judge parameters are *centred* when judges have many ratings each (their
likelihood is sharp and a non-centred form would make a funnel the other
way), non-centred when judges are many and sparse; session deviations the
same, by ratings per session. Severity and discrimination SDs have
boundary-avoiding Gamma priors: with three judges these SDs are informed by
three values and a prior with mass at zero produces the divergent funnels seen
with brms and hand-written PyMC.

The likelihood is a hand-written vectorised cumulative-logit log density over
one long vector of observed ratings (missing ratings are simply absent)::

    log P(y = c) = log(logistic(tau_hi - mu) - logistic(tau_lo - mu))

evaluated on the numerically safe side, with ``tau_lo = -inf`` for the lowest
and ``tau_hi = +inf`` for the highest category. No probability table is built.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pymc as pm
import pytensor.tensor as pt

from caltars_bayes.spec import AUTO, Instrument, ModelOptions, Prior, Priors

if TYPE_CHECKING:
    from caltars_bayes.data import RatingData

#: Stand-in for +-infinity at the ends of the cutpoint table. Large enough that
#: softplus and log1mexp reach their limits exactly in float64.
_BIG = 1e10

#: Ratings per judge (per scale) from which judge parameters are centred.
CENTRED_JUDGE_MIN_RATINGS = 60
#: Ratings per session (per scale) from which session deviations are centred.
CENTRED_SESSION_MIN_RATINGS = 60
#: Ratings per subject (per scale) from which subject factors are centred.
CENTRED_SUBJECT_MIN_RATINGS = 40


@dataclass
class ModelPlan:
    """The model actually built: spec options resolved against the design."""

    session_level: bool
    session_trend: bool
    judge_severity: bool
    judge_discrimination: bool
    judge_subject_interaction: bool
    cutpoints: str
    centred_subjects: bool
    centred_judges: bool
    centred_sessions: bool
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _resolve(value: bool | str, identifiable: bool, what: str, why: str, notes: list[str]) -> bool:
    if value == AUTO:
        if not identifiable:
            notes.append(f"{what} dropped: {why}")
        return identifiable
    if value and not identifiable:
        notes.append(f"{what} requested but {why}: it is constrained only by its prior")
    return bool(value)


def plan_model(data: RatingData, options: ModelOptions | None = None) -> ModelPlan:
    """Resolve ``"auto"`` options against the design and choose parameterisations."""
    opt = options or data.instrument.model
    notes: list[str] = []
    ses_per_subject = np.bincount(
        np.asarray(data.sessions["subject"].map({s: i for i, s in enumerate(data.subjects)})),
        minlength=data.n_subjects,
    )
    multi_session = bool((ses_per_subject >= 2).any())
    session_level = _resolve(
        opt.session_level,
        multi_session,
        "session level",
        "every subject has a single session, so session and subject levels are confounded",
        notes,
    )
    n_judges = data.n_judges
    severity = _resolve(
        opt.judge_severity, n_judges >= 2, "judge severity", "only one judge", notes
    )
    discrimination = _resolve(
        opt.judge_discrimination, n_judges >= 2, "judge discrimination", "only one judge", notes
    )
    times = np.asarray(data.sessions["session_time"], dtype=float)
    trend = bool(opt.session_trend)
    if trend and np.unique(times).size < 2:
        notes.append("session trend dropped: all sessions have the same time")
        trend = False
    if trend and not session_level:
        notes.append("session trend kept without a session level")

    per_judge = np.bincount(data.judge_idx, minlength=n_judges) / max(data.n_scales, 1)
    per_session = np.bincount(data.session_idx, minlength=data.n_sessions) / max(data.n_scales, 1)
    per_subject = np.bincount(data.subject_idx, minlength=data.n_subjects) / max(data.n_scales, 1)
    if opt.parameterisation == AUTO:
        centred_p = bool(np.median(per_subject) >= CENTRED_SUBJECT_MIN_RATINGS)
        centred_j = bool(np.median(per_judge) >= CENTRED_JUDGE_MIN_RATINGS)
        centred_s = bool(np.median(per_session) >= CENTRED_SESSION_MIN_RATINGS)
    else:
        centred_p = centred_j = centred_s = opt.parameterisation == "centred"
    return ModelPlan(
        session_level=session_level,
        session_trend=trend,
        judge_severity=severity,
        judge_discrimination=discrimination,
        judge_subject_interaction=bool(opt.judge_subject_interaction) and n_judges >= 2,
        cutpoints=opt.cutpoints,
        centred_subjects=centred_p,
        centred_judges=centred_j,
        centred_sessions=centred_s,
        notes=notes,
    )


def prior_rv(name: str, prior: Prior, **kwargs: Any) -> pt.TensorVariable:
    """Create a PyMC random variable from a spec :class:`Prior` (no eval: a fixed lookup)."""
    family = {
        "Normal": pm.Normal,
        "HalfNormal": pm.HalfNormal,
        "LogNormal": pm.LogNormal,
        "Exponential": pm.Exponential,
        "Gamma": pm.Gamma,
        "HalfStudentT": pm.HalfStudentT,
        "StudentT": pm.StudentT,
    }[prior.dist]
    return family(name, **prior.params, **kwargs)


def cumulative_logit_logp(
    y: pt.TensorLike, mu: pt.TensorLike, cutpoints: pt.TensorLike, row: pt.TensorLike
) -> pt.TensorVariable:
    """Log probability of ordinal ratings under a cumulative-logit (graded response) model.

    ``y`` are 0-based categories, ``mu`` the linear predictor per rating,
    ``cutpoints`` a table (rows x C-1) of ordered cutpoints and ``row`` the table
    row each rating uses. ``P(y <= c) = logistic(cutpoints[row, c] - mu)``.
    """
    cut = pt.as_tensor_variable(cutpoints)
    while cut.ndim > 2:  # batch dims added by the gufunc signature of CustomDist
        cut = cut[0]
    n_rows, n_cut = cut.shape[0], cut.shape[1]
    big = pt.full((n_rows, 1), _BIG, dtype=cut.dtype)
    padded = pt.concatenate([-big, cut, big], axis=1).ravel()  # rows x (C + 1)
    flat = pt.cast(row, "int64") * (n_cut + 2) + pt.cast(y, "int64")
    tau_lo = padded[flat]
    tau_hi = padded[flat + 1]
    # P(y = c) = logistic(tau_hi - mu) - logistic(tau_lo - mu). Evaluate it on the
    # side where the two logistic values are small (mirror with logistic(x) =
    # 1 - logistic(-x) when the category lies below mu), so the difference never
    # cancels: two exp and one log per rating, about 4x cheaper than the
    # softplus/log1mexp form.
    a = tau_hi - mu
    b = tau_lo - mu
    mirror = (a + b) > 0
    hi = pt.switch(mirror, -b, a)
    lo = pt.switch(mirror, -a, b)
    return pt.log(pt.sigmoid(hi) - pt.sigmoid(lo))


def _cumulative_logit_random(mu, cutpoints, row, rng=None, size=None):
    """Draw ratings from the cumulative-logit model (numpy; for predictive checks)."""
    mu = np.asarray(mu)
    cut = np.asarray(cutpoints)
    while cut.ndim > 2:  # broadcast batch dims added by the gufunc signature
        cut = cut[0]
    tau = cut[np.asarray(row, dtype=int)]
    if size is not None:
        mu = np.broadcast_to(mu, size)
        tau = np.broadcast_to(tau, (*tuple(np.atleast_1d(size)), tau.shape[-1]))
    cum = 1.0 / (1.0 + np.exp(-(tau - mu[..., None])))
    u = rng.uniform(size=mu.shape)
    return (u[..., None] > cum).sum(-1)


class AllianceModel:
    """The joint measurement model for one trial's ratings.

    Parameters
    ----------
    data : a validated :class:`~caltars_bayes.data.RatingData`.
    options, priors : override the instrument spec's ``[model]`` and ``[priors]``.

    Examples
    --------
    >>> m = AllianceModel(data)            # doctest: +SKIP
    >>> fit = m.fit(draws=1000, tune=1000)  # doctest: +SKIP
    """

    def __init__(
        self,
        data: RatingData,
        options: ModelOptions | None = None,
        priors: Priors | None = None,
    ) -> None:
        self.data = data
        self.instrument: Instrument = data.instrument
        self.options = options or self.instrument.model
        self.priors = priors or self.instrument.priors
        self.plan = plan_model(data, self.options)
        self._model: pm.Model | None = None

    @property
    def model(self) -> pm.Model:
        """The PyMC model (built on first use)."""
        if self._model is None:
            self._model = self.build()
        return self._model

    def coords(self) -> dict[str, Any]:
        d = self.data
        n_cut = self.instrument.n_categories - 1
        return {
            "subject": list(d.subjects),
            "session": list(d.session_labels),
            "judge": list(d.judges),
            "item": list(d.items),
            "scale": list(d.scales),
            "scale2": list(d.scales),
            "cutpoint": list(range(n_cut)),
            "obs": np.arange(d.n_ratings),
        }

    def build(self) -> pm.Model:
        """Build the PyMC model (no sampling)."""
        d, plan, pr = self.data, self.plan, self.priors
        n_k, n_cut = d.n_scales, self.instrument.n_categories - 1
        with pm.Model(coords=self.coords()) as m:
            # --- treatment-level alliance: theta ~ MVN(0, diag(sd) Omega diag(sd))
            sd_alliance = prior_rv("sd_alliance", pr.sd_alliance, dims="scale")
            if n_k == 2:
                # LKJ(eta) for two scales is r = 2 * Beta(eta, eta) - 1; written out
                # because pm.LKJCorr(n=2) does not compile to JAX (PyTensor 3.3)
                r01 = pm.Beta("factor_corr_beta", pr.lkj_eta, pr.lkj_eta)
                r = 2.0 * r01 - 1.0
                chol = pt.stack([pt.stack([1.0, 0.0]), pt.stack([r, pt.sqrt(1.0 - r**2)])])
            elif n_k > 2:
                chol = pm.LKJCorr("factor_corr_chol", n=n_k, eta=pr.lkj_eta)
            else:
                chol = pt.ones((1, 1))
            if n_k > 1:
                pm.Deterministic("factor_corr", chol @ chol.T, dims=("scale", "scale2"))
            if plan.centred_subjects:
                theta_raw = pm.MvNormal(
                    "theta_raw",
                    mu=np.zeros(n_k),
                    chol=sd_alliance[:, None] * chol,
                    dims=("subject", "scale"),
                )
            else:
                z_theta = pm.Normal("theta_z", 0.0, 1.0, dims=("subject", "scale"))
                theta_raw = (z_theta @ chol.T) * sd_alliance
            # The origin of each scale is the sample's average subject.
            theta = pm.Deterministic(
                "theta", theta_raw - theta_raw.mean(axis=0), dims=("subject", "scale")
            )

            # --- session level
            # Data enter as pm.Data, not constants: the compiled function is then the
            # same for any trial of the same shape (numba's on-disk cache is reused)
            # and new data can be swapped in with pm.set_data.
            jj, ii, kk, ss = d.judge_idx, d.item_idx, d.scale_idx, d.session_idx
            session_subject = pm.Data(
                "session_subject_idx", np.asarray(d.session_subject_idx, np.int64), dims="session"
            )
            eta = theta[session_subject]
            if plan.session_level:
                sd_session = prior_rv("sd_session", pr.sd_session, dims="scale")
                if plan.centred_sessions:
                    zeta = pm.Normal("zeta", 0.0, sd_session, dims=("session", "scale"))
                else:
                    zeta_z = pm.Normal("zeta_z", 0.0, 1.0, dims=("session", "scale"))
                    zeta = pm.Deterministic("zeta", zeta_z * sd_session, dims=("session", "scale"))
                eta = eta + zeta
            if plan.session_trend:
                times = np.asarray(d.sessions["session_time"], dtype=float)
                trend = prior_rv("session_trend", pr.trend, dims="scale")
                eta = eta + trend * (times - times.mean())[:, None]

            # --- items: log loadings sum to zero within each scale (effects coding)
            isc = np.asarray(d.item_scale_idx, dtype=np.int64)
            counts = np.bincount(isc, minlength=n_k).astype(float)
            raw = prior_rv("log_loading_raw", pr.log_loading, dims="item")
            avg = pt.dot(raw, np.eye(n_k)[isc] / counts[None, :])  # mean log loading, per scale
            loading = pm.Deterministic("loading", pt.exp(raw - avg[isc]), dims="item")
            cut_rows = "item" if plan.cutpoints == "item" else "scale"
            n_rows = d.n_items if cut_rows == "item" else n_k
            init = np.tile(np.linspace(-1.5, 1.5, n_cut), (n_rows, 1))
            cutpoints = prior_rv(
                "cutpoints",
                pr.cutpoint,
                dims=(cut_rows, "cutpoint"),
                transform=pm.distributions.transforms.ordered,
                initval=init,
            )

            # --- linear predictor per rating
            item_idx = pm.Data("item_idx", np.asarray(ii, np.int64), dims="obs")
            eta_idx = pm.Data("eta_idx", np.asarray(ss * n_k + kk, np.int64), dims="obs")
            mu = loading[item_idx] * eta.ravel()[eta_idx]
            if plan.judge_discrimination:
                sd_ld = prior_rv("sd_log_discrimination", pr.sd_log_discrimination)
                if plan.centred_judges:
                    log_disc = pm.ZeroSumNormal("log_discrimination", sigma=sd_ld, dims="judge")
                else:
                    ld_z = pm.ZeroSumNormal("log_discrimination_z", sigma=1.0, dims="judge")
                    log_disc = pm.Deterministic("log_discrimination", ld_z * sd_ld, dims="judge")
                disc = pm.Deterministic("discrimination", pt.exp(log_disc), dims="judge")
                judge_idx = pm.Data("judge_idx", np.asarray(jj, np.int64), dims="obs")
                mu = disc[judge_idx] * mu
            if plan.judge_severity:
                sd_sev = prior_rv("sd_severity", pr.sd_severity)
                if plan.centred_judges:
                    sev = pm.ZeroSumNormal("severity", sigma=sd_sev, dims=("scale", "judge"))
                else:
                    sev_z = pm.ZeroSumNormal("severity_z", sigma=1.0, dims=("scale", "judge"))
                    sev = pm.Deterministic("severity", sev_z * sd_sev, dims=("scale", "judge"))
                sev_idx = pm.Data(
                    "severity_idx", np.asarray(kk * d.n_judges + jj, np.int64), dims="obs"
                )
                mu = mu - sev.ravel()[sev_idx]
            if plan.judge_subject_interaction:
                pair_codes = d.judge_idx.astype(np.int64) * d.n_subjects + d.subject_idx
                pairs, pair_idx = np.unique(pair_codes, return_inverse=True)
                m.add_coord(
                    "judge_subject",
                    [
                        f"{d.judges[c // d.n_subjects]}|{d.subjects[c % d.n_subjects]}"
                        for c in pairs
                    ],
                )
                sd_int = prior_rv("sd_interaction", pr.sd_interaction)
                g_z = pm.Normal("interaction_z", 0.0, 1.0, dims=("judge_subject", "scale"))
                g = pm.Deterministic("interaction", g_z * sd_int, dims=("judge_subject", "scale"))
                mu = mu + g.ravel()[pair_idx * n_k + kk]

            if cut_rows == "item":
                row = item_idx
            else:
                row = pm.Data("scale_idx", np.asarray(kk, np.int64), dims="obs")
            y = pm.Data("y", np.asarray(d.y, np.int64), dims="obs")
            pm.CustomDist(
                "rating",
                mu,
                cutpoints,
                row,
                logp=lambda value, mu_, cut_, row_: cumulative_logit_logp(value, mu_, cut_, row_),
                random=_cumulative_logit_random,
                signature="(),(r,c),()->()",
                observed=y,
                dims="obs",
            )
        return m
