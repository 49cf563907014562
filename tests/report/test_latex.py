"""The LaTeX report fits the page: compiled with pdflatex inside a plain article.

``compile_in_article`` and ``latex_problems`` are also used by the slow demo test in
test_report.py (the demo's own report.tex). Where pdflatex is not installed the compiling
tests are skipped with the reason; the layout tests run everywhere.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest

matplotlib.use("Agg")

from caltars_bayes._core.figures import save_figure
from caltars_bayes.model.simulate import FOUNDING_SESSION_COVARIATES, FOUNDING_SUBJECT_COVARIATES
from caltars_bayes.report.elements import ReportContent, ReportFigure, ReportTable, Section
from caltars_bayes.report.latex_tables import (
    LONG_ROWS,
    choose_layout,
    table_columns,
    text_width,
)
from caltars_bayes.report.render_latex import LATEX_PACKAGES, render_latex
from caltars_bayes.report.sections_results import (
    ASSOCIATION_COLUMNS,
    HYPOTHESIS_COLUMNS,
    LOADING_COLUMNS,
)

PDFLATEX = shutil.which("pdflatex")
#: an overfull line up to this many pt is tolerated (invisible in print)
OVERFULL_TOLERANCE_PT = 10.0


def latex_problems(log: str) -> list[str]:
    """What in a pdflatex log means the report does not fit the page: floats taller than
    the page, lines more than :data:`OVERFULL_TOLERANCE_PT` too wide, and errors."""
    found = [m.group(0) for m in re.finditer(r"Float too large for page by [\d.]+pt", log)]
    for m in re.finditer(r"Overfull \\hbox \(([\d.]+)pt too wide\)[^\n]*", log):
        if float(m.group(1)) > OVERFULL_TOLERANCE_PT:
            found.append(m.group(0))
    found.extend(m.group(0) for m in re.finditer(r"^! .*$", log, re.M))
    return found


def compile_in_article(tex: Path, workdir: Path) -> str:
    """Copy ``tex`` and its figure folder into ``workdir``, ``\\input`` it into a plain
    article that loads only the packages the snippet says it needs, run pdflatex twice
    (longtable settles its column widths on the second run) and return the log."""
    if PDFLATEX is None:
        pytest.skip(
            "pdflatex not installed: apt-get install texlive-latex-base "
            "texlive-latex-recommended to check that report.tex fits the page"
        )
    workdir.mkdir(parents=True, exist_ok=True)
    shutil.copy(tex, workdir / tex.name)
    figures = tex.with_name(f"{tex.stem}_figures")
    if figures.is_dir():
        shutil.copytree(figures, workdir / figures.name, dirs_exist_ok=True)
    (workdir / "main.tex").write_text(
        "\\documentclass{article}\n"
        f"\\usepackage{{{','.join(LATEX_PACKAGES)}}}\n"
        "\\begin{document}\n"
        f"\\input{{{tex.name}}}\n"
        "\\end{document}\n"
    )
    for _ in range(2):
        run = subprocess.run(
            [PDFLATEX, "-interaction=nonstopmode", "-halt-on-error", "main.tex"],
            cwd=workdir,
            capture_output=True,
            text=True,
            timeout=180,
        )
        log = (workdir / "main.log").read_text(errors="replace")
        assert run.returncode == 0, log[-3000:]
    return log


def test_latex_problems_reads_the_log():
    log = (
        "Overfull \\hbox (16.52834pt too wide) in paragraph at lines 9--10\n"
        "Overfull \\hbox (3.1pt too wide) in alignment at lines 12--40\n"
        "LaTeX Warning: Float too large for page by 85.4516pt on input line 382.\n"
        "! Undefined control sequence.\n"
    )
    assert latex_problems(log) == [
        "Float too large for page by 85.4516pt",
        "Overfull \\hbox (16.52834pt too wide) in paragraph at lines 9--10",
        "! Undefined control sequence.",
    ]
    assert latex_problems("Overfull \\hbox (9.9pt too wide) in paragraph\n") == []


# --------------------------------------------------------------------------- demo-sized tables


SCALES = ["PPC", "PNC", "TPC", "TNC", "PTA"]


def _demo_sized_report() -> ReportContent:
    """Tables as long and wide as the demo's (5 scales, 30 items, 9 covariates, 23
    hypotheses), an unconverged verdict (a note under every table) and figures taller and
    wider than the page."""
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(1)
    covs = [(c, "subject") for c in FOUNDING_SUBJECT_COVARIATES] + [
        (c, "session") for c in FOUNDING_SESSION_COVARIATES
    ]
    rows = [(s, c, lev) for s in SCALES for c, lev in covs]
    n = len(rows)
    r = rng.uniform(-0.8, 0.8, n)
    assoc = pd.DataFrame(rows, columns=["scale", "covariate", "level"]).assign(
        median=r, hdi_low=r - 0.3, hdi_high=r + 0.3, p_positive=rng.uniform(0, 1, n),
        p_negative=rng.uniform(0, 1, n), p_rope=rng.uniform(0, 1, n),
        classical_r=r - 0.02, classical_p=rng.uniform(0, 0.2, n), converged=False,
    )[[*ASSOCIATION_COLUMNS, "converged"]]  # fmt: skip
    hyp = assoc.head(23).assign(
        direction=["positive", "negative", "null"] * 7 + ["positive"] * 2,
        p_expected=rng.uniform(0, 1, 23), verdict=["inconclusive", "supported"] * 11 + ["x"],
    )[[*HYPOTHESIS_COLUMNS, "converged"]]  # fmt: skip
    items = [f"CALTARS{i:02d}" for i in range(1, 31)]
    lam = rng.uniform(0.3, 0.9, 30)
    load = pd.DataFrame(
        {"item": items, "scale": np.repeat(SCALES, 6), "median": lam, "hdi_low": lam - 0.1,
         "hdi_high": lam + 0.1, "classical_loading": lam - 0.05, "converged": False}
    )[[*LOADING_COLUMNS, "converged"]]  # fmt: skip
    bounded = ("median", "hdi_low", "hdi_high", "classical_r")
    tables = [
        ReportTable("associations", "Associations.", assoc, bounded=bounded,
                    p_columns=("classical_p",), latex_omit=("p_negative",),
                    latex_note="P(r $<$ 0) = 1 $-$ P(r $>$ 0) is in associations.csv."),
        ReportTable("hypotheses", "Hypotheses.", hyp, bounded=bounded, p_columns=("classical_p",),
                    latex_omit=("classical_r", "classical_p"), latex_note="See Table 1."),
        ReportTable("loadings", "Loadings.", load, bounded=("median", "hdi_low", "hdi_high")),
    ]  # fmt: skip
    tall, ax = plt.subplots(figsize=(5, 16))
    ax.plot(range(45))
    wide, ax = plt.subplots(figsize=(16, 3))
    ax.plot(range(45))
    figures = [ReportFigure("tall", "A tall figure.", tall), ReportFigure("wide", "Wide.", wide)]
    problems = ["max R-hat 3.757 > 1.01", "min bulk ESS 3 < 400", "40 divergent transitions"]
    return ReportContent(
        title="Demo-sized", subtitle="x", converged=False, approximate=False,
        banner="WARNING: NOT CONVERGED", problems=problems,
        sections=[Section("validity", "Validity", ["text"], tables, figures)], summary=[],
        methods="Ratings were analysed with a graded-response (cumulative-logit) model; priors "
        "Normal(mu=0, sigma=3); Gamma(alpha=4, beta=4); HalfNormal(sigma=2) " * 3,
    )  # fmt: skip


@pytest.fixture(scope="module")
def demo_sized():
    rep = _demo_sized_report()
    yield rep
    rep.close()


def test_long_tables_are_longtables_and_short_ones_floats(demo_sized):
    tex = render_latex(demo_sized, "figs")
    for name, rows in (("associations", 45), ("loadings", 30)):
        assert rows > LONG_ROWS
        block = tex[tex.index(f"label{{tab:{name}}}") - 300 :]
        assert r"\begin{longtable}" in block[:400] and r"\endhead" in block
    hyp = tex[tex.index(r"\label{tab:hypotheses}") - 200 :]
    assert hyp.index(r"\begin{table}") < hyp.index(r"\resizebox") < hyp.index(r"\end{table}")
    assert r"\begin{longtable}" not in hyp[: hyp.index(r"\end{table}")]
    # every figure at most 80% of the page's height, in proportion
    assert tex.count("height=0.8\\textheight,keepaspectratio") == 2


def test_layout_estimate_fits_the_text_width(demo_sized):
    """The chosen font, separation and paragraph column make the estimated width fit 345 pt,
    and the estimate of a string's width is cmr10's (as pdflatex measured it)."""
    assert text_width("pretreatment_interpersonal") == pytest.approx(117.4, abs=0.5)
    assert text_width("[-.10, .62]") == pytest.approx(45.0, abs=0.5)  # $-$ is 7.78 pt
    for t in demo_sized.sections[0].tables:
        cols = table_columns(t)
        layout = choose_layout(cols)
        factor = {r"\small": 0.925, r"\footnotesize": 0.85, r"\scriptsize": 0.794}[layout.size]
        widths = [layout.wrap.get(i, factor * c.width) + 2 * layout.sep for i, c in enumerate(cols)]
        assert sum(widths) <= 345.0, (t.name, layout)
    # the associations need their covariate names broken over lines at the smaller sizes
    cols = table_columns(demo_sized.sections[0].tables[0])
    assert list(choose_layout(cols).wrap) == [1]


def test_demo_sized_report_compiles_within_the_page(demo_sized, tmp_path):
    folder = tmp_path / "paper"
    (folder / "report_figures").mkdir(parents=True)
    for f in demo_sized.figures:
        save_figure(f.figure, folder / "report_figures" / f"{f.name}.png")
    (folder / "report.tex").write_text(render_latex(demo_sized, "report_figures"))
    log = compile_in_article(folder / "report.tex", tmp_path / "build")
    assert latex_problems(log) == [], latex_problems(log)
    # the check can fail: the same tables as plain booktabs floats overflow the page
    naive = tmp_path / "naive"
    naive.mkdir()
    (naive / "report.tex").write_text(_naive_latex(demo_sized))
    problems = latex_problems(compile_in_article(naive / "report.tex", tmp_path / "naive_build"))
    assert any(p.startswith("Float too large") for p in problems), problems
    assert any(p.startswith("Overfull") for p in problems), problems


def _naive_latex(rep: ReportContent) -> str:
    """Every table as one plain booktabs float (what the report wrote before), the
    associations twice over (a table of 90 rows)."""
    from caltars_bayes.report.latex_tables import latex_escape

    out = []
    for t in rep.sections[0].tables:
        df = pd.concat([t.shown, t.shown]) if t.name == "associations" else t.shown  # 90 rows
        rows = [" & ".join(latex_escape(t.cell(v, c)) for c, v in r.items()) + r" \\"
                for _, r in df.iterrows()]  # fmt: skip
        out += [r"\begin{table}[htbp]", r"\centering\small", r"\caption{x}",
                rf"\begin{{tabular}}{{{'l' * df.shape[1]}}}", r"\toprule",
                " & ".join(latex_escape(c) for c in df.columns) + r" \\", r"\midrule", *rows,
                r"\bottomrule", r"\end{tabular}", r"\end{table}"]  # fmt: skip
    return "\n".join(out)
