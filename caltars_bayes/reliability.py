"""Reliability as posteriors: interrater reliability, judge reliability, decision studies.

Every coefficient is a ratio of variance components of a *scale score* (the
mean of a judge's item scores over the items of one scale) in a design where
subjects ``p`` have sessions ``s`` rated by judges ``j``::

    X[p, s, j] = mean + subject[p] + session[s] + judge[j] + subject_judge[p, j]
                 + residual[s, j]

with variances ``var_subject``, ``var_session``, ``var_judge``,
``var_subject_judge`` and ``var_residual`` (:data:`COMPONENTS`).
:func:`coefficient_from_components` turns them into every coefficient reported
here and projected by the decision study, so the posterior, the simulation
truth and the planning code all use one formula.

The components come by two routes (see ``docs/reliability.md``):

latent (:func:`latent_components`)
    Generalizability-theory ratios of the model's own parameters on the
    latent-response scale of the cumulative-logit model, the logistic residual
    ``pi^2 / 3`` per item rating included. Every posterior draw is used.
observed (:func:`simulate_observed_components`)
    Posterior prediction: for each (thinned) draw, a new trial of the same
    design is replicated - new subjects and sessions from the alliance
    populations, new judges from the judge population, every item rated by
    the model's cumulative logit - and the two-way ANOVAs of the replicated
    scale scores, at session and at treatment level, give the components on
    the observed scale-score scale (:func:`observed_components`). This is
    the population coefficient that a classical ICC of a trial's scale
    scores estimates.

Public functions: :func:`reliability_draws`, :func:`reliability`,
:func:`classical_reliability`, :func:`judge_reliability`,
:func:`judges_table`, :func:`true_reliability`, :func:`dstudy` (with
:class:`DStudy`), and the pure :func:`latent_components`,
:func:`coefficient_from_components`, :func:`lognormal_moments`.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import xarray as xr
from arviz_stats.base import array_stats

from caltars_bayes.classical import scale_score_icc
from caltars_bayes.errors import CaltarsError, DataError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from caltars_bayes.data import RatingData
    from caltars_bayes.fit import Fit
    from caltars_bayes.spec import Instrument

__all__ = [
    "COMPONENTS",
    "LOGISTIC_VAR",
    "DStudy",
    "classical_reliability",
    "coefficient_from_components",
    "dstudy",
    "judge_reliability",
    "judges_table",
    "latent_components",
    "lognormal_moments",
    "observed_components",
    "parse_counts",
    "reliability",
    "reliability_draws",
    "simulate_observed_components",
    "true_reliability",
]

#: Variance of the standard logistic distribution: the latent residual of one rating.
LOGISTIC_VAR = float(np.pi**2 / 3)
#: Names of the variance components, in the order of the design equation.
COMPONENTS = ("var_subject", "var_session", "var_judge", "var_subject_judge", "var_residual")
LEVELS = ("session", "treatment")
ROUTES = ("latent", "observed")
COEFFICIENTS = ("agreement", "consistency")
#: Draws used by the observed (posterior-predictive) route by default.
OBSERVED_DRAWS = 200
#: New judges drawn per posterior draw by the observed route.
NEW_JUDGES = 24
#: Fewest subjects in each replicated trial of the observed route.
MIN_NEW_SUBJECTS = 50
#: Draws used by :func:`judge_reliability` by default.
JUDGE_DRAWS = 400
SAMPLE_DIMS = ("chain", "draw")
GENERALIZES_JUDGES = "judges"
GENERALIZES_BOTH = "judges and sessions"


# --------------------------------------------------------------------------- pure formulas


def lognormal_moments(sd_log: Any) -> tuple[Any, Any]:
    """Mean and variance of ``exp(z)``, ``z ~ Normal(0, sd_log)``.

    Returns
    -------
    (mean, variance): ``exp(sd^2 / 2)`` and ``(exp(sd^2) - 1) exp(sd^2)``, with
    the type of ``sd_log`` (scalar, numpy or xarray).
    """
    s2 = sd_log**2
    return np.exp(s2 / 2), (np.exp(s2) - 1) * np.exp(s2)


def latent_components(
    sd_alliance: Any,
    sd_session: Any,
    mean_loading: Any,
    n_items: Any,
    *,
    sd_severity: Any = 0.0,
    sd_log_discrimination: Any = 0.0,
    sd_interaction: Any = 0.0,
    general_var: Any = 0.0,
) -> dict[str, Any]:
    """Variance components of a latent scale score (generalizability route).

    A judge's latent scale score for a session is the mean, over the scale's
    ``n_items`` items, of the latent responses of the cumulative-logit model::

        L[s, j] = a[j] * eta[s] - severity[j] + interaction[j, p] + mean_i(e[i, s, j])

    with ``a[j] = discrimination[j] * mean_loading``, ``eta = theta + zeta``
    and ``e`` standard logistic (variance ``pi^2 / 3``). New judges come from
    the population (``log discrimination ~ Normal(0, sd_log_discrimination)``,
    ``severity ~ Normal(0, sd_severity)``, ``interaction ~ Normal(0,
    sd_interaction)``), so ``a`` has mean ``A = mean_loading * E[alpha]`` and
    variance ``mean_loading^2 Var(alpha)`` (:func:`lognormal_moments`). With the
    true-score variances ``Vp = mean_loading^2 sd_alliance^2 + general_var``
    (subject) and ``Vs = mean_loading^2 sd_session^2`` (session):

    - ``var_subject = E[alpha]^2 Vp``: the universe score of the subject
    - ``var_session = E[alpha]^2 Vs``: the session's deviation from it
    - ``var_judge = sd_severity^2``: judge main effect (severity)
    - ``var_subject_judge = Var(alpha) Vp + sd_interaction^2``: the judge's
      discrimination applied to the subject's level, and the interaction
    - ``var_residual = Var(alpha) Vs + (pi^2 / 3) / n_items``: discrimination
      applied to the session deviation, and the logistic residual averaged over
      the scale's items

    Parameters
    ----------
    sd_alliance, sd_session : SDs of ``theta`` and ``zeta`` for the scale.
    mean_loading : arithmetic mean of the scale's item loadings.
    n_items : items averaged into the scale score.
    sd_severity, sd_log_discrimination, sd_interaction : judge population SDs
        (0 when the model has no such term).
    general_var : subject variance added by a bifactor general factor
        (the squared mean general loading of the scale's items), else 0.

    Returns
    -------
    dict with the five :data:`COMPONENTS`, each broadcast from the inputs
    (numbers, numpy arrays or xarray DataArrays).
    """
    e_alpha, var_alpha = lognormal_moments(sd_log_discrimination)
    v_subject = mean_loading**2 * sd_alliance**2 + general_var
    v_session = mean_loading**2 * sd_session**2
    return {
        "var_subject": e_alpha**2 * v_subject,
        "var_session": e_alpha**2 * v_session,
        "var_judge": sd_severity**2 + 0.0 * v_subject,
        "var_subject_judge": var_alpha * v_subject + sd_interaction**2,
        "var_residual": var_alpha * v_session + LOGISTIC_VAR / n_items,
    }


def coefficient_from_components(
    components: Mapping[str, Any],
    *,
    judges: Any = 1,
    sessions: Any = 1,
    level: str = "session",
    coefficient: str = "agreement",
    generalize_sessions: bool = False,
) -> Any:
    """A reliability coefficient from the five variance components.

    With ``k = judges``, ``n = sessions`` and the components ``Vp, Vs, Vj,
    Vpj, Vr`` (:data:`COMPONENTS`); ``Vj*`` is ``Vj`` for ``"agreement"``
    (absolute agreement, the ICC(2) family) and 0 for ``"consistency"`` (the
    ICC(3) family, judges' leniency removed):

    - session level (the session's alliance, mean of ``k`` judges)::

          (Vp + Vs) / (Vp + Vs + (Vj* + Vpj + Vr) / k)

    - treatment level, interrater (the founding study's coefficient: the
      subject's scale score averaged over its ``n`` rated sessions, the same
      ``k`` judges rating every session; the rated sessions are part of the
      target, only judges are generalized over)::

          (Vp + Vs/n) / (Vp + Vs/n + (Vj* + Vpj + Vr/n) / k)

    - treatment level, ``generalize_sessions=True`` (the generalizability
      coefficient of the treatment-level score for the subject's alliance over
      the whole treatment: sessions and judges both random; the decision
      study's coefficient)::

          Vp / (Vp + Vs/n + (Vj* + Vpj) / k + Vr / (n k))

    Parameters
    ----------
    components : mapping with the five component names (numbers or arrays).
    judges, sessions : ``k`` and ``n`` (numbers or broadcastable arrays).
    level : ``"session"`` or ``"treatment"``.
    coefficient : ``"agreement"`` or ``"consistency"``.
    generalize_sessions : see above (treatment level only).

    Returns
    -------
    The coefficient, broadcast over the inputs.
    """
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
    if coefficient not in COEFFICIENTS:
        raise ValueError(f"coefficient must be one of {COEFFICIENTS}, got {coefficient!r}")
    vp, vs = components["var_subject"], components["var_session"]
    vj = components["var_judge"] if coefficient == "agreement" else 0.0
    vpj, vr = components["var_subject_judge"], components["var_residual"]
    k, n = judges, sessions
    if level == "session":
        if generalize_sessions:
            raise ValueError("generalize_sessions applies to the treatment level only")
        true = vp + vs
        err = (vj + vpj + vr) / k
    elif generalize_sessions:
        true = vp
        err = vs / n + (vj + vpj) / k + vr / (n * k)
    else:
        true = vp + vs / n
        err = (vj + vpj + vr / n) / k
    return true / (true + err)


def spearman_brown(r: Any, k: Any) -> Any:
    """Reliability of the mean of ``k`` parallel measures of single reliability ``r``."""
    return k * r / (1 + (k - 1) * r)


def anova_components(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two-way random-effects ANOVA components of complete tables ``(..., targets, judges)``.

    Returns
    -------
    (target, judge, error) variance estimates (expected-mean-square
    solutions, not clipped): ``(BMS - EMS) / k``, ``(JMS - EMS) / n``, ``EMS``.
    """
    n, k = x.shape[-2:]
    grand = x.mean(axis=(-2, -1), keepdims=True)
    rows = x.mean(axis=-1, keepdims=True)
    cols = x.mean(axis=-2, keepdims=True)
    bms = k * ((rows - grand) ** 2).sum(axis=(-2, -1)) / (n - 1)
    jms = n * ((cols - grand) ** 2).sum(axis=(-2, -1)) / (k - 1)
    ems = ((x - rows - cols + grand) ** 2).sum(axis=(-2, -1)) / ((n - 1) * (k - 1))
    return (bms - ems) / k, (jms - ems) / n, ems


def observed_components(
    session_scores: np.ndarray, session_subject: np.ndarray
) -> dict[str, np.ndarray]:
    """Variance components of complete session x judge scale-score tables.

    ``session_scores`` has shape ``(..., sessions, judges)`` (every judge
    rated every session); ``session_subject`` gives each session's subject
    index. Two two-way ANOVAs are run: on the session table, and on the
    subject table of each judge's mean over the subject's sessions. With
    ``n`` the harmonic mean of sessions per subject, their target and error
    components are ``T_s = Vp + Vs``, ``T_t = Vp + Vs/n``, ``E_s = Vpj + Vr``,
    ``E_t = Vpj + Vr/n``, solved for ``Vs``, ``Vp``, ``Vr``, ``Vpj``; ``Vj`` is the
    session table's judge component. Negative solutions are set to 0. With
    one session per subject the session and residual parts cannot be told
    apart: ``Vs = Vr = 0`` (the residual counts as subject x judge, so more
    sessions are not credited with reducing it).

    Returns
    -------
    dict with the five :data:`COMPONENTS`, each of shape ``(...)``.
    """
    x = np.asarray(session_scores, dtype=float)
    subj = np.asarray(session_subject, dtype=np.int64)
    n_p = np.bincount(subj)
    avg = np.zeros((len(n_p), len(subj)))
    avg[subj, np.arange(len(subj))] = 1.0 / n_p[subj]
    t_s, j_s, e_s = anova_components(x)
    t_t, _, e_t = anova_components(np.einsum("ps,...sj->...pj", avg, x))
    n_h = _harmonic_mean(n_p)
    if n_h > 1 + 1e-9:
        f = 1.0 / (1.0 - 1.0 / n_h)
        v_s = np.maximum((t_s - t_t) * f, 0.0)
        v_r = np.maximum((e_s - e_t) * f, 0.0)
    else:
        v_s = np.zeros_like(t_s)
        v_r = np.zeros_like(e_s)
    return {
        "var_subject": np.maximum(t_s - v_s, 0.0),
        "var_session": v_s,
        "var_judge": np.maximum(j_s, 0.0),
        "var_subject_judge": np.maximum(e_s - v_r, 0.0),
        "var_residual": v_r,
    }


# --------------------------------------------------------------------------- simulation


@dataclass
class _Design:
    """What the observed route needs to know about the rated sessions and items."""

    session_subject: np.ndarray  # (S,) subject index of each session
    n_subjects: int
    item_scale: np.ndarray  # (I,) scale index of each item
    n_scales: int

    @property
    def item_average(self) -> np.ndarray:
        """(I, K) matrix averaging item scores into scale scores."""
        counts = np.bincount(self.item_scale, minlength=self.n_scales)
        a = np.zeros((len(self.item_scale), self.n_scales))
        a[np.arange(len(self.item_scale)), self.item_scale] = 1.0 / counts[self.item_scale]
        return a


def _stratified_normal(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Standard normal draws stratified over the first axis (one per 1/M quantile band).

    Each column is an independent random permutation of one draw from each of
    the ``M`` equal-probability strata: still a sample from the population,
    but its spread (e.g. the judges' severity variance) varies far less from
    panel to panel than that of independent draws.
    """
    from scipy.special import ndtri

    m = shape[0]
    rest = shape[1:]
    strata = np.argsort(rng.random((m, *rest)), axis=0)
    return ndtri((strata + rng.random((m, *rest))) / m)


def replicate_scale_scores(
    design: _Design,
    eta: np.ndarray,
    loading: np.ndarray,
    cutpoints: np.ndarray,
    sd_severity: np.ndarray,
    sd_log_discrimination: np.ndarray,
    sd_interaction: np.ndarray,
    n_judges: int,
    rng: np.random.Generator,
    general: np.ndarray | None = None,
    general_loading: np.ndarray | None = None,
) -> np.ndarray:
    """Scale scores of ``n_judges`` new judges rating every session, per draw.

    For each draw ``d`` new judges get ``log alpha ~ Normal(0,
    sd_log_discrimination[d])``, ``severity ~ Normal(0, sd_severity[d])`` per
    scale and, if ``sd_interaction[d] > 0``, an interaction per subject and
    scale; every item of every session is rated by the model's cumulative
    logit (latent response plus standard logistic noise, cut at the item's
    cutpoints).

    Parameters
    ----------
    eta : (D, S, K) session alliance; loading : (D, I); cutpoints : (D, I, C);
    sd_* : (D,); general : (D, P) and general_loading : (D, I) for a bifactor
    model.

    Returns
    -------
    (D, K, S, n_judges) array of scale scores (mean 0-based category).
    """
    n_d, n_s, _ = eta.shape
    n_i = loading.shape[1]
    k_of = design.item_scale
    avg = design.item_average
    out = np.empty((n_d, design.n_scales, n_s, n_judges))
    for d in range(n_d):
        base = loading[d][None, :] * eta[d][:, k_of]  # (S, I)
        if general is not None and general_loading is not None:
            base = base + general_loading[d][None, :] * general[d][design.session_subject][:, None]
        alpha = np.exp(sd_log_discrimination[d] * _stratified_normal(rng, (n_judges,)))
        sev = sd_severity[d] * _stratified_normal(rng, (n_judges, design.n_scales))
        mu = alpha[:, None, None] * base[None] - sev[:, None, k_of]  # (M, S, I)
        if sd_interaction[d] > 0:
            g = rng.normal(0.0, sd_interaction[d], (n_judges, design.n_subjects, design.n_scales))
            mu = mu + g[:, design.session_subject][:, :, k_of]
        ystar = mu + rng.logistic(size=(n_judges, n_s, n_i))
        y = (ystar[..., None] > cutpoints[d][None, None]).sum(-1)  # (M, S, I)
        out[d] = np.einsum("msi,ik->ksm", y, avg)
    return out


# --------------------------------------------------------------------------- posterior inputs


def _design(data: RatingData) -> _Design:
    return _Design(
        session_subject=np.asarray(data.session_subject_idx, dtype=np.int64),
        n_subjects=data.n_subjects,
        item_scale=np.asarray(data.item_scale_idx, dtype=np.int64),
        n_scales=data.n_scales,
    )


def judges_per_session(data: RatingData) -> int:
    """The design's judges per session (mean number of distinct judges, rounded, >= 1)."""
    per = pd.Series(data.judge_idx).groupby(data.session_idx).nunique()
    return max(1, round(float(per.mean())))


def sessions_per_subject(data: RatingData) -> float:
    """Harmonic mean number of rated sessions per subject (the ``n`` of treatment level)."""
    n_p = np.bincount(np.asarray(data.session_subject_idx), minlength=data.n_subjects)
    return _harmonic_mean(n_p[n_p > 0])


def _harmonic_mean(n: np.ndarray) -> float:
    """Harmonic mean, exact (no rounding error) when all values are equal."""
    n = np.asarray(n, dtype=float)
    return float(n[0]) if np.all(n == n[0]) else float(len(n) / np.sum(1.0 / n))


def _item_scale_matrix(data: RatingData) -> xr.DataArray:
    """(item, scale) DataArray averaging item values into scale means."""
    a = _Design(np.zeros(1, np.int64), 1, np.asarray(data.item_scale_idx), data.n_scales)
    return xr.DataArray(
        a.item_average,
        dims=("item", "scale"),
        coords={"item": list(data.items), "scale": list(data.scales)},
    )


def _scalar_or_zero(post: xr.Dataset, name: str) -> xr.DataArray | float:
    return post[name] if name in post else 0.0


def _posterior_latent_components(fit: Fit, n_items: Any = None) -> dict[str, xr.DataArray]:
    post, data = fit.posterior, fit.data
    avg = _item_scale_matrix(data)
    mean_loading = xr.dot(post["loading"], avg, dim="item")
    if n_items is None:
        counts = np.bincount(np.asarray(data.item_scale_idx), minlength=data.n_scales)
        n_items = xr.DataArray(counts.astype(float), dims="scale", coords={"scale": avg.scale})
    general_var: xr.DataArray | float = 0.0
    if "general_loading" in post:
        general_var = xr.dot(post["general_loading"], avg, dim="item") ** 2
    comps = latent_components(
        post["sd_alliance"],
        _scalar_or_zero(post, "sd_session"),
        mean_loading,
        n_items,
        sd_severity=_scalar_or_zero(post, "sd_severity"),
        sd_log_discrimination=_scalar_or_zero(post, "sd_log_discrimination"),
        sd_interaction=_scalar_or_zero(post, "sd_interaction"),
        general_var=general_var,
    )
    return {k: v.transpose("chain", "draw", "scale", ...) for k, v in comps.items()}


def _thin(n_chains: int, n_draws: int, max_draws: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Chain and draw indices of at most ``max_draws`` draws, evenly spaced within chains."""
    if max_draws is None or max_draws >= n_chains * n_draws:
        c, d = np.meshgrid(np.arange(n_chains), np.arange(n_draws), indexing="ij")
        return c.ravel(), d.ravel()
    per = max(1, max_draws // n_chains)
    d_idx = np.unique(np.linspace(0, n_draws - 1, per).round().astype(int))
    c, d = np.meshgrid(np.arange(n_chains), d_idx, indexing="ij")
    return c.ravel(), d.ravel()


def _take(da: xr.DataArray | float, ci: np.ndarray, di: np.ndarray, dims: Sequence[str]):
    """Values of ``da`` at the (chain, draw) pairs, as (n, *dims) numpy; 0-array for absent."""
    if not isinstance(da, xr.DataArray):
        return np.full(len(ci), float(da))
    arr = da.transpose("chain", "draw", *dims).values
    return np.asarray(arr[ci, di], dtype=float)


def _cutpoints_by_item(post: xr.Dataset, data: RatingData) -> xr.DataArray:
    cut = post["cutpoints"]
    if "item" in cut.dims:
        return cut
    idx = xr.DataArray(np.asarray(data.item_scale_idx), dims="item")
    return (
        cut.isel(scale=idx).drop_vars("scale", errors="ignore").assign_coords(item=list(data.items))
    )


def simulate_observed_components(
    design: _Design,
    sd_alliance: np.ndarray,
    sd_session: np.ndarray,
    loading: np.ndarray,
    cutpoints: np.ndarray,
    sd_severity: np.ndarray,
    sd_log_discrimination: np.ndarray,
    sd_interaction: np.ndarray,
    n_new_judges: int,
    rng: np.random.Generator,
    general_loading: np.ndarray | None = None,
    min_subjects: int = MIN_NEW_SUBJECTS,
) -> dict[str, np.ndarray]:
    """Observed-scale components of replicated trials, one per draw (the observed route).

    Each draw's replicate is a new trial of the same design: the design's
    pattern of sessions per subject (repeated until there are at least
    ``min_subjects`` subjects), new subjects ``theta ~ Normal(0,
    sd_alliance)``, new sessions ``zeta ~ Normal(0, sd_session)`` (and a new
    general factor ``Normal(0, 1)`` for a bifactor model), all rated on every
    item by ``n_new_judges`` new judges from the judge population
    (:func:`replicate_scale_scores`). Subjects, sessions and judges are drawn
    stratified over quantiles (:func:`_stratified_normal`), which keeps the
    Monte Carlo noise of their variances small. The components of the
    replicated scale scores come from :func:`observed_components`.

    Parameters
    ----------
    sd_alliance, sd_session : (D, K); loading : (D, I); cutpoints : (D, I, C);
    sd_* : (D,); general_loading : (D, I) or None.

    Returns
    -------
    dict with the five :data:`COMPONENTS`, each of shape (D, K).
    """
    n_p = design.n_subjects
    reps = max(1, int(np.ceil(min_subjects / n_p)))
    subj = np.concatenate([design.session_subject + r * n_p for r in range(reps)])
    new = _Design(subj, n_p * reps, design.item_scale, design.n_scales)
    n_d, n_k = sd_alliance.shape
    theta = _stratified_normal(rng, (new.n_subjects, n_d, n_k)).transpose(1, 0, 2)
    zeta = _stratified_normal(rng, (len(subj), n_d, n_k)).transpose(1, 0, 2)
    eta = theta[:, subj] * sd_alliance[:, None, :] + zeta * sd_session[:, None, :]
    general = None
    if general_loading is not None:
        general = _stratified_normal(rng, (new.n_subjects, n_d)).T
    scores = replicate_scale_scores(
        new, eta, loading, cutpoints, sd_severity, sd_log_discrimination, sd_interaction,
        n_new_judges, rng, general, general_loading,
    )  # fmt: skip
    return observed_components(scores, subj)


def _posterior_observed_components(
    fit: Fit, ci: np.ndarray, di: np.ndarray, n_new_judges: int, seed: int
) -> dict[str, np.ndarray]:
    """Observed-route components at the given draws: arrays (n, K)."""
    post, data = fit.posterior, fit.data
    n_k = data.n_scales
    sd_a = _take(post["sd_alliance"], ci, di, ["scale"])
    sd_s = (
        _take(post["sd_session"], ci, di, ["scale"])
        if "sd_session" in post
        else np.zeros((len(ci), n_k))
    )
    general_loading = None
    if "general_loading" in post:
        general_loading = _take(post["general_loading"], ci, di, ["item"])
    return simulate_observed_components(
        _design(data),
        sd_a,
        sd_s,
        _take(post["loading"], ci, di, ["item"]),
        _take(_cutpoints_by_item(post, data), ci, di, ["item", "cutpoint"]),
        _take(_scalar_or_zero(post, "sd_severity"), ci, di, []),
        _take(_scalar_or_zero(post, "sd_log_discrimination"), ci, di, []),
        _take(_scalar_or_zero(post, "sd_interaction"), ci, di, []),
        n_new_judges,
        np.random.default_rng(seed),
        general_loading,
    )


# --------------------------------------------------------------------------- per-draw coefficients


def _coefficients(
    comps: Mapping[str, xr.DataArray], judges: xr.DataArray, n_sessions: float
) -> dict[str, xr.DataArray]:
    """Interrater (session, treatment) and generalizability coefficients from components."""
    out: dict[str, xr.DataArray] = {}
    for coef in COEFFICIENTS:
        per_level = [
            coefficient_from_components(
                comps, judges=judges, sessions=n_sessions, level=lev, coefficient=coef
            )
            for lev in LEVELS
        ]
        out[coef] = xr.concat(per_level, dim=xr.DataArray(list(LEVELS), dims="level"))
        gen = coefficient_from_components(
            comps, judges=judges, sessions=n_sessions, level="treatment",
            coefficient=coef, generalize_sessions=True,
        )  # fmt: skip
        out["generalizability" if coef == "agreement" else f"generalizability_{coef}"] = gen
    return out


def reliability_draws(
    fit: Fit,
    k_judges: int | None = None,
    *,
    routes: Sequence[str] = ROUTES,
    max_observed_draws: int | None = OBSERVED_DRAWS,
    n_new_judges: int = NEW_JUDGES,
    seed: int = 0,
) -> xr.Dataset:
    """Per-draw reliability coefficients and variance components, both routes.

    Parameters
    ----------
    fit : a fitted model.
    k_judges : the ``k`` of the mean-of-``k``-judges coefficients; default the
        design's judges per session (:func:`judges_per_session`).
    routes : ``"latent"`` and/or ``"observed"``.
    max_observed_draws : draws (evenly thinned within chains) used by the
        observed route; ``None`` for all. The other draws are NaN there.
    n_new_judges : new judges replicated per draw by the observed route.
    seed : seed of the observed route's replication.

    Returns
    -------
    xarray.Dataset with

    ``agreement``, ``consistency`` : dims ``(chain, draw, scale, level, judges, route)``
        interrater coefficients (absolute agreement, ICC(2)-type; consistency,
        ICC(3)-type) at ``level`` ``"session"`` and ``"treatment"`` (the
        subject's scale score averaged over its rated sessions), for one judge
        and the mean of ``k`` judges.
    ``generalizability``, ``generalizability_consistency`` : dims ``(chain,
        draw, scale, judges, route)``: the treatment-level score as a measure
        of the subject's alliance over the treatment (sessions and judges both
        generalized over, ``n`` = the design's sessions per subject).
    ``var_subject``, ``var_session``, ``var_judge``, ``var_subject_judge``,
    ``var_residual`` : dims ``(chain, draw, scale, route)``, the components.

    ``attrs``: ``k_judges``, ``sessions_per_subject``, ``observed_draws``
    (draws used by the observed route), ``n_new_judges``, ``seed`` and
    ``diagnostics`` (the fit's convergence banner).
    """
    bad = [r for r in routes if r not in ROUTES]
    if bad or not routes:
        raise ValueError(f"routes must be among {ROUTES}, got {list(routes)!r}")
    data, post = fit.data, fit.posterior
    k = judges_per_session(data) if k_judges is None else int(k_judges)
    if k < 1:
        raise ValueError(f"k_judges must be >= 1, got {k_judges}")
    n_ses = sessions_per_subject(data)
    judges = xr.DataArray(sorted({1, k}), dims="judges")
    judges = judges.assign_coords(judges=judges.values)
    latent = _posterior_latent_components(fit)
    ref = latent["var_subject"]
    per_route: list[dict[str, xr.DataArray]] = []
    n_obs_draws = 0
    for route in routes:
        if route == "latent":
            comps = latent
        else:
            n_c, n_d = post.sizes["chain"], post.sizes["draw"]
            ci, di = _thin(n_c, n_d, max_observed_draws)
            n_obs_draws = len(ci)
            obs = _posterior_observed_components(fit, ci, di, n_new_judges, seed)
            comps = {}
            for name, vals in obs.items():
                full = np.full((n_c, n_d, data.n_scales), np.nan)
                full[ci, di] = vals.reshape(len(ci), -1)
                comps[name] = xr.DataArray(full, dims=ref.dims, coords=ref.coords)
        coefs = _coefficients(comps, judges, n_ses)
        per_route.append({**coefs, **comps})
    ds = xr.concat([xr.Dataset(r) for r in per_route], dim=xr.DataArray(list(routes), dims="route"))
    ds = ds.assign_coords(route=list(routes))
    order = ("chain", "draw", "scale", "level", "judges", "route")
    for var in list(ds.data_vars):
        ds[var] = ds[var].transpose(*[d for d in order if d in ds[var].dims])
    ds.attrs = {
        "k_judges": k,
        "sessions_per_subject": n_ses,
        "observed_draws": n_obs_draws,
        "n_new_judges": n_new_judges if "observed" in routes else 0,
        "seed": seed,
        "diagnostics": fit.diagnostics.banner(),
    }
    return ds


# --------------------------------------------------------------------------- summaries


def _summarise(da: xr.DataArray, prob: float) -> pd.DataFrame:
    """Median, mean, HDI and draws used of a (chain, draw, ...) array; NaN draws skipped."""
    other = [d for d in da.dims if d not in SAMPLE_DIMS]
    stacked = da.stack(sample=SAMPLE_DIMS).transpose(*other, "sample")
    vals = np.asarray(stacked.values, dtype=float)
    ok = np.isfinite(vals)
    n = ok.sum(-1)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN cells
        med = np.nanmedian(vals, axis=-1)
        mean = np.nanmean(vals, axis=-1)
    h = np.full((*vals.shape[:-1], 2), np.nan)
    if vals.size:
        flat = vals.reshape(-1, vals.shape[-1])
        hflat = h.reshape(-1, 2)
        for i, row in enumerate(flat):
            r = row[np.isfinite(row)]
            if r.size >= 2:
                hflat[i] = array_stats.hdi(r, prob)
        h = hflat.reshape(h.shape)
    index = (
        pd.MultiIndex.from_product([stacked.coords[d].values for d in other], names=other)
        if other
        else pd.RangeIndex(1)
    )
    return pd.DataFrame(
        {
            "median": med.ravel(),
            "mean": mean.ravel(),
            "hdi_low": h[..., 0].ravel(),
            "hdi_high": h[..., 1].ravel(),
            "n_draws": n.ravel(),
        },
        index=index,
    )


def classical_reliability(data: RatingData) -> pd.DataFrame:
    """Shrout & Fleiss ICCs of the observed scale scores, per scale, session and treatment level.

    Session level: targets are sessions, each judge's scale score is the mean
    of the items of the scale it rated. Treatment level: targets are
    subjects, each judge's score is the mean of its session scale scores
    over the subject's sessions. A complete targets x judges table uses the
    two-way ANOVA (:func:`caltars_bayes.classical.icc_shrout_fleiss`); an
    incomplete one REML variance components of the crossed random-effects
    model (:func:`caltars_bayes.classical.icc_unbalanced`), never listwise
    deletion.

    Returns
    -------
    DataFrame with columns ``scale, level, type, model, unit, k, icc, F, df1,
    df2, p, ci_low, ci_high, method, n_targets, n_judges, n_obs`` (six rows
    per scale and level; empty when fewer than two judges rated a target).
    """
    parts = []
    for level, targets in (("session", ["subject", "session"]), ("treatment", ["subject"])):
        scores = data.scale_scores("session" if level == "session" else "subject", by_judge=True)
        for scale in data.scales:
            sub = scores[[*targets, "judge", scale]].dropna()
            try:
                icc = scale_score_icc(sub, targets, "judge", scale)
            except DataError:
                continue
            icc.insert(0, "level", level)
            icc.insert(0, "scale", scale)
            parts.append(icc)
    if not parts:
        return pd.DataFrame(
            columns=["scale", "level", "type", "model", "unit", "k", "icc", "F", "df1", "df2",
                     "p", "ci_low", "ci_high", "method", "n_targets", "n_judges", "n_obs"]
        )  # fmt: skip
    return pd.concat(parts, ignore_index=True)


def _classical_lookup(classical: pd.DataFrame, scale: str, level: str, case: str, k: int):
    """Classical coefficient of ``case`` (1, 2, 3) for ``k`` judges (Spearman-Brown from single)."""
    row = classical[
        (classical["scale"] == scale)
        & (classical["level"] == level)
        & (classical["type"] == f"ICC({case},1)")
    ]
    if row.empty:
        return np.nan
    return float(spearman_brown(float(row["icc"].iloc[0]), k))


def reliability(
    fit: Fit,
    k_judges: int | None = None,
    prob: float = 0.95,
    *,
    draws: xr.Dataset | None = None,
    max_observed_draws: int | None = OBSERVED_DRAWS,
    n_new_judges: int = NEW_JUDGES,
    seed: int = 0,
) -> pd.DataFrame:
    """Reliability coefficients as posteriors, with the classical ICC beside them.

    Parameters
    ----------
    fit : a fitted model.
    k_judges : ``k`` of the mean-of-``k``-judges rows; default the design's
        judges per session.
    prob : HDI probability.
    draws : a :func:`reliability_draws` result to summarise (else computed).
    max_observed_draws, n_new_judges, seed : see :func:`reliability_draws`.

    Returns
    -------
    DataFrame, one row per scale x level x judges x route x coefficient
    (interrater rows) plus the treatment-level generalizability rows, columns

    ``scale``; ``level`` (``"session"`` or ``"treatment"``); ``judges`` (1 or
    ``k``); ``sessions`` (sessions averaged: 1 at session level, the design's
    harmonic mean per subject at treatment level); ``route`` (``"latent"`` or
    ``"observed"``); ``coefficient`` (``"agreement"``: absolute agreement,
    ICC(2)-type; ``"consistency"``: ICC(3)-type); ``generalizes_over``
    (``"judges"``: interrater reliability of the rated sessions, the founding
    study's kind of number; ``"judges and sessions"``: the treatment-level
    score as a measure of the subject's alliance over the treatment);
    ``median``, ``mean``, ``hdi_low``, ``hdi_high`` (posterior);
    ``n_draws`` (draws summarised: the observed route uses a thinned subset);
    ``classical`` (Shrout & Fleiss ICC(2,·) for agreement, ICC(3,·) for
    consistency, of the observed scale scores; average-judge values are
    Spearman-Brown step-ups of the single-judge value, equal to S&F's
    ICC(·,k) when ``k`` is the number of judges; NaN for generalizability
    rows); ``classical_oneway`` (ICC(1,·), on agreement rows: it estimates
    the same population coefficient); ``classical_method`` (ANOVA or REML);
    ``converged``. ``attrs``: ``diagnostics``, ``observed_draws``,
    ``n_new_judges``.
    """
    from caltars_bayes.tables import _stamp

    ds = (
        draws
        if draws is not None
        else reliability_draws(
            fit,
            k_judges,
            max_observed_draws=max_observed_draws,
            n_new_judges=n_new_judges,
            seed=seed,
        )
    )
    n_ses = float(ds.attrs["sessions_per_subject"])
    classical = classical_reliability(fit.data)
    parts = []
    for coef in COEFFICIENTS:
        d = _summarise(ds[coef], prob).reset_index()
        d["coefficient"] = coef
        d["generalizes_over"] = GENERALIZES_JUDGES
        parts.append(d)
        gname = "generalizability" if coef == "agreement" else f"generalizability_{coef}"
        g = _summarise(ds[gname], prob).reset_index()
        g["level"] = "treatment"
        g["coefficient"] = coef
        g["generalizes_over"] = GENERALIZES_BOTH
        parts.append(g)
    out = pd.concat(parts, ignore_index=True)
    out["sessions"] = np.where(out["level"] == "session", 1.0, n_ses)
    cls, one, meth = [], [], []
    for row in out.itertuples():
        if row.generalizes_over != GENERALIZES_JUDGES:
            cls.append(np.nan)
            one.append(np.nan)
            meth.append("")
            continue
        case = "2" if row.coefficient == "agreement" else "3"
        cls.append(_classical_lookup(classical, row.scale, row.level, case, int(row.judges)))
        one.append(
            _classical_lookup(classical, row.scale, row.level, "1", int(row.judges))
            if row.coefficient == "agreement"
            else np.nan
        )
        m = classical.loc[
            (classical["scale"] == row.scale) & (classical["level"] == row.level), "method"
        ]
        meth.append(str(m.iloc[0]) if len(m) else "")
    out["classical"], out["classical_oneway"], out["classical_method"] = cls, one, meth
    out["judges"] = out["judges"].astype(int)
    scale_order = {s: i for i, s in enumerate(fit.data.scales)}
    out["_s"] = out["scale"].map(scale_order)
    out["_l"] = out["level"].map({"session": 0, "treatment": 1})
    out["_g"] = (out["generalizes_over"] != GENERALIZES_JUDGES).astype(int)
    out["_c"] = out["coefficient"].map({c: i for i, c in enumerate(COEFFICIENTS)})
    out["_r"] = out["route"].map({r: i for i, r in enumerate(ROUTES)})
    out = out.sort_values(["_s", "_l", "_g", "_c", "judges", "_r"], kind="stable")
    cols = [
        "scale", "level", "judges", "sessions", "route", "coefficient", "generalizes_over",
        "median", "mean", "hdi_low", "hdi_high", "n_draws", "classical", "classical_oneway",
        "classical_method",
    ]  # fmt: skip
    out = out[cols].reset_index(drop=True)
    out = _stamp(out, fit)
    out.attrs["observed_draws"] = int(ds.attrs.get("observed_draws", 0))
    out.attrs["n_new_judges"] = int(ds.attrs.get("n_new_judges", 0))
    out.attrs["prob"] = prob
    return out


# --------------------------------------------------------------------------- judges


def _judge_moments(
    eta: np.ndarray,
    loading: np.ndarray,
    cut: np.ndarray,
    disc: np.ndarray,
    sev: np.ndarray,
    item_scale: np.ndarray,
    offset: np.ndarray | None = None,
    general_term: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Expected scale score and its rating-noise variance, per judge, session, scale.

    eta (S, K), loading (I,), cut (I, C), disc (J,), sev (K, J); offset
    (J, S, K) added to the latent mean (interaction); general_term (S, I).
    Returns (J, S, K) arrays ``m`` and ``v``.
    """
    base = loading[None, :] * eta[:, item_scale]  # (S, I)
    if general_term is not None:
        base = base + general_term
    mu = disc[:, None, None] * base[None] - sev.T[:, None, item_scale]  # (J, S, I)
    if offset is not None:
        mu = mu + offset[:, :, item_scale]
    p_gt = 1.0 / (1.0 + np.exp(-(mu[..., None] - cut[None, None])))  # P(y > c)
    c = np.arange(cut.shape[-1])
    ey = p_gt.sum(-1)
    vy = (p_gt * (2 * c + 1)).sum(-1) - ey**2
    n_k = np.bincount(item_scale)
    avg = np.zeros((len(item_scale), len(n_k)))
    avg[np.arange(len(item_scale)), item_scale] = 1.0 / n_k[item_scale]
    m = np.einsum("jsi,ik->jsk", ey, avg)
    v = np.einsum("jsi,ik->jsk", vy, avg**2)
    return m, v


def judge_reliability(
    fit: Fit, prob: float = 0.95, *, max_draws: int | None = JUDGE_DRAWS, seed: int = 0
) -> pd.DataFrame:
    """Each judge's reliability per scale: correlation of its ratings with the true alliance.

    For each draw and judge, the correlation over the trial's sessions between
    that judge's scale score for a session (the mean of its item ratings,
    rating noise included; computed exactly from the model's category
    probabilities given the judge's discrimination and severity) and the
    session's true alliance ``eta``. Its square is the judge's single-rating
    reliability for the session alliance. Severity matters only through floor
    and ceiling effects, discrimination directly. With an interaction term,
    estimated interactions are used for rated judge x subject pairs and drawn
    from the population for the others.

    A judge is flagged when the ``prob`` HDI of its correlation minus the mean
    correlation of the *other* judges lies entirely below 0.

    Returns
    -------
    DataFrame with columns ``judge, scale, mean, sd, median, hdi_low,
    hdi_high`` (of the correlation), ``panel_mean`` (posterior mean of the
    other judges' mean correlation), ``difference`` (posterior median of the
    difference), ``prob_below_panel`` (posterior probability the judge's
    correlation is below the others'), ``flag``, ``n_draws``, ``converged``.
    """
    from caltars_bayes.tables import _stamp, session_alliance

    post, data = fit.posterior, fit.data
    n_c, n_d = post.sizes["chain"], post.sizes["draw"]
    ci, di = _thin(n_c, n_d, max_draws)
    eta = _take(session_alliance(fit), ci, di, ["session", "scale"])
    loading = _take(post["loading"], ci, di, ["item"])
    cut = _take(_cutpoints_by_item(post, data), ci, di, ["item", "cutpoint"])
    n_j = data.n_judges
    disc = (
        _take(post["discrimination"], ci, di, ["judge"])
        if "discrimination" in post
        else np.ones((len(ci), n_j))
    )
    sev = (
        _take(post["severity"], ci, di, ["scale", "judge"])
        if "severity" in post
        else np.zeros((len(ci), data.n_scales, n_j))
    )
    gen = gl = None
    if "general" in post and "general_loading" in post:
        gen = _take(post["general"], ci, di, ["subject"])
        gl = _take(post["general_loading"], ci, di, ["item"])
    inter = None
    rng = np.random.default_rng(seed)
    subj = np.asarray(data.session_subject_idx)
    if "interaction" in post:
        pairs = list(post["interaction"].coords["judge_subject"].values)
        vals = _take(post["interaction"], ci, di, ["judge_subject", "scale"])
        sd_int = _take(post["sd_interaction"], ci, di, [])
        pos: dict[tuple[int, int], int] = {}
        for n_pair, lab in enumerate(pairs):
            j_lab, p_lab = str(lab).split("|", 1)
            pos[(list(data.judges).index(j_lab), list(data.subjects).index(p_lab))] = n_pair
        inter = np.empty((len(ci), n_j, data.n_subjects, data.n_scales))
        for d in range(len(ci)):
            inter[d] = rng.normal(0.0, sd_int[d], inter.shape[1:])
            for (j_idx, p_idx), n_pair in pos.items():
                inter[d, j_idx, p_idx] = vals[d, n_pair]
    item_scale = np.asarray(data.item_scale_idx)
    corr = np.empty((len(ci), n_j, data.n_scales))
    for d in range(len(ci)):
        offset = inter[d][:, subj] if inter is not None else None
        gterm = (
            gl[d][None, :] * gen[d][subj][:, None] if gen is not None and gl is not None else None
        )
        m, v = _judge_moments(
            eta[d], loading[d], cut[d], disc[d], sev[d], item_scale, offset, gterm
        )
        e = eta[d] - eta[d].mean(0)
        mc = m - m.mean(1, keepdims=True)
        cov = (mc * e[None]).mean(1)
        var_x = (mc**2).mean(1) + v.mean(1)
        corr[d] = cov / np.sqrt(var_x * (e**2).mean(0)[None])
    if n_j >= 2:
        others = (corr.sum(1, keepdims=True) - corr) / (n_j - 1)
        diff = corr - others
    else:
        others = np.full_like(corr, np.nan)
        diff = np.full_like(corr, np.nan)
    rows = []
    for j_idx, judge in enumerate(data.judges):
        for k_idx, scale in enumerate(data.scales):
            r = corr[:, j_idx, k_idx]
            dj = diff[:, j_idx, k_idx]
            lo, hi = array_stats.hdi(r, prob)
            if n_j >= 2:
                _, dhi = array_stats.hdi(dj, prob)
                flag = bool(dhi < 0)
                pbelow = float(np.mean(dj < 0))
            else:
                flag, pbelow = False, np.nan
            rows.append(
                {
                    "judge": judge,
                    "scale": scale,
                    "mean": float(r.mean()),
                    "sd": float(r.std(ddof=1)) if len(r) > 1 else np.nan,
                    "median": float(np.median(r)),
                    "hdi_low": float(lo),
                    "hdi_high": float(hi),
                    "panel_mean": float(np.mean(others[:, j_idx, k_idx])),
                    "difference": float(np.median(dj)),
                    "prob_below_panel": pbelow,
                    "flag": flag,
                    "n_draws": len(ci),
                }
            )
    return _stamp(pd.DataFrame(rows), fit)


def judges_table(fit: Fit, prob: float = 0.95) -> pd.DataFrame:
    """The judges table (``judges.csv``): severity, discrimination and reliability.

    :func:`caltars_bayes.tables.judges` (severity per scale, discrimination)
    plus one ``parameter = "correlation"`` row per judge and scale from
    :func:`judge_reliability`.

    Returns
    -------
    DataFrame with columns ``judge, parameter, scale, mean, sd, median,
    hdi_low, hdi_high, n_ratings, prob_below_panel, flag, converged``
    (``prob_below_panel`` and ``flag`` are set on correlation rows only).
    """
    from caltars_bayes.tables import _stamp, judges

    base = judges(fit)
    rel = judge_reliability(fit, prob)
    n_by_judge = base.drop_duplicates("judge").set_index("judge")["n_ratings"]
    corr = rel[["judge", "scale", "mean", "sd", "median", "hdi_low", "hdi_high"]].copy()
    corr.insert(1, "parameter", "correlation")
    corr["n_ratings"] = corr["judge"].map(n_by_judge).astype("Int64")
    corr["prob_below_panel"] = rel["prob_below_panel"].to_numpy()
    corr["flag"] = rel["flag"].to_numpy()
    base = base.drop(columns="converged")
    base["prob_below_panel"] = np.nan
    base["flag"] = pd.array([pd.NA] * len(base), dtype="boolean")
    corr["flag"] = corr["flag"].astype("boolean")
    out = pd.concat([base, corr], ignore_index=True)
    out = out.sort_values(["judge", "parameter", "scale"], kind="stable").reset_index(drop=True)
    return _stamp(out, fit)


# --------------------------------------------------------------------------- truth


def true_reliability(
    truth: xr.Dataset,
    instrument: Instrument,
    k_judges: int | None = None,
    *,
    routes: Sequence[str] = ROUTES,
    sd_interaction: float | None = None,
    n_new_judges: int = 200,
    n_replicates: int = 8,
    min_subjects: int = 200,
    seed: int = 0,
) -> pd.DataFrame:
    """The true coefficients of a simulated trial (``simulate_trial(...).truth``).

    The latent route applies :func:`latent_components` and
    :func:`coefficient_from_components` to the true population SDs
    (``sd_alliance``, ``sd_session``, ``sd_severity``,
    ``sd_log_discrimination``; ``sd_interaction`` from the argument, else the
    SD of the true interactions) and the true loadings: the same formula the
    posterior uses. The observed route is brute force with the posterior's
    simulator (:func:`simulate_observed_components`) at the true parameters:
    ``n_replicates`` new trials of the design (at least ``min_subjects``
    subjects each, new subjects, sessions and ``n_new_judges`` judges from the
    true populations, rated with the true loadings and cutpoints); their
    components are averaged.

    Parameters
    ----------
    truth : the trial's truth Dataset.
    instrument : the instrument simulated.
    k_judges : ``k`` of the mean-of-``k`` rows; default the truth's ``n_judges``
        attribute (the design's judges per session for a complete crossing).

    Returns
    -------
    DataFrame with columns ``scale, level, judges, sessions, route,
    coefficient, generalizes_over, value``, rows matching :func:`reliability`.
    """
    codes = list(truth["scale"].values)
    items = list(truth["item"].values)
    item_scale = np.array([codes.index(instrument.item_scale[i]) for i in items])
    subjects = list(truth["subject"].values)
    ses_subj = np.array([subjects.index(s) for s in truth["session_subject"].values])
    n_p = np.bincount(ses_subj, minlength=len(subjects))
    n_ses = _harmonic_mean(n_p[n_p > 0])
    k = int(truth.attrs.get("n_judges", 1)) if k_judges is None else int(k_judges)
    judges = xr.DataArray(sorted({1, k}), dims="judges")
    judges = judges.assign_coords(judges=judges.values)
    if sd_interaction is None:
        sd_interaction = float(truth["interaction"].std()) if "interaction" in truth else 0.0
    avg = np.zeros((len(items), len(codes)))
    avg[np.arange(len(items)), item_scale] = 1.0 / np.bincount(item_scale)[item_scale]
    scale = xr.DataArray(codes, dims="scale")
    mean_loading = xr.DataArray(
        truth["loading"].values @ avg, dims="scale", coords={"scale": scale}
    )
    n_items = xr.DataArray(np.bincount(item_scale).astype(float), dims="scale")
    n_items = n_items.assign_coords(scale=codes)
    sd_sev = float(truth["sd_severity"]) if int(truth.attrs.get("n_judges", 2)) > 1 else 0.0
    sd_ld = (
        float(truth["sd_log_discrimination"]) if int(truth.attrs.get("n_judges", 2)) > 1 else 0.0
    )
    rows = []
    for route in routes:
        if route == "latent":
            comps = latent_components(
                truth["sd_alliance"].assign_coords(scale=codes),
                truth["sd_session"].assign_coords(scale=codes),
                mean_loading,
                n_items,
                sd_severity=sd_sev,
                sd_log_discrimination=sd_ld,
                sd_interaction=sd_interaction,
            )
        elif route == "observed":
            design = _Design(ses_subj, len(subjects), item_scale, len(codes))
            one = lambda a: np.repeat(np.asarray(a, float)[None], n_replicates, 0)  # noqa: E731
            obs = simulate_observed_components(
                design,
                one(truth["sd_alliance"].values),
                one(truth["sd_session"].values),
                one(truth["loading"].values),
                one(truth["cutpoints"].transpose("item", "cutpoint").values),
                np.full(n_replicates, sd_sev),
                np.full(n_replicates, sd_ld),
                np.full(n_replicates, float(sd_interaction)),
                n_new_judges,
                np.random.default_rng(seed),
                min_subjects=min_subjects,
            )
            comps = {
                n: xr.DataArray(v.mean(0), dims="scale", coords={"scale": codes})
                for n, v in obs.items()
            }
        else:
            raise ValueError(f"unknown route {route!r}")
        coefs = _coefficients(comps, judges, n_ses)
        for coef in COEFFICIENTS:
            s = coefs[coef].to_dataframe(name="value").reset_index()
            s["coefficient"], s["generalizes_over"], s["route"] = coef, GENERALIZES_JUDGES, route
            rows.append(s)
            gname = "generalizability" if coef == "agreement" else f"generalizability_{coef}"
            g = coefs[gname].to_dataframe(name="value").reset_index()
            g["level"] = "treatment"
            g["coefficient"], g["generalizes_over"], g["route"] = coef, GENERALIZES_BOTH, route
            rows.append(g)
    out = pd.concat(rows, ignore_index=True)
    out["sessions"] = np.where(out["level"] == "session", 1.0, n_ses)
    out["judges"] = out["judges"].astype(int)
    cols = ["scale", "level", "judges", "sessions", "route", "coefficient", "generalizes_over",
            "value"]  # fmt: skip
    return out[cols]


# --------------------------------------------------------------------------- decision study


@dataclass
class DStudy:
    """A decision study: projected reliability over numbers of judges and sessions.

    Attributes
    ----------
    table : DataFrame, one row per scale x judges x sessions (x items), columns
        ``scale, judges, sessions, [items,] ratings`` (judges x sessions
        [x items] per subject), ``median``, ``low``, ``high`` (the ``band``
        equal-tailed interval), ``p_reach`` (posterior probability the
        coefficient reaches ``target``), ``smallest`` (the scale's smallest
        design reaching it with probability >= ``prob``), ``converged``.
    smallest : DataFrame, one row per scale: ``scale, judges, sessions,
        [items,] ratings, median, p_reach, reached`` (NaN and ``reached`` False
        when no design in the grid reaches the target).
    draws : the per-draw coefficients, dims ``(chain, draw, scale, judges,
        sessions[, items])``.
    """

    table: pd.DataFrame
    smallest: pd.DataFrame
    draws: xr.DataArray
    target: float
    prob: float
    level: str
    coefficient: str
    route: str
    band: float
    diagnostics: str
    notes: list[str] = field(default_factory=list)

    def plot(self) -> Figure:
        """Reliability curves with bands: one panel per scale.

        Treatment level: x = sessions, one curve per number of judges.
        Session level: x = judges. Dashed line: the target; star: the smallest
        design reaching it with probability >= ``prob``.
        """
        import matplotlib.pyplot as plt

        t = self.table
        if "items" in t.columns:  # plot the instrument's own item count
            t = t[t["items"] == t["items"].max()]
        scales = list(dict.fromkeys(t["scale"]))
        ncol = min(3, len(scales))
        nrow = int(np.ceil(len(scales) / ncol))
        fig, axes = plt.subplots(
            nrow, ncol, figsize=(4.2 * ncol, 3.4 * nrow), squeeze=False, sharey=True
        )
        judges = sorted(t["judges"].unique())
        cmap = plt.get_cmap("viridis")
        for ax, scale in zip(axes.ravel(), scales, strict=False):
            s = t[t["scale"] == scale]
            if self.level == "treatment" and s["sessions"].nunique() > 1:
                for n, j in enumerate(judges):
                    c = cmap(n / max(1, len(judges) - 1))
                    sj = s[s["judges"] == j].sort_values("sessions")
                    ax.plot(sj["sessions"], sj["median"], color=c, label=f"{j} judge(s)")
                    ax.fill_between(sj["sessions"], sj["low"], sj["high"], color=c, alpha=0.12)
                ax.set_xlabel("sessions per subject")
                xcol = "sessions"
            else:
                s1 = s.sort_values("judges")
                ax.plot(s1["judges"], s1["median"], color=cmap(0.3), label="median")
                ax.fill_between(s1["judges"], s1["low"], s1["high"], color=cmap(0.3), alpha=0.2)
                ax.set_xlabel("judges")
                xcol = "judges"
            ax.axhline(self.target, color="k", ls="--", lw=0.8)
            best = self.smallest[self.smallest["scale"] == scale]
            if len(best) and bool(best["reached"].iloc[0]):
                ax.plot(best[xcol].iloc[0], best["median"].iloc[0], "*", color="crimson", ms=12)
                ax.annotate(
                    f"{int(best['judges'].iloc[0])} j x {int(best['sessions'].iloc[0])} s",
                    (best[xcol].iloc[0], best["median"].iloc[0]),
                    textcoords="offset points", xytext=(6, -12), fontsize=8, color="crimson",
                )  # fmt: skip
            ax.set_title(scale)
            ax.set_ylim(0, 1)
            ax.grid(alpha=0.3)
        for ax in axes.ravel()[len(scales) :]:
            ax.set_visible(False)
        axes[0, 0].set_ylabel(f"{self.coefficient} ({self.route})")
        if self.level == "treatment" and len(judges) > 1:
            axes[0, -1 if len(scales) >= ncol else 0].legend(fontsize=7, loc="lower right")
        fig.suptitle(
            f"Decision study, {self.level} level: median and {self.band:.0%} band; "
            f"target {self.target:g} with P >= {self.prob:g}\n{self.diagnostics}",
            fontsize=9,
        )
        fig.tight_layout()
        return fig

    def save(self, out_dir: str | Path, force: bool = False) -> list[Path]:
        """Write ``dstudy.csv``, ``dstudy.png`` and ``dstudy.svg`` atomically into ``out_dir``."""
        import matplotlib.pyplot as plt

        from caltars_bayes.io import atomic_write_dir

        fig = self.plot()
        try:
            files = {
                "dstudy.csv": lambda p: self.table.to_csv(p, index=False),
                "dstudy.png": lambda p: fig.savefig(p, format="png", dpi=150),
                "dstudy.svg": lambda p: fig.savefig(p, format="svg"),
            }
            return atomic_write_dir(Path(out_dir), files, force=force)
        finally:
            plt.close(fig)


def parse_counts(text: str, what: str) -> list[int]:
    """Parse ``"1-8"``, ``"1,2,4"`` or ``"1-3,6"`` into sorted whole numbers >= 1.

    Raises :class:`~caltars_bayes.errors.CaltarsError` (one line naming
    ``what``) on anything else.
    """
    out: set[int] = set()
    for part in str(text).split(","):
        part = part.strip()
        lo, sep, hi = part.partition("-")
        try:
            a = int(lo)
            b = int(hi) if sep else a
        except ValueError:
            raise CaltarsError(
                f"{what} {text!r}: use a range or list of whole numbers, e.g. 1-8 or 1,2,4"
            ) from None
        if a < 1 or b < a:
            raise CaltarsError(f"{what} {text!r}: numbers must be >= 1 and ranges ascending")
        out.update(range(a, b + 1))
    return sorted(out)


def _as_counts(values: Iterable[int] | int, what: str) -> list[int]:
    vals = [values] if isinstance(values, int | np.integer) else list(values)
    try:
        out = sorted({int(v) for v in vals})
    except (TypeError, ValueError):
        raise CaltarsError(f"{what}: expected whole numbers, got {vals!r}") from None
    if not out or out[0] < 1 or any(float(v) != int(v) for v in vals):
        raise CaltarsError(f"{what}: expected whole numbers >= 1, got {vals!r}")
    return out


def dstudy(
    fit: Fit,
    judges: Iterable[int] = range(1, 9),
    sessions: Iterable[int] = range(1, 13),
    target: float = 0.8,
    prob: float = 0.9,
    level: str = "treatment",
    *,
    coefficient: str = "agreement",
    route: str = "latent",
    items: Iterable[int] | None = None,
    band: float = 0.9,
    max_observed_draws: int | None = OBSERVED_DRAWS,
    n_new_judges: int = NEW_JUDGES,
    seed: int = 0,
) -> DStudy:
    """Project reliability for other numbers of judges and sessions (a decision study).

    For every posterior draw the variance components (latent or observed
    route) are put through :func:`coefficient_from_components`:

    - ``level="treatment"``: the generalizability coefficient of a subject's
      treatment-level score (mean over ``sessions`` sessions, each rated by
      the same ``judges`` judges) for the subject's alliance over the
      treatment, sessions and judges both random;
    - ``level="session"``: the session score (mean of ``judges`` judges) for
      the session's alliance; ``sessions`` is not a facet and is set to 1.

    ``items`` (latent route only) also varies the number of items per scale
    (the logistic residual is averaged over them).

    The smallest design reaching ``target`` with posterior probability >=
    ``prob`` is the one with the fewest ratings per subject (judges x
    sessions, x items when given), ties broken by fewer judges, then fewer
    sessions.

    Parameters
    ----------
    fit : a fitted model.
    judges, sessions : numbers to project (whole numbers >= 1).
    target : reliability to reach; prob : required posterior probability.
    level, coefficient : as in :func:`coefficient_from_components`.
    route : ``"latent"`` (every draw; default) or ``"observed"`` (observed
        scale scores by posterior prediction, thinned draws).
    band : probability of the equal-tailed band reported (``low``, ``high``).

    Returns
    -------
    DStudy
    """
    if level not in LEVELS:
        raise CaltarsError(f"level must be one of {', '.join(LEVELS)}, got {level!r}")
    if coefficient not in COEFFICIENTS:
        raise CaltarsError(f"coefficient must be one of {', '.join(COEFFICIENTS)}")
    if route not in ROUTES:
        raise CaltarsError(f"route must be one of {', '.join(ROUTES)}, got {route!r}")
    for name, v in (("target", target), ("prob", prob), ("band", band)):
        if not 0.0 < float(v) < 1.0:
            raise CaltarsError(f"{name} must lie strictly between 0 and 1, got {v}")
    j_list = _as_counts(judges, "judges")
    s_list = _as_counts(sessions, "sessions") if level == "treatment" else [1]
    notes: list[str] = []
    if level == "session":
        notes.append("session level: sessions are not a facet (set to 1)")
    jd = xr.DataArray(j_list, dims="judges", coords={"judges": j_list})
    sd = xr.DataArray(s_list, dims="sessions", coords={"sessions": s_list})
    if route == "latent":
        n_items = None
        if items is not None:
            i_list = _as_counts(items, "items")
            n_items = xr.DataArray(i_list, dims="items", coords={"items": i_list}).astype(float)
        comps = _posterior_latent_components(fit, n_items)
        n_used = int(fit.posterior.sizes["chain"] * fit.posterior.sizes["draw"])
    else:
        if items is not None:
            raise CaltarsError("item counts can be projected on the latent route only")
        ds = reliability_draws(
            fit, routes=("observed",), max_observed_draws=max_observed_draws,
            n_new_judges=n_new_judges, seed=seed,
        )  # fmt: skip
        comps = {c: ds[c].sel(route="observed", drop=True) for c in COMPONENTS}
        n_used = int(ds.attrs["observed_draws"])
        notes.append(f"observed route: {n_used} thinned draws, {n_new_judges} new judges each")
    rel = coefficient_from_components(
        comps,
        judges=jd,
        sessions=sd,
        level=level,
        coefficient=coefficient,
        generalize_sessions=level == "treatment",
    )
    if "sessions" not in rel.dims:  # session level: not a facet
        rel = rel.expand_dims(sessions=s_list)
    grid = [d for d in ("scale", "judges", "sessions", "items") if d in rel.dims]
    rel = rel.transpose("chain", "draw", *grid)
    vals = rel.stack(sample=SAMPLE_DIMS).transpose(*grid, "sample").values
    ok = np.isfinite(vals)
    lo_q, hi_q = (1 - band) / 2, 1 - (1 - band) / 2
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN cells
        med = np.nanmedian(vals, -1)
        low = np.nanquantile(vals, lo_q, axis=-1)
        high = np.nanquantile(vals, hi_q, axis=-1)
    p_reach = np.where(ok, vals >= target, False).sum(-1) / np.maximum(ok.sum(-1), 1)
    index = pd.MultiIndex.from_product([rel.coords[d].values for d in grid], names=grid)
    table = pd.DataFrame(
        {"median": med.ravel(), "low": low.ravel(), "high": high.ravel(),
         "p_reach": p_reach.ravel()},
        index=index,
    ).reset_index()  # fmt: skip
    if "items" not in table.columns:
        ratings = table["judges"] * table["sessions"]
    else:
        ratings = table["judges"] * table["sessions"] * table["items"]
    table.insert(len(grid), "ratings", ratings.astype(int))
    table["smallest"] = False
    best_rows = []
    sort_cols = ["ratings", "judges", "sessions"] + (["items"] if "items" in table else [])
    for scale in rel.coords["scale"].values:
        s = table[(table["scale"] == scale) & (table["p_reach"] >= prob)]
        if len(s):
            i = s.sort_values(sort_cols, kind="stable").index[0]
            table.loc[i, "smallest"] = True
            row = table.loc[i]
            best = {c: row[c] for c in grid if c != "scale"}
            best.update(ratings=row["ratings"], median=row["median"], p_reach=row["p_reach"])
            best_rows.append({"scale": scale, **best, "reached": True})
        else:
            best_rows.append(
                {"scale": scale, **{c: np.nan for c in grid if c != "scale"},
                 "ratings": np.nan, "median": np.nan, "p_reach": np.nan, "reached": False}
            )  # fmt: skip
    table["route"], table["coefficient"], table["level"] = route, coefficient, level
    table["converged"] = fit.diagnostics.converged
    table.attrs["diagnostics"] = fit.diagnostics.banner()
    table.attrs["n_draws"] = n_used
    smallest = pd.DataFrame(best_rows)
    for c in [*(g for g in grid if g != "scale"), "ratings"]:
        smallest[c] = smallest[c].astype("Int64")
    smallest["converged"] = fit.diagnostics.converged
    smallest.attrs["diagnostics"] = fit.diagnostics.banner()
    return DStudy(
        table=table,
        smallest=smallest,
        draws=rel,
        target=float(target),
        prob=float(prob),
        level=level,
        coefficient=coefficient,
        route=route,
        band=float(band),
        diagnostics=fit.diagnostics.banner(),
        notes=notes,
    )
