"""Predictions from a fit's posterior, computed in numpy: the linear predictor,
rating log densities (per rating, or summed per session or per subject) and
replicated ratings.

Everything here re-evaluates the model of :mod:`caltars_bayes.model.build` from the
posterior draws, without PyMC::

    eta[s, k] = theta[p(s), k] + zeta[s, k] (+ session_trend[k] * centred time[s])
    mu        = discrimination[j] * (loading[i] * eta[s, k] + general_loading[i] * general[p])
                - severity[k, j] (+ interaction[j|p, k])
    P(y <= c) = logistic(cutpoints[i, c] - mu)

(each term only when the fit has it), with the numerically safe cumulative-logit
log density of :mod:`caltars_bayes.model.density` (the model's, in numpy). Draws
are processed in chunks, so no array larger than about :data:`CHUNK_ELEMENTS`
values exists at once: the per-rating log likelihood of the founding design
(18,720 ratings x 4,000 draws, 600 MB) is only ever built when asked for
(``by="rating"``).

Session likelihood with the session deviation integrated out
-------------------------------------------------------------
``log_likelihood(fit, by="session", marginal=True)`` gives, per draw, the log
density of a whole session's ratings with that session's own deviations
``zeta[s, :]`` integrated over their population distribution
``Normal(0, sd_session[k])`` instead of fixed at their drawn values::

    log p(y_s | rest) = sum_k log integral prod_{ratings of s on scale k} P(y | z) N(z; 0, sd_k) dz

The integral factorises over scales (the deviations of one session are
independent across scales given ``sd_session``), so it is one-dimensional per
session and scale; it is computed by adaptive Gauss-Hermite quadrature: a few
Newton steps find the mode of the (log-concave) integrand, and
:data:`GH_NODES` nodes are placed around it scaled by its curvature. This is
the quantity that leave-one-session-out cross-validation needs: a held-out
session's deviation is informed only by that session, so fixing it at draws
made *with* the session makes importance sampling fail (Vehtari et al. 2016,
integrated importance sampling; Merkle, Furr & Rabe-Hesketh 2019 on marginal
likelihoods for comparing latent-variable models).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr
from scipy import sparse
from scipy.special import expit, logsumexp

from caltars_bayes._core.dims import SAMPLE_DIMS
from caltars_bayes._core.errors import CaltarsError
from caltars_bayes.model.density import (
    cumulative_logit_derivatives,
    cumulative_logit_logp,
    pad_cutpoints,
)

if TYPE_CHECKING:
    from caltars_bayes.data.ratings import RatingData

    # what predict reads of a fit; not fit.Fit, which imports predict (via arviz_tree)
    from caltars_bayes.inference.tables import FitParts as Fit

#: Most values (draws x ratings) held in one working array.
CHUNK_ELEMENTS = 2_000_000
#: Gauss-Hermite nodes of the integrated session likelihood.
GH_NODES = 9
#: Newton steps (at most) to the mode of each session x scale integrand.
NEWTON_STEPS = 30
#: Groupings of the log likelihood.
GROUPINGS = ("rating", "session", "subject")


# --------------------------------------------------------------------------- draws


@dataclass
class PosteriorDraws:
    """Posterior draws of everything the likelihood uses, aligned with a RatingData.

    Arrays have the flattened sample (chain x draw) first, then the data's
    label order (subjects, sessions, judges, items, scales). ``zeta`` is None
    without a session level; ``new_session`` marks sessions of the data that
    the posterior does not have (their deviations must be integrated out);
    ``pair`` is each rating's row of ``interaction`` (-1 for a judge x subject
    pair the posterior does not have).
    """

    theta: np.ndarray  # (S, subject, scale)
    loading: np.ndarray  # (S, item)
    cutpoints: np.ndarray  # (S, row, C-1)
    cut_row: np.ndarray  # (obs,) row of the cutpoint table of each rating
    zeta: np.ndarray | None = None  # (S, session, scale)
    sd_session: np.ndarray | None = None  # (S, scale)
    new_session: np.ndarray | None = None  # (session,) bool
    trend: np.ndarray | None = None  # (S, scale)
    time: np.ndarray | None = None  # (session,) centred session time
    discrimination: np.ndarray | None = None  # (S, judge)
    severity: np.ndarray | None = None  # (S, scale, judge)
    interaction: np.ndarray | None = None  # (S, pair, scale)
    sd_interaction: np.ndarray | None = None  # (S,)
    pair: np.ndarray | None = None  # (obs,)
    general: np.ndarray | None = None  # (S, subject)
    general_loading: np.ndarray | None = None  # (S, item)

    @property
    def n_samples(self) -> int:
        return self.theta.shape[0]


def _flat(da: xr.DataArray, samples: np.ndarray, **sel: Sequence[str]) -> np.ndarray:
    """Values of ``da`` at flat sample indices, other dims selected (and ordered) by label."""
    if sel:
        try:
            da = da.sel({k: list(v) for k, v in sel.items()})
        except KeyError as exc:
            raise CaltarsError(
                f"posterior variable {da.name!r} has no entry for label {exc}"
            ) from None
        da = da.transpose(*SAMPLE_DIMS, *sel.keys())
    else:
        da = da.transpose(*SAMPLE_DIMS, ...)
    n = da.sizes["chain"] * da.sizes["draw"]
    return np.asarray(da.values, dtype=float).reshape(n, *da.shape[2:])[samples]


def sample_index(
    post: xr.Dataset, draws: int | Sequence[int] | np.ndarray | None = None
) -> np.ndarray:
    """Flat (chain-major) sample indices of the chosen draw positions.

    ``draws``: None for every draw, an int ``n`` for ``n`` evenly spaced draws
    per chain (all when ``n`` is at least the chain length), or explicit draw
    positions.
    """
    n_chain, n_draw = post.sizes["chain"], post.sizes["draw"]
    pos = _draw_positions(n_draw, draws)
    return (np.arange(n_chain)[:, None] * n_draw + pos[None, :]).ravel()


def _draw_positions(n_draw: int, draws: int | Sequence[int] | np.ndarray | None) -> np.ndarray:
    if draws is None:
        return np.arange(n_draw)
    if isinstance(draws, int | np.integer):
        if draws < 1:
            raise ValueError(f"draws must be at least 1, got {draws}")
        if draws >= n_draw:
            return np.arange(n_draw)
        return np.unique(np.linspace(0, n_draw - 1, int(draws)).round().astype(int))
    pos = np.asarray(draws, dtype=int)
    if pos.size == 0 or pos.min() < 0 or pos.max() >= n_draw:
        raise ValueError(f"draw positions must lie in 0..{n_draw - 1}")
    return pos


def posterior_draws(
    post: xr.Dataset,
    data: RatingData,
    samples: np.ndarray | None = None,
    *,
    time_mean: float | None = None,
    allow_new_sessions: bool = False,
) -> PosteriorDraws:
    """Collect the draws the likelihood of ``data`` needs, aligned by label.

    Parameters
    ----------
    post : posterior Dataset (dims chain, draw, ...).
    data : the ratings to evaluate (the fitted data, or held-out ratings of
        the same subjects, judges and items).
    samples : flat sample indices (see :func:`sample_index`); default all.
    time_mean : the session time the fit centred the trend on (default: the
        mean over ``data.sessions``, right for the fitted data).
    allow_new_sessions : sessions missing from the posterior are allowed (their
        deviations are then integrated out by the marginal likelihood).
    """
    if samples is None:
        samples = np.arange(post.sizes["chain"] * post.sizes["draw"])
    subjects, items, judges = list(data.subjects), list(data.items), list(data.judges)
    scales = list(data.scales)
    theta = _flat(post["theta"], samples, subject=subjects, scale=scales)
    loading = _flat(post["loading"], samples, item=items)
    cut = post["cutpoints"]
    if "item" in cut.dims:
        cutpoints = _flat(cut, samples, item=items, cutpoint=list(cut["cutpoint"].values))
        cut_row = np.asarray(data.item_idx, dtype=np.int64)
    else:
        cutpoints = _flat(cut, samples, scale=scales, cutpoint=list(cut["cutpoint"].values))
        cut_row = np.asarray(data.scale_idx, dtype=np.int64)
    d = PosteriorDraws(theta=theta, loading=loading, cutpoints=cutpoints, cut_row=cut_row)
    if "zeta" in post:
        known = set(map(str, post["zeta"]["session"].values))
        labels = [str(x) for x in data.session_labels]
        new = np.array([lab not in known for lab in labels], dtype=bool)
        if new.any() and not allow_new_sessions:
            raise CaltarsError(
                f"the posterior has no session {labels[int(np.argmax(new))]!r} of the data"
            )
        zeta = np.zeros((len(samples), len(labels), len(scales)))
        if (~new).any():
            old = [lab for lab, n in zip(labels, new, strict=True) if not n]
            zeta[:, ~new] = _flat(post["zeta"], samples, session=old, scale=scales)
        d.zeta, d.new_session = zeta, new
        d.sd_session = _flat(post["sd_session"], samples, scale=scales)
    if "session_trend" in post:
        times = np.asarray(data.sessions["session_time"], dtype=float)
        centre = float(times.mean()) if time_mean is None else float(time_mean)
        d.trend = _flat(post["session_trend"], samples, scale=scales)
        d.time = times - centre
    if "discrimination" in post:
        d.discrimination = _flat(post["discrimination"], samples, judge=judges)
    if "severity" in post:
        d.severity = _flat(post["severity"], samples, scale=scales, judge=judges)
    if "interaction" in post:
        have = {str(v): n for n, v in enumerate(post["interaction"]["judge_subject"].values)}
        pair_labels = np.asarray(
            [
                f"{judges[j]}|{subjects[p]}"
                for j, p in zip(data.judge_idx, data.subject_idx, strict=True)
            ]
        )
        uniq, inv = np.unique(pair_labels, return_inverse=True)
        rows = np.array([have.get(u, -1) for u in uniq], dtype=np.int64)
        known_rows = sorted(set(rows[rows >= 0].tolist()))
        pos = {r: n for n, r in enumerate(known_rows)}
        d.pair = np.array([pos.get(r, -1) for r in rows], dtype=np.int64)[inv]
        inter = post["interaction"].isel(judge_subject=known_rows) if known_rows else None
        d.interaction = (
            _flat(inter, samples, judge_subject=list(inter["judge_subject"].values), scale=scales)
            if inter is not None
            else np.zeros((len(samples), 0, len(scales)))
        )
        d.sd_interaction = _flat(post["sd_interaction"], samples)
    if "general" in post:
        d.general = _flat(post["general"], samples, subject=subjects)
        d.general_loading = _flat(post["general_loading"], samples, item=items)
    return d


def _draws_of(fit: Fit, samples: np.ndarray | None = None) -> PosteriorDraws:
    return posterior_draws(fit.posterior, fit.data, samples)


# --------------------------------------------------------------------------- linear predictor


def _chunks(n_samples: int, n_obs: int) -> Iterator[slice]:
    step = max(1, CHUNK_ELEMENTS // max(n_obs, 1))
    for a in range(0, n_samples, step):
        yield slice(a, min(a + step, n_samples))


def _mu(
    d: PosteriorDraws,
    data: RatingData,
    sl: slice,
    obs: np.ndarray | slice = slice(None),
    with_zeta: bool = True,
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Linear predictor and its slope in eta (``discrimination * loading``), draws ``sl``.

    Terms are added in the model's order so that the result agrees with the
    PyMC graph to rounding.
    """
    p = data.subject_idx[obs]
    s = data.session_idx[obs]
    k = data.scale_idx[obs]
    i = data.item_idx[obs]
    j = data.judge_idx[obs]
    eta = d.theta[sl][:, p, k]
    if with_zeta and d.zeta is not None:
        eta = eta + d.zeta[sl][:, s, k]
    if d.trend is not None:
        assert d.time is not None  # set with the trend
        eta = eta + d.trend[sl][:, k] * d.time[s]
    lam = d.loading[sl][:, i]
    mu = lam * eta
    slope = lam
    if d.general is not None:
        assert d.general_loading is not None  # set with the general factor
        mu = mu + d.general_loading[sl][:, i] * d.general[sl][:, p]
    if d.discrimination is not None:
        disc = d.discrimination[sl][:, j]
        mu = disc * mu
        slope = disc * slope
    if d.severity is not None:
        mu = mu - d.severity[sl][:, k, j]
    if d.interaction is not None:
        assert d.pair is not None and d.sd_interaction is not None  # set with the interaction
        pair = d.pair[obs]
        known = pair >= 0
        g = np.empty_like(mu)
        g[:, known] = d.interaction[sl][:, pair[known], k[known]]
        if (~known).any():  # a judge x subject pair new to the posterior: draw it
            rng = rng or np.random.default_rng(0)
            new_pairs, where = np.unique(pair_code(data, obs)[~known], return_inverse=True)
            z = rng.normal(size=(g.shape[0], len(new_pairs), data.n_scales))
            g[:, ~known] = (z * d.sd_interaction[sl][:, None, None])[:, where, k[~known]]
        mu = mu + g
    return mu, slope


