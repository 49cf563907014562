"""Rating cells: a long or wide rating table as one cell per rating, before validation.

long
    one row per rating, columns ``subject, session, judge, item, rating``;
wide
    one row per subject x session x judge, one column per item code.

Either way each rating becomes one cell with its spreadsheet row (the header
is row 1, the first data row is row 2), its id codes, its item and its value,
or the kind of invalid value it holds. Blank cells are missing, not invalid,
and so are ratings equal to one of the user's missing codes (such as SPSS's
9 or 99 for "not rated"): a code must lie outside the response range.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from caltars_bayes._core.errors import DataError
from caltars_bayes.data.columns import LONG_COLUMNS, SELF_JUDGE, SINGLE_SESSION
from caltars_bayes.data.values import _blank_rows, _fmt_value, _labels, _numbers
from caltars_bayes.spec.instrument import Instrument

# Kinds of invalid rating value.
_B_OK, _B_NOT_NUMBER, _B_NOT_WHOLE, _B_RANGE = range(4)


@dataclass
class _Cells:
    """Rating cells in long form, before validation (internal)."""

    frame: pd.DataFrame  # the renamed input frame (for raw values in messages)
    display: dict[str, str]  # canonical column -> user's column name
    row: np.ndarray  # spreadsheet row of each cell
    pos: np.ndarray  # position of the cell's row in frame
    col: np.ndarray  # index into colnames: the column holding the rating
    colnames: list[str]
    ids: dict[str, tuple[np.ndarray, list[str]]]  # subject/session/judge -> codes, labels
    item: np.ndarray  # index into instrument.items, -1 when unknown
    item_raw: tuple[np.ndarray, list[str]] | None  # long layout: item labels as given
    rating: np.ndarray  # float, NaN when missing or invalid
    bad: np.ndarray  # _B_* code
    missing: np.ndarray  # bool: rating blank (or a missing code)
    n_coded: int = 0  # ratings equal to a missing code (counted among the missing)


def _missing_codes(codes: Iterable[float] | None, instrument: Instrument) -> np.ndarray:
    """The missing codes as floats, each a finite number outside the response range.

    Raises
    ------
    DataError
        For a code that is not a number, or one inside the response range
        (it could not be told apart from a real rating).
    """
    if codes is None:
        return np.empty(0)
    out = []
    for c in codes:
        try:
            f = float(c)
        except (TypeError, ValueError):
            raise DataError(f"missing code {c!r}: not a number") from None
        if not np.isfinite(f):
            raise DataError(f"missing code {c!r}: not a finite number")
        if instrument.response_min <= f <= instrument.response_max:
            raise DataError(
                f"missing code {c!r}: inside the response range {instrument.response_min}.."
                f"{instrument.response_max} of {instrument.name}; a missing code must lie "
                "outside it"
            )
        out.append(f)
    return np.asarray(sorted(set(out)), dtype=float)


def _rating_cells(
    s: pd.Series, rmin: int, rmax: int, codes: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Values, invalid-value kind, missing mask and count of missing codes of a column.

    A value equal to one of ``codes`` is missing, like a blank cell.
    """
    vals, notnum = _numbers(s)
    n_coded = 0
    if codes is not None and len(codes):
        coded = np.isin(vals, codes)
        n_coded = int(coded.sum())
        vals = np.where(coded, np.nan, vals)
    missing = np.isnan(vals) & ~notnum
    bad = np.zeros(len(vals), dtype=np.int8)
    bad[notnum] = _B_NOT_NUMBER
    with np.errstate(invalid="ignore"):
        present = ~np.isnan(vals)
        whole = present & (np.floor(vals) == vals)
        bad[present & ~whole] = _B_NOT_WHOLE
        bad[whole & ((vals < rmin) | (vals > rmax))] = _B_RANGE
    vals = np.where(bad == _B_OK, vals, np.nan)
    return vals, bad, missing, n_coded


def _id_codes(frame: pd.DataFrame, name: str, default: str) -> tuple[np.ndarray, list[str]]:
    if name in frame.columns:
        return _labels(frame[name])
    return np.zeros(len(frame), dtype=np.int64), [default]


