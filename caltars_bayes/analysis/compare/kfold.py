"""K-fold cross-validation of a fit: the fallback when PSIS-LOO is unreliable.

K-fold refits each model K times (K x the fitting time). Folds are formed
within subjects: each subject's sessions are spread over the folds, so every
subject keeps at least one session in every training set and the held-out
sessions are predicted exactly as in leave-one-session-out (new session
deviations integrated out, everything else from the training posterior).
K-fold therefore estimates the same quantity as the session PSIS-LOO (with
slightly less training data). Leaving out whole *subjects* instead would
need, for every draw, an integral over the new subject's correlated factors;
it is not offered.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import nullcontext
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
from arviz_stats.utils import ELPDDataLOOKFold
from scipy.special import logsumexp

from caltars_bayes._core.errors import CaltarsError
from caltars_bayes._core.progress import Progress
from caltars_bayes.analysis.compare.loo import _unit_loglik, _units
from caltars_bayes.data.ratings import RatingData
from caltars_bayes.inference.fit import Fit, fit_model
from caltars_bayes.inference.predict import posterior_draws, rating_loglik, session_marginal_loglik


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
    progress: Progress | None = None,
    quiet: bool = False,
    name: str = "model",
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
    progress : a :class:`~caltars_bayes._core.progress.Progress` that counts the
        refits (one step per fold; ``compare_fits`` passes one for all models);
        default: a new one of ``n_folds`` steps on stderr.
    quiet : no progress (when ``progress`` is not given).
    name : the model's name in the progress lines.

    Returns
    -------
    arviz_stats ``ELPDDataLOOKFold`` with ``elpd``, ``se``, ``p`` (in-sample lpd
    minus elpd), ``elpd_i`` over the units, ``n_folds``.
    """
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
        "draws": fit.record.draws,
        "tune": fit.record.tune,
        "chains": fit.record.chains,
        "sampler": fit.record.sampler,
        "progressbar": False,
    }
    if fit.record.target_accept:
        opts["nuts"] = {"target_accept": fit.record.target_accept}
    opts.update(fit_options or {})
    dim, labels = _units(data, by)
    elpd_i = np.full(len(labels), np.nan)
    tracker = (
        nullcontext(progress)
        if progress is not None
        else Progress("K-fold refit", n_folds, quiet=quiet)
    )
    with tracker as bar:
        n_samples = _refit_folds(
            fit, by, n_folds, seed, opts, rating_fold, unit_fold, elpd_i, bar, name
        )
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


def _refit_folds(
    fit: Fit,
    by: str,
    n_folds: int,
    seed: int,
    opts: dict[str, Any],
    rating_fold: np.ndarray,
    unit_fold: np.ndarray,
    elpd_i: np.ndarray,
    bar: Progress,
    name: str,
) -> int:
    """Refit each fold's training data and fill ``elpd_i`` of its held-out units.

    Returns the number of posterior draws of the refits.
    """
    data = fit.data
    base_seed = int(fit.record.random_seed)
    n_samples = 0
    for f in range(n_folds):
        held = rating_fold == f
        bar.working(f"{name}, fold {f + 1} of {n_folds}")
        if not held.any():
            bar.advance()
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
        bar.advance()
    return n_samples
