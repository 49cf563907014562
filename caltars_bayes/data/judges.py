"""The per-judge table: how much each judge rated, and how the judge is linked to others.

A panel of many judges (a real data set can have thousands) is summarised in
the data report (:meth:`~caltars_bayes.data.report.DataReport.format`); the
full per-judge table is :func:`judge_table`, written by :func:`save_judge_table`
(``caltars-bayes validate --out FILE``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from caltars_bayes._core.errors import CaltarsError
from caltars_bayes._core.io import atomic_write_file, json_writer
from caltars_bayes.data.ratings import RatingData

__all__ = ["JUDGE_TABLE_SUFFIXES", "check_judge_table_path", "judge_table", "save_judge_table"]

#: the file types :func:`save_judge_table` writes, chosen by the file's suffix
JUDGE_TABLE_SUFFIXES = (".csv", ".json")


def judge_table(data: RatingData) -> pd.DataFrame:
    """One row per judge: the ratings, subjects, sessions and items the judge rated.

    Parameters
    ----------
    data : the validated ratings.

    Returns
    -------
    DataFrame
        In the order of ``data.judges``, with columns

        - ``judge``: the judge's label;
        - ``n_ratings``: the judge's used ratings (one per item rated in a session);
        - ``n_subjects``: the subjects (patients) with at least one such rating;
        - ``n_sessions``: the sessions (subject x session) the judge rated;
        - ``n_sessions_shared``: of those, the sessions that at least one other
          judge also rated; these overlaps are what separates a judge's
          severity from the alliance of the sessions the judge happened to rate;
        - ``n_items``: the distinct items the judge rated;
        - ``mean_score``: the mean of the judge's ratings after reverse keying
          (a raw descriptive figure, not the model's judge severity).
    """
    nj, ns = data.n_judges, data.n_sessions
    jdx = data.judge_idx
    n_ratings = np.bincount(jdx, minlength=nj)
    score_sum = np.bincount(jdx, weights=data.ratings["score"].to_numpy(float), minlength=nj)
    # distinct (judge, session), (judge, subject) and (judge, item) pairs, counted per judge
    pairs = np.unique(jdx * ns + data.session_idx)
    p_judge, p_sess = pairs // ns, pairs % ns
    judges_in_session = np.bincount(p_sess, minlength=ns)
    shared = np.bincount(p_judge[judges_in_session[p_sess] >= 2], minlength=nj)

    def distinct(other: np.ndarray, n_other: int) -> np.ndarray:
        return np.bincount(np.unique(jdx * n_other + other) // n_other, minlength=nj)

    with np.errstate(invalid="ignore", divide="ignore"):
        mean_score = score_sum / n_ratings
    return pd.DataFrame(
        {
            "judge": pd.Series(data.judges, dtype=object),
            "n_ratings": n_ratings.astype(np.int64),
            "n_subjects": distinct(data.subject_idx, data.n_subjects).astype(np.int64),
            "n_sessions": np.bincount(p_judge, minlength=nj).astype(np.int64),
            "n_sessions_shared": shared.astype(np.int64),
            "n_items": distinct(data.item_idx, data.n_items).astype(np.int64),
            "mean_score": mean_score,
        }
    )


def check_judge_table_path(path: str | Path, *, force: bool = False) -> Path:
    """The output path of a judge table, checked before any work is done.

    Raises
    ------
    CaltarsError
        When the suffix is not ``.csv`` or ``.json``, or the file exists and
        ``force`` is false (one line naming the file).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in JUDGE_TABLE_SUFFIXES:
        raise CaltarsError(
            f"{path}: a judge table is written as .csv or .json, not {suffix or 'no suffix'!r}"
        )
    if path.exists() and not force:
        raise CaltarsError(f"{path}: already exists; use --force to overwrite")
    return path


def save_judge_table(
    data: RatingData | pd.DataFrame, path: str | Path, *, force: bool = False
) -> pd.DataFrame:
    """Write :func:`judge_table` to ``path`` (CSV or JSON, by suffix), atomically.

    Parameters
    ----------
    data : the validated ratings, or a table :func:`judge_table` returned.
    path : a ``.csv`` file (one row per judge) or ``.json`` file (a list of
        one record per judge).
    force : replace an existing file.

    Returns
    -------
    DataFrame
        The table written.
    """
    path = check_judge_table_path(path, force=force)
    table = judge_table(data) if isinstance(data, RatingData) else data
    if path.suffix.lower() == ".csv":
        atomic_write_file(path, lambda p: table.to_csv(p, index=False), force=force)
    else:
        records = [
            {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in r.items()}
            for r in table.to_dict(orient="records")
        ]
        atomic_write_file(path, json_writer(records), force=force)
    return table
