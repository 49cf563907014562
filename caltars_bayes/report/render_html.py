"""The HTML rendering of a report: one self-contained file.

CSS inline, figures embedded as inline SVG (:func:`inline_svg`, from
:func:`caltars_bayes._core.figures.figure_bytes`: vector, sharp at any zoom,
no external file; the PNG and SVG files written beside the report are for
Word and other programs), and a loud red banner at the top when the fit did
not converge; every posterior table's caption of an unconverged fit says so.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from caltars_bayes._core.figures import figure_bytes
from caltars_bayes.inference.display import esc
from caltars_bayes.report.elements import ReportContent, ReportFigure, ReportTable

if TYPE_CHECKING:
    from matplotlib.figure import Figure


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;
max-width:1100px;margin:0 auto;padding:1.2em 1.5em;color:#212121;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.1em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;
margin-top:1.6em}.sub{color:#555;margin-top:0}
.banner{padding:.8em 1em;border-radius:4px;margin:1em 0;font-weight:600}
.banner.bad{background:#c62828;color:#fff;font-size:1.15em;border:3px solid #8e0000}
.banner.bad ul{font-weight:400;font-size:.9em;margin:.4em 0 0}
.banner.approx{background:#f9a825;color:#212121;border:3px solid #c17900}
.banner.ok{background:#e8f5e9;color:#1b5e20;border-left:6px solid #2e7d32}
table.rt{border-collapse:collapse;margin:.6em 0 .3em;font-size:.86em}
table.rt th{border-top:2px solid #333;border-bottom:1px solid #333;padding:.25em .6em;
text-align:left}table.rt td{padding:.2em .6em;text-align:right}
table.rt td.t{text-align:left}table.rt tr:last-child td{border-bottom:2px solid #333}
caption{caption-side:top;text-align:left;font-style:italic;padding-bottom:.3em}
.warn{color:#c62828;font-weight:600}.note{font-size:.85em;color:#555}
figure{margin:1em 0}figure svg{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.85em;color:#444}.omitted{color:#777;font-style:italic}
nav ul{columns:2;font-size:.9em}.methods{background:#fafafa;border-left:4px solid #90a4ae;
padding:.6em 1em}
"""


def _banner_html(rep: ReportContent) -> str:
    if rep.approximate:
        return f"<div class='banner approx'>{esc(rep.banner)}</div>"
    if not rep.converged:
        items = "".join(f"<li>{esc(p)}</li>" for p in rep.problems)
        return (
            "<div class='banner bad' role='alert'>WARNING: NOT CONVERGED. These results are "
            f"provisional; do not report them.<ul>{items}</ul></div>"
        )
    return f"<div class='banner ok'>{esc(rep.banner)}</div>"


def _table_html(t: ReportTable, rep: ReportContent) -> str:
    df = t.shown
    cap = esc(t.caption)
    if not rep.converged and t.posterior:
        cap += " <span class='warn'>(fit NOT converged)</span>"
    head = "".join(f"<th>{esc(c)}</th>" for c in df.columns)
    rows = []
    for rec in df.itertuples(index=False):
        cells = []
        for c, v in zip(df.columns, rec, strict=True):
            cls = (
                " class='t'"
                if not isinstance(v, int | float | np.number) or isinstance(v, bool | np.bool_)
                else ""
            )
            cells.append(f"<td{cls}>{esc(t.cell(v, c))}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    note = f"<p class='note'>{esc(t.note)}</p>" if t.note else ""
    return (
        f"<table class='rt' id='tab-{esc(t.name)}'><caption>{cap}</caption>"
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>{note}"
    )


#: an id defined in an SVG, and the references to one (url(#id), href="#id")
_SVG_ID = re.compile(r'\bid="([^"]+)"')
_SVG_REF = re.compile(r'(\bid="|url\(#|href="#)([^")]+)')


def inline_svg(fig: Figure | bytes, name: str, label: str = "") -> str:
    """``fig`` (or its SVG file's bytes) as an ``<svg>`` element to put inside an HTML page.

    The XML prologue and doctype are dropped; every id the SVG defines (glyph
    paths, clip paths) and every reference to it get the prefix ``NAME-``, so
    that several figures on one page never share an id. ``label`` becomes the
    element's accessible name (``role="img"``, ``aria-label``).
    """
    svg = fig if isinstance(fig, bytes) else figure_bytes(fig, "svg")
    text = svg.decode("utf-8")
    text = text[text.index("<svg") :]
    ids = set(_SVG_ID.findall(text))
    prefix = re.sub(r"[^A-Za-z0-9_-]", "_", name) + "-"
    text = _SVG_REF.sub(
        lambda m: m.group(1) + (prefix + m.group(2) if m.group(2) in ids else m.group(2)), text
    )
    return text.replace("<svg", f"<svg role='img' aria-label='{esc(label)}'", 1)


def html_body(rep: ReportContent, svg: Callable[[ReportFigure], bytes] | None = None) -> str:
    """The report's HTML without the document around it (also its notebook display).

    ``svg`` gives a figure's SVG bytes (default: rendered here).
    """
    parts = [
        f"<h1>{esc(rep.title)}</h1><p class='sub'>{esc(rep.subtitle)}</p>",
        _banner_html(rep),
    ]
    nav = "".join(
        f"<li><a href='#sec-{s.key}'>{esc(s.title)}</a></li>" for s in rep.sections if not s.omitted
    )
    parts.append(f"<nav><ul>{nav}</ul></nav>")
    for s in rep.sections:
        if s.omitted:
            parts.append(f"<p class='omitted' id='sec-{s.key}'>{esc(s.text[0])}</p>")
            continue
        parts.append(f"<h2 id='sec-{s.key}'>{esc(s.title)}</h2>")
        if s.key == "summary":
            parts.append("<ul>" + "".join(f"<li>{esc(x)}</li>" for x in s.text) + "</ul>")
        elif s.key == "methods":
            parts.append(f"<p class='methods'>{esc(s.text[0])}</p>")
        else:
            parts.extend(f"<p>{esc(x)}</p>" for x in s.text)
        parts.extend(_table_html(t, rep) for t in s.tables)
        for f in s.figures:
            parts.append(
                f"<figure id='fig-{esc(f.name)}'>"
                f"{inline_svg(svg(f) if svg else f.figure, f.name, f.caption)}"
                f"<figcaption>{esc(f.caption)}</figcaption></figure>"
            )
    return "\n".join(parts)


def render_html(rep: ReportContent, svg: Callable[[ReportFigure], bytes] | None = None) -> str:
    """The report as one HTML document (figures as inline SVG; ``svg`` as in :func:`html_body`)."""
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{esc(rep.title)}</title><style>{_CSS}</style></head><body>\n"
        f"{html_body(rep, svg)}\n</body></html>\n"
    )
