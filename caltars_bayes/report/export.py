"""A fit's tables in the formats researchers open: CSV, Excel and SPSS, long or wide.

:func:`export_table` writes one table of a fit (``scores``, ``judges``,
``reliability``, ``associations`` or ``loadings``) to a ``.csv``, ``.xlsx`` or
``.sav`` file. The tables are those of the fit directory (``scores.csv`` and
so on, as ``caltars-bayes fit`` wrote them) or, for ``loadings``, computed from
the fit (:func:`~caltars_bayes.analysis.structure.standardised_loadings`).

Long is the layout of the fit directory: one row per subject x scale, judge x
parameter, and so on. Wide (``wide=True``) is one row per subject (scores at
the subject level), per session (scores at the session level) or per judge,
with, for each scale (or judge parameter), one column for the posterior mean
and one for each bound of the 95% HDI: ``PC_mean, PC_hdi_low, PC_hdi_high``.

SPSS variable names must start with a letter, hold only letters, digits and
``_`` and have at most 64 characters: other names are rewritten (``a.b c``
becomes ``a_b_c``) and every variable gets a label holding its original name
and what it is. An Excel file has the table on its first sheet and the
variables and their labels on a second one, ``variables``. The file is written
atomically and never replaces an existing one without ``force``.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from caltars_bayes._core.dims import CI_PROB
from caltars_bayes._core.errors import CaltarsError, FitIOError
from caltars_bayes._core.io import atomic_write_file
from caltars_bayes.analysis.associations import associations
from caltars_bayes.analysis.reliability import judges_table, reliability
from caltars_bayes.analysis.structure import standardised_loadings
from caltars_bayes.inference.fit import Fit, load_fit

__all__ = ["EXPORT_FORMATS", "EXPORT_TABLES", "export_table", "spss_names", "table_frame"]

#: the tables that can be exported
EXPORT_TABLES = ("scores", "judges", "reliability", "associations", "loadings")
#: format -> file suffix
EXPORT_FORMATS = {"csv": ".csv", "xlsx": ".xlsx", "sav": ".sav"}
#: the tables that have a wide layout
WIDE_TABLES = ("scores", "judges")
#: the summaries a wide table has, per scale (or judge parameter)
WIDE_STATS = ("mean", "hdi_low", "hdi_high")

_ID_COLUMNS = {"subject": str, "session": str, "judge": str}
_HDI = f"{CI_PROB:.0%} HDI"
#: what each column of the long tables holds (the SPSS variable label)
_DESCRIBE = {
    "level": "level of the score or coefficient",
    "subject": "subject id",
    "session": "session id",
    "judge": "judge id",
    "item": "item code",
    "scale": "scale code",
    "factor": "factor of the loading",
    "parameter": "judge parameter",
    "covariate": "covariate",
    "mean": "posterior mean",
    "sd": "posterior standard deviation",
    "median": "posterior median",
    "hdi_low": f"lower bound of the {_HDI}",
    "hdi_high": f"upper bound of the {_HDI}",
    "n_ratings": "number of ratings",
    "n_draws": "number of posterior draws",
    "converged": "the fit converged (R-hat, ESS, divergences): 1 yes, 0 no",
    "approximate": "approximate method (not MCMC)",
    "prob_below_panel": "posterior probability the judge is below the panel",
    "flag": "judge flagged: 1 yes, 0 no",
    "p_positive": "posterior probability of a positive association",
    "p_negative": "posterior probability of a negative association",
    "p_rope": "posterior probability inside the region of practical equivalence",
    "classical": "classical (non-Bayesian) value",
    "classical_r": "classical Pearson correlation",
    "classical_p": "p value of the classical correlation",
    "classical_n": "subjects in the classical correlation",
    "classical_oneway": "classical one-way (judges nested) value",
    "classical_method": "how the classical value was computed",
    "classical_component": "varimax component matched to the factor",
    "classical_loading": "classical (PCA) loading",
    "judges": "number of judges averaged",
    "sessions": "number of sessions averaged",
    "route": "latent (model scale) or observed (rating scale) reliability",
    "coefficient": "agreement or consistency",
    "generalizes_over": "facets the coefficient generalises over",
}
_RESERVED = {"ALL", "AND", "BY", "EQ", "GE", "GT", "LE", "LT", "NE", "NOT", "OR", "TO", "WITH"}
_SPSS_NAME_MAX = 64
_SPSS_LABEL_MAX = 255
_IO_HINT = "pip install 'caltars-bayes[io]'"


def export_table(
    fit: Fit | str | Path,
    table: str,
    out: str | Path,
    *,
    format: str | None = None,
    wide: bool = False,
    level: str | None = None,
    force: bool = False,
) -> Path:
    """Write one table of a fit as CSV, Excel or SPSS, long or wide.

    Parameters
    ----------
    fit : a fit directory (its CSV tables are exported) or a :class:`Fit`
        (the tables are computed).
    table : ``"scores"``, ``"judges"``, ``"reliability"``, ``"associations"``
        (fits with covariates) or ``"loadings"``.
    out : the file to write.
    format : ``"csv"``, ``"xlsx"`` or ``"sav"``; default from the suffix of ``out``.
    wide : one row per subject (or session, or judge) with one column per
        scale for the posterior mean and each HDI bound (scores and judges only).
    level : scores: ``"subject"`` or ``"session"`` rows only (wide: default
        ``"subject"``); loadings: correlation with the ``"session"`` (default)
        or ``"subject"`` level alliance.
    force : replace an existing file.

    Returns
    -------
    Path : the file written.

    Raises
    ------
    CaltarsError
        For an unknown table or format, ``wide`` for a table without a wide
        layout, a missing table, an existing file without ``force``, or a
        missing optional package (openpyxl, pyreadstat).
    """
    out = Path(out)
    fmt = _format_of(out, format)
    _check_table(table, wide)
    if out.exists() and not force:
        raise CaltarsError(f"{out}: already exists; use --force to overwrite")
    _need({"xlsx": "openpyxl", "sav": "pyreadstat"}.get(fmt), fmt)
    df, labels = _labelled(table_frame(fit, table, wide=wide, level=level), wide)
    writer = {"csv": _write_csv, "xlsx": _write_xlsx, "sav": _write_sav}[fmt]
    return atomic_write_file(out, lambda p: writer(df, labels, table, p), force=force)


def table_frame(
    fit: Fit | str | Path, table: str, *, wide: bool = False, level: str | None = None
) -> pd.DataFrame:
    """The table :func:`export_table` writes, as a DataFrame (see there).

    A wide table keeps its column labels in ``attrs["labels"]`` (column -> label).
    """
    _check_table(table, wide)
    if level is not None and table not in ("scores", "loadings"):
        raise CaltarsError(f"--level: applies to the scores and loadings tables, not {table}")
    if level is not None and level not in ("subject", "session"):
        raise CaltarsError(f"--level {level!r}: use subject or session")
    if table == "loadings":
        f = fit if isinstance(fit, Fit) else load_fit(_fit_dir(fit))
        return standardised_loadings(f, level=level or "session")
    df = _long_table(fit, table)
    if table == "scores" and (level is not None or wide):
        df = df.loc[df["level"] == (level or "subject")].reset_index(drop=True)
        if not len(df):
            raise CaltarsError(f"scores: no rows at the {level or 'subject'} level")
    if not wide:
        return df
    if table == "scores":
        keys = ["subject"] if (level or "subject") == "subject" else ["subject", "session"]
        names = df["scale"].astype(str)
        what = f"{level or 'subject'} level alliance"
        return _widen(df, keys, names, what, keep=[])
    parameter, scale = df["parameter"].astype(str), df["scale"].fillna("").astype(str)
    names = parameter.where(scale == "", parameter + "_" + scale)
    return _widen(df, ["judge"], names, "judge", keep=["n_ratings"])


def spss_names(columns: Sequence[Any]) -> dict[str, str]:
    """Valid, distinct SPSS variable names for column names.

    A name keeps its letters, digits and underscores; any other run of
    characters becomes one ``_``; a name not starting with a letter gets a
    ``v`` in front, a reserved word (``TO``, ``BY`` ...) a ``v_``; it is cut
    to 64 characters; names equal but for case get ``_2``, ``_3`` ...

    Returns
    -------
    dict : original name -> SPSS name.
    """
    out: dict[str, str] = {}
    seen: set[str] = set()
    for c in columns:
        n = re.sub(r"[^A-Za-z0-9_]+", "_", str(c)).strip("_")
        if not n or not n[0].isalpha():
            n = f"v_{n}" if n else "v"
        if n.upper() in _RESERVED:
            n = f"v_{n}"
        n = n[:_SPSS_NAME_MAX].rstrip("_")
        base, k = n, 1
        while n.upper() in seen:
            k += 1
            tail = f"_{k}"
            n = base[: _SPSS_NAME_MAX - len(tail)] + tail
        seen.add(n.upper())
        out[str(c)] = n
    return out


# --------------------------------------------------------------------------- tables


def _check_table(table: str, wide: bool) -> None:
    if table not in EXPORT_TABLES:
        raise CaltarsError(f"--table {table!r}: unknown; use one of {', '.join(EXPORT_TABLES)}")
    if wide and table not in WIDE_TABLES:
        raise CaltarsError(
            f"--wide: the {table} table has no one-row-per-subject layout; wide applies to "
            f"{' and '.join(WIDE_TABLES)} (export {table} without --wide)"
        )


def _format_of(out: Path, format: str | None) -> str:
    suffix = out.suffix.lower()
    by_suffix = {v: k for k, v in EXPORT_FORMATS.items()}
    if format is None:
        if suffix not in by_suffix:
            raise CaltarsError(
                f"{out}: cannot tell the format from {suffix or 'no suffix'!r}; use a "
                f"{', '.join(EXPORT_FORMATS.values())} file or --format"
            )
        return by_suffix[suffix]
    if format not in EXPORT_FORMATS:
        raise CaltarsError(f"--format {format!r}: unknown; use one of {', '.join(EXPORT_FORMATS)}")
    if suffix in by_suffix and by_suffix[suffix] != format:
        raise CaltarsError(f"{out}: a {suffix} file cannot hold --format {format}")
    return format


def _need(module: str | None, fmt: str) -> None:
    if module is not None and importlib.util.find_spec(module) is None:
        raise CaltarsError(f"writing {fmt} files needs the '{module}' package: {_IO_HINT}")


def _fit_dir(fit: str | Path) -> Path:
    p = Path(fit)
    if not p.is_dir():
        raise FitIOError(f"{p}: not a fit directory (not found)")
    return p


def _long_table(fit: Fit | str | Path, table: str) -> pd.DataFrame:
    """The long table: computed from a Fit, or read from the fit directory's CSV."""
    if isinstance(fit, Fit):
        if table == "associations" and not (fit.plan.covariates or fit.plan.session_covariates):
            raise CaltarsError("associations: the fit has no covariates")
        compute: dict[str, Callable[[Fit], pd.DataFrame]] = {
            "scores": lambda f: f.scores(),
            "judges": judges_table,
            "reliability": reliability,
            "associations": associations,
        }
        return compute[table](fit)
    path = _fit_dir(fit) / f"{table}.csv"
    if not path.is_file():
        why = "the fit has no covariates" if table == "associations" else "not a fit directory"
        raise FitIOError(f"{path.parent}: no {path.name} ({why})")
    try:
        head = pd.read_csv(path, nrows=0).columns
        dtypes = {c: t for c, t in _ID_COLUMNS.items() if c in head}
        return pd.read_csv(path, dtype=dtypes, keep_default_na=False, na_values=[""])
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise FitIOError(f"{path}: cannot read ({' '.join(str(exc).split())[:200]})") from None


