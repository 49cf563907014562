"""A report document and its writing: HTML, markdown and LaTeX, with figures.

:func:`caltars_bayes.report.build.build_report` collects the sections of a
report from a fit; :class:`Report` renders and writes them:

- :meth:`Report.to_html`: one self-contained file (CSS inline, figures
  embedded as inline SVG; PNG and SVG files beside it for Word) with a loud
  red banner at the top when the fit did not converge
  (:mod:`~caltars_bayes.report.render_html`);
- :meth:`Report.to_markdown`: markdown for quick reading, figures written
  beside it (``<stem>_figures/NAME.png`` and ``.svg``) and linked
  (:mod:`~caltars_bayes.report.render_markdown`);
- :meth:`Report.to_latex`: booktabs tables (APA number style: no leading
  zero for correlations, reliabilities and probabilities, see
  :func:`~caltars_bayes.report.elements.apa_number`) fitted to the text
  width, long ones as ``longtable``, and figure environments sized to the
  page, for ``\\input`` into a paper that loads
  ``\\usepackage{booktabs, graphicx, longtable}``
  (:mod:`~caltars_bayes.report.render_latex`).

Every path a report prints is relative (figures: ``<stem>_figures/NAME``;
the hypotheses file: its name).

:func:`render` writes one report in several formats (``FORMATS``, from
:mod:`~caltars_bayes.report.formats`), the figures once. Every
table carries the convergence verdict: the banner heads every format and every
table caption of an unconverged fit says so.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from caltars_bayes._core.errors import CaltarsError
from caltars_bayes._core.figures import figure_bytes, figure_files
from caltars_bayes._core.io import atomic_write_dir, atomic_write_file
from caltars_bayes.report.elements import ReportContent, ReportFigure
from caltars_bayes.report.formats import FORMATS, SUFFIX
from caltars_bayes.report.render_html import html_body, render_html
from caltars_bayes.report.render_latex import render_latex
from caltars_bayes.report.render_markdown import render_markdown


@dataclass(repr=False)
class Report(ReportContent):
    """A report of one fit, ready to render: the content of
    :class:`~caltars_bayes.report.elements.ReportContent` (its attributes are
    listed there) with the methods that render and write it."""

    _svgs: dict[str, bytes] = field(default_factory=dict, init=False, repr=False, compare=False)

    def figure_svg(self, figure: ReportFigure) -> bytes:
        """The SVG of a figure, rendered once for the HTML and the SVG file alike."""
        if figure.name not in self._svgs:
            self._svgs[figure.name] = figure_bytes(figure.figure, "svg")
        return self._svgs[figure.name]

    # ------------------------------------------------------------------ writing

    def save_figures(self, out_dir: str | Path, force: bool = False) -> list[Path]:
        """Write every figure as PNG and SVG into ``out_dir`` (atomically)."""
        files: dict[str, Callable[[Path], Any]] = {}
        for f in self.figures:
            files.update(figure_files(f.name, f.figure))
            files[f"{f.name}.svg"] = partial(_write_bytes, self.figure_svg(f))
        if not files:
            return []
        return atomic_write_dir(Path(out_dir), files, force=force)

    def write(
        self, path: str | Path, fmt: str | None = None, force: bool = False, figures: bool = True
    ) -> Path:
        """Write the report in ``fmt`` (default from the suffix: .html, .md, .tex)."""
        path = Path(path)
        if fmt is None:
            by_suffix = {v: k for k, v in SUFFIX.items()}
            fmt = by_suffix.get(path.suffix.lower())
            if fmt is None:
                raise CaltarsError(f"{path}: unknown report format (use .html, .md or .tex)")
        if fmt not in FORMATS:
            raise CaltarsError(f"unknown report format {fmt!r}; use one of {', '.join(FORMATS)}")
        writer = {"html": self.to_html, "md": self.to_markdown, "latex": self.to_latex}[fmt]
        return writer(path, force=force, figures=figures)

    def _check_targets(self, path: Path, force: bool, figures: bool) -> Path:
        fig_dir = figure_dir(path)
        if not force:
            for p in (path, fig_dir) if figures and self.figures else (path,):
                if p.exists():
                    raise CaltarsError(f"{p}: already exists; use --force to overwrite")
        return fig_dir

    def _write(self, path: str | Path, force: bool, figures: bool, render) -> Path:
        """Render with the figure folder's name, save the figures, write atomically."""
        path = Path(path)
        fig_dir = self._check_targets(path, force, figures=figures)
        text = render(fig_dir.name)
        if figures:
            self.save_figures(fig_dir, force=force)
        return atomic_write_file(path, lambda p: p.write_text(text, encoding="utf-8"), force=force)

    def to_html(self, path: str | Path, force: bool = False, figures: bool = True) -> Path:
        """Write one self-contained HTML file (figures embedded; also saved beside as PNG/SVG)."""
        return self._write(path, force, figures, lambda _: self.html())

    def to_markdown(self, path: str | Path, force: bool = False, figures: bool = True) -> Path:
        """Write markdown; figures go to ``<stem>_figures/`` beside it (PNG, SVG), linked."""
        return self._write(path, force, figures, self.markdown)

    def to_latex(self, path: str | Path, force: bool = False, figures: bool = True) -> Path:
        """Write LaTeX (booktabs tables, APA numbers) for ``\\input``; figures beside as PNG/SVG."""
        return self._write(path, force, figures, self.latex)

    # ------------------------------------------------------------------ rendering

    def html(self) -> str:
        """The report as one HTML document (figures as inline SVG)."""
        return render_html(self, self.figure_svg)

    def markdown(self, figure_folder: str = "report_figures") -> str:
        """The report as markdown, figures linked in ``figure_folder``."""
        return render_markdown(self, figure_folder)

    def latex(self, figure_folder: str = "report_figures") -> str:
        """The report's tables, figures and methods paragraph as LaTeX."""
        return render_latex(self, figure_folder)

    def _repr_html_(self) -> str:
        return html_body(self, self.figure_svg)

    def __repr__(self) -> str:
        shown = [s.key for s in self.sections if not s.omitted]
        return f"Report({self.title}; {'; '.join(shown)}; {self.banner})"


def _write_bytes(data: bytes, path: Path) -> None:
    path.write_bytes(data)


def figure_dir(path: str | Path) -> Path:
    """The folder where the figures of the report file ``path`` are written."""
    path = Path(path)
    return path.with_name(f"{path.stem}_figures")


def render(
    report: Report, out: str | Path, formats: Sequence[str], force: bool = False
) -> list[Path]:
    """Write ``report`` in each of ``formats`` as ``out`` with the format's suffix.

    The figures are written once, into ``<stem>_figures/`` beside the files.
    Nothing is written when any target exists and ``force`` is False.
    """
    out = Path(out)
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise CaltarsError(f"unknown report format {bad[0]!r}; use one of {', '.join(FORMATS)}")
    targets = [out.with_suffix(SUFFIX[f]) for f in formats]
    if not force:
        for p in [*targets, figure_dir(out)]:
            if p.exists():
                raise CaltarsError(f"{p}: already exists; use --force to overwrite")
    paths = report.save_figures(figure_dir(out), force=force)
    for f, p in zip(formats, targets, strict=True):
        paths.append(report.write(p, f, force=force, figures=False))
    return paths
