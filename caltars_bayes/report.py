"""Paper-ready reports of a fit: HTML, markdown and LaTeX, with figures and a methods paragraph.

:func:`build_report` collects the sections of a report from a :class:`~caltars_bayes.fit.Fit`
(each section: a title, text, tables as DataFrames and matplotlib figures);
:class:`Report` renders them:

- :meth:`Report.to_html`: one self-contained file (CSS inline, figures
  embedded as base64 PNG) with a loud red banner at the top when the fit did
  not converge;
- :meth:`Report.to_markdown`: markdown for quick reading, figures written
  beside it (``<stem>_figures/NAME.png`` and ``.svg``) and linked;
- :meth:`Report.to_latex`: booktabs tables (APA number style: no leading
  zero for correlations, reliabilities and probabilities, see
  :func:`apa_number`) and figure environments, for ``\\input`` into a paper.

Sections, in order: summary, data and design, convergence (trace and rank
plots of flagged parameters), priors borrowed from an earlier trial (only for a
fit made with ``--prior-from``), factor structure, reliability, judges,
construct validity (associations, hypotheses), decision study, model
comparison, posterior predictive checks, methods. A section whose source is
absent (no covariates, no comparison given) is replaced by a one-line note.

Every table carries the convergence verdict: the banner heads every format and
every table caption of an unconverged fit says so.
"""

from __future__ import annotations

import base64
import html
import io
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import xarray as xr

from caltars_bayes.errors import CaltarsError
from caltars_bayes.io import atomic_write_dir, atomic_write_file

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from caltars_bayes.fit import Fit
    from caltars_bayes.hypotheses import Hypotheses
    from caltars_bayes.reliability import DStudy

FORMATS = ("html", "md", "latex")
SUFFIX = {"html": ".html", "md": ".md", "latex": ".tex"}
#: Flagged parameters shown in the trace and rank plots.
MAX_FLAGGED = 6
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


@dataclass
class Report:
    """A report of one fit, ready to render.

    Attributes
    ----------
    title, subtitle : headings.
    converged, approximate : the fit's verdict.
    banner : the verdict in one line (:meth:`Diagnostics.banner`).
    problems : what failed, one entry per check.
    sections : the sections in order (omitted ones hold a one-line note).
    summary : the headline lines (reliability per scale, hypotheses).
    methods : the methods paragraph (:func:`methods_paragraph`).
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
        import matplotlib.pyplot as plt

        for f in self.figures:
            plt.close(f.figure)

    # ------------------------------------------------------------------ writing

    def save_figures(self, out_dir: str | Path, force: bool = False) -> list[Path]:
        """Write every figure as PNG and SVG into ``out_dir`` (atomically)."""

        def writer(fig: Figure, fmt: str) -> Callable[[Path], Any]:
            def write(p: Path) -> None:
                fig.savefig(p, format=fmt, dpi=150, bbox_inches="tight")

            return write

        files: dict[str, Callable[[Path], Any]] = {}
        for f in self.figures:
            files[f"{f.name}.png"] = writer(f.figure, "png")
            files[f"{f.name}.svg"] = writer(f.figure, "svg")
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
        """The report as one HTML document (figures as base64 PNG data URIs)."""
        return _render_html(self)

    def markdown(self, figure_folder: str = "report_figures") -> str:
        """The report as markdown, figures linked in ``figure_folder``."""
        return _render_markdown(self, figure_folder)

    def latex(self, figure_folder: str = "report_figures") -> str:
        """The report's tables, figures and methods paragraph as LaTeX."""
        return _render_latex(self, figure_folder)

    def _repr_html_(self) -> str:
        return _html_body(self)

    def __repr__(self) -> str:
        shown = [s.key for s in self.sections if not s.omitted]
        return f"Report({self.title}; {'; '.join(shown)}; {self.banner})"


def figure_dir(path: str | Path) -> Path:
    """The folder where the figures of the report file ``path`` are written."""
    path = Path(path)
    return path.with_name(f"{path.stem}_figures")


# --------------------------------------------------------------------------- figures


def _sel_label(post: xr.Dataset, label: str) -> xr.DataArray | None:
    """The draws of one parameter named like ``zeta[P01|2, PPC]`` (None if it cannot be found)."""
    name, _, rest = label.partition("[")
    if name not in post:
        return None
    da = post[name]
    other = [d for d in da.dims if d not in ("chain", "draw")]
    if rest:
        values = rest.rstrip("]").split(", ")
        if len(values) != len(other):
            return None
        try:
            da = da.sel({d: v for d, v in zip(other, values, strict=True)})
        except (KeyError, ValueError):
            return None
    elif other:
        return None
    return da.reset_coords(drop=True)


def flagged_parameters(fit: Fit, max_params: int = MAX_FLAGGED) -> xr.DataArray | None:
    """Draws of the worst flagged parameters, for trace and rank plots.

    The flagged parameters are the diagnostics' offenders (lowest bulk ESS
    first). An unconverged fit without offenders (divergences, E-BFMI) shows
    its standard-deviation hyperparameters, where such problems usually start.

    Returns
    -------
    DataArray with dims ``chain, draw, parameter`` (parameter labels as in the
    summary table), or None when nothing is flagged.
    """
    post = fit.posterior
    labels = [o["parameter"] for o in fit.diagnostics.offenders]
    if not labels and not fit.diagnostics.converged and not fit.diagnostics.approximate:
        for v in post.data_vars:
            name = str(v)
            if name.startswith("sd_") and not name.endswith(("_z", "_raw")):
                da = post[name]
                other = [d for d in da.dims if d not in ("chain", "draw")]
                if not other:
                    labels.append(name)
                elif len(other) == 1:
                    labels.extend(f"{name}[{c}]" for c in da[other[0]].values)
    picked: list[xr.DataArray] = []
    names: list[str] = []
    for lab in labels:
        sel = _sel_label(post, lab)
        if sel is None:
            continue
        picked.append(sel.transpose("chain", "draw"))
        names.append(lab)
        if len(picked) >= max_params:
            break
    if not picked:
        return None
    return xr.concat(picked, dim="parameter").assign_coords(parameter=names)


def _flagged_tree(draws: xr.DataArray) -> xr.DataTree:
    return xr.DataTree.from_dict({"posterior": xr.Dataset({"draws": draws})})


def plot_flagged_trace(fit: Fit, max_params: int = MAX_FLAGGED) -> Figure | None:
    """Trace plots (draws per chain, and each chain's ECDF) of the flagged parameters.

    Uses :func:`arviz_plots.plot_trace_dist`; None when nothing is flagged.
    """
    import arviz_plots as azp
    from arviz_base.labels import NoVarLabeller

    draws = flagged_parameters(fit, max_params)
    if draws is None:
        return None
    n = draws.sizes["parameter"]
    pc = azp.plot_trace_dist(
        _flagged_tree(draws),
        var_names="draws",
        compact=False,
        backend="matplotlib",
        labeller=NoVarLabeller(),
        figure_kwargs={"figsize": (10, 1.7 * n + 0.8), "layout": "constrained"},
    )
    fig = pc.viz["figure"].item()
    fig.suptitle(f"Trace of flagged parameters ({fit.diagnostics.verdict})", fontsize=10)
    return fig


def plot_flagged_rank(fit: Fit, max_params: int = MAX_FLAGGED) -> Figure | None:
    """Rank plots (fractional-rank delta-ECDF per chain) of the flagged parameters.

    Chains that sample the same distribution give curves inside the band;
    uses :func:`arviz_plots.plot_rank`. None when nothing is flagged.
    """
    import arviz_plots as azp
    from arviz_base.labels import NoVarLabeller

    draws = flagged_parameters(fit, max_params)
    if draws is None:
        return None
    n = draws.sizes["parameter"]
    ncol = min(3, n)
    nrow = math.ceil(n / ncol)
    pc = azp.plot_rank(
        _flagged_tree(draws),
        var_names="draws",
        backend="matplotlib",
        labeller=NoVarLabeller(),
        col_wrap=ncol,
        figure_kwargs={"figsize": (3.6 * ncol, 2.6 * nrow + 0.6), "layout": "constrained"},
    )
    fig = pc.viz["figure"].item()
    fig.suptitle(f"Rank plots of flagged parameters ({fit.diagnostics.verdict})", fontsize=10)
    return fig


