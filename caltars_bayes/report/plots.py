"""The report's own figures: trace and rank plots of flagged parameters, and the judges.

:func:`flagged_parameters` picks the draws of the worst flagged parameters (the
diagnostics' offenders, else the standard-deviation hyperparameters of an
unconverged fit); :func:`plot_flagged_trace` and :func:`plot_flagged_rank` draw
them with arviz-plots. :func:`plot_judges` shows judge severity and
log discrimination with their HDIs as an arviz-plots forest plot.
:func:`verdict_title` gives every report figure a title carrying the fit's
convergence verdict.
"""

from __future__ import annotations

import math
import textwrap
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from caltars_bayes._core.dims import CI_PROB, SAMPLE_DIMS
from caltars_bayes._core.errors import CaltarsError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from caltars_bayes.inference.fit import Fit

#: Flagged parameters shown in the trace and rank plots.
MAX_FLAGGED = 6
#: the name of the judges' log discrimination in :func:`judge_draws`
LOG_DISCRIMINATION = "log discrimination"
#: judges shown at most in the judges figure (:func:`shown_judges`). Measured
#: (benchmarks/real_size.py, crossed shape: 2,972 judges) a forest of every
#: judge was 1,660 inches tall and took 97 s to draw and write.
MAX_FOREST_JUDGES = 40


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


def verdict_title(fig: Figure, title: str, fit: Fit) -> None:
    """Give ``fig`` a title that carries the fit's convergence verdict (red when not converged)."""
    d = fit.diagnostics
    if not d.converged:
        title += "\n" + "\n".join(textwrap.wrap(d.verdict, 100))
    fig.suptitle(title, fontsize=10, color="black" if d.converged else "#c62828")


def judge_draws(fit: Fit) -> xr.Dataset:
    """The judges' draws as the judges figure shows them.

    Returns
    -------
    Dataset with ``severity`` (chain, draw, scale, judge), in logits: how much
    lower the judge rates than the panel on the scale (sums to zero over
    judges), and ``log discrimination`` (chain, draw, judge): the natural log
    of the judge's discrimination (sums to zero over judges: discrimination 1,
    log 0, is the average judge; +0.2 tracks alliance about 22% more
    sharply). Either is absent when the model has no such effect.
    """
    post = fit.posterior
    out = xr.Dataset()
    if "severity" in post:
        out["severity"] = post["severity"].transpose(*SAMPLE_DIMS, "scale", "judge")
    if "discrimination" in post:
        out[LOG_DISCRIMINATION] = np.log(post["discrimination"])
    return out.reset_coords(drop=True)


def shown_judges(draws: xr.Dataset, max_judges: int = MAX_FOREST_JUDGES) -> list[str] | None:
    """The judges the judges figure shows when there are more than ``max_judges``.

    The ``max_judges`` judges farthest from the average judge: by the largest
    absolute posterior median of any of their severities and their log
    discrimination (all are 0 for the average judge), in the table's order.
    None when every judge is shown.
    """
    judges = draws["judge"].values
    if len(judges) <= max_judges:
        return None
    far = np.zeros(len(judges))
    for v in draws.data_vars:
        med = abs(draws[v].median(SAMPLE_DIMS))
        other = [d for d in med.dims if d != "judge"]
        if other:
            med = med.max(other)
        far = np.maximum(far, np.asarray(med.transpose("judge").values, dtype=float))
    keep = np.sort(np.argsort(-far, kind="stable")[:max_judges])
    return [str(j) for j in judges[keep]]


def plot_judges(fit: Fit) -> Figure:
    """Judge severity (per scale) and log discrimination: posterior medians, 50% and 95% HDIs.

    A forest plot (:func:`arviz_plots.plot_forest`) of :func:`judge_draws`:
    one row per scale and judge for severity (logits; higher: the judge rates
    lower), one per judge for log discrimination (0: the average judge;
    higher: ratings track alliance more sharply), one colour per judge. Both
    are centred at zero (a vertical line), so one axis holds them. With more
    than :data:`MAX_FOREST_JUDGES` judges it shows the judges farthest from
    the average (:func:`shown_judges`) and its title says so (every judge is
    in ``judges.csv``). Raises :class:`CaltarsError` for a fit without judge
    effects (one judge).
    """
    import arviz_plots as azp
    from arviz_base.labels import BaseLabeller

    draws = judge_draws(fit)
    if not draws.data_vars:
        raise CaltarsError("this fit has no judge effects (one judge): nothing to plot")
    n_judges = draws.sizes["judge"]
    picked = shown_judges(draws)
    if picked is not None:
        draws = draws.sel(judge=picked)
    rows = sum(int(np.prod([draws[v].sizes[d] for d in draws[v].dims[2:]])) for v in draws)
    labels = ["__variable__", *(["scale"] if "severity" in draws else []), "judge"]
    options: dict[str, Any] = dict(
        combined=True,
        point_estimate="median",
        ci_kind="hdi",
        ci_probs=(0.5, CI_PROB),
        labels=labels,
        # shading alternate scales; arviz-plots 1.3 fails ("list index out of
        # range") shading a single scale, which needs no shading anyway
        shade_label="scale" if "severity" in draws and draws.sizes["scale"] > 1 else None,
        backend="matplotlib",
        labeller=BaseLabeller(),
        visuals={"shade": {"color": "#9e9e9e"}},
        figure_kwargs={"figsize": (8.0, 0.28 * rows + 1.3), "width_ratios": [1.2, 2.2]},
    )
    tree = xr.DataTree.from_dict({"posterior": draws})
    pc = azp.plot_forest(tree, aes={"color": ["judge"]}, **options)
    fig = pc.viz["figure"].item()
    forest = pc.viz["plot"].sel(column="forest").item()
    pc.viz["plot"].sel(column="labels").item().set_xticks([])
    forest.axvline(0, color="grey", lw=0.8, zorder=0)
    forest.set_xlabel("logits (severity: higher = rates lower; log discrimination: 0 = average)")
    title = f"Judges: posterior median, 50% and {CI_PROB:.0%} HDI"
    if picked is not None:
        title += (
            f" ({len(picked)} of {n_judges:,} judges: those farthest from the average; "
            "all in judges.csv)"
        )
    verdict_title(fig, title, fit)
    return fig
