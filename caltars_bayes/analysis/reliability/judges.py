"""Judge reliability: each judge's correlation with the true alliance, and the judges table."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numba
import numpy as np
import pandas as pd
from arviz_stats.base import array_stats

from caltars_bayes._core.dims import CI_PROB
from caltars_bayes.analysis.reliability.components import _cutpoints_by_item, _take, _thin
from caltars_bayes.inference.diagnostics import stamp
from caltars_bayes.inference.tables import judges, session_alliance
from caltars_bayes.model.kernels import vexp

if TYPE_CHECKING:
    from caltars_bayes.inference.fit import Fit

#: Draws used by :func:`judge_reliability` by default.
JUDGE_DRAWS = 400
#: Category probabilities (judges x sessions x items x cutpoints x draws) that
#: :func:`judge_reliability` evaluates at most by default: designs above it use
#: fewer draws, never fewer than :data:`MIN_JUDGE_DRAWS`. It keeps 400 draws up
#: to 10x the founding design (3 judges x 2,080 sessions x 30 items x 4
#: cutpoints). Measured on the crossed real-size shape (2,972 judges x 1,128
#: sessions x 1 item x 4 cutpoints, 100 draws at this bound): 400 draws took
#: 126 s with whole-array numpy; a draw now takes 0.013 s with
#: :func:`_judge_correlations` against 0.18-0.21 s (same run, 2 cores).
JUDGE_WORK = 1.5e9
#: the fewest draws :data:`JUDGE_WORK` leaves
MIN_JUDGE_DRAWS = 100
#: the absent offset and general term of :func:`_judge_correlations`
_NONE3 = np.empty((0, 0, 0))
_NONE2 = np.empty((0, 0))


def judge_draws_for(n_judges: int, n_sessions: int, n_items: int, n_cutpoints: int) -> int:
    """Default draws of :func:`judge_reliability`: :data:`JUDGE_DRAWS`, fewer (down
    to :data:`MIN_JUDGE_DRAWS`) where the design would exceed :data:`JUDGE_WORK`."""
    per_draw = max(1, n_judges * n_sessions * n_items * n_cutpoints)
    return int(min(JUDGE_DRAWS, max(MIN_JUDGE_DRAWS, JUDGE_WORK // per_draw)))


@numba.njit(cache=True, error_model="numpy")
def _judge_correlations(
    eta: np.ndarray,
    loading: np.ndarray,
    cut: np.ndarray,
    disc: np.ndarray,
    sev: np.ndarray,
    item_scale: np.ndarray,
    offset: np.ndarray,
    general_term: np.ndarray,
) -> np.ndarray:
    """Each judge's correlation with the true alliance over sessions, per scale, in one draw.

    eta (S, K), loading (I,), cut (I, C), disc (J,), sev (K, J), item_scale
    (I,); offset (J, S, K) added to the latent mean (interaction) and
    general_term (S, I), each empty (size 0) when absent. Returns (J, K).

    For judge j, session s and item i of scale k the latent mean is ``mu =
    disc_j (loading_i eta_sk + general_si) - sev_kj (+ offset_jsk)``; with
    ``p_c = P(y > c) = 1 / (1 + exp(cut_ic - mu))`` the rating's mean is
    ``sum_c p_c`` and its variance ``sum_c (2c + 1) p_c - (sum_c p_c)^2``. The
    judge's scale score for the session has mean ``m_s`` (the mean over the
    scale's items) and rating-noise variance ``v_s`` (their variances over
    n_k^2); its correlation with ``eta_sk`` over sessions is
    ``cov(m, eta) / sqrt((var(m) + mean(v)) var(eta))``.

    One pass per judge over sessions with running sums, no (J, S, I, C)
    temporaries, ``exp`` by :func:`~caltars_bayes.model.kernels.vexp`: on the
    crossed real-size shape 15x faster per draw than the same sums written
    with whole numpy arrays (:data:`JUDGE_WORK`), which the tests keep as the
    reference (tests/analysis/test_judge_kernel.py).
    """
    n_s, n_k = eta.shape
    n_i, n_c = cut.shape
    n_j = disc.shape[0]
    has_offset = offset.size > 0
    has_general = general_term.size > 0
    count = np.zeros(n_k)
    for i in range(n_i):
        count[item_scale[i]] += 1.0
    e = np.empty((n_s, n_k))
    e_var = np.zeros(n_k)
    for k in range(n_k):
        mean_k = eta[:, k].mean()
        for s in range(n_s):
            e[s, k] = eta[s, k] - mean_k
            e_var[k] += e[s, k] ** 2
    base = np.empty((n_i, n_s))
    for i in range(n_i):
        for s in range(n_s):
            base[i, s] = loading[i] * eta[s, item_scale[i]]
            if has_general:
                base[i, s] += general_term[s, i]
    mu = np.empty(n_s)
    z = np.empty(n_s)
    ex = np.empty(n_s)
    ey = np.empty(n_s)
    q = np.empty(n_s)
    m = np.empty((n_k, n_s))
    v = np.empty((n_k, n_s))
    corr = np.empty((n_j, n_k))
    for j in range(n_j):
        m[:] = 0.0
        v[:] = 0.0
        for i in range(n_i):
            k = item_scale[i]
            for s in range(n_s):
                mu[s] = disc[j] * base[i, s] - sev[k, j]
                if has_offset:
                    mu[s] += offset[j, s, k]
            ey[:] = 0.0
            q[:] = 0.0
            for c in range(n_c):
                for s in range(n_s):
                    z[s] = cut[i, c] - mu[s]
                vexp(z, ex)
                for s in range(n_s):
                    p = 1.0 / (1.0 + ex[s])
                    ey[s] += p
                    q[s] += (2 * c + 1) * p
            w = 1.0 / count[k]
            for s in range(n_s):
                m[k, s] += w * ey[s]
                v[k, s] += w * w * (q[s] - ey[s] ** 2)
        for k in range(n_k):
            sm = smm = sme = sv = 0.0
            for s in range(n_s):
                sm += m[k, s]
                smm += m[k, s] ** 2
                sme += m[k, s] * e[s, k]
                sv += v[k, s]
            var_x = smm / n_s - (sm / n_s) ** 2 + sv / n_s
            corr[j, k] = (sme / n_s) / np.sqrt(var_x * e_var[k] / n_s)
    return corr


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
    item_scale = np.asarray(data.item_scale_idx, dtype=np.int64)
    corr = np.empty((len(ci), n_j, data.n_scales))
    for d in range(len(ci)):
        offset = np.ascontiguousarray(inter[d][:, subj]) if inter is not None else _NONE3
        gterm = (
            gl[d][None, :] * gen[d][subj][:, None] if gen is not None and gl is not None else _NONE2
        )
        corr[d] = _judge_correlations(
            eta[d], loading[d], cut[d], disc[d], sev[d], item_scale, offset, gterm
        )
    if n_j >= 2:
        others = (corr.sum(1, keepdims=True) - corr) / (n_j - 1)
        diff = corr - others
    else:
        others = np.full_like(corr, np.nan)
        diff = np.full_like(corr, np.nan)
    hdi = array_stats.hdi(corr, prob, axis=0)  # (J, K, 2)
    if n_j >= 2:
        flag = array_stats.hdi(diff, prob, axis=0)[..., 1] < 0
        pbelow = (diff < 0).mean(0)
    else:
        flag = np.zeros((n_j, data.n_scales), dtype=bool)
        pbelow = np.full((n_j, data.n_scales), np.nan)
    n_draws = len(ci)
    table = {
        "judge": np.repeat(np.asarray(list(data.judges), dtype=object), data.n_scales),
        "scale": np.tile(np.asarray(list(data.scales), dtype=object), n_j),
        "mean": corr.mean(0),
        "sd": corr.std(0, ddof=1) if n_draws > 1 else np.full((n_j, data.n_scales), np.nan),
        "median": np.median(corr, 0),
        "hdi_low": hdi[..., 0],
        "hdi_high": hdi[..., 1],
        "panel_mean": others.mean(0),
        "difference": np.median(diff, 0),
        "prob_below_panel": pbelow,
        "flag": flag,
        "n_draws": np.full((n_j, data.n_scales), n_draws),
    }
    rows = {k: np.asarray(v).reshape(-1) for k, v in table.items()}
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
