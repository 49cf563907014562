"""Power of a plan's designs: the power table (with Monte Carlo intervals) and its plot.

The power of a design for an effect is the share of replications whose
decision succeeded (:func:`caltars_bayes.studies.planning.run_replication`),
with a 95% Wilson interval (:func:`wilson_interval`) for the Monte Carlo error.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy.stats import norm

from caltars_bayes.studies.plan_spec import (
    DESIGN_COLUMNS,
    EFFECT_COLUMNS,
    Plan,
    reliability_rule,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def wilson_interval(k: Any, n: Any, prob: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of a binomial proportion ``k / n`` (NaN where n = 0)."""
    k, n = np.asarray(k, dtype=float), np.asarray(n, dtype=float)
    z = norm.ppf(0.5 + prob / 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        ph = k / n
        centre = (ph + z**2 / (2 * n)) / (1 + z**2 / n)
        half = z * np.sqrt(ph * (1 - ph) / n + z**2 / (4 * n**2)) / (1 + z**2 / n)
    return np.clip(centre - half, 0.0, 1.0), np.clip(centre + half, 0.0, 1.0)


def power_table(results: pd.DataFrame, plan: Plan) -> pd.DataFrame:
    """Power per design x effect from the replication results.

    Returns
    -------
    DataFrame, one row per design x effect, columns ``subjects, sessions,
    judges, items, association, reliability`` (design and effect; ``items``
    and unused effects empty), ``method``, ``replications`` (planned),
    ``done`` (finished), ``converged_share`` (share of fits whose convergence
    verdict was "converged"), ``max_rhat`` (largest R-hat of any fit, NUTS
    only), ``divergent_share`` (share of fits with divergences); when the plan decides associations:
    ``association_power`` with ``association_power_low/high`` (95% Wilson
    interval of the Monte Carlo error), ``association_width`` (mean 95%
    interval width), ``association_estimate`` (mean posterior mean);
    when it decides reliability: ``reliability_power`` (+ ``_low/_high``),
    ``reliability_reached`` (mean posterior median), ``reliability_width``
    (mean 95% HDI width), ``reliability_true`` (mean true value).
    ``attrs["diagnostics"]``: how many fits converged.
    """
    keys = DESIGN_COLUMNS + EFFECT_COLUMNS
    grid = pd.DataFrame(
        [
            {**dataclasses.asdict(d), **dataclasses.asdict(e)}
            for d, e in itertools.product(plan.designs, plan.effects)
        ]
    )
    res = results.copy()
    for c in keys:
        if c not in res:
            res[c] = np.nan
    for df in (grid, res):
        for c in keys:
            df[c] = df[c].astype(float)
    rows = []
    for _, g in grid.iterrows():
        sel = np.ones(len(res), dtype=bool)
        for c in keys:
            sel &= (res[c] == g[c]).to_numpy() | (res[c].isna() & pd.isna(g[c])).to_numpy()
        r = res[sel]
        row = {c: g[c] for c in keys}
        row |= {
            "method": plan.method,
            "replications": plan.replications,
            "done": len(r),
            "converged_share": float(r["converged"].astype(bool).mean()) if len(r) else np.nan,
            "max_rhat": float(r["max_rhat"].max()) if len(r) and "max_rhat" in r else np.nan,
            "divergent_share": float((r["divergences"] > 0).mean())
            if len(r) and "divergences" in r
            else np.nan,
        }
        if plan.association is not None:
            k = int(r["association_supported"].astype(bool).sum()) if len(r) else 0
            lo, hi = wilson_interval(k, len(r))
            row |= {
                "association_power": k / len(r) if len(r) else np.nan,
                "association_power_low": float(lo),
                "association_power_high": float(hi),
                "association_width": float(
                    (r["association_hdi_high"] - r["association_hdi_low"]).mean()
                )
                if len(r)
                else np.nan,
                "association_estimate": float(r["association_mean"].mean()) if len(r) else np.nan,
            }
        if plan.reliability is not None:
            k = int(r["reliability_supported"].astype(bool).sum()) if len(r) else 0
            lo, hi = wilson_interval(k, len(r))
            row |= {
                "reliability_power": k / len(r) if len(r) else np.nan,
                "reliability_power_low": float(lo),
                "reliability_power_high": float(hi),
                "reliability_reached": float(r["reliability_median"].mean()) if len(r) else np.nan,
                "reliability_width": float(
                    (r["reliability_hdi_high"] - r["reliability_hdi_low"]).mean()
                )
                if len(r)
                else np.nan,
                "reliability_true": float(r["reliability_true"].mean()) if len(r) else np.nan,
            }
        rows.append(row)
    out = pd.DataFrame(rows)
    for c in ("subjects", "sessions", "judges"):
        out[c] = out[c].astype(int)
    out["items"] = out["items"].astype("Int64")
    n_conv = int(results["converged"].astype(bool).sum()) if len(results) else 0
    if plan.method == "nuts":
        verdict = f"{n_conv} of {len(results)} NUTS fits converged"
    elif plan.method == "classical":
        verdict = "classical analysis (no MCMC)"
    else:
        verdict = f"APPROXIMATE fits ({plan.method}): convergence diagnostics do not apply"
    out.attrs["diagnostics"] = verdict
    return out


def plot_power(power: pd.DataFrame, plan: Plan) -> Figure:
    """Power curves: power against subjects, one line per other design factors x effect.

    Error bars are the 95% Monte Carlo (Wilson) intervals; the dashed line is
    80% power.
    """
    import matplotlib.pyplot as plt

    kinds = [k for k in ("association", "reliability") if getattr(plan, k) is not None]
    fig, axes = plt.subplots(1, len(kinds), figsize=(6 * len(kinds), 4), squeeze=False)
    others = ["sessions", "judges", "items"]
    for ax, kind in zip(axes[0], kinds, strict=True):
        groups = power.groupby(others + EFFECT_COLUMNS, dropna=False, sort=True)
        for i, (key, g) in enumerate(groups):
            ses, jud, items, assoc, rel = key
            label = f"{ses} sess, {jud} judges" + ("" if pd.isna(items) else f", {items} items")
            if not pd.isna(assoc):
                label += f", r={assoc:g}"
            if not pd.isna(rel):
                label += f", rel={rel:g}"
            g = g.sort_values("subjects")
            y = g[f"{kind}_power"]
            err = np.vstack([y - g[f"{kind}_power_low"], g[f"{kind}_power_high"] - y]).clip(0)
            ax.errorbar(
                g["subjects"], y, yerr=err, marker="o", capsize=3, label=label, color=f"C{i % 10}"
            )
        ax.axhline(0.8, ls="--", color="0.5", lw=1)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("subjects")
        ax.set_ylabel("power")
        if kind == "association":
            prob = plan.association.prob if plan.association else float("nan")
            ax.set_title(f"association with {plan.association_scale} supported (P >= {prob:g})")
        else:
            rule = reliability_rule(plan)
            ax.set_title(
                f"{rule.level} {rule.coefficient} >= {rule.threshold:g} (P >= {rule.prob:g})"
            )
        ax.legend(fontsize=7)
    fig.suptitle(
        f"{plan.name}: {plan.method}, {plan.replications} replications; "
        f"{power.attrs.get('diagnostics', '')}",
        fontsize=9,
    )
    fig.tight_layout()
    return fig
