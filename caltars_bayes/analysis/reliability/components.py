"""Variance components of a scale score, by the latent and the observed route.

Every reliability coefficient is a ratio of variance components of a *scale
score* (the mean of a judge's item scores over the items of one scale) in a
design where subjects ``p`` have sessions ``s`` rated by judges ``j``::

    X[p, s, j] = mean + subject[p] + session[s] + judge[j] + subject_judge[p, j]
                 + residual[s, j]

with variances ``var_subject``, ``var_session``, ``var_judge``,
``var_subject_judge`` and ``var_residual`` (:data:`COMPONENTS`).

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

The ``_posterior_*`` helpers read the components' inputs from a fit's
posterior (all draws, or a thinned subset for the observed route).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import xarray as xr
from scipy.special import ndtri

if TYPE_CHECKING:
    from caltars_bayes.data.ratings import RatingData
    from caltars_bayes.inference.fit import Fit

#: Variance of the standard logistic distribution: the latent residual of one rating.
LOGISTIC_VAR = float(np.pi**2 / 3)
#: Names of the variance components, in the order of the design equation.
COMPONENTS = ("var_subject", "var_session", "var_judge", "var_subject_judge", "var_residual")
ROUTES = ("latent", "observed")
#: Draws used by the observed (posterior-predictive) route by default.
OBSERVED_DRAWS = 200
#: New judges drawn per posterior draw by the observed route.
NEW_JUDGES = 24
#: Fewest subjects in each replicated trial of the observed route.
MIN_NEW_SUBJECTS = 50


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

    The subject table is built by :func:`subject_means` and only when some
    subject has more than one session (with one session each it is not used).

    Returns
    -------
    dict with the five :data:`COMPONENTS`, each of shape ``(...)``.
    """
    x = np.asarray(session_scores, dtype=float)
    subj = np.asarray(session_subject, dtype=np.int64)
    n_p = np.bincount(subj)
    t_s, j_s, e_s = anova_components(x)
    n_h = _harmonic_mean(n_p)
    if n_h > 1 + 1e-9:
        t_t, _, e_t = anova_components(subject_means(x, subj, n_p))
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


def subject_means(x: np.ndarray, subj: np.ndarray, n_p: np.ndarray) -> np.ndarray:
    """Each subject's mean over its sessions of a ``(..., sessions, judges)`` table.

    Sessions are sorted by subject and summed in contiguous runs
    (``np.add.reduceat``), O(sessions); a subject without sessions gets a row
    of zeros. Measured (benchmarks/real_size.py, survey shape: 2,800 subjects
    x 1 session, 200 draws x 5 scales x 24 new judges) the dense (subjects x
    sessions) averaging matrix it replaces took 125 s of a 188 s fit
    directory, in an ``einsum`` over 2,800 x 2,800 x 24,000 products.

    Parameters
    ----------
    x : (..., S, J) table; subj : (S,) subject index of each session;
    n_p : (P,) sessions per subject (``np.bincount(subj)``).

    Returns
    -------
    (..., P, J) array of subject means.
    """
    order = np.argsort(subj, kind="stable")
    if not np.array_equal(order, np.arange(len(subj))):
        x = np.take(x, order, axis=-2)
    present = np.flatnonzero(n_p)
    starts = np.concatenate([[0], np.cumsum(n_p[present])[:-1]])
    out = np.zeros((*x.shape[:-2], len(n_p), x.shape[-1]))
    out[..., present, :] = np.add.reduceat(x, starts, axis=-2) / n_p[present][:, None]
    return out


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
    y = np.empty((n_judges, n_s, n_i), dtype=np.int8)
    for d in range(n_d):
        base = loading[d][None, :] * eta[d][:, k_of]  # (S, I)
        if general is not None and general_loading is not None:
            base = base + general_loading[d][None, :] * general[d][design.session_subject][:, None]
        alpha = np.exp(sd_log_discrimination[d] * _stratified_normal(rng, (n_judges,)))
        sev = sd_severity[d] * _stratified_normal(rng, (n_judges, design.n_scales))
        g = None
        if sd_interaction[d] > 0:
            g = rng.normal(0.0, sd_interaction[d], (n_judges, design.n_subjects, design.n_scales))
        ystar = _logistic(rng, (n_judges, n_s, n_i))  # then + mu, in place
        ystar += alpha[:, None, None] * base[None]
        ystar -= sev[:, None, k_of]
        if g is not None:
            ystar += g[:, design.session_subject][:, :, k_of]
        _categories(ystar, cutpoints[d], y)
        out[d] = (y.reshape(-1, n_i) @ avg).reshape(n_judges, n_s, -1).transpose(2, 1, 0)
    return out


def _logistic(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Standard logistic draws ``log(u / (1 - u))`` from ``rng.random``.

    The same uniform draws as ``rng.logistic`` takes (so the same values, up to
    the last bit of the logarithm), with numpy's vectorised logarithm instead
    of one call per draw: 19 ms instead of 29 ms for the 1.7 million draws of
    one survey-shape replicate (benchmarks/real_size.py).
    """
    u = rng.random(shape)
    u[u == 0.0] = 0.5  # probability 2^-53; rng.logistic would draw again
    np.divide(u, 1.0 - u, out=u)
    return np.log(u, out=u)


def _categories(ystar: np.ndarray, cut: np.ndarray, out: np.ndarray) -> np.ndarray:
    """0-based categories of latent responses ``(..., I)`` at cutpoints ``(I, C)`` into ``out``.

    The count of cutpoints below each response, one pass per cutpoint into a
    small-integer ``out``. Measured (survey shape: 24 judges x 2,800 sessions x
    25 items x 5 cutpoints per draw, on a loaded 2-core machine) 12 ms instead
    of 86 ms for comparing against all cutpoints at once and summing the last
    axis; with :func:`_logistic` and the scale means as one matrix product,
    200 replicates took 26 s instead of 34 s.
    """
    out[...] = 0
    for c in range(cut.shape[-1]):
        np.add(out, ystar > cut[:, c], out=out, casting="unsafe")
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
