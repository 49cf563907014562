"""The comparison table of several fits (``compare_fits``) and its plot.

Models are ranked by elpd; ``elpd_diff`` is the difference from the best
model with its standard error ``dse`` (from the pointwise differences), and
``weight`` are stacking weights (Yao et al. 2018).

Pareto k and the fallbacks
--------------------------
When any model has units with Pareto k above
:data:`~caltars_bayes.analysis.compare.loo.K_THRESHOLD` (0.7),
:func:`compare_fits` warns (:class:`~caltars_bayes._core.errors.CaltarsWarning`)
and, by default (``fallback="moment_match"``), first tries to improve them by
importance-weighted moment matching
(:func:`~caltars_bayes.analysis.compare.moment_match.loo_moment_match_fit`;
Paananen et al. 2021): the posterior draws, on the model's unconstrained space
(:mod:`caltars_bayes.inference.unconstrained`), are moved by affine maps towards the
leave-one-out posterior and reweighted with the model's joint density, so no
refit is needed. For ``by="session"`` the held-out likelihood is the integrated
session likelihood, as in PSIS-LOO. If some unit still has k > 0.7 afterwards
(matching stops at the first such unit, since what follows replaces it all),
or the fit's model cannot be rebuilt (e.g. borrowed priors), it warns again
and re-estimates *every* model's elpd by K-fold cross-validation
(:func:`~caltars_bayes.analysis.compare.kfold.kfold_fit`; ``fallback="kfold"``
does so at once), so that all models are compared with the same estimator.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from arviz_stats import compare as az_compare
from arviz_stats.utils import ELPDData, ELPDDataLOO

from caltars_bayes._core.errors import CaltarsError, CaltarsWarning
from caltars_bayes._core.parallel import SchedulerError, check_scheduler
from caltars_bayes._core.progress import Progress
from caltars_bayes.analysis.compare.kfold import kfold_fits
from caltars_bayes.analysis.compare.loo import K_THRESHOLD, loo_fit
from caltars_bayes.analysis.compare.moment_match import loo_moment_match_fit

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from caltars_bayes.inference.fit import Fit

#: What :func:`compare_fits` does when some Pareto k is high.
FALLBACKS = ("moment_match", "kfold", "none")
#: Columns of :func:`compare_fits`.
COMPARE_COLUMNS = [
    "name", "elpd", "se", "elpd_diff", "dse", "weight", "p_loo", "pareto_k_max", "n_high_k",
    "n_units", "by", "method", "converged",
]  # fmt: skip


def _check_same_data(fits: Mapping[str, Fit]) -> None:
    names = list(fits)
    ref = fits[names[0]].record.data_hash
    for n in names[1:]:
        h = fits[n].record.data_hash
        if h is None or ref is None or h != ref:
            raise CaltarsError(
                f"compare: {n!r} was fitted to different data than {names[0]!r} "
                f"(data hash {h} vs {ref}); models can only be compared on the same ratings"
            )


def compare_fits(
    fits: Mapping[str, Fit],
    by: str = "session",
    *,
    fallback: str = "moment_match",
    n_folds: int = 5,
    seed: int = 0,
    fit_options: Mapping[str, Any] | None = None,
    scheduler: Any = None,
    workers: int | None = None,
    quiet: bool = False,
) -> pd.DataFrame:
    """Compare models fitted to the same ratings by cross-validated elpd.

    Parameters
    ----------
    fits : name -> fit (at least two, same data: refused otherwise).
    by : ``"session"`` (leave one session out, default) or ``"rating"``.
    fallback : what to do when some unit has Pareto k > 0.7 (always with a
        :class:`~caltars_bayes._core.errors.CaltarsWarning`): ``"moment_match"``
        (default: moment match the high-k units of the models that have them,
        :func:`loo_moment_match_fit`, no refit; if some unit still has k > 0.7,
        or moment matching is not possible, warn again and K-fold every model),
        ``"kfold"`` (K-fold cross-validation of every model at once, K refits
        each) or ``"none"`` (keep PSIS-LOO).
    n_folds, seed, fit_options : K-fold settings (see :func:`kfold_fit`).
    scheduler, workers : where the K-fold refits run, all models' together
        (:func:`kfold_fits`; default: in parallel on a Dask LocalCluster where
        the cores hold two refits' chains or more and Dask is installed, else here).
        The refits' seeds do not depend on it, nor does the table.
    quiet : no progress. Otherwise moment matching (model by model) and the
        K-fold refits (which refit of how many, ETA) show their progress on
        stderr: a bar on a terminal, else a line at least every 10 s.

    Returns
    -------
    DataFrame, best model first, with columns

    ``name``
        The model's name (key of ``fits``).
    ``elpd``, ``se``
        Estimated expected log predictive density (sum over units) and its SE.
    ``elpd_diff``, ``dse``
        This model's elpd minus the best model's (0 for the best, negative
        otherwise) and the SE of that difference (from the pointwise differences).
    ``weight``
        Stacking weight (weights sum to 1).
    ``p_loo``
        Effective number of parameters (in-sample lpd minus elpd).
    ``pareto_k_max``, ``n_high_k``
        Largest Pareto k and the number of units with k > 0.7 of the
        importance-sampling estimate: after moment matching where that is the
        method (``psis+mm``), else of plain PSIS (also when K-fold replaced it).
    ``n_units``, ``by``
        Number and kind of left-out units.
    ``method``
        ``"psis"``, ``"psis+mm"`` (PSIS with moment-matched high-k units) or
        ``"kfold(K)"``.
    ``converged``
        The fit's convergence verdict. ``attrs["diagnostics"]`` holds each
        fit's banner, ``attrs["warnings"]`` the Pareto-k warnings.
    """
    if len(fits) < 2:
        raise CaltarsError("compare: give at least two fits")
    if by not in ("session", "rating"):
        raise CaltarsError(f"compare: --by must be 'session' or 'rating', got {by!r}")
    if fallback not in FALLBACKS:
        raise ValueError(f"fallback must be one of {', '.join(FALLBACKS)}, got {fallback!r}")
    _check_same_data(fits)
    check_scheduler(scheduler)
    loos = {name: loo_fit(fit, by) for name, fit in fits.items()}
    messages: list[str] = []

    def note(msg: str) -> None:
        warnings.warn(msg, CaltarsWarning, stacklevel=3)
        messages.append(msg)

    elpds: dict[str, ELPDData] = dict(loos)
    methods = dict.fromkeys(fits, "psis")
    bad = [n for n in fits if _n_high(loos[n])]
    kfold = fallback == "kfold" and bool(bad)
    refit = f"re-estimating every model by {n_folds}-fold cross-validation ({n_folds} refits each)"
    if bad:
        action = {
            "moment_match": "moment matching their high-k units (no refit)",
            "kfold": refit,
            "none": "PSIS-LOO kept (fallback disabled): treat these elpd values with caution",
        }[fallback]
        note(f"PSIS-LOO unreliable: {_detail(bad, loos, by)}; {action}")
    psis = dict(loos)
    if bad and fallback == "moment_match":
        try:
            matched, still = _moment_match(fits, loos, bad, by, quiet)
            elpds.update({n: loos[n] for n in matched})
            methods.update(dict.fromkeys(matched, "psis+mm"))
        except CaltarsError as exc:
            note(f"moment matching not possible ({exc}); {n_folds}-fold cross-validation instead")
            kfold = True
        else:
            if still:
                note(
                    f"after moment matching: {still} still has a unit with Pareto k > "
                    f"{K_THRESHOLD} (matching stopped there); {refit}"
                )
                kfold = True
    if kfold:
        try:
            elpds = _kfold_all(fits, by, n_folds, fit_options, scheduler, workers, seed, quiet)
            methods = dict.fromkeys(fits, f"kfold({n_folds})")
            loos = psis  # the k columns then describe plain PSIS, which K-fold replaced
        except SchedulerError:
            raise  # where to run was asked for and is wrong: no silent fallback
        except CaltarsError as exc:
            unmatched = [n for n in bad if methods[n] == "psis"]
            rest = f" ({', '.join(unmatched)} not moment matched)" if unmatched else ""
            note(f"K-fold not possible ({exc}); PSIS-LOO kept{rest}")
    out = _table(fits, loos, elpds, methods, by)
    out.attrs["warnings"] = messages
    return out[COMPARE_COLUMNS]


def _kfold_all(
    fits: Mapping[str, Fit],
    by: str,
    n_folds: int,
    fit_options: Mapping[str, Any] | None,
    scheduler: Any,
    workers: int | None,
    seed: int,
    quiet: bool,
) -> dict[str, ELPDData]:
    """Every model's elpd by K-fold (:func:`kfold_fits`), with progress."""
    with Progress("compare: K-fold refit", n_folds * len(fits), quiet=quiet) as bar:
        run = {"scheduler": scheduler, "workers": workers, "progress": bar}
        kf = kfold_fits(fits, by, n_folds, seed=seed, fit_options=fit_options, **run)
    return dict(kf)


def _moment_match(
    fits: Mapping[str, Fit], loos: dict[str, ELPDDataLOO], bad: list[str], by: str, quiet: bool
) -> tuple[list[str], str | None]:
    """Replace the PSIS-LOO of each model in ``bad`` by its moment-matched one, with progress.

    Stops at the first unit, of any model, whose k stays above
    :data:`K_THRESHOLD`: every model is then K-folded, so matching the rest
    would be thrown away. Returns the models matched (the last one perhaps
    in part) and the one that stopped it (None when every high-k unit came
    below the threshold).
    """
    matched: list[str] = []
    with Progress("compare: moment matching", len(bad), quiet=quiet) as bar:
        for n in bad:
            bar.working(f"{n} ({_n_high(loos[n])} high-k units)")
            loos[n] = loo_moment_match_fit(fits[n], loos[n], by, stop_above=K_THRESHOLD)
            matched.append(n)
            bar.advance()
            if _n_high(loos[n]):
                return matched, n
    return matched, None


def _n_high(lo: ELPDDataLOO) -> int:
    """Number of units with Pareto k above :data:`K_THRESHOLD`."""
    return int(np.sum(lo.pareto_k.values > K_THRESHOLD))


def _detail(names: list[str], loo: Mapping[str, ELPDDataLOO], by: str) -> str:
    """The high-k units of each named model, for a warning."""
    return "; ".join(
        f"{n}: {_n_high(loo[n])} of {loo[n].n_data_points} {by}s with Pareto k > {K_THRESHOLD} "
        f"(max {float(np.nanmax(loo[n].pareto_k.values)):.2f})"
        for n in names
    )


def _table(
    fits: Mapping[str, Fit],
    loos: Mapping[str, ELPDDataLOO],
    elpds: Mapping[str, ELPDData],
    methods: Mapping[str, str],
    by: str,
) -> pd.DataFrame:
    """The comparison table (best model first) from the elpd estimates and PSIS-LOOs."""
    k_max = {n: float(np.nanmax(lo.pareto_k.values)) for n, lo in loos.items()}
    n_high = {n: _n_high(lo) for n, lo in loos.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # arviz's own k and |diff| < 4 notes
        table = az_compare(elpds, method="stacking", round_to="none")
    out = pd.DataFrame(
        {
            "name": [str(n) for n in table.index],
            "elpd": table["elpd"].to_numpy(float),
            "se": table["se"].to_numpy(float),
            "elpd_diff": table["elpd_diff"].to_numpy(float),
            "dse": table["dse"].to_numpy(float),
            "weight": table["weight"].to_numpy(float),
            "p_loo": table["p"].to_numpy(float),
            "pareto_k_max": [k_max[n] for n in table.index],
            "n_high_k": [n_high[n] for n in table.index],
            "n_units": [loos[n].n_data_points for n in table.index],
            "by": by,
            "method": [methods[n] for n in table.index],
            "converged": [bool(fits[n].converged) for n in table.index],
        }
    )
    # model minus best (<= 0), as arviz-stats >= 1.3 reports it (older releases: best minus model)
    out["elpd_diff"] = out["elpd"] - out["elpd"].iloc[0]
    out.attrs["diagnostics"] = "; ".join(
        f"{n}: {fits[n].diagnostics.banner()}" for n in out["name"]
    )
    return out


def plot_compare(table: pd.DataFrame) -> Figure:
    """Plot a comparison table: each model's elpd difference from the best, +- its SE (dSE).

    Drawn by ``arviz_plots.plot_compare`` on the relative scale (best model at
    0, at the top); each label holds the model's stacking weight and, where
    PSIS had them, its number of units with Pareto k > 0.7 ("PSIS k" when
    K-fold replaced PSIS); the x label says how elpd was estimated
    (``method``) and what was left out.

    Returns
    -------
    matplotlib Figure (one panel).
    """
    import arviz_plots as azp

    tab = table.reset_index(drop=True)
    n = len(tab)
    k_label = "PSIS k>0.7" if str(tab["method"].iloc[0]).startswith("kfold") else "k>0.7"
    labels = [
        f"{r.name}  (w = {r.weight:.2f}{f', {k_label}: {int(r.n_high_k)}' if r.n_high_k else ''})"
        for r in tab.itertuples()
    ]
    pc = azp.plot_compare(
        tab.set_axis(labels, axis=0),
        backend="matplotlib",
        figure_kwargs={"figsize": (6.5, 1.2 + 0.55 * n), "figsize_units": "inches"},
    )
    fig, ax = pc.viz["figure"].item(), pc.viz["plot"].item()
    method = tab["method"].iloc[0] if "method" in tab else ""
    by = tab["by"].iloc[0] if "by" in tab else ""
    where = f" ({method}, leave one {by} out)" if by else ""
    ax.set_xlabel(f"elpd difference from the best \u00b1 dSE{where}")
    if "converged" in tab and not tab["converged"].all():
        ax.set_title("NOT CONVERGED fit(s): read with caution", fontsize="small", color="firebrick")
    elif table.attrs.get("diagnostics", ""):
        ax.set_title("higher is better; all fits converged", fontsize="small")
    else:
        ax.set_title("higher is better", fontsize="small")
    fig.tight_layout()
    return fig