def pair_code(data: RatingData, obs: np.ndarray | slice = slice(None)) -> np.ndarray:
    """Judge x subject pair code of each rating (``judge * n_subjects + subject``)."""
    return data.judge_idx[obs].astype(np.int64) * data.n_subjects + data.subject_idx[obs]


def linear_predictor(fit: Fit, draws: int | Sequence[int] | None = None) -> xr.DataArray:
    """The linear predictor ``mu`` of every rating, per posterior draw.

    Parameters
    ----------
    fit : a fitted model.
    draws : None (every draw), ``n`` evenly spaced draws per chain, or draw positions.

    Returns
    -------
    DataArray (chain, draw, obs): ``mu`` as the model computes it (rating
    ``obs`` is row ``obs`` of ``fit.data.ratings``).
    """
    post, data = fit.posterior, fit.data
    pos = _draw_positions(post.sizes["draw"], draws)
    samples = sample_index(post, pos)
    d = _draws_of(fit, samples)
    out = np.empty((len(samples), data.n_ratings))
    for sl in _chunks(len(samples), data.n_ratings):
        out[sl] = _mu(d, data, sl)[0]
    return _as_sample_array(out, post, pos, "obs", np.arange(data.n_ratings), "mu")


def _as_sample_array(
    values: np.ndarray, post: xr.Dataset, pos: np.ndarray, dim: str, labels, name: str
) -> xr.DataArray:
    n_chain = post.sizes["chain"]
    return xr.DataArray(
        values.reshape(n_chain, len(pos), values.shape[-1]),
        dims=("chain", "draw", dim),
        coords={
            "chain": post["chain"].values,
            "draw": post["draw"].values[pos],
            dim: labels,
        },
        name=name,
    )


