"""The used ratings in their canonical order, as integer indices.

Subjects, judges and session labels are ordered numerically when all are
numbers, else lexically; items and scales keep the instrument's order. The
ratings are sorted by subject, session, judge and item, each observed
subject x session becomes one row of the session table, and each rating is
scored (reverse-keyed items as ``min + max - rating``). A session's time is
its number when all session labels are numbers, else its position among the
subject's sessions (1, 2, ...).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from caltars_bayes.data.values import _lookup, _order_labels, _str_array
from caltars_bayes.spec.instrument import Instrument


@dataclass(frozen=True)
class _Indexed:
    """The used ratings sorted and coded (see :class:`~caltars_bayes.data.ratings.RatingData`)."""

    subjects: list[str]
    judges: list[str]
    sessions: pd.DataFrame
    ratings: pd.DataFrame
    subject_idx: np.ndarray
    session_idx: np.ndarray
    judge_idx: np.ndarray
    item_idx: np.ndarray
    scale_idx: np.ndarray
    y: np.ndarray
    item_scale_idx: np.ndarray
    session_subject_idx: np.ndarray


def _index_ratings(long: pd.DataFrame, instrument: Instrument) -> _Indexed:
    """Sort and code the used ratings (``subject, session, judge, item, rating, source_row``)."""
    items = instrument.items
    scales = instrument.scale_codes
    item_scale = instrument.item_scale
    item_scale_idx = np.array([scales.index(item_scale[i]) for i in items], dtype=np.int64)

    subjects, _ = _order_labels(long["subject"].unique())
    judges, _ = _order_labels(long["judge"].unique())
    sess_order, sess_num = _order_labels(long["session"].unique())
    s_idx = _lookup(subjects, long["subject"])
    j_idx = _lookup(judges, long["judge"])
    i_idx = _lookup(items, long["item"])
    t_idx = _lookup(sess_order, long["session"])
    order = np.lexsort((i_idx, j_idx, t_idx, s_idx))
    s_idx, j_idx, i_idx, t_idx = s_idx[order], j_idx[order], i_idx[order], t_idx[order]
    rating = long["rating"].to_numpy(dtype=np.int64)[order]
    source_row = long["source_row"].to_numpy(dtype=np.int64)[order]
    session_idx, sess_subj, sessions = _session_table(s_idx, t_idx, subjects, sess_order, sess_num)

    rev = np.array([i in instrument.reverse_keyed for i in items], dtype=bool)
    lo, hi = instrument.response_min, instrument.response_max
    score = np.where(rev[i_idx], lo + hi - rating, rating).astype(np.int64)
    scale_idx = item_scale_idx[i_idx]
    ratings = pd.DataFrame(
        {
            "subject": _str_array(subjects, s_idx),
            "session": _str_array(sess_order, t_idx),
            "judge": _str_array(judges, j_idx),
            "item": _str_array(items, i_idx),
            "scale": _str_array(scales, scale_idx),
            "rating": rating,
            "score": score,
            "source_row": source_row,
        }
    )
    y = score - lo
    return _Indexed(
        subjects=subjects,
        judges=judges,
        sessions=sessions,
        ratings=ratings,
        subject_idx=s_idx,
        session_idx=session_idx,
        judge_idx=j_idx,
        item_idx=i_idx,
        scale_idx=scale_idx,
        y=y,
        item_scale_idx=item_scale_idx,
        session_subject_idx=sess_subj,
    )


def _session_table(
    s_idx: np.ndarray,
    t_idx: np.ndarray,
    subjects: list[str],
    sess_order: list[str],
    sess_num: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """The observed sessions of sorted ratings.

    Returns
    -------
    (session index of each rating, subject index of each session, the session
    table ``subject, session, session_time, label``)
    """
    new_cell = np.ones(len(s_idx), dtype=bool)
    new_cell[1:] = (s_idx[1:] != s_idx[:-1]) | (t_idx[1:] != t_idx[:-1])
    session_idx = np.cumsum(new_cell) - 1
    first = np.flatnonzero(new_cell)
    sess_subj = s_idx[first]
    sess_code = t_idx[first]
    subj_arr = np.asarray(subjects, dtype=object)
    sess_arr = np.asarray(sess_order, dtype=object)
    if sess_num is not None:
        session_time = sess_num[sess_code]
    else:
        session_time = (
            pd.Series(sess_code).groupby(sess_subj).cumcount().to_numpy(dtype=float) + 1.0
        )
    sessions = pd.DataFrame(
        {
            "subject": pd.Series(subj_arr[sess_subj], dtype="str"),
            "session": pd.Series(sess_arr[sess_code], dtype="str"),
            "session_time": session_time.astype(float),
        }
    )
    sessions["label"] = sessions["subject"] + "|" + sessions["session"]
    return session_idx, sess_subj, sessions
