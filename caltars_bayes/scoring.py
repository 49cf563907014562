"""Scoring new subjects with a calibration: per-draw Laplace fits, importance-corrected.

Target. Scores are drawn from the *cut* posterior of the new trial's unknowns
``u`` (subjects' ``theta`` and ``zeta``, new judges' severity and log
discrimination) given the calibration's parameters ``phi``::

    p(u | y_new, calibration) = integral of p(u | y_new, phi) p(phi | y_calibration) dphi

The calibration is not updated by the new ratings (that is what a joint refit
or ``fit --prior-from`` does), so a subject's score does not depend on who
else is scored in the same batch (except through new judges they share).

Method, for each calibration draw ``phi_s`` (vectorised over draws and subjects):

1. *Mode.* Newton's method on the log posterior of ``u`` given ``phi_s``. Given
   ``phi_s`` every rating's linear predictor ``mu`` is linear in ``theta`` and
   ``zeta`` and the cumulative-logit log likelihood is concave in ``mu``, so
   without new judges the problem is concave and Newton converges in a few
   steps (with step halving as a safeguard). New judges' parameters are set
   to the mode of their Laplace-approximated *marginal* posterior (an outer
   Newton iteration, see :meth:`_Engine.fit`; their discrimination enters
   multiplicatively and uses the Gauss-Newton curvature), the subjects to
   their conditional mode given them.
   The linear systems are solved by eliminating, in turn, the session
   deviations (their precision matrix is diagonal), then each subject's
   ``theta`` (a K x K block), leaving a small system for the new judges (the
   Schur complement), so the cost is linear in subjects and sessions.
2. *Draw.* One draw from the Gaussian with that mode and precision (the
   negative Hessian), by the same block factorisation: new judges from their
   marginal, then ``theta`` given them, then ``zeta`` given both.
3. *Importance correction.* Each subject's draw gets the log weight
   ``log p(x, y | phi_s) - log p(x~, y | phi_s) + |z|^2 / 2`` where ``x~`` is
   the Gaussian's (conditional) mean and ``z`` the standard normals that made
   the draw: the ratio of the exact density to its quadratic approximation.
   Weights are Pareto-smoothed over the calibration draws (PSIS) per subject;
   a Pareto k-hat above 0.7 with a relative effective sample size below 0.5
   marks the subject's scores as unreliable (``converged`` False). With one
   rating or a handful the posterior can be skewed (e.g. every rating at the
   top of the scale); the weights correct that.

New judges (not in the calibration) get the calibrated judge population as
prior, per draw: severity ~ Normal(0, sd_severity) per scale and log
discrimination ~ Normal(0, sd_log_discrimination). They are estimated jointly
with the subjects they rate (their draws are not importance weighted). Rater
drift: see :func:`judge_drift`. The method and its checks are written up in
``docs/calibration.md``.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import xarray as xr
from scipy.optimize import brentq
from scipy.special import expit, ndtr

from caltars_bayes.errors import DataError
from caltars_bayes.io import atomic_write_dir, json_writer

if TYPE_CHECKING:
    from caltars_bayes.calibration import Calibration
    from caltars_bayes.data import RatingData

#: Stand-in for +-infinity at the ends of the cutpoint table.
_BIG = 1e10
#: Largest (draws x ratings) array built at once: draws are processed in chunks.
CHUNK_ELEMENTS = 2_000_000
MAX_NEWTON = 60
NEWTON_TOL = 1e-7
SKIP_SEARCH_DECREMENT = 1e-6
MAX_OUTER = 40
#: Largest change of a new judge's parameter in one outer Newton step (logits).
MAX_JUDGE_STEP = 1.0
#: Outer iterations stop when no new-judge parameter moves more than this (logits).
OUTER_TOL = 1e-3
#: Outer steps smaller than this are taken without checking the Laplace marginal.
SMALL_JUDGE_STEP = 0.05

#: A subject's importance weights fail when their Pareto k-hat exceeds
#: PARETO_K_MAX *and* they matter (relative effective sample size below
#: MIN_RELATIVE_ESS). k-hat alone is unreliable for nearly constant weights
#: (log-weight SD of a few hundredths, as whenever the Laplace draw is close).
PARETO_K_MAX = 0.7
MIN_RELATIVE_ESS = 0.5
#: Rater drift: family-wise level of the population band, and the posterior
#: probability of lying outside it that flags a judge.
DRIFT_ALPHA = 0.05
DRIFT_PROB = 0.9
#: A new judge's parameter is assessed for drift when its own ratings carry at
#: least this fraction of the population prior's information (precision) on it.
MIN_OWN_INFORMATION = 0.25
CI_PROB = 0.95


# --------------------------------------------------------------------------- summaries


def weighted_describe(
    x: np.ndarray, log_w: np.ndarray | None = None, prob: float = CI_PROB
) -> dict[str, np.ndarray]:
    """Weighted mean, sd and highest-density interval of draws, row by row.

    Parameters
    ----------
    x : values, shape ``(rows, draws)``.
    log_w : log importance weights of the same shape (uniform when ``None``).
    prob : HDI probability.

    Returns
    -------
    dict with arrays ``mean, sd, hdi_low, hdi_high`` (one value per row). The
    sd uses the reliability-weights correction (``ddof=1`` for equal weights);
    the HDI is the shortest interval between two draws whose weights sum to at
    least ``prob``.
    """
    x = np.atleast_2d(np.asarray(x, dtype=float))
    q, n = x.shape
    if log_w is None:
        w = np.full((q, n), 1.0 / n)
    else:
        lw = np.atleast_2d(np.asarray(log_w, dtype=float))
        lw = lw - lw.max(axis=1, keepdims=True)
        w = np.exp(lw)
        w /= w.sum(axis=1, keepdims=True)
    mean = (w * x).sum(axis=1)
    var = (w * (x - mean[:, None]) ** 2).sum(axis=1)
    denom = 1.0 - (w**2).sum(axis=1)
    sd = np.sqrt(np.where(denom > 0, var / np.where(denom > 0, denom, 1.0), 0.0))
    order = np.argsort(x, axis=1, kind="stable")
    xs = np.take_along_axis(x, order, axis=1)
    ws = np.take_along_axis(w, order, axis=1)
    cum = np.cumsum(ws, axis=1)
    prev = np.concatenate([np.zeros((q, 1)), cum[:, :-1]], axis=1)
    # for each start i, the first end j with cum[j] - prev[i] >= prob; rows are
    # offset by 2 so that one sorted search serves every row
    off = 2.0 * np.arange(q)[:, None]
    flat = (cum + off).ravel()
    target = (prev + prob - 1e-12 + off).ravel()
    j = np.searchsorted(flat, target, side="left").reshape(q, n) - (np.arange(q) * n)[:, None]
    ok = j < n
    jj = np.minimum(j, n - 1)
    width = np.where(ok, np.take_along_axis(xs, jj, axis=1) - xs, np.inf)
    best = np.argmin(width, axis=1)
    lo = xs[np.arange(q), best]
    hi = xs[np.arange(q), jj[np.arange(q), best]]
    return {"mean": mean, "sd": sd, "hdi_low": lo, "hdi_high": hi}


# --------------------------------------------------------------------------- design


@dataclass
class _Design:
    """The new ratings as index arrays, and the sparse sums the Newton steps need."""

    subjects: list[str]
    sessions: pd.DataFrame
    scales: list[str]
    new_judges: list[str]
    n_new_ratings: np.ndarray  # ratings per new judge
    n_new_subjects: np.ndarray  # subjects rated per new judge
    r_subj: np.ndarray
    r_ses: np.ndarray
    r_k: np.ndarray
    r_item: np.ndarray
    r_row: np.ndarray
    r_y: np.ndarray
    r_known: np.ndarray  # index of a calibrated judge, -1 for a new one
    r_new: np.ndarray  # index of a new judge, -1 for a calibrated one
    ses_subj: np.ndarray
    ses_time: np.ndarray  # centred as in the calibration (0 without a trend)
    m_cell: sp.csr_matrix  # ratings -> session x scale cells
    m_subj: sp.csr_matrix  # ratings -> subjects
    m_ses_subj: sp.csr_matrix  # subjects x sessions (sums over a subject's sessions)
    m_kj: sp.csr_matrix | None  # ratings -> (new judge, scale)
    m_j: sp.csr_matrix | None  # ratings -> new judge
    m_cj: sp.csr_matrix | None  # ratings -> (session, scale, new judge)

    @property
    def n_subjects(self) -> int:
        return len(self.subjects)

    @property
    def n_sessions(self) -> int:
        return len(self.sessions)

    @property
    def n_scales(self) -> int:
        return len(self.scales)

    @property
    def n_new(self) -> int:
        return len(self.new_judges)


def _indicator(idx: np.ndarray, n_cols: int, mask: np.ndarray | None = None) -> sp.csr_matrix:
    """A (len(idx), n_cols) 0/1 matrix with a one at (r, idx[r]) for rows kept by ``mask``."""
    n = len(idx)
    rows = np.arange(n)
    if mask is not None:
        rows, idx = rows[mask], idx[mask]
    return sp.csr_matrix((np.ones(len(rows)), (rows, idx)), shape=(n, n_cols))


def build_design(
    data: RatingData, cal: Calibration, all_new: bool = False
) -> tuple[_Design, list[str]]:
    """Index the new ratings against the calibration; also return notes for the report."""
    notes: list[str] = []
    k_n = data.n_scales
    judge_level = "severity" in cal.draws or "discrimination" in cal.draws
    known = cal.judges if judge_level and not all_new else []
    pos = {j: i for i, j in enumerate(known)}
    judges = list(data.judges)
    if not judge_level:
        notes.append(
            "the calibration has no judge level (one judge): every judge is treated as the "
            "calibrated one and rater drift cannot be checked"
        )
        new: list[str] = []
        j_known = np.zeros(len(judges), dtype=np.int64)
        j_new = np.full(len(judges), -1, dtype=np.int64)
    else:
        new = [j for j in judges if j not in pos]
        newpos = {j: i for i, j in enumerate(new)}
        j_known = np.array([pos.get(j, -1) for j in judges], dtype=np.int64)
        j_new = np.array([newpos.get(j, -1) for j in judges], dtype=np.int64)
    r_known = j_known[data.judge_idx]
    r_new = j_new[data.judge_idx]
    cut_dims = cal.draws["cutpoints"].dims
    r_row = np.asarray(data.item_idx if "item" in cut_dims else data.scale_idx, dtype=np.int64)
    n_ses = data.n_sessions
    ses_subj = np.asarray(data.session_subject_idx, dtype=np.int64)
    times = np.asarray(data.sessions["session_time"], dtype=float)
    if "session_trend" in cal.draws:
        ses_time = times - float(cal.meta.get("session_time_mean", 0.0))
        notes.append(
            "session trend: session times are centred at the calibration trial's mean "
            f"({cal.meta.get('session_time_mean', 0.0):g})"
        )
    else:
        ses_time = np.zeros(n_ses)
    cell = np.asarray(data.session_idx, dtype=np.int64) * k_n + np.asarray(data.scale_idx)
    m_cell = _indicator(cell, n_ses * k_n)
    m_subj = _indicator(np.asarray(data.subject_idx, dtype=np.int64), data.n_subjects)
    m_ses_subj = sp.csr_matrix(
        (np.ones(n_ses), (ses_subj, np.arange(n_ses))), shape=(data.n_subjects, n_ses)
    )
    n_new = len(new)
    m_kj = m_j = m_cj = None
    n_new_ratings = np.zeros(n_new, dtype=np.int64)
    n_new_subjects = np.zeros(n_new, dtype=np.int64)
    if n_new:
        isnew = r_new >= 0
        rn = np.maximum(r_new, 0)
        m_kj = _indicator(rn * k_n + np.asarray(data.scale_idx), n_new * k_n, isnew)
        m_j = _indicator(rn, n_new, isnew)
        m_cj = _indicator(cell * n_new + rn, n_ses * k_n * n_new, isnew)
        n_new_ratings = np.bincount(r_new[isnew], minlength=n_new)
        pairs = np.unique(r_new[isnew] * data.n_subjects + data.subject_idx[isnew])
        n_new_subjects = np.bincount(pairs // data.n_subjects, minlength=n_new)
        notes.append(
            f"{n_new} judge(s) not in the calibration, estimated with the calibrated judge "
            f"population as prior: {', '.join(new)}"
        )
    design = _Design(
        subjects=list(data.subjects),
        sessions=data.sessions.reset_index(drop=True),
        scales=list(data.scales),
        new_judges=new,
        n_new_ratings=n_new_ratings,
        n_new_subjects=n_new_subjects,
        r_subj=np.asarray(data.subject_idx, dtype=np.int64),
        r_ses=np.asarray(data.session_idx, dtype=np.int64),
        r_k=np.asarray(data.scale_idx, dtype=np.int64),
        r_item=np.asarray(data.item_idx, dtype=np.int64),
        r_row=r_row,
        r_y=np.asarray(data.y, dtype=np.int64),
        r_known=r_known,
        r_new=r_new,
        ses_subj=ses_subj,
        ses_time=ses_time,
        m_cell=m_cell,
        m_subj=m_subj,
        m_ses_subj=m_ses_subj,
        m_kj=m_kj,
        m_j=m_j,
        m_cj=m_cj,
    )
    return design, notes


def _rsum(values: np.ndarray, m: sp.csr_matrix) -> np.ndarray:
    """Sum (draws, ratings) values into (draws, groups) with an indicator matrix."""
    return np.asarray(m.T @ values.T).T


def _ssum(values: np.ndarray, m_ses_subj: sp.csr_matrix) -> np.ndarray:
    """Sum (draws, sessions, ...) over each subject's sessions -> (draws, subjects, ...)."""
    s, n = values.shape[:2]
    rest = values.shape[2:]
    flat = np.moveaxis(values, 1, 0).reshape(n, -1)
    out = np.asarray(m_ses_subj @ flat)
    return np.moveaxis(out.reshape(m_ses_subj.shape[0], s, *rest), 0, 1)