# --------------------------------------------------------------------------- log densities


def _bounds(
    d: PosteriorDraws, y: np.ndarray, sl: slice, obs: np.ndarray | slice
) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper cutpoint of each rating's category, (draws, obs)."""
    padded = pad_cutpoints(d.cutpoints[sl])
    row = d.cut_row[obs]
    return padded[:, row, y], padded[:, row, y + 1]


def _group_matrix(codes: np.ndarray, n_groups: int) -> sparse.csr_matrix:
    n = len(codes)
    return sparse.csr_matrix(
        (np.ones(n), (np.arange(n), np.asarray(codes, dtype=np.int64))), shape=(n, n_groups)
    )


def _group_codes(data: RatingData, by: str) -> tuple[np.ndarray, list[Any], str]:
    if by == "rating":
        return np.arange(data.n_ratings), list(range(data.n_ratings)), "obs"
    if by == "session":
        return np.asarray(data.session_idx), list(data.session_labels), "session"
    if by == "subject":
        return np.asarray(data.subject_idx), list(data.subjects), "subject"
    raise ValueError(f"by must be one of {', '.join(GROUPINGS)}, got {by!r}")


def log_likelihood(
    fit: Fit,
    by: str = "rating",
    *,
    draws: int | Sequence[int] | None = None,
    marginal: bool = False,
) -> xr.DataArray:
    """Log density of the observed ratings per posterior draw, per rating or summed per group.

    Parameters
    ----------
    fit : a fitted model.
    by : ``"rating"`` (one value per rating; draws x ratings values, large for
        big designs), ``"session"`` or ``"subject"`` (sums over the group's ratings).
    draws : None (every draw), ``n`` evenly spaced draws per chain, or draw positions.
    marginal : only with ``by="session"``: integrate each session's own
        deviations ``zeta[s, :]`` out (see the module docstring) instead of
        conditioning on their draws. Without a session level it changes nothing.

    Returns
    -------
    DataArray (chain, draw, obs | session | subject) of log densities (natural log).
    """
    post, data = fit.posterior, fit.data
    pos = _draw_positions(post.sizes["draw"], draws)
    samples = sample_index(post, pos)
    d = _draws_of(fit, samples)
    if marginal and by != "session":
        raise ValueError("marginal=True needs by='session'")
    codes, labels, dim = _group_codes(data, by)
    if marginal:
        values = session_marginal_loglik(d, data)
    elif by == "rating":
        values = rating_loglik(d, data)
    else:
        values = grouped_loglik(d, data, codes, len(labels))
    return _as_sample_array(values, post, pos, dim, labels, "log_likelihood")


