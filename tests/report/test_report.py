"""Reports: APA numbers, the three formats rendered from the tiny (unconverged) fit, the CLI."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import re
from dataclasses import replace
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest

matplotlib.use("Agg")

from test_latex import compile_in_article, latex_problems

from caltars_bayes._core.summaries import describe
from caltars_bayes.cli import main
from caltars_bayes.report.build import build_report
from caltars_bayes.report.document import figure_dir, render
from caltars_bayes.report.elements import apa_number, apa_p
from caltars_bayes.report.methods import _sampler_settings_text, methods_paragraph
from caltars_bayes.report.outputs import save_fit_directory
from caltars_bayes.report.plots import flagged_parameters, judge_draws, plot_judges
from caltars_bayes.report.render_latex import latex_escape
from caltars_bayes.report.sections_results import (
    ASSOCIATION_COLUMNS,
    CORRELATION_COLUMNS,
    HYPOTHESIS_COLUMNS,
    LOADING_COLUMNS,
    PPC_VERDICT_COLUMNS,
    RELIABILITY_COLUMNS,
)
from caltars_bayes.spec.hypotheses import Hypotheses, Hypothesis
from caltars_bayes.spec.instrument import models_dir

# --------------------------------------------------------------------------- pure functions


@pytest.mark.parametrize(
    ("x", "kwargs", "expected"),
    [
        (0.823, {}, ".82"),
        (0.825001, {}, ".83"),
        (-0.05, {}, "-.05"),
        (-0.004, {}, ".00"),  # a rounded zero has no sign
        (1.0, {}, "1.00"),
        (0.9996, {}, "1.00"),
        (-1.0, {}, "-1.00"),
        (0.5, {"digits": 3}, ".500"),
        (0.5, {"leading_zero": True}, "0.50"),
        (12.345, {"leading_zero": True}, "12.35"),
        (float("nan"), {}, ""),
        (None, {}, ""),
    ],
)
def test_apa_number(x, kwargs, expected):
    assert apa_number(x, **kwargs) == expected


def test_apa_p():
    assert apa_p(0.0004) == "< .001"
    assert apa_p(0.0123) == ".012"
    assert apa_p(float("nan")) == ""


def test_latex_escape():
    assert latex_escape("a_b 50% & <= ~") == r"a\_b 50\% \& $\le$ $\sim$"
    assert latex_escape("R-hat > 1.01") == "R-hat $>$ 1.01"


# --------------------------------------------------------------------------- the report


@pytest.fixture(scope="module")
def hyps() -> Hypotheses:
    return Hypotheses(
        [Hypothesis("PC", "x", "positive", "x and PC"), Hypothesis("TUI", "x", "null")],
        source="<test>",
    )


@pytest.fixture(scope="module")
def report(tiny_fit, hyps):
    rep = build_report(tiny_fit, hypotheses=hyps)
    yield rep
    rep.close()


@pytest.fixture(scope="module")
def rendered(report, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report") / "report"
    render(report, out, ["html", "md", "latex"])
    return out


def _html_table(text: str, name: str) -> tuple[list[str], list[list[str]]]:
    m = re.search(rf"<table class='rt' id='tab-{name}'>(.*?)</table>", text, re.S)
    assert m, f"table {name} missing from the HTML"
    head = re.findall(r"<th>(.*?)</th>", m.group(1))
    trs = re.findall(r"<tr>(.*?)</tr>", m.group(1))
    rows = [re.findall(r"<td[^>]*>(.*?)</td>", r) for r in trs]
    return head, [r for r in rows if r]


def _latex_table(text: str, name: str) -> tuple[list[str], list[list[str]], str]:
    """Heading cells, body rows and the text under a LaTeX table (a float or a longtable)."""
    m = re.search(
        rf"\\label\{{tab:{name}\}}.*?\\toprule\n(.*?) \\\\\n\\midrule\n(.*?)"
        r"\\end\{(?:tabular\}\}|longtable\})(.*?)(?:\\end\{table\}|\n\}\n)",
        text,
        re.S,
    )
    assert m, f"table {name} missing from the LaTeX"
    body = m.group(2)
    if r"\endlastfoot" in body:  # a longtable: the rows follow its repeated heading and feet
        body = body.split("\\endlastfoot\n", 1)[1]
    body = body.split("\\bottomrule")[0]
    rows = [r.rstrip(" \\").split(" & ") for r in body.strip().split("\n")]
    rows = [[c.removesuffix(r" \tabularnewline") for c in r] for r in rows]
    return m.group(1).split(" & "), rows, m.group(3)


def test_report_sections_and_verdict(report, tiny_fit):
    assert not tiny_fit.converged
    assert not report.converged and "NOT CONVERGED" in report.banner
    keys = [s.key for s in report.sections]
    for key in ("summary", "data", "convergence", "structure", "reliability", "judges",
                "validity", "dstudy", "comparison", "ppc", "methods"):  # fmt: skip
        assert key in keys
    # no comparison given: a one-line note, not an error
    comp = report.section("comparison")
    assert comp.omitted and len(comp.text) == 1 and "omitted" in comp.text[0]
    # every posterior table keeps the verdict column
    for name, frame in report.tables.items():
        if name not in ("design", "ratings_per_judge", "covariate_missingness", "convergence",
                        "flagged_parameters"):  # fmt: skip
            assert "converged" in frame.columns, name
            assert not frame["converged"].any(), name


def test_no_borrowed_prior_section_without_prior_from(report, rendered, tiny_fit):
    """A fit made without --prior-from: no borrowed-prior section, table or sentence."""
    assert tiny_fit.record.prior_from is None
    with pytest.raises(KeyError):
        report.section("borrowed")
    assert not {"prior_source", "borrowed_priors", "prior_conflict"} & set(report.tables)
    assert "borrowed" not in report.methods and not any("borrowed" in s for s in report.summary)
    for suffix in (".html", ".md", ".tex"):
        text = rendered.with_suffix(suffix).read_text()
        assert "Priors borrowed" not in text and "prior-data conflict" not in text.lower()


def test_report_tables_hold_the_fit_values(report, tiny_fit, hyps):
    from caltars_bayes.analysis.reliability import reliability
    from caltars_bayes.analysis.validity import test_hypotheses

    rel = report.tables["reliability"]
    assert list(rel.columns) == [*RELIABILITY_COLUMNS, "converged"]
    full = reliability(tiny_fit)
    full = full[(full["coefficient"] == "agreement") & (full["generalizes_over"] == "judges")]
    full = full[full["route"] == "observed"].reset_index(drop=True)
    np.testing.assert_allclose(rel["median"], full["median"])
    np.testing.assert_allclose(rel["classical"], full["classical"])
    assert set(rel["judges"]) == {1, 3}
    hyp = report.tables["hypotheses"]
    assert list(hyp.columns) == [*HYPOTHESIS_COLUMNS, "converged"]
    expected = test_hypotheses(tiny_fit, hyps)
    assert list(hyp["verdict"]) == list(expected["verdict"])
    assert list(report.tables["associations"].columns) == [*ASSOCIATION_COLUMNS, "converged"]


def test_html_is_self_contained_with_banner_and_figures(report, rendered):
    text = rendered.with_suffix(".html").read_text()
    assert text.startswith("<!DOCTYPE html>")
    assert "class='banner bad'" in text and "NOT CONVERGED" in text
    # the banner comes before any section
    assert text.index("banner bad") < text.index("id='sec-data'")
    # self-contained: no external resources, every figure an inline SVG in its <figure>
    assert "<link" not in text and "<script" not in text and "<img" not in text
    assert not re.search(r"(?:src|href)=['\"](?!#|data:)", text)
    figures = re.findall(r"<figure id='fig-([^']+)'>\s*<svg\b.*?</svg>\s*<figcaption>", text, re.S)
    assert figures == [f.name for f in report.figures]
    assert text.count("<svg") == len(report.figures) >= 12
    names = {f.name for f in report.figures}
    assert {"trace_flagged", "rank_flagged", "factor_correlations", "judges", "associations",
            "dstudy", "ppc", "design", "loadings", "reliability", "alliance_sessions",
            "categories"} <= names  # fmt: skip
    head, rows = _html_table(text, "reliability")
    assert head == RELIABILITY_COLUMNS
    assert len(rows) == len(report.tables["reliability"])
    assert "(fit NOT converged)" in text
    # every figure is also written beside as PNG and SVG
    for f in report.figures:
        assert (figure_dir(rendered) / f"{f.name}.png").stat().st_size > 1000
        assert (figure_dir(rendered) / f"{f.name}.svg").read_text().lstrip().startswith("<?xml")


def test_html_table_columns(rendered, report):
    text = rendered.with_suffix(".html").read_text()
    head, _ = _html_table(text, "associations")
    assert head == ASSOCIATION_COLUMNS
    head, rows = _html_table(text, "hypotheses")
    assert head == HYPOTHESIS_COLUMNS and len(rows) == 2
    head, _ = _html_table(text, "judge_parameters")
    assert head[:3] == ["judge", "parameter", "scale"]
    head, _ = _html_table(text, "convergence")
    assert head == ["check", "value", "threshold", "passed"]
    head, rows = _html_table(text, "loadings")
    assert head == LOADING_COLUMNS and len(rows) == len(report.tables["loadings"]) == 24
    head, rows = _html_table(text, "factor_correlations")
    assert head == CORRELATION_COLUMNS and len(rows) == 6  # 4 scales: 6 pairs
    head, rows = _html_table(text, "ppc")
    assert head == PPC_VERDICT_COLUMNS and len(rows) >= 3


def test_markdown_links_figures(rendered, report):
    text = rendered.with_suffix(".md").read_text()
    assert "WARNING: NOT CONVERGED" in text.split("## Summary")[0]
    folder = figure_dir(rendered).name
    for f in report.figures:
        assert f"]({folder}/{f.name}.png)" in text
        assert f"({folder}/{f.name}.svg)" in text
    assert "| " + " | ".join(RELIABILITY_COLUMNS) + " |" in text
    assert "*Model comparison: omitted" in text
    # only relative paths, in every format
    for suffix in (".md", ".html", ".tex"):
        assert str(rendered.parent) not in rendered.with_suffix(suffix).read_text()


def test_latex_booktabs_and_apa_numbers(rendered, report):
    text = rendered.with_suffix(".tex").read_text()
    n_tables = len(report.tables)
    assert text.count(r"\begin{table}") == n_tables
    for rule in (r"\toprule", r"\midrule", r"\bottomrule"):
        assert text.count(rule) == n_tables
    head, rows, note = _latex_table(text, "reliability")
    # the HDI's bounds are one column, "[low, high]", as APA tables print an interval
    shown = [c for c in RELIABILITY_COLUMNS if c != "hdi_high"]
    assert len(head) == len(shown) and r"95\% HDI" in head[shown.index("hdi_low")]
    assert "NOT converge" in note
    rel = report.tables["reliability"]
    col = {c: i for i, c in enumerate(shown)}
    number = r"(\$-\$)?\.\d\d|1\.00"  # no leading zero
    for row, (_, r) in zip(rows, rel.iterrows(), strict=True):
        for c in ("median", "classical"):
            assert re.fullmatch(number, row[col[c]]), row[col[c]]
            assert row[col[c]] == apa_number(r[c]).replace("-", "$-$")
        low, high = (apa_number(r[c]).replace("-", "$-$") for c in ("hdi_low", "hdi_high"))
        assert row[col["hdi_low"]] == f"[{low}, {high}]"
    # unbounded quantities keep their leading zero (severities, in logits)
    _, jrows, _ = _latex_table(text, "judge_parameters")
    assert any(re.fullmatch(r"(\$-\$)?0\.\d\d", r[3]) for r in jrows)
    # p values in APA style; P(r < 0) = 1 - P(r > 0) is left out to fit the page
    ahead, arows, anote = _latex_table(text, "associations")
    assert len(ahead) == len(ASSOCIATION_COLUMNS) - 2
    assert r"\textit{P}(\textit{r} $<$ 0) = 1 $-$" in anote
    assert all(re.fullmatch(r"(\$<\$ )?\.\d{3}", r[-1]) for r in arows), arows
    assert "Methods paragraph" in text and r"\fbox" in text
    # figures fill the line, at most 80% of the page's height, in proportion
    size = r"width=\linewidth,height=0.8\textheight,keepaspectratio"
    assert f"\\includegraphics[{size}]{{report_figures/dstudy.png}}" in text
    assert text.count(r"\includegraphics[") == text.count(size) == len(report.figures)


def test_converged_fit_has_no_warning(tiny_fit):
    d = dataclasses.replace(
        tiny_fit.diagnostics, converged=True, problems=[], offenders=[], max_rhat=1.004
    )
    fit = dataclasses.replace(tiny_fit, diagnostics=d)
    rep = build_report(fit, dstudy=False, ppc=False)
    try:
        html = rep.html()
        assert "class='banner ok'" in html and "NOT CONVERGED" not in html
        assert "NOT converge" not in rep.latex()
        assert not [f for f in rep.figures if f.name.endswith("_flagged")]
        assert "All criteria were met (maximum R-hat 1.004" in rep.methods
    finally:
        rep.close()


def test_sections_without_source_are_notes(tiny_fit):
    plan = dataclasses.replace(tiny_fit.plan, covariates=[], session_covariates=[])
    fit = dataclasses.replace(tiny_fit, plan=plan)
    rep = build_report(fit, dstudy=False, ppc=False)
    try:
        val = rep.section("validity")
        assert val.omitted and "no covariates" in val.text[0]
        assert "associations" not in rep.tables
        assert "Construct validity: omitted" in rep.markdown()
    finally:
        rep.close()


def _comparison_table() -> pd.DataFrame:
    """A model-comparison table in the format of caltars_bayes.analysis.compare.compare_fits."""
    from caltars_bayes.analysis.compare import COMPARE_COLUMNS

    t = pd.DataFrame(
        {
            "name": ["five scales", "general"], "elpd": [-1520.4, -1561.9], "se": [30.2, 31.0],
            "elpd_diff": [0.0, -41.5], "dse": [0.0, 9.8], "weight": [0.93, 0.07],
            "p_loo": [88.1, 61.5], "pareto_k_max": [0.41, 0.52], "n_high_k": [0, 0],
            "n_units": [24, 24], "by": "session", "method": "psis", "converged": False,
        }
    )  # fmt: skip
    return t[COMPARE_COLUMNS]


def test_comparison_section(tiny_fit):
    table = _comparison_table()
    rep = build_report(tiny_fit, comparison=table, dstudy=False, ppc=False)
    try:
        sec = rep.section("comparison")
        assert not sec.omitted and [f.name for f in sec.figures] == ["comparison"]
        assert "psis, leave one session out" in sec.tables[0].caption
        head, rows = _html_table(rep.html(), "comparison")
        assert head == [c for c in table.columns if c != "converged"]
        assert [r[0] for r in rows] == ["five scales", "general"]
        _, trows, _ = _latex_table(rep.latex(), "comparison")
        assert trows[1][head.index("weight")] == ".07"  # APA: a weight is a proportion
        assert trows[1][head.index("elpd_diff")] == "$-$41.50"
    finally:
        rep.close()


def test_methods_paragraph_from_the_fit(tiny_fit):
    text = methods_paragraph(tiny_fit)
    m = tiny_fit.record
    assert f"{m.chains} chains of {m.tune} tuning and {m.draws} kept" in text
    assert f"{tiny_fit.data.n_ratings:,} ratings" in text
    assert "HalfNormal(sigma=2)" in text and "LKJ(2)" in text
    assert "NOT met" in text and "Covariates (x)" in text
    # the sampler settings a reader needs to reproduce the fit
    assert m.sampler == "nutpie" and m.start == "default"
    assert "trajectories capped at an integration time of 3.2" in text
    assert "data-based" not in text
    rec = replace(m, start="data", nuts={"target_integration_time": 2.7})
    assert _sampler_settings_text(rec) == (
        "; trajectories capped at an integration time of 2.7; chains started from data-based values"
    )
    assert _sampler_settings_text(replace(rec, nuts={"target_integration_time": None})) == (
        "; chains started from data-based values"
    )
    # numpyro on a large design: the package's tree-depth cap
    big = replace(
        m, sampler="numpyro", start="data", nuts={}, sampler_defaults={"max_tree_depth": 6}
    )
    assert _sampler_settings_text(big) == (
        "; at most 63 leapfrog steps per iteration (maximum tree depth 6)"
        "; chains started from data-based values"
    )
    assert _sampler_settings_text(replace(big, nuts={"max_tree_depth": 8})).startswith(
        "; at most 255 leapfrog steps per iteration (maximum tree depth 8)"
    )


def test_flagged_parameters_are_the_offenders(tiny_fit):
    draws = flagged_parameters(tiny_fit, max_params=4)
    offenders = [o["parameter"] for o in tiny_fit.diagnostics.offenders]
    labels = list(draws["parameter"].values)
    assert len(labels) == 4 and labels == offenders[: len(labels)]
    name, _, rest = labels[0].partition("[")
    da = tiny_fit.posterior[name]
    other = [d for d in da.dims if d not in ("chain", "draw")]
    sel = da.sel(dict(zip(other, rest.rstrip("]").split(", "), strict=True)))
    np.testing.assert_array_equal(draws.isel(parameter=0).values, sel.values)


def test_plot_judges_is_a_forest_of_the_judges_table(tiny_fit):
    """The judges figure is arviz_plots' forest plot: its points are the table's medians."""
    import matplotlib.pyplot as plt
    from matplotlib.collections import PathCollection

    fig = plot_judges(tiny_fit)
    try:
        tab = tiny_fit.judges()
        draws = judge_draws(tiny_fit)
        assert list(draws.data_vars) == ["severity", "log discrimination"]
        assert draws["severity"].dims == ("chain", "draw", "scale", "judge")
        forest = next(ax for ax in fig.axes if ax.get_xlabel().startswith("logits"))
        points = np.concatenate(
            [np.asarray(c.get_offsets())[:, 0] for c in forest.collections
             if isinstance(c, PathCollection)]
        )  # fmt: skip
        sev = tab[tab["parameter"] == "severity"]["median"].to_numpy()
        log_disc = np.median(np.log(tiny_fit.posterior["discrimination"].values), axis=(0, 1))
        assert len(points) == len(sev) + len(log_disc) == 3 * 4 + 3
        np.testing.assert_allclose(np.sort(points), np.sort(np.r_[sev, log_disc]))
        disc = tab[tab["parameter"] == "discrimination"]["median"].to_numpy()
        np.testing.assert_allclose(np.exp(np.sort(log_disc)), np.sort(disc), rtol=0.02)
        labels = {t.get_text() for ax in fig.axes for t in ax.texts}
        assert {"severity", "log discrimination", "J1", "J2", "J3", "PC", "WSC"} <= labels
    finally:
        plt.close(fig)


# --------------------------------------------------------------------------- command line


def test_cli_report(tiny_fit, hyps, tmp_path, capsys):
    fitdir = tmp_path / "fit"
    save_fit_directory(tiny_fit, fitdir, hypotheses=hyps)
    assert main(["report", str(fitdir), "--format", "md", "--no-ppc"]) == 0
    out = capsys.readouterr().out
    assert "NOT CONVERGED" in out and "2 hypotheses" in out
    text = (fitdir / "report.md").read_text()
    assert "## Construct validity" in text and "| " + " | ".join(HYPOTHESIS_COLUMNS) in text
    assert (fitdir / "report_figures" / "judges.svg").is_file()
    # never overwritten without --force
    assert main(["report", str(fitdir), "--format", "md"]) == 2
    assert "--force" in capsys.readouterr().err
    tex = tmp_path / "paper" / "tables.tex"
    comparison = tmp_path / "comparison.csv"
    _comparison_table().to_csv(comparison, index=False)
    args = ["report", str(fitdir), "--out", str(tex), "--compare", str(comparison), "--no-dstudy",
            "--no-ppc"]  # fmt: skip
    assert main(args) == 0
    text = tex.read_text()
    assert r"\toprule" in text and r"\label{tab:comparison}" in text
    assert (tmp_path / "paper" / "tables_figures" / "judges.png").is_file()


def test_cli_report_bad_fitdir(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "nope" in err and "Traceback" not in err


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, str]:
    """The demo on a small founding design (CALTARS, the founding covariates and hypotheses):
    its folder and what it printed. Only the slow tests use it."""
    out = tmp_path_factory.mktemp("demo") / "demo"
    args = ["demo", "--out", str(out), "--subjects", "12", "--sessions", "2", "--judges", "2",
            "--draws", "50", "--tune", "50", "--chains", "2"]  # fmt: skip
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(args) == 0
    return out, printed.getvalue()


@pytest.mark.slow
def test_demo_end_to_end(demo):
    out, text = demo
    for n in range(1, 7):
        assert f"[{n}/6]" in text
    assert "hypotheses:" in text and "Treatment-level interrater reliability" in text
    assert f"report: {(out / 'report.html').resolve()}" in text
    files = [
        "trial/ratings.csv",
        "fit/posterior.nc",
        "fit/hypotheses.csv",
        "fit/reliability.png",
        "fit/design.svg",
        "dstudy/dstudy.csv",
        "report.html",
        "report.md",
        "report.tex",
        "report_figures/associations.svg",
        "report_figures/alliance_sessions.png",
    ]
    for f in files:
        assert (out / f).is_file(), f
    hyp = pd.read_csv(out / "fit" / "hypotheses.csv")
    html = (out / "report.html").read_text()
    assert "NOT CONVERGED" in html
    head, rows = _html_table(html, "hypotheses")
    assert head == HYPOTHESIS_COLUMNS and len(rows) == len(hyp)
    assert [r[HYPOTHESIS_COLUMNS.index("verdict")] for r in rows] == list(hyp["verdict"])
    # the hypotheses file (an absolute path under models/) is named, never located
    for name in ("report.html", "report.md", "report.tex"):
        text = (out / name).read_text()
        assert str(models_dir()) not in text and str(out.parent) not in text, name
    assert "Hypotheses (caltars-1989-hypotheses.toml)" in (out / "report.md").read_text()


@pytest.mark.slow
def test_demo_report_tex_compiles_within_the_page(demo, tmp_path):
    """The demo's report.tex, input into a plain article, compiles with pdflatex with no float
    taller than the page and no line more than 10 pt too wide (as wide and long as the real
    demo's tables: 5 scales, 30 items, 9 covariates, 23 hypotheses)."""
    out, _ = demo
    tex = (out / "report.tex").read_text()
    _, arows, _ = _latex_table(tex, "associations")
    _, hrows, _ = _latex_table(tex, "hypotheses")
    _, lrows, _ = _latex_table(tex, "loadings")
    assert (len(arows), len(hrows), len(lrows)) == (45, 23, 30)
    log = compile_in_article(out / "report.tex", tmp_path)
    assert latex_problems(log) == []


def test_fit_displays_verdict_and_scale_tables(tiny_fit):

    text = tiny_fit._repr_html_()
    assert "NOT CONVERGED" in text and "#c62828" in text
    med = describe(tiny_fit.posterior["sd_alliance"])["median"]
    for scale, v in med.items():
        assert f"<th>{scale}</th>" in text and f"{v:.2f} [" in text
    assert "Factor correlations" in text and "build_report" in text
