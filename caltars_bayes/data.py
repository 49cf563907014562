"""Rating data: read, validate once, label, and report.

:class:`RatingData` is the one validated, labelled container of a trial's
ratings. Tables come in two layouts:

long
    one row per rating, columns ``subject, session, judge, item, rating``;
wide
    one row per subject x session x judge, one column per item code.

Everything a user can get wrong is checked here, once, at the boundary. Each
:class:`~caltars_bayes.errors.DataError` is one line naming the file, the
row(s) as a spreadsheet counts them (the header is row 1, the first data row is
row 2) and the column. Records built from a data frame are numbered the same
way, as if the frame were written to a spreadsheet with a header row.

Missing ratings (blank cells) are not errors: they are counted and not used.
With ``on_invalid="drop"`` invalid ratings (bad values, unknown items,
duplicates, empty ids) are *rejected* instead of raising: kept out of the data
and listed in the :class:`DataReport`, whose invariant is
``ratings_read == used + missing + rejected``.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from caltars_bayes.errors import CaltarsWarning, DataError, where
from caltars_bayes.spec import Instrument

__all__ = [
    "DataReport",
    "RatingData",
    "read_table",
]

ID_COLUMNS = ("subject", "session", "judge")
LONG_COLUMNS = ("subject", "session", "judge", "item", "rating")
SELF_JUDGE = "self"
SINGLE_SESSION = "1"
#: At most this many rejected cells are listed one by one in the report.
MAX_REJECTED_LISTED = 200
#: At most this many session labels are listed per judge in ``report.crossing``.
MAX_CROSSING_LISTED = 500
_IO_HINT = "pip install 'caltars-bayes[io]'"
_HAS_ARROW = importlib.util.find_spec("pyarrow") is not None

Layout = Literal["auto", "long", "wide"]
OnInvalid = Literal["error", "drop"]

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
# Kinds of invalid rating value.
_B_OK, _B_NOT_NUMBER, _B_NOT_WHOLE, _B_RANGE = range(4)
_INT_FLOAT = re.compile(r"^[+-]?\d+\.0*$")


# --------------------------------------------------------------------------- reading


def _need(module: str, what: str, path: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise DataError(f"{path}: reading {what} needs the '{module}' package: {_IO_HINT}")


def read_table(path: str | Path, sheet: str | int | None = None) -> pd.DataFrame:
    """Read a rating or covariate table from a file.

    Parameters
    ----------
    path : CSV (``.csv``), TSV (``.tsv``, ``.tab``), Excel (``.xlsx``, ``.xls``),
        SPSS (``.sav``) or parquet (``.parquet``, ``.pq``) file.
    sheet : Excel sheet name or 0-based index (default: the first sheet).

    Returns
    -------
    DataFrame
        The table as stored, one row per data row, in file order. CSV and TSV
        cells are read as text (so ids such as ``007`` keep their zeros) and
        blank lines are kept as empty rows, so row positions match the file.

    Raises
    ------
    DataError
        If the file is missing, empty, of an unknown kind or unreadable, or an
        optional reader package is not installed.
    """
    p = Path(path)
    name = str(path)
    if not p.exists():
        raise DataError(f"{name}: file not found")
    if p.is_dir():
        raise DataError(f"{name}: is a directory, not a table file")
    ext = p.suffix.lower()
    kinds = {
        ".csv": "CSV",
        ".tsv": "TSV",
        ".tab": "TSV",
        ".xlsx": "Excel",
        ".xls": "Excel",
        ".sav": "SPSS",
        ".parquet": "parquet",
        ".pq": "parquet",
    }
    if ext not in kinds:
        raise DataError(
            f"{name}: unknown file type {ext or '(no extension)'!r}; use one of {', '.join(kinds)}"
        )
    if p.stat().st_size == 0:
        raise DataError(f"{name}: file is empty")
    kind = kinds[ext]
    try:
        if kind in ("CSV", "TSV"):
            df = _read_text(p, "," if kind == "CSV" else "\t")
        elif kind == "Excel":
            if ext == ".xlsx":
                _need("openpyxl", "Excel files", name)
            elif importlib.util.find_spec("xlrd") is None:
                raise DataError(
                    f"{name}: reading old .xls files needs the 'xlrd' package "
                    "(pip install xlrd); or save the sheet as .xlsx"
                )
            sheets = pd.read_excel(p, sheet_name=None if sheet is None else [sheet])
            if not sheets:
                raise DataError(f"{name}: file is empty")
            df = next(iter(sheets.values()))
        elif kind == "SPSS":
            _need("pyreadstat", "SPSS files", name)
            df = pd.read_spss(p, convert_categoricals=False)
        else:
            _need("pyarrow", "parquet files", name)
            df = pd.read_parquet(p)
    except DataError:
        raise
    except pd.errors.EmptyDataError:
        raise DataError(f"{name}: file is empty") from None
    except (ValueError, KeyError) as exc:
        if kind == "Excel" and sheet is not None and "not found" in str(exc).lower():
            raise DataError(f"{name}: no sheet {sheet!r} ({_one_line(exc)})") from None
        raise DataError(f"{name}: cannot read as {kind}: {_one_line(exc)}") from None
    except Exception as exc:
        raise DataError(f"{name}: cannot read as {kind}: {_one_line(exc)}") from None
    df.columns = [str(c).strip() for c in df.columns]
    if len(df) == 0 or _blank_rows(df).all():
        raise DataError(f"{name}: file is empty (no data rows)")
    return df


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] if text else type(exc).__name__


def _read_text(p: Path, sep: str) -> pd.DataFrame:
    kw: dict[str, Any] = {"dtype": str, "keep_default_na": True, "skip_blank_lines": False}
    try:
        df = pd.read_csv(p, sep=sep, encoding="utf-8-sig", **kw)
    except UnicodeDecodeError:
        df = pd.read_csv(p, sep=sep, encoding="latin-1", **kw)
    # A semicolon-separated "CSV" (as some spreadsheet locales write) reads as one column.
    if sep == "," and df.shape[1] == 1 and ";" in str(df.columns[0]):
        try:
            df = pd.read_csv(p, sep=";", encoding="utf-8-sig", **kw)
        except UnicodeDecodeError:
            df = pd.read_csv(p, sep=";", encoding="latin-1", **kw)
    return df


# --------------------------------------------------------------------------- helpers


def _is_blank(v: Any) -> bool:
    if v is None or v is pd.NA or v is pd.NaT:
        return True
    if isinstance(v, float | np.floating):
        return bool(np.isnan(v))
    if isinstance(v, str):
        return not v.strip()
    return False


def _factor(s: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Factorize a column; blank strings and NA get code -1. Returns (codes, uniques)."""
    codes, uniq = pd.factorize(s, use_na_sentinel=True)
    uniq = np.asarray(uniq, dtype=object)
    blank = np.fromiter((_is_blank(u) for u in uniq), dtype=bool, count=len(uniq))
    codes = np.asarray(codes, dtype=np.int64)
    if blank.any():
        remap = np.where(blank, -1, np.arange(len(uniq)))
        codes = np.where(codes >= 0, remap[np.maximum(codes, 0)], -1)
    return codes, uniq


