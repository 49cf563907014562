"""Classical (non-Bayesian) statistics printed beside the posterior results.

Psychotherapy process researchers expect to see the familiar numbers next to
any model-based estimate: intraclass correlations of judges' ratings, the
principal-components-with-varimax solution that the founding studies of the
observer-rated alliance scales used, and plain Pearson correlations.  Every
function here is a pure function of its inputs (pandas / numpy in, pandas
out); nothing is sampled. The ICCs live in :mod:`.icc` (their REML variance
components in :mod:`.reml`), the components analysis in :mod:`.pca`, the
correlation table in :mod:`.pearson`.

Functions
---------
icc_shrout_fleiss
    The six Shrout & Fleiss (1979) intraclass correlations, with F tests and
    95% confidence intervals, for a complete targets x judges table.
icc_unbalanced
    ICC analogues for incomplete, unbalanced crossings of targets and judges,
    from variance components estimated by restricted maximum likelihood.
reml_variance_components
    The variance components behind :func:`icc_unbalanced`.
scale_score_icc
    Long scale scores in, the right one of the two ICC functions out.
pca_varimax
    Principal components of the item correlation matrix, varimax-rotated.
pearson_table
    Pearson r, pairwise-complete n and two-sided p for every column pair.
cronbach_alpha, mcdonald_omega, internal_consistency, scale_internal_consistency
    Internal consistency of a scale's items (:mod:`.internal`): Cronbach's
    alpha and McDonald's omega (one-factor ML), with confidence intervals
    from a bootstrap over subjects; ``feldt_interval`` and ``one_factor_ml``
    are the pieces.
"""

from caltars_bayes.analysis.classical.icc import (
    ANOVA_METHOD,
    REML_METHOD,
    icc_shrout_fleiss,
    icc_unbalanced,
    scale_score_icc,
)
from caltars_bayes.analysis.classical.internal import (
    cronbach_alpha,
    feldt_interval,
    internal_consistency,
    mcdonald_omega,
    one_factor_ml,
    scale_internal_consistency,
)
from caltars_bayes.analysis.classical.pca import PCAResult, pca_varimax
from caltars_bayes.analysis.classical.pearson import pearson_table
from caltars_bayes.analysis.classical.reml import reml_variance_components

__all__ = [
    "ANOVA_METHOD",
    "REML_METHOD",
    "PCAResult",
    "cronbach_alpha",
    "feldt_interval",
    "icc_shrout_fleiss",
    "icc_unbalanced",
    "internal_consistency",
    "mcdonald_omega",
    "one_factor_ml",
    "pca_varimax",
    "pearson_table",
    "reml_variance_components",
    "scale_internal_consistency",
    "scale_score_icc",
]
