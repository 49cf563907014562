"""Package exceptions and warnings.

Every error raised at the boundary (spec files, rating files, covariate tables)
is a :class:`CaltarsError` whose message is one line naming the file, the row(s)
and the column, so that the command line can print it without a traceback.
"""

from __future__ import annotations


class CaltarsError(Exception):
    """Base class for errors a user can fix (bad input, bad spec, bad fit directory)."""


class SpecError(CaltarsError, ValueError):
    """An instrument, model or hypothesis spec is malformed."""


class DataError(CaltarsError, ValueError):
    """A rating or covariate table is malformed."""


class FitIOError(CaltarsError, OSError):
    """A fit directory is missing, mismatched, corrupted or would be overwritten."""


class CaltarsWarning(UserWarning):
    """A problem worth telling the user that does not stop the analysis."""


def where(file: str | None, row: int | list[int] | None = None, column: str | None = None) -> str:
    """Format a location prefix such as ``ratings.csv, row 12, column 'rating'``.

    Rows are 1-based data rows as a spreadsheet user counts them after the header
    (the header is row 1, so the first data row is row 2).
    """
    parts = [file or "<data frame>"]
    if row is not None:
        if isinstance(row, list):
            shown = ", ".join(str(r) for r in row[:5])
            more = f" (+{len(row) - 5} more)" if len(row) > 5 else ""
            parts.append(f"rows {shown}{more}" if len(row) > 1 else f"row {row[0]}")
        else:
            parts.append(f"row {row}")
    if column is not None:
        parts.append(f"column '{column}'")
    return ", ".join(parts)
