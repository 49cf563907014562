"""The elements of a report: APA numbers, tables, figures, sections and the report's content.

:class:`ReportTable`, :class:`ReportFigure` and :class:`Section` are what the
section builders produce; :class:`ReportContent` is what the renderers
(:mod:`~caltars_bayes.report.render_html`,
:mod:`~caltars_bayes.report.render_markdown`,
:mod:`~caltars_bayes.report.render_latex`) read, and
:class:`~caltars_bayes.report.document.Report` adds writing and rendering to it.

Numbers follow APA style (:func:`apa_number`, :func:`apa_p`): no leading zero
for quantities that cannot exceed 1 in absolute value (correlations,
reliabilities, probabilities).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from caltars_bayes._core.figures import close_figures

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: Columns never shown in rendered tables (the verdict is in the banner and captions).
_HIDDEN = ("converged", "approximate")
#: Columns holding probabilities (formatted like bounded numbers).
_PROB_COLUMNS = (
    "p_positive", "p_negative", "p_rope", "p_expected", "p_opposite", "p_reach", "prob_below_panel",
)  # fmt: skip


# --------------------------------------------------------------------------- numbers


def apa_number(x: Any, leading_zero: bool = False, digits: int = 2) -> str:
    """Format a number in APA style.

    Parameters
    ----------
    x : the number (NaN, None and pandas NA give ``""``).
    leading_zero : keep the zero before the decimal point. APA drops it for
        quantities that cannot exceed 1 in absolute value (correlations,
        reliabilities, proportions, p values): ``0.82 -> ".82"``,
        ``-0.05 -> "-.05"``.
    digits : decimal places.

    Returns
    -------
    str, e.g. ``apa_number(0.823) == ".82"``, ``apa_number(1.0) == "1.00"``,
    ``apa_number(-0.004) == ".00"`` (a rounded zero has no sign).
    """
    if x is None or x is pd.NA:
        return ""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return str(x)
    if not math.isfinite(v):
        return "" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    text = f"{v:.{digits}f}"
    if float(text) == 0.0:
        text = text.lstrip("-")
    if not leading_zero:
        if text.startswith("0."):
            text = text[1:]
        elif text.startswith("-0."):
            text = "-" + text[2:]
    return text


def apa_p(p: Any, digits: int = 3) -> str:
    """A p value in APA style: ``.012``, ``< .001`` (empty for NaN)."""
    if p is None or p is pd.NA:
        return ""
    v = float(p)
    if not math.isfinite(v):
        return ""
    if v < 10**-digits:
        return f"< {apa_number(10**-digits, digits=digits)}"
    return apa_number(v, digits=digits)


# --------------------------------------------------------------------------- containers


@dataclass
class ReportTable:
    """A table of a report.

    Attributes
    ----------
    name : short identifier (also the LaTeX label ``tab:NAME``).
    caption : one sentence saying what the rows are.
    frame : the data; columns ``converged``/``approximate`` are not rendered.
    digits : decimal places of float columns.
    bounded : columns that cannot exceed 1 in absolute value (correlations,
        reliabilities, probabilities): no leading zero in LaTeX.
    p_columns : p-value columns (APA ``< .001``).
    column_digits : per-column decimal places overriding ``digits``.
    note : text under the table.
    posterior : the values come from the posterior (the caption and the LaTeX
        note of an unconverged fit say so); False for data and diagnostics.
    latex_omit : columns left out of the LaTeX table, to fit a page (shown in
        HTML and markdown and kept in the CSV files), e.g. a probability that
        is one minus another column.
    latex_note : LaTeX source under the LaTeX table only (saying what was left
        out and where it is, e.g. ``Table~\\ref{tab:associations}``).
    """

    name: str
    caption: str
    frame: pd.DataFrame
    digits: int = 2
    bounded: tuple[str, ...] = ()
    p_columns: tuple[str, ...] = ()
    column_digits: dict[str, int] = field(default_factory=dict)
    note: str = ""
    posterior: bool = True
    latex_omit: tuple[str, ...] = ()
    latex_note: str = ""

    @property
    def shown(self) -> pd.DataFrame:
        """The rendered columns (``frame`` without the verdict columns)."""
        return self.frame.drop(columns=[c for c in _HIDDEN if c in self.frame.columns])

    def cell(self, value: Any, column: str, latex: bool = False) -> str:
        """One formatted cell (APA style when ``latex``)."""
        if value is None or value is pd.NA:
            return ""
        if isinstance(value, bool | np.bool_):
            return "yes" if value else "no"
        if isinstance(value, int | np.integer):
            return str(int(value))
        if isinstance(value, float | np.floating):
            v = float(value)
            if math.isnan(v):
                return ""
            if column in self.p_columns:
                return apa_p(v) if latex else f"{v:.3f}"
            if column in _PROB_COLUMNS:  # three places: .949 must not read as .95
                d = self.column_digits.get(column, 3)
                return apa_number(v, leading_zero=not latex, digits=d)
            d = self.column_digits.get(column, self.digits)
            if column in self.bounded:
                return apa_number(v, leading_zero=not latex, digits=d)
            return apa_number(v, leading_zero=True, digits=d)
        return str(value)


@dataclass
class ReportFigure:
    """A figure of a report: ``name`` (file stem), ``caption`` and the matplotlib Figure."""

    name: str
    caption: str
    figure: Figure


@dataclass
class Section:
    """One section: ``key``, ``title``, paragraphs of ``text``, ``tables`` and ``figures``.

    ``omitted`` sections carry only their one-line note in ``text``.
    """

    key: str
    title: str
    text: list[str] = field(default_factory=list)
    tables: list[ReportTable] = field(default_factory=list)
    figures: list[ReportFigure] = field(default_factory=list)
    omitted: bool = False


def omitted_section(key: str, title: str, note: str) -> Section:
    """A section left out of the report: only its one-line ``note``."""
    return Section(key, title, [note], omitted=True)


@dataclass
class ReportContent:
    """What a report holds, as its renderers read it.

    Attributes
    ----------
    title, subtitle : headings.
    converged, approximate : the fit's verdict.
    banner : the verdict in one line (:meth:`Diagnostics.banner`).
    problems : what failed, one entry per check.
    sections : the sections in order (omitted ones hold a one-line note).
    summary : the headline lines (reliability per scale, hypotheses).
    methods : the methods paragraph
        (:func:`~caltars_bayes.report.methods.methods_paragraph`).
    """

    title: str
    subtitle: str
    converged: bool
    approximate: bool
    banner: str
    problems: list[str]
    sections: list[Section]
    summary: list[str]
    methods: str

    # ------------------------------------------------------------------ access

    def section(self, key: str) -> Section:
        """The section with ``key`` (KeyError when absent)."""
        for s in self.sections:
            if s.key == key:
                return s
        raise KeyError(key)

    @property
    def tables(self) -> dict[str, pd.DataFrame]:
        """Every table by name."""
        return {t.name: t.frame for s in self.sections for t in s.tables}

    @property
    def figures(self) -> list[ReportFigure]:
        """Every figure, in order."""
        return [f for s in self.sections for f in s.figures]

    def close(self) -> None:
        """Close every matplotlib figure of the report."""
        close_figures([f.figure for f in self.figures])
