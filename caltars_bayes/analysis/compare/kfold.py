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

The K-fold bookkeeping (refit per fold, held-out elpd per unit, their sum,
SE and effective number of parameters) is ``arviz_stats.loo_kfold``, given
our folds and a :class:`RefitWrapper` that refits with
:func:`~caltars_bayes.inference.fit.fit_model` and scores the held-out units.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import nullcontext
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
from arviz_stats import loo_kfold
from arviz_stats.loo import SamplingWrapper
from arviz_stats.utils import ELPDDataLOOKFold

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

    The bookkeeping is ``arviz_stats.loo_kfold`` with our folds (``folds=``)
    and a :class:`RefitWrapper` that refits the model to each training set
    and scores the held-out units: a unit's elpd is the log of its predictive
    density averaged over the refit's draws, ``log mean_s p(y_unit | draw s)``;
    ``elpd`` is their sum, ``se = sqrt(n var(elpd_i))`` over the ``n`` units,
    and ``p`` is the in-sample lpd (the same average over the full fit's
    draws) minus ``elpd``.

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
    minus elpd), ``elpd_i`` and ``p_kfold_i`` over the units, ``n_folds`` (the
    folds that hold some unit) and ``n_samples`` (draws of the full fit).
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
    else:
        unit_fold = rating_folds(data, n_folds, seed)
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
    tracker = (
        nullcontext(progress)
        if progress is not None
        else Progress("K-fold refit", n_folds, quiet=quiet)
    )
    with tracker as bar:
        empty = n_folds - len(np.unique(unit_fold))
        if empty:  # a fold without units is no refit; count it at once
            bar.advance(empty)
        wrapper = RefitWrapper(fit, by, unit_fold, n_folds, seed, opts, bar, name)
        return loo_kfold(_in_sample_tree(fit, by), wrapper, pointwise=True, folds=unit_fold)


def _in_sample_tree(fit: Fit, by: str) -> xr.DataTree:
    """The full fit's unit log likelihoods as the ``log_likelihood`` group ``loo_kfold`` reads."""
    ll = _unit_loglik(fit, by, marginal=by == "session")
    dim, labels = _units(fit.data, by)
    da = xr.DataArray(ll[None], dims=("chain", "draw", dim), coords={dim: labels})
    return xr.DataTree.from_dict({"log_likelihood": xr.Dataset({"unit": da})})


class RefitWrapper(SamplingWrapper):
    """Refits of one model for ``arviz_stats.loo_kfold``, one per fold.

    ``loo_kfold`` calls, per fold, :meth:`sel_observations` (the held-out
    units' indices -> training and held-out ratings), :meth:`sample` (refit
    with :func:`~caltars_bayes.inference.fit.fit_model`, seed
    ``fit seed + 1000 x fold``), :meth:`get_inference_data` and
    :meth:`log_likelihood__i` (log density of each held-out unit per refit
    draw; sessions: their deviations integrated out). Each refit is one step
    of ``bar``.
    """

    def __init__(
        self,
        fit: Fit,
        by: str,
        unit_fold: np.ndarray,
        n_folds: int,
        seed: int,
        opts: dict[str, Any],
        bar: Progress,
        name: str,
    ) -> None:
        super().__init__(model=None)
        self.fit, self.by, self.unit_fold, self.n_folds = fit, by, unit_fold, n_folds
        self.seed, self.opts, self.bar, self.name = seed, opts, bar, name

    def _held(self, idx: np.ndarray) -> np.ndarray:
        """The ratings of the held-out units ``idx`` (a boolean mask over the ratings)."""
        if self.by == "session":
            return np.isin(np.asarray(self.fit.data.session_idx), idx)
        held = np.zeros(self.fit.data.n_ratings, dtype=bool)
        held[idx] = True
        return held

    def sel_observations(self, idx: np.ndarray) -> tuple[Any, Any]:
        """(fold, training ratings mask), (fold, held-out ratings mask, held-out units)."""
        fold = int(self.unit_fold[idx[0]])  # ours (0-based), whatever loo_kfold numbers it
        held = self._held(idx)
        return (fold, ~held), (fold, held, np.asarray(idx))

    def sample(self, modified_observed_data: Any) -> Fit:
        """Refit the model to the training ratings (one progress step starts)."""
        fold, keep = modified_observed_data
        self.bar.working(f"{self.name}, fold {fold + 1} of {self.n_folds}")
        train = _train_data(self.fit.data, keep)
        seed = int(self.fit.record.random_seed) + 1000 * (fold + 1)
        return fit_model(train, random_seed=seed, **self.opts)

    def get_inference_data(self, fitted_model: Fit) -> xr.DataTree:
        """The refit's posterior, with the session time its trend is centred on."""
        times = np.asarray(fitted_model.data.sessions["session_time"], dtype=float)
        tree = xr.DataTree.from_dict({"posterior": fitted_model.posterior})
        tree.attrs["time_mean"] = float(times.mean())
        return tree

    def log_likelihood__i(self, excluded_obs: Any, idata__i: xr.DataTree) -> xr.DataArray:
        """Log density of each held-out unit per refit draw: (chain 1, draw, unit)."""
        fold, held, units = excluded_obs
        data = self.fit.data
        rows = _Rows(data, held)
        d = posterior_draws(
            idata__i["posterior"].to_dataset(),
            rows,  # type: ignore[arg-type]
            time_mean=idata__i.attrs["time_mean"],
            allow_new_sessions=True,
        )
        if self.by == "session":
            rng = np.random.default_rng(self.seed + fold)
            ll = session_marginal_loglik(d, rows, rng=rng)[:, units]  # type: ignore[arg-type]
        else:
            ll = rating_loglik(d, rows)  # type: ignore[arg-type]
        dim, labels = _units(data, self.by)
        self.bar.advance()
        return xr.DataArray(
            ll[None], dims=("chain", "draw", dim), coords={dim: [labels[u] for u in units]}
        )
