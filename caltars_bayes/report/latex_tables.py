"""LaTeX tables of a report that fit the page: booktabs, APA numbers, long tables across pages.

:func:`table_latex` writes one :class:`~caltars_bayes.report.elements.ReportTable`:

- a lower and upper bound (``hdi_low``/``hdi_high``, ``ci_low``/``ci_high``,
  ``rep_low``/``rep_high``) become one interval column ``[.12, .59]`` headed
  ``95% HDI`` (``95% CI``, ``Replicated 95%``), as APA tables print them;
- headings wider than their column's values are broken over two lines when
  the table does not fit in ``\\small`` type otherwise;
- the font size (``\\small``, ``\\footnotesize``, ``\\scriptsize``) and the
  column separation are the largest that fit the text width, estimated from
  the Computer Modern character widths (:func:`text_width`) against
  :data:`TEXT_WIDTH_PT`; when even the smallest does not fit, the widest text
  column is set as a paragraph column that breaks between words and after
  underscores;
- a table of at most :data:`LONG_ROWS` rows is a ``table`` float whose tabular
  is shrunk to ``\\linewidth`` when it is still wider (``\\resizebox``, never
  enlarged); a longer one is a ``longtable`` that breaks across pages, its
  heading repeated (a float taller than the page is what LaTeX reports as
  "Float too large"), after a ``\\clearpage`` (a longtable is not a float:
  without it, it would come before the floats above it).

The snippet needs ``\\usepackage{booktabs, graphicx, longtable}``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from caltars_bayes._core.dims import CI_PROB
from caltars_bayes.report.elements import ReportContent, ReportTable

_TEX_SPECIAL = {
    "<=": r"$\le$", ">=": r"$\ge$", "<": r"$<$", ">": r"$>$", "~": r"$\sim$",
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "^": r"\textasciicircum{}",
}  # fmt: skip
_TEX_RE = re.compile("|".join(re.escape(k) for k in _TEX_SPECIAL))

_PCT = f"{CI_PROB:.0%}".replace("%", r"\%")
#: Column headings in LaTeX tables (other columns: the name, underscores as spaces).
LATEX_LABELS = {
    "median": r"\textit{Mdn}",
    "mean": r"\textit{M}",
    "sd": r"\textit{SD}",
    "hdi": rf"{_PCT} HDI",
    "ci": rf"{_PCT} CI",
    "rep": rf"Replicated {_PCT}",
    "classical": "Classical",
    "classical_r": r"Classical \textit{r}",
    "classical_p": r"\textit{p}",
    "p_value": r"\textit{p}",
    "p_positive": r"\textit{P}(\textit{r} $>$ 0)",
    "p_negative": r"\textit{P}(\textit{r} $<$ 0)",
    "p_rope": r"\textit{P}(ROPE)",
    "p_expected": r"\textit{P}(expected)",
    "p_reach": r"\textit{P}(reach)",
    "r_hat": r"$\hat{R}$",
    "ess_bulk": "Bulk ESS",
    "ess_tail": "Tail ESS",
    "n_ratings": r"\textit{n} ratings",
    "n_obs": r"\textit{n}",
    "n_items": "Items",
    "prob_below_panel": r"\textit{P}(below panel)",
}
#: the text width, in pt, that the font size of a table is chosen for (LaTeX's
#: article class at 10 pt; a float is also shrunk to its real ``\linewidth``)
TEXT_WIDTH_PT = 345.0
#: tables with more rows are set as ``longtable`` (across pages), not as floats
LONG_ROWS = 25
#: font sizes tried, largest first, with their width relative to 10 pt
#: Computer Modern (cmr9, cmr8 and cmr7 are relatively wider than cmr10)
FONT_SIZES = ((r"\small", 0.925), (r"\footnotesize", 0.85), (r"\scriptsize", 0.794))
#: column separations tried (``\tabcolsep``, pt; LaTeX's default is 6)
COLUMN_SEPS = (6.0, 4.0, 3.0)
#: the estimated width may be this much short of the real one
_SAFETY = 1.03

# Widths (pt) of characters of cmr10 (from its TFM); math symbols as $<$ and
# $-$ print them; anything else counts 5 pt.
_CHAR_PT = dict.fromkeys('0123456789$*/\\^{}~"', 5.0) | dict.fromkeys(".,:;!'`[]|", 2.78)
_CHAR_PT |= {" ": 3.33, "(": 3.89, ")": 3.89, "-": 7.78, "+": 7.78, "=": 7.78, "<": 7.78,
             ">": 7.78, "&": 7.78, "%": 8.33, "#": 8.33, "@": 7.78, "?": 4.72,
             "_": 3.6}  # fmt: skip
_CHAR_PT |= dict(zip("abcdefghijklmnopqrstuvwxyz", (
    5.0, 5.56, 4.44, 5.56, 4.44, 3.06, 5.0, 5.56, 2.78, 3.06, 5.28, 2.78, 8.33, 5.56, 5.0,
    5.56, 5.28, 3.92, 3.94, 3.89, 5.56, 5.28, 7.22, 5.28, 5.28, 4.44), strict=True))  # fmt: skip
_CHAR_PT |= dict(zip("ABCDEFGHIJKLMNOPQRSTUVWXYZ", (
    7.5, 7.08, 7.22, 7.64, 6.81, 6.53, 7.85, 7.5, 3.61, 5.14, 7.78, 6.25, 9.17, 7.5, 7.78,
    6.81, 7.78, 7.36, 5.56, 7.22, 7.5, 7.5, 10.28, 7.5, 7.5, 6.11), strict=True))  # fmt: skip


def latex_escape(text: Any) -> str:
    """Escape LaTeX special characters in ``text`` (``<=``, ``>=``, ``~`` become maths)."""
    return _TEX_RE.sub(lambda m: _TEX_SPECIAL[m.group(0)], str(text))


def plain_text(latex: str) -> str:
    """The text a LaTeX snippet prints, roughly: commands, braces and ``$`` dropped."""
    text = re.sub(r"\\([%_&#$])", r"\1", latex)
    text = re.sub(r"\\[a-zA-Z]+\*?(\{\})?", "", text)
    return text.replace("{", "").replace("}", "").replace("$", "")


def text_width(text: str) -> float:
    """Estimated width in pt of plain ``text`` in 10 pt Computer Modern (cmr10)."""
    return sum(_CHAR_PT.get(ch, 5.0) for ch in text)


# --------------------------------------------------------------------------- columns


@dataclass
class _Column:
    """One column of a LaTeX table: heading lines, alignment and cells (LaTeX and plain)."""

    heading: list[str]
    align: str
    cells: list[str]
    plain: list[str]

    @property
    def body_width(self) -> float:
        return max((text_width(p) for p in self.plain), default=0.0)

    @property
    def width(self) -> float:
        heads = [text_width(plain_text(h)) for h in self.heading]
        return max([self.body_width, *heads])


def _tex_cell(t: ReportTable, v: Any, c: str) -> str:
    s = t.cell(v, c, latex=True)
    if isinstance(v, float | int | np.number) and not isinstance(v, bool | np.bool_):
        s = s.replace("< ", r"$<$ ")
        if s.startswith("-"):
            s = "$-$" + s[1:]
        return s
    return latex_escape(s)


def _interval_pairs(columns: list[str]) -> dict[str, str]:
    """``X_low`` -> ``X_high`` for every bound pair among ``columns`` (X_low first)."""
    pairs = {}
    for i, c in enumerate(columns):
        if c.endswith("_low") and f"{c[:-4]}_high" in columns[i + 1 :]:
            pairs[c] = f"{c[:-4]}_high"
    return pairs


def _heading_lines(label: str, body_width: float) -> list[str]:
    """The heading ``label`` on one line, or two when it is wider than the column's values.

    Breaks at a space, or before an opening parenthesis (``P`` over ``(r > 0)``),
    outside braces, maths and parentheses, where the wider line is the narrowest.
    """
    if text_width(plain_text(label)) <= body_width:
        return [label]
    best: tuple[float, str, str] | None = None
    depth, maths = 0, False
    for i, ch in enumerate(label):
        cut = None
        if ch == "(" and depth == 0 and not maths and i > 0 and label[i - 1] != " ":
            cut = (label[:i], label[i:])
        elif ch == " " and depth == 0 and not maths:
            cut = (label[:i], label[i + 1 :])
        if ch in "{(":
            depth += 1
        elif ch in "})":
            depth -= 1
        elif ch == "$":
            maths = not maths
        if cut is not None:
            w = max(text_width(plain_text(c)) for c in cut)
            if best is None or w < best[0]:
                best = (w, *cut)
    if best is None:
        return [label]
    return [best[1], best[2]]


def table_columns(t: ReportTable, split: bool = True) -> list[_Column]:
    """The columns of ``t`` as LaTeX prints them (bounds merged into intervals; with
    ``split``, headings wider than their values on two lines)."""
    df = t.shown.drop(columns=[c for c in t.latex_omit if c in t.shown.columns])
    names = [str(c) for c in df.columns]
    pairs = _interval_pairs(names)
    highs = set(pairs.values())
    out = []
    for c in names:
        if c in highs:
            continue
        if c in pairs:
            base = c[:-4]
            label = LATEX_LABELS.get(base, latex_escape(base.replace("_", " ")) + " interval")
            lo = [_tex_cell(t, v, c) for v in df[c]]
            hi = [_tex_cell(t, v, pairs[c]) for v in df[pairs[c]]]
            cells = [f"[{a}, {b}]" if a or b else "" for a, b in zip(lo, hi, strict=True)]
            lo_p = [t.cell(v, c, latex=True) for v in df[c]]
            hi_p = [t.cell(v, pairs[c], latex=True) for v in df[pairs[c]]]
            plain = [f"[{a}, {b}]" for a, b in zip(lo_p, hi_p, strict=True)]
            align = "r"
        else:
            label = LATEX_LABELS.get(c, latex_escape(c.replace("_", " ")))
            cells = [_tex_cell(t, v, c) for v in df[c]]
            plain = [t.cell(v, c, latex=True) for v in df[c]]
            numeric = pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c])
            align = "r" if numeric else "l"
        col = _Column([label], align, cells, plain)
        if split:
            col.heading = _heading_lines(label, col.body_width)
        out.append(col)
    return out


# --------------------------------------------------------------------------- layout


@dataclass
class _Layout:
    """How a table is set: font size command, column separation (pt), paragraph columns."""

    size: str
    sep: float
    wrap: dict[int, float]


def _fits(columns: list[_Column], factor: float, sep: float, width: float) -> bool:
    natural = factor * sum(c.width for c in columns) + 2 * sep * len(columns)
    return natural * _SAFETY <= width


def _wrapped(columns: list[_Column], factor: float, sep: float, width: float) -> dict[int, float]:
    """The widest text column as a paragraph column of the width the others leave, when
    that holds its longest word ({} when it does not or there is no text column)."""
    text_cols = [i for i, c in enumerate(columns) if c.align == "l"]
    if not text_cols:
        return {}
    widest = max(text_cols, key=lambda i: columns[i].width)
    others = sum(c.width for i, c in enumerate(columns) if i != widest)
    left = width / _SAFETY - factor * others - 2 * sep * len(columns)
    words = [w for p in columns[widest].plain for w in re.split(r"[ _]", p)]
    longest = factor * max((text_width(w) for w in words), default=0.0) + 4.0
    if left < longest or left >= factor * columns[widest].width:
        return {}
    return {widest: round(left, 1)}


def choose_layout(columns: list[_Column], width: float = TEXT_WIDTH_PT) -> _Layout:
    """The largest font size at which the columns fit ``width`` pt.

    At each size (largest first) the column separations are tried, widest
    first, and then the smallest with the widest text column set as a
    paragraph column (its values break between words and after underscores)
    of the width left over, as long as that holds its longest word. When
    nothing fits: the smallest size and separation (a float is then shrunk to
    the line width; a longtable overflows).
    """
    for size, factor in FONT_SIZES:
        for sep in COLUMN_SEPS:
            if _fits(columns, factor, sep, width):
                return _Layout(size, sep, {})
        wrap = _wrapped(columns, factor, COLUMN_SEPS[-1], width)
        if wrap:
            return _Layout(size, COLUMN_SEPS[-1], wrap)
    return _Layout(FONT_SIZES[-1][0], COLUMN_SEPS[-1], {})


def _heading_cell(col: _Column) -> str:
    if len(col.heading) == 1:
        return col.heading[0]
    lines = r"\\".join(col.heading)
    return rf"\begin{{tabular}}[b]{{@{{}}{col.align}@{{}}}}{lines}\end{{tabular}}"


def _notes(t: ReportTable, rep: ReportContent) -> str:
    notes = []
    if not rep.converged and t.posterior:
        notes.append(
            r"\textbf{The fit did NOT converge}: " + latex_escape("; ".join(rep.problems)) + "."
            if not rep.approximate
            else r"\textbf{Approximate fit}: " + latex_escape(rep.banner) + "."
        )
    if t.note:
        notes.append(latex_escape(t.note))
    if t.latex_note:
        notes.append(t.latex_note)
    if not notes:
        return ""
    return r"{\noindent\footnotesize\sloppy\raggedright\textit{Note.} " + " ".join(notes) + r"\par}"


def table_latex(t: ReportTable, rep: ReportContent) -> str:
    """One table as LaTeX: a float of at most :data:`LONG_ROWS` rows, else a longtable."""
    columns = table_columns(t, split=False)
    layout = choose_layout(columns)
    if layout.size != FONT_SIZES[0][0] or layout.wrap:  # two-line headings before smaller type
        columns = table_columns(t)
        layout = choose_layout(columns)
    spec = "".join(
        f"p{{{layout.wrap[i]}pt}}" if i in layout.wrap else c.align for i, c in enumerate(columns)
    )
    end = r" \tabularnewline" if layout.wrap else r" \\"
    head = " & ".join(_heading_cell(c) for c in columns) + r" \\"
    body = []
    for r in range(len(t.frame)):
        cells = []
        for i, c in enumerate(columns):
            cell = c.cells[r]
            if i in layout.wrap:
                cell = r"\raggedright " + cell.replace(r"\_", r"\_\allowbreak{}")
            cells.append(cell)
        body.append(" & ".join(cells) + end)
    note = _notes(t, rep)
    caption = latex_escape(t.caption)
    size = rf"{layout.size}\setlength{{\tabcolsep}}{{{layout.sep:g}pt}}"
    if len(t.frame) <= LONG_ROWS:
        return "\n".join([
            r"\begin{table}[htbp]", r"\centering",
            rf"\caption{{{caption}}}", rf"\label{{tab:{t.name}}}", size,
            r"\resizebox{\ifdim\width>\linewidth\linewidth\else\width\fi}{!}{%",
            rf"\begin{{tabular}}{{{spec}}}", r"\toprule", head, r"\midrule", *body,
            r"\bottomrule", r"\end{tabular}}",
            *([r"\par\smallskip", note] if note else []),
            r"\end{table}",
        ])  # fmt: skip
    n = len(columns)
    return "\n".join([
        r"\clearpage  % the floats above first: a longtable is set where it stands",
        "{" + size, rf"\begin{{longtable}}{{{spec}}}",
        rf"\caption{{{caption}}}\label{{tab:{t.name}}} \\",
        r"\toprule", head, r"\midrule", r"\endfirsthead",
        rf"\multicolumn{{{n}}}{{l}}{{\textit{{Table \thetable{{}} (continued)}}}} \\",
        r"\toprule", head, r"\midrule", r"\endhead",
        r"\bottomrule", r"\endfoot",
        r"\bottomrule", r"\endlastfoot",
        *body,
        r"\end{longtable}",
        *([note] if note else []),
        "}",
    ])  # fmt: skip