def _blank_rows(df: pd.DataFrame) -> np.ndarray:
    out = np.ones(len(df), dtype=bool)
    for j in range(df.shape[1]):
        codes, _ = _factor(df.iloc[:, j])
        out &= codes < 0
    return out


def _label(v: Any) -> str | None:
    """Normalise one id value to a string label (None when blank)."""
    if _is_blank(v):
        return None
    if isinstance(v, bool | np.bool_):
        return str(bool(v))
    if isinstance(v, int | np.integer):
        return str(int(v))
    if isinstance(v, float | np.floating):
        f = float(v)
        if math.isfinite(f) and f.is_integer():
            return str(int(f))
        return repr(f)
    text = str(v).strip()
    if _INT_FLOAT.match(text):
        text = text.split(".")[0].lstrip("+")
    return text


def _labels(s: pd.Series) -> tuple[np.ndarray, list[str]]:
    """Id column -> (codes into labels with -1 for blank, labels)."""
    codes, uniq = _factor(s)
    labs = [_label(u) for u in uniq]
    keep = [x for x in labs if x is not None]
    lab_codes, lab_uniq = pd.factorize(pd.Series(keep, dtype=object))
    remap = np.full(len(uniq), -1, dtype=np.int64)
    k = 0
    for i, x in enumerate(labs):
        if x is not None:
            remap[i] = lab_codes[k]
            k += 1
    out = np.where(codes >= 0, remap[np.maximum(codes, 0)], -1)
    return out, [str(x) for x in lab_uniq]