def rating_loglik(
    d: PosteriorDraws, data: RatingData, obs: np.ndarray | slice = slice(None)
) -> np.ndarray:
    """Log density of each rating ``obs`` given the draws: array (draws, obs)."""
    y = np.asarray(data.y, dtype=np.int64)[obs]
    out = np.empty((d.n_samples, len(y)))
    for sl in _chunks(d.n_samples, len(y)):
        mu, _ = _mu(d, data, sl, obs)
        lo, hi = _bounds(d, y, sl, obs)
        out[sl] = cumulative_logit_logp(mu, lo, hi)
    return out


def grouped_loglik(
    d: PosteriorDraws, data: RatingData, codes: np.ndarray, n_groups: int
) -> np.ndarray:
    """Sum of the rating log densities within groups ``codes``: array (draws, groups)."""
    y = np.asarray(data.y, dtype=np.int64)
    mat = _group_matrix(codes, n_groups)
    out = np.empty((d.n_samples, n_groups))
    for sl in _chunks(d.n_samples, data.n_ratings):
        mu, _ = _mu(d, data, sl)
        lo, hi = _bounds(d, y, sl, slice(None))
        out[sl] = np.asarray(cumulative_logit_logp(mu, lo, hi) @ mat)
    return out


def session_marginal_loglik(
    d: PosteriorDraws, data: RatingData, rng: np.random.Generator | None = None
) -> np.ndarray:
    """Session log likelihood with each session's deviations integrated out: (draws, session).

    Adaptive Gauss-Hermite quadrature per draw, session and scale (see the
    module docstring). Without a session level in the posterior this is the
    plain sum of the session's rating log densities.
    """
    n_k = data.n_scales
    if d.zeta is None:
        return grouped_loglik(d, data, np.asarray(data.session_idx), data.n_sessions)
    assert d.sd_session is not None  # set with zeta
    y = np.asarray(data.y, dtype=np.int64)
    n_groups = data.n_sessions * n_k
    grp = np.asarray(data.session_idx, dtype=np.int64) * n_k + data.scale_idx
    mat = _group_matrix(grp, n_groups)
    group_scale = np.tile(np.arange(n_k), data.n_sessions)
    nodes, weights = np.polynomial.hermite.hermgauss(GH_NODES)
    out = np.empty((d.n_samples, data.n_sessions))
    for sl in _chunks(d.n_samples, data.n_ratings * 2):
        mu0, slope = _mu(d, data, sl, with_zeta=False, rng=rng)
        lo, hi = _bounds(d, y, sl, slice(None))
        sd = d.sd_session[sl][:, group_scale]  # (S_c, groups)
        var = sd**2
        # start from the drawn deviations (close to the conditional mode)
        z = d.zeta[sl].reshape(mu0.shape[0], -1).copy()
        for _ in range(NEWTON_STEPS):
            d1, d2 = cumulative_logit_derivatives(mu0 + slope * z[:, grp], lo, hi)
            grad = np.asarray((slope * d1) @ mat) - z / var
            hess = np.asarray((slope**2 * d2) @ mat) - 1.0 / var
            step = np.clip(-grad / hess, -3 * sd, 3 * sd)
            z = z + step
            if np.max(np.abs(step) / sd) < 1e-7:
                break
        _, d2 = cumulative_logit_derivatives(mu0 + slope * z[:, grp], lo, hi)
        hess = np.asarray((slope**2 * d2) @ mat) - 1.0 / var
        scale = np.sqrt(2.0 / -hess)  # sqrt(2) * sigma of the Laplace approximation
        terms = np.empty((len(nodes), *z.shape))
        for q, x in enumerate(nodes):
            zq = z + scale * x
            lp = cumulative_logit_logp(mu0 + slope * zq[:, grp], lo, hi)
            prior = -0.5 * zq**2 / var - np.log(sd) - 0.5 * np.log(2 * np.pi)
            terms[q] = np.asarray(lp @ mat) + prior + np.log(weights[q]) + x**2
        per_group = logsumexp(terms, axis=0) + np.log(scale)
        out[sl] = per_group.reshape(-1, data.n_sessions, n_k).sum(axis=2)
    return out


