"""Convergence diagnostics checked on every fit.

A fit is *converged* when, over every reported quantity, rank-normalised split
R-hat <= 1.01, bulk and tail ESS >= 400, there are no divergent transitions,
E-BFMI >= 0.3 in every chain and no draw saturated the maximum tree depth.
Unconverged fits still save, but every table and report carries the verdict.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from caltars_bayes.inference.mcmcstats import ConvergenceCache, dataset_convergence

RHAT_MAX = 1.01
ESS_MIN = 400.0
EBFMI_MIN = 0.3
#: Variables with more elements than this (per-session values of very large
#: trials) are checked on a seeded random subset of this many elements; the
#: Diagnostics say so (``subsampled``). Every smaller variable is checked whole.
MAX_CHECKED = 10_000

#: Suffixes of posterior variables that are bookkeeping, not reported quantities:
#: non-centred standard normals, uncentred raw values, Cholesky factors and the
#: Beta variable of a two-variable LKJ (their reported transforms are checked).
_BOOKKEEPING = ("_z", "_raw", "_chol", "_beta")
#: Sample-stat names used by different samplers for the same things.
_DIVERGING = ("diverging",)
_DEPTH_HIT = ("maxdepth_reached", "reached_max_treedepth")
_ENERGY = ("energy",)


@dataclass
class Diagnostics:
    """The convergence verdict of a fit and the numbers behind it."""

    converged: bool
    max_rhat: float
    min_ess_bulk: float
    min_ess_tail: float
    divergences: int
    treedepth_hits: int
    ebfmi: list[float]
    n_chains: int
    n_draws: int
    approximate: bool = False
    #: for approximate fits: the method and the Pareto k-hat of its importance
    #: ratios log p - log q (see caltars_bayes.inference.approx)
    approx_method: str = ""
    pareto_k: float | None = None
    #: variables checked on a random subset: {name: [checked, total]}
    subsampled: dict[str, list[int]] = field(default_factory=dict)
    offenders: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    #: one line when the fit took more draws than asked for to reach the verdict
    #: (:mod:`caltars_bayes.inference.extend`); '' otherwise
    extension: str = ""
    thresholds: dict[str, float] = field(
        default_factory=lambda: {"rhat_max": RHAT_MAX, "ess_min": ESS_MIN, "ebfmi_min": EBFMI_MIN}
    )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Diagnostics:
        return cls(**d)

    @property
    def verdict(self) -> str:
        if self.approximate:
            return "APPROXIMATE (not MCMC): convergence diagnostics do not apply"
        return "converged" if self.converged else "NOT CONVERGED"

    def banner(self) -> str:
        """One line for the top of every table and report."""
        if self.approximate:
            how = self.approx_method or "variational/pathfinder"
            if self.pareto_k is not None:
                how += f", Pareto k-hat {self.pareto_k:.2f}"
            return f"WARNING: approximate fit ({how}): intervals are not MCMC posteriors"
        extended = f" ({self.extension})" if self.extension else ""
        if self.converged:
            return (
                f"Converged: max R-hat {self.max_rhat:.3f}, min bulk ESS {self.min_ess_bulk:.0f}, "
                f"min tail ESS {self.min_ess_tail:.0f}, {self.divergences} divergences{extended}"
            )
        return "WARNING: NOT CONVERGED: " + "; ".join(self.problems) + extended

    def __str__(self) -> str:
        lines = [self.banner()]
        if self.approximate:
            lines.extend(f"  {p}" for p in self.problems)
            return "\n".join(lines)
        lines.append(
            f"chains {self.n_chains} x draws {self.n_draws}; divergences {self.divergences}; "
            f"tree-depth hits {self.treedepth_hits}; "
            f"E-BFMI {', '.join(f'{e:.2f}' for e in self.ebfmi) or 'n/a'}"
        )
        for name, (k, total) in self.subsampled.items():
            lines.append(f"  {name}: a random {k:,} of its {total:,} values checked")
        for o in self.offenders[:10]:
            lines.append(
                f"  {o['parameter']}: R-hat {o['rhat']:.3f}, bulk ESS {o['ess_bulk']:.0f}, "
                f"tail ESS {o['ess_tail']:.0f}"
            )
        if len(self.offenders) > 10:
            lines.append(f"  ... and {len(self.offenders) - 10} more")
        return "\n".join(lines)


def _stat(ss: xr.Dataset | None, names: tuple[str, ...]) -> xr.DataArray | None:
    if ss is None:
        return None
    for n in names:
        if n in ss:
            return ss[n]
    return None


def _ebfmi(energy: xr.DataArray) -> list[float]:
    """E-BFMI per chain: the mean squared change of the energy from one draw to
    the next, divided by the energy's variance with divisor n (Betancourt 2016,
    Stan, ArviZ 0.x). ``arviz_stats.bfmi`` (1.3) divides by the variance with
    divisor n - 1, so it is smaller by the factor (n - 1) / n (2% at 50 draws):
    kept here so that verdicts near 0.3 do not move."""
    e = np.asarray(energy.transpose("chain", "draw").values, dtype=float)
    num = np.mean(np.diff(e, axis=1) ** 2, axis=1)
    den = np.var(e, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return [float(v) for v in num / den]


def reported_variables(posterior: xr.Dataset) -> list[str]:
    """Names of the posterior variables whose convergence is checked."""
    names = [str(v) for v in posterior.data_vars]
    return [v for v in names if not v.endswith(_BOOKKEEPING)]


def check_convergence(
    posterior: xr.Dataset,
    sample_stats: xr.Dataset | None = None,
    var_names: list[str] | None = None,
    approximate: bool = False,
    max_checked: int | None = MAX_CHECKED,
    cache: ConvergenceCache | None = None,
) -> Diagnostics:
    """Check R-hat, bulk/tail ESS, divergences, E-BFMI and tree depth.

    Elements that do not vary over draws (e.g. the unit diagonal of a
    correlation matrix) are skipped. Variables with more than ``max_checked``
    elements are checked on a seeded random subset of that size (recorded in
    ``Diagnostics.subsampled``). R-hat and ESS come from
    :mod:`caltars_bayes.inference.mcmcstats` (ArviZ's definitions, vectorised);
    with a ``cache`` (:class:`~caltars_bayes.inference.mcmcstats.ConvergenceCache`)
    they are kept for the fit's summary table. Returns a :class:`Diagnostics`.
    """
    if isinstance(posterior, xr.DataTree):
        posterior = posterior.to_dataset()
    if isinstance(sample_stats, xr.DataTree):
        sample_stats = sample_stats.to_dataset()
    names = var_names or reported_variables(posterior)
    post = posterior[names]
    n_chains, n_draws = int(post.sizes["chain"]), int(post.sizes["draw"])
    offenders: list[dict[str, Any]] = []
    subset: dict[str, tuple[int, int]] = {}
    max_rhat, min_bulk, min_tail = 1.0, np.inf, np.inf
    if not approximate:
        r, eb, et, subset = dataset_convergence(post, max_values=max_checked, cache=cache)
        spread = post.max(("chain", "draw")) - post.min(("chain", "draw"))
        for v in names:
            varies = np.asarray(spread[v].values) > 1e-12
            rv = np.where(varies, np.asarray(r[v].values, dtype=float), np.nan)
            bv = np.where(varies, np.asarray(eb[v].values, dtype=float), np.nan)
            tv = np.where(varies, np.asarray(et[v].values, dtype=float), np.nan)
            if not np.any(varies):
                continue
            if np.any(np.isfinite(rv)):
                max_rhat = max(max_rhat, float(np.nanmax(rv)))
            if np.any(np.isfinite(bv)):
                min_bulk = min(min_bulk, float(np.nanmin(bv)))
            if np.any(np.isfinite(tv)):
                min_tail = min(min_tail, float(np.nanmin(tv)))
            bad = (rv > RHAT_MAX) | (bv < ESS_MIN) | (tv < ESS_MIN)
            if np.any(bad):
                da = r[v]
                for flat in np.flatnonzero(bad.ravel()):
                    idx = np.unravel_index(flat, bad.shape)
                    label = v
                    if da.dims:
                        parts = [
                            str(da.coords[d].values[i]) for d, i in zip(da.dims, idx, strict=True)
                        ]
                        label = f"{v}[{', '.join(parts)}]"
                    offenders.append(
                        {
                            "parameter": label,
                            "rhat": float(rv[idx]),
                            "ess_bulk": float(bv[idx]),
                            "ess_tail": float(tv[idx]),
                        }
                    )
    offenders.sort(key=lambda o: (o["ess_bulk"], -o["rhat"]))

    div = _stat(sample_stats, _DIVERGING)
    divergences = int(div.sum()) if div is not None else 0
    depth = _stat(sample_stats, _DEPTH_HIT)
    depth_hits = int(depth.sum()) if depth is not None else 0
    energy = _stat(sample_stats, _ENERGY)
    ebfmi = _ebfmi(energy) if energy is not None else []

    problems: list[str] = []
    if not approximate:
        # R-hat needs two chains and ESS four draws: a fit that cannot be checked
        # is not reported as converged
        if n_chains < 2:
            problems.append("1 chain: R-hat (agreement between chains) cannot be checked")
        if n_draws < 4:
            problems.append(f"{n_draws} draws: ESS cannot be estimated (at least 4 needed)")
        if max_rhat > RHAT_MAX:
            problems.append(f"max R-hat {max_rhat:.3f} > {RHAT_MAX}")
        if min_bulk < ESS_MIN:
            problems.append(f"min bulk ESS {min_bulk:.0f} < {ESS_MIN:.0f}")
        if min_tail < ESS_MIN:
            problems.append(f"min tail ESS {min_tail:.0f} < {ESS_MIN:.0f}")
        if divergences:
            problems.append(f"{divergences} divergent transitions")
        if depth_hits:
            problems.append(f"{depth_hits} draws hit the maximum tree depth")
        low = [i for i, e in enumerate(ebfmi) if not e >= EBFMI_MIN]
        if low:
            problems.append(f"E-BFMI < {EBFMI_MIN} in chain(s) {', '.join(map(str, low))}")
        if offenders:
            problems.append(f"{len(offenders)} parameter(s) below thresholds")
    else:
        problems.append("approximate fit: no MCMC diagnostics")
    return Diagnostics(
        converged=not approximate and not problems,
        max_rhat=float(max_rhat),
        min_ess_bulk=float(min_bulk if np.isfinite(min_bulk) else np.nan),
        min_ess_tail=float(min_tail if np.isfinite(min_tail) else np.nan),
        divergences=divergences,
        treedepth_hits=depth_hits,
        ebfmi=ebfmi,
        n_chains=n_chains,
        n_draws=n_draws,
        approximate=approximate,
        subsampled={k: list(v) for k, v in subset.items()},
        offenders=offenders,
        problems=problems,
    )


def stamp(df: pd.DataFrame, diagnostics: Diagnostics) -> pd.DataFrame:
    """Add a fit's verdict to a table: a ``converged`` column and ``attrs["diagnostics"]``.

    ``converged`` is on every row, so it survives CSV export; approximate fits
    (Pathfinder, ADVI) also get an ``approximate`` column holding the method
    name, and are never ``converged``.
    """
    df["converged"] = diagnostics.converged
    if diagnostics.approximate:
        df["approximate"] = diagnostics.approx_method or "yes"
    df.attrs["diagnostics"] = diagnostics.banner()
    return df