def plot_judges(fit: Fit) -> Figure:
    """Judge severity (per scale) and discrimination: posterior medians with 95% HDIs.

    Left: severity by scale, one colour per judge (higher: the judge rates
    lower; severities sum to zero over judges within a scale). Right:
    discrimination per judge (geometric mean 1 over judges; higher: ratings
    track alliance more sharply). Raises :class:`CaltarsError` for a fit
    without judge effects (one judge).
    """
    import matplotlib.pyplot as plt

    tab = fit.judges()
    sev = tab[tab["parameter"] == "severity"]
    disc = tab[tab["parameter"] == "discrimination"]
    if sev.empty and disc.empty:
        raise CaltarsError("this fit has no judge effects (one judge): nothing to plot")
    judges = list(fit.data.judges)
    cmap = plt.get_cmap("tab10")
    colour = {j: cmap(i % 10) for i, j in enumerate(judges)}
    panels = [p for p, t in (("severity", sev), ("discrimination", disc)) if not t.empty]
    scales = list(fit.data.scales)
    height = max(3.0, 0.32 * (len(scales) * len(judges) + len(scales)) + 1.2)
    fig, axes = plt.subplots(
        1, len(panels), figsize=(4.6 * len(panels), height), squeeze=False,
        gridspec_kw={"width_ratios": [2, 1][: len(panels)]},
    )  # fmt: skip
    for ax, panel in zip(axes[0], panels, strict=True):
        if panel == "severity":
            y, ticks, labels = 0.0, [], []
            step = 1.0 / (len(judges) + 1)
            for scale in scales:
                rows = sev[sev["scale"] == scale].set_index("judge")
                for n, j in enumerate(judges):
                    if j not in rows.index:
                        continue
                    r = rows.loc[j]
                    yy = y - n * step
                    ax.plot([r["hdi_low"], r["hdi_high"]], [yy, yy], color=colour[j], lw=1.8)
                    ax.plot(r["median"], yy, "o", color=colour[j], ms=4)
                ticks.append(y - (len(judges) - 1) * step / 2)
                labels.append(scale)
                y -= 1
            ax.set_yticks(ticks, labels)
            ax.axvline(0, color="grey", lw=0.8)
            ax.set_xlabel("severity (logits; higher = rates lower)")
            ax.set_title("Severity by scale")
        else:
            rows = disc.set_index("judge")
            for n, j in enumerate(judges):
                if j not in rows.index:
                    continue
                r = rows.loc[j]
                ax.plot([r["hdi_low"], r["hdi_high"]], [-n, -n], color=colour[j], lw=1.8)
                ax.plot(r["median"], -n, "o", color=colour[j], ms=4)
            ax.set_yticks([-n for n in range(len(judges))], judges)
            ax.axvline(1, color="grey", lw=0.8)
            ax.set_xlabel("discrimination (1 = average judge)")
            ax.set_title("Discrimination")
        ax.grid(axis="x", alpha=0.3)
    handles = [plt.Line2D([], [], color=colour[j], marker="o", lw=1.8, label=j) for j in judges]
    axes[0, 0].legend(handles=handles, fontsize=7, loc="best", title="judge", title_fontsize=7)
    title = "Judges: posterior median and 95% HDI"
    if not fit.diagnostics.converged:
        title += f"\n{fit.diagnostics.verdict}"
    fig.suptitle(title, fontsize=10, color="black" if fit.diagnostics.converged else "#c62828")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- methods


def _prior_text(fit: Fit) -> str:
    pri, plan = fit.instrument.priors, fit.plan
    parts = [f"treatment-level SDs ~ {pri.sd_alliance}"]
    if fit.data.n_scales > 1:
        parts.append(f"scale correlation matrix ~ LKJ({pri.lkj_eta:g})")
    if plan.session_level:
        parts.append(f"session SDs ~ {pri.sd_session}")
    if plan.session_trend:
        parts.append(f"session trends ~ {pri.trend}")
    parts.append(f"log loadings (before centring) ~ {pri.log_loading}")
    parts.append(f"ordered thresholds ~ {pri.cutpoint}")
    if plan.judge_severity:
        parts.append(f"SD of judge severity ~ {pri.sd_severity}")
    if plan.judge_discrimination:
        parts.append(f"SD of log judge discrimination ~ {pri.sd_log_discrimination}")
    if plan.judge_subject_interaction:
        parts.append(f"SD of judge x subject interaction ~ {pri.sd_interaction}")
    if plan.bifactor:
        parts.append(f"general-factor log loadings ~ {pri.log_general_loading}")
    if plan.covariates or plan.session_covariates:
        parts.append(
            f"covariate intercepts ~ {pri.covariate_intercept}, slopes ~ "
            f"{pri.covariate_slope}, residual SDs ~ {pri.covariate_sd}"
        )
    return "; ".join(parts)


def methods_paragraph(
    fit: Fit,
    prob: float = 0.95,
    prior_from: dict[str, Any] | None = None,
    prior_conflict: pd.DataFrame | None = None,
) -> str:
    """A methods paragraph generated from the fit, for a researcher to adapt.

    Says what was modelled (the parts the design identified), the priors (and
    what was borrowed from an earlier trial, for a fit made with
    ``--prior-from``), the sampler and its settings, the draws kept and the
    convergence checks with their outcome, and how results are summarised.

    Parameters
    ----------
    fit : the fit.
    prob : HDI probability named in the text.
    prior_from, prior_conflict : the borrowed-prior record and conflict table
        (:func:`caltars_bayes.borrow.read_prior_from`); without them a fit
        whose ``meta["prior_from"]`` is set still says that priors were
        borrowed, from where and with what weight.

    Returns
    -------
    str, one paragraph of plain text.
    """
    data, plan, meta, d = fit.data, fit.plan, fit.meta, fit.diagnostics
    inst = fit.instrument
    versions = meta.get("versions", {})
    scales = ", ".join(data.scales)
    n_cat = inst.response_max - inst.response_min + 1
    judge_parts = []
    if plan.judge_severity:
        judge_parts.append("a severity for each scale")
    if plan.judge_discrimination:
        judge_parts.append("a discrimination")
    s = [
        f"Ratings were analysed with a Bayesian hierarchical graded-response (cumulative-logit) "
        f"measurement model (caltars_bayes {meta.get('caltars_bayes_version', '')}, PyMC "
        f"{versions.get('pymc', '')}). The model explained each of the {data.n_ratings:,} "
        f"ratings that {data.n_judges} judge{'s' if data.n_judges != 1 else ''} gave on the "
        f"{data.n_items} items ({n_cat} response categories) of the {inst.name} "
        f"({data.n_scales} scale{'s' if data.n_scales != 1 else ''}: {scales}) in "
        f"{data.n_sessions} sessions of {data.n_subjects} subjects."
    ]
    levels = "Each subject had a latent treatment-level alliance on each scale"
    if data.n_scales > 1:
        levels += " (correlated across scales)"
    if plan.session_level:
        levels += ", each session a deviation from it"
        if plan.session_trend:
            levels += " around a linear trend over sessions"
    levels += "; each item a loading and ordered thresholds"
    if judge_parts:
        levels += f"; each judge {' and '.join(judge_parts)}"
    if plan.judge_subject_interaction:
        levels += ", plus a judge x subject interaction"
    s.append(levels + ".")
    if plan.bifactor:
        s.append("A general factor over all items was added beside orthogonal scale factors.")
    if plan.covariates or plan.session_covariates:
        covs = ", ".join(plan.covariates + plan.session_covariates)
        s.append(
            f"Covariates ({covs}) were modelled jointly with the latent alliance, so their "
            "correlations with it are corrected for measurement error; missing covariate "
            "values were imputed within the model."
        )
    for note in plan.notes:
        s.append(f"{note[0].upper()}{note[1:]}.")
    s.append(f"Priors: {_prior_text(fit)}.")
    borrowed = _borrowed_text(fit, prior_from, prior_conflict)
    if borrowed:
        s.append(borrowed)
    if d.approximate:
        s.append(
            f"The posterior was APPROXIMATED with {meta.get('method', d.approx_method)} "
            f"({d.n_draws} draws); this is not MCMC and convergence diagnostics do not apply, "
            "so intervals are indicative only."
        )
    else:
        total = d.n_chains * d.n_draws
        sampler = str(meta.get("sampler"))
        if sampler in versions:
            sampler += f" {versions[sampler]}"
        s.append(
            f"The posterior was sampled with the No-U-Turn sampler ({sampler}) in "
            f"{d.n_chains} chains of {meta.get('tune')} tuning and {d.n_draws} kept "
            f"iterations (target acceptance {meta.get('target_accept')}; {total:,} draws in total; "
            f"seed {meta.get('random_seed')}{_sampler_settings_text(meta)})."
        )
        checks = (
            f"Convergence was checked on every reported parameter: rank-normalised split R-hat "
            f"<= {d.thresholds.get('rhat_max', 1.01)}, bulk and tail effective sample size >= "
            f"{d.thresholds.get('ess_min', 400):.0f}, no divergent transitions, E-BFMI >= "
            f"{d.thresholds.get('ebfmi_min', 0.3)} in every chain and no draw at the maximum "
            "tree depth. "
        )
        if d.converged:
            checks += (
                f"All criteria were met (maximum R-hat {d.max_rhat:.3f}, minimum bulk ESS "
                f"{d.min_ess_bulk:.0f}, minimum tail ESS {d.min_ess_tail:.0f}, "
                f"{d.divergences} divergent transitions)."
            )
        else:
            checks += (
                f"The criteria were NOT met ({'; '.join(d.problems)}): results are provisional."
            )
        s.append(checks)
    s.append(
        f"Parameters are summarised by posterior medians and {prob:.0%} highest-density "
        "intervals (HDIs); reliabilities are posterior distributions of variance-component "
        "ratios, reported beside the classical intraclass correlations (Shrout & Fleiss) of "
        "the observed scale scores."
    )
    return " ".join(s)


