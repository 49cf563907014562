"""Uniformity of SBC ranks: arviz-stats' POT-C test per quantity, arviz-plots' PIT ECDF figure.

A rank on ``0..L`` becomes a continuous PIT value ``(rank + u) / (L + 1)``,
``u`` uniform on (0, 1): exactly uniform on (0, 1) when the ranks are
uniform, with no ties. The PIT values of each quantity (one per simulation)
are tested by POT-C (``arviz_stats`` ``uniformity_test``, Tesso & Vehtari):
for the ``i``-th smallest of ``n`` values, a two-sided beta test that it
follows the ``i``-th uniform order statistic, the ``n`` tests combined by
the truncated Cauchy method into one p-value. A quantity *fails* when its
p-value is below ``0.05 / (number of quantities)`` (Bonferroni: a calibrated
model fails nothing 95% of the time).

Why POT-C and not our former pair (chi-square on binned ranks and a
Kolmogorov-type ECDF test, each at half the level): on ranks of a conjugate
normal model (200 simulations, L = 99, 400 replicates) both hold their level,
and POT-C is the more powerful against every departure tried, e.g. at the
Bonferroni level of 30 quantities: posterior sd x 0.8 (U-shaped ranks)
0.42 vs 0.24, sd x 1.25 (central ranks) 0.13 vs 0.08, bias of 0.3 posterior
sd 0.74 vs 0.51 (the same ordering for 100 simulations, L = 49).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import xarray as xr
from arviz_base import rc_context
from arviz_stats.base import array_stats
from arviz_stats.ecdf_utils import ecdf_pit

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: Probability of the simultaneous band drawn around each ECDF difference.
BAND_PROB = 0.95


def pit_values(ranks: np.ndarray, n_ranks: int) -> np.ndarray:
    """Continuous PIT values ``(rank + u) / (L + 1)`` of ranks on ``0..L``.

    ``u`` is uniform on (0, 1) with a seed fixed by ``len(ranks)`` and ``L``,
    so the same ranks always give the same values (and p-value).
    """
    r = np.asarray(ranks, dtype=float)
    u = np.random.default_rng(20250101 + len(r) * 1009 + n_ranks).uniform(size=len(r))
    return (r + u) / (n_ranks + 1)


def pot_c_p_value(ranks: np.ndarray, n_ranks: int) -> float:
    """p-value of arviz-stats' POT-C test of ranks on ``0..L`` (of their :func:`pit_values`)."""
    return float(array_stats.uniformity_test(pit_values(ranks, n_ranks), method="pot_c")[0])


def uniformity_tests(ranks: pd.DataFrame, n_ranks: int, alpha: float = 0.05) -> pd.DataFrame:
    """POT-C test of uniform ranks, per quantity, with a Bonferroni verdict.

    Parameters
    ----------
    ranks : columns ``variable, quantity, rank`` (and optionally ``sim``, the
        order the ranks are read in, and ``ess_bulk``).
    n_ranks : ``L`` (ranks lie in 0..L).
    alpha : family-wise level; each quantity is tested at ``alpha / quantities``.

    Returns
    -------
    DataFrame, one row per quantity: ``variable, quantity, n_sims``,
    ``pot_c_p`` (:func:`pot_c_p_value`), ``mean_rank`` (mean rank / L: 0.5
    when centred, above when the posterior sits below the truth),
    ``low_ess_share`` (share of simulations whose bulk ESS was below L; NaN
    without ``ess_bulk``), ``fails`` (``pot_c_p`` below the Bonferroni level).
    ``attrs["level"]`` holds that level.
    """
    groups = list(ranks.groupby(["variable", "quantity"], sort=False))
    level = alpha / max(1, len(groups))
    rows = []
    for (var, q), g in groups:
        r = (g.sort_values("sim", kind="stable") if "sim" in g else g)["rank"].to_numpy(dtype=int)
        if r.min() < 0 or r.max() > n_ranks:
            raise ValueError(f"{q}: ranks outside 0..{n_ranks}")
        rows.append(
            {
                "variable": var,
                "quantity": q,
                "n_sims": len(r),
                "pot_c_p": pot_c_p_value(r, n_ranks),
                "mean_rank": float(r.mean() / n_ranks),
                "low_ess_share": float((g["ess_bulk"] < n_ranks).mean())
                if "ess_bulk" in g
                else np.nan,
            }
        )
    out = pd.DataFrame(rows)
    if len(out):
        out["fails"] = out["pot_c_p"] < level
    out.attrs["level"] = level
    return out


