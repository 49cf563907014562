"""The methods paragraph of a report, generated from the fit for a researcher to adapt.

:func:`methods_paragraph` says what was modelled (the parts the design
identified), the priors (and what was borrowed from an earlier trial, see
:func:`~caltars_bayes.report.borrowed.borrowed_methods_text`), the sampler and
its settings, the draws kept and the convergence checks with their outcome,
and how results are summarised.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pandas as pd

from caltars_bayes.inference import sampling
from caltars_bayes.inference.record import FitRecord
from caltars_bayes.report.borrowed import borrowed_methods_text

if TYPE_CHECKING:
    from caltars_bayes.inference.fit import Fit


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
        (:func:`caltars_bayes.analysis.borrow.read_prior_from`); without them a fit
        whose ``record.prior_from`` is set still says that priors were
        borrowed, from where and with what weight.

    Returns
    -------
    str, one paragraph of plain text.
    """
    data, plan, rec, d = fit.data, fit.plan, fit.record, fit.diagnostics
    inst = fit.instrument
    versions = rec.versions
    scales = ", ".join(data.scales)
    n_cat = inst.response_max - inst.response_min + 1
    judge_parts = []
    if plan.judge_severity:
        judge_parts.append("a severity for each scale")
    if plan.judge_discrimination:
        judge_parts.append("a discrimination")
    s = [
        f"Ratings were analysed with a Bayesian hierarchical graded-response (cumulative-logit) "
        f"measurement model (caltars_bayes {rec.caltars_bayes_version}, PyMC "
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
    borrowed = borrowed_methods_text(fit, prior_from, prior_conflict)
    if borrowed:
        s.append(borrowed)
    if d.approximate:
        s.append(
            f"The posterior was APPROXIMATED with {rec.method or d.approx_method} "
            f"({d.n_draws} draws); this is not MCMC and convergence diagnostics do not apply, "
            "so intervals are indicative only."
        )
    else:
        total = d.n_chains * d.n_draws
        sampler = rec.sampler
        if sampler in versions:
            sampler += f" {versions[sampler]}"
        s.append(
            f"The posterior was sampled with the No-U-Turn sampler ({sampler}) in "
            f"{d.n_chains} chains of {rec.tune} tuning{_tune_text(fit)} and {d.n_draws} "
            f"kept iterations (target acceptance {rec.target_accept}; {total:,} draws in total; "
            f"seed {rec.random_seed}{_sampler_settings_text(rec)})."
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


def _tune_text(fit: Fit) -> str:
    """Why a fit tuned for fewer iterations, when it had the large-data default."""
    n, least = fit.data.n_ratings, sampling.LARGE_DATA_RATINGS
    if n >= least and fit.record.tune == sampling.LARGE_DATA_TUNE:
        return f" (the package's default for data sets of {least:,} ratings or more; here {n:,})"
    return ""


def _sampler_settings_text(record: FitRecord) -> str:
    """The trajectory caps and starting values a NUTS fit ran with, for the methods text."""
    parts = []
    t = record.trajectory_cap()
    if t is not None:
        parts.append(f"trajectories capped at an integration time of {t}")
    depth = record.tree_depth_cap()
    if depth is not None:
        parts.append(
            f"at most {2**depth - 1} leapfrog steps per iteration (maximum tree depth {depth})"
        )
    if record.start == "data":
        parts.append("chains started from data-based values")
    return "".join(f"; {p}" for p in parts)