# --------------------------------------------------------------------------- replication


def replicate_ratings(fit: Fit, n_draws: int = 200, seed: int = 0) -> xr.DataArray:
    """New ratings of the same design, one set per (thinned) posterior draw.

    Parameters
    ----------
    fit : a fitted model.
    n_draws : number of posterior draws used, evenly spaced over all chains
        and draws (all draws when there are fewer).
    seed : random seed.

    Returns
    -------
    DataArray (sample, obs) of 0-based categories (``data.y`` coding), with
    ``chain`` and ``draw`` coordinates on ``sample``.
    """
    post, data = fit.posterior, fit.data
    n_total = post.sizes["chain"] * post.sizes["draw"]
    n = min(int(n_draws), n_total)
    if n < 1:
        raise ValueError(f"n_draws must be at least 1, got {n_draws}")
    samples = np.unique(np.linspace(0, n_total - 1, n).round().astype(int))
    d = _draws_of(fit, samples)
    rng = np.random.default_rng(seed)
    out = np.empty((len(samples), data.n_ratings), dtype=np.int64)
    for sl in _chunks(len(samples), data.n_ratings * 4):
        mu, _ = _mu(d, data, sl)
        tau = d.cutpoints[sl][:, d.cut_row]  # (S_c, obs, C-1)
        cum = expit(tau - mu[..., None])  # P(y <= c)
        u = rng.uniform(size=mu.shape)
        out[sl] = (u[..., None] > cum).sum(-1)
    return xr.DataArray(
        out,
        dims=("sample", "obs"),
        coords={
            "sample": np.arange(len(samples)),
            "chain": ("sample", post["chain"].values[samples // post.sizes["draw"]]),
            "draw": ("sample", post["draw"].values[samples % post.sizes["draw"]]),
            "obs": np.arange(data.n_ratings),
        },
        name="rating_rep",
    )
