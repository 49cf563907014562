"""The markdown rendering of a report, for quick reading.

Figures are written beside the file (``<stem>_figures/NAME.png`` and ``.svg``)
and linked; the verdict heads the file as a block quote, and every posterior
table's caption of an unconverged fit says so.
"""

from __future__ import annotations

import pandas as pd

from caltars_bayes.report.elements import ReportContent, ReportTable


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _table_md(t: ReportTable, rep: ReportContent) -> str:
    df = t.shown
    cap = f"**Table: {t.caption}**"
    if not rep.converged and t.posterior:
        cap += " (fit NOT converged)"
    lines = [cap, "", "| " + " | ".join(_md_cell(str(c)) for c in df.columns) + " |"]
    align = []
    for c in df.columns:
        numeric = pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c])
        align.append("---:" if numeric else ":---")
    lines.append("| " + " | ".join(align) + " |")
    for rec in df.itertuples(index=False):
        cells = [_md_cell(t.cell(v, c)) for c, v in zip(df.columns, rec, strict=True)]
        lines.append("| " + " | ".join(cells) + " |")
    if t.note:
        lines.extend(["", f"*{t.note}*"])
    return "\n".join(lines)


def render_markdown(rep: ReportContent, folder: str) -> str:
    """The report as markdown, figures referred to in ``folder``."""
    out = [f"# {rep.title}", "", f"*{rep.subtitle}*", ""]
    if rep.approximate:
        out.append(f"> **{rep.banner}**")
    elif not rep.converged:
        out.append(
            "> **WARNING: NOT CONVERGED. These results are provisional; do not report them.**"
        )
        out.extend(f"> - {p}" for p in rep.problems)
    else:
        out.append(f"> {rep.banner}")
    out.append("")
    for s in rep.sections:
        if s.omitted:
            out.extend([f"*{s.text[0]}*", ""])
            continue
        out.extend([f"## {s.title}", ""])
        if s.key == "summary":
            out.extend(f"- {x}" for x in s.text)
            out.append("")
        else:
            for x in s.text:
                out.extend([x, ""])
        for t in s.tables:
            out.extend([_table_md(t, rep), ""])
        for f in s.figures:
            out.extend(
                [f"![{f.caption}]({folder}/{f.name}.png)", "",
                 f"*{f.caption}* ([SVG]({folder}/{f.name}.svg))", ""]
            )  # fmt: skip
    return "\n".join(out).rstrip() + "\n"
