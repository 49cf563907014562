"""The new ratings indexed against a calibration, and calibration draws as arrays.

:func:`build_design` turns a new trial's ratings into index arrays (each
rating's subject, session, scale, item, cutpoint-table row, category, and its
judge: calibrated or new) and the sparse 0/1 matrices whose products give the
sums the Newton steps of :mod:`caltars_bayes.scoring.engine` need: over a
session x scale cell, over a subject, over a subject's sessions, and per new
judge. :func:`_params` gives one chunk of the calibration's draws in the
arrays those steps use (the cutpoint tables padded with +-BIG, the subject
precision ``Sigma^-1`` per draw, zeros for the terms the calibration lacks).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.sparse as sp

from caltars_bayes.model.density import pad_cutpoints
from caltars_bayes.scoring.calibration import Calibration

if TYPE_CHECKING:
    from caltars_bayes.data.ratings import RatingData


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
    pad = pad_cutpoints(ds["cutpoints"].values)
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