def _widen(
    df: pd.DataFrame, keys: list[str], names: pd.Series, what: str, keep: list[str]
) -> pd.DataFrame:
    """One row per distinct ``keys`` (in order of appearance) and per name, one column a stat.

    ``names`` (aligned with ``df``) names the rows that become a column block;
    ``keep`` are columns constant within a row of the result (copied as they are);
    the convergence columns are copied too.
    """
    rows = df[keys].drop_duplicates().reset_index(drop=True)
    index = rows.set_index(keys).index
    out = rows.copy()
    labels = {k: _DESCRIBE[k] for k in keys}
    for c in keep:
        out[c] = df.groupby(keys, sort=False)[c].first().reindex(index).to_numpy()
        labels[c] = _DESCRIBE.get(c, c)
    for name in pd.unique(names):
        part = df.loc[(names == name).to_numpy()].set_index(keys)
        for stat in WIDE_STATS:
            col = f"{name}_{stat}"
            out[col] = part[stat].reindex(index).to_numpy()
            labels[col] = f"{_DESCRIBE[stat]} of {name} ({what})"
    for c in ("converged", "approximate"):
        if c in df.columns:
            out[c] = df[c].iloc[0]
            labels[c] = _DESCRIBE[c]
    out.attrs = {**df.attrs, "labels": labels}
    return out


