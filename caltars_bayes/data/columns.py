"""The columns of a rating table: canonical names, the user's mapping, the layout.

Columns are renamed to the canonical ``subject, session, judge, item,
rating`` (or, in the wide layout, item codes) through the user's mapping, an
exact name or a unique case-insensitive match. The layout is told from the
columns when not given, and the required columns are checked, with one
:class:`~caltars_bayes._core.errors.DataError` naming what is missing and the
columns present.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Literal

import pandas as pd

from caltars_bayes._core.errors import DataError, where
from caltars_bayes.spec.instrument import Instrument

ID_COLUMNS = ("subject", "session", "judge")
LONG_COLUMNS = ("subject", "session", "judge", "item", "rating")
SELF_JUDGE = "self"
SINGLE_SESSION = "1"

Layout = Literal["auto", "long", "wide"]
OnInvalid = Literal["error", "drop"]


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise DataError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")


def _rename(
    df: pd.DataFrame, mapping: Mapping[str, str], targets: set[str], fname: str
) -> tuple[pd.DataFrame, dict[str, str]]:
    """Rename columns to canonical names.

    Returns
    -------
    (renamed frame, canonical name -> the user's column name)
    """
    cols = [str(c).strip() for c in df.columns]
    lower_targets: dict[str, list[str]] = {}
    for t in targets:
        lower_targets.setdefault(t.lower(), []).append(t)
    new: list[str] = []
    for c in cols:
        if c in mapping:
            new.append(mapping[c])
        elif c in targets:
            new.append(c)
        elif len(lower_targets.get(c.lower(), [])) == 1:
            new.append(lower_targets[c.lower()][0])
        else:
            new.append(c)
    seen: dict[str, str] = {}
    for c, n in zip(cols, new, strict=True):
        if n in seen:
            raise DataError(
                f"{where(fname)}: columns '{seen[n]}' and '{c}' both give column '{n}'; "
                "keep one or rename the other"
            )
        seen[n] = c
    out = df.copy(deep=False)
    out.columns = new
    return out, seen


def _check_item_like(
    cols: list[str], instrument: Instrument, display: dict[str, str], fname: str
) -> None:
    """Wide layout: a column that looks like an item code but is not one is an error."""
    stems = {re.sub(r"\d+$", "", i) for i in instrument.items if re.search(r"\d+$", i)}
    stems.discard("")
    if not stems:
        return
    pat = re.compile(r"^(" + "|".join(map(re.escape, sorted(stems))) + r")\d+$", re.IGNORECASE)
    items = set(instrument.items)
    bad = [c for c in cols if c not in items and c not in LONG_COLUMNS and pat.match(c)]
    if bad:
        shown = ", ".join(repr(display.get(c, c)) for c in bad[:5])
        raise DataError(
            f"{where(fname, column=display.get(bad[0], bad[0]))}: column(s) {shown}"
            f"{f' (+{len(bad) - 5} more)' if len(bad) > 5 else ''} look like item codes but "
            f"are not items of {instrument.name}; rename or drop them, or fix the "
            "instrument spec"
        )


def _check_mapping(
    df: pd.DataFrame,
    instrument: Instrument,
    columns: Mapping[str, str] | None,
    covariates: pd.DataFrame | None,
    session_covariates: pd.DataFrame | None,
    fname: str,
) -> dict[str, str]:
    """The user's column mapping, stripped, once each target and source is checked."""
    mapping = {str(k).strip(): str(v).strip() for k, v in (columns or {}).items()}
    items = instrument.items
    allowed = set(LONG_COLUMNS) | set(items)
    for k, v in mapping.items():
        if v not in allowed:
            raise DataError(
                f"{where(fname)}: column mapping {k!r} -> {v!r}: {v!r} is neither one of "
                f"{', '.join(LONG_COLUMNS)} nor an item of {instrument.name}"
            )
    tables = [df] + [t for t in (covariates, session_covariates) if t is not None]
    present = {str(c).strip() for t in tables for c in t.columns}
    absent = [k for k in mapping if k not in present]
    if absent:
        raise DataError(
            f"{where(fname)}: column mapping names column(s) "
            f"{', '.join(map(repr, absent))} that are not in the table; columns present: "
            f"{', '.join(map(repr, [str(c) for c in df.columns]))}"
        )
    return mapping


def _prepare_columns(
    df: pd.DataFrame,
    instrument: Instrument,
    layout: str,
    mapping: Mapping[str, str],
    fname: str,
) -> tuple[pd.DataFrame, dict[str, str], str, list[str]]:
    """Rename a rating table's columns, tell its layout and check the required columns.

    Returns
    -------
    (renamed frame, canonical column -> the user's column name, layout
    (``"long"`` or ``"wide"``), design notes)
    """
    items = instrument.items
    allowed = set(LONG_COLUMNS) | set(items)
    if len(df) == 0 or df.shape[1] == 0:
        raise DataError(f"{fname}: file is empty (no data rows)")
    frame, display = _rename(df, mapping, allowed, fname)
    cols = list(frame.columns)
    if layout == "auto":
        if "item" in cols and "rating" in cols:
            layout = "long"
        elif any(c in items for c in cols):
            layout = "wide"
        else:
            raise DataError(
                f"{where(fname)}: cannot tell the layout: no 'item' and 'rating' columns "
                f"(long layout) and no item-code columns such as {items[0]!r} (wide layout); "
                f"columns present: {', '.join(map(repr, display.values()))}; "
                "map yours with columns={...}"
            )
    notes: list[str] = []
    required = ["subject", "judge"] + (["item", "rating"] if layout == "long" else [])
    if "judge" not in cols and instrument.rater == "self-report":
        required.remove("judge")
        notes.append(f"self-report instrument: no judge column, every row judged by '{SELF_JUDGE}'")
    missing_cols = [c for c in required if c not in cols]
    if missing_cols:
        hint = ""
        if "judge" in missing_cols:
            hint = (
                f" ({instrument.name} is rated by observers: it needs a judge column;"
                " map yours with columns={'rater': 'judge'})"
            )
        raise DataError(
            f"{where(fname)}: missing required column(s) "
            f"{', '.join(map(repr, missing_cols))}{hint}; columns present: "
            f"{', '.join(map(repr, display.values()))}"
        )
    if layout == "wide":
        item_cols = [c for c in cols if c in items]
        if not item_cols:
            raise DataError(
                f"{where(fname)}: wide layout but no column is an item of "
                f"{instrument.name} (items: {', '.join(items[:5])}, ...); "
                f"columns present: {', '.join(map(repr, display.values()))}"
            )
        _check_item_like(cols, instrument, display, fname)
    if "session" not in cols:
        notes.append(f"no session column: every row treated as session {SINGLE_SESSION}")
    return frame, display, layout, notes