def _numbers(s: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Column -> (float values, NaN for blank or non-numeric; non-numeric mask)."""
    if pd.api.types.is_numeric_dtype(s.dtype) and not pd.api.types.is_bool_dtype(s.dtype):
        v = s.to_numpy(dtype=float, na_value=np.nan)
        bad = np.isinf(v)
        return np.where(bad, np.nan, v), bad
    codes, uniq = _factor(s)
    uv = np.full(len(uniq), np.nan)
    ubad = np.zeros(len(uniq), dtype=bool)
    for i, u in enumerate(uniq):
        if _is_blank(u):
            continue
        if isinstance(u, bool | np.bool_):
            ubad[i] = True
            continue
        try:
            f = float(u.strip()) if isinstance(u, str) else float(u)
        except (TypeError, ValueError):
            ubad[i] = True
            continue
        if not math.isfinite(f) or (isinstance(u, str) and "_" in u):
            ubad[i] = True
        else:
            uv[i] = f
    ok = codes >= 0
    idx = np.maximum(codes, 0)
    vals = np.where(ok, uv[idx] if len(uv) else np.nan, np.nan)
    bad = ok & (ubad[idx] if len(ubad) else False)
    return vals, bad


def _order_labels(labels: Iterable[str]) -> tuple[list[str], np.ndarray | None]:
    """Order labels numerically when all are numbers, else lexically.

    Returns
    -------
    (ordered labels, their numeric values or None)
    """
    labs = sorted(set(labels))
    nums: list[float] = []
    for x in labs:
        try:
            f = float(x)
        except ValueError:
            return labs, None
        if not math.isfinite(f):
            return labs, None
        nums.append(f)
    order = sorted(range(len(labs)), key=lambda i: (nums[i], labs[i]))
    return [labs[i] for i in order], np.array([nums[i] for i in order], dtype=float)


def _fmt_value(v: Any) -> str:
    if isinstance(v, str):
        try:
            float(v)
        except ValueError:
            return repr(v.strip())
        return v.strip()
    if isinstance(v, float | np.floating) and math.isfinite(float(v)):
        return f"{float(v):g}"
    return repr(v)


def _str_array(labels: Sequence[str], codes: np.ndarray) -> pd.Series:
    """Labels taken at codes, as a ``str`` Series (fast through arrow when available)."""
    codes = np.asarray(codes, dtype=np.int64)
    if _HAS_ARROW:
        import pyarrow as pa

        arr = pa.array(list(labels), type=pa.large_string()).take(pa.array(codes))
        return pd.Series(arr, dtype="str")
    obj = np.asarray(list(labels), dtype=object)
    return pd.Series(obj[codes] if len(obj) else np.array([], dtype=object), dtype="str")


def _lookup(labels: Sequence[str], values: pd.Series | np.ndarray) -> np.ndarray:
    """Positions of values in labels (-1 where absent)."""
    codes, uniq = pd.factorize(pd.Series(values))
    pos = {x: k for k, x in enumerate(labels)}
    m = np.array([pos.get(str(u), -1) for u in uniq] + [-1], dtype=np.int64)
    return m[codes]


def _intlist(a: Iterable[Any]) -> list[int]:
    return [int(x) for x in a]


# --------------------------------------------------------------------------- columns


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


# --------------------------------------------------------------------------- cells


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
    missing: np.ndarray  # bool: rating blank


def _rating_cells(s: pd.Series, rmin: int, rmax: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    vals, notnum = _numbers(s)
    missing = np.isnan(vals) & ~notnum
    bad = np.zeros(len(vals), dtype=np.int8)
    bad[notnum] = _B_NOT_NUMBER
    with np.errstate(invalid="ignore"):
        present = ~np.isnan(vals)
        whole = present & (np.floor(vals) == vals)
        bad[present & ~whole] = _B_NOT_WHOLE
        bad[whole & ((vals < rmin) | (vals > rmax))] = _B_RANGE
    vals = np.where(bad == _B_OK, vals, np.nan)
    return vals, bad, missing


# --------------------------------------------------------------------------- report


@dataclass
class DataReport:
    """What was read, used, missing and rejected, and how the design is crossed.

    The invariant ``ratings_read == used + missing + rejected`` always holds
    (for the long layout a rating is a row; for the wide layout it is a cell).

    Attributes
    ----------
    sources : file (or frame) names: ``ratings``, ``covariates``, ``session_covariates``.
    rows_read, ratings_read : data rows read (blank rows not counted) and
        ratings read (rows for long data, item cells for wide data).
    used, missing, rejected : how the ratings read were accounted for.
    rejected_reasons : count per reason; rejected_rows : the first
        :data:`MAX_REJECTED_LISTED` rejected cells as ``{row, column, reason}``.
    ignored_columns : columns that are neither ids nor items (nor item/rating).
    ratings_per_judge, sessions_per_judge : counts per judge label.
    sessions_per_subject, judges_per_session : ``{min, median, max}``.
    crossing : judge -> ``{n_sessions, sessions (labels, capped), truncated}``.
    design_notes : notes on the design and on what was left out (see :meth:`add_note`).
    covariates, session_covariates : ``{source, columns, rows, missing (per
        column, after alignment), no_row, unknown (ids not in the ratings)}`` or None.
    """

    instrument: str
    layout: str
    sources: dict[str, str | None] = field(default_factory=dict)
    rows_read: int = 0
    ratings_read: int = 0
    used: int = 0
    missing: int = 0
    rejected: int = 0
    rejected_reasons: dict[str, int] = field(default_factory=dict)
    rejected_rows: list[dict[str, Any]] = field(default_factory=list)
    blank_rows_skipped: int = 0
    ignored_columns: list[str] = field(default_factory=list)
    n_subjects: int = 0
    n_sessions: int = 0
    n_judges: int = 0
    n_items: int = 0
    n_items_observed: int = 0
    n_scales: int = 0
    items_unobserved: list[str] = field(default_factory=list)
    ratings_per_judge: dict[str, int] = field(default_factory=dict)
    sessions_per_subject: dict[str, float] = field(default_factory=dict)
    judges_per_session: dict[str, float] = field(default_factory=dict)
    sessions_per_judge: dict[str, int] = field(default_factory=dict)
    sessions_multiple_judges: int = 0
    crossing: dict[str, dict[str, Any]] = field(default_factory=dict)
    subjects_without_ratings: list[str] = field(default_factory=list)
    design_notes: list[str] = field(default_factory=list)
    covariates: dict[str, Any] | None = None
    session_covariates: dict[str, Any] | None = None

    def add_note(self, note: str) -> None:
        """Append a design note (e.g. a model part dropped for this design)."""
        if note not in self.design_notes:
            self.design_notes.append(note)

    def check(self) -> None:
        """Assert the accounting invariant ``ratings_read == used + missing + rejected``."""
        total = self.used + self.missing + self.rejected
        if self.ratings_read != total:  # pragma: no cover - a bug, not a user error
            raise AssertionError(
                f"data report does not add up: read {self.ratings_read} != used {self.used} "
                f"+ missing {self.missing} + rejected {self.rejected}"
            )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of the report."""
        return json.loads(json.dumps(asdict(self), default=_json_default))

    def to_json(self, path: str | Path) -> None:
        """Write the report as indented JSON."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    def format(self) -> str:
        """A readable multi-line text report."""
        lines = [f"Data report ({self.instrument})"]
        for k, v in self.sources.items():
            if v is not None:
                lines.append(f"  {k}: {v}")
        unit = "cells" if self.layout == "wide" else "rows"
        lines.append(
            f"  layout: {self.layout}; rows read: {self.rows_read}"
            + (
                f" ({self.blank_rows_skipped} blank rows skipped)"
                if self.blank_rows_skipped
                else ""
            )
        )
        lines.append(
            f"  ratings read ({unit}): {self.ratings_read} = used {self.used}"
            f" + missing {self.missing} + rejected {self.rejected}"
        )
        sps = self.sessions_per_subject
        lines.append(
            f"  subjects: {self.n_subjects}; sessions: {self.n_sessions}"
            + (
                f" (per subject min {sps['min']:g}, median {sps['median']:g}, max {sps['max']:g})"
                if sps
                else ""
            )
        )
        lines.append(
            f"  judges: {self.n_judges}; items observed: {self.n_items_observed} of {self.n_items};"
            f" scales: {self.n_scales}"
        )
        if self.items_unobserved:
            lines.append(f"  items never rated: {', '.join(self.items_unobserved)}")
        if self.ratings_per_judge:
            lines.append("  judge: ratings, sessions rated")
            for j, n in self.ratings_per_judge.items():
                lines.append(f"    {j}: {n}, {self.sessions_per_judge.get(j, 0)}")
        jps = self.judges_per_session
        if jps:
            lines.append(
                f"  judges per session: min {jps['min']:g}, median {jps['median']:g}, "
                f"max {jps['max']:g}; sessions rated by 2+ judges: {self.sessions_multiple_judges}"
            )
        if self.rejected:
            reasons = ", ".join(f"{k} {v}" for k, v in self.rejected_reasons.items())
            lines.append(f"  rejected: {self.rejected} ({reasons})")
            for e in self.rejected_rows[:20]:
                lines.append(f"    row {e['row']}, column '{e['column']}': {e['reason']}")
            if self.rejected > min(20, len(self.rejected_rows)):
                lines.append(f"    ... {self.rejected - min(20, len(self.rejected_rows))} more")
        if self.ignored_columns:
            lines.append(f"  ignored columns: {', '.join(self.ignored_columns)}")
        if self.subjects_without_ratings:
            lines.append(
                "  subjects without any usable rating: "
                + ", ".join(self.subjects_without_ratings[:20])
            )
        for title, cov in (
            ("covariates", self.covariates),
            ("session covariates", self.session_covariates),
        ):
            if cov is None:
                continue
            cols = ", ".join(f"{c} ({n} missing)" for c, n in cov["missing"].items())
            lines.append(f"  {title} ({cov['source']}): {cols}")
            unk = cov.get("unknown", [])
            if unk:
                lines.append(
                    f"    rows for {len(unk)} unknown id(s) ignored: {', '.join(unk[:10])}"
                )
        if self.design_notes:
            lines.append("  notes:")
            lines.extend(f"    - {n}" for n in self.design_notes)
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def _spread(counts: np.ndarray) -> dict[str, float]:
    if len(counts) == 0:
        return {}
    return {
        "min": float(np.min(counts)),
        "median": float(np.median(counts)),
        "max": float(np.max(counts)),
    }


# --------------------------------------------------------------------------- container


@dataclass(frozen=True, eq=False)
class RatingData:
    """The validated, labelled ratings of one trial.

    Build with :meth:`from_frame` or :meth:`from_files`; do not call the
    constructor directly.

    Attributes
    ----------
    instrument : the :class:`~caltars_bayes.spec.Instrument`.
    ratings : DataFrame of used ratings with columns ``subject, session, judge,
        item, scale, rating, score, source_row`` (``rating`` raw, ``score``
        after reverse keying, ``source_row`` the spreadsheet row), sorted by
        subject, session, judge and item (instrument order).
    subjects, judges, items, scales : tuples of labels; ``items`` and
        ``scales`` are all of the instrument's, observed or not.
    sessions : DataFrame with one row per observed subject x session, columns
        ``subject, session, session_time, label``.
    session_labels : ``sessions.label`` as a tuple (``"subject|session"``).
    subject_idx, session_idx, judge_idx, item_idx, scale_idx, y : int64 arrays
        aligned with ``ratings``; ``y = score - response_min``.
    item_scale_idx : for each item, the index of its scale.
    session_subject_idx : for each row of ``sessions``, the index of its subject.
    covariates : float DataFrame indexed by ``subject`` (``subjects`` order), or None.
    session_covariates : float DataFrame indexed by (``subject``, ``session``)
        in ``sessions`` order, or None.
    report : the :class:`DataReport`.
    """

    instrument: Instrument
    ratings: pd.DataFrame = field(repr=False)
    subjects: tuple[str, ...] = field(repr=False)
    judges: tuple[str, ...] = field(repr=False)
    items: tuple[str, ...] = field(repr=False)
    scales: tuple[str, ...] = field(repr=False)
    sessions: pd.DataFrame = field(repr=False)
    session_labels: tuple[str, ...] = field(repr=False)
    subject_idx: np.ndarray = field(repr=False)
    session_idx: np.ndarray = field(repr=False)
    judge_idx: np.ndarray = field(repr=False)
    item_idx: np.ndarray = field(repr=False)
    scale_idx: np.ndarray = field(repr=False)
    y: np.ndarray = field(repr=False)
    item_scale_idx: np.ndarray = field(repr=False)
    session_subject_idx: np.ndarray = field(repr=False)
    covariates: pd.DataFrame | None = field(repr=False)
    session_covariates: pd.DataFrame | None = field(repr=False)
    report: DataReport = field(repr=False)
    # Per-subject accounting (rows, cells, missing, rejected) and the rejected
    # cells, kept so that subset_subjects can re-derive a report that adds up.
    _tally: pd.DataFrame = field(repr=False)
    _rejected: pd.DataFrame = field(repr=False)

    # ------------------------------------------------------------------ sizes

    @property
    def n_ratings(self) -> int:
        return len(self.y)

    @property
    def n_subjects(self) -> int:
        return len(self.subjects)

    @property
    def n_judges(self) -> int:
        return len(self.judges)

    @property
    def n_items(self) -> int:
        return len(self.items)

    @property
    def n_scales(self) -> int:
        return len(self.scales)

    @property
    def n_sessions(self) -> int:
        return len(self.sessions)

    def __repr__(self) -> str:
        return (
            f"RatingData({self.instrument.name}: {self.n_ratings} ratings, "
            f"{self.n_subjects} subjects, {self.n_sessions} sessions, {self.n_judges} judges, "
            f"{self.n_items} items, {self.n_scales} scales)"
        )

    # ------------------------------------------------------------------ constructors

    @classmethod
    def from_files(
        cls,
        ratings_path: str | Path,
        instrument: Instrument,
        *,
        covariates: str | Path | None = None,
        session_covariates: str | Path | None = None,
        layout: Layout = "auto",
        columns: Mapping[str, str] | None = None,
        sheet: str | int | None = None,
        on_invalid: OnInvalid = "error",
    ) -> RatingData:
        """Read ratings (and optional covariate tables) from files; see :meth:`from_frame`.

        ``sheet`` applies to every Excel file given.
        """
        df = read_table(ratings_path, sheet=sheet)
        cov = read_table(covariates, sheet=sheet) if covariates is not None else None
        scov = (
            read_table(session_covariates, sheet=sheet) if session_covariates is not None else None
        )
        return cls.from_frame(
            df,
            instrument,
            layout=layout,
            columns=columns,
            covariates=cov,
            session_covariates=scov,
            source=str(ratings_path),
            covariates_source=None if covariates is None else str(covariates),
            session_covariates_source=(
                None if session_covariates is None else str(session_covariates)
            ),
            on_invalid=on_invalid,
        )

    @classmethod
    def from_frame(
        cls,
        df: pd.DataFrame,
        instrument: Instrument,
        *,
        layout: Layout = "auto",
        columns: Mapping[str, str] | None = None,
        covariates: pd.DataFrame | None = None,
        session_covariates: pd.DataFrame | None = None,
        source: str | None = None,
        covariates_source: str | None = None,
        session_covariates_source: str | None = None,
        on_invalid: OnInvalid = "error",
    ) -> RatingData:
        """Validate a rating table and build the container.

        Parameters
        ----------
        df : ratings, long (``subject, session, judge, item, rating``) or wide
            (``subject, session, judge`` plus one column per item code).
        instrument : the instrument the ratings are of.
        layout : ``"long"``, ``"wide"`` or ``"auto"`` (long when ``item`` and
            ``rating`` columns exist, else wide when item-code columns exist).
        columns : maps your column names to ``subject``, ``session``,
            ``judge``, ``item``, ``rating`` or (wide layout) item codes. The
            same mapping renames ``subject``/``session`` in covariate tables.
        covariates : subject-level table: ``subject`` plus numeric columns.
        session_covariates : ``subject``, ``session`` plus numeric columns.
        source, covariates_source, session_covariates_source : file names used
            in messages and in the report.
        on_invalid : ``"error"`` raises on the first kind of invalid rating;
            ``"drop"`` rejects invalid ratings and lists them in the report.

        Returns
        -------
        RatingData

        Raises
        ------
        DataError
            One line naming file, row(s) and column, for anything malformed.
        """
        _check_choice("layout", layout, ("auto", "long", "wide"))
        _check_choice("on_invalid", on_invalid, ("error", "drop"))
        if not isinstance(df, pd.DataFrame):
            raise DataError(f"ratings must be a pandas DataFrame, got {type(df).__name__}")
        fname = source or "<data frame>"
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
            notes.append(
                f"self-report instrument: no judge column, every row judged by '{SELF_JUDGE}'"
            )
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
        if layout == "long":
            cells, ignored = _long_cells(frame, display, rows, instrument)
        else:
            cells, ignored = _wide_cells(frame, display, rows, instrument)
        status, reason, dup_rows = _validate(cells, instrument, fname, layout, on_invalid)

        # Accounting per subject (the subset of a trial must add up too).
        subj_codes, subj_labels = cells.ids["subject"]
        used = status == 0
        tally = _tally(cells, subj_codes, subj_labels, status, layout)
        rejected = _rejected_table(cells, reason, dup_rows, instrument, subj_codes, subj_labels)

        long = pd.DataFrame(
            {
                "subject": _str_array(subj_labels, subj_codes[used]),
                "session": _str_array(cells.ids["session"][1], cells.ids["session"][0][used]),
                "judge": _str_array(cells.ids["judge"][1], cells.ids["judge"][0][used]),
                "item": _str_array(items, cells.item[used]),
                "rating": cells.rating[used].astype(np.int64),
                "source_row": cells.row[used],
            }
        )
        if len(long) == 0:
            raise DataError(
                f"{fname}: no usable ratings ({int((status == 1).sum())} missing, "
                f"{int((status == 2).sum())} rejected)"
            )
        seen_subjects = set(subj_labels)
        report = DataReport(
            instrument=instrument.name,
            layout=layout,
            sources={"ratings": fname},
            rows_read=len(frame),
            blank_rows_skipped=int(blank.sum()),
            ignored_columns=ignored,
            design_notes=notes,
        )
        cov = _covariate_table(covariates, mapping, covariates_source, ("subject",), notes)
        scov = _covariate_table(
            session_covariates, mapping, session_covariates_source, ("subject", "session"), notes
        )
        return cls._assemble(
            instrument, long, tally, rejected, report, cov, scov, seen_subjects, warn=True
        )

    # ------------------------------------------------------------------ assembly

    @classmethod
    def _assemble(
        cls,
        instrument: Instrument,
        long: pd.DataFrame,
        tally: pd.DataFrame,
        rejected: pd.DataFrame,
        report: DataReport,
        cov: tuple[pd.DataFrame, str] | None,
        scov: tuple[pd.DataFrame, str] | None,
        seen_subjects: set[str],
        *,
        warn: bool,
    ) -> RatingData:
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

        new_cell = np.ones(len(order), dtype=bool)
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

        # Subjects named in the ratings with nothing usable.
        without = sorted(seen_subjects - set(subjects))
        if without:
            report.subjects_without_ratings = without
            if warn:
                warnings.warn(
                    f"{report.sources.get('ratings') or '<data frame>'}: {len(without)} "
                    f"subject(s) without any usable rating (all missing or rejected), left "
                    f"out: {', '.join(without[:10])}{' ...' if len(without) > 10 else ''}",
                    CaltarsWarning,
                    stacklevel=3,
                )

        covariates = session_covariates = None
        if cov is not None:
            covariates, report.covariates = _align_covariates(
                cov, pd.Index(subjects, name="subject", dtype="str"), "subject", warn
            )
            report.sources["covariates"] = report.covariates["source"]
        if scov is not None:
            idx = pd.MultiIndex.from_arrays(
                [sessions["subject"], sessions["session"]], names=["subject", "session"]
            )
            session_covariates, report.session_covariates = _align_covariates(
                scov, idx, "subject x session", warn
            )
            report.sources["session_covariates"] = report.session_covariates["source"]

        for a in (s_idx, session_idx, j_idx, i_idx, scale_idx, y, item_scale_idx, sess_subj):
            a.flags.writeable = False
        data = cls(
            instrument=instrument,
            ratings=ratings,
            subjects=tuple(subjects),
            judges=tuple(judges),
            items=items,
            scales=scales,
            sessions=sessions,
            session_labels=tuple(sessions["label"]),
            subject_idx=s_idx.astype(np.int64, copy=False),
            session_idx=session_idx.astype(np.int64, copy=False),
            judge_idx=j_idx.astype(np.int64, copy=False),
            item_idx=i_idx.astype(np.int64, copy=False),
            scale_idx=scale_idx.astype(np.int64, copy=False),
            y=y.astype(np.int64, copy=False),
            item_scale_idx=item_scale_idx,
            session_subject_idx=sess_subj.astype(np.int64, copy=False),
            covariates=covariates,
            session_covariates=session_covariates,
            report=report,
            _tally=tally,
            _rejected=rejected,
        )
        data._summarise()
        return data

    def _summarise(self) -> None:
        """Fill the report's counts and crossing from the assembled data."""
        r = self.report
        t = self._tally
        r.ratings_read = int(t["cells"].sum())
        r.missing = int(t["missing"].sum())
        r.rejected = int(t["rejected"].sum())
        r.used = self.n_ratings
        rej = self._rejected
        r.rejected_reasons = {
            k: int(v) for k, v in rej["reason"].value_counts(sort=False).items() if v
        }
        listed = rej.head(MAX_REJECTED_LISTED)
        r.rejected_rows = [
            {"row": int(a), "column": str(b), "reason": str(c)}
            for a, b, c in zip(listed["row"], listed["column"], listed["text"], strict=True)
        ]
        r.n_subjects = self.n_subjects
        r.n_sessions = self.n_sessions
        r.n_judges = self.n_judges
        r.n_items = self.n_items
        observed = np.bincount(self.item_idx, minlength=self.n_items) > 0
        r.n_items_observed = int(observed.sum())
        r.items_unobserved = [i for i, o in zip(self.items, observed, strict=True) if not o]
        r.n_scales = self.n_scales
        per_judge = np.bincount(self.judge_idx, minlength=self.n_judges)
        r.ratings_per_judge = {j: int(n) for j, n in zip(self.judges, per_judge, strict=True)}
        r.sessions_per_subject = _spread(np.bincount(self.session_subject_idx))
        pairs = np.unique(self.session_idx * self.n_judges + self.judge_idx)
        p_sess, p_judge = pairs // self.n_judges, pairs % self.n_judges
        jps = np.bincount(p_sess, minlength=self.n_sessions)
        r.judges_per_session = _spread(jps)
        r.sessions_multiple_judges = int((jps >= 2).sum())
        spj = np.bincount(p_judge, minlength=self.n_judges)
        r.sessions_per_judge = {j: int(n) for j, n in zip(self.judges, spj, strict=True)}
        labels = np.asarray(self.session_labels, dtype=object)
        by_judge = np.argsort(p_judge, kind="stable")
        bounds = np.searchsorted(p_judge[by_judge], np.arange(self.n_judges + 1))
        crossing: dict[str, dict[str, Any]] = {}
        for k, j in enumerate(self.judges):
            s = p_sess[by_judge[bounds[k] : bounds[k + 1]]]
            crossing[j] = {
                "n_sessions": len(s),
                "sessions": [str(x) for x in labels[s[:MAX_CROSSING_LISTED]]],
                "truncated": bool(len(s) > MAX_CROSSING_LISTED),
            }
        r.crossing = crossing
        if self.n_judges == 1:
            r.add_note(f"one judge ({self.judges[0]}): judge effects are not identified")
        r.check()

    # ------------------------------------------------------------------ views

    def to_long(self) -> pd.DataFrame:
        """The used ratings in the canonical long layout.

        Returns
        -------
        DataFrame
            Columns ``subject, session, judge, item, rating`` (raw ratings),
            one row per used rating, sorted.
        """
        return self.ratings[list(LONG_COLUMNS)].copy()

    def wide(self) -> pd.DataFrame:
        """The used ratings pivoted to one row per subject x session x judge.

        Returns
        -------
        DataFrame
            Columns ``subject, session, judge`` and one nullable-integer
            column per instrument item (raw ratings; ``<NA>`` where not rated).
        """
        nj = self.n_judges
        key = self.session_idx * nj + self.judge_idx
        uk, inv = np.unique(key, return_inverse=True)
        mat = np.zeros((len(uk), self.n_items), dtype=np.int64)
        mask = np.ones((len(uk), self.n_items), dtype=bool)
        mat[inv, self.item_idx] = self.ratings["rating"].to_numpy()
        mask[inv, self.item_idx] = False
        sess = uk // nj
        out = pd.DataFrame(
            {
                "subject": self.sessions["subject"].to_numpy()[sess],
                "session": self.sessions["session"].to_numpy()[sess],
                "judge": np.asarray(self.judges, dtype=object)[uk % nj],
            }
        ).astype("str")
        for k, item in enumerate(self.items):
            out[item] = pd.arrays.IntegerArray(mat[:, k], mask[:, k])
        return out

    def scale_scores(
        self, level: Literal["session", "subject"] = "session", by_judge: bool = True
    ) -> pd.DataFrame:
        """Mean item score (after reverse keying) per scale.

        A judge's scale score for a session is the mean of the items of that
        scale it rated. Without ``by_judge`` the judges' scale scores are
        averaged (each judge weighs the same); at ``level="subject"`` the
        session scores are averaged (each session weighs the same).

        Returns
        -------
        DataFrame
            Id columns (``subject``, then ``session`` for the session level,
            then ``judge`` when ``by_judge``) and one float column per scale
            code (NaN where a scale was not rated), in the data's sort order.
        """
        _check_choice("level", level, ("session", "subject"))
        codes = pd.DataFrame(
            {
                "sess": self.session_idx,
                "judge": self.judge_idx,
                "scale": self.scale_idx,
                "score": self.ratings["score"].to_numpy(dtype=float),
            }
        )
        m = codes.groupby(["sess", "judge", "scale"], sort=True)["score"].mean().reset_index()
        subj_of_sess = self.session_subject_idx
        m["subj"] = subj_of_sess[m["sess"].to_numpy()]
        keys = ["subj"] + (["sess"] if level == "session" else []) + (["judge"] if by_judge else [])
        if level == "subject" and by_judge:
            m = m.groupby(["subj", "judge", "scale"], sort=True)["score"].mean().reset_index()
        elif level == "session" and not by_judge:
            m = m.groupby(["subj", "sess", "scale"], sort=True)["score"].mean().reset_index()
        elif level == "subject" and not by_judge:
            m = m.groupby(["subj", "sess", "scale"], sort=True)["score"].mean().reset_index()
            m = m.groupby(["subj", "scale"], sort=True)["score"].mean().reset_index()
        wide = m.pivot_table(index=keys, columns="scale", values="score", sort=True)
        wide = wide.reindex(columns=range(self.n_scales))
        idx = wide.index.to_frame(index=False)
        out = pd.DataFrame({"subject": np.asarray(self.subjects, dtype=object)[idx["subj"]]})
        if level == "session":
            out["session"] = self.sessions["session"].to_numpy()[idx["sess"]]
        if by_judge:
            out["judge"] = np.asarray(self.judges, dtype=object)[idx["judge"]]
        out = out.astype("str")
        for k, s in enumerate(self.scales):
            out[s] = wide[k].to_numpy(dtype=float)
        return out

    # ------------------------------------------------------------------ subsets

    def subset_subjects(self, subjects: Iterable[str]) -> RatingData:
        """A new RatingData with only the given subjects (e.g. to split a trial).

        The report is recomputed for the subset (it still adds up) and notes
        the subset; covariates are carried over for the kept subjects.
        """
        keep = [str(s) for s in subjects]
        unknown = [s for s in keep if s not in set(self.subjects)]
        if unknown:
            raise DataError(
                f"subset: subject(s) not in the data: {', '.join(map(repr, unknown[:5]))}"
                + (f" (+{len(unknown) - 5} more)" if len(unknown) > 5 else "")
            )
        if not keep:
            raise DataError("subset: no subjects given")
        keep_set = set(keep)
        mask = self.ratings["subject"].isin(keep_set).to_numpy()
        long = self.ratings.loc[
            mask, ["subject", "session", "judge", "item", "rating", "source_row"]
        ].reset_index(drop=True)
        tally = self._tally.loc[self._tally.index.isin(keep_set)]
        rejected = self._rejected.loc[self._rejected["subject"].isin(keep_set)].reset_index(
            drop=True
        )
        old = self.report
        report = DataReport(
            instrument=old.instrument,
            layout=old.layout,
            sources=dict(old.sources),
            rows_read=int(tally["rows"].sum()),
            ignored_columns=list(old.ignored_columns),
            design_notes=[*old.design_notes],
        )
        report.add_note(f"subset of {len(keep_set)} of {self.n_subjects} subjects")
        cov = scov = None
        if self.covariates is not None and old.covariates is not None:
            cov = (
                self.covariates.loc[self.covariates.index.isin(keep_set)],
                old.covariates["source"],
            )
        if self.session_covariates is not None and old.session_covariates is not None:
            sc = self.session_covariates
            scov = (
                sc.loc[sc.index.get_level_values("subject").isin(keep_set)],
                old.session_covariates["source"],
            )
        return type(self)._assemble(
            self.instrument, long, tally, rejected, report, cov, scov, keep_set, warn=False
        )


# --------------------------------------------------------------------------- parsing


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


def _id_codes(frame: pd.DataFrame, name: str, default: str) -> tuple[np.ndarray, list[str]]:
    if name in frame.columns:
        return _labels(frame[name])
    return np.zeros(len(frame), dtype=np.int64), [default]


def _long_cells(
    frame: pd.DataFrame, display: dict[str, str], rows: np.ndarray, instrument: Instrument
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
    rating, bad, missing = _rating_cells(
        frame["rating"], instrument.response_min, instrument.response_max
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
    )
    return cells, ignored


def _wide_cells(
    frame: pd.DataFrame, display: dict[str, str], rows: np.ndarray, instrument: Instrument
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
    for j, c in enumerate(item_cols):
        vals[:, j], bad[:, j], missing[:, j] = _rating_cells(
            frame[c], instrument.response_min, instrument.response_max
        )
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


# --------------------------------------------------------------------------- covariates


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