# --------------------------------------------------------------------------- parameters


@dataclass
class _Params:
    """One chunk of calibration draws, in the arrays the Newton steps use."""

    lam: np.ndarray  # (S, I)
    cut: np.ndarray  # (S, rows, C + 1), padded with -BIG / +BIG
    prec: np.ndarray  # (S, K, K) inverse of the subject covariance
    sd_ses: np.ndarray  # (S, K), 0 without a session level
    trend: np.ndarray  # (S, K)
    sev: np.ndarray  # (S, K, J) calibrated judges (zeros when absent)
    disc: np.ndarray  # (S, J)
    sd_sev: np.ndarray  # (S,)
    sd_ld: np.ndarray  # (S,)
    has_sev: bool
    has_disc: bool


def _params(cal: Calibration, sel: slice) -> _Params:
    ds = cal.draws.isel(draw=sel)
    s = ds.sizes["draw"]
    k = ds.sizes["scale"]
    sd_a = ds["sd_alliance"].transpose("draw", "scale").values
    corr = ds["factor_corr"].transpose("draw", "scale", "scale2").values
    sigma = corr * sd_a[:, :, None] * sd_a[:, None, :]
    cut = ds["cutpoints"].values
    pad = np.concatenate(
        [np.full((*cut.shape[:2], 1), -_BIG), cut, np.full((*cut.shape[:2], 1), _BIG)], axis=2
    )
    n_j = max(len(cal.judges), 1)
    has_sev = "severity" in ds
    has_disc = "discrimination" in ds
    sev = (
        ds["severity"].transpose("draw", "scale", "judge").values
        if has_sev
        else np.zeros((s, k, n_j))
    )
    disc = ds["discrimination"].transpose("draw", "judge").values if has_disc else np.ones((s, n_j))
    return _Params(
        lam=ds["loading"].transpose("draw", "item").values,
        cut=pad,
        prec=np.linalg.inv(sigma),
        sd_ses=(
            ds["sd_session"].transpose("draw", "scale").values
            if "sd_session" in ds
            else np.zeros((s, k))
        ),
        trend=(
            ds["session_trend"].transpose("draw", "scale").values
            if "session_trend" in ds
            else np.zeros((s, k))
        ),
        sev=sev,
        disc=disc,
        sd_sev=ds["sd_severity"].values if "sd_severity" in ds else np.ones(s),
        sd_ld=ds["sd_log_discrimination"].values if "sd_log_discrimination" in ds else np.ones(s),
        has_sev=has_sev,
        has_disc=has_disc,
    )