def _sampler_settings_text(meta: dict[str, Any]) -> str:
    """The trajectory caps and starting values a NUTS fit ran with, for the methods text."""
    from caltars_bayes.fit import trajectory_cap, tree_depth_cap

    parts = []
    t = trajectory_cap(meta)
    if t is not None:
        parts.append(f"trajectories capped at an integration time of {t}")
    depth = tree_depth_cap(meta)
    if depth is not None:
        parts.append(
            f"at most {2**depth - 1} leapfrog steps per iteration (maximum tree depth {depth})"
        )
    if meta.get("start") == "data":
        parts.append("chains started from data-based values")
    return "".join(f"; {p}" for p in parts)


def _conflict_threshold(doc: dict[str, Any] | None, conflict: pd.DataFrame | None) -> float:
    """The |z| bound of the conflict check (from the table, else from the number of elements)."""
    from scipy.special import ndtri

    from caltars_bayes.borrow import CONFLICT_ALPHA

    if conflict is not None and len(conflict):
        return float(conflict["threshold"].iloc[0])
    n = max(len((doc or {}).get("priors", [])), 1)
    return float(ndtri(1.0 - CONFLICT_ALPHA / (2 * n)))


def _borrowed_source(fit: Fit, doc: dict[str, Any] | None) -> tuple[str, float | None]:
    """Path of the earlier fit and the power-prior weight, as recorded."""
    meta = fit.meta.get("prior_from") or {}
    src = (doc or {}).get("source", {})
    path = src.get("path") or meta.get("fit") or "an earlier fit (path not recorded)"
    weight = (doc or {}).get("weight", meta.get("weight"))
    return str(path), None if weight is None else float(weight)


def _borrowed_text(
    fit: Fit, doc: dict[str, Any] | None, conflict: pd.DataFrame | None
) -> str | None:
    """The methods paragraph's sentences on borrowed priors (None when nothing was borrowed)."""
    if doc is None and conflict is None and not fit.meta.get("prior_from"):
        return None
    path, weight = _borrowed_source(fit, doc)
    w = "unrecorded" if weight is None else f"{weight:g}"
    if doc is None:
        return (
            f"Informative priors were borrowed from an earlier fit ({path}) with power-prior "
            f"weight {w} (moment-matched Normal priors; the derivation is in prior_from.json)."
        )
    if not doc["priors"]:
        return (
            f"Priors from an earlier fit ({path}) were requested with weight {w}: nothing was "
            "borrowed."
        )
    src = doc.get("source", {})
    design = ", ".join(
        f"{src[k]:,} {label}"
        for k, label in (("n_subjects", "subjects"), ("n_ratings", "ratings"))
        if isinstance(src.get(k), int)
    )
    what = "; ".join(doc.get("quantities", {}).values()) or "see prior_from.json"
    text = (
        f"Informative priors were borrowed from an earlier fit of the "
        f"{src.get('instrument', fit.instrument.name)} ({design + '; ' if design else ''}{path}): "
        f"each element of the borrowed quantities ({what}) received a "
        f"{doc.get('family', 'Normal')} prior on its unconstrained scale with the earlier "
        "posterior's mean and SD (moment matching; correlations between elements were not "
        f"kept), discounted by the power-prior weight {w} (SD divided by the square root of "
        "the weight) and added to the priors above; subjects, judges, covariate associations "
        "and each scale's overall cutpoint location were not borrowed."
    )
    if src.get("converged") is False:
        text += " The earlier fit had NOT converged."
    if conflict is not None and len(conflict):
        n_flag = int(conflict["conflict"].astype(bool).sum())
        text += (
            f" Prior-data conflict was checked per borrowed element (new posterior mean against "
            f"the borrowed prior, flagged beyond |z| = {_conflict_threshold(doc, conflict):.2f}, "
            f"Bonferroni over {len(conflict)} elements): {n_flag} flagged."
        )
    return text


# --------------------------------------------------------------------------- sections


def _omitted(key: str, title: str, note: str) -> Section:
    return Section(key, title, [note], omitted=True)


def _design_section(fit: Fit) -> Section:
    data, rep = fit.data, fit.data.report
    inst = fit.instrument
    sps, jps = rep.sessions_per_subject, rep.judges_per_session
    read = max(int(rep.ratings_read), 1)

    def spread(d: dict[str, float]) -> str:
        return f"{d['min']:g} / {d['median']:g} / {d['max']:g}" if d else ""

    rows = [
        ("instrument", f"{inst.name} ({inst.rater})"),
        ("scales", f"{data.n_scales}: {', '.join(data.scales)}"),
        ("items", f"{data.n_items} ({rep.n_items_observed} rated)"),
        ("response range", f"{inst.response_min}-{inst.response_max}"),
        ("subjects", str(data.n_subjects)),
        ("sessions", str(data.n_sessions)),
        ("sessions per subject (min / median / max)", spread(sps)),
        ("judges", str(data.n_judges)),
        ("judges per session (min / median / max)", spread(jps)),
        ("ratings read", str(rep.ratings_read)),
        ("ratings used", str(rep.used)),
        ("ratings missing", f"{rep.missing} ({100 * rep.missing / read:.1f}%)"),
        ("ratings rejected", f"{rep.rejected} ({100 * rep.rejected / read:.1f}%)"),
    ]
    design = pd.DataFrame(rows, columns=["quantity", "value"])
    tables = [
        ReportTable("design", "Design and accounting of the ratings.", design, posterior=False)
    ]
    if rep.ratings_per_judge:
        per_judge = pd.DataFrame(
            {
                "judge": list(rep.ratings_per_judge),
                "ratings": list(rep.ratings_per_judge.values()),
                "sessions_rated": [rep.sessions_per_judge.get(j, 0) for j in rep.ratings_per_judge],
            }
        )
        tables.append(
            ReportTable(
                "ratings_per_judge", "Ratings and sessions per judge.", per_judge, posterior=False
            )
        )
    miss = []
    for level, cov in (("subject", rep.covariates), ("session", rep.session_covariates)):
        if cov is None:
            continue
        n = int(cov.get("rows", 0) or 0)
        total = data.n_subjects if level == "subject" else data.n_sessions
        for col, m in cov.get("missing", {}).items():
            miss.append(
                {"level": level, "covariate": col, "missing": int(m), "of": total or n,
                 "percent": 100.0 * int(m) / max(total or n, 1)}
            )  # fmt: skip
    if miss:
        tables.append(
            ReportTable(
                "covariate_missingness",
                "Missing covariate values (imputed within the model).",
                pd.DataFrame(miss),
                digits=1,
                posterior=False,
            )
        )
    text = [
        f"{rep.ratings_read} ratings read: {rep.used} used, {rep.missing} missing, "
        f"{rep.rejected} rejected (layout: {rep.layout})."
    ]
    if rep.rejected_reasons:
        text.append(
            "Rejected: " + ", ".join(f"{k} ({v})" for k, v in rep.rejected_reasons.items()) + "."
        )
    text.extend(f"Note: {n}" for n in rep.design_notes)
    return Section("data", "Data and design", text, tables)


