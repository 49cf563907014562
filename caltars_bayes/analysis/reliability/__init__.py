"""Reliability as posteriors: interrater reliability, judge reliability, decision studies.

Every coefficient is a ratio of variance components of a *scale score* in the
subjects x sessions x judges design, obtained by two routes, latent and
observed (:mod:`~caltars_bayes.analysis.reliability.components`; see
``docs/reliability.md``). :func:`coefficient_from_components` turns them into
every coefficient reported here and projected by the decision study, so the
posterior, the simulation truth and the planning code all use one formula.

Modules
-------
components
    The variance components: pure formulas (:func:`latent_components`,
    :func:`observed_components`, :func:`lognormal_moments`), the observed
    route's simulator (:func:`simulate_observed_components`) and their inputs
    read from a fit's posterior.
coefficients
    :func:`coefficient_from_components`, the per-draw coefficients
    (:func:`reliability_draws`) and the ``reliability`` table
    (:func:`reliability`, :func:`classical_reliability`).
judges
    :func:`judge_reliability` and the judges table (:func:`judges_table`).
truth
    :func:`true_reliability`: the true coefficients of a simulated trial.
dstudy
    Decision studies: :func:`dstudy`, :class:`DStudy`, :func:`parse_counts`.
"""

from caltars_bayes.analysis.reliability.coefficients import (
    classical_reliability,
    coefficient_from_components,
    reliability,
    reliability_draws,
)
from caltars_bayes.analysis.reliability.components import (
    COMPONENTS,
    LOGISTIC_VAR,
    latent_components,
    lognormal_moments,
    observed_components,
    simulate_observed_components,
)
from caltars_bayes.analysis.reliability.dstudy import DStudy, dstudy, parse_counts
from caltars_bayes.analysis.reliability.judges import judge_reliability, judges_table
from caltars_bayes.analysis.reliability.truth import true_reliability

__all__ = [
    "COMPONENTS",
    "LOGISTIC_VAR",
    "DStudy",
    "classical_reliability",
    "coefficient_from_components",
    "dstudy",
    "judge_reliability",
    "judges_table",
    "latent_components",
    "lognormal_moments",
    "observed_components",
    "parse_counts",
    "reliability",
    "reliability_draws",
    "simulate_observed_components",
    "true_reliability",
]
