"""The joint hierarchical measurement model, built as a PyMC model.

For the rating ``y`` that judge ``j`` gives item ``i`` (scale ``k = k(i)``) in
session ``s`` of subject ``p`` (``C`` ordered categories)::

    theta[p, :]  ~ MVN(0, diag(sd_alliance) Omega diag(sd_alliance))   treatment level
    zeta[s, k]   ~ Normal(0, sd_session[k])            session deviation from the subject
    eta[s, k]    = theta[p(s), k] + zeta[s, k] (+ session_trend[k] * time[s])
    mu           = discrimination[j] * loading[i] * eta[s, k] - severity[k, j] (+ interaction)
    P(y <= c)    = logistic(cutpoints[i, c] - mu)       graded response, cumulative logit

Bifactor option (``[model] bifactor = true`` or a ``[structures.NAME]`` with
``bifactor = true``): the scale factors are orthogonal (no ``factor_corr``) and
a general factor ``general[p] ~ Normal(0, 1)`` (centred over subjects) enters
every item with a positive ``general_loading[i]``::

    mu = discrimination[j] * (loading[i] * eta[s, k] + general_loading[i] * general[p]) - ...

It needs at least three specific factors with two items each; reverse-key
items (or scales) so that all items point the same way.

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

Each item's cutpoints are sampled as their mean and the logs of the gaps
between neighbours (:class:`CentredOrdered`; same prior, same posterior):
with PyMC's ``ordered`` transform the lowest cutpoint carries the item's
location, so the item's location and its first gap are correlated coordinates
and the lowest cutpoints mixed slowest (see ``docs/model.md``).

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

from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pymc as pm
import pytensor.tensor as pt
from pytensor.tensor.linalg import solve_triangular

from caltars_bayes.errors import SpecError
from caltars_bayes.kernels import cumulative_logit
from caltars_bayes.spec import AUTO, Instrument, ModelOptions, Prior, Priors

if TYPE_CHECKING:
    from caltars_bayes.data import RatingData

#: Stand-in for +-infinity at the ends of cutpoint tables (predictive and
#: scoring code). Large enough that logistic functions reach 0 and 1 exactly.
_BIG = 1e10

#: Ratings per judge (per scale) from which judge parameters are centred.
CENTRED_JUDGE_MIN_RATINGS = 60
#: Ratings per session (per scale) from which session deviations are centred.
CENTRED_SESSION_MIN_RATINGS = 60
#: Ratings per subject (per scale) from which subject factors are centred.
CENTRED_SUBJECT_MIN_RATINGS = 40
#: Sessions from which a design with a session level counts as large: there
#: ``parameterisation = "auto"`` samples subjects and sessions in the joint form,
#: and a joint-form fit of a large design starts from the data (docs/model.md,
#: "Large designs"). Measured (seed 1, 4 x (1000 + 1000)): at the founding size
#: (208 sessions) the default form met the targets in less time; at 3x (624)
#: and 10x (2,080), and on a 2-scale self-report design of 600 sessions, the
#: joint form gave more ESS per second.
LARGE_DESIGN_SESSIONS = 400
#: Session deviations (sessions x scales) from which a large design's nutpie
#: trajectories are capped at :data:`caltars_bayes.sampling.LARGE_DESIGN_NUTPIE`
#: instead of the default. The cap suits small step sizes, which come with many
#: latent values: 0.089-0.110 at 10 400 (CALTARS 10x), 0.14-0.16 at 2 000 (2
#: scales x 1 000 sessions), but 0.16-0.18 at 1 200 (2 x 600), where t = 2.7
#: cut over half of the draws' trajectories to 15 steps (21.5 steps per draw)
#: and lost ESS.
LARGE_DESIGN_SESSION_SCALES = 2000


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
    #: subject-level covariates modelled jointly with ``theta`` (after any
    #: aggregation of session covariates), and session-level ones with ``eta``
    covariates: list[str] = field(default_factory=list)
    session_covariates: list[str] = field(default_factory=list)
    #: covariate -> [mean, sd] of its observed values (covariates are modelled
    #: standardised); session covariates aggregated to subjects are listed in
    #: ``aggregated``
    covariate_scaling: dict[str, list[float]] = field(default_factory=dict)
    session_covariate_scaling: dict[str, list[float]] = field(default_factory=dict)
    aggregated: list[str] = field(default_factory=list)
    #: a general factor over all items besides orthogonal scale-specific factors
    bifactor: bool = False
    #: "vector" (a vector of observed ratings) or "dense" (session x judge x item)
    likelihood_layout: str = "vector"
    #: subject factors and session deviations sampled through each subject's
    #: average session alliance (:func:`_subject_session_block`); False in fits
    #: saved before this form existed
    joint_subject_sessions: bool = False
    #: at least :data:`LARGE_DESIGN_SESSIONS` sessions, in the joint form: fits
    #: start from the data unless told otherwise (False in fits saved before the
    #: rule existed)
    large_design: bool = False
    #: a large design with at least :data:`LARGE_DESIGN_SESSION_SCALES` session
    #: deviations: nutpie's trajectories are capped at 2.7 unless told otherwise
    short_trajectory_cap: bool = False

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


#: Samplers that run the model through JAX (the dense likelihood layout suits them).
JAX_SAMPLERS = ("numpyro", "blackjax")


def plan_model(
    data: RatingData, options: ModelOptions | None = None, sampler: str | None = None
) -> ModelPlan:
    """Resolve ``"auto"`` options against the design and choose parameterisations.

    ``sampler`` (when known) resolves ``likelihood_layout = "auto"``: dense for
    the JAX samplers on complete designs, else vector.
    """
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
    big = session_level and data.n_sessions >= LARGE_DESIGN_SESSIONS
    joint = opt.parameterisation == "joint"
    if joint and not session_level:
        notes.append("joint subject/session form needs a session level: the auto rule used")
        joint = False
    if opt.parameterisation == AUTO and big:
        joint = True
        notes.append(
            f"large design ({data.n_sessions} sessions >= {LARGE_DESIGN_SESSIONS}): subjects "
            "and sessions sampled in the joint form (docs/model.md, 'Large designs')"
        )
    if opt.parameterisation in (AUTO, "joint"):
        centred_p = bool(np.median(per_subject) >= CENTRED_SUBJECT_MIN_RATINGS)
        centred_j = bool(np.median(per_judge) >= CENTRED_JUDGE_MIN_RATINGS)
        centred_s = bool(np.median(per_session) >= CENTRED_SESSION_MIN_RATINGS)
    else:
        centred_p = centred_j = centred_s = opt.parameterisation == "centred"
    bifactor = bool(opt.bifactor)
    if bifactor:
        per_scale = np.bincount(np.asarray(data.item_scale_idx), minlength=data.n_scales)
        if data.n_scales < 3 or per_scale.min() < 2:
            raise SpecError(
                f"{data.instrument.source or data.instrument.name}: a bifactor model needs at "
                "least 3 specific factors with at least 2 items each (got "
                f"{data.n_scales} factors, smallest with {int(per_scale.min())} items)"
            )
        if data.covariates is not None or data.session_covariates is not None:
            notes.append("covariates are not modelled with a bifactor structure")
            opt = replace(opt, covariates=False, session_covariates="none")
    cov_table, ses_table, aggregated = covariate_tables(data, opt, notes)
    large = big and joint
    layout = opt.likelihood_layout
    if layout == AUTO:
        complete = sampler in JAX_SAMPLERS and dense_cells(data) is not None
        layout = "dense" if complete else "vector"
    elif layout == "dense" and dense_cells(data) is None:
        n_cells = data.n_sessions * data.n_judges * data.n_items
        notes.append(
            f"dense likelihood layout requested but the design is incomplete ({data.n_ratings} "
            f"ratings for {n_cells} session x judge x item cells): vector layout used"
        )
        layout = "vector"
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
        joint_subject_sessions=joint,
        large_design=large,
        short_trajectory_cap=large
        and data.n_sessions * data.n_scales >= LARGE_DESIGN_SESSION_SCALES,
        notes=notes,
        covariates=[] if cov_table is None else list(cov_table.columns),
        session_covariates=[] if ses_table is None else list(ses_table.columns),
        covariate_scaling=_scaling(cov_table),
        session_covariate_scaling=_scaling(ses_table),
        aggregated=aggregated,
        bifactor=bifactor,
        likelihood_layout=layout,
    )


def dense_cells(data: RatingData) -> np.ndarray | None:
    """Ratings as a session x judge x item array, or None when any cell is missing.

    The dense likelihood layout needs every judge to rate every item of every
    session once.
    """
    n_cells = data.n_sessions * data.n_judges * data.n_items
    if data.n_ratings != n_cells:
        return None
    code = (
        np.asarray(data.session_idx, np.int64) * data.n_judges + np.asarray(data.judge_idx)
    ) * data.n_items + np.asarray(data.item_idx)
    y = np.full(n_cells, -1, dtype=np.int64)
    y[code] = np.asarray(data.y, np.int64)
    if (y < 0).any():  # some cell rated twice, another not at all
        return None
    return y.reshape(data.n_sessions, data.n_judges, data.n_items)


#: Fewest observed values a covariate needs to be modelled.
MIN_COVARIATE_VALUES = 3


def _usable(table: pd.DataFrame | None, what: str, notes: list[str]) -> pd.DataFrame | None:
    """Drop covariate columns that cannot be modelled (too few values, constant)."""
    if table is None:
        return None
    keep = []
    for c in table.columns:
        col = table[c].to_numpy(dtype=float)
        n_obs = int(np.isfinite(col).sum())
        if n_obs < MIN_COVARIATE_VALUES:
            notes.append(
                f"{what} {c!r} not modelled: {n_obs} observed value(s), "
                f"needs {MIN_COVARIATE_VALUES}"
            )
        elif np.nanstd(col) == 0:
            notes.append(f"{what} {c!r} not modelled: it has the same value for everyone")
        else:
            keep.append(c)
    return table[keep] if keep else None


def covariate_tables(
    data: RatingData, options: ModelOptions, notes: list[str] | None = None
) -> tuple[pd.DataFrame | None, pd.DataFrame | None, list[str]]:
    """The covariates the model uses: subject-level and session-level tables.

    With ``session_covariates = "subject"`` each session covariate is averaged
    over the subject's sessions (observed values only) and joins the subject
    covariates (renamed ``NAME_mean`` if a subject covariate has its name).

    Returns
    -------
    (subject table indexed like ``data.subjects`` or None, session table in
    ``data.sessions`` order or None, names of the aggregated columns)
    """
    notes = [] if notes is None else notes
    subj = data.covariates if options.covariates else None
    if data.covariates is not None and not options.covariates:
        notes.append("subject covariates given but not modelled (model.covariates = false)")
    ses = data.session_covariates
    aggregated: list[str] = []
    if ses is not None and options.session_covariates == "none":
        notes.append('session covariates given but not modelled (session_covariates = "none")')
        ses = None
    elif ses is not None and options.session_covariates == "subject":
        means = ses.groupby(level="subject", sort=False).mean().reindex(list(data.subjects))
        means.index = pd.Index(list(data.subjects), name="subject", dtype="str")
        taken = set() if subj is None else set(subj.columns)
        means.columns = [f"{c}_mean" if c in taken else str(c) for c in means.columns]
        aggregated = list(means.columns)
        subj = means if subj is None else pd.concat([subj, means], axis=1)
        notes.append(
            f"session covariates averaged over each subject's sessions: {', '.join(aggregated)}"
        )
        ses = None
    if ses is not None:
        ses = ses.reset_index(drop=True)
    return _usable(subj, "covariate", notes), _usable(ses, "session covariate", notes), aggregated


def _scaling(table: pd.DataFrame | None) -> dict[str, list[float]]:
    if table is None:
        return {}
    return {
        str(c): [float(np.nanmean(table[c])), float(np.nanstd(table[c], ddof=1))]
        for c in table.columns
    }


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


class CentredOrdered(pm.distributions.transforms.Transform):
    """``n`` ordered values from their mean and the logs of their ``n - 1`` gaps.

    ``y[0]`` is the mean of the ordered values and ``y[1:]`` the logs of the
    gaps between neighbours: ``x = y[0] + s - mean(s)`` with ``s`` the running
    sum of the gaps (``s_0 = 0``), a constant matrix times ``exp(y[1:])``.
    PyMC's ``ordered`` transform starts from the lowest value instead, so moving
    the middle of a set of cutpoints moves the lowest one and every gap against
    it; here the location and the spacing are separate coordinates. The
    Jacobian of ``(mean, gaps) -> x`` has determinant 1, so
    ``log |J| = sum(y[1:])``.
    """

    name = "centred_ordered"
    ndim_supp = 1

    def __init__(self, n: int) -> None:
        self.n = n
        before = np.tri(n, n - 1, -1).T  # [j, k] = 1 where gap j lies below value k
        self._spread = before - before.mean(axis=1, keepdims=True)

    def backward(self, value, *inputs):
        return value[..., 0][..., None] + pt.dot(pt.exp(value[..., 1:]), self._spread)

    def forward(self, value, *inputs):
        loc = value.mean(axis=-1, keepdims=True)
        return pt.concatenate([loc, pt.log(value[..., 1:] - value[..., :-1])], axis=-1)

    def log_jac_det(self, value, *inputs):
        return pt.sum(value[..., 1:], axis=-1)


def cumulative_logit_logp(
    y: pt.TensorLike, mu: pt.TensorLike, cutpoints: pt.TensorLike, row: pt.TensorLike
) -> pt.TensorVariable:
    """Log probability of ordinal ratings under a cumulative-logit (graded response) model.

    ``y`` are 0-based categories, ``mu`` the linear predictor per rating,
    ``cutpoints`` a table (rows x C-1) of ordered cutpoints and ``row`` the table
    row each rating uses. ``P(y <= c) = logistic(cutpoints[row, c] - mu)``.

    Written for speed (it is most of the cost of every gradient): with
    ``E = exp(-mu)`` and ``T = exp(tau)``, the probability of the category
    between cutpoints ``tau_lo < tau_hi`` is
    ``E (T_hi - T_lo) / ((1 + T_hi E)(1 + T_lo E))``, so
    ``log p = L - mu - log1p(h + l + h l)`` with ``h = T_hi E``, ``l = T_lo E``
    and ``L = log(T_hi - T_lo)`` computed per cutpoint pair (a small table).
    One exp and one log1p per rating instead of two logistic functions and a
    log, with no cancellation between probabilities. The bottom category has
    ``T_lo = 0``; the top one ``log p = -log1p(l)`` (``L = 0`` and no ``-mu``).
    Absolute error is about one ulp of ``|tau - mu|`` (1e-14 at 90 logits).
    The per-rating work is one fused Op (:mod:`caltars_bayes.kernels`).
    """
    cut, t_hi, t_lo, log_gap = _cutpoint_tables(cutpoints)
    n_cat = cut.shape[1] + 1
    k = pt.cast(row, "int64") * n_cat + pt.cast(y, "int64")
    return cumulative_logit(mu, t_hi, t_lo, log_gap, k, n_cat)


def _cutpoint_tables(cutpoints: pt.TensorLike) -> tuple[pt.TensorVariable, ...]:
    """The cutpoint table (rows x C-1) and, per row and category (rows x C),
    ``T_hi``, ``T_lo`` and ``L = log(T_hi - T_lo)`` (see cumulative_logit_logp)."""
    cut = pt.as_tensor_variable(cutpoints)
    while cut.ndim > 2:  # batch dims added by the gufunc signature of CustomDist
        cut = cut[0]
    zero = pt.zeros((cut.shape[0], 1), dtype=cut.dtype)
    t_cut = pt.exp(cut)
    t_hi = pt.concatenate([t_cut, zero], axis=1)
    t_lo = pt.concatenate([zero, t_cut], axis=1)
    # log(T_hi - T_lo) = tau_hi + log(1 - exp(tau_lo - tau_hi))
    gap = cut[:, 1:] + pt.log1mexp(cut[:, :-1] - cut[:, 1:])
    log_gap = pt.concatenate([cut[:, :1], gap, zero], axis=1)
    return cut, t_hi, t_lo, log_gap


def cumulative_logit_logp_dense(
    y: pt.TensorLike, mu: pt.TensorLike, cutpoints: pt.TensorLike
) -> pt.TensorVariable:
    """``cumulative_logit_logp`` for ratings in a (..., item) array with one
    cutpoint row per item (the dense likelihood layout).

    The same formula, but each rating's entries of the per-category tables are
    picked by comparing its category with every category (a one-hot sum over
    the last axis) instead of by an index gather. The gradient is then sums over
    sessions and judges (reductions) rather than a scatter-add of every rating
    into a small table, which on a GPU serialises on atomic collisions.
    """
    cut, t_hi, t_lo, log_gap = _cutpoint_tables(cutpoints)
    n_cut = cut.shape[1]
    yy = pt.cast(y, "int64")
    # categories 0..C-1 without pt.arange, which JAX needs with constant bounds
    categories = pt.cumsum(pt.ones_like(t_hi[0], dtype="int64")) - 1
    one_hot = pt.eq(yy[..., None], categories)  # (..., item, C)

    def pick(table: pt.TensorVariable) -> pt.TensorVariable:
        return pt.sum(pt.switch(one_hot, table, 0.0), axis=-1)

    mu_t = pt.as_tensor_variable(mu)
    below_top = pt.cast(pt.lt(yy, n_cut), mu_t.dtype)
    e = pt.exp(-mu_t)
    h = pick(t_hi) * e
    lo = pick(t_lo) * e
    return pick(log_gap) - below_top * mu_t - pt.log1p(h + lo + h * lo)


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


def _cumulative_logit_random_dense(mu, cutpoints, rng=None, size=None):
    """Draw ratings in the dense likelihood layout (cutpoints: one row per item)."""
    cut = np.asarray(cutpoints)
    while cut.ndim > 2:
        cut = cut[0]
    return _cumulative_logit_random(mu, cut, np.arange(cut.shape[0]), rng=rng, size=size)


def sum_to_zero_basis(
    groups: np.ndarray, n_groups: int, labels: list[str]
) -> tuple[np.ndarray, list[str]]:
    """Orthonormal basis of the vectors that sum to zero within each group.

    Returns an ``n x (n - number of non-empty groups)`` matrix of Helmert
    contrasts (column ``j`` of a group: its first ``j`` members against member
    ``j + 1``, scaled to unit length) and a label per column.
    """
    n = len(groups)
    cols, names = [], []
    for g in range(n_groups):
        idx = np.flatnonzero(groups == g)
        for j in range(1, len(idx)):
            v = np.zeros(n)
            v[idx[:j]] = 1.0
            v[idx[j]] = -float(j)
            cols.append(v / np.sqrt(j * (j + 1.0)))
            names.append(f"{labels[idx[j]]} vs earlier")
    return (np.column_stack(cols) if cols else np.zeros((n, 0))), names


def origin_sd(data: RatingData) -> float:
    """Spread given to the subjects' average (not identified) in centred form.

    About the posterior SD of one subject's factor score: ``1 / sqrt(0.25 n)``
    for ``n`` ratings per subject and scale (a rating of a graded-response item
    carries roughly 0.25 units of Fisher information). Any value gives the same
    posterior for every reported quantity (see :func:`_pin_origin`); this one
    makes the direction about as wide as the others, so NUTS neither crawls
    along it nor shrinks its step for it.
    """
    n = np.bincount(data.subject_idx, minlength=data.n_subjects) / max(data.n_scales, 1)
    return float(1.0 / np.sqrt(0.25 * max(float(np.median(n)), 1.0)))


def _subject_session_block(
    chol_cov: pt.TensorVariable,
    sd_session: pt.TensorVariable,
    d: RatingData,
    tau: float,
    k: int,
) -> tuple[pt.TensorVariable, pt.TensorVariable]:
    """Subject factors and session deviations, sampled along what the data see.

    The model is unchanged: ``theta_raw[p] ~ MVN(0, S)`` with ``S`` the factor
    covariance, and ``zeta[s] ~ Normal(0, sd_session)`` independently. But the
    ratings of subject ``p`` see only ``u[p] = theta_raw[p] + m[p]`` (``m``
    the average deviation of p's ``n`` sessions) and each session's departure
    ``w[s] = zeta[s] - m[p]``. Sampled as ``theta_raw`` and ``zeta``, a rise in
    ``theta_raw`` offset by a fall in every ``zeta`` of the subject leaves the
    likelihood unchanged: posterior correlation about -0.8 between a subject's
    factor and its average deviation on the founding design, a ridge that
    needs longer trajectories per effective draw (docs/model.md, "What sets
    the trajectory length now").

    Here, with ``D = diag(sd_session^2) / n`` and standard normal ``b``
    (``theta_z``) and ``z`` (``zeta_z``):

        u ~ MVN(0, S + D)                           (``subject_mean``, centred)
        theta_raw = A u + chol(B) b,  A = S (S + D)^-1,  B = D - D (S + D)^-1 D
        zeta[s] = (u - theta_raw)[p] + sd_session (z[s] - mean of z over p's sessions)

    which gives ``theta_raw`` and ``m = u - theta_raw`` their prior laws,
    independent of each other (``theta_raw | u`` is the Gaussian conditional),
    and the within-subject departures theirs (deviations of iid normals from
    their mean); so ``zeta`` is iid ``Normal(0, sd_session)`` as before.
    ``u`` is centred because the ratings pin it down; ``b`` is not, because
    only the prior and the covariates meet ``theta_raw`` given ``u`` (with
    ``u`` non-centred too the factor correlations mixed badly). The matrices
    depend on ``n`` only through its distinct values. The average of
    ``theta_raw`` over subjects is met by nothing but its prior;
    :func:`_pin_origin` narrows it as for the centred form.
    """
    sess_subj = np.asarray(d.session_subject_idx, dtype=np.int64)
    n_sess = np.bincount(sess_subj, minlength=d.n_subjects)
    counts, group = np.unique(n_sess, return_inverse=True)
    if counts.min() < 1:
        raise ValueError("every subject needs at least one session for the joint form")
    cov = chol_cov @ chol_cov.T
    var_s = sd_session**2
    eye = np.eye(k)

    def conditional(n: float) -> tuple[Any, Any, Any]:
        """chol(S + D), A and chol(B) for subjects with ``n`` sessions."""
        dvar = var_s / n
        s_plus_d = cov + dvar * eye
        chol_sd = pt.linalg.cholesky(s_plus_d)
        inv_l_d = solve_triangular(chol_sd, dvar * eye, lower=True)  # L^-1 D
        sol_d = solve_triangular(chol_sd.T, inv_l_d, lower=False)  # (S + D)^-1 D
        a_mat = eye - sol_d.T  # S (S + D)^-1 = I - D (S + D)^-1
        b_mat = dvar * eye - inv_l_d.T @ inv_l_d  # D - D (S + D)^-1 D
        return chol_sd, a_mat, pt.linalg.cholesky(b_mat)

    b_z = pm.Normal("theta_z", 0.0, 1.0, dims=("subject", "scale"))
    if counts.size == 1:  # every subject has the same number of sessions
        chol_sd, a_mat, chol_b = conditional(float(counts[0]))
        u = pm.MvNormal("subject_mean", mu=np.zeros(k), chol=chol_sd, dims=("subject", "scale"))
        theta_raw = u @ a_mat.T + b_z @ chol_b.T
    else:
        parts = [conditional(float(c)) for c in counts]
        g = np.asarray(group, dtype=np.int64)
        chol_sd, a_mat, chol_b = (pt.stack([p[i] for p in parts])[g] for i in range(3))
        u = pm.MvNormal("subject_mean", mu=np.zeros(k), chol=chol_sd, dims=("subject", "scale"))
        theta_raw = (a_mat @ u[:, :, None])[:, :, 0] + (chol_b @ b_z[:, :, None])[:, :, 0]
    _pin_origin(theta_raw, chol_cov, tau, d.n_subjects, k)
    z = pm.Normal("zeta_z", 0.0, 1.0, dims=("session", "scale"))
    z_mean = pt.inc_subtensor(pt.zeros((d.n_subjects, k))[sess_subj], z) / n_sess[:, None]
    zeta = pm.Deterministic(
        "zeta",
        (u - theta_raw)[sess_subj] + sd_session * (z - z_mean[sess_subj]),
        dims=("session", "scale"),
    )
    return theta_raw, zeta


def _pin_origin(
    theta_raw: pt.TensorVariable, chol_cov: pt.TensorVariable, tau: float, n: int, k: int
) -> None:
    """Give the average of centred-form subject factors its own narrow prior.

    ``theta`` is ``theta_raw`` minus its average over subjects, so the
    likelihood never sees that average ``m``. With rows iid ``MVN(0, S)`` the
    average is independent of the deviations and distributed ``MVN(0, S / N)``:
    as wide as the population SD along its (normalised) direction, while each
    subject's deviations are as narrow as the data make them - a long ridge
    that costs NUTS many leapfrog steps. The potential swaps ``MVN(0, S / N)``
    for ``MVN(0, tau^2 I / N)``; the deviations, hence ``theta`` and everything
    else, keep exactly the same posterior.
    """
    m = theta_raw.mean(axis=0)
    w = solve_triangular(chol_cov, m, lower=True)  # S^-1/2 m
    log_det = pt.log((chol_cov * np.eye(k)).sum(axis=1)).sum()  # JAX-safe diag
    old = -0.5 * n * (w**2).sum() - log_det  # log MVN(m; 0, S / N) up to constants
    new = -0.5 * n * (m**2).sum() / tau**2 - k * np.log(tau)
    pm.Potential("theta_origin", new - old)


def lkj_cholesky(name: str, n: int, eta: float) -> pt.TensorVariable:
    """Cholesky factor of an ``n x n`` correlation matrix with an LKJ(eta) prior.

    The free variable is ``{name}_chol`` (``{name}_beta`` for n = 2: LKJ(eta)
    for two variables is r = 2 * Beta(eta, eta) - 1, written out because
    ``pm.LKJCorr(n=2)`` does not compile to JAX with PyTensor 3.3).
    """
    if n == 2:
        r = 2.0 * pm.Beta(f"{name}_beta", eta, eta) - 1.0
        return pt.stack([pt.stack([1.0, 0.0]), pt.stack([r, pt.sqrt(1.0 - r**2)])])
    if n > 2:
        return pm.LKJCorr(f"{name}_chol", n=n, eta=eta)
    return pt.ones((1, 1))


def covariate_block(
    prefix: str,
    x: np.ndarray,
    latent: pt.TensorVariable,
    latent_corr: pt.TensorVariable,
    row_labels: list[str],
    names: list[str],
    priors: Priors,
    n_scales: int,
) -> None:
    """Covariates modelled jointly with standardised latent alliance values.

    For each row (a subject, or a session) with standardised latent alliance
    ``u`` (correlation matrix ``R`` over scales) and standardised covariates
    ``x``::

        x = a + B' u + diag(s) e,   e ~ MVN(0, R_e)   (R_e: LKJ prior)

    which is a joint multivariate normal of ``(u, x)`` with every cross
    covariance free (``B`` has a normal prior per element, so no dimension-driven
    shrinkage of the alliance-covariate correlations). Derived:
    ``association[k, q] = (R B)[k, q] / sd(x_q)`` is the latent (disattenuated)
    correlation, ``covariate_corr`` the covariates' own correlation matrix.
    Missing covariate values are parameters (``*_missing_z`` on the standardised
    scale, flat prior: their distribution is the model's conditional one);
    :func:`caltars_bayes.associations.imputed_covariates` puts them back on the
    original scale.
    """
    n, q = x.shape
    cdim = f"{prefix}covariate"
    model = pm.modelcontext(None)
    model.add_coord(cdim, names)
    model.add_coord(f"{cdim}2", names)
    miss_r, miss_c = np.nonzero(~np.isfinite(x))
    # pm.Data, not a constant: replications of one design then share a compiled
    # model (sampling.compile_nutpie); where values are missing stays structural
    xt = pm.Data(f"{cdim}_values", np.where(np.isfinite(x), x, 0.0))
    if len(miss_r):
        model.add_coord(
            f"{cdim}_missing",
            [f"{row_labels[r]}|{names[c]}" for r, c in zip(miss_r, miss_c, strict=True)],
        )
        xm = pm.Flat(f"{cdim}_missing_z", dims=f"{cdim}_missing")
        xt = pt.set_subtensor(xt[miss_r, miss_c], xm)
    a = prior_rv(f"{cdim}_intercept", priors.covariate_intercept, dims=cdim)
    b = prior_rv(f"{cdim}_slope", priors.covariate_slope, dims=("scale", cdim))
    s = prior_rv(f"{cdim}_sd", priors.covariate_sd, dims=cdim)
    resid = (xt - a - latent @ b) / s
    chol = lkj_cholesky(f"{cdim}_resid_corr", q, priors.lkj_eta)
    if q > 1:
        z = solve_triangular(chol, resid.T, lower=True).T
        log_det = pt.log((chol * np.eye(q)).sum(axis=1)).sum()  # no arange: JAX-safe
    else:
        z, log_det = resid, 0.0
    pm.Potential(
        f"{cdim}_loglik",
        -0.5 * (z**2).sum() - n * (pt.log(s).sum() + log_det) - 0.5 * n * q * np.log(2 * np.pi),
    )
    cov_x = b.T @ latent_corr @ b + pt.outer(s, s) * (chol @ chol.T)
    # Var(x_q) = b_q' R b_q + s_q^2 (R_e has a unit diagonal); written without
    # pt.diagonal, whose arange JAX cannot compile
    sd_x = pt.sqrt((b * (latent_corr @ b)).sum(axis=0) + s**2)
    assoc = (latent_corr @ b) / sd_x[None, :]
    pm.Deterministic(f"{prefix}association", assoc, dims=("scale", cdim))
    if q > 1:
        pm.Deterministic(f"{cdim}_corr", cov_x / pt.outer(sd_x, sd_x), dims=(cdim, f"{cdim}2"))


class AllianceModel:
    """The joint measurement model for one trial's ratings.

    Parameters
    ----------
    data : a validated :class:`~caltars_bayes.data.RatingData`.
    options, priors : override the instrument spec's ``[model]`` and ``[priors]``.
    informative : informative priors borrowed from an earlier trial: quantity
        name -> (mean, sd) arrays on its unconstrained scale, added to the
        default priors (see :mod:`caltars_bayes.borrow`).
    sampler : the sampler that will fit it, if known: resolves
        ``likelihood_layout = "auto"`` (dense for numpyro/blackjax).

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
        informative: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
        sampler: str | None = None,
    ) -> None:
        self.data = data
        self.instrument: Instrument = data.instrument
        self.options = options or self.instrument.model
        self.priors = priors or self.instrument.priors
        self.plan = plan_model(data, self.options, sampler)
        self.informative = dict(informative or {})
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

    def _covariate_matrix(
        self, names: list[str], scaling: dict[str, list[float]], level: str
    ) -> tuple[np.ndarray, list[str]]:
        """Standardised covariate values (NaN where missing) and their row labels."""
        subj, ses, _ = covariate_tables(self.data, self.options)
        table = subj if level == "subject" else ses
        assert table is not None
        x = np.column_stack(
            [(table[c].to_numpy(float) - scaling[c][0]) / scaling[c][1] for c in names]
        )
        labels = list(self.data.subjects) if level == "subject" else list(self.data.session_labels)
        return x, labels

    def build(self) -> pm.Model:
        """Build the PyMC model (no sampling)."""
        d, plan, pr = self.data, self.plan, self.priors
        n_k, n_cut = d.n_scales, self.instrument.n_categories - 1
        with pm.Model(coords=self.coords()) as m:
            # --- treatment-level alliance: theta ~ MVN(0, diag(sd) Omega diag(sd))
            sd_alliance = prior_rv("sd_alliance", pr.sd_alliance, dims="scale")
            if plan.bifactor:  # specific factors are orthogonal to each other
                chol = pt.eye(n_k)
            else:
                chol = lkj_cholesky("factor_corr", n_k, pr.lkj_eta)
            omega = chol @ chol.T
            if n_k > 1 and not plan.bifactor:
                pm.Deterministic("factor_corr", omega, dims=("scale", "scale2"))
            if plan.joint_subject_sessions:
                sd_session = prior_rv("sd_session", pr.sd_session, dims="scale")
                theta_raw, zeta = _subject_session_block(
                    sd_alliance[:, None] * chol, sd_session, d, origin_sd(d), n_k
                )
            elif plan.centred_subjects:
                chol_cov = sd_alliance[:, None] * chol
                theta_raw = pm.MvNormal(
                    "theta_raw", mu=np.zeros(n_k), chol=chol_cov, dims=("subject", "scale")
                )
                _pin_origin(theta_raw, chol_cov, origin_sd(d), d.n_subjects, n_k)
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
            session_subject = pm.Data(
                "session_subject_idx", np.asarray(d.session_subject_idx, np.int64), dims="session"
            )
            eta = theta[session_subject]
            if plan.joint_subject_sessions:
                eta = eta + zeta
            elif plan.session_level:
                sd_session = prior_rv("sd_session", pr.sd_session, dims="scale")
                if plan.centred_sessions:
                    zeta = pm.Normal("zeta", 0.0, sd_session, dims=("session", "scale"))
                else:
                    zeta_z = pm.Normal("zeta_z", 0.0, 1.0, dims=("session", "scale"))
                    zeta = pm.Deterministic("zeta", zeta_z * sd_session, dims=("session", "scale"))
                eta = eta + zeta
            # --- covariates, jointly with the latent alliance (see covariate_block)
            if plan.covariates:
                x, labels = self._covariate_matrix(
                    plan.covariates, plan.covariate_scaling, "subject"
                )
                covariate_block("", x, theta / sd_alliance, omega, labels, plan.covariates, pr, n_k)
            if plan.session_covariates:
                x, labels = self._covariate_matrix(
                    plan.session_covariates, plan.session_covariate_scaling, "session"
                )
                # the stationary session-level alliance (trend excluded), standardised
                var_eta = sd_alliance**2 + (sd_session**2 if plan.session_level else 0.0)
                sd_eta = pt.sqrt(var_eta)
                cov_eta = omega * pt.outer(sd_alliance, sd_alliance)
                if plan.session_level:
                    cov_eta = cov_eta + np.eye(n_k) * sd_session**2
                covariate_block(
                    "session_",
                    x,
                    eta / sd_eta,
                    cov_eta / pt.outer(sd_eta, sd_eta),
                    labels,
                    plan.session_covariates,
                    pr,
                    n_k,
                )

            if plan.session_trend:
                times = np.asarray(d.sessions["session_time"], dtype=float)
                trend = prior_rv("session_trend", pr.trend, dims="scale")
                eta = eta + trend * (times - times.mean())[:, None]

            # --- items: log loadings sum to zero within each scale (effects coding)
            isc = np.asarray(d.item_scale_idx, dtype=np.int64)
            loading = pm.Deterministic("loading", pt.exp(self._log_loadings(isc)), dims="item")
            cut_rows = "item" if plan.cutpoints == "item" else "scale"
            n_rows = d.n_items if cut_rows == "item" else n_k
            init = np.tile(np.linspace(-1.5, 1.5, n_cut), (n_rows, 1))
            cutpoints = prior_rv(
                "cutpoints",
                pr.cutpoint,
                dims=(cut_rows, "cutpoint"),
                transform=CentredOrdered(n_cut),
                initval=init,
            )

            # --- judges and the general factor
            general = g_load = disc = sev = g = pairs = pair_idx = None
            if plan.bifactor:
                # general factor: SD 1 on the logit scale of the average judge (its
                # scale is fixed, so item general loadings are free and positive)
                g_z = pm.Normal("general_z", 0.0, 1.0, dims="subject")
                general = pm.Deterministic("general", g_z - g_z.mean(), dims="subject")
                log_gl = prior_rv("log_general_loading", pr.log_general_loading, dims="item")
                g_load = pm.Deterministic("general_loading", pt.exp(log_gl), dims="item")
            if plan.judge_discrimination:
                sd_ld = prior_rv("sd_log_discrimination", pr.sd_log_discrimination)
                if plan.centred_judges:
                    log_disc = pm.ZeroSumNormal("log_discrimination", sigma=sd_ld, dims="judge")
                else:
                    ld_z = pm.ZeroSumNormal("log_discrimination_z", sigma=1.0, dims="judge")
                    log_disc = pm.Deterministic("log_discrimination", ld_z * sd_ld, dims="judge")
                disc = pm.Deterministic("discrimination", pt.exp(log_disc), dims="judge")
            if plan.judge_severity:
                sd_sev = prior_rv("sd_severity", pr.sd_severity)
                if plan.centred_judges:
                    sev = pm.ZeroSumNormal("severity", sigma=sd_sev, dims=("scale", "judge"))
                else:
                    sev_z = pm.ZeroSumNormal("severity_z", sigma=1.0, dims=("scale", "judge"))
                    sev = pm.Deterministic("severity", sev_z * sd_sev, dims=("scale", "judge"))
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
            parts = dict(
                eta=eta, loading=loading, general=general, general_loading=g_load,
                discrimination=disc, severity=sev, interaction=g, cutpoints=cutpoints,
                pairs=pairs, pair_idx=pair_idx,  # judge x subject codes, and per rating
            )  # fmt: skip
            if plan.likelihood_layout == "dense":
                self._dense_likelihood(parts, session_subject)
            else:
                self._vector_likelihood(parts)
            if self.informative:
                from caltars_bayes.borrow import add_borrowed_priors

                add_borrowed_priors(m, self.informative, d)
        return m

    def _log_loadings(self, isc: np.ndarray) -> pt.TensorVariable:
        """Log item loadings summing to zero within each scale.

        With the default Normal prior the free parameters are the coordinates of
        the log loadings in an orthonormal basis of the sum-to-zero subspace
        (``log_loading_contrast``, Helmert contrasts within each scale, one fewer
        than the scale's items): the same distribution as iid
        ``Normal(mu, sigma)`` log loadings centred per scale, without the
        per-scale mean that the likelihood cannot see. That mean, free in the
        centred form, is as wide as the prior while the loadings it shifts get
        narrower with every rating: NUTS then needs ever longer trajectories
        (roughly in proportion to the square root of the ratings). Other prior families keep the
        centred form (``log_loading_raw``).
        """
        d, prior = self.data, self.priors.log_loading
        if prior.dist != "Normal":
            n_k = d.n_scales
            counts = np.bincount(isc, minlength=n_k).astype(float)
            raw = prior_rv("log_loading_raw", prior, dims="item")
            avg = pt.dot(raw, np.eye(n_k)[isc] / counts[None, :])  # mean per scale
            return raw - avg[isc]
        basis, labels = sum_to_zero_basis(isc, d.n_scales, list(d.items))
        if not labels:  # every scale has one item: all loadings are 1
            return pt.zeros(d.n_items)
        pm.modelcontext(None).add_coord("item_contrast", labels)
        sigma = prior.params.get("sigma", 1.0)  # PyMC's default when a spec leaves it out
        z = pm.Normal("log_loading_contrast", 0.0, sigma, dims="item_contrast")
        return pt.dot(basis, z)

    def _vector_likelihood(self, p: dict[str, Any]) -> None:
        """Observed ratings as one vector (dim ``obs``), parameters gathered per rating."""
        d, plan = self.data, self.plan
        n_k = d.n_scales
        jj, kk = d.judge_idx, d.scale_idx
        item_idx = pm.Data("item_idx", np.asarray(d.item_idx, np.int64), dims="obs")
        eta_idx = pm.Data("eta_idx", np.asarray(d.session_idx * n_k + kk, np.int64), dims="obs")
        mu = p["loading"][item_idx] * p["eta"].ravel()[eta_idx]
        if p["general"] is not None:
            subject_idx = pm.Data("subject_idx", np.asarray(d.subject_idx, np.int64), dims="obs")
            mu = mu + p["general_loading"][item_idx] * p["general"][subject_idx]
        if p["discrimination"] is not None:
            judge_idx = pm.Data("judge_idx", np.asarray(jj, np.int64), dims="obs")
            mu = p["discrimination"][judge_idx] * mu
        if p["severity"] is not None:
            sev_idx = pm.Data(
                "severity_idx", np.asarray(kk * d.n_judges + jj, np.int64), dims="obs"
            )
            mu = mu - p["severity"].ravel()[sev_idx]
        if p["interaction"] is not None:
            mu = mu + p["interaction"].ravel()[p["pair_idx"] * n_k + kk]
        if plan.cutpoints == "item":
            row = item_idx
        else:
            row = pm.Data("scale_idx", np.asarray(kk, np.int64), dims="obs")
        y = pm.Data("y", np.asarray(d.y, np.int64), dims="obs")
        pm.CustomDist(
            "rating",
            mu,
            p["cutpoints"],
            row,
            logp=lambda value, mu_, cut_, row_: cumulative_logit_logp(value, mu_, cut_, row_),
            random=_cumulative_logit_random,
            signature="(),(r,c),()->()",
            observed=y,
            dims="obs",
        )

    def _dense_likelihood(self, p: dict[str, Any], session_subject: pt.TensorVariable) -> None:
        """Observed ratings as a session x judge x item array (complete designs).

        Item-level terms reach the scales through a scale x item 0/1 matrix and
        judge terms by broadcasting, so no parameter is gathered per rating.
        """
        d = self.data
        isc = np.asarray(d.item_scale_idx, dtype=np.int64)
        to_item = np.eye(d.n_scales)[isc].T  # scale x item
        mu = (p["loading"] * pt.dot(p["eta"], to_item))[:, None, :]  # session x 1 x item
        if p["general"] is not None:
            mu = mu + p["general_loading"] * p["general"][session_subject][:, None, None]
        if p["discrimination"] is not None:
            mu = p["discrimination"][None, :, None] * mu
        if p["severity"] is not None:
            mu = mu - pt.dot(p["severity"].T, to_item)[None]  # judge x item
        if p["interaction"] is not None:
            pair_codes = (
                np.arange(d.n_judges)[None, :] * d.n_subjects
                + np.asarray(d.session_subject_idx)[:, None]
            )
            pair_idx = np.searchsorted(p["pairs"], pair_codes)  # session x judge
            mu = mu + pt.dot(p["interaction"][pair_idx], to_item)
        mu = pt.broadcast_to(mu, (d.n_sessions, d.n_judges, d.n_items))
        cut = p["cutpoints"] if self.plan.cutpoints == "item" else p["cutpoints"][isc]
        y = pm.Data("y_dense", dense_cells(d), dims=("session", "judge", "item"))
        pm.CustomDist(
            "rating",
            mu,
            cut,
            logp=lambda value, mu_, cut_: cumulative_logit_logp_dense(value, mu_, cut_),
            random=_cumulative_logit_random_dense,
            signature="(),(c)->()",
            observed=y,
            dims=("session", "judge", "item"),
        )