def _labelled(df: pd.DataFrame, wide: bool) -> tuple[pd.DataFrame, dict[str, str]]:
    """The table and a label per column: ``name: what it is`` (or the name alone)."""
    known = df.attrs.get("labels", {}) if wide else {}
    labels = {}
    for c in df.columns:
        what = known.get(c) or _DESCRIBE.get(str(c))
        labels[str(c)] = f"{c}: {what}" if what else str(c)
    return df, labels


# --------------------------------------------------------------------------- writers


def _write_csv(df: pd.DataFrame, labels: dict[str, str], table: str, path: Path) -> None:
    df.to_csv(path, index=False)


def _write_xlsx(df: pd.DataFrame, labels: dict[str, str], table: str, path: Path) -> None:
    variables = pd.DataFrame({"variable": list(labels), "label": list(labels.values())})
    with pd.ExcelWriter(path, engine="openpyxl") as xw:
        df.to_excel(xw, sheet_name=table[:31], index=False)
        variables.to_excel(xw, sheet_name="variables", index=False)


def _write_sav(df: pd.DataFrame, labels: dict[str, str], table: str, path: Path) -> None:
    import pyreadstat

    names = spss_names(df.columns)
    out = pd.DataFrame(index=df.index)
    value_labels: dict[str, dict[int | float, str]] = {}
    for c in df.columns:
        s, n = df[c], names[str(c)]
        if pd.api.types.is_bool_dtype(s.dtype):
            out[n] = s.astype(float)
            value_labels[n] = {0: "no", 1: "yes"}
        elif pd.api.types.is_numeric_dtype(s.dtype):
            out[n] = s.to_numpy(dtype=float, na_value=float("nan"))
        else:
            out[n] = s.astype(object).where(s.notna(), "").astype(str).astype(object)
    pyreadstat.write_sav(
        out,
        str(path),
        column_labels={names[c]: text[:_SPSS_LABEL_MAX] for c, text in labels.items()},
        variable_value_labels=value_labels or None,
        file_label=f"caltars-bayes {table}"[:64],
    )