def _convergence_section(fit: Fit, max_flagged: int) -> Section:
    d = fit.diagnostics
    text = [d.banner()]
    if d.approximate:
        text.append(
            "This is an approximate fit (not MCMC): R-hat, ESS and divergences do not apply "
            "and the intervals below are indicative only."
        )
        return Section("convergence", "Convergence diagnostics", text)
    th = d.thresholds
    min_ebfmi = min(d.ebfmi) if d.ebfmi else float("nan")
    checks = pd.DataFrame(
        [
            ("max R-hat", d.max_rhat, f"<= {th.get('rhat_max', 1.01)}",
             d.max_rhat <= th.get("rhat_max", 1.01)),
            ("min bulk ESS", d.min_ess_bulk, f">= {th.get('ess_min', 400):.0f}",
             d.min_ess_bulk >= th.get("ess_min", 400)),
            ("min tail ESS", d.min_ess_tail, f">= {th.get('ess_min', 400):.0f}",
             d.min_ess_tail >= th.get("ess_min", 400)),
            ("divergent transitions", float(d.divergences), "0", d.divergences == 0),
            ("draws at max tree depth", float(d.treedepth_hits), "0", d.treedepth_hits == 0),
            ("min E-BFMI over chains", min_ebfmi, f">= {th.get('ebfmi_min', 0.3)}",
             not d.ebfmi or min_ebfmi >= th.get("ebfmi_min", 0.3)),
        ],
        columns=["check", "value", "threshold", "passed"],
    )  # fmt: skip
    checks["value"] = [
        f"{v:.3f}" if c in ("max R-hat", "min E-BFMI over chains") else f"{v:.0f}"
        for c, v in zip(checks["check"], checks["value"], strict=True)
    ]
    tables = [
        ReportTable(
            "convergence",
            f"Convergence checks ({d.n_chains} chains x {d.n_draws} draws).",
            checks,
            posterior=False,
        )
    ]
    if d.offenders:
        off = pd.DataFrame(d.offenders[:15]).rename(columns={"rhat": "r_hat"})
        more = len(d.offenders) - len(off)
        tables.append(
            ReportTable(
                "flagged_parameters",
                "Parameters below the thresholds (lowest bulk ESS first).",
                off,
                column_digits={"r_hat": 3, "ess_bulk": 0, "ess_tail": 0},
                note=f"... and {more} more (see diagnostics.json)." if more > 0 else "",
                posterior=False,
            )
        )
    figures = []
    if not d.converged:
        trace = plot_flagged_trace(fit, max_flagged)
        rank = plot_flagged_rank(fit, max_flagged)
        if trace is not None:
            figures.append(
                ReportFigure("trace_flagged", "Traces of the worst flagged parameters.", trace)
            )
        if rank is not None:
            figures.append(
                ReportFigure(
                    "rank_flagged",
                    "Rank plots of the worst flagged parameters: chains that agree stay "
                    "inside the band.",
                    rank,
                )
            )
    return Section("convergence", "Convergence diagnostics", text, tables, figures)


#: Columns of the report's borrowed-prior and prior-data conflict tables.
BORROWED_COLUMNS = [
    "quantity", "element", "variable", "family", "location", "scale", "source_mean",
    "source_sd", "weight",
]  # fmt: skip
PRIOR_CONFLICT_COLUMNS = [
    "quantity", "element", "prior_mean", "prior_sd", "post_mean", "post_sd", "z", "flag",
]  # fmt: skip
#: The ``flag`` of a borrowed element in prior-data conflict.
CONFLICT_FLAG = "CONFLICT"


def _borrowed_section(
    fit: Fit, doc: dict[str, Any] | None, conflict: pd.DataFrame | None
) -> Section | None:
    """Priors borrowed from an earlier trial and their prior-data conflict (None: not borrowed).

    Tables: ``prior_source`` (the earlier fit as recorded), ``borrowed_priors``
    (one row per borrowed element: ``quantity, element, variable`` (the
    posterior variable it comes from), ``family, location, scale`` (the prior
    the new model used: location is the earlier posterior mean, scale its SD
    divided by the square root of the weight), ``source_mean, source_sd`` (the
    earlier posterior's moments), ``weight``, ``converged`` (the earlier fit's
    verdict)) and ``prior_conflict`` (``quantity, element, prior_mean,
    prior_sd, post_mean, post_sd, z, flag`` (``CONFLICT`` when flagged; flagged
    rows first, by |z|), ``converged`` (this fit's verdict)).
    """
    from caltars_bayes.borrow import PRIOR_CONFLICT_FILE, PRIOR_FROM_FILE, conflict_summary

    if doc is None and conflict is None and not fit.meta.get("prior_from"):
        return None
    key, title = "borrowed", "Priors borrowed from an earlier trial"
    path, weight = _borrowed_source(fit, doc)
    w = "unrecorded" if weight is None else f"{weight:g}"
    text: list[str] = []
    tables: list[ReportTable] = []
    if doc is None:
        text.append(
            f"This fit used informative priors borrowed from {path} (power-prior weight {w}), "
            f"but their derivation ({PRIOR_FROM_FILE}) was not given to the report, so what was "
            "borrowed cannot be shown here: build the report from the fit directory."
        )
    else:
        src = doc.get("source", {})
        source_ok = src.get("converged")
        text.append(
            f"This fit used informative priors derived from the posterior of an earlier fit "
            f"({path}): {doc.get('method', 'moment-matched priors')}. Power-prior weight {w}: "
            "each borrowed Normal(m, s) was raised to the power of the weight, i.e. used as "
            "Normal(m, s / sqrt(weight)); 1 borrows the earlier posterior in full, smaller "
            "weights discount it."
        )
        quantities = doc.get("quantities", {})
        if quantities:
            text.append(
                "Borrowed quantities: "
                + "; ".join(f"{k} ({v})" for k, v in quantities.items())
                + "."
            )
        text.extend(f"Note: {n}" for n in doc.get("notes", []))
        rows = [("path", path)]
        for k in ("instrument", "n_subjects", "n_sessions", "n_judges", "n_ratings",
                  "data_hash", "spec_hash", "created", "verdict"):  # fmt: skip
            if src.get(k) is not None:
                rows.append((k, str(src[k])))
        rows.append(("weight", w))
        tables.append(
            ReportTable(
                "prior_source",
                "The earlier fit the priors were borrowed from, as recorded.",
                pd.DataFrame(rows, columns=["field", "value"]),
                posterior=False,
            )
        )
        pri = pd.DataFrame(doc["priors"])
        if len(pri):
            table = pd.DataFrame(
                {
                    "quantity": pri["quantity"],
                    "element": pri["element"].fillna(""),
                    "variable": pri["source"],
                    "family": doc.get("family", "Normal"),
                    "location": pri["mean"].astype(float),
                    "scale": pri["prior_sd"].astype(float),
                    "source_mean": pri["mean"].astype(float),
                    "source_sd": pri["sd"].astype(float),
                    "weight": pri["weight"].astype(float),
                    "converged": bool(source_ok),
                }
            )
            tables.append(
                ReportTable(
                    "borrowed_priors",
                    "Moment-matched priors borrowed from the earlier fit, one row per element: "
                    "location and scale of the prior the new model used (on the quantity's "
                    "scale), from the earlier posterior's mean and SD.",
                    table,
                    digits=3,
                    column_digits={"weight": 2},
                    note=(
                        ""
                        if source_ok
                        else "The earlier fit's verdict was not recorded."
                        if source_ok is None
                        else f"The earlier fit did NOT converge ({src.get('verdict', '')}): the "
                        "borrowed priors inherit its problems."
                    ),
                    posterior=False,
                )
            )
    if conflict is None:
        if doc is not None and doc["priors"]:
            text.append(
                f"The prior-data conflict table ({PRIOR_CONFLICT_FILE}) was not given to the "
                "report: conflict is not shown."
            )
    elif len(conflict):
        thr = _conflict_threshold(doc, conflict)
        text.append(
            "Prior-data conflict is judged element by element: z is the distance of this fit's "
            "posterior mean from the borrowed prior mean, in units of how far the new data "
            "could be expected to move it if both trials shared the parameter (the square root "
            "of the prior variance minus the new posterior variance, at least a tenth of the "
            f"prior variance). An element is flagged ({CONFLICT_FLAG}) when |z| exceeds "
            f"{thr:.2f}, the bound that keeps the chance of any false flag among the "
            f"{len(conflict)} borrowed elements at 5% (Bonferroni)."
        )
        text.append(f"Result: {conflict_summary(conflict)}.")
        if not fit.diagnostics.converged:
            text.append(
                "This fit did NOT converge: its posterior means and SDs, hence z and the flags, "
                "are provisional."
            )
        flagged = conflict["conflict"].astype(bool)
        worst_first = conflict.loc[flagged, "z"].abs().sort_values(ascending=False, kind="stable")
        order = [*worst_first.index, *conflict.index[~flagged]]  # flagged first, then as borrowed
        frame = conflict.loc[order, PRIOR_CONFLICT_COLUMNS[:-1]].copy()
        frame["element"] = frame["element"].fillna("")
        frame["flag"] = np.where(flagged.loc[order], CONFLICT_FLAG, "")
        frame["converged"] = fit.diagnostics.converged
        tables.append(
            ReportTable(
                "prior_conflict",
                f"Prior-data conflict per borrowed element: z of this fit's posterior mean "
                f"against the borrowed prior; {CONFLICT_FLAG} when |z| > {thr:.2f} "
                f"({int(flagged.sum())} flagged, listed first).",
                frame.reset_index(drop=True),
                digits=3,
                column_digits={"z": 2},
            )
        )
    else:
        why = " (weight 0)" if weight == 0 else ""
        text.append(f"Nothing was borrowed{why}: no prior-data conflict check.")
    return Section(key, title, text, tables)


