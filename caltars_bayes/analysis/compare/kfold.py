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

The refits (K per model, each a :func:`~caltars_bayes.inference.fit.fit_model`
of the training ratings with its own seed) are independent: :func:`kfold_fits`
computes those of all models first, together, with
:func:`~caltars_bayes._core.parallel.parallel_map` (on a Dask LocalCluster
where the machine has the cores, on a given Dask scheduler, or in this
process), counting one progress step per finished refit. The K-fold
bookkeeping (held-out elpd per unit, their sum, SE and effective number of
parameters) is then ``arviz_stats.loo_kfold``, given our folds and a
:class:`RefitWrapper` that hands it each fold's refit and scores the held-out
units. The seeds do not depend on where a refit ran, so a parallel run gives
the serial run's numbers.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
from arviz_stats import loo_kfold
from arviz_stats.loo import SamplingWrapper
from arviz_stats.utils import ELPDDataLOOKFold

from caltars_bayes._core.errors import CaltarsError
from caltars_bayes._core.parallel import SERIAL, auto_scheduler, local_workers, parallel_map
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


@dataclass(frozen=True)
class _Folds:
    """One model's K-fold plan: folds of its units and the settings of its refits."""

    name: str
    fit: Fit
    by: str
    unit_fold: np.ndarray
    n_folds: int
    seed: int
    opts: dict[str, Any]

    @property
    def refits(self) -> list[int]:
        """The folds that hold some unit (each is one refit), in order."""
        return [int(f) for f in np.unique(self.unit_fold)]

    def held(self, fold: int) -> np.ndarray:
        """The ratings of the units in ``fold`` (a boolean mask over the ratings)."""
        units = np.flatnonzero(self.unit_fold == fold)
        if self.by == "session":
            return np.isin(np.asarray(self.fit.data.session_idx), units)
        held = np.zeros(self.fit.data.n_ratings, dtype=bool)
        held[units] = True
        return held

    def job(self, fold: int) -> _Refit:
        """The refit leaving out ``fold``: seed ``fit seed + 1000 x (fold + 1)``."""
        seed = int(self.fit.record.random_seed) + 1000 * (fold + 1)
        return _Refit(self.fit.data, ~self.held(fold), seed, self.opts)


@dataclass(frozen=True)
class _Refit:
    """One refit, as sent to a worker: the full data, the training ratings, seed, settings."""

    data: RatingData
    keep: np.ndarray
    seed: int
    opts: dict[str, Any]


def _refit(job: _Refit) -> xr.DataTree:
    """Fit the model to the training ratings; the posterior and its session-time centre.

    What each worker runs (module level, so that Dask can send it). The tree
    holds the refit's ``posterior`` and, in ``attrs["time_mean"]``, the mean
    session time its trend is centred on.
    """
    refit = fit_model(_train_data(job.data, job.keep), random_seed=job.seed, **job.opts)
    times = np.asarray(refit.data.sessions["session_time"], dtype=float)
    tree = xr.DataTree.from_dict({"posterior": refit.posterior})
    tree.attrs["time_mean"] = float(times.mean())
    return tree


def _plan(
    name: str,
    fit: Fit,
    by: str,
    n_folds: int,
    seed: int,
    fit_options: Mapping[str, Any] | None,
) -> _Folds:
    """The folds and refit settings of one model (errors before any refit)."""
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
    # the full fit's settings, not its outcome: the draws it asked for and its
    # cap, so that each refit extends itself only as far as it needs (given the
    # full fit's 1,500 extended draws, a 45-subject refit extended to 2,625 and
    # took 40.7 s against the full fit's 32.7 s)
    extension = fit.record.extension or {}
    opts: dict[str, Any] = {
        "draws": int(extension.get("requested_draws", fit.record.draws)),
        "max_draws": fit.record.max_draws,
        "tune": fit.record.tune,
        "chains": fit.record.chains,
        "sampler": fit.record.sampler,
        "progressbar": False,
    }
    nuts = dict(fit.record.nuts)  # the sampler options the full fit was given
    if fit.record.target_accept:
        nuts["target_accept"] = fit.record.target_accept
    if nuts:
        opts["nuts"] = nuts
    if fit.record.sampler == "nutpie" and "deterministics" not in nuts:
        # store what the full fit stored, so that the refits reuse its compiled
        # model: by default nutpie leaves the deterministics out by their size
        # (deterministics.DETERMINISTICS_AFTER_BYTES), which a smaller training set
        # can tip the other way, and the other choice is another compiled model
        after = "deterministics_s" in fit.record.timings
        opts["nuts"] = {**opts.get("nuts", {}), "deterministics": "after" if after else "during"}
    opts.update(fit_options or {})
    return _Folds(name, fit, by, unit_fold, n_folds, seed, opts)


