"""Comparing fitted models (alternative factor structures) by cross-validated prediction.

The expected log predictive density (elpd) of each model is estimated by
Pareto-smoothed importance sampling leave-one-out cross-validation (PSIS-LOO,
ArviZ 1.x ``arviz_stats``), either

``by="session"`` (default)
    leaving out one whole session at a time: the units a new trial adds are
    sessions, each rated on every item by the panel. A held-out session's own
    deviations ``zeta[s, :]`` are integrated out of its likelihood
    (:func:`caltars_bayes.predict.session_marginal_loglik`); importance
    sampling with them fixed at draws that saw the session fails.
``by="rating"``
    leaving out one rating at a time (conditional on every latent value).

Models are then ranked by elpd; ``elpd_diff`` is the difference from the best
model with its standard error ``dse`` (from the pointwise differences), and
``weight`` are stacking weights (Yao et al. 2018).

Pareto k and the fallbacks
--------------------------
Each left-out unit has a Pareto k diagnostic; above :data:`K_THRESHOLD` (0.7)
its importance-sampling estimate is unreliable. When any model has such
units, :func:`compare_fits` warns (:class:`~caltars_bayes.errors.CaltarsWarning`)
and, by default (``fallback="moment_match"``), first improves them by
importance-weighted moment matching (:func:`loo_moment_match_fit`; Paananen
et al. 2021): the posterior draws, on the model's unconstrained space
(:mod:`caltars_bayes.unconstrained`), are moved by affine maps towards the
leave-one-out posterior and reweighted with the model's joint density, so no
refit is needed. For ``by="session"`` the held-out likelihood is the integrated
session likelihood, as in PSIS-LOO. If some unit still has k > 0.7 afterwards
(or the fit's model cannot be rebuilt, e.g. borrowed priors), it warns again
and re-estimates *every* model's elpd by K-fold cross-validation
(:func:`kfold_fit`; ``fallback="kfold"`` does so at once), so that all models
are compared with the same estimator. K-fold refits each model K times (K x
the fitting time). Folds are formed within subjects: each subject's sessions
are spread over the folds, so every subject keeps at least one session in
every training set and the held-out sessions are predicted exactly as in
leave-one-session-out (new session deviations integrated out, everything else
from the training posterior). K-fold therefore estimates the same quantity as
the session PSIS-LOO (with slightly less training data). Leaving out whole
*subjects* instead would need, for every draw, an integral over the new
subject's correlated factors; it is not offered.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import xarray as xr
from arviz_stats import compare as az_compare
from arviz_stats import ess
from arviz_stats.utils import ELPDData, ELPDDataLOO, ELPDDataLOOKFold
from scipy.special import logsumexp

from caltars_bayes.errors import CaltarsError, CaltarsWarning
from caltars_bayes.predict import (
    CHUNK_ELEMENTS,
    SAMPLE_DIMS,
    PosteriorDraws,
    grouped_loglik,
    posterior_draws,
    rating_loglik,
    session_marginal_loglik,
)
from caltars_bayes.unconstrained import PARAM_DIM, UnconstrainedModel

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from caltars_bayes.data import RatingData
    from caltars_bayes.fit import Fit

#: Pareto k above which a unit's PSIS estimate is unreliable.
K_THRESHOLD = 0.7
#: What :func:`compare_fits` does when some Pareto k is high.
FALLBACKS = ("moment_match", "kfold", "none")
#: Columns of :func:`compare_fits`.
COMPARE_COLUMNS = [
    "name", "elpd", "se", "elpd_diff", "dse", "weight", "p_loo", "pareto_k_max", "n_high_k",
    "n_units", "by", "method", "converged",
]  # fmt: skip


# --------------------------------------------------------------------------- PSIS-LOO


def relative_eff(fit: Fit) -> float:
    """Relative MCMC efficiency for PSIS: mean ESS (mean) over all posterior values / draws.

    The same quantity ``arviz_stats.loo`` computes by default.
    """
    post = fit.posterior
    n = post.sizes["chain"] * post.sizes["draw"]
    if post.sizes["chain"] == 1:
        return 1.0
    e = ess(post, sample_dims=list(SAMPLE_DIMS), method="mean")
    vals = np.concatenate([np.ravel(e[v].values) for v in e.data_vars])
    return float(np.nanmean(vals) / n)


def _unit_loglik(
    fit: Fit,
    by: str,
    marginal: bool,
    obs: np.ndarray | None = None,
    draws: PosteriorDraws | None = None,
) -> np.ndarray:
    """Log likelihood of the units (draws, units); ``obs`` restricts by='rating'."""
    d = draws if draws is not None else posterior_draws(fit.posterior, fit.data)
    data = fit.data
    if by == "rating":
        return rating_loglik(d, data, slice(None) if obs is None else obs)
    if by == "session":
        if marginal:
            return session_marginal_loglik(d, data)
        return grouped_loglik(d, data, np.asarray(data.session_idx), data.n_sessions)
    if by == "subject":
        return grouped_loglik(d, data, np.asarray(data.subject_idx), data.n_subjects)
    raise ValueError(f"by must be 'session', 'rating' or 'subject', got {by!r}")


def _units(data: RatingData, by: str) -> tuple[str, list[Any]]:
    if by == "rating":
        return "obs", list(range(data.n_ratings))
    if by == "session":
        return "session", list(data.session_labels)
    return "subject", list(data.subjects)


def loo_fit(fit: Fit, by: str = "session", *, marginal: bool | None = None) -> ELPDDataLOO:
    """PSIS-LOO of a fit, leaving out one session (default), rating or subject at a time.

    Parameters
    ----------
    fit : a fitted model.
    by : ``"session"``, ``"rating"`` or ``"subject"`` (subjects: conditional
        likelihood, Pareto k is usually high; for diagnosis only).
    marginal : integrate each held-out session's deviations out (default True
        for ``by="session"``; see :mod:`caltars_bayes.predict`).

    Returns
    -------
    arviz_stats ``ELPDDataLOO`` with ``elpd``, ``se``, ``p`` (effective number of
    parameters), ``elpd_i`` and ``pareto_k`` (DataArrays over the units),
    ``good_k`` and ``warning`` (True when some unit has k > ``good_k``). Per-rating
    values are computed in chunks of ratings (PSIS is per unit), so the full
    draws x ratings matrix is never held.
    """
    if marginal is None:
        marginal = by == "session"
    if marginal and by != "session":
        raise ValueError("marginal=True needs by='session'")
    post, data = fit.posterior, fit.data
    n_chain, n_draw = post.sizes["chain"], post.sizes["draw"]
    n_samples = n_chain * n_draw
    reff = relative_eff(fit)
    dim, labels = _units(data, by)
    blocks: list[np.ndarray | None] = [None]
    if by == "rating":
        step = max(1, CHUNK_ELEMENTS // n_samples)
        blocks = [np.arange(a, min(a + step, data.n_ratings)) for a in range(0, len(labels), step)]
    parts = []
    d = posterior_draws(post, data)
    for obs in blocks:
        ll = _unit_loglik(fit, by, marginal, obs, d)
        lab = labels if obs is None else obs
        da = xr.DataArray(
            ll.reshape(n_chain, n_draw, -1),
            dims=("chain", "draw", dim),
            coords={"chain": post["chain"].values, "draw": post["draw"].values, dim: lab},
        )
        parts.append(da.azstats.loo(sample_dims=list(SAMPLE_DIMS), r_eff=reff))
    elpd_i = xr.concat([p[0] for p in parts], dim=dim)
    pareto_k = xr.concat([p[1] for p in parts], dim=dim)
    p_loo_i = xr.concat([p[2] for p in parts], dim=dim)
    elpd, se, p_loo, _ = elpd_i.azstats.loo_summary(p_loo_i)
    good_k = min(1 - 1 / np.log10(n_samples), K_THRESHOLD) if n_samples > 1 else K_THRESHOLD
    return ELPDDataLOO(
        elpd=float(elpd),
        se=float(se),
        p=float(p_loo),
        n_samples=n_samples,
        n_data_points=len(labels),
        scale="log",
        warning=bool(np.any(pareto_k.values > good_k)),
        good_k=float(good_k),
        elpd_i=elpd_i,
        pareto_k=pareto_k,
        approx_posterior=False,
        p_loo_i=p_loo_i,
    )


# --------------------------------------------------------------------------- moment matching


def _unit_loglik_at(
    um: UnconstrainedModel, data: RatingData, by: str, unit: int, upars: xr.DataArray
) -> np.ndarray:
    """Log likelihood of one unit (a session, integrated; or a rating) at unconstrained draws."""
    post = um.posterior(upars)
    time_mean = float(np.asarray(data.sessions["session_time"], dtype=float).mean())
    if by == "session":
        keep = np.asarray(data.session_idx) == unit
        rows = _Rows(data, keep, session=unit)
        d = posterior_draws(post, rows, time_mean=time_mean)  # type: ignore[arg-type]
        return session_marginal_loglik(d, rows)[:, 0]  # type: ignore[arg-type]
    d = posterior_draws(post, data, time_mean=time_mean)
    return rating_loglik(d, data, np.array([unit]))[:, 0]


def loo_moment_match_fit(
    fit: Fit,
    loo: ELPDDataLOO | None = None,
    by: str = "session",
    *,
    k_threshold: float | None = None,
    max_iters: int = 30,
    split: bool = True,
    cov: bool = True,
    model: UnconstrainedModel | None = None,
    local: bool = True,
) -> ELPDDataLOO:
    """Improve the high-k units of a PSIS-LOO by importance-weighted moment matching.

    For each unit whose Pareto k exceeds ``k_threshold``, the posterior draws
    on the model's unconstrained space (:mod:`caltars_bayes.unconstrained`) are
    moved by affine maps that match their mean, then their marginal variances,
    then (when there are at least ten draws per parameter) their covariance to
    the importance-weighted moments of the leave-one-out posterior; a map is
    kept only when it lowers k, and the loop stops when k is below the
    threshold or after ``max_iters`` maps. The unit's elpd is then the
    importance-sampling estimate from the moved draws (with ``split``: half of
    the draws moved, combined by multiple importance sampling), which needs
    only the model's joint density at the moved draws: no refit (Paananen,
    Piironen, Buerkner & Vehtari 2021, *Implicitly adaptive importance
    sampling*, Statistics and Computing 31:16; the algorithm of
    ``arviz_stats.loo_moment_match``, which this calls with our own functions).

    ``by="session"`` uses the *integrated* session likelihood
    (:func:`caltars_bayes.predict.session_marginal_loglik`). The importance
    target is then the joint density ``p(rest | y_-s) p(zeta_s | y_s, rest)``,
    whose margin over the session's own deviations is the leave-one-session-out
    posterior, so the estimate is of the same elpd as :func:`loo_fit` and
    :func:`kfold_fit`.

    Parameters
    ----------
    fit : a fitted model (its model is rebuilt from its spec and data; fits
        with borrowed priors are refused with a CaltarsError).
    loo : the PSIS-LOO result to improve (default: ``loo_fit(fit, by)``).
    by : ``"session"`` or ``"rating"``, as ``loo`` was computed.
    k_threshold : units above it are moment matched (default ``loo.good_k``,
        ``min(1 - 1/log10(S), 0.7)`` for S draws).
    max_iters : most affine maps per unit.
    split, cov : see ``arviz_stats.loo_moment_match``.
    model : an already built :class:`~caltars_bayes.unconstrained.UnconstrainedModel`.
    local : move only the held-out unit's own parameters (default): its
        subject's factors (``theta_raw``/``theta_z``, ``subject_mean``,
        ``general_z``) and its session's deviations (``zeta``/``zeta_z``),
        every other coordinate of each draw kept. Still an affine map of the
        draws, so the importance weights stay exact; with thousands of
        parameters, moving all of them by importance-weighted moments from a
        few thousand draws adds more noise than it removes (on a
        founding-design fit: 0 of 17 high-k sessions improved with
        ``local=False``). Each unit is then matched on its own.

    Returns
    -------
    ELPDDataLOO as :func:`loo_fit` (``elpd``, ``se``, ``p``, ``elpd_i``,
    ``pareto_k``, ``p_loo_i``, ``good_k``, ``warning``) with the matched units
    replaced (a unit whose k did not drop keeps its PSIS values), and
    ``influence_pareto_k``: the Pareto k before moment matching. ``pareto_k``
    of a matched unit is the k of its last accepted map.

    Examples
    --------
    >>> loo = loo_fit(fit, by="session")            # doctest: +SKIP
    >>> mm = loo_moment_match_fit(fit, loo)          # doctest: +SKIP
    >>> int((mm.pareto_k > 0.7).sum())              # doctest: +SKIP
    0
    """
    from arviz_stats import loo_moment_match

    if by not in ("session", "rating"):
        raise ValueError(f"moment matching needs by='session' or 'rating', got {by!r}")
    if loo is None:
        loo = loo_fit(fit, by)
    dim, _ = _units(fit.data, by)
    if loo.pareto_k is None or dim not in loo.pareto_k.dims:
        raise ValueError(f"loo must be a pointwise loo_fit(fit, by={by!r}) result")
    threshold = float(loo.good_k if k_threshold is None else k_threshold)
    bad = np.flatnonzero(loo.pareto_k.values > threshold)
    out = copy.deepcopy(loo)
    out.influence_pareto_k = loo.pareto_k.copy()
    if bad.size == 0:
        return out
    data, post = fit.data, fit.posterior
    um = model or UnconstrainedModel(fit)
    upars = um.upars(post)
    d = posterior_draws(post, data)
    if by == "session":
        ll = session_marginal_loglik(d, data)[:, bad]
    else:
        ll = rating_loglik(d, data, bad)
    n_chain, n_draw = post.sizes["chain"], post.sizes["draw"]
    sample_coords = {"chain": post["chain"].values, "draw": post["draw"].values}
    sub_coords = {dim: loo.pareto_k[dim].values[bad]}
    ll_da = xr.DataArray(
        ll.reshape(n_chain, n_draw, -1),
        dims=(*SAMPLE_DIMS, dim),
        coords={**sample_coords, **sub_coords},
    )
    reff = relative_eff(fit)
    log_weights, _ = ll_da.azstats.psislw(r_eff=reff, dim=list(SAMPLE_DIMS))
    tree = xr.DataTree.from_dict({"log_likelihood": xr.Dataset({"unit": ll_da})})
    sub = ELPDDataLOO(
        elpd=float(loo.elpd_i.values[bad].sum()),
        se=0.0,
        p=0.0,
        n_samples=loo.n_samples,
        n_data_points=len(bad),
        scale="log",
        warning=True,
        good_k=loo.good_k,
        elpd_i=loo.elpd_i.isel({dim: bad}).copy(),
        pareto_k=loo.pareto_k.isel({dim: bad}).copy(),
        p_loo_i=loo.p_loo_i.isel({dim: bad}).copy(),
        log_weights=log_weights,
    )

    def as_samples(values: np.ndarray, like: xr.DataArray) -> xr.DataArray:
        return xr.DataArray(
            values.reshape(like.sizes["chain"], like.sizes["draw"]),
            dims=SAMPLE_DIMS,
            coords={"chain": like["chain"].values, "draw": like["draw"].values},
        )

    def log_prob(u: xr.DataArray) -> xr.DataArray:
        u = u.transpose(*SAMPLE_DIMS, ...)
        return as_samples(um.logp(u.values), u)

    def log_lik_i(u: xr.DataArray, i: int) -> xr.DataArray:
        u = u.transpose(*SAMPLE_DIMS, ...)
        return as_samples(_unit_loglik_at(um, data, by, int(bad[i]), u), u)

    def match(tree_, sub_, log_prob_, log_lik_i_, upars_) -> ELPDDataLOO:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # per-unit notes; the k values tell
            warnings.simplefilter("ignore", RuntimeWarning)  # its se of a single unit (ddof=1)
            return loo_moment_match(
                tree_,
                sub_,
                log_prob_upars_fn=log_prob_,
                log_lik_i_upars_fn=log_lik_i_,
                upars=upars_,
                var_name="unit",
                reff=reff,
                max_iters=max_iters,
                k_threshold=threshold,
                split=split,
                cov=cov,
                pointwise=True,
            )

    if not local:
        mm = match(tree, sub, log_prob, log_lik_i, upars)
        matched = {n: getattr(mm, n).values for n in ("elpd_i", "pareto_k", "p_loo_i")}
    else:
        full = upars.transpose(*SAMPLE_DIMS, PARAM_DIM)
        matched = {n: getattr(sub, n).values.copy() for n in ("elpd_i", "pareto_k", "p_loo_i")}
        for j, unit in enumerate(bad):
            cols = _local_columns(um, data, by, int(unit))

            def embed(u: xr.DataArray, cols=cols) -> xr.DataArray:
                vals = full.values.copy()
                vals[..., cols] = u.transpose(*SAMPLE_DIMS, ...).values
                return full.copy(data=vals)

            def log_prob_local(u: xr.DataArray, embed=embed) -> xr.DataArray:
                return log_prob(embed(u))

            def log_lik_local(u: xr.DataArray, i: int, j=j, embed=embed) -> xr.DataArray:
                return log_lik_i(embed(u), j)

            one = copy.deepcopy(sub)
            for name in ("elpd_i", "pareto_k", "p_loo_i"):
                setattr(one, name, getattr(sub, name).isel({dim: [j]}))
            one.log_weights = log_weights.isel({dim: [j]})
            one.n_data_points = 1
            one.elpd = float(one.elpd_i.values.sum())
            tree_j = xr.DataTree.from_dict(
                {"log_likelihood": xr.Dataset({"unit": ll_da.isel({dim: [j]})})}
            )
            mm = match(tree_j, one, log_prob_local, log_lik_local, full.isel({PARAM_DIM: cols}))
            for name in matched:
                matched[name][j] = getattr(mm, name).values[0]
    for name in ("elpd_i", "pareto_k", "p_loo_i"):
        values = getattr(out, name).values.copy()
        values[bad] = matched[name]
        setattr(out, name, getattr(out, name).copy(data=values))
    elpd, se, p_loo, _ = out.elpd_i.azstats.loo_summary(out.p_loo_i)
    out.elpd, out.se, out.p = float(elpd), float(se), float(p_loo)
    out.warning = bool(np.any(out.pareto_k.values > out.good_k))
    return out


def _local_columns(um: UnconstrainedModel, data: RatingData, by: str, unit: int) -> np.ndarray:
    """Unconstrained coordinates of a held-out unit's own parameters.

    Its subject's factors (``theta_raw`` or ``theta_z``; ``subject_mean``;
    ``general_z``) and its session's deviations (``zeta`` or ``zeta_z``).
    """
    if by == "session":
        session = unit
    else:
        session = int(np.asarray(data.session_idx)[unit])
    subject = int(np.asarray(data.session_subject_idx)[session])
    rows = {"theta_raw": subject, "theta_z": subject, "subject_mean": subject}
    rows |= {"general_z": subject}
    rows |= {"zeta": session, "zeta_z": session}
    cols = []
    for name, shape, sl in zip(um.names, um._shapes, um._slices, strict=True):
        if name in rows and shape:
            block = np.arange(sl.start, sl.stop).reshape(shape)
            cols.append(np.ravel(block[rows[name]]))
    if not cols:
        raise CaltarsError("moment matching: the model has no subject or session parameters")
    return np.concatenate(cols)


# --------------------------------------------------------------------------- K-fold


def session_folds(data: RatingData, n_folds: int, seed: int = 0) -> np.ndarray:
    """Fold of each session (``data.sessions`` order), spread within subjects.

    Each subject's sessions are shuffled and dealt to consecutive folds from a
    random start, so no fold holds all sessions of a subject with two or more.
    """
    if n_folds < 2:
        raise ValueError(f"n_folds must be at least 2, got {n_folds}")
    rng = np.random.default_rng(seed)
    subj = np.asarray(data.session_subject_idx)
    folds = np.empty(len(subj), dtype=np.int64)
    for p in range(data.n_subjects):
        idx = np.flatnonzero(subj == p)
        if len(idx) == 1:
            raise CaltarsError(
                f"K-fold by session: subject {data.subjects[p]!r} has one session; every subject "
                "needs two sessions so that its alliance is informed in every training fold"
            )
        order = rng.permutation(idx)
        folds[order] = (rng.integers(n_folds) + np.arange(len(idx))) % n_folds
    return folds


def rating_folds(data: RatingData, n_folds: int, seed: int = 0) -> np.ndarray:
    """Fold of each rating, dealt out within sessions (each session stays in every training set)."""
    if n_folds < 2:
        raise ValueError(f"n_folds must be at least 2, got {n_folds}")
    rng = np.random.default_rng(seed)
    folds = np.empty(data.n_ratings, dtype=np.int64)
    ses = np.asarray(data.session_idx)
    for s in range(data.n_sessions):
        idx = rng.permutation(np.flatnonzero(ses == s))
        folds[idx] = (rng.integers(n_folds) + np.arange(len(idx))) % n_folds
    return folds


class _Rows:
    """The full data's labels and indices restricted to some ratings (a light view).

    With ``session``, the view also has that one session only (the ratings kept
    must all be of it).
    """

    def __init__(self, data: RatingData, keep: np.ndarray, session: int | None = None) -> None:
        self.subjects, self.judges, self.items = data.subjects, data.judges, data.items
        self.scales, self.sessions = data.scales, data.sessions
        self.session_labels = data.session_labels
        self.session_subject_idx = data.session_subject_idx
        for name in ("subject_idx", "session_idx", "judge_idx", "item_idx", "scale_idx", "y"):
            setattr(self, name, np.asarray(getattr(data, name))[keep])
        if session is not None:
            self.sessions = data.sessions.iloc[[session]]
            self.session_labels = (data.session_labels[session],)
            self.session_subject_idx = np.asarray(data.session_subject_idx)[[session]]
            self.session_idx = np.zeros_like(np.asarray(data.session_idx)[keep])

    n_subjects = property(lambda self: len(self.subjects))
    n_scales = property(lambda self: len(self.scales))
    n_sessions = property(lambda self: len(self.sessions))
    n_ratings = property(lambda self: len(self.y))


def _train_data(data: RatingData, keep: np.ndarray) -> RatingData:
    from caltars_bayes.data import RatingData

    long = data.ratings.loc[keep, ["subject", "session", "judge", "item", "rating"]]
    cov = data.covariates.reset_index() if data.covariates is not None else None
    scov = None
    if data.session_covariates is not None:
        kept = set(zip(long["subject"], long["session"], strict=True))
        sc = data.session_covariates.reset_index()
        mask = [(a, b) in kept for a, b in zip(sc["subject"], sc["session"], strict=True)]
        scov = sc.loc[mask]
    return RatingData.from_frame(
        long.reset_index(drop=True),
        data.instrument,
        layout="long",
        covariates=cov,
        session_covariates=scov,
        source="<K-fold training data>",
    )


def kfold_fit(
    fit: Fit,
    by: str = "session",
    n_folds: int = 5,
    *,
    seed: int = 0,
    fit_options: Mapping[str, Any] | None = None,
) -> ELPDDataLOOKFold:
    """K-fold cross-validated elpd by refitting the model K times.

    Parameters
    ----------
    fit : the model fitted to all data (its settings are reused for the refits).
    by : ``"session"`` (folds of whole sessions, spread within subjects; held-out
        session deviations integrated out) or ``"rating"`` (folds of ratings,
        spread within sessions; conditional likelihood).
    n_folds : K.
    seed : seed of the fold assignment (refit seeds follow from the fit's).
    fit_options : overrides of the refits' settings (``draws``, ``tune``,
        ``chains``, ``sampler``, ``progressbar``...), passed to ``fit_model``.

    Returns
    -------
    arviz_stats ``ELPDDataLOOKFold`` with ``elpd``, ``se``, ``p`` (in-sample lpd
    minus elpd), ``elpd_i`` over the units, ``n_folds``.
    """
    from caltars_bayes.fit import fit_model

    data = fit.data
    if by not in ("session", "rating"):
        raise ValueError(f"K-fold needs by='session' or 'rating', got {by!r}")
    times = pd.to_numeric(data.sessions["session"], errors="coerce")
    if "session_trend" in fit.posterior and times.isna().any():
        raise CaltarsError(
            "K-fold with a session trend needs numeric session labels (session times would "
            "change when sessions are left out)"
        )
    if by == "session":
        unit_fold = session_folds(data, n_folds, seed)
        rating_fold = unit_fold[np.asarray(data.session_idx)]
    else:
        rating_fold = rating_folds(data, n_folds, seed)
        unit_fold = rating_fold
    opts: dict[str, Any] = {
        "draws": fit.meta.get("draws", 1000),
        "tune": fit.meta.get("tune", 1000),
        "chains": fit.meta.get("chains", 4),
        "sampler": fit.meta.get("sampler", "nutpie"),
        "progressbar": False,
    }
    if fit.meta.get("target_accept"):
        opts["nuts"] = {"target_accept": fit.meta["target_accept"]}
    opts.update(fit_options or {})
    base_seed = int(fit.meta.get("random_seed", 1))
    dim, labels = _units(data, by)
    elpd_i = np.full(len(labels), np.nan)
    n_samples = 0
    for f in range(n_folds):
        held = rating_fold == f
        if not held.any():
            continue
        train = _train_data(data, ~held)
        refit = fit_model(train, random_seed=base_seed + 1000 * (f + 1), **opts)
        train_times = np.asarray(train.sessions["session_time"], dtype=float)
        rows = _Rows(data, held)
        d = posterior_draws(
            refit.posterior,
            rows,  # type: ignore[arg-type]
            time_mean=float(train_times.mean()),
            allow_new_sessions=True,
        )
        n_samples = d.n_samples
        rng = np.random.default_rng(seed + f)
        if by == "session":
            ll = session_marginal_loglik(d, rows, rng=rng)  # type: ignore[arg-type]
            units = np.flatnonzero(unit_fold == f)
            ll = ll[:, units]
        else:
            ll = rating_loglik(d, rows)  # type: ignore[arg-type]
            units = np.flatnonzero(held)
        elpd_i[units] = logsumexp(ll, axis=0) - np.log(ll.shape[0])
    lpd_i = _in_sample_lpd(fit, by)
    n = len(labels)
    elpd = float(elpd_i.sum())
    se = float(np.sqrt(n * np.var(elpd_i)))
    coords = {dim: labels}
    return ELPDDataLOOKFold(
        elpd=elpd,
        se=se,
        p=float(lpd_i.sum() - elpd),
        n_samples=n_samples,
        n_data_points=n,
        scale="log",
        warning=False,
        good_k=None,  # type: ignore[arg-type]  # K-fold: no Pareto k
        elpd_i=xr.DataArray(elpd_i, dims=(dim,), coords=coords),
        pareto_k=None,  # type: ignore[arg-type]
        n_folds=n_folds,
        p_kfold_i=xr.DataArray(lpd_i - elpd_i, dims=(dim,), coords=coords),
    )


def _in_sample_lpd(fit: Fit, by: str) -> np.ndarray:
    ll = _unit_loglik(fit, by, marginal=by == "session")
    return logsumexp(ll, axis=0) - np.log(ll.shape[0])


# --------------------------------------------------------------------------- comparison


def _check_same_data(fits: Mapping[str, Fit]) -> None:
    names = list(fits)
    ref = fits[names[0]].meta.get("data_hash")
    for n in names[1:]:
        h = fits[n].meta.get("data_hash")
        if h is None or ref is None or h != ref:
            raise CaltarsError(
                f"compare: {n!r} was fitted to different data than {names[0]!r} "
                f"(data hash {h} vs {ref}); models can only be compared on the same ratings"
            )


def compare_fits(
    fits: Mapping[str, Fit],
    by: str = "session",
    *,
    fallback: str = "moment_match",
    n_folds: int = 5,
    seed: int = 0,
    fit_options: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """Compare models fitted to the same ratings by cross-validated elpd.

    Parameters
    ----------
    fits : name -> fit (at least two, same data: refused otherwise).
    by : ``"session"`` (leave one session out, default) or ``"rating"``.
    fallback : what to do when some unit has Pareto k > 0.7 (always with a
        :class:`~caltars_bayes.errors.CaltarsWarning`): ``"moment_match"``
        (default: moment match the high-k units of the models that have them,
        :func:`loo_moment_match_fit`, no refit; if some unit still has k > 0.7,
        or moment matching is not possible, warn again and K-fold every model),
        ``"kfold"`` (K-fold cross-validation of every model at once, K refits
        each) or ``"none"`` (keep PSIS-LOO).
    n_folds, seed, fit_options : K-fold settings (see :func:`kfold_fit`).

    Returns
    -------
    DataFrame, best model first, with columns

    ``name``
        The model's name (key of ``fits``).
    ``elpd``, ``se``
        Estimated expected log predictive density (sum over units) and its SE.
    ``elpd_diff``, ``dse``
        This model's elpd minus the best model's (0 for the best, negative
        otherwise) and the SE of that difference (from the pointwise differences).
    ``weight``
        Stacking weight (weights sum to 1).
    ``p_loo``
        Effective number of parameters (in-sample lpd minus elpd).
    ``pareto_k_max``, ``n_high_k``
        Largest Pareto k and the number of units with k > 0.7 of the
        importance-sampling estimate: after moment matching where it was
        applied, else of plain PSIS (also when K-fold replaced it).
    ``n_units``, ``by``
        Number and kind of left-out units.
    ``method``
        ``"psis"``, ``"psis+mm"`` (PSIS with moment-matched high-k units) or
        ``"kfold(K)"``.
    ``converged``
        The fit's convergence verdict. ``attrs["diagnostics"]`` holds each
        fit's banner, ``attrs["warnings"]`` the Pareto-k warnings.
    """
    if len(fits) < 2:
        raise CaltarsError("compare: give at least two fits")
    if by not in ("session", "rating"):
        raise CaltarsError(f"compare: --by must be 'session' or 'rating', got {by!r}")
    if fallback not in FALLBACKS:
        raise ValueError(f"fallback must be one of {', '.join(FALLBACKS)}, got {fallback!r}")
    _check_same_data(fits)
    loos = {name: loo_fit(fit, by) for name, fit in fits.items()}
    messages: list[str] = []

    def note(msg: str) -> None:
        warnings.warn(msg, CaltarsWarning, stacklevel=3)
        messages.append(msg)

    def high(lo: ELPDDataLOO) -> int:
        return int(np.sum(lo.pareto_k.values > K_THRESHOLD))

    def detail(names: list[str], loo: Mapping[str, ELPDDataLOO]) -> str:
        return "; ".join(
            f"{n}: {high(loo[n])} of {loo[n].n_data_points} {by}s with Pareto k > {K_THRESHOLD} "
            f"(max {float(np.nanmax(loo[n].pareto_k.values)):.2f})"
            for n in names
        )

    elpds: dict[str, ELPDData] = dict(loos)
    methods = dict.fromkeys(fits, "psis")
    bad = [n for n in fits if high(loos[n])]
    kfold = fallback == "kfold" and bool(bad)
    if bad:
        action = {
            "moment_match": "moment matching their high-k units (no refit)",
            "kfold": (
                f"re-estimating every model by {n_folds}-fold cross-validation "
                f"({n_folds} refits each)"
            ),
            "none": "PSIS-LOO kept (fallback disabled): treat these elpd values with caution",
        }[fallback]
        note(f"PSIS-LOO unreliable: {detail(bad, loos)}; {action}")
    if bad and fallback == "moment_match":
        try:
            for n in bad:
                loos[n] = loo_moment_match_fit(fits[n], loos[n], by)
                elpds[n] = loos[n]
                methods[n] = "psis+mm"
        except CaltarsError as exc:
            note(f"moment matching not possible ({exc}); {n_folds}-fold cross-validation instead")
            kfold = True
        else:
            still = [n for n in bad if high(loos[n])]
            if still:
                note(
                    f"after moment matching: {detail(still, loos)}; re-estimating every model by "
                    f"{n_folds}-fold cross-validation ({n_folds} refits each)"
                )
                kfold = True
    if kfold:
        try:
            elpds = {
                n: kfold_fit(f, by, n_folds, seed=seed, fit_options=fit_options)
                for n, f in fits.items()
            }
            methods = dict.fromkeys(fits, f"kfold({n_folds})")
        except CaltarsError as exc:
            note(f"K-fold not possible ({exc}); PSIS-LOO kept")
    k_max = {n: float(np.nanmax(lo.pareto_k.values)) for n, lo in loos.items()}
    n_high = {n: high(lo) for n, lo in loos.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # arviz's own k and |diff| < 4 notes
        table = az_compare(elpds, method="stacking", round_to="none")
    out = pd.DataFrame(
        {
            "name": [str(n) for n in table.index],
            "elpd": table["elpd"].to_numpy(float),
            "se": table["se"].to_numpy(float),
            "elpd_diff": table["elpd_diff"].to_numpy(float),
            "dse": table["dse"].to_numpy(float),
            "weight": table["weight"].to_numpy(float),
            "p_loo": table["p"].to_numpy(float),
            "pareto_k_max": [k_max[n] for n in table.index],
            "n_high_k": [n_high[n] for n in table.index],
            "n_units": [loos[n].n_data_points for n in table.index],
            "by": by,
            "method": [methods[n] for n in table.index],
            "converged": [bool(fits[n].converged) for n in table.index],
        }
    )
    # ArviZ reports elpd_diff as best minus model; ours is model minus best (<= 0)
    out["elpd_diff"] = out["elpd"] - out["elpd"].iloc[0]
    out.attrs["diagnostics"] = "; ".join(
        f"{n}: {fits[n].diagnostics.banner()}" for n in out["name"]
    )
    out.attrs["warnings"] = messages
    return out[COMPARE_COLUMNS]


def plot_compare(table: pd.DataFrame) -> Figure:
    """Plot a comparison table: each model's elpd (+-SE) and its difference from the best (+-dSE).

    Returns
    -------
    matplotlib Figure (one panel; best model at the top).
    """
    import matplotlib.pyplot as plt

    tab = table.reset_index(drop=True)
    n = len(tab)
    fig, ax = plt.subplots(figsize=(6.5, 1.0 + 0.55 * n))
    y = np.arange(n)[::-1].astype(float)
    ax.errorbar(
        tab["elpd"], y, xerr=tab["se"], fmt="o", color="black", mfc="white", capsize=3,
        label="elpd \u00b1 SE",
    )  # fmt: skip
    best = float(tab["elpd"].iloc[0])
    if n > 1:
        ax.errorbar(
            best + tab["elpd_diff"].iloc[1:], y[1:] - 0.22, xerr=tab["dse"].iloc[1:], fmt="^",
            color="tab:grey", capsize=3, label="difference from best \u00b1 dSE",
        )  # fmt: skip
    ax.axvline(best, color="tab:grey", lw=0.8, ls="--")
    labels = [
        f"{r.name}  (w = {r.weight:.2f}{', k>0.7: ' + str(int(r.n_high_k)) if r.n_high_k else ''})"
        for r in tab.itertuples()
    ]
    ax.set_yticks(y, labels)
    method = tab["method"].iloc[0] if "method" in tab else ""
    by = tab["by"].iloc[0] if "by" in tab else ""
    ax.set_xlabel(f"elpd ({method}, leave one {by} out)" if by else "elpd")
    ax.legend(loc="lower left", fontsize="small", frameon=False)
    banner = table.attrs.get("diagnostics", "")
    if "converged" in tab and not tab["converged"].all():
        ax.set_title("NOT CONVERGED fit(s): read with caution", fontsize="small", color="firebrick")
    elif banner:
        ax.set_title("all fits converged", fontsize="small")
    fig.tight_layout()
    return fig
