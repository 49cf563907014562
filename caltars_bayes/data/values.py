"""Cell values of a read table: blanks, id labels, numbers and their display.

A table read from a file or given as a frame holds ids and ratings as text,
numbers or NA. These helpers turn a column into integer codes (``-1`` for a
blank cell), normalise ids to string labels (``7``, ``7.0`` and ``"7"`` are
one label; ``"007"`` keeps its zeros), read numbers without accepting
booleans, infinities or ``1_000``, and show a raw value in a message.
"""

from __future__ import annotations

import importlib.util
import math
import re
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

_HAS_ARROW = importlib.util.find_spec("pyarrow") is not None
_INT_FLOAT = re.compile(r"^[+-]?\d+\.0*$")


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
