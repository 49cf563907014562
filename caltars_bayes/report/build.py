"""Paper-ready reports of a fit: :func:`build_report` collects the sections and the headline.

:func:`build_report` collects the sections of a report from a
:class:`~caltars_bayes.inference.fit.Fit` (each section: a title, text, tables
as DataFrames and matplotlib figures) into a
:class:`~caltars_bayes.report.document.Report`, which renders them as HTML,
markdown and LaTeX.

Sections, in order: summary, data and design (with the design and missingness
map), convergence (trace and rank plots of flagged parameters), priors borrowed
from an earlier trial (only for a fit made with ``--prior-from``), factor
structure (loadings figure), reliability (reliability figure), judges (forest
plot), alliance over sessions (a few subjects), construct validity
(associations, hypotheses), decision study, model comparison, posterior
predictive checks (with the rating categories' rootogram), methods. A section whose source is
absent (no covariates, no comparison given) is replaced by a one-line note.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd

from caltars_bayes.analysis.reliability import dstudy as run_dstudy
from caltars_bayes.analysis.validity import summarise_verdicts
from caltars_bayes.inference.display import sampling_text
from caltars_bayes.report.borrowed import borrowed_headline, borrowed_section
from caltars_bayes.report.document import Report
from caltars_bayes.report.elements import Section, apa_number, omitted_section
from caltars_bayes.report.methods import methods_paragraph
from caltars_bayes.report.outputs import FitResults
from caltars_bayes.report.plots import MAX_FLAGGED
from caltars_bayes.report.sections_fit import convergence_section, design_section
from caltars_bayes.report.sections_results import (
    alliance_section,
    comparison_section,
    dstudy_section,
    judges_section,
    ppc_section,
    reliability_section,
    structure_section,
    validity_section,
)

if TYPE_CHECKING:
    from caltars_bayes.analysis.reliability import DStudy
    from caltars_bayes.inference.fit import Fit
    from caltars_bayes.spec.hypotheses import Hypotheses


def _headline(
    fit: Fit, rel: pd.DataFrame | None, hyp: pd.DataFrame | None, study: DStudy | None
) -> list[str]:
    """The summary lines: the verdict, reliability, hypotheses and the D-study's designs."""
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


def _subtitle(fit: Fit) -> str:
    """The report's subtitle: the design and how the posterior was obtained."""
    d, data = fit.diagnostics, fit.data
    return (
        f"{data.n_ratings:,} ratings: {data.n_subjects} subjects, {data.n_sessions} sessions, "
        f"{data.n_judges} judges, {data.n_items} items; "
        + sampling_text(fit.record, d)
        + f"; caltars_bayes {fit.record.caltars_bayes_version}"
    )


def _dstudy(
    fit: Fit, dstudy: DStudy | bool | None, sections: list[Section], say: Callable[[str], None]
) -> DStudy | None:
    """Append the decision-study section (computed unless given or not requested)."""
    if dstudy is False:
        sections.append(
            omitted_section("dstudy", "Decision study", "Decision study: not requested.")
        )
        return None
    say("decision study")
    study = run_dstudy(fit) if dstudy is None or dstudy is True else dstudy
    sections.append(dstudy_section(study))
    return study


def _checks(
    fit: Fit, comparison: pd.DataFrame | None, ppc: bool, say: Callable[[str], None]
) -> list[Section]:
    """The model comparison and posterior predictive check sections (or their notes)."""
    out = []
    if comparison is not None:
        say("model comparison")
        out.append(comparison_section(comparison))
    else:
        out.append(
            omitted_section(
                "comparison",
                "Model comparison",
                "Model comparison: omitted (no comparison given; see "
                "caltars_bayes.analysis.compare).",
            )
        )
    if ppc:
        say("posterior predictive checks")
        out.append(ppc_section(fit))
    else:
        out.append(
            omitted_section(
                "ppc", "Posterior predictive checks", "Posterior predictive checks: skipped."
            )
        )
    return out


