"""Importance-weighted moment matching of the high-k units of a PSIS-LOO.

When some left-out unit has a Pareto k above the threshold,
:func:`loo_moment_match_fit` improves it (Paananen et al. 2021): the
posterior draws, on the model's unconstrained space
(:mod:`caltars_bayes.inference.unconstrained`), are moved by affine maps
towards the leave-one-out posterior and reweighted with the model's joint
density, so no refit is needed. For ``by="session"`` the held-out likelihood
is the integrated session likelihood, as in PSIS-LOO.
"""

from __future__ import annotations

import copy
import warnings
from typing import TYPE_CHECKING

import numpy as np
import xarray as xr
from arviz_stats import loo_moment_match
from arviz_stats.utils import ELPDDataLOO

from caltars_bayes._core.dims import SAMPLE_DIMS
from caltars_bayes._core.errors import CaltarsError
from caltars_bayes.analysis.compare.kfold import _Rows
from caltars_bayes.analysis.compare.loo import _units, loo_fit, relative_eff
from caltars_bayes.inference.predict import posterior_draws, rating_loglik, session_marginal_loglik
from caltars_bayes.inference.unconstrained import PARAM_DIM, UnconstrainedModel

if TYPE_CHECKING:
    from caltars_bayes.data.ratings import RatingData
    from caltars_bayes.inference.fit import Fit


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
    stop_above: float | None = None,
) -> ELPDDataLOO:
    """Improve the high-k units of a PSIS-LOO by importance-weighted moment matching.

    For each unit whose Pareto k exceeds ``k_threshold``, the posterior draws
    on the model's unconstrained space (:mod:`caltars_bayes.inference.unconstrained`) are
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
    (:func:`caltars_bayes.inference.predict.session_marginal_loglik`). The importance
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
    model : an already built :class:`~caltars_bayes.inference.unconstrained.UnconstrainedModel`.
    local : move only the held-out unit's own parameters (default): its
        subject's factors (``theta_raw``/``theta_z``, ``subject_mean``,
        ``general_z``) and its session's deviations (``zeta``/``zeta_z``),
        every other coordinate of each draw kept. Still an affine map of the
        draws, so the importance weights stay exact; with thousands of
        parameters, moving all of them by importance-weighted moments from a
        few thousand draws adds more noise than it removes (on a
        founding-design fit: 0 of 17 high-k sessions improved with
        ``local=False``). Each unit is then matched on its own.
    stop_above : with ``local``, stop at the first unit whose k is still above
        it after matching; the units after it keep their PSIS values. For a
        caller that gives up on importance sampling as soon as one unit stays
        high (:func:`~caltars_bayes.analysis.compare.table.compare_fits` then
        K-folds every model): measured on a 45 x 2 x 3 CALTARS trial, matching
        the 57 and 22 high-k sessions of two structures took 4.7 of the 10
        minutes of ``compare`` before K-fold replaced the result anyway.

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
    um = model or UnconstrainedModel(fit)
    upars = um.upars(fit.posterior)
    ll_da = _high_k_loglik(fit, by, bad, dim, loo.pareto_k[dim].values[bad])
    reff = relative_eff(fit)
    log_weights, _ = ll_da.azstats.psislw(r_eff=reff, dim=list(SAMPLE_DIMS))
    sub = _high_k_subset(loo, bad, dim, log_weights)
    matcher = _Matcher(um, fit.data, by, bad, reff, threshold, max_iters, split, cov)
    if not local:
        tree = xr.DataTree.from_dict({"log_likelihood": xr.Dataset({"unit": ll_da})})
        mm = matcher.match(tree, sub, matcher.log_prob, matcher.log_lik_i, upars)
        matched = {n: getattr(mm, n).values for n in ("elpd_i", "pareto_k", "p_loo_i")}
    else:
        matched = matcher.match_each(sub, ll_da, log_weights, upars, dim, stop_above)
    for name in ("elpd_i", "pareto_k", "p_loo_i"):
        values = getattr(out, name).values.copy()
        values[bad] = matched[name]
        setattr(out, name, getattr(out, name).copy(data=values))
    elpd, se, p_loo, _ = out.elpd_i.azstats.loo_summary(out.p_loo_i)
    out.elpd, out.se, out.p = float(elpd), float(se), float(p_loo)
    out.warning = bool(np.any(out.pareto_k.values > out.good_k))
    return out


def _high_k_loglik(
    fit: Fit, by: str, bad: np.ndarray, dim: str, labels: np.ndarray
) -> xr.DataArray:
    """Log likelihood of the high-k units at the posterior draws, dims (chain, draw, dim)."""
    data, post = fit.data, fit.posterior
    d = posterior_draws(post, data)
    if by == "session":
        ll = session_marginal_loglik(d, data)[:, bad]
    else:
        ll = rating_loglik(d, data, bad)
    n_chain, n_draw = post.sizes["chain"], post.sizes["draw"]
    sample_coords = {"chain": post["chain"].values, "draw": post["draw"].values}
    sub_coords = {dim: labels}
    return xr.DataArray(
        ll.reshape(n_chain, n_draw, -1),
        dims=(*SAMPLE_DIMS, dim),
        coords={**sample_coords, **sub_coords},
    )


def _high_k_subset(
    loo: ELPDDataLOO, bad: np.ndarray, dim: str, log_weights: xr.DataArray
) -> ELPDDataLOO:
    """The PSIS-LOO of the high-k units alone, with their PSIS log weights."""
    return ELPDDataLOO(
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


def _as_samples(values: np.ndarray, like: xr.DataArray) -> xr.DataArray:
    return xr.DataArray(
        values.reshape(like.sizes["chain"], like.sizes["draw"]),
        dims=SAMPLE_DIMS,
        coords={"chain": like["chain"].values, "draw": like["draw"].values},
    )


class _Matcher:
    """The model's joint density and the high-k units' likelihoods at moved draws.

    ``bad`` are the high-k units (sessions or ratings); the other arguments
    are passed to ``arviz_stats.loo_moment_match``.
    """

    def __init__(
        self,
        um: UnconstrainedModel,
        data: RatingData,
        by: str,
        bad: np.ndarray,
        reff: float,
        threshold: float,
        max_iters: int,
        split: bool,
        cov: bool,
    ) -> None:
        self.um, self.data, self.by, self.bad = um, data, by, bad
        self.reff, self.threshold, self.max_iters = reff, threshold, max_iters
        self.split, self.cov = split, cov

    def log_prob(self, u: xr.DataArray) -> xr.DataArray:
        u = u.transpose(*SAMPLE_DIMS, ...)
        return _as_samples(self.um.logp(u.values), u)

    def log_lik_i(self, u: xr.DataArray, i: int) -> xr.DataArray:
        u = u.transpose(*SAMPLE_DIMS, ...)
        return _as_samples(_unit_loglik_at(self.um, self.data, self.by, int(self.bad[i]), u), u)

    def match(self, tree_, sub_, log_prob_, log_lik_i_, upars_) -> ELPDDataLOO:
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
                reff=self.reff,
                max_iters=self.max_iters,
                k_threshold=self.threshold,
                split=self.split,
                cov=self.cov,
                pointwise=True,
            )

    def match_each(
        self,
        sub: ELPDDataLOO,
        ll_da: xr.DataArray,
        log_weights: xr.DataArray,
        upars: xr.DataArray,
        dim: str,
        stop_above: float | None = None,
    ) -> dict[str, np.ndarray]:
        """Match each unit on its own, moving only its own parameters (``local=True``);
        with ``stop_above``, stop after the first unit whose k stays above it."""
        full = upars.transpose(*SAMPLE_DIMS, PARAM_DIM)
        matched = {n: getattr(sub, n).values.copy() for n in ("elpd_i", "pareto_k", "p_loo_i")}
        for j, unit in enumerate(self.bad):
            cols = _local_columns(self.um, self.data, self.by, int(unit))

            def embed(u: xr.DataArray, cols=cols) -> xr.DataArray:
                vals = full.values.copy()
                vals[..., cols] = u.transpose(*SAMPLE_DIMS, ...).values
                return full.copy(data=vals)

            def log_prob_local(u: xr.DataArray, embed=embed) -> xr.DataArray:
                return self.log_prob(embed(u))

            def log_lik_local(u: xr.DataArray, i: int, j=j, embed=embed) -> xr.DataArray:
                return self.log_lik_i(embed(u), j)

            one = copy.deepcopy(sub)
            for name in ("elpd_i", "pareto_k", "p_loo_i"):
                setattr(one, name, getattr(sub, name).isel({dim: [j]}))
            one.log_weights = log_weights.isel({dim: [j]})
            one.n_data_points = 1
            one.elpd = float(one.elpd_i.values.sum())
            tree_j = xr.DataTree.from_dict(
                {"log_likelihood": xr.Dataset({"unit": ll_da.isel({dim: [j]})})}
            )
            mm = self.match(
                tree_j, one, log_prob_local, log_lik_local, full.isel({PARAM_DIM: cols})
            )
            for name in matched:
                matched[name][j] = getattr(mm, name).values[0]
            if stop_above is not None and matched["pareto_k"][j] > stop_above:
                break
        return matched


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
