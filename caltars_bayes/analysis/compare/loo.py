"""Pointwise PSIS-LOO of a fit, leaving out one session or one rating at a time.

The expected log predictive density (elpd) of a model is estimated by
Pareto-smoothed importance sampling leave-one-out cross-validation (PSIS-LOO,
ArviZ 1.x ``arviz_stats``), either

``by="session"`` (default)
    leaving out one whole session at a time: the units a new trial adds are
    sessions, each rated on every item by the panel. A held-out session's own
    deviations ``zeta[s, :]`` are integrated out of its likelihood
    (:func:`caltars_bayes.inference.predict.session_marginal_loglik`); importance
    sampling with them fixed at draws that saw the session fails.
``by="rating"``
    leaving out one rating at a time (conditional on every latent value).

Each left-out unit has a Pareto k diagnostic; above :data:`K_THRESHOLD` (0.7)
its importance-sampling estimate is unreliable.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr
from arviz_stats import ess
from arviz_stats.utils import ELPDDataLOO

from caltars_bayes._core.dims import SAMPLE_DIMS
from caltars_bayes.inference.predict import (
    CHUNK_ELEMENTS,
    PosteriorDraws,
    grouped_loglik,
    posterior_draws,
    rating_loglik,
    session_marginal_loglik,
)

if TYPE_CHECKING:
    from caltars_bayes.data.ratings import RatingData
    from caltars_bayes.inference.fit import Fit

#: Pareto k above which a unit's PSIS estimate is unreliable.
K_THRESHOLD = 0.7


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
        for ``by="session"``; see :mod:`caltars_bayes.inference.predict`).

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
