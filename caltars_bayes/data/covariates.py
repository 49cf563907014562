"""Covariate tables: subject-level and session-level, validated and aligned.

A subject covariate table has ``subject`` plus numeric columns, a session
covariate table ``subject, session`` plus numeric columns; one row per id.
Each is validated on its own (empty ids, duplicated ids and non-numbers are
errors) and then aligned to the subjects or sessions of the ratings: ids
without a row get missing values, rows for ids without ratings are ignored
with a warning, and both are counted in the report.

Decimal commas: a column whose every value is a number written with a decimal
comma (``3,5``, ``-0,25``) or a whole number is read as numbers (3.5, -0.25)
and a note says so. A column whose only commas are followed by exactly three
digits (``1,000``, ``2,500``) is ambiguous (a thousands separator, or a
decimal comma?) and is an error; a value with both a dot and a comma
(``1.000,5``) is not read as a number.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from caltars_bayes._core.errors import CaltarsWarning, DataError, where
from caltars_bayes.data.columns import _rename
from caltars_bayes.data.values import (
    _blank_rows,
    _fmt_value,
    _intlist,
    _labels,
    _numbers,
    _str_array,
)


def _covariate_table(
    df: pd.DataFrame | None,
    mapping: Mapping[str, str],
    source: str | None,
    id_cols: tuple[str, ...],
    notes: list[str],
) -> tuple[pd.DataFrame, str] | None:
    """Validate a covariate table.

    A table with only id columns is ignored, with a warning and a design note.

    Returns
    -------
    (DataFrame indexed by the id column(s) with float columns, source name), or None.
    """
    if df is None:
        return None
    fname = source or ("<covariate frame>" if len(id_cols) == 1 else "<session covariate frame>")
    if not isinstance(df, pd.DataFrame):
        raise DataError(f"{fname}: covariates must be a pandas DataFrame")
    if len(df) == 0:
        raise DataError(f"{fname}: file is empty (no data rows)")
    idmap = {k: v for k, v in mapping.items() if v in id_cols}
    frame, display = _rename(df, idmap, set(id_cols), fname)
    missing = [c for c in id_cols if c not in frame.columns]
    if missing:
        raise DataError(
            f"{where(fname)}: missing required column(s) {', '.join(map(repr, missing))}; "
            f"columns present: {', '.join(map(repr, display.values()))}"
        )
    blank = _blank_rows(frame)
    keep = np.flatnonzero(~blank)
    if len(keep) == 0:
        raise DataError(f"{fname}: file is empty (no data rows)")
    frame = frame.iloc[keep]
    rows = keep.astype(np.int64) + 2
    labels: dict[str, pd.Series] = {}
    for c in id_cols:
        codes, labs = _labels(frame[c])
        empty = np.flatnonzero(codes < 0)
        if len(empty):
            raise DataError(f"{where(fname, _intlist(rows[empty]), display[c])}: empty {c} id")
        labels[c] = _str_array(labs, codes)
    ids = pd.DataFrame(labels)
    dmask = ids.duplicated(keep=False).to_numpy()
    if dmask.any():
        first = ids.loc[dmask].iloc[0]
        same = (ids == first).all(axis=1).to_numpy()
        who = ", ".join(f"{c} '{first[c]}'" for c in id_cols)
        raise DataError(
            f"{where(fname, _intlist(rows[same]))}: {who} appears in more than one row "
            "(one row per id)"
        )
    value_cols = [c for c in frame.columns if c not in id_cols]
    if not value_cols:
        msg = f"{fname}: no covariate columns besides {', '.join(id_cols)}; table ignored"
        warnings.warn(msg, CaltarsWarning, stacklevel=3)
        notes.append(msg)
        return None
    out: dict[str, np.ndarray] = {}
    for c in value_cols:
        s = frame[c]
        if pd.api.types.is_bool_dtype(s.dtype):
            out[str(display[c])] = s.to_numpy(dtype=float, na_value=np.nan)
            continue
        vals, bad = _numbers(s)
        if bad.any():
            comma = _decimal_commas(s, fname, rows, display[c])
            if comma is not None:
                vals, bad = comma, np.zeros(len(s), dtype=bool)
                notes.append(f"{fname}: column '{display[c]}' read with decimal commas (3,5 = 3.5)")
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(
                f"{where(fname, int(rows[i]), display[c])}: non-numeric value "
                f"{_fmt_value(s.iloc[i])}; covariates must be numbers (code a category "
                "as 0/1 columns; leave unknown values blank)"
            )
        out[str(display[c])] = vals
    index = (
        pd.Index(ids[id_cols[0]], name=id_cols[0], dtype="str")
        if len(id_cols) == 1
        else pd.MultiIndex.from_frame(ids, names=list(id_cols))
    )
    return pd.DataFrame(out, index=index), fname


_DECIMAL_COMMA = re.compile(r"^[+-]?\d*,\d+$")
_WHOLE = re.compile(r"^[+-]?\d+$")
_THOUSANDS = re.compile(r"^[+-]?\d{1,3},\d{3}$")


def _decimal_commas(s: pd.Series, fname: str, rows: np.ndarray, col: str) -> np.ndarray | None:
    """A text column of numbers written with decimal commas, as floats (else None).

    Every non-blank value must be a whole number or one with a decimal comma,
    at least one the latter. When every comma is followed by exactly three
    digits (``1,000``) the column could as well hold thousands separators:
    that is a :class:`DataError` asking for plain numbers.
    """
    if pd.api.types.is_numeric_dtype(s.dtype) or pd.api.types.is_bool_dtype(s.dtype):
        return None
    text = s.astype("str").str.strip()
    blank = s.isna().to_numpy() | (text == "").to_numpy()
    present = text[~blank]
    comma = present.str.fullmatch(_DECIMAL_COMMA).to_numpy(dtype=bool)
    whole = present.str.fullmatch(_WHOLE).to_numpy(dtype=bool)
    if not comma.any() or not (comma | whole).all():
        return None
    if present[comma].str.fullmatch(_THOUSANDS).all():
        i = int(np.flatnonzero(~blank)[np.flatnonzero(comma)[0]])
        raise DataError(
            f"{where(fname, int(rows[i]), col)}: {present[comma].iloc[0]!r} could be a decimal "
            "comma or a thousands separator; write the number without a thousands separator "
            "(1000) or with a decimal point (1.000)"
        )
    out = np.full(len(s), np.nan)
    out[~blank] = present.str.replace(",", ".", regex=False).astype(float).to_numpy()
    return out


def _align_covariates(
    cov: tuple[pd.DataFrame, str], index: pd.Index, what: str, warn: bool
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Reindex a validated covariate table to the data's subjects or sessions.

    Returns
    -------
    (aligned float DataFrame, report section with source, columns, rows,
    missing per column and unknown ids)
    """
    table, source = cov
    known = table.index.isin(index)
    unknown_ids = table.index[~known]
    unknown = ["|".join(map(str, u)) if isinstance(u, tuple) else str(u) for u in unknown_ids]
    if unknown and warn:
        warnings.warn(
            f"{source}: covariate rows for {len(unknown)} {what} id(s) without any rating in "
            f"the ratings data, ignored: {', '.join(unknown[:10])}"
            f"{' ...' if len(unknown) > 10 else ''}",
            CaltarsWarning,
            stacklevel=4,
        )
    aligned = table.reindex(index).astype(float)
    section = {
        "source": source,
        "columns": [str(c) for c in aligned.columns],
        "rows": len(table),
        "missing": {str(c): int(n) for c, n in aligned.isna().sum().items()},
        "no_row": int((~index.isin(table.index)).sum()),
        "unknown": unknown,
    }
    return aligned, section
