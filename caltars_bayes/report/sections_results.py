"""The report's sections on the results, from the factor structure to the predictive checks.

Factor structure, reliability, judges, alliance over sessions, construct
validity, decision study, model comparison and posterior predictive checks.
Each builder takes the fit (or the result it shows) and returns a
:class:`~caltars_bayes.report.elements.Section` of text, tables and figures;
the ``*_COLUMNS`` constants are the columns of the tables, in order. A section
whose source is absent (one judge, no covariates) is replaced by a one-line
note.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from caltars_bayes.analysis.associations import associations, plot_associations
from caltars_bayes.analysis.compare import plot_compare
from caltars_bayes.analysis.ppc import ppc
from caltars_bayes.analysis.reliability import judge_reliability, reliability
from caltars_bayes.analysis.structure import (
    factor_correlations,
    plot_factor_correlations,
    standardised_loadings,
)
from caltars_bayes.analysis.validity import summarise_verdicts, test_hypotheses
from caltars_bayes.report.elements import (
    ReportFigure,
    ReportTable,
    Section,
    apa_number,
    omitted_section,
)
from caltars_bayes.report.plots import plot_judges
from caltars_bayes.report.plots_data import plot_category_ppc
from caltars_bayes.report.plots_results import (
    N_SUBJECTS_SHOWN,
    default_subjects,
    plot_alliance_sessions,
    plot_loadings,
    plot_reliability,
)

if TYPE_CHECKING:
    from caltars_bayes.analysis.reliability import DStudy
    from caltars_bayes.inference.fit import Fit
    from caltars_bayes.spec.hypotheses import Hypotheses


#: Columns of the report's loadings and factor-correlation tables.
LOADING_COLUMNS = ["item", "scale", "median", "hdi_low", "hdi_high", "classical_loading"]
CORRELATION_COLUMNS = ["scale", "scale2", "median", "hdi_low", "hdi_high", "classical_r"]


def structure_section(fit: Fit) -> Section:
    """The factor structure section: standardised loadings, factor correlations."""
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
    figures = [
        ReportFigure(
            "loadings",
            "Standardised loadings per item and scale: posterior median and 95% HDI; crosses: "
            "classical PCA (varimax) loadings.",
            plot_loadings(fit, load),
        )
    ]
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


def reliability_section(fit: Fit, table: pd.DataFrame | None) -> tuple[Section, pd.DataFrame]:
    """The reliability section, and the full reliability table it was taken from."""
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
    ic = rel[rel["route"] == "classical"] if "n_obs" in rel.columns else rel.iloc[:0]
    if len(ic):
        text.append(
            "Internal consistency of each scale's items (one row per subject x session x "
            "judge): Cronbach's alpha (the reliability of the item mean if all items load "
            "equally on one factor) and McDonald's omega (the share of the item mean's "
            "variance due to the common factor of a one-factor model), with 95% confidence "
            "intervals from a bootstrap over subjects."
        )
        frame = ic.rename(
            columns={"median": "estimate", "hdi_low": "ci_low", "hdi_high": "ci_high"}
        )
        cols = ["scale", "coefficient", "estimate", "ci_low", "ci_high", "n_obs", "n_items"]
        tables.append(
            ReportTable(
                "internal_consistency",
                "Internal consistency of the scales' items (classical; alpha, omega).",
                frame[[*cols, "converged"]].reset_index(drop=True),
                bounded=("estimate", "ci_low", "ci_high"),
                column_digits={"n_obs": 0, "n_items": 0},
                posterior=False,
            )
        )
    figures = [
        ReportFigure(
            "reliability",
            f"Reliability per scale: posterior median and 95% HDI ({route} route) of the "
            "interrater coefficients, crosses: classical ICC; grey: alpha and omega with their "
            "bootstrap intervals.",
            plot_reliability(fit, rel),
        )
    ]
    return Section("reliability", "Reliability", text, tables, figures), rel


def judges_section(fit: Fit) -> Section:
    """The judges section: severity, discrimination, judge reliability (omitted: one judge)."""
    post = fit.posterior
    if "severity" not in post and "discrimination" not in post:
        return omitted_section(
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
            "judges",
            "Judge severity per scale and log discrimination (posterior median, 50% and 95% HDI).",
            plot_judges(fit),
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


def validity_section(
    fit: Fit,
    hypotheses: Hypotheses | None,
    assoc: pd.DataFrame | None = None,
    verdicts: pd.DataFrame | None = None,
) -> tuple[Section, pd.DataFrame | None]:
    """The construct validity section, and the hypotheses table (None: none tested).

    ``assoc`` and ``verdicts``: the associations and hypotheses tables already
    computed for this fit and these hypotheses (else computed here).
    """
    if not (fit.plan.covariates or fit.plan.session_covariates):
        return (
            omitted_section(
                "validity",
                "Construct validity",
                "Construct validity: omitted (the fit has no covariates; fit with "
                "--covariates / --session-covariates to estimate associations).",
            ),
            None,
        )
    if assoc is None:
        assoc = associations(fit, hypotheses=hypotheses)
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
            latex_omit=("p_negative",),
            latex_note=r"\textit{P}(\textit{r} $<$ 0) = 1 $-$ \textit{P}(\textit{r} $>$ 0) "
            "is in associations.csv.",
        )
    ]
    hyp_table = None
    if hypotheses is not None:
        hyp_table = verdicts if verdicts is not None else test_hypotheses(fit, hypotheses)
        source = Path(hypotheses.source).name  # a name, never an absolute path
        text.append(
            f"Hypotheses ({source}): {summarise_verdicts(hyp_table)}. A directional "
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
                latex_omit=("classical_r", "classical_p"),
                latex_note=r"Classical \textit{r} and \textit{p} of each pair: "
                r"Table~\ref{tab:associations}.",
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
            plot_associations(fit, assoc, hyp_table),
        )
    ]  # fmt: skip
    return Section("validity", "Construct validity", text, tables, figures), hyp_table


def dstudy_section(study: DStudy) -> Section:
    """The decision study section: the smallest design reaching the target."""
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


def comparison_section(comparison: pd.DataFrame) -> Section:
    """The model comparison section of a comparison table."""
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


def ppc_section(fit: Fit) -> Section:
    """The posterior predictive checks section."""
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
    figures = [
        ReportFigure("ppc", "Observed statistics against their replicated 95% intervals.",
                     res.plot()),
        ReportFigure("categories", "Rating categories per scale: observed counts against the "
                     "posterior predictive median and 95% interval (square-root axis).",
                     plot_category_ppc(fit)),
    ]  # fmt: skip
    return Section("ppc", "Posterior predictive checks", text, tables, figures)


def alliance_section(
    fit: Fit,
    subjects: Sequence[str] | None = None,
    scores: pd.DataFrame | None = None,
    n_subjects: int = N_SUBJECTS_SHOWN,
) -> Section:
    """The alliance-over-sessions section: the session-level alliance of a few subjects.

    ``subjects``: the subjects shown (default ``n_subjects`` spread over the
    range of the subjects' alliance, :func:`~caltars_bayes.report.plots_results.default_subjects`);
    ``scores``: the fit's scores table (else computed).
    """
    table = fit.scores() if scores is None else scores
    chosen = list(subjects) if subjects is not None else default_subjects(table, n_subjects)
    how = (
        "chosen for the report"
        if subjects is not None
        else "spread over the range of the subjects' treatment-level alliance (lowest, "
        "highest and between; build_report(subjects=...) chooses others)"
    )
    text = [
        f"Session-level latent alliance of {len(chosen)} subjects ({', '.join(chosen)}; {how}): "
        "posterior mean and 95% HDI per session, the subject's treatment-level alliance "
        "dotted. Every subject's scores are in scores.csv of the fit directory."
    ]
    fig = plot_alliance_sessions(fit, chosen, scores=table)
    return Section(
        "alliance",
        "Alliance over sessions",
        text,
        figures=[
            ReportFigure(
                "alliance_sessions",
                "Session-level alliance over sessions (posterior mean, 95% HDI) of "
                + ", ".join(chosen)
                + ".",
                fig,
            )
        ],
    )