#: Columns of the report's loadings and factor-correlation tables.
LOADING_COLUMNS = ["item", "scale", "median", "hdi_low", "hdi_high", "classical_loading"]
CORRELATION_COLUMNS = ["scale", "scale2", "median", "hdi_low", "hdi_high", "classical_r"]


def _structure_section(fit: Fit) -> Section:
    from caltars_bayes.structure import (
        factor_correlations,
        plot_factor_correlations,
        standardised_loadings,
    )

    load = standardised_loadings(fit)
    cols = list(LOADING_COLUMNS)
    if "factor" in load.columns and (load["factor"] != load["scale"]).any():
        cols.insert(2, "factor")  # a bifactor model: items load on two factors
    bounded = ("median", "hdi_low", "hdi_high", "classical_loading", "classical_r")
    text = [
        "Standardised loadings: the correlation of an item's latent response with its "
        "factor at session level (posterior median and 95% HDI), beside the item's loading "
        "on the matching varimax component of a classical PCA of item means per session "
        "('classical_loading', the founding study's analysis)."
    ]
    tables = [
        ReportTable(
            "loadings",
            "Standardised item loadings.",
            load[[*cols, "converged"]],
            bounded=bounded,
        )
    ]
    figures = []
    corr = factor_correlations(fit)
    if len(corr):
        text.append(
            "Factor correlations: latent correlations of the treatment-level alliance "
            "factors, beside the Pearson correlation of observed session scale scores "
            "('classical_r', attenuated by measurement error)."
        )
        tables.append(
            ReportTable(
                "factor_correlations",
                "Latent correlations between the scales.",
                corr[[*CORRELATION_COLUMNS, "converged"]],
                bounded=bounded,
            )
        )
        figures.append(
            ReportFigure(
                "factor_correlations",
                "Factor correlations: posterior median [95% HDI] below the diagonal, observed "
                "scale-score correlations above.",
                plot_factor_correlations(fit),
            )
        )
    else:
        text.append(
            "No factor correlations: "
            + ("one scale." if fit.data.n_scales < 2 else "orthogonal factors (bifactor model).")
        )
    return Section("structure", "Factor structure", text, tables, figures)


#: Columns of the report's reliability table.
RELIABILITY_COLUMNS = [
    "scale", "level", "judges", "sessions", "route", "median", "hdi_low", "hdi_high", "classical",
]  # fmt: skip


def _reliability_section(fit: Fit, table: pd.DataFrame | None) -> tuple[Section, pd.DataFrame]:
    from caltars_bayes.reliability import reliability

    rel = table if table is not None else reliability(fit)
    inter = rel[(rel["coefficient"] == "agreement") & (rel["generalizes_over"] == "judges")]
    routes = set(inter["route"])
    route = "observed" if "observed" in routes else "latent"
    inter = inter[inter["route"] == route]
    gen = rel[
        (rel["coefficient"] == "agreement")
        & (rel["generalizes_over"] != "judges")
        & (rel["route"] == "latent")
    ]
    gen_cols = ["scale", "judges", "sessions", "median", "hdi_low", "hdi_high"]
    methods = []
    if "classical_method" in inter.columns:
        methods = sorted({str(m) for m in inter["classical_method"].dropna() if str(m).strip()})
    text = [
        "Interrater reliability (absolute agreement) of the observed scale scores: the "
        "posterior (median, 95% HDI) of the coefficient for one judge and for the mean of "
        "the panel, at session level and at treatment level (the subject's scale score "
        "averaged over its rated sessions), beside the classical ICC(2,.) of the same "
        "scores ('classical'; Spearman-Brown for the panel mean"
        + (f"; computed by {', '.join(methods)}" if methods else "")
        + ").",
        "The full table (latent and observed routes, consistency coefficients, one-way "
        "ICCs) is reliability.csv in the fit directory.",
    ]
    bounded = ("median", "hdi_low", "hdi_high", "classical")
    tables = [
        ReportTable(
            "reliability",
            f"Interrater reliability, absolute agreement ({route} route).",
            inter[[*RELIABILITY_COLUMNS, "converged"]].reset_index(drop=True),
            bounded=bounded,
            column_digits={"sessions": 1},
        )
    ]
    if len(gen):
        tables.append(
            ReportTable(
                "generalizability",
                "Generalizability of treatment-level scores for the subject's alliance over "
                "the treatment (judges and sessions random; latent route).",
                gen[[*gen_cols, "converged"]].reset_index(drop=True),
                bounded=bounded,
                column_digits={"sessions": 1},
            )
        )
    return Section("reliability", "Reliability", text, tables), rel


def _judges_section(fit: Fit) -> Section:
    from caltars_bayes.reliability import judge_reliability

    post = fit.posterior
    if "severity" not in post and "discrimination" not in post:
        return _omitted(
            "judges", "Judges", "Judges: omitted (one judge: no judge effects in the model)."
        )
    params = fit.judges()
    params = params[["judge", "parameter", "scale", "median", "hdi_low", "hdi_high", "n_ratings",
                     "converged"]]  # fmt: skip
    rel = judge_reliability(fit)
    rel = rel[["judge", "scale", "median", "hdi_low", "hdi_high", "prob_below_panel", "flag",
               "converged"]]  # fmt: skip
    flagged = rel[rel["flag"]]
    text = [
        "Severity: how much lower a judge rates than the panel (logits, sums to zero over "
        "judges per scale). Discrimination: how sharply a judge's ratings track alliance "
        "(geometric mean 1). Judge reliability: correlation of the judge's scale score with "
        "the session's true alliance; a judge is flagged when its 95% HDI lies below the "
        "other judges' mean.",
        (
            "Flagged judges: "
            + ", ".join(f"{r.judge} ({r.scale})" for r in flagged.itertuples())
            + "."
            if len(flagged)
            else "No judge is flagged."
        ),
    ]
    tables = [
        ReportTable("judge_parameters", "Judge severity and discrimination.", params),
        ReportTable(
            "judge_reliability",
            "Judge reliability: correlation of each judge's scale score with true alliance.",
            rel,
            bounded=("median", "hdi_low", "hdi_high", "prob_below_panel"),
        ),
    ]
    figures = [
        ReportFigure(
            "judges", "Judge severity and discrimination (median, 95% HDI).", plot_judges(fit)
        )
    ]
    return Section("judges", "Judges", text, tables, figures)


#: Columns of the report's associations and hypotheses tables.
ASSOCIATION_COLUMNS = [
    "scale", "covariate", "level", "median", "hdi_low", "hdi_high", "p_positive", "p_negative",
    "p_rope", "classical_r", "classical_p",
]  # fmt: skip
HYPOTHESIS_COLUMNS = [
    "scale", "covariate", "level", "direction", "median", "hdi_low", "hdi_high", "p_expected",
    "verdict", "classical_r", "classical_p",
]  # fmt: skip


