"""Comparing fitted models (alternative factor structures) by cross-validated prediction.

The expected log predictive density (elpd) of each model is estimated by
Pareto-smoothed importance sampling leave-one-out cross-validation (PSIS-LOO,
:mod:`~caltars_bayes.analysis.compare.loo`), by session (default) or by
rating. Models are then ranked by elpd (:func:`compare_fits`, in
:mod:`~caltars_bayes.analysis.compare.table`). Units with a high Pareto k are
improved by importance-weighted moment matching
(:mod:`~caltars_bayes.analysis.compare.moment_match`), or every model is
re-estimated by K-fold cross-validation
(:mod:`~caltars_bayes.analysis.compare.kfold`; the refits run in parallel on
Dask where the machine has the cores).
"""

from caltars_bayes.analysis.compare.kfold import (
    kfold_fit,
    kfold_fits,
    rating_folds,
    session_folds,
)
from caltars_bayes.analysis.compare.loo import K_THRESHOLD, loo_fit, relative_eff
from caltars_bayes.analysis.compare.moment_match import loo_moment_match_fit
from caltars_bayes.analysis.compare.table import (
    COMPARE_COLUMNS,
    FALLBACKS,
    compare_fits,
    plot_compare,
)

__all__ = [
    "COMPARE_COLUMNS",
    "FALLBACKS",
    "K_THRESHOLD",
    "compare_fits",
    "kfold_fit",
    "kfold_fits",
    "loo_fit",
    "loo_moment_match_fit",
    "plot_compare",
    "rating_folds",
    "relative_eff",
    "session_folds",
]