def rating_loglik(mu: np.ndarray, tau_lo: np.ndarray, tau_hi: np.ndarray) -> np.ndarray:
    """Cumulative-logit log probability of each rating, evaluated on its safe side.

    ``log(F(tau_hi - mu) - F(tau_lo - mu))`` with both logistic values taken on
    the side of ``mu`` where they are small (``F(x) = 1 - F(-x)``), so the
    difference never cancels (as ``caltars_bayes.model.cumulative_logit_logp``).
    """
    a, b = tau_hi - mu, tau_lo - mu
    mirror = (a + b) > 0
    hi = np.where(mirror, -b, a)
    lo = np.where(mirror, -a, b)
    with np.errstate(divide="ignore"):
        return np.log(expit(hi) - expit(lo))


def rating_derivatives(
    mu: np.ndarray, tau_lo: np.ndarray, tau_hi: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """First and second derivatives of the rating log probability in ``mu``.

    With ``F`` the logistic CDF, ``a = tau_hi - mu`` and ``b = tau_lo - mu``:
    ``d/dmu = F(a) + F(b) - 1`` and ``d2/dmu2 = -(F(a)(1 - F(a)) + F(b)(1 - F(b)))``.
    """
    fa, fb = expit(tau_hi - mu), expit(tau_lo - mu)
    return fa + fb - 1.0, -(fa * (1.0 - fa) + fb * (1.0 - fb))


# --------------------------------------------------------------------------- the engine


@dataclass
class _State:
    theta: np.ndarray  # (S, P, K)
    zeta: np.ndarray  # (S, N, K)
    sev: np.ndarray  # (S, Jn, K) new judges
    ld: np.ndarray  # (S, Jn)

    def copy(self) -> _State:
        return _State(self.theta.copy(), self.zeta.copy(), self.sev.copy(), self.ld.copy())


class _Engine:
    """Newton fits and Laplace draws for one chunk of calibration draws."""

    def __init__(self, d: _Design, p: _Params) -> None:
        self.d, self.p = d, p
        s = p.lam.shape[0]
        self.S = s
        self.lam_r = p.lam[:, d.r_item]
        self.tau_lo = p.cut[:, d.r_row, d.r_y]
        self.tau_hi = p.cut[:, d.r_row, d.r_y + 1]
        self.isnew = d.r_new >= 0
        kn = np.maximum(d.r_known, 0)
        self.disc_r = p.disc[:, kn]
        self.sev_r = p.sev[:, d.r_k, kn]
        self.trend_r = p.trend[:, d.r_k] * d.ses_time[d.r_ses][None, :]
        sd = p.sd_ses
        self.session_level = bool(np.any(sd > 0))
        self.pz = np.where(sd > 0, 1.0 / np.where(sd > 0, sd, 1.0) ** 2, 0.0)  # (S, K)
        self.n_sev = d.n_new * d.n_scales if (d.n_new and p.has_sev) else 0
        self.n_ld = d.n_new if (d.n_new and p.has_disc) else 0
        self.V = self.n_sev + self.n_ld

    # ---- the linear predictor and the objective

    def _mu(self, st: _State) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        d = self.d
        eta = st.theta[:, d.r_subj, d.r_k] + st.zeta[:, d.r_ses, d.r_k] + self.trend_r
        alpha, delta = self.disc_r, self.sev_r
        if d.n_new:
            rn = np.maximum(d.r_new, 0)
            if self.p.has_disc:
                alpha = np.where(self.isnew, np.exp(st.ld[:, rn]), alpha)
            if self.p.has_sev:
                delta = np.where(self.isnew, st.sev[:, rn, d.r_k], delta)
            else:
                delta = np.where(self.isnew, 0.0, delta)
            if not self.p.has_disc:
                alpha = np.where(self.isnew, 1.0, alpha)
        c = alpha * self.lam_r
        e = c * eta
        return e - delta, c, e

    def objective(self, st: _State) -> tuple[np.ndarray, np.ndarray]:
        """Log posterior (up to a constant): per (draw, subject), and the new judges' prior."""
        d, p = self.d, self.p
        mu, _, _ = self._mu(st)
        ll = _rsum(rating_loglik(mu, self.tau_lo, self.tau_hi), d.m_subj)
        quad = np.einsum("spk,skl,spl->sp", st.theta, p.prec, st.theta)
        zq = _ssum((st.zeta**2 * self.pz[:, None, :]).sum(-1), d.m_ses_subj)
        obj = ll - 0.5 * quad - 0.5 * zq
        vprior = np.zeros(self.S)
        if self.n_sev:
            vprior -= 0.5 * (st.sev**2).sum((1, 2)) / p.sd_sev**2
        if self.n_ld:
            vprior -= 0.5 * (st.ld**2).sum(1) / p.sd_ld**2
        return obj, vprior

    # ---- the Newton system

    def system(self, st: _State, with_v: bool = True) -> dict[str, np.ndarray]:
        """Gradient and (Gauss-Newton) precision, with the session deviations eliminated.

        ``with_v=False``: the new judges' parameters are held at their values
        (the subjects-only problem, concave in theta and zeta).
        """
        d, p = self.d, self.p
        S, N, K, Jn = self.S, d.n_sessions, d.n_scales, d.n_new
        mu, c, e = self._mu(st)
        g, h = rating_derivatives(mu, self.tau_lo, self.tau_hi)
        w = -h
        L = _rsum(w * c * c, d.m_cell).reshape(S, N, K)
        gl = _rsum(g * c, d.m_cell).reshape(S, N, K)
        sd2 = (p.sd_ses**2)[:, None, :]
        inv_d = sd2 / (1.0 + sd2 * L)  # 1 / (1/sd^2 + L); 0 without a session level
        r = L * inv_d
        g_zeta = gl - st.zeta * self.pz[:, None, :]
        g_theta = _ssum(gl, d.m_ses_subj) - np.einsum("skl,spl->spk", p.prec, st.theta)
        a = p.prec[:, None, :, :] + _diag(_ssum(L * (1.0 - r), d.m_ses_subj))
        g_theta_r = g_theta - _ssum(r * g_zeta, d.m_ses_subj)
        out = {
            "L": L,
            "inv_d": inv_d,
            "g_zeta": g_zeta,
            "g_theta": g_theta,
            "A": a,
            "g_theta_r": g_theta_r,
        }
        if not (self.V and with_v):
            return out
        # new judges: the couplings F (session cell x judge) and their direct curvature
        wc = np.where(self.isnew, w * c, 0.0)
        fd = -_rsum(wc, d.m_cj).reshape(S, N, K, Jn)
        fl = _rsum(wc * e, d.m_cj).reshape(S, N, K, Jn)
        hdd = _rsum(np.where(self.isnew, w, 0.0), d.m_kj).reshape(S, Jn, K)
        hdl = -_rsum(np.where(self.isnew, w * e, 0.0), d.m_kj).reshape(S, Jn, K)
        hll = _rsum(np.where(self.isnew, w * e * e, 0.0), d.m_j)
        gsev = -_rsum(np.where(self.isnew, g, 0.0), d.m_kj).reshape(S, Jn, K)
        gsev = gsev - st.sev / p.sd_sev[:, None, None] ** 2
        gld = _rsum(np.where(self.isnew, g * e, 0.0), d.m_j) - st.ld / p.sd_ld[:, None] ** 2
        # eliminate zeta
        ed = _ssum(fd * (1.0 - r)[..., None], d.m_ses_subj)
        el = _ssum(fl * (1.0 - r)[..., None], d.m_ses_subj)
        eye_j = np.eye(Jn)
        dd = np.einsum(
            "sjk,ji,kl->sjkil", hdd + 1.0 / p.sd_sev[:, None, None] ** 2, eye_j, np.eye(K)
        )
        dd = dd - np.einsum("snkj,snki,snk,kl->sjkil", fd, fd, inv_d, np.eye(K), optimize=True)
        dl = np.einsum("sjk,ji->sjki", hdl, eye_j) - np.einsum(
            "snkj,snki,snk->sjki", fd, fl, inv_d, optimize=True
        )
        ll = np.einsum("sj,ji->sji", hll + 1.0 / p.sd_ld[:, None] ** 2, eye_j) - np.einsum(
            "snkj,snki,snk->sji", fl, fl, inv_d, optimize=True
        )
        out["gv0"] = self._pack(gsev, gld)
        gz = g_zeta * inv_d
        gsev = gsev - np.einsum("snkj,snk->sjk", fd, gz)
        gld = gld - np.einsum("snkj,snk->sj", fl, gz)
        lj = _rsum(wc * c, d.m_cj).reshape(S, N, K, Jn) if self.n_ld else None
        out.update(fd=fd, fl=fl, ed=ed, el=el, dd=dd, dl=dl, ll=ll, gsev=gsev, gld=gld, lj=lj)
        return out

    def _pack(self, sev: np.ndarray, ld: np.ndarray) -> np.ndarray:
        parts = []
        if self.n_sev:
            parts.append(sev.reshape(self.S, -1))
        if self.n_ld:
            parts.append(ld)
        return np.concatenate(parts, axis=1)

    def _unpack(self, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        jn, k = self.d.n_new, self.d.n_scales
        sev = v[:, : self.n_sev].reshape(self.S, jn, k) if self.n_sev else np.zeros((self.S, jn, k))
        ld = v[:, self.n_sev :] if self.n_ld else np.zeros((self.S, jn))
        return sev, ld

    def _e_times(self, ed, el, dsev, dld) -> np.ndarray | float:
        """E dv: (S, P|N, K) from the compact couplings and a new-judge step (0 if none)."""
        out: np.ndarray | float = 0.0
        if self.n_sev:
            out = out + np.einsum("spkj,sjk->spk", ed, dsev)
        if self.n_ld:
            out = out + np.einsum("spkj,sj->spk", el, dld)
        return out

    def reduce(self, sysm: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Eliminate theta: A^-1, and for new judges the Schur complement and its gradient.

        With ``E`` the theta x new-judge coupling (after eliminating zeta; compact
        ``ed[p, k, j]`` for the judge's severity on scale k, ``el[p, k, j]`` for its
        log discrimination), the new judges' precision is ``H_vv - sum_p E' A^-1 E``.
        """
        ainv = np.linalg.inv(sysm["A"])
        y = np.einsum("spkl,spl->spk", ainv, sysm["g_theta_r"])
        out = {"Ainv": ainv, "y": y}
        if "ed" not in sysm:
            return out
        ed, el = sysm["ed"], sysm["el"]
        ael = np.einsum("spkl,splj->spkj", ainv, el)
        dd = sysm["dd"] - np.einsum("spkj,spkl,spli->sjkil", ed, ainv, ed, optimize=True)
        dl = sysm["dl"] - np.einsum("spkj,spki->sjki", ed, ael)
        ll = sysm["ll"] - np.einsum("spkj,spki->sji", el, ael)
        gsev = sysm["gsev"] - np.einsum("spkj,spk->sjk", ed, y)
        gld = sysm["gld"] - np.einsum("spkj,spk->sj", el, y)
        if self.n_ld:
            # gradient of -log|H_uu| / 2 in the log discriminations (the Laplace
            # marginal's volume term): H_uu's rating terms are w c^2 with
            # c = discrimination x loading, so d log|H_uu| / d log discrimination_j
            # = 2 sum over judge j's ratings of w c^2 Var(eta | v) (w held fixed)
            d = self.d
            var_th = np.diagonal(ainv, axis1=2, axis2=3)[:, d.ses_subj, :]
            r = sysm["L"] * sysm["inv_d"]
            var_eta = (1.0 - r) ** 2 * var_th + sysm["inv_d"]
            gld = gld - np.einsum("snkj,snk->sj", sysm["lj"], var_eta)
        S, jn, k = self.S, self.d.n_new, self.d.n_scales
        blocks = []
        if self.n_sev:
            row = [dd.reshape(S, jn * k, jn * k)]
            if self.n_ld:
                row.append(dl.reshape(S, jn * k, jn))
            blocks.append(np.concatenate(row, axis=2))
        if self.n_ld:
            row = []
            if self.n_sev:
                row.append(np.swapaxes(dl.reshape(S, jn * k, jn), 1, 2))
            row.append(ll)
            blocks.append(np.concatenate(row, axis=2))
        sv = np.concatenate(blocks, axis=1)
        sv = 0.5 * (sv + np.swapaxes(sv, 1, 2))
        out.update(Sv=sv, gv=self._pack(gsev, gld))
        return out

    def _couplings(self, sysm, red, dv: np.ndarray) -> tuple:
        """For a new-judge increment dv: (dsev, dld, A^-1 E dv, F dv)."""
        dsev, dld = self._unpack(dv)
        e_dv = self._e_times(sysm["ed"], sysm["el"], dsev, dld)
        a_e_dv = np.einsum("spkl,spl->spk", red["Ainv"], e_dv)
        f_dv = self._e_times(sysm["fd"], sysm["fl"], dsev, dld)
        return dsev, dld, a_e_dv, f_dv

    def step(self, st: _State, sysm, red) -> _State:
        """The Newton step (as a state of increments; new judges only when in ``sysm``)."""
        d = self.d
        if "Sv" in red:
            dv = np.linalg.solve(red["Sv"], red["gv"][..., None])[..., 0]
            dsev, dld, a_e_dv, f_dv = self._couplings(sysm, red, dv)
        else:
            dsev, dld = np.zeros_like(st.sev), np.zeros_like(st.ld)
            a_e_dv = f_dv = 0.0
        dtheta = red["y"] - a_e_dv
        dzeta = sysm["inv_d"] * (sysm["g_zeta"] - sysm["L"] * dtheta[:, d.ses_subj, :] - f_dv)
        return _State(dtheta, dzeta, dsev, dld)

    # ---- fit and draw

    def _inner(self, st: _State) -> tuple[_State, np.ndarray]:
        """Newton over theta and zeta with the new judges held fixed (a concave problem).

        Step halving per draw and subject; returns the mode and a converged flag per draw.
        """
        d = self.d
        S, P = self.S, d.n_subjects
        obj, _ = self.objective(st)
        stale = False
        done = np.zeros(S, dtype=bool)
        for _ in range(MAX_NEWTON):
            sysm = self.system(st, with_v=False)
            dx = self.step(st, sysm, self.reduce(sysm))
            size = np.maximum(
                np.abs(dx.theta).max((1, 2), initial=0.0), np.abs(dx.zeta).max((1, 2), initial=0.0)
            )
            done = size < NEWTON_TOL
            if done.all():
                break
            # Newton decrement (twice the predicted gain): once it is tiny everywhere
            # the full step is taken without checking the objective
            dec = (dx.theta * sysm["g_theta"]).sum(-1).max() + (dx.zeta * sysm["g_zeta"]).max()
            if dec < SKIP_SEARCH_DECREMENT:
                st = _State(st.theta + dx.theta, st.zeta + dx.zeta, st.sev, st.ld)
                stale = True
                continue
            if stale:
                obj, _ = self.objective(st)
                stale = False
            alpha = np.ones((S, P))
            pending = np.ones((S, P), dtype=bool)
            for _half in range(30):
                trial = _State(
                    st.theta + alpha[..., None] * dx.theta,
                    st.zeta + alpha[:, d.ses_subj, None] * dx.zeta,
                    st.sev,
                    st.ld,
                )
                obj_t, _ = self.objective(trial)
                ok = obj_t >= obj - 1e-9 * (1 + np.abs(obj))
                acc = pending & ok
                st.theta = np.where(acc[..., None], trial.theta, st.theta)
                st.zeta = np.where(acc[:, d.ses_subj, None], trial.zeta, st.zeta)
                obj = np.where(acc, obj_t, obj)
                pending &= ~ok
                if not pending.any():
                    break
                alpha = np.where(pending, alpha * 0.5, alpha)
        return st, done

    def marginal(self, st: _State) -> np.ndarray:
        """Laplace approximation of the new judges' log marginal posterior, per draw.

        ``log p(y, u, v) - log|H_uu| / 2`` at the subjects' conditional mode ``u``
        (up to a constant), ``H_uu`` the subjects' precision: its determinant is
        the product of the session deviations' precisions and each subject's
        reduced theta block.
        """
        obj, vprior = self.objective(st)
        sysm = self.system(st, with_v=False)
        inv_d = sysm["inv_d"]
        log_d = np.where(inv_d > 0, -np.log(np.where(inv_d > 0, inv_d, 1.0)), 0.0).sum((1, 2))
        log_a = np.linalg.slogdet(sysm["A"])[1].sum(1)
        return obj.sum(1) + vprior - 0.5 * (log_d + log_a)

    def fit(self) -> tuple[_State, np.ndarray]:
        """The subjects' mode and the new judges' Laplace-marginal mode; converged flag per draw.

        Without new judges this is the concave subjects-only problem. With them,
        an outer Newton iteration on the new judges' parameters ``v`` maximises
        the Laplace approximation of their marginal posterior (the joint mode
        of subjects and judges is biased: shrinking every subject's alliance and
        inflating a judge's discrimination raises the joint density), each step
        re-solving the subjects' problem at the new ``v``, with step halving.
        """
        d = self.d
        S = self.S
        st = _State(
            np.zeros((S, d.n_subjects, d.n_scales)),
            np.zeros((S, d.n_sessions, d.n_scales)),
            np.zeros((S, d.n_new, d.n_scales)),
            np.zeros((S, d.n_new)),
        )
        st, done = self._inner(st)
        if not self.V:
            return st, done
        ell = self.marginal(st)
        outer_done = np.zeros(S, dtype=bool)
        for _ in range(MAX_OUTER):
            sysm = self.system(st, with_v=True)
            red = self.reduce(sysm)
            dv = np.linalg.solve(red["Sv"], red["gv"][..., None])[..., 0]
            big = np.abs(dv).max(1)
            dv = dv * np.minimum(1.0, MAX_JUDGE_STEP / np.maximum(big, 1e-300))[:, None]
            outer_done = np.abs(dv).max(1) < OUTER_TOL
            if outer_done.all():
                break
            alpha = np.where(outer_done, 0.0, 1.0)
            # small steps skip the check of the Laplace marginal: its gradient here
            # keeps only the leading (volume) term of d log|H_uu| / dv, so the two
            # disagree in the third decimal near the mode; the check guards large steps
            take = ~outer_done & (np.abs(dv).max(1) <= SMALL_JUDGE_STEP)
            pending = ~outer_done & ~take
            if pending.any() and np.isnan(ell).any():
                ell = self.marginal(st)
            for _half in range(20):
                step = alpha[:, None] * dv
                dsev, dld, a_e_dv, f_dv = self._couplings(sysm, red, step)
                # warm start: the subjects' mode moves linearly with v
                moving = (pending | take)[:, None, None]
                a_e_dv = np.where(moving, a_e_dv, 0.0)
                f_dv = np.where(moving, f_dv, 0.0)
                dtheta = -a_e_dv
                dzeta = -sysm["inv_d"] * (sysm["L"] * dtheta[:, d.ses_subj, :] + f_dv)
                trial = _State(st.theta + dtheta, st.zeta + dzeta, st.sev + dsev, st.ld + dld)
                trial, done_t = self._inner(trial)
                ell_t = self.marginal(trial) if pending.any() else np.full(S, np.nan)
                ok = take | (pending & (ell_t >= ell - 1e-9 * (1 + np.abs(ell))))
                st = _State(
                    np.where(ok[:, None, None], trial.theta, st.theta),
                    np.where(ok[:, None, None], trial.zeta, st.zeta),
                    np.where(ok[:, None, None], trial.sev, st.sev),
                    np.where(ok[:, None], trial.ld, st.ld),
                )
                ell = np.where(ok, ell_t, ell)
                done = np.where(ok, done_t, done)
                pending &= ~ok
                take[:] = False
                if not pending.any():
                    break
                alpha = np.where(pending, alpha * 0.5, alpha)
            else:
                outer_done |= pending  # no increase found: at the mode to within rounding
        return st, done & outer_done

    def draw(self, mode: _State, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """One Laplace draw per calibration draw, and each subject's log importance weight."""
        d = self.d
        S, P, N, K = self.S, d.n_subjects, d.n_sessions, d.n_scales
        sysm = self.system(mode)
        red = self.reduce(sysm)
        if self.V:
            chol_v = np.linalg.cholesky(red["Sv"])
            zv = rng.standard_normal((S, self.V))
            dv = np.linalg.solve(np.swapaxes(chol_v, 1, 2), zv[..., None])[..., 0]
            dsev, dld, a_e_dv, f_dv = self._couplings(sysm, red, dv)
        else:
            dsev, dld = np.zeros_like(mode.sev), np.zeros_like(mode.ld)
            a_e_dv = f_dv = 0.0
        chol_a = np.linalg.cholesky(sysm["A"])
        zt = rng.standard_normal((S, P, K))
        noise_t = np.linalg.solve(np.swapaxes(chol_a, 2, 3), zt[..., None])[..., 0]
        zz = rng.standard_normal((S, N, K))
        inv_d, L = sysm["inv_d"], sysm["L"]
        # conditional mean given the new judges, then the draw
        mean_theta = mode.theta - a_e_dv
        mean_zeta = mode.zeta - inv_d * (L * (mean_theta - mode.theta)[:, d.ses_subj, :] + f_dv)
        theta = mean_theta + noise_t
        zeta = mean_zeta - inv_d * L * noise_t[:, d.ses_subj, :] + np.sqrt(inv_d) * zz
        sev, ld = mode.sev + dsev, mode.ld + dld
        drawn = _State(theta, zeta, sev, ld)
        obj_x, _ = self.objective(drawn)
        obj_m, _ = self.objective(_State(mean_theta, mean_zeta, sev, ld))
        zsq = (zt**2).sum(-1) + _ssum(np.where(inv_d > 0, zz**2, 0.0).sum(-1), d.m_ses_subj)
        log_w = obj_x - obj_m + 0.5 * zsq
        eta = theta[:, d.ses_subj, :] + zeta + self.p.trend[:, None, :] * d.ses_time[None, :, None]
        out = {"theta": theta, "eta": eta, "zeta": zeta, "log_w": log_w, "sev": sev, "ld": ld}
        if self.V:
            out.update(
                v_mode=self._pack(mode.sev, mode.ld), v_prec=red["Sv"], v_prior=self.prior_prec()
            )
        return out

    def prior_prec(self) -> np.ndarray:
        """The new judges' prior precisions, (S, V) in the packed order."""
        p, jn, k = self.p, self.d.n_new, self.d.n_scales
        sev = np.broadcast_to((1.0 / p.sd_sev**2)[:, None, None], (self.S, jn, k))
        ld = np.broadcast_to((1.0 / p.sd_ld**2)[:, None], (self.S, jn))
        return self._pack(sev, ld)


def _diag(x: np.ndarray) -> np.ndarray:
    """(..., K) -> (..., K, K) diagonal matrices."""
    return x[..., :, None] * np.eye(x.shape[-1])


# --------------------------------------------------------------------------- results


@dataclass
class ScoreResult:
    """Scores of a new trial from a calibration.

    Attributes
    ----------
    scores : posterior alliance per subject x scale and per session x scale, in
        the format of a fit's ``scores.csv`` (see :func:`caltars_bayes.calibration.score`).
    new_judges : the judges not in the calibration (see :func:`judge_drift`).
    draws : :class:`xarray.Dataset` with ``theta`` (draw, subject, scale),
        ``eta`` (draw, session, scale), ``log_weight`` (draw, subject; PSIS-smoothed
        and normalised per subject), and the new judges' ``severity`` (draw,
        scale, judge) and ``discrimination`` (draw, judge).
    report : method, Pareto k-hat per subject, Newton failures, notes, the
        calibration's verdict and source.
    """

    scores: pd.DataFrame
    new_judges: pd.DataFrame
    draws: xr.Dataset
    report: dict[str, Any]
    data_report: dict[str, Any] = field(default_factory=dict)

    @property
    def banner(self) -> str:
        return str(self.report["banner"])

    def intervals(self, prob: float) -> pd.DataFrame:
        """Scores with a ``prob`` HDI instead of 95% (same columns as ``scores``)."""
        return _score_table(self.draws, self.report, prob=prob)

    def save(self, out: str | Path, force: bool = False) -> Path:
        """Write ``scores.csv``, ``new_judges.csv``, ``data_report.json``, ``score_report.json``."""
        out = Path(out)
        files = {
            "scores.csv": lambda p: self.scores.to_csv(p, index=False),
            "new_judges.csv": lambda p: self.new_judges.to_csv(p, index=False),
            "data_report.json": json_writer(self.data_report),
            "score_report.json": json_writer(self.report),
        }
        atomic_write_dir(out, files, force=force)
        return out

    def __repr__(self) -> str:
        return (
            f"ScoreResult({self.draws.sizes['subject']} subjects, "
            f"{self.draws.sizes['session']} sessions, {len(self.report['new_judges'])} new "
            f"judges; {self.banner})"
        )


def run_scoring(
    data: RatingData,
    cal: Calibration,
    *,
    seed: int = 0,
    importance: bool = True,
    all_new: bool = False,
) -> ScoreResult:
    """Score ``data`` with ``cal`` (see the module docstring); used by ``calibration.score``."""
    from arviz_stats.base import array_stats

    if "sd_interaction" in cal.draws:
        raise DataError(
            "scoring with a calibration that has judge x subject interactions is not supported"
        )
    design, notes = build_design(data, cal, all_new=all_new)
    n_total = cal.n_draws
    n_r = max(len(design.r_y), 1)
    chunk = int(max(1, min(n_total, CHUNK_ELEMENTS // n_r)))
    rng = np.random.default_rng(seed)
    parts: list[dict[str, np.ndarray]] = []
    newton_ok = []
    for start in range(0, n_total, chunk):
        sel = slice(start, min(start + chunk, n_total))
        eng = _Engine(design, _params(cal, sel))
        mode, done = eng.fit()
        parts.append(eng.draw(mode, rng))
        newton_ok.append(done)
    cat = {k: np.concatenate([p[k] for p in parts], axis=0) for k in parts[0]}
    ok = np.concatenate(newton_ok)
    log_w = cat["log_w"]  # (draws, subjects)
    n_p = design.n_subjects
    khat = np.zeros(n_p)
    smoothed = np.full((n_p, n_total), -np.log(n_total))
    if importance:
        finite = np.isfinite(log_w)
        floor = np.where(finite, log_w, np.inf).min(axis=0) - 50.0
        log_w = np.where(finite, log_w, floor)
        vary = np.ptp(log_w, axis=0) > 1e-10
        if vary.any():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                lw, k = array_stats.psislw(-log_w[:, vary].T, axis=-1)
            smoothed[vary] = lw
            khat[vary] = k
    rel_ess = 1.0 / np.exp(2.0 * smoothed).sum(axis=1) / n_total
    subj_ok = np.full(n_p, bool(ok.all()))
    bad_k = (khat > PARETO_K_MAX) & (rel_ess < MIN_RELATIVE_ESS)
    subj_ok &= ~bad_k
    draws = _draws_dataset(design, cat, smoothed, cal)
    problems = []
    if not ok.all():
        problems.append(f"Newton did not converge in {int((~ok).sum())} of {n_total} draws")
    if bad_k.any():
        listed = ", ".join(np.asarray(design.subjects)[bad_k][:10])
        problems.append(
            f"{int(bad_k.sum())} subject(s) whose importance weights failed (Pareto k-hat > "
            f"{PARETO_K_MAX}, relative ESS < {MIN_RELATIVE_ESS}): {listed}"
        )
    cal_banner = cal.diagnostics.banner()
    banner = f"calibration: {cal_banner}" + (
        "; scoring: " + "; ".join(problems) if problems else ""
    )
    report = {
        "method": "per-draw Laplace approximation"
        + (" with Pareto-smoothed importance weights" if importance else ", no importance weights"),
        "n_draws": n_total,
        "seed": seed,
        "importance": importance,
        "banner": banner,
        "calibration_converged": cal.converged,
        "calibration_verdict": cal.diagnostics.verdict,
        "calibration_source": cal.meta.get("source", {}),
        "pareto_k": {s: float(k) for s, k in zip(design.subjects, khat, strict=True)},
        "pareto_k_max": float(khat.max(initial=0.0)),
        "relative_ess": {s: float(e) for s, e in zip(design.subjects, rel_ess, strict=True)},
        "subjects_flagged": [s for s, b in zip(design.subjects, bad_k, strict=True) if b],
        "newton_unconverged_draws": int((~ok).sum()),
        "new_judges": list(design.new_judges),
        "notes": notes,
        "problems": problems,
        "subject_ok": {s: bool(v) for s, v in zip(design.subjects, subj_ok, strict=True)},
        "approximate": bool(cal.diagnostics.approximate),
        "approx_method": cal.diagnostics.approx_method,
    }
    scores = _score_table(draws, report, CI_PROB)
    own = None
    if "v_mode" in cat:
        own = own_estimates(cat["v_mode"], cat["v_prec"], cat["v_prior"])
    judges = judge_drift(draws, cal, design, report, own)
    return ScoreResult(scores, judges, draws, report, data.report.to_dict())


def _draws_dataset(
    d: _Design, cat: dict[str, np.ndarray], log_w: np.ndarray, cal: Calibration
) -> xr.Dataset:
    n = cat["theta"].shape[0]
    coords = {
        "draw": np.arange(n),
        "subject": d.subjects,
        "session": list(d.sessions["label"]),
        "scale": d.scales,
    }
    ds = xr.Dataset(
        {
            "theta": (("draw", "subject", "scale"), cat["theta"]),
            "eta": (("draw", "session", "scale"), cat["eta"]),
            "log_weight": (("draw", "subject"), log_w.T),
        },
        coords=coords,
    )
    ds = ds.assign_coords(
        session_subject=("session", list(d.sessions["subject"])),
        session_number=("session", list(d.sessions["session"])),
    )
    if d.n_new:
        ds = ds.assign_coords(judge=d.new_judges)
        if "severity" in cal.draws:
            ds["severity"] = (("draw", "scale", "judge"), np.swapaxes(cat["sev"], 1, 2))
        if "discrimination" in cal.draws:
            ds["discrimination"] = (("draw", "judge"), np.exp(cat["ld"]))
    return ds


def _score_table(draws: xr.Dataset, report: dict[str, Any], prob: float) -> pd.DataFrame:
    """Subject x scale and session x scale rows from the weighted draws."""
    subjects = [str(s) for s in draws["subject"].values]
    scales = [str(k) for k in draws["scale"].values]
    lw = draws["log_weight"].transpose("subject", "draw").values
    theta = draws["theta"].transpose("subject", "scale", "draw").values
    k_n = len(scales)
    st = weighted_describe(
        theta.reshape(-1, theta.shape[-1]), np.repeat(lw, k_n, axis=0), prob=prob
    )
    sub = pd.DataFrame(
        {
            "level": "subject",
            "subject": np.repeat(subjects, k_n),
            "session": "",
            "scale": np.tile(scales, len(subjects)),
            **st,
        }
    )
    eta = draws["eta"].transpose("session", "scale", "draw").values
    ses_subj = [str(s) for s in draws["session_subject"].values]
    pos = {s: i for i, s in enumerate(subjects)}
    lw_ses = lw[[pos[s] for s in ses_subj]]
    se = weighted_describe(eta.reshape(-1, eta.shape[-1]), np.repeat(lw_ses, k_n, axis=0), prob)
    ses = pd.DataFrame(
        {
            "level": "session",
            "subject": np.repeat(ses_subj, k_n),
            "session": np.repeat([str(s) for s in draws["session_number"].values], k_n),
            "scale": np.tile(scales, len(ses_subj)),
            **se,
        }
    )
    out = pd.concat([sub, ses], ignore_index=True)
    out = out[["level", "subject", "session", "scale", "mean", "sd", "hdi_low", "hdi_high"]]
    ok = report["subject_ok"]
    out["converged"] = bool(report["calibration_converged"]) & out["subject"].map(ok).astype(bool)
    if report.get("approximate"):
        out["approximate"] = report.get("approx_method") or "yes"
    out.attrs["diagnostics"] = report["banner"]
    return out


# --------------------------------------------------------------------------- rater drift


def population_band(sd_draws: np.ndarray, level: float) -> float:
    """Half-width ``q`` of the central ``level`` interval of a new judge's value.

    The calibrated population of a judge parameter is Normal(0, sd) per draw;
    over the calibration's draws of ``sd`` it is their mixture (a new judge's
    predictive distribution), so ``q`` solves
    ``mean_s Phi(q / sd_s) = 1 - (1 - level) / 2``.
    """
    sd = np.asarray(sd_draws, dtype=float)
    target = 1.0 - (1.0 - level) / 2.0
    hi = 50.0 * float(sd.max())
    return float(brentq(lambda q: float(ndtr(q / sd).mean()) - target, 0.0, hi, xtol=1e-10))


def own_estimates(
    v_mode: np.ndarray, v_prec: np.ndarray, v_prior: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """New judges' parameters estimated from their own ratings: the prior taken out.

    In the Laplace approximation the new judges' posterior given a calibration
    draw is Normal(v, S^-1) with ``S = S_data + P`` (``P`` the diagonal prior
    precision, the population's), so the data alone say Normal(m, S_data^-1)
    with ``m = S_data^-1 S v``.

    The extrapolation (which moves the mode by ``S_data^-1 P v``) is trusted
    only where the judge's own ratings carry at least a quarter of the
    population prior's information on a parameter (``1 / var >= P / 4``):
    with fewer ratings the parameter is not assessed.

    Returns
    -------
    mean, var : (draws, parameters); NaN where ``S_data`` is not positive
    definite or the parameter is not informed by the judge's own ratings.
    """
    s_data = v_prec - v_prior[:, :, None] * np.eye(v_prec.shape[-1])
    ev = np.linalg.eigvalsh(s_data)
    ok = ev.min(axis=1) > 1e-9 * np.maximum(ev.max(axis=1), 1e-300)
    safe = np.where(ok[:, None, None], s_data, np.eye(v_prec.shape[-1]))
    mean = np.linalg.solve(safe, np.einsum("svw,sw->sv", v_prec, v_mode)[..., None])[..., 0]
    var = np.diagonal(np.linalg.inv(safe), axis1=1, axis2=2)
    own_info = 1.0 / np.where(var > 0, var, np.inf)
    informed = ok[:, None] & (var > 0) & (own_info >= MIN_OWN_INFORMATION * v_prior)
    return np.where(informed, mean, np.nan), np.where(informed, var, np.nan)


def judge_drift(
    draws: xr.Dataset,
    cal: Calibration,
    design: _Design,
    report: dict[str, Any],
    own: tuple[np.ndarray, np.ndarray] | None = None,
) -> pd.DataFrame:
    """The new judges' severity and discrimination, and rater-drift flags.

    Each new judge is reported twice: its posterior with the calibrated judge
    population as prior (what scoring used: ``mean, sd, hdi_*``), and its
    estimate from its own ratings with that prior taken out (``own_mean,
    own_sd``, :func:`own_estimates`). Drift is a question about the prior
    itself (does this judge belong to the calibrated population?), so it is
    judged on the own estimate, which is not shrunk towards the population it
    is tested against.

    The calibrated judge population of a parameter is a new judge's predictive
    distribution (:func:`population_band`). Each parameter (severity on each
    scale, log discrimination) gets the central ``1 - 0.05 / m`` band, ``m`` the
    number of parameters per judge (Bonferroni: a judge drawn from the
    population has at most a 5% chance that any of its parameters lies outside
    its band). A parameter is flagged when its own estimate lies credibly on
    one side of the band: ``P(above) >= 0.9`` or ``P(below) >= 0.9``
    (averaged over the calibration's draws; a one-sided probability, so a vague
    estimate from a few ratings is never flagged). A parameter is assessed only
    when the judge's own ratings carry at least a quarter of the population's
    information on it (``informed``; see :func:`own_estimates`). A judge
    with any flagged parameter has ``drift`` True.

    Returns
    -------
    DataFrame with columns ``judge, parameter`` (severity or discrimination),
    ``scale`` (empty for discrimination), ``mean, sd, hdi_low, hdi_high`` (95%
    HDI, population prior), ``own_mean, own_sd`` (own ratings only; for
    discrimination ``exp`` of the log-scale mean and a delta-method sd; NaN when
    the judge's ratings cannot estimate it alone), ``informed`` (the own
    estimate exists, so drift was assessed), ``n_ratings, n_subjects``,
    ``band_low, band_high`` (the population band), ``panel_min, panel_max``
    (range of the calibrated judges' posterior means), ``p_outside`` (the larger
    of P(above) and P(below)), ``flagged``, ``direction`` (severe / lenient, low
    / high discrimination, or empty), ``drift`` and ``converged`` (the
    calibration's verdict).
    """
    cols = [
        "judge", "parameter", "scale", "mean", "sd", "hdi_low", "hdi_high", "own_mean", "own_sd",
        "informed", "n_ratings", "n_subjects", "band_low", "band_high", "panel_min", "panel_max",
        "p_outside", "flagged", "direction", "drift", "converged",
    ]  # fmt: skip
    if not design.n_new:
        out = pd.DataFrame(columns=cols)
        out.attrs["diagnostics"] = report["banner"]
        return out
    has_sev, has_disc = "severity" in draws, "discrimination" in draws
    jn, k_n = design.n_new, design.n_scales
    m = k_n * has_sev + has_disc
    level = 1.0 - DRIFT_ALPHA / max(m, 1)
    n_draws = draws.sizes["draw"]
    own_mean, own_var = own if own is not None else (np.full((n_draws, m * jn), np.nan),) * 2

    def one_sided(i: int, q: float) -> tuple[float, float, float, float]:
        mu, sd = own_mean[:, i], np.sqrt(own_var[:, i])
        fine = np.isfinite(mu) & np.isfinite(sd)
        if fine.mean() < 0.5:  # the judge's own ratings do not inform it: not assessed
            return 0.0, 0.0, np.nan, np.nan
        p_hi = float(np.where(fine, ndtr((mu - q) / np.where(fine, sd, 1.0)), 0.0).mean())
        p_lo = float(np.where(fine, ndtr((-q - mu) / np.where(fine, sd, 1.0)), 0.0).mean())
        if fine.sum() < 2:
            return p_hi, p_lo, np.nan, np.nan
        mean = float(mu[fine].mean())
        return p_hi, p_lo, mean, float(np.sqrt(own_var[fine, i].mean() + mu[fine].var()))

    rows = []
    cd = cal.draws
    if has_sev:
        q = population_band(cd["sd_severity"].values, level)
        panel = cd["severity"].mean("draw").transpose("scale", "judge").values
        sev = draws["severity"].transpose("judge", "scale", "draw").values
        for j, judge in enumerate(design.new_judges):
            st = weighted_describe(sev[j])
            for k, scale in enumerate(design.scales):
                p_hi, p_lo, om, osd = one_sided(j * k_n + k, q)
                rows.append(
                    [judge, "severity", scale, st["mean"][k], st["sd"][k], st["hdi_low"][k],
                     st["hdi_high"][k], om, osd, -q, q, panel[k].min(), panel[k].max(),
                     max(p_hi, p_lo), "severe" if p_hi >= p_lo else "lenient"]
                )  # fmt: skip
    if has_disc:
        q = population_band(cd["sd_log_discrimination"].values, level)
        panel = cd["discrimination"].mean("draw").values
        disc = draws["discrimination"].transpose("judge", "draw").values
        st = weighted_describe(disc)
        n_sev = jn * k_n if has_sev else 0
        for j, judge in enumerate(design.new_judges):
            p_hi, p_lo, om, osd = one_sided(n_sev + j, q)
            rows.append(
                [judge, "discrimination", "", st["mean"][j], st["sd"][j], st["hdi_low"][j],
                 st["hdi_high"][j], np.exp(om), np.exp(om) * osd, np.exp(-q), np.exp(q),
                 panel.min(), panel.max(), max(p_hi, p_lo),
                 "high discrimination" if p_hi >= p_lo else "low discrimination (less reliable)"]
            )  # fmt: skip
    out = pd.DataFrame(
        rows,
        columns=[
            "judge", "parameter", "scale", "mean", "sd", "hdi_low", "hdi_high", "own_mean",
            "own_sd", "band_low", "band_high", "panel_min", "panel_max", "p_outside", "direction",
        ],
    )  # fmt: skip
    pos = {j: i for i, j in enumerate(design.new_judges)}
    out["n_ratings"] = [int(design.n_new_ratings[pos[j]]) for j in out["judge"]]
    out["n_subjects"] = [int(design.n_new_subjects[pos[j]]) for j in out["judge"]]
    out["informed"] = out["own_mean"].notna()
    out["flagged"] = out["p_outside"] >= DRIFT_PROB
    out["direction"] = np.where(out["flagged"], out["direction"], "")
    out["drift"] = out.groupby("judge")["flagged"].transform("any")
    out["converged"] = bool(report["calibration_converged"])
    out = out[cols]
    out.attrs["diagnostics"] = report["banner"]
    out.attrs["drift_level"] = level
    return out


def drift_summary(new_judges: pd.DataFrame) -> list[str]:
    """One line per new judge: flagged parameters, or that it lies within the population."""
    lines = []
    for judge, g in new_judges.groupby("judge", sort=False):
        n = int(g["n_ratings"].iloc[0])
        flagged = g[g["flagged"]]
        if flagged.empty:
            lines.append(f"judge {judge} ({n} ratings): within the calibrated judge population")
        else:
            what = ", ".join(
                f"{r.direction}{f' on {r.scale}' if r.scale else ''} "
                f"(P outside = {r.p_outside:.2f})"
                for r in flagged.itertuples()
            )
            lines.append(f"judge {judge} ({n} ratings): RATER DRIFT: {what}")
    return lines


def read_report(path: str | Path) -> dict[str, Any]:
    """Read a ``score_report.json``."""
    return json.loads(Path(path).read_text())