def _validity_section(
    fit: Fit, hypotheses: Hypotheses | None
) -> tuple[Section, pd.DataFrame | None]:
    if not (fit.plan.covariates or fit.plan.session_covariates):
        return (
            _omitted(
                "validity",
                "Construct validity",
                "Construct validity: omitted (the fit has no covariates; fit with "
                "--covariates / --session-covariates to estimate associations).",
            ),
            None,
        )
    from caltars_bayes.associations import associations, plot_associations

    assoc = associations(fit)
    bounded = ("median", "hdi_low", "hdi_high", "classical_r")
    text = [
        "Latent correlations of each scale with each covariate (modelled jointly, so corrected "
        f"for the ratings' measurement error), with P(r > 0), P(r < 0) and P(|r| < "
        f"{assoc.attrs.get('rope', 0.1):g}), beside the classical Pearson r of observed scale "
        "means."
    ]
    tables = [
        ReportTable(
            "associations",
            "Associations of the alliance scales with covariates.",
            assoc[[*ASSOCIATION_COLUMNS, "converged"]],
            bounded=bounded,
            p_columns=("classical_p",),
        )
    ]
    hyp_table = None
    if hypotheses is not None:
        from caltars_bayes.hypotheses import summarise_verdicts, test_hypotheses

        hyp_table = test_hypotheses(fit, hypotheses)
        text.append(
            f"Hypotheses ({hypotheses.source}): {summarise_verdicts(hyp_table)}. A directional "
            f"hypothesis is supported when P(expected sign) >= {hypotheses.support:g} and "
            f"contradicted when P(opposite sign) >= {hypotheses.contradict:g}; a null "
            f"hypothesis is supported when P(|r| < {hypotheses.rope:g}) >= {hypotheses.support:g}."
        )
        tables.append(
            ReportTable(
                "hypotheses",
                "Validity hypotheses and their posterior verdicts.",
                hyp_table[[*HYPOTHESIS_COLUMNS, "converged"]],
                bounded=bounded,
                p_columns=("classical_p",),
            )
        )
    else:
        text.append("No hypotheses were given (fit with --hypotheses F to test some).")
    figures = [
        ReportFigure(
            "associations",
            "Latent correlations (median, 95% HDI); crosses: classical r of observed means"
            + ("; right-hand marks: hypothesised direction coloured by verdict." if hypotheses
               else "."),
            plot_associations(fit, hypotheses),
        )
    ]  # fmt: skip
    return Section("validity", "Construct validity", text, tables, figures), hyp_table


def _dstudy_section(study: DStudy) -> Section:
    small = study.smallest.copy()
    reached = small[small["reached"]]
    text = [
        f"Projected {study.coefficient} reliability at {study.level} level ({study.route} "
        f"route) for other numbers of judges and sessions; the smallest design is the one "
        f"with the fewest ratings per subject reaching {apa_number(study.target)} with "
        f"posterior probability >= {apa_number(study.prob)}.",
    ]
    if len(reached) < len(small):
        missing = ", ".join(small.loc[~small["reached"], "scale"])
        text.append(f"No design in the grid reaches the target for: {missing}.")
    text.extend(f"Note: {n}" for n in study.notes)
    return Section(
        "dstudy",
        "Decision study",
        text,
        [
            ReportTable(
                "dstudy",
                f"Smallest design reaching {study.coefficient} {apa_number(study.target)} "
                f"with P >= {apa_number(study.prob)}.",
                small,
                bounded=("median", "p_reach"),
            )
        ],
        [ReportFigure("dstudy", "Decision-study curves with bands.", study.plot())],
    )


def _comparison_section(comparison: pd.DataFrame) -> Section:
    from caltars_bayes.compare import plot_compare

    method = str(comparison["method"].iloc[0]) if "method" in comparison else "PSIS-LOO"
    by = str(comparison["by"].iloc[0]) if "by" in comparison else ""
    how = f"{method}, leave one {by} out" if by else method
    text = [
        f"Models compared by expected log predictive density ({how}); elpd_diff is the "
        "difference from the best model, dse its standard error, weight the stacking weight."
    ]
    text.extend(str(w) for w in comparison.attrs.get("warnings", []))
    bounded = tuple(c for c in ("weight",) if c in comparison.columns)
    fig = plot_compare(comparison)
    return Section(
        "comparison",
        "Model comparison",
        text,
        [
            ReportTable(
                "comparison",
                f"Model comparison ({how}).",
                comparison,
                bounded=bounded,
                column_digits={"pareto_k_max": 2},
                posterior=True,
            )
        ],
        [ReportFigure("comparison", "Model comparison: elpd with standard errors.", fig)],
    )


#: Columns of the report's posterior predictive check tables.
PPC_VERDICT_COLUMNS = ["check", "n_statistics", "n_flagged", "most_extreme", "p_value", "verdict"]
PPC_FLAGGED_COLUMNS = ["check", "group", "statistic", "observed", "rep_low", "rep_high", "p_value"]
#: Flagged statistics listed in the report (all are in the PPC table).
MAX_PPC_FLAGGED = 20


def _ppc_section(fit: Fit) -> Section:
    from caltars_bayes.ppc import ppc

    res = ppc(fit)
    text = [
        f"The design was rated again from {res.n_draws} posterior draws; each statistic of "
        "the observed ratings is compared with its replicated distribution (posterior "
        "predictive p-value; flagged outside .05-.95).",
        f"Result: {res.summary}.",
    ]
    tables = [
        ReportTable(
            "ppc",
            "Posterior predictive checks: one row per check.",
            res.verdict[[*PPC_VERDICT_COLUMNS, "converged"]],
            p_columns=("p_value",),
        )
    ]
    flagged = res.table[res.table["flag"]]
    if len(flagged):
        shown = flagged.assign(_two=np.minimum(flagged["p_value"], 1 - flagged["p_value"]))
        shown = shown.sort_values("_two", kind="stable").head(MAX_PPC_FLAGGED)
        more = len(flagged) - len(shown)
        tables.append(
            ReportTable(
                "ppc_flagged",
                "Flagged statistics: observed value outside the bulk of its replications.",
                shown[[*PPC_FLAGGED_COLUMNS, "converged"]],
                digits=3,
                p_columns=("p_value",),
                note=f"... and {more} more (PPC table)." if more > 0 else "",
            )
        )
    return Section(
        "ppc",
        "Posterior predictive checks",
        text,
        tables,
        [ReportFigure("ppc", "Observed statistics against their replicated 95% intervals.",
                      res.plot())],
    )  # fmt: skip


def _headline(
    fit: Fit, rel: pd.DataFrame | None, hyp: pd.DataFrame | None, study: DStudy | None
) -> list[str]:
    lines = [fit.diagnostics.banner()]
    if rel is not None:
        sub = rel[
            (rel["coefficient"] == "agreement")
            & (rel["generalizes_over"] == "judges")
            & (rel["level"] == "treatment")
        ]
        route = "observed" if "observed" in set(sub["route"]) else "latent"
        sub = sub[(sub["route"] == route) & (sub["judges"] == sub["judges"].max())]
        if len(sub):
            k = int(sub["judges"].iloc[0])
            parts = [
                f"{r.scale} {apa_number(r.median)} [{apa_number(r.hdi_low)}, "
                f"{apa_number(r.hdi_high)}] (classical {apa_number(r.classical)})"
                for r in sub.itertuples()
            ]
            lines.append(
                f"Treatment-level interrater reliability, mean of {k} judges: " + "; ".join(parts)
            )
    if hyp is not None:
        from caltars_bayes.hypotheses import summarise_verdicts

        lines.append(summarise_verdicts(hyp))
        for verdict in ("supported", "contradicted"):
            rows = hyp[hyp["verdict"] == verdict]
            if len(rows):
                which = [f"{r.scale}-{r.covariate} ({r.direction})" for r in rows.itertuples()]
                lines.append(f"{verdict.capitalize()}: " + "; ".join(which))
    if study is not None:
        s = study.smallest
        parts = [
            f"{r.scale} {int(r.judges)} judge(s) x {int(r.sessions)} session(s)"
            if r.reached
            else f"{r.scale} not reached"
            for r in s.itertuples()
        ]
        lines.append(
            f"D-study, smallest design for {study.coefficient} {apa_number(study.target)} "
            f"(P >= {apa_number(study.prob)}): " + "; ".join(parts)
        )
    return lines


