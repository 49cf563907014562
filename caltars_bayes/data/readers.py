"""Reading a rating or covariate table from a file.

CSV and TSV cells are read as text (ids such as ``007`` keep their zeros),
blank lines are kept as empty rows so row positions match the file, and a
semicolon-separated "CSV" is recognised. In an SPSS ``.sav`` file the values
a variable declares user-missing (say 9 and 99, or a range) are read as
missing, like system-missing ones; how many per column is kept in the
table's ``attrs`` (:data:`USER_MISSING_ATTR`) for the data report. Excel, SPSS
and parquet files need optional packages (``pip install 'caltars-bayes[io]'``); each problem is one
:class:`~caltars_bayes._core.errors.DataError` naming the file.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from caltars_bayes._core.errors import DataError
from caltars_bayes.data.values import _blank_rows

__all__ = ["USER_MISSING_ATTR", "read_table"]

#: ``DataFrame.attrs`` key of a table read from ``.sav``: column -> number of
#: values that were SPSS user-missing codes (read as missing)
USER_MISSING_ATTR = "spss_user_missing"

_IO_HINT = "pip install 'caltars-bayes[io]'"


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
            df = _read_spss(p)
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


def _read_spss(p: Path) -> pd.DataFrame:
    """A ``.sav`` file with its user-missing values set to missing and counted.

    ``pyreadstat.read_sav(..., user_missing=True)`` keeps user-missing values
    as stored and lists each variable's missing values and ranges (``lo`` to
    ``hi``; one value when they are equal) in ``missing_ranges``; a value in
    one of them becomes missing here.
    """
    import pyreadstat

    df, meta = pyreadstat.read_sav(str(p), user_missing=True, apply_value_formats=False)
    counts: dict[str, int] = {}
    for col, ranges in (meta.missing_ranges or {}).items():
        if col not in df.columns or not ranges:
            continue
        s = df[col]
        numeric = pd.api.types.is_numeric_dtype(s.dtype)
        hit = np.zeros(len(s), dtype=bool)
        for r in ranges:
            lo, hi = (r["lo"], r["hi"]) if isinstance(r, dict) else (r, r)
            if numeric:
                v = s.to_numpy(dtype=float, na_value=np.nan)
                with np.errstate(invalid="ignore"):
                    hit |= (v >= float(lo)) & (v <= float(hi))
            else:
                hit |= (s.astype("str").str.strip() == str(lo).strip()).to_numpy(dtype=bool)
        if hit.any():
            df[col] = s.mask(hit)
            counts[str(col).strip()] = int(hit.sum())
    df.attrs[USER_MISSING_ATTR] = counts
    return df


def _read_text(p: Path, sep: str) -> pd.DataFrame:
    kw: dict[str, Any] = {"dtype": str, "keep_default_na": True, "skip_blank_lines": False}
    # A semicolon-separated "CSV" (as spreadsheets in decimal-comma locales write it):
    # told by its header line, which has semicolons and no commas.
    if sep == ",":
        with p.open("rb") as fh:
            header = fh.readline()
        if b";" in header and b"," not in header:
            sep = ";"
    try:
        return pd.read_csv(p, sep=sep, encoding="utf-8-sig", **kw)
    except UnicodeDecodeError:
        return pd.read_csv(p, sep=sep, encoding="latin-1", **kw)
