"""Judge reliability: each judge's correlation with the true alliance, and the judges table."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from arviz_stats.base import array_stats

from caltars_bayes._core.dims import CI_PROB
from caltars_bayes.analysis.reliability.components import _cutpoints_by_item, _take, _thin
from caltars_bayes.inference.diagnostics import stamp
from caltars_bayes.inference.tables import judges, session_alliance

if TYPE_CHECKING:
    from caltars_bayes.inference.fit import Fit

#: Draws used by :func:`judge_reliability` by default.
JUDGE_DRAWS = 400
#: Category probabilities (judges x sessions x items x cutpoints x draws) that
#: :func:`judge_reliability` evaluates at most by default: designs above it use
#: fewer draws, never fewer than :data:`MIN_JUDGE_DRAWS`. It keeps 400 draws up
#: to 10x the founding design (3 judges x 2,080 sessions x 30 items x 4
#: cutpoints); measured (benchmarks/real_size.py, crossed shape: 2,972 judges
#: x 1,128 sessions x 1 item x 4 cutpoints) 400 draws took 126 s.
JUDGE_WORK = 1.5e9
#: the fewest draws :data:`JUDGE_WORK` leaves
MIN_JUDGE_DRAWS = 100


def judge_draws_for(n_judges: int, n_sessions: int, n_items: int, n_cutpoints: int) -> int:
    """Default draws of :func:`judge_reliability`: :data:`JUDGE_DRAWS`, fewer (down
    to :data:`MIN_JUDGE_DRAWS`) where the design would exceed :data:`JUDGE_WORK`."""
    per_draw = max(1, n_judges * n_sessions * n_items * n_cutpoints)
    return int(min(JUDGE_DRAWS, max(MIN_JUDGE_DRAWS, JUDGE_WORK // per_draw)))


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
    fit: Fit, prob: float = CI_PROB, *, max_draws: int | None = -1, seed: int = 0
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

    ``max_draws``: draws used (evenly thinned within chains; None: all); by
    default (a negative value) :func:`judge_draws_for` the design: 400, fewer
    for very large designs (``n_draws`` in the table says how many).

    Returns
    -------
    DataFrame with columns ``judge, scale, mean, sd, median, hdi_low,
    hdi_high`` (of the correlation), ``panel_mean`` (posterior mean of the
    other judges' mean correlation), ``difference`` (posterior median of the
    difference), ``prob_below_panel`` (posterior probability the judge's
    correlation is below the others'), ``flag``, ``n_draws``, ``converged``.
    """
    post, data = fit.posterior, fit.data
    n_c, n_d = post.sizes["chain"], post.sizes["draw"]
    if max_draws is not None and max_draws < 0:
        cuts = data.instrument.n_categories - 1
        max_draws = judge_draws_for(data.n_judges, data.n_sessions, data.n_items, cuts)
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
    return stamp(pd.DataFrame(rows), fit.diagnostics)


def judges_table(fit: Fit, prob: float = CI_PROB) -> pd.DataFrame:
    """The judges table (``judges.csv``): severity, discrimination and reliability.

    :func:`caltars_bayes.inference.tables.judges` (severity per scale, discrimination)
    plus one ``parameter = "correlation"`` row per judge and scale from
    :func:`judge_reliability`.

    Returns
    -------
    DataFrame with columns ``judge, parameter, scale, mean, sd, median,
    hdi_low, hdi_high, n_ratings, prob_below_panel, flag, converged``
    (``prob_below_panel`` and ``flag`` are set on correlation rows only).
    """
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
    return stamp(out, fit.diagnostics)