def _borrowed_headline(fit: Fit, doc: dict[str, Any] | None, conflict: pd.DataFrame | None) -> str:
    from caltars_bayes.borrow import conflict_summary

    path, weight = _borrowed_source(fit, doc)
    w = "unrecorded" if weight is None else f"{weight:g}"
    head = f"Priors borrowed from {path} (weight {w})"
    if doc is None:
        return f"{head}: their derivation (prior_from.json) is missing"
    if conflict is None:
        return f"{head}: prior-data conflict not shown (prior_conflict.csv missing)"
    return f"{head}: {conflict_summary(conflict)}"


def build_report(
    fit: Fit,
    *,
    hypotheses: Hypotheses | None = None,
    dstudy: DStudy | bool | None = None,
    comparison: pd.DataFrame | None = None,
    ppc: bool = True,
    reliability_table: pd.DataFrame | None = None,
    max_flagged: int = MAX_FLAGGED,
    title: str | None = None,
    progress: Callable[[str], None] | None = None,
    prior_from: dict[str, Any] | None = None,
    prior_conflict: pd.DataFrame | None = None,
) -> Report:
    """Collect the report of a fit.

    Parameters
    ----------
    fit : the fit.
    hypotheses : validity hypotheses to test (default: those attached to the fit).
    dstudy : a :class:`~caltars_bayes.reliability.DStudy`; ``None`` computes the
        default one (treatment level, 1-8 judges x 1-12 sessions, target .80
        with P >= .90); ``False`` leaves the section out.
    comparison : a :func:`caltars_bayes.compare.compare_fits` table (the
        section is omitted with a note when None).
    ppc : include the posterior predictive checks.
    reliability_table : a :func:`caltars_bayes.reliability.reliability` table
        already computed for this fit (else computed).
    max_flagged : flagged parameters shown in the trace and rank plots.
    title : report title (default: instrument and number of subjects).
    progress : called with the name of each section as it is built.
    prior_from, prior_conflict : for a fit with priors borrowed from an earlier
        trial, the record ``prior_from.json`` and the table
        ``prior_conflict.csv`` (:func:`caltars_bayes.borrow.read_prior_from`
        reads both from a fit directory; in memory, ``Borrowed.to_dict()`` and
        :func:`caltars_bayes.borrow.prior_conflict`). They add the section
        "Priors borrowed from an earlier trial" and a sentence to the methods
        paragraph; a fit whose ``meta["prior_from"]`` is set gets the section
        even without them (saying that the derivation is missing).

    Returns
    -------
    Report
    """
    from caltars_bayes.reliability import dstudy as run_dstudy

    say = progress or (lambda _msg: None)
    hyps = hypotheses if hypotheses is not None else fit.hypotheses
    d = fit.diagnostics
    sections: list[Section] = []
    say("data")
    sections.append(_design_section(fit))
    say("convergence")
    sections.append(_convergence_section(fit, max_flagged))
    borrowed = _borrowed_section(fit, prior_from, prior_conflict)
    if borrowed is not None:
        say("borrowed priors")
        sections.append(borrowed)
    say("factor structure")
    sections.append(_structure_section(fit))
    say("reliability")
    rel_section, rel = _reliability_section(fit, reliability_table)
    sections.append(rel_section)
    say("judges")
    sections.append(_judges_section(fit))
    say("construct validity")
    val_section, hyp_table = _validity_section(fit, hyps)
    sections.append(val_section)
    study: DStudy | None = None
    if dstudy is False:
        sections.append(_omitted("dstudy", "Decision study", "Decision study: not requested."))
    else:
        say("decision study")
        study = run_dstudy(fit) if dstudy is None or dstudy is True else dstudy
        sections.append(_dstudy_section(study))
    if comparison is not None:
        say("model comparison")
        sections.append(_comparison_section(comparison))
    else:
        sections.append(
            _omitted(
                "comparison",
                "Model comparison",
                "Model comparison: omitted (no comparison given; see caltars_bayes.compare).",
            )
        )
    if ppc:
        say("posterior predictive checks")
        sections.append(_ppc_section(fit))
    else:
        sections.append(
            _omitted("ppc", "Posterior predictive checks", "Posterior predictive checks: skipped.")
        )
    methods = methods_paragraph(fit, prior_from=prior_from, prior_conflict=prior_conflict)
    sections.append(Section("methods", "Methods paragraph", [methods]))
    summary = _headline(fit, rel, hyp_table, study)
    if borrowed is not None:
        summary.insert(1, _borrowed_headline(fit, prior_from, prior_conflict))
    sections.insert(0, Section("summary", "Summary", list(summary)))
    data = fit.data
    subtitle = (
        f"{data.n_ratings:,} ratings: {data.n_subjects} subjects, {data.n_sessions} sessions, "
        f"{data.n_judges} judges, {data.n_items} items; "
        + (
            f"{fit.meta.get('method')} (approximate), {d.n_draws} draws"
            if d.approximate
            else f"{fit.meta.get('sampler')} NUTS, {d.n_chains} chains x {d.n_draws} draws"
        )
        + f"; caltars_bayes {fit.meta.get('caltars_bayes_version', '')}"
    )
    return Report(
        title=title or f"{fit.instrument.name}: Bayesian measurement-model report",
        subtitle=subtitle,
        converged=d.converged,
        approximate=d.approximate,
        banner=d.banner(),
        problems=list(d.problems),
        sections=sections,
        summary=summary,
        methods=methods,
    )


# --------------------------------------------------------------------------- notebook display


def fit_html(fit: Fit) -> str:
    """The notebook display of a fit: the verdict, the design and the scale-level tables.

    Shows the convergence banner (red when not converged), the scale-level
    parameters (``sd_alliance``, ``sd_session``, ``session_trend``: median
    and 95% HDI per scale), the factor correlation matrix (posterior medians)
    and the calls that give the rest.
    """
    from caltars_bayes.tables import describe

    d, data, post = fit.diagnostics, fit.data, fit.posterior
    colour = "#2e7d32" if d.converged else ("#f9a825" if d.approximate else "#c62828")
    how = (
        f"{fit.meta.get('method')} (approximate), {d.n_draws} draws"
        if d.approximate
        else f"{fit.meta.get('sampler')} NUTS, {d.n_chains} chains x {d.n_draws} draws"
    )
    parts = [
        f"<div style='border-left:6px solid {colour};padding:4px 8px;margin-bottom:6px'>"
        f"<b>{_esc(fit.instrument.name)} fit</b>: {data.n_ratings:,} ratings, "
        f"{data.n_subjects} subjects, {data.n_sessions} sessions, {data.n_judges} judges, "
        f"{data.n_items} items; {_esc(how)}<br>"
        f"<b style='color:{colour}'>{_esc(d.banner())}</b></div>"
    ]
    cols = {}
    for name in ("sd_alliance", "sd_session", "session_trend"):
        if name in post and "scale" in post[name].dims:
            t = describe(post[name])
            cols[name] = pd.Series(
                [f"{m:.2f} [{lo:.2f}, {hi:.2f}]"
                 for m, lo, hi in zip(t["median"], t["hdi_low"], t["hdi_high"], strict=True)],
                index=t.index,
            )  # fmt: skip
    if cols:
        frame = pd.DataFrame(cols)
        parts.append(
            "<p style='margin:4px 0'><i>Scale-level SDs (logits; median [95% HDI])</i></p>"
            + frame.to_html()
        )
    if "factor_corr" in post:
        med = post["factor_corr"].median(("chain", "draw")).to_pandas()
        parts.append(
            "<p style='margin:4px 0'><i>Factor correlations (posterior medians)</i></p>"
            + med.to_html(float_format=lambda v: f"{v:.2f}")
        )
    parts.append(
        "<p style='font-size:smaller;color:#555'>More: <code>fit.summary()</code>, "
        "<code>fit.scores()</code>, <code>fit.judges()</code>, "
        "<code>caltars_bayes.reliability.reliability(fit)</code>, "
        "<code>caltars_bayes.report.build_report(fit)</code> (every table and figure).</p>"
    )
    return "".join(parts)


