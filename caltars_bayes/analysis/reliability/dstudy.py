"""Decision studies: projected reliability over numbers of judges, sessions and items."""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import xarray as xr

from caltars_bayes._core.dims import SAMPLE_DIMS
from caltars_bayes._core.errors import CaltarsError
from caltars_bayes._core.figures import close_figures, figure_files
from caltars_bayes._core.io import atomic_write_dir
from caltars_bayes.analysis.reliability.coefficients import (
    COEFFICIENTS,
    LEVELS,
    coefficient_from_components,
    reliability_draws,
)
from caltars_bayes.analysis.reliability.components import (
    COMPONENTS,
    NEW_JUDGES,
    OBSERVED_DRAWS,
    ROUTES,
    _posterior_latent_components,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from caltars_bayes.inference.fit import Fit


@dataclass
class DStudy:
    """A decision study: projected reliability over numbers of judges and sessions.

    Attributes
    ----------
    table : DataFrame, one row per scale x judges x sessions (x items), columns
        ``scale, judges, sessions, [items,] ratings`` (judges x sessions
        [x items] per subject), ``median``, ``low``, ``high`` (the ``band``
        equal-tailed interval), ``p_reach`` (posterior probability the
        coefficient reaches ``target``), ``smallest`` (the scale's smallest
        design reaching it with probability >= ``prob``), ``converged``.
    smallest : DataFrame, one row per scale: ``scale, judges, sessions,
        [items,] ratings, median, p_reach, reached`` (NaN and ``reached`` False
        when no design in the grid reaches the target).
    draws : the per-draw coefficients, dims ``(chain, draw, scale, judges,
        sessions[, items])``.
    """

    table: pd.DataFrame
    smallest: pd.DataFrame
    draws: xr.DataArray
    target: float
    prob: float
    level: str
    coefficient: str
    route: str
    band: float
    diagnostics: str
    notes: list[str] = field(default_factory=list)

    def plot(self) -> Figure:
        """Reliability curves with bands: one panel per scale.

        Treatment level: x = sessions, one curve per number of judges.
        Session level: x = judges. Dashed line: the target; star: the smallest
        design reaching it with probability >= ``prob``.
        """
        import matplotlib.pyplot as plt

        t = self.table
        if "items" in t.columns:  # plot the instrument's own item count
            t = t[t["items"] == t["items"].max()]
        scales = list(dict.fromkeys(t["scale"]))
        ncol = min(3, len(scales))
        nrow = int(np.ceil(len(scales) / ncol))
        fig, axes = plt.subplots(
            nrow, ncol, figsize=(4.2 * ncol, 3.4 * nrow), squeeze=False, sharey=True
        )
        judges = sorted(t["judges"].unique())
        cmap = plt.get_cmap("viridis")
        for ax, scale in zip(axes.ravel(), scales, strict=False):
            s = t[t["scale"] == scale]
            if self.level == "treatment" and s["sessions"].nunique() > 1:
                for n, j in enumerate(judges):
                    c = cmap(n / max(1, len(judges) - 1))
                    sj = s[s["judges"] == j].sort_values("sessions")
                    ax.plot(sj["sessions"], sj["median"], color=c, label=f"{j} judge(s)")
                    ax.fill_between(sj["sessions"], sj["low"], sj["high"], color=c, alpha=0.12)
                ax.set_xlabel("sessions per subject")
                xcol = "sessions"
            else:
                s1 = s.sort_values("judges")
                ax.plot(s1["judges"], s1["median"], color=cmap(0.3), label="median")
                ax.fill_between(s1["judges"], s1["low"], s1["high"], color=cmap(0.3), alpha=0.2)
                ax.set_xlabel("judges")
                xcol = "judges"
            ax.axhline(self.target, color="k", ls="--", lw=0.8)
            best = self.smallest[self.smallest["scale"] == scale]
            if len(best) and bool(best["reached"].iloc[0]):
                ax.plot(best[xcol].iloc[0], best["median"].iloc[0], "*", color="crimson", ms=12)
                ax.annotate(
                    f"{int(best['judges'].iloc[0])} j x {int(best['sessions'].iloc[0])} s",
                    (best[xcol].iloc[0], best["median"].iloc[0]),
                    textcoords="offset points", xytext=(6, -12), fontsize=8, color="crimson",
                )  # fmt: skip
            ax.set_title(scale)
            ax.set_ylim(0, 1)
            ax.grid(alpha=0.3)
        for ax in axes.ravel()[len(scales) :]:
            ax.set_visible(False)
        axes[0, 0].set_ylabel(f"{self.coefficient} ({self.route})")
        if self.level == "treatment" and len(judges) > 1:
            axes[0, -1 if len(scales) >= ncol else 0].legend(fontsize=7, loc="lower right")
        fig.suptitle(
            f"Decision study, {self.level} level: median and {self.band:.0%} band; "
            f"target {self.target:g} with P >= {self.prob:g}\n{self.diagnostics}",
            fontsize=9,
        )
        fig.tight_layout()
        return fig

    def save(self, out_dir: str | Path, force: bool = False) -> list[Path]:
        """Write ``dstudy.csv``, ``dstudy.png`` and ``dstudy.svg`` atomically into ``out_dir``."""
        fig = self.plot()
        try:
            files = {
                "dstudy.csv": lambda p: self.table.to_csv(p, index=False),
                **figure_files("dstudy", fig),
            }
            return atomic_write_dir(Path(out_dir), files, force=force)
        finally:
            close_figures([fig])


def parse_counts(text: str, what: str) -> list[int]:
    """Parse ``"1-8"``, ``"1,2,4"`` or ``"1-3,6"`` into sorted whole numbers >= 1.

    Raises :class:`~caltars_bayes._core.errors.CaltarsError` (one line naming
    ``what``) on anything else.
    """
    out: set[int] = set()
    for part in str(text).split(","):
        part = part.strip()
        lo, sep, hi = part.partition("-")
        try:
            a = int(lo)
            b = int(hi) if sep else a
        except ValueError:
            raise CaltarsError(
                f"{what} {text!r}: use a range or list of whole numbers, e.g. 1-8 or 1,2,4"
            ) from None
        if a < 1 or b < a:
            raise CaltarsError(f"{what} {text!r}: numbers must be >= 1 and ranges ascending")
        out.update(range(a, b + 1))
    return sorted(out)


def _as_counts(values: Iterable[int] | int, what: str) -> list[int]:
    vals = [values] if isinstance(values, int | np.integer) else list(values)
    try:
        out = sorted({int(v) for v in vals})
    except (TypeError, ValueError):
        raise CaltarsError(f"{what}: expected whole numbers, got {vals!r}") from None
    if not out or out[0] < 1 or any(float(v) != int(v) for v in vals):
        raise CaltarsError(f"{what}: expected whole numbers >= 1, got {vals!r}")
    return out


def dstudy(
    fit: Fit,
    judges: Iterable[int] = range(1, 9),
    sessions: Iterable[int] = range(1, 13),
    target: float = 0.8,
    prob: float = 0.9,
    level: str = "treatment",
    *,
    coefficient: str = "agreement",
    route: str = "latent",
    items: Iterable[int] | None = None,
    band: float = 0.9,
    max_observed_draws: int | None = OBSERVED_DRAWS,
    n_new_judges: int = NEW_JUDGES,
    seed: int = 0,
) -> DStudy:
    """Project reliability for other numbers of judges and sessions (a decision study).

    For every posterior draw the variance components (latent or observed
    route) are put through :func:`coefficient_from_components`:

    - ``level="treatment"``: the generalizability coefficient of a subject's
      treatment-level score (mean over ``sessions`` sessions, each rated by
      the same ``judges`` judges) for the subject's alliance over the
      treatment, sessions and judges both random;
    - ``level="session"``: the session score (mean of ``judges`` judges) for
      the session's alliance; ``sessions`` is not a facet and is set to 1.

    ``items`` (latent route only) also varies the number of items per scale
    (the logistic residual is averaged over them).

    The smallest design reaching ``target`` with posterior probability >=
    ``prob`` is the one with the fewest ratings per subject (judges x
    sessions, x items when given), ties broken by fewer judges, then fewer
    sessions.

    Parameters
    ----------
    fit : a fitted model.
    judges, sessions : numbers to project (whole numbers >= 1).
    target : reliability to reach; prob : required posterior probability.
    level, coefficient : as in :func:`coefficient_from_components`.
    route : ``"latent"`` (every draw; default) or ``"observed"`` (observed
        scale scores by posterior prediction, thinned draws).
    band : probability of the equal-tailed band reported (``low``, ``high``).

    Returns
    -------
    DStudy
    """
    _check_options(level, coefficient, route, target, prob, band)
    j_list = _as_counts(judges, "judges")
    s_list = _as_counts(sessions, "sessions") if level == "treatment" else [1]
    notes: list[str] = []
    if level == "session":
        notes.append("session level: sessions are not a facet (set to 1)")
    jd = xr.DataArray(j_list, dims="judges", coords={"judges": j_list})
    sd = xr.DataArray(s_list, dims="sessions", coords={"sessions": s_list})
    if route == "latent":
        n_items = None
        if items is not None:
            i_list = _as_counts(items, "items")
            n_items = xr.DataArray(i_list, dims="items", coords={"items": i_list}).astype(float)
        comps = _posterior_latent_components(fit, n_items)
        n_used = int(fit.posterior.sizes["chain"] * fit.posterior.sizes["draw"])
    else:
        if items is not None:
            raise CaltarsError("item counts can be projected on the latent route only")
        ds = reliability_draws(
            fit, routes=("observed",), max_observed_draws=max_observed_draws,
            n_new_judges=n_new_judges, seed=seed,
        )  # fmt: skip
        comps = {c: ds[c].sel(route="observed", drop=True) for c in COMPONENTS}
        n_used = int(ds.attrs["observed_draws"])
        notes.append(f"observed route: {n_used} thinned draws, {n_new_judges} new judges each")
    rel = coefficient_from_components(
        comps,
        judges=jd,
        sessions=sd,
        level=level,
        coefficient=coefficient,
        generalize_sessions=level == "treatment",
    )
    if "sessions" not in rel.dims:  # session level: not a facet
        rel = rel.expand_dims(sessions=s_list)
    grid = [d for d in ("scale", "judges", "sessions", "items") if d in rel.dims]
    rel = rel.transpose("chain", "draw", *grid)
    table = _projection_table(rel, grid, target, band)
    best_rows = _mark_smallest(table, rel.coords["scale"].values, grid, prob)
    table["route"], table["coefficient"], table["level"] = route, coefficient, level
    table["converged"] = fit.diagnostics.converged
    table.attrs["diagnostics"] = fit.diagnostics.banner()
    table.attrs["n_draws"] = n_used
    smallest = pd.DataFrame(best_rows)
    for c in [*(g for g in grid if g != "scale"), "ratings"]:
        smallest[c] = smallest[c].astype("Int64")
    smallest["converged"] = fit.diagnostics.converged
    smallest.attrs["diagnostics"] = fit.diagnostics.banner()
    return DStudy(
        table=table,
        smallest=smallest,
        draws=rel,
        target=float(target),
        prob=float(prob),
        level=level,
        coefficient=coefficient,
        route=route,
        band=float(band),
        diagnostics=fit.diagnostics.banner(),
        notes=notes,
    )


def _check_options(
    level: str, coefficient: str, route: str, target: float, prob: float, band: float
) -> None:
    """Refuse (CaltarsError) a level, coefficient, route or probability out of range."""
    if level not in LEVELS:
        raise CaltarsError(f"level must be one of {', '.join(LEVELS)}, got {level!r}")
    if coefficient not in COEFFICIENTS:
        raise CaltarsError(f"coefficient must be one of {', '.join(COEFFICIENTS)}")
    if route not in ROUTES:
        raise CaltarsError(f"route must be one of {', '.join(ROUTES)}, got {route!r}")
    for name, v in (("target", target), ("prob", prob), ("band", band)):
        if not 0.0 < float(v) < 1.0:
            raise CaltarsError(f"{name} must lie strictly between 0 and 1, got {v}")


def _projection_table(
    rel: xr.DataArray, grid: list[str], target: float, band: float
) -> pd.DataFrame:
    """One row per design of the grid: ``ratings``, ``median``, ``band`` limits, ``p_reach``.

    ``rel`` has dims ``(chain, draw, *grid)``; draws where the coefficient is
    not finite are left out of every cell's summary.
    """
    vals = rel.stack(sample=SAMPLE_DIMS).transpose(*grid, "sample").values
    ok = np.isfinite(vals)
    lo_q, hi_q = (1 - band) / 2, 1 - (1 - band) / 2
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN cells
        med = np.nanmedian(vals, -1)
        low = np.nanquantile(vals, lo_q, axis=-1)
        high = np.nanquantile(vals, hi_q, axis=-1)
    p_reach = np.where(ok, vals >= target, False).sum(-1) / np.maximum(ok.sum(-1), 1)
    index = pd.MultiIndex.from_product([rel.coords[d].values for d in grid], names=grid)
    table = pd.DataFrame(
        {"median": med.ravel(), "low": low.ravel(), "high": high.ravel(),
         "p_reach": p_reach.ravel()},
        index=index,
    ).reset_index()  # fmt: skip
    if "items" not in table.columns:
        ratings = table["judges"] * table["sessions"]
    else:
        ratings = table["judges"] * table["sessions"] * table["items"]
    table.insert(len(grid), "ratings", ratings.astype(int))
    return table


def _mark_smallest(
    table: pd.DataFrame, scales: Iterable[str], grid: list[str], prob: float
) -> list[dict]:
    """Set ``table["smallest"]`` on each scale's smallest design with ``p_reach >= prob``.

    Smallest: fewest ratings, then fewest judges, then fewest sessions (then
    items). Returns one row per scale for :attr:`DStudy.smallest`.
    """
    table["smallest"] = False
    best_rows = []
    sort_cols = ["ratings", "judges", "sessions"] + (["items"] if "items" in table else [])
    for scale in scales:
        s = table[(table["scale"] == scale) & (table["p_reach"] >= prob)]
        if len(s):
            i = s.sort_values(sort_cols, kind="stable").index[0]
            table.loc[i, "smallest"] = True
            row = table.loc[i]
            best = {c: row[c] for c in grid if c != "scale"}
            best.update(ratings=row["ratings"], median=row["median"], p_reach=row["p_reach"])
            best_rows.append({"scale": scale, **best, "reached": True})
        else:
            best_rows.append(
                {"scale": scale, **{c: np.nan for c in grid if c != "scale"},
                 "ratings": np.nan, "median": np.nan, "p_reach": np.nan, "reached": False}
            )  # fmt: skip
    return best_rows