def pit_dataset(ranks: pd.DataFrame, n_ranks: int, variables: list[str]) -> xr.Dataset:
    """The PIT values (:func:`pit_values`) as a Dataset: one variable per ranked variable.

    ``ranks`` has columns ``sim, variable, quantity, rank``.

    Each has dims ``sim`` and, unless it is a single quantity, ``<variable>_q``
    labelled by what the quantity's brackets hold (``loading[A1, PC]`` ->
    ``"A1, PC"``), in the order of ``ranks``.
    """
    data = {}
    for var in variables:
        g = ranks[ranks["variable"] == var]
        order = list(dict.fromkeys(g["quantity"]))
        # sims in order, as uniformity_tests reads them; every sim ranks every quantity
        wide = g.pivot(index="sim", columns="quantity", values="rank")[order].dropna()
        pit = np.column_stack([pit_values(wide[q].to_numpy(int), n_ranks) for q in order])
        if order == [var]:
            data[var] = xr.DataArray(pit[:, 0], dims=("sim",))
        else:
            labels = [q[len(var) + 1 : -1] if q.startswith(f"{var}[") else q for q in order]
            data[var] = xr.DataArray(pit, dims=("sim", f"{var}_q"), coords={f"{var}_q": labels})
    return xr.Dataset(data)


def plot_ecdf_differences(
    ranks: pd.DataFrame, n_ranks: int, variables: list[str] | None = None, alpha: float = 0.05
) -> Figure:
    """PIT ECDF minus the uniform CDF, one panel per quantity (``arviz_plots.plot_ecdf_pit``).

    ``ranks`` has columns ``sim, variable, quantity, rank``; ``variables``
    picks the variables drawn (default all).

    Each panel is titled by the variable and the quantity's labels and shows
    its POT-C p-value (the ``pot_c_p`` of :func:`uniformity_tests`; "fails"
    below the Bonferroni level, where the points that drive the departure are
    marked). The grey area is the simultaneous 95% band of a calibrated
    quantity for this many simulations (arviz-stats' ``ecdf_pit``).
    """
    import arviz_plots as azp
    from arviz_plots.visuals import fill_between_y

    level = alpha / max(1, int(ranks["quantity"].nunique()))  # the verdict's, over all
    variables = variables or list(dict.fromkeys(ranks["variable"]))
    ranks = ranks[ranks["variable"].isin(variables)]
    n_q = int(ranks["quantity"].nunique())
    ds = pit_dataset(ranks, n_ranks, variables)
    ncol = min(6, n_q)
    nrow = -(-n_q // ncol)
    with rc_context({"plot.max_subplots": max(n_q, 1)}):
        pc = azp.plot_ecdf_pit(
            xr.DataTree.from_dict({"sbc": ds}),
            group="sbc",
            sample_dims=["sim"],
            envelope_prob=1 - level,
            backend="matplotlib",
            col_wrap=ncol,
            visuals={
                "xlabel": {"text": "fractional rank"},
                "p_value_text": {"text": lambda p: f"p={p:.3f}" + (" fails" if p < level else "")},
            },
            figure_kwargs={"figsize": (2.7 * ncol, 2.0 * nrow + 0.4), "layout": "constrained"},
        )
    n = int(ranks.groupby("quantity").size().max())
    x, _, lower, upper = ecdf_pit(np.linspace(0, 1, n), BAND_PROB, 1000)
    pc.map(
        fill_between_y, "sbc_band", data=ds, x=x, y_bottom=lower - x, y_top=upper - x,
        step=True, color="B1", alpha=0.15, ignore_aes="all",
    )  # fmt: skip
    return pc.viz["figure"].item()
