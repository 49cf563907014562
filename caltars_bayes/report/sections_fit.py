"""The report's sections on the fit itself: data and design, convergence diagnostics.

:func:`design_section` accounts for the ratings (read, used, missing,
rejected), the design (sessions per subject, judges per session) and missing
covariate values, with the design and missingness map
(:func:`~caltars_bayes.report.plots_data.plot_design`); :func:`convergence_section`
holds the convergence checks against their thresholds, the flagged parameters
and, for an unconverged fit, their trace and rank plots (:mod:`~caltars_bayes.report.plots`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

from caltars_bayes.report.elements import ReportFigure, ReportTable, Section
from caltars_bayes.report.plots import plot_flagged_rank, plot_flagged_trace
from caltars_bayes.report.plots_data import plot_design

if TYPE_CHECKING:
    from caltars_bayes.inference.fit import Fit


def design_section(fit: Fit) -> Section:
    """The data and design section: accounting of the ratings, design, covariate missingness."""
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
    figures = [
        ReportFigure(
            "design",
            f"Design and missingness: which judge rated which session (columns, grouped by "
            f"subject) and how many of the {data.n_items} items; grey: not rated.",
            plot_design(data),
        )
    ]
    return Section("data", "Data and design", text, tables, figures)


def convergence_section(fit: Fit, max_flagged: int) -> Section:
    """The convergence section: checks, flagged parameters, their trace and rank plots."""
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
