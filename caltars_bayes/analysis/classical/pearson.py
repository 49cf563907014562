"""Pearson r, pairwise-complete n and two-sided p for every column pair."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

# ---------------------------------------------------------------------------
# Pearson correlations
# ---------------------------------------------------------------------------


def pearson_table(x: pd.DataFrame, y: pd.DataFrame) -> pd.DataFrame:
    """Pearson correlation of every column of ``x`` with every column of ``y``.

    Parameters
    ----------
    x, y : pandas.DataFrame
        Numeric columns on the same row index (rows are aligned by index).

    Returns
    -------
    pandas.DataFrame
        One row per (x column, y column) pair, x-major, with columns

        ``x``, ``y``
            The column names.
        ``r``
            Pearson correlation over the rows where both values are present
            (pairwise-complete).
        ``n``
            Number of such rows.
        ``p``
            Two-sided p value of the test of zero correlation: t =
            r sqrt((n - 2) / (1 - r^2)) referred to Student's t with
            ``n - 2`` degrees of freedom.  Missing when ``n < 3`` or either
            column is constant over those rows.
    """
    if not (isinstance(x, pd.DataFrame) and isinstance(y, pd.DataFrame)):
        raise TypeError("pearson_table takes two DataFrames")
    xa, ya = x.align(y, join="inner", axis=0)
    rows = []
    for cx in x.columns:
        xv = pd.to_numeric(xa[cx], errors="coerce").to_numpy(dtype=float)
        for cy in y.columns:
            yv = pd.to_numeric(ya[cy], errors="coerce").to_numpy(dtype=float)
            ok = np.isfinite(xv) & np.isfinite(yv)
            n = int(ok.sum())
            r = p = np.nan
            if n >= 3:
                a, b = xv[ok] - xv[ok].mean(), yv[ok] - yv[ok].mean()
                den = np.sqrt((a @ a) * (b @ b))
                if den > 0:
                    r = float(np.clip((a @ b) / den, -1.0, 1.0))
                    if abs(r) < 1.0:
                        t = r * np.sqrt((n - 2) / (1.0 - r * r))
                        p = float(2.0 * stats.t.sf(abs(t), n - 2))
                    else:
                        p = 0.0
            rows.append((cx, cy, r, n, p))
    return pd.DataFrame(rows, columns=["x", "y", "r", "n", "p"])