def kfold_fit(
    fit: Fit,
    by: str = "session",
    n_folds: int = 5,
    *,
    seed: int = 0,
    fit_options: Mapping[str, Any] | None = None,
    scheduler: Any = None,
    workers: int | None = None,
    progress: Progress | None = None,
    quiet: bool = False,
    name: str = "model",
) -> ELPDDataLOOKFold:
    """K-fold cross-validated elpd by refitting the model K times.

    The bookkeeping is ``arviz_stats.loo_kfold`` with our folds (``folds=``)
    and a :class:`RefitWrapper` that hands it each training set's refit and
    scores the held-out units: a unit's elpd is the log of its predictive
    density averaged over the refit's draws, ``log mean_s p(y_unit | draw s)``;
    ``elpd`` is their sum, ``se = sqrt(n var(elpd_i))`` over the ``n`` units,
    and ``p`` is the in-sample lpd (the same average over the full fit's
    draws) minus ``elpd``.

    The refits are independent, so they run in parallel where the machine has
    the cores (:func:`kfold_fits`); each has its own seed, so the result is
    the same wherever and in whichever order they ran.

    Parameters
    ----------
    fit : the model fitted to all data (its settings are reused for the refits).
    by : ``"session"`` (folds of whole sessions, spread within subjects; held-out
        session deviations integrated out) or ``"rating"`` (folds of ratings,
        spread within sessions; conditional likelihood).
    n_folds : K.
    seed : seed of the fold assignment (refit seeds follow from the fit's:
        ``fit seed + 1000 x fold``, folds counted from 1).
    fit_options : overrides of the refits' settings (``draws``, ``tune``,
        ``chains``, ``sampler``, ``progressbar``...), passed to ``fit_model``.
    scheduler, workers : where the refits run (see :func:`kfold_fits`; default:
        in parallel on a Dask LocalCluster of ``min(cores / chains, K)``
        processes where that is two or more and Dask is installed, else here).
    progress : a :class:`~caltars_bayes._core.progress.Progress` that counts the
        refits (one step per finished refit); default: a new one of ``n_folds``
        steps on stderr.
    quiet : no progress (when ``progress`` is not given).
    name : the model's name in the progress lines.

    Returns
    -------
    arviz_stats ``ELPDDataLOOKFold`` with ``elpd``, ``se``, ``p`` (in-sample lpd
    minus elpd), ``elpd_i`` and ``p_kfold_i`` over the units, ``n_folds`` (the
    folds that hold some unit) and ``n_samples`` (draws of the full fit).
    """
    tracker = (
        nullcontext(progress)
        if progress is not None
        else Progress("K-fold refit", n_folds, quiet=quiet)
    )
    with tracker as bar:
        return kfold_fits(
            {name: fit},
            by,
            n_folds,
            seed=seed,
            fit_options=fit_options,
            scheduler=scheduler,
            workers=workers,
            progress=bar,
        )[name]


def kfold_fits(
    fits: Mapping[str, Fit],
    by: str = "session",
    n_folds: int = 5,
    *,
    seed: int = 0,
    fit_options: Mapping[str, Any] | None = None,
    scheduler: Any = None,
    workers: int | None = None,
    progress: Progress | None = None,
    quiet: bool = False,
) -> dict[str, ELPDDataLOOKFold]:
    """K-fold cross-validated elpd of several models, their refits pooled (see :func:`kfold_fit`).

    All models' refits (K each) are computed first, together, by
    :func:`~caltars_bayes._core.parallel.parallel_map`, and then scored by
    ``arviz_stats.loo_kfold``, model by model. Each refit's seed depends only
    on its model's fit and its fold, so a parallel run gives exactly the
    serial run's numbers.

    Parameters
    ----------
    fits : name -> fit.
    by, n_folds, seed, fit_options : as for :func:`kfold_fit`.
    scheduler : where the refits run: ``None`` or ``"local"`` (default: a Dask
        LocalCluster of ``min(workers, refits)`` processes, or this process
        where that would be one worker or Dask is not installed), ``"serial"``
        (this process), a Dask scheduler address ``"tcp://HOST:8786"`` or a
        :class:`distributed.Client`.
    workers : LocalCluster size. Default: the machine's cores divided by the
        refits' chains (each refit samples its chains in parallel threads, so
        a refit with 2 chains keeps 2 cores busy by itself; measured on 2
        cores, two refits at once were no faster than one after the other);
        1: this process.
    progress : a :class:`~caltars_bayes._core.progress.Progress` that counts
        the refits, one step per finished refit (``compare_fits`` passes one);
        default: a new one of ``K x models`` steps on stderr.
    quiet : no progress (when ``progress`` is not given).

    Returns
    -------
    dict : name -> ``ELPDDataLOOKFold`` (as :func:`kfold_fit` returns).
    """
    plans = [_plan(n, f, by, n_folds, seed, fit_options) for n, f in fits.items()]
    jobs = [(p, fold) for p in plans for fold in p.refits]
    chains = max(int(p.opts.get("chains") or 1) for p in plans)  # threads of one refit
    where = auto_scheduler(scheduler, workers, len(jobs), per_item=chains)
    if where is None:  # a LocalCluster: as many refits at once as the cores hold their chains
        workers = local_workers(len(jobs), workers, per_item=chains)
    tracker = (
        nullcontext(progress)
        if progress is not None
        else Progress("K-fold refit", n_folds * len(plans), quiet=quiet)
    )
    with tracker as bar:
        empty = n_folds * len(plans) - len(jobs)
        if empty:  # a fold without units is no refit; count it at once
            bar.advance(empty)
        if where != SERIAL:
            bar.working(f"{len(jobs)} refits in parallel on Dask")

        def started(i: int) -> None:
            if where == SERIAL:
                p, fold = jobs[i]
                bar.working(f"{p.name}, fold {fold + 1} of {n_folds}")

        def done(i: int, tree: xr.DataTree) -> None:
            p, fold = jobs[i]
            bar.advance(note=f"{p.name}, fold {fold + 1} of {n_folds}")

        trees = parallel_map(
            _refit,
            [p.job(fold) for p, fold in jobs],
            scheduler=where,
            workers=workers,
            names=[f"kfold-{p.name}-fold{fold + 1}" for p, fold in jobs],
            on_start=started,
            on_done=done,
        )
    out = {}
    for p in plans:
        refits = {fold: t for (q, fold), t in zip(jobs, trees, strict=True) if q is p}
        wrapper = RefitWrapper(p, refits)
        out[p.name] = loo_kfold(
            _in_sample_tree(p.fit, by), wrapper, pointwise=True, folds=p.unit_fold
        )
    return out