# --------------------------------------------------------------------------- HTML

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
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:.85em;color:#444}.omitted{color:#777;font-style:italic}
nav ul{columns:2;font-size:.9em}.methods{background:#fafafa;border-left:4px solid #90a4ae;
padding:.6em 1em}
"""


def _esc(x: Any) -> str:
    return html.escape(str(x))


def _banner_html(rep: Report) -> str:
    if rep.approximate:
        return f"<div class='banner approx'>{_esc(rep.banner)}</div>"
    if not rep.converged:
        items = "".join(f"<li>{_esc(p)}</li>" for p in rep.problems)
        return (
            "<div class='banner bad' role='alert'>WARNING: NOT CONVERGED. These results are "
            f"provisional; do not report them.<ul>{items}</ul></div>"
        )
    return f"<div class='banner ok'>{_esc(rep.banner)}</div>"


def _table_html(t: ReportTable, rep: Report) -> str:
    df = t.shown
    cap = _esc(t.caption)
    if not rep.converged and t.posterior:
        cap += " <span class='warn'>(fit NOT converged)</span>"
    head = "".join(f"<th>{_esc(c)}</th>" for c in df.columns)
    rows = []
    for rec in df.itertuples(index=False):
        cells = []
        for c, v in zip(df.columns, rec, strict=True):
            cls = (
                " class='t'"
                if not isinstance(v, int | float | np.number) or isinstance(v, bool | np.bool_)
                else ""
            )
            cells.append(f"<td{cls}>{_esc(t.cell(v, c))}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    note = f"<p class='note'>{_esc(t.note)}</p>" if t.note else ""
    return (
        f"<table class='rt' id='tab-{_esc(t.name)}'><caption>{cap}</caption>"
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>{note}"
    )


def _png_base64(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _html_body(rep: Report) -> str:
    parts = [
        f"<h1>{_esc(rep.title)}</h1><p class='sub'>{_esc(rep.subtitle)}</p>",
        _banner_html(rep),
    ]
    nav = "".join(
        f"<li><a href='#sec-{s.key}'>{_esc(s.title)}</a></li>"
        for s in rep.sections
        if not s.omitted
    )
    parts.append(f"<nav><ul>{nav}</ul></nav>")
    for s in rep.sections:
        if s.omitted:
            parts.append(f"<p class='omitted' id='sec-{s.key}'>{_esc(s.text[0])}</p>")
            continue
        parts.append(f"<h2 id='sec-{s.key}'>{_esc(s.title)}</h2>")
        if s.key == "summary":
            parts.append("<ul>" + "".join(f"<li>{_esc(x)}</li>" for x in s.text) + "</ul>")
        elif s.key == "methods":
            parts.append(f"<p class='methods'>{_esc(s.text[0])}</p>")
        else:
            parts.extend(f"<p>{_esc(x)}</p>" for x in s.text)
        parts.extend(_table_html(t, rep) for t in s.tables)
        for f in s.figures:
            parts.append(
                f"<figure id='fig-{_esc(f.name)}'><img alt='{_esc(f.caption)}' "
                f"src='data:image/png;base64,{_png_base64(f.figure)}'/>"
                f"<figcaption>{_esc(f.caption)}</figcaption></figure>"
            )
    return "\n".join(parts)


def _render_html(rep: Report) -> str:
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{_esc(rep.title)}</title><style>{_CSS}</style></head><body>\n"
        f"{_html_body(rep)}\n</body></html>\n"
    )


# --------------------------------------------------------------------------- markdown


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _table_md(t: ReportTable, rep: Report) -> str:
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


def _render_markdown(rep: Report, folder: str) -> str:
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


# --------------------------------------------------------------------------- LaTeX

_TEX_SPECIAL = {
    "<=": r"$\le$", ">=": r"$\ge$", "<": r"$<$", ">": r"$>$", "~": r"$\sim$",
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "^": r"\textasciicircum{}",
}  # fmt: skip
_TEX_RE = re.compile("|".join(re.escape(k) for k in _TEX_SPECIAL))

#: Column headings in LaTeX tables.
LATEX_LABELS = {
    "median": r"\textit{Mdn}",
    "mean": r"\textit{M}",
    "sd": r"\textit{SD}",
    "hdi_low": r"95\% HDI low",
    "hdi_high": r"95\% HDI high",
    "classical": "Classical",
    "classical_r": r"Classical \textit{r}",
    "classical_p": r"\textit{p}",
    "p_positive": r"\textit{P}(\textit{r} > 0)",
    "p_negative": r"\textit{P}(\textit{r} < 0)",
    "p_rope": r"\textit{P}(ROPE)",
    "p_expected": r"\textit{P}(expected)",
    "p_reach": r"\textit{P}(reach)",
    "r_hat": r"$\hat{R}$",
    "ess_bulk": "Bulk ESS",
    "ess_tail": "Tail ESS",
    "n_ratings": r"\textit{n} ratings",
    "prob_below_panel": r"\textit{P}(below panel)",
}


def latex_escape(text: Any) -> str:
    """Escape LaTeX special characters in ``text`` (``<=``, ``>=``, ``~`` become maths)."""
    return _TEX_RE.sub(lambda m: _TEX_SPECIAL[m.group(0)], str(text))


def _tex_cell(t: ReportTable, v: Any, c: str) -> str:
    s = t.cell(v, c, latex=True)
    if isinstance(v, float | int | np.number) and not isinstance(v, bool | np.bool_):
        s = s.replace("< ", r"$<$ ")
        if s.startswith("-"):
            s = "$-$" + s[1:]
        return s
    return latex_escape(s)


def _table_latex(t: ReportTable, rep: Report) -> str:
    df = t.shown
    cols = []
    for c in df.columns:
        numeric = pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c])
        cols.append("r" if numeric else "l")
    head = " & ".join(LATEX_LABELS.get(str(c), latex_escape(c)) for c in df.columns)
    body = [
        " & ".join(_tex_cell(t, v, c) for c, v in zip(df.columns, rec, strict=True)) + r" \\"
        for rec in df.itertuples(index=False)
    ]
    notes = []
    if not rep.converged and t.posterior:
        notes.append(
            r"\textbf{The fit did NOT converge}: " + latex_escape("; ".join(rep.problems)) + "."
            if not rep.approximate
            else r"\textbf{Approximate fit}: " + latex_escape(rep.banner) + "."
        )
    if t.note:
        notes.append(latex_escape(t.note))
    note = (
        "\n\\par\\smallskip{\\footnotesize\\textit{Note.} " + " ".join(notes) + "}" if notes else ""
    )
    return "\n".join(
        [
            r"\begin{table}[htbp]",
            r"\centering\small",
            rf"\caption{{{latex_escape(t.caption)}}}",
            rf"\label{{tab:{t.name}}}",
            rf"\begin{{tabular}}{{{''.join(cols)}}}",
            r"\toprule",
            head + r" \\",
            r"\midrule",
            *body,
            r"\bottomrule",
            r"\end{tabular}" + note,
            r"\end{table}",
        ]
    )


def _render_latex(rep: Report, folder: str) -> str:
    out = [
        f"% {rep.title}",
        f"% {rep.subtitle}",
        f"% Verdict: {rep.banner}",
        "% Generated by caltars_bayes.report. Needs \\usepackage{booktabs, graphicx};",
        f"% figure paths are relative to this file's folder ({folder}/).",
        "% Numbers in APA style: no leading zero for correlations, reliabilities, probabilities.",
        "",
    ]
    if not rep.converged:
        what = "APPROXIMATE FIT" if rep.approximate else "WARNING: NOT CONVERGED"
        out.append(
            r"\noindent\fbox{\parbox{\dimexpr\linewidth-2\fboxsep-2\fboxrule\relax}"
            rf"{{\textbf{{{what}.}} " + latex_escape("; ".join(rep.problems)) + "}}"
        )
        out.append("")
    out.extend([r"% Methods paragraph (adapt before use):", latex_escape(rep.methods), ""])
    for s in rep.sections:
        if s.key in ("summary", "methods"):
            continue
        if s.omitted:
            out.extend([f"% {s.text[0]}", ""])
            continue
        out.append(f"% ---- {s.title}")
        for t in s.tables:
            out.extend([_table_latex(t, rep), ""])
        for f in s.figures:
            out.extend(
                [
                    r"\begin{figure}[htbp]",
                    r"\centering",
                    rf"\includegraphics[width=\linewidth]{{{folder}/{f.name}.png}}",
                    rf"\caption{{{latex_escape(f.caption)}}}",
                    rf"\label{{fig:{f.name}}}",
                    r"\end{figure}",
                    "",
                ]
            )
    return "\n".join(out).rstrip() + "\n"


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