def build_report(
    fit: Fit,
    *,
    results: FitResults | None = None,
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
    subjects: Sequence[str] | None = None,
) -> Report:
    """Collect the report of a fit.

    Parameters
    ----------
    fit : the fit.
    results : the tables :func:`~caltars_bayes.report.outputs.save_fit_directory`
        returned for this fit: its reliability, associations and hypothesis
        verdicts are reused instead of computed again (and its hypotheses are
        the default ``hypotheses``).
    hypotheses : validity hypotheses to test (none when None; those a fit
        directory was written with: :func:`~caltars_bayes.report.outputs.saved_hypotheses`).
    dstudy : a :class:`~caltars_bayes.analysis.reliability.DStudy`; ``None`` computes the
        default one (treatment level, 1-8 judges x 1-12 sessions, target .80
        with P >= .90); ``False`` leaves the section out.
    comparison : a :func:`caltars_bayes.analysis.compare.compare_fits` table (the
        section is omitted with a note when None).
    ppc : include the posterior predictive checks.
    reliability_table : a :func:`caltars_bayes.analysis.reliability.reliability` table
        already computed for this fit (else computed).
    max_flagged : flagged parameters shown in the trace and rank plots.
    title : report title (default: instrument and number of subjects).
    progress : called with the name of each section as it is built.
    prior_from, prior_conflict : for a fit with priors borrowed from an earlier
        trial, the record ``prior_from.json`` and the table
        ``prior_conflict.csv`` (:func:`caltars_bayes.analysis.borrow.read_prior_from`
        reads both from a fit directory; in memory, ``Borrowed.to_dict()`` and
        :func:`caltars_bayes.analysis.borrow.prior_conflict`). They add the section
        "Priors borrowed from an earlier trial" and a sentence to the methods
        paragraph; a fit whose ``record.prior_from`` is set gets the section
        even without them (saying that the derivation is missing).
    subjects : the subjects whose alliance over sessions is shown (default: a
        few spread over the range of the subjects' alliance, see
        :func:`~caltars_bayes.report.plots_results.default_subjects`).

    Returns
    -------
    Report
    """
    say = progress or (lambda _msg: None)
    hyps = hypotheses
    associations = verdicts = scores = None
    if results is not None:
        scores = results.scores
        hyps = hyps if hyps is not None else results.hypotheses
        if reliability_table is None:
            reliability_table = results.reliability
        if hyps is results.hypotheses:  # the tables were computed for these hypotheses
            associations, verdicts = results.associations, results.verdicts
    d = fit.diagnostics
    sections: list[Section] = []
    say("data")
    sections.append(design_section(fit))
    say("convergence")
    sections.append(convergence_section(fit, max_flagged))
    borrowed = borrowed_section(fit, prior_from, prior_conflict)
    if borrowed is not None:
        say("borrowed priors")
        sections.append(borrowed)
    say("factor structure")
    sections.append(structure_section(fit))
    say("reliability")
    rel_section, rel = reliability_section(fit, reliability_table)
    sections.append(rel_section)
    say("judges")
    sections.append(judges_section(fit))
    say("alliance over sessions")
    sections.append(alliance_section(fit, subjects, scores))
    say("construct validity")
    val_section, hyp_table = validity_section(fit, hyps, associations, verdicts)
    sections.append(val_section)
    study = _dstudy(fit, dstudy, sections, say)
    sections.extend(_checks(fit, comparison, ppc, say))
    methods = methods_paragraph(fit, prior_from=prior_from, prior_conflict=prior_conflict)
    sections.append(Section("methods", "Methods paragraph", [methods]))
    summary = _headline(fit, rel, hyp_table, study)
    if borrowed is not None:
        summary.insert(1, borrowed_headline(fit, prior_from, prior_conflict))
    sections.insert(0, Section("summary", "Summary", list(summary)))
    return Report(
        title=title or f"{fit.instrument.name}: Bayesian measurement-model report",
        subtitle=_subtitle(fit),
        converged=d.converged,
        approximate=d.approximate,
        banner=d.banner(),
        problems=list(d.problems),
        sections=sections,
        summary=summary,
        methods=methods,
    )
