"""Validating rating cells: each is used, missing or rejected, for one reason.

Missing ratings (blank cells) are not errors: they are counted and not used.
Invalid ratings (empty ids, unknown items, bad values, duplicates) raise one
:class:`~caltars_bayes._core.errors.DataError` naming the file, the row(s) as
a spreadsheet counts them and the column, or, with ``on_invalid="drop"``,
are *rejected*: kept out of the data, counted per subject and listed with
their reason, so that ``ratings_read == used + missing + rejected``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from caltars_bayes._core.errors import DataError, where
from caltars_bayes.data.cells import _B_OK, _Cells, _rating_text
from caltars_bayes.data.report import MAX_REJECTED_LISTED
from caltars_bayes.data.values import _intlist, _str_array
from caltars_bayes.spec.instrument import Instrument

# Reasons a cell is rejected (order = order in which errors are raised).
_R_OK, _R_SUBJECT, _R_SESSION, _R_JUDGE, _R_ITEM, _R_RATING, _R_DUPLICATE = range(7)
_REASON_NAMES = {
    _R_SUBJECT: "empty subject id",
    _R_SESSION: "empty session id",
    _R_JUDGE: "empty judge id",
    _R_ITEM: "unknown item",
    _R_RATING: "invalid rating",
    _R_DUPLICATE: "duplicate",
}


def _validate(
    cells: _Cells, instrument: Instrument, fname: str, layout: str, on_invalid: str
) -> tuple[np.ndarray, np.ndarray, dict[int, int]]:
    """Classify each cell.

    Returns
    -------
    status : 0 used, 1 missing, 2 rejected
    reason : the _R_* code of rejected cells
    dup_rows : for duplicated cells, cell index -> the other row it duplicates
    """
    n = len(cells.row)
    reason = np.zeros(n, dtype=np.int8)
    disp = cells.display

    def first(mask: np.ndarray) -> np.ndarray:
        return np.flatnonzero(mask & (reason == _R_OK))

    def rows_of(idx: np.ndarray) -> list[int]:
        return _intlist(pd.unique(cells.row[idx]))

    for code, name in ((_R_SUBJECT, "subject"), (_R_SESSION, "session"), (_R_JUDGE, "judge")):
        bad = first(cells.ids[name][0] < 0)
        if len(bad) and on_invalid == "error":
            raise DataError(f"{where(fname, rows_of(bad), disp.get(name, name))}: empty {name} id")
        reason[bad] = code
    bad = first(cells.item < 0)
    if len(bad):
        if on_invalid == "error":
            assert cells.item_raw is not None
            rc, rl = cells.item_raw
            codes = [rl[c] if c >= 0 else "" for c in pd.unique(rc[bad])]
            shown = ", ".join(repr(c) for c in codes[:5])
            more = f" (+{len(codes) - 5} more)" if len(codes) > 5 else ""
            raise DataError(
                f"{where(fname, rows_of(bad), disp.get('item', 'item'))}: item code(s) not in "
                f"{instrument.name}: {shown}{more}; known items: {', '.join(instrument.items[:6])}"
                f"{', ...' if len(instrument.items) > 6 else ''}"
            )
        reason[bad] = _R_ITEM
    bad = first(cells.bad != _B_OK)
    if len(bad):
        if on_invalid == "error":
            i = int(bad[0])
            col = disp.get(cells.colnames[cells.col[i]], cells.colnames[cells.col[i]])
            more = ""
            if len(bad) > 1:
                others = rows_of(bad[1:])
                shown = ", ".join(map(str, others[:5]))
                more = (
                    f" ({len(bad)} invalid ratings in all; also row(s) {shown}"
                    f"{' ...' if len(others) > 5 else ''}; on_invalid='drop' rejects them)"
                )
            raise DataError(
                f"{where(fname, int(cells.row[i]), col)}: {_rating_text(cells, i, instrument)}"
                f"{more}"
            )
        reason[bad] = _R_RATING
    # Duplicates among cells otherwise usable (missing ratings take no part).
    dup_rows: dict[int, int] = {}
    cand = np.flatnonzero((reason == _R_OK) & ~cells.missing)
    keys = pd.DataFrame(
        {
            "s": cells.ids["subject"][0][cand],
            "t": cells.ids["session"][0][cand],
            "j": cells.ids["judge"][0][cand],
            "i": cells.item[cand],
        }
    )
    dmask = keys.duplicated(keep=False).to_numpy()
    if dmask.any():
        dup = cand[dmask]
        dk = keys.loc[dmask].copy()
        dk["row"] = cells.row[dup]
        dk["cell"] = dup
        dk = dk.sort_values("row", kind="stable")
        g = dk.groupby(["s", "t", "j", "i"], sort=False)
        first_row = g["row"].transform("first").to_numpy()
        nth = g.cumcount().to_numpy()
        second = dk["row"].where(nth == 1)
        second_row = second.groupby([dk["s"], dk["t"], dk["j"], dk["i"]]).transform("max")
        if on_invalid == "error":
            top = dk.iloc[0]
            group = dk.loc[first_row == top["row"], "row"]
            sl, tl, jl = (cells.ids[x][1] for x in ("subject", "session", "judge"))
            who = f"subject '{sl[top['s']]}', session '{tl[top['t']]}', judge '{jl[top['j']]}'"
            if layout == "wide":
                what = f"{who} appears in more than one row"
            else:
                what = f"{who}, item '{instrument.items[top['i']]}' is rated more than once"
            raise DataError(
                f"{where(fname, _intlist(pd.unique(group)))}: duplicated rating: {what}"
            )
        reason[dup] = _R_DUPLICATE
        other = np.where(nth == 0, second_row.to_numpy(), first_row)
        dup_rows = dict(zip(_intlist(dk["cell"]), _intlist(other), strict=True))
    status = np.where(reason != _R_OK, 2, np.where(cells.missing, 1, 0)).astype(np.int8)
    return status, reason, dup_rows


def _tally(
    cells: _Cells, subj_codes: np.ndarray, subj_labels: list[str], status: np.ndarray, layout: str
) -> pd.DataFrame:
    """Per subject (label; '' for an empty id): rows, cells, missing, rejected."""
    m = len(subj_labels) + 1
    key = subj_codes + 1  # 0 = empty subject id
    cells_n = np.bincount(key, minlength=m)
    missing_n = np.bincount(key, weights=(status == 1), minlength=m).astype(np.int64)
    rejected_n = np.bincount(key, weights=(status == 2), minlength=m).astype(np.int64)
    if layout == "wide":
        k = max(len(cells.colnames), 1)
        rows_n = cells_n // k
    else:
        rows_n = cells_n
    return pd.DataFrame(
        {"rows": rows_n, "cells": cells_n, "missing": missing_n, "rejected": rejected_n},
        index=pd.Index(["", *subj_labels], name="subject", dtype="str"),
    )


def _rejected_table(
    cells: _Cells,
    reason: np.ndarray,
    dup_rows: dict[int, int],
    instrument: Instrument,
    subj_codes: np.ndarray,
    subj_labels: list[str],
) -> pd.DataFrame:
    """The rejected cells: row, column, subject, reason (category) and text (first few)."""
    idx = np.flatnonzero(reason != _R_OK)
    idx = idx[np.argsort(cells.row[idx], kind="stable")]
    disp = cells.display
    colnames = [disp.get(c, c) for c in cells.colnames]
    col_of = {
        _R_SUBJECT: disp.get("subject", "subject"),
        _R_SESSION: disp.get("session", "session"),
        _R_JUDGE: disp.get("judge", "judge"),
        _R_ITEM: disp.get("item", "item"),
    }
    texts: list[str] = []
    for i in idx[:MAX_REJECTED_LISTED]:
        r = reason[i]
        if r in (_R_SUBJECT, _R_SESSION, _R_JUDGE):
            texts.append(_REASON_NAMES[int(r)])
        elif r == _R_ITEM:
            assert cells.item_raw is not None
            c = cells.item_raw[0][i]
            code = cells.item_raw[1][c] if c >= 0 else ""
            texts.append(f"item {code!r} is not an item of {instrument.name}")
        elif r == _R_RATING:
            texts.append(_rating_text(cells, int(i), instrument))
        else:
            texts.append(
                f"duplicate: the same subject, session, judge and item as row "
                f"{dup_rows.get(int(i), '?')}"
            )
    texts.extend([""] * (len(idx) - len(texts)))
    rcodes = reason[idx]
    column = np.asarray(colnames, dtype=object)[cells.col[idx]] if len(idx) else np.array([])
    for code, name in col_of.items():
        column = np.where(rcodes == code, name, column) if len(idx) else column
    subj = np.asarray(["", *subj_labels], dtype=object)[subj_codes[idx] + 1]
    cats = list(_REASON_NAMES.values())
    return pd.DataFrame(
        {
            "row": cells.row[idx].astype(np.int64),
            "column": pd.Series(column, dtype="str"),
            "subject": pd.Series(subj, dtype="str"),
            "reason": pd.Categorical(
                [_REASON_NAMES[int(r)] for r in rcodes]
                if len(idx) < 10_000
                else pd.Series(rcodes).map(_REASON_NAMES),
                categories=cats,
            ),
            "text": pd.Series(texts, dtype="str"),
        }
    )


def _used_ratings(
    cells: _Cells, status: np.ndarray, instrument: Instrument, fname: str
) -> pd.DataFrame:
    """The used cells, long: ``subject, session, judge, item, rating, source_row``."""
    subj_codes, subj_labels = cells.ids["subject"]
    used = status == 0
    long = pd.DataFrame(
        {
            "subject": _str_array(subj_labels, subj_codes[used]),
            "session": _str_array(cells.ids["session"][1], cells.ids["session"][0][used]),
            "judge": _str_array(cells.ids["judge"][1], cells.ids["judge"][0][used]),
            "item": _str_array(instrument.items, cells.item[used]),
            "rating": cells.rating[used].astype(np.int64),
            "source_row": cells.row[used],
        }
    )
    if len(long) == 0:
        raise DataError(
            f"{fname}: no usable ratings ({int((status == 1).sum())} missing, "
            f"{int((status == 2).sum())} rejected)"
        )
    return long