def _in_sample_tree(fit: Fit, by: str) -> xr.DataTree:
    """The full fit's unit log likelihoods as the ``log_likelihood`` group ``loo_kfold`` reads."""
    ll = _unit_loglik(fit, by, marginal=by == "session")
    dim, labels = _units(fit.data, by)
    da = xr.DataArray(ll[None], dims=("chain", "draw", dim), coords={dim: labels})
    return xr.DataTree.from_dict({"log_likelihood": xr.Dataset({"unit": da})})


class RefitWrapper(SamplingWrapper):
    """The refits of one model, handed to ``arviz_stats.loo_kfold`` one per fold.

    ``loo_kfold`` calls, per fold, :meth:`sel_observations` (the held-out
    units' indices -> the fold and its held-out ratings), :meth:`sample` (the
    fold's refit, computed beforehand by :func:`kfold_fits`: the model fitted
    by :func:`~caltars_bayes.inference.fit.fit_model` to the other folds with
    seed ``fit seed + 1000 x fold``), :meth:`get_inference_data` and
    :meth:`log_likelihood__i` (log density of each held-out unit per refit
    draw; sessions: their deviations integrated out).
    """

    def __init__(self, folds: _Folds, refits: Mapping[int, xr.DataTree]) -> None:
        super().__init__(model=None)
        self.folds, self.refits = folds, refits

    def sel_observations(self, idx: np.ndarray) -> tuple[Any, Any]:
        """(fold, None), (fold, held-out ratings mask, held-out units)."""
        fold = int(self.folds.unit_fold[idx[0]])  # ours (0-based), whatever loo_kfold numbers it
        return (fold, None), (fold, self.folds.held(fold), np.asarray(idx))

    def sample(self, modified_observed_data: Any) -> xr.DataTree:
        """The fold's refit (its posterior and session-time centre)."""
        fold, _ = modified_observed_data
        return self.refits[fold]

    def get_inference_data(self, fitted_model: xr.DataTree) -> xr.DataTree:
        """The refit's tree as it is."""
        return fitted_model

    def log_likelihood__i(self, excluded_obs: Any, idata__i: xr.DataTree) -> xr.DataArray:
        """Log density of each held-out unit per refit draw: (chain 1, draw, unit)."""
        fold, held, units = excluded_obs
        data, by = self.folds.fit.data, self.folds.by
        rows = _Rows(data, held)
        d = posterior_draws(
            idata__i["posterior"].to_dataset(),
            rows,  # type: ignore[arg-type]
            time_mean=idata__i.attrs["time_mean"],
            allow_new_sessions=True,
        )
        if by == "session":
            rng = np.random.default_rng(self.folds.seed + fold)
            ll = session_marginal_loglik(d, rows, rng=rng)[:, units]  # type: ignore[arg-type]
        else:
            ll = rating_loglik(d, rows)  # type: ignore[arg-type]
        dim, labels = _units(data, by)
        return xr.DataArray(
            ll[None], dims=("chain", "draw", dim), coords={dim: [labels[u] for u in units]}
        )