def _long_cells(
    frame: pd.DataFrame,
    display: dict[str, str],
    rows: np.ndarray,
    instrument: Instrument,
    missing_codes: np.ndarray,
) -> tuple[_Cells, list[str]]:
    ids = {
        "subject": _labels(frame["subject"]),
        "session": _id_codes(frame, "session", SINGLE_SESSION),
        "judge": _id_codes(frame, "judge", SELF_JUDGE),
    }
    raw_codes, raw_labels = _labels(frame["item"])
    items = instrument.items
    pos_of = {i: k for k, i in enumerate(items)}
    lower: dict[str, list[int]] = {}
    for k, i in enumerate(items):
        lower.setdefault(i.lower(), []).append(k)
    lab_item = np.array(
        [
            pos_of.get(x, lower[x.lower()][0] if len(lower.get(x.lower(), [])) == 1 else -1)
            for x in raw_labels
        ],
        dtype=np.int64,
    )
    item = np.where(raw_codes >= 0, lab_item[np.maximum(raw_codes, 0)] if len(lab_item) else -1, -1)
    rating, bad, missing, n_coded = _rating_cells(
        frame["rating"], instrument.response_min, instrument.response_max, missing_codes
    )
    n = len(frame)
    ignored = [display[c] for c in frame.columns if c not in LONG_COLUMNS]
    cells = _Cells(
        frame=frame,
        display=display,
        row=rows,
        pos=np.arange(n, dtype=np.int64),
        col=np.zeros(n, dtype=np.int64),
        colnames=["rating"],
        ids=ids,
        item=item,
        item_raw=(raw_codes, raw_labels),
        rating=rating,
        bad=bad,
        missing=missing,
        n_coded=n_coded,
    )
    return cells, ignored


def _wide_cells(
    frame: pd.DataFrame,
    display: dict[str, str],
    rows: np.ndarray,
    instrument: Instrument,
    missing_codes: np.ndarray,
) -> tuple[_Cells, list[str]]:
    items = instrument.items
    item_cols = [c for c in items if c in frame.columns]
    n, k = len(frame), len(item_cols)
    ids = {}
    for name, default in (("subject", ""), ("session", SINGLE_SESSION), ("judge", SELF_JUDGE)):
        codes, labels = _id_codes(frame, name, default)
        ids[name] = (np.repeat(codes, k), labels)
    vals = np.empty((n, k))
    bad = np.empty((n, k), dtype=np.int8)
    missing = np.empty((n, k), dtype=bool)
    n_coded = 0
    for j, c in enumerate(item_cols):
        vals[:, j], bad[:, j], missing[:, j], coded = _rating_cells(
            frame[c], instrument.response_min, instrument.response_max, missing_codes
        )
        n_coded += coded
    ignored = [display[c] for c in frame.columns if c not in items and c not in LONG_COLUMNS]
    for c in ("item", "rating"):
        if c in frame.columns:
            ignored.append(display[c])
    pos_of = {i: p for p, i in enumerate(items)}
    cells = _Cells(
        frame=frame,
        display=display,
        row=np.repeat(rows, k),
        pos=np.repeat(np.arange(n, dtype=np.int64), k),
        col=np.tile(np.arange(k, dtype=np.int64), n),
        colnames=item_cols,
        ids=ids,
        item=np.tile(np.array([pos_of[c] for c in item_cols], dtype=np.int64), n),
        item_raw=None,
        rating=vals.ravel(),
        bad=bad.ravel(),
        missing=missing.ravel(),
        n_coded=n_coded,
    )
    return cells, ignored


def _raw(cells: _Cells, i: int) -> Any:
    col = cells.colnames[cells.col[i]]
    return cells.frame[col].iloc[int(cells.pos[i])]


def _rating_text(cells: _Cells, i: int, instrument: Instrument) -> str:
    rng = f"{instrument.response_min}..{instrument.response_max}"
    v = _fmt_value(_raw(cells, i))
    b = cells.bad[i]
    if b == _B_NOT_NUMBER:
        return f"rating {v} is not a number (response range {rng})"
    if b == _B_NOT_WHOLE:
        return f"rating {v} is not a whole number (response range {rng})"
    return f"rating {v} is outside the response range {rng}"


def _table_cells(
    frame: pd.DataFrame,
    display: dict[str, str],
    layout: str,
    instrument: Instrument,
    fname: str,
    missing_codes: Iterable[float] | None = None,
) -> tuple[_Cells, list[str], int, int]:
    """The rating cells of a renamed table in its layout.

    ``missing_codes``: rating values read as missing (see :func:`_missing_codes`).

    Returns
    -------
    (cells, ignored columns (the user's names), data rows read, blank rows skipped)
    """
    cols = list(frame.columns)
    items = instrument.items
    # Rows blank in every id and rating column (blank lines in a CSV) are
    # skipped, not counted; their row numbers stay as in the file.
    relevant = [c for c in cols if c in LONG_COLUMNS or (layout == "wide" and c in items)]
    blank = _blank_rows(frame[relevant])
    keep = np.flatnonzero(~blank)
    if len(keep) == 0:
        raise DataError(f"{fname}: file is empty (no data rows)")
    if len(keep) < len(frame):
        frame = frame.iloc[keep]
    rows = keep.astype(np.int64) + 2
    codes = _missing_codes(missing_codes, instrument)
    if layout == "long":
        cells, ignored = _long_cells(frame, display, rows, instrument, codes)
    else:
        cells, ignored = _wide_cells(frame, display, rows, instrument, codes)
    return cells, ignored, len(frame), int(blank.sum())
