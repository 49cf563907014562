"""The report's own figures: trace and rank plots of flagged parameters, and the judges.

:func:`flagged_parameters` picks the draws of the worst flagged parameters (the
diagnostics' offenders, else the standard-deviation hyperparameters of an
unconverged fit); :func:`plot_flagged_trace` and :func:`plot_flagged_rank` draw
them with arviz-plots. :func:`plot_judges` shows judge severity and
discrimination with their HDIs.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import xarray as xr

from caltars_bayes._core.errors import CaltarsError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from caltars_bayes.inference.fit import Fit

#: Flagged parameters shown in the trace and rank plots.
MAX_FLAGGED = 6


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
