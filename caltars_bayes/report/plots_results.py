"""Report figures of the results tables: reliability, standardised loadings, alliance over sessions.

Each figure draws a table the package already computes, so the figure and the
table beside it show the same numbers:

- :func:`plot_reliability`: the ``reliability`` table
  (:func:`caltars_bayes.analysis.reliability.reliability`): per scale, the
  posterior interrater coefficients (median and 95% HDI) beside the classical
  ICC of the same scores, and the classical internal consistency (alpha,
  omega) with its bootstrap interval;
- :func:`plot_loadings`: the standardised loadings
  (:func:`caltars_bayes.analysis.structure.standardised_loadings`), per item
  grouped by scale, beside the classical PCA loading;
- :func:`plot_alliance_sessions`: the session-level alliance scores
  (:meth:`Fit.scores <caltars_bayes.inference.fit.Fit.scores>`) of a few
  subjects over their sessions, per scale.

Every marker carries a ``gid`` (``"scale|row|kind"``, its interval
``"scale|row|kind|interval"``; ``"scale|subject|session"`` for a subject's
line) naming what it shows, so that a figure can be checked against its table.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from caltars_bayes._core.dims import CI_PROB
from caltars_bayes._core.errors import CaltarsError
from caltars_bayes.analysis.reliability.coefficients import (
    CLASSICAL_ROUTE,
    GENERALIZES_JUDGES,
    reliability,
)
from caltars_bayes.analysis.structure import GENERAL, standardised_loadings
from caltars_bayes.report.plots import verdict_title

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from caltars_bayes.inference.fit import Fit

#: subjects shown by :func:`plot_alliance_sessions` unless told which
N_SUBJECTS_SHOWN = 5
#: panels per row of the per-scale figures
MAX_COLUMNS = 3
_POSTERIOR, _CLASSICAL, _INTERNAL = "C0", "black", "#757575"


def _panels(
    n: int, panel_size: tuple[float, float], *, sharex: bool = True, sharey: bool = False
) -> tuple[Figure, list[Axes]]:
    """A figure of ``n`` panels, at most :data:`MAX_COLUMNS` per row; spare panels hidden."""
    import matplotlib.pyplot as plt

    ncol = min(max(n, 1), MAX_COLUMNS)
    nrow = math.ceil(max(n, 1) / ncol)
    fig, axes = plt.subplots(
        nrow, ncol, figsize=(panel_size[0] * ncol + 0.8, panel_size[1] * nrow + 1.0),
        squeeze=False, sharex=sharex, sharey=sharey,
    )  # fmt: skip
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


# --------------------------------------------------------------------------- reliability


def reliability_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of a ``reliability`` table that :func:`plot_reliability` draws.

    Interrater absolute agreement (``coefficient == "agreement"``,
    ``generalizes_over == "judges"``) by the observed route when the table has
    it, else the latent one, for one judge and the panel mean at session and
    treatment level; then the classical internal consistency rows
    (``route == "classical"``: alpha, omega).

    Returns
    -------
    DataFrame with columns ``scale``, ``row`` (what the row is, e.g.
    ``"treatment, mean of 3 judges"`` or ``"alpha (items)"``), ``kind``
    (the route), ``point`` (posterior median, or the classical estimate),
    ``low``, ``high`` (95% HDI, or the bootstrap interval) and ``classical``
    (the classical ICC beside a posterior row; NaN on alpha and omega).
    """
    agree = table[
        (table["coefficient"] == "agreement") & (table["generalizes_over"] == GENERALIZES_JUDGES)
    ]
    route = "observed" if "observed" in set(agree["route"]) else "latent"
    parts = []
    for r in agree[agree["route"] == route].itertuples():
        k = int(r.judges)
        who = "1 judge" if k == 1 else f"mean of {k} judges"
        parts.append((r.scale, f"{r.level}, {who}", route, r.median, r.hdi_low, r.hdi_high,
                      r.classical))  # fmt: skip
    for r in table[table["route"] == CLASSICAL_ROUTE].itertuples():
        parts.append((r.scale, f"{r.coefficient} (items)", CLASSICAL_ROUTE, r.median, r.hdi_low,
                      r.hdi_high, np.nan))  # fmt: skip
    cols = ["scale", "row", "kind", "point", "low", "high", "classical"]
    out = pd.DataFrame(parts, columns=cols)
    for c in cols[3:]:
        out[c] = out[c].astype(float)
    return out


def plot_reliability(fit: Fit, table: pd.DataFrame | None = None) -> Figure:
    """Reliability per scale: posterior intervals against the classical values.

    One panel per scale, one row per coefficient (:func:`reliability_rows`):
    the posterior median and 95% HDI of the interrater coefficient (blue)
    with the classical Shrout & Fleiss ICC of the same observed scale scores
    (black cross), and the classical Cronbach's alpha and McDonald's omega of
    the scale's items with their bootstrap intervals (grey squares).

    Parameters
    ----------
    fit : the fit (its scales and verdict).
    table : its :func:`~caltars_bayes.analysis.reliability.reliability` table
        (computed when None; a fit directory's ``reliability.csv`` will do).

    Returns
    -------
    matplotlib Figure.
    """
    rows = reliability_rows(reliability(fit) if table is None else table)
    scales = [s for s in fit.data.scales if s in set(rows["scale"])]
    order = list(dict.fromkeys(rows["row"]))
    fig, axes = _panels(len(scales), (2.3, 0.32 * len(order) + 0.6), sharey=True)
    low = min(0.0, float(np.nanmin(rows[["low", "point", "classical"]].to_numpy())) - 0.05)
    for ax, scale in zip(axes, scales, strict=True):
        sub = rows[rows["scale"] == scale]
        for r in sub.itertuples():
            y = -order.index(r.row)
            colour, marker = (_INTERNAL, "s") if r.kind == CLASSICAL_ROUTE else (_POSTERIOR, "o")
            gid = f"{scale}|{r.row}|{r.kind}"
            ax.plot([r.low, r.high], [y, y], color=colour, lw=1.8, gid=f"{gid}|interval")
            ax.plot([r.point], [y], marker, color=colour, ms=4.5, gid=gid)
            if np.isfinite(r.classical):
                ax.plot([r.classical], [y], "x", color=_CLASSICAL, ms=6, mew=1.4,
                        gid=f"{scale}|{r.row}|icc")  # fmt: skip
        ax.set_title(scale, fontsize=9)
        ax.set_xlim(low, 1.0)
        ax.grid(axis="x", alpha=0.3)
        ax.set_yticks([-i for i in range(len(order))], order, fontsize=8)
        ax.tick_params(axis="x", labelsize=8)
    routes = [k for k in dict.fromkeys(rows["kind"]) if k != CLASSICAL_ROUTE]
    entries = [
        ("o", _POSTERIOR, f"posterior median, {CI_PROB:.0%} HDI ({', '.join(routes)} route)"),
        ("x", _CLASSICAL, "classical ICC (Shrout & Fleiss)"),
    ]
    if (rows["kind"] == CLASSICAL_ROUTE).any():
        entries.append(("s", _INTERNAL, f"alpha / omega, {CI_PROB:.0%} bootstrap CI"))
    _legend(fig, entries)
    verdict_title(fig, "Reliability per scale: posterior against classical", fit)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig


def _legend(fig: Figure, entries: Sequence[tuple[str, str, str]]) -> None:
    """A legend under the panels: (marker, colour, text) per entry."""
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], marker=m, color=c, lw=1.5 if m != "x" else 0, ms=5, label=t)
        for m, c, t in entries
    ]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=7,
               frameon=False)  # fmt: skip


# --------------------------------------------------------------------------- loadings


def plot_loadings(fit: Fit, table: pd.DataFrame | None = None) -> Figure:
    """Standardised item loadings, per item grouped by scale, beside the classical PCA loading.

    One panel per scale, one row per item: the posterior median and 95% HDI
    of the correlation of the item's latent response with its factor at
    session level (blue; a bifactor model's general-factor loading in
    orange), and the item's loading on the matching varimax component of the
    classical PCA (black cross).

    Parameters
    ----------
    fit : the fit.
    table : its :func:`~caltars_bayes.analysis.structure.standardised_loadings`
        table (computed when None).

    Returns
    -------
    matplotlib Figure.
    """
    load = standardised_loadings(fit) if table is None else table
    general = load[load["factor"] == GENERAL] if "factor" in load else load.iloc[:0]
    specific = load.drop(general.index)
    scales = [s for s in fit.data.scales if s in set(specific["scale"])]
    n_items = max(int((specific["scale"] == s).sum()) for s in scales)
    fig, axes = _panels(len(scales), (2.3, 0.26 * n_items + 0.6))
    low = min(0.0, float(np.nanmin(load[["hdi_low", "classical_loading"]].to_numpy())) - 0.05)
    for ax, scale in zip(axes, scales, strict=True):
        sub = specific[specific["scale"] == scale]
        items = list(sub["item"])
        for kind, rows, colour, dy in (
            ("specific", sub, _POSTERIOR, 0.0), (GENERAL, general, "C1", -0.25),
        ):  # fmt: skip
            for r in rows[rows["item"].isin(items)].itertuples():
                y = -items.index(r.item) + dy
                gid = f"{scale}|{r.item}|{kind}"
                ax.plot([r.hdi_low, r.hdi_high], [y, y], color=colour, lw=1.8,
                        gid=f"{gid}|interval")  # fmt: skip
                ax.plot([r.median], [y], "o", color=colour, ms=4.5, gid=gid)
        for r in sub.itertuples():
            if np.isfinite(r.classical_loading):
                ax.plot([r.classical_loading], [-items.index(r.item)], "x", color=_CLASSICAL,
                        ms=6, mew=1.4, gid=f"{scale}|{r.item}|classical")  # fmt: skip
        ax.set_yticks([-i for i in range(len(items))], items, fontsize=7)
        ax.set_ylim(-n_items + 0.5, 0.6)
        ax.set_title(scale, fontsize=9)
        ax.set_xlim(low, 1.0)
        ax.grid(axis="x", alpha=0.3)
        ax.tick_params(axis="x", labelsize=8)
    entries = [
        ("o", _POSTERIOR, f"posterior median, {CI_PROB:.0%} HDI"),
        ("x", _CLASSICAL, "classical PCA (varimax) loading"),
    ]
    if len(general):
        entries.insert(1, ("o", "C1", "general factor"))
    _legend(fig, entries)
    verdict_title(fig, "Standardised loadings (session level)", fit)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return fig


# --------------------------------------------------------------------------- alliance over sessions


def default_subjects(scores: pd.DataFrame, n: int = N_SUBJECTS_SHOWN) -> list[str]:
    """``n`` subjects spread over the range of the subjects' alliance, chosen deterministically.

    The subjects are ordered by their treatment-level posterior mean averaged
    over the scales; those at ``n`` evenly spaced ranks (the lowest, the
    highest and between) are taken (ties broken by label).

    Parameters
    ----------
    scores : a :meth:`Fit.scores <caltars_bayes.inference.fit.Fit.scores>` table.
    n : how many.
    """
    subj = scores[scores["level"] == "subject"]
    means = subj.groupby("subject", sort=True)["mean"].mean()
    ordered = list(means.sort_values(kind="stable").index)
    if n >= len(ordered):
        return ordered
    picks = np.unique(np.round(np.linspace(0, len(ordered) - 1, n)).astype(int))
    return [str(ordered[i]) for i in picks]


def session_numbers(fit: Fit) -> dict[tuple[str, str], float]:
    """Each session's number as the model uses it (its ``session_time``), by (subject, session)."""
    s = fit.data.sessions
    return {
        (str(a), str(b)): float(t)
        for a, b, t in zip(s["subject"], s["session"], s["session_time"], strict=True)
    }


def alliance_rows(
    fit: Fit, subjects: Sequence[str], scores: pd.DataFrame | None = None
) -> pd.DataFrame:
    """The session-level alliance of ``subjects`` (rows of ``fit.scores()``), with session numbers.

    Returns
    -------
    DataFrame with the columns of the scores table and ``session_number``,
    sorted by subject (in ``subjects`` order), scale and session number.
    Raises :class:`CaltarsError` naming subjects not in the fit.
    """
    table = fit.scores() if scores is None else scores
    unknown = [s for s in subjects if s not in set(map(str, fit.data.subjects))]
    if unknown:
        raise CaltarsError(
            f"subjects not in the fit: {', '.join(unknown)} (it has {fit.data.n_subjects}: "
            f"{', '.join(fit.data.subjects[:5])}{', ...' if fit.data.n_subjects > 5 else ''})"
        )
    rows = table[(table["level"] == "session") & table["subject"].astype(str).isin(subjects)]
    rows = rows.assign(subject=rows["subject"].astype(str), session=rows["session"].astype(str))
    numbers = session_numbers(fit)
    rows = rows.assign(
        session_number=[numbers[(a, b)] for a, b in zip(rows["subject"], rows["session"],
                                                        strict=True)],
        _s=rows["subject"].map({s: i for i, s in enumerate(subjects)}),
    )  # fmt: skip
    return rows.sort_values(["_s", "scale", "session_number"], kind="stable").drop(columns="_s")


def plot_alliance_sessions(
    fit: Fit,
    subjects: Sequence[str] | None = None,
    *,
    n_subjects: int = N_SUBJECTS_SHOWN,
    scores: pd.DataFrame | None = None,
) -> Figure:
    """Session-level alliance over the sessions of a few subjects, one panel per scale.

    For each subject, the posterior mean of the session's latent alliance
    (the subject's treatment-level alliance plus the session's deviation and
    trend) at each session number, with its 95% HDI as a band, and the
    subject's treatment-level alliance as a dotted line.

    Parameters
    ----------
    fit : the fit.
    subjects : the subjects to show (labels); default :func:`default_subjects`
        (``n_subjects`` spread over the range of the subjects' alliance).
    n_subjects : how many subjects by default.
    scores : the fit's :meth:`~caltars_bayes.inference.fit.Fit.scores` table
        (computed when None).

    Returns
    -------
    matplotlib Figure.
    """
    from matplotlib.ticker import MaxNLocator

    table = fit.scores() if scores is None else scores
    chosen = [str(s) for s in subjects] if subjects is not None else default_subjects(
        table, n_subjects
    )  # fmt: skip
    rows = alliance_rows(fit, chosen, table)
    treat = table[(table["level"] == "subject") & table["subject"].astype(str).isin(chosen)]
    treat = treat.assign(subject=treat["subject"].astype(str)).set_index(["subject", "scale"])
    scales = [s for s in fit.data.scales if s in set(rows["scale"])]
    fig, axes = _panels(len(scales), (2.5, 2.1), sharey=True)
    offsets = np.linspace(-0.08, 0.08, len(chosen)) if len(chosen) > 1 else np.zeros(1)
    for ax, scale in zip(axes, scales, strict=True):
        for n, subj in enumerate(chosen):
            r = rows[(rows["subject"] == subj) & (rows["scale"] == scale)]
            x = r["session_number"].to_numpy(float) + offsets[n]
            colour = f"C{n % 10}"
            ax.fill_between(x, r["hdi_low"], r["hdi_high"], color=colour, alpha=0.15, lw=0)
            ax.plot(x, r["mean"], "o-", color=colour, ms=3.5, lw=1.2, label=subj,
                    gid=f"{scale}|{subj}|session")  # fmt: skip
            if (subj, scale) in treat.index and len(x):
                ax.hlines(float(treat.loc[(subj, scale), "mean"]), x.min(), x.max(),
                          colors=colour, linestyles=":", lw=1)  # fmt: skip
        ax.set_title(scale, fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("session", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("latent alliance (logits)", fontsize=8)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 8), fontsize=7,
               frameon=False, title="subject", title_fontsize=7)  # fmt: skip
    verdict_title(
        fig, f"Alliance over sessions: posterior mean, {CI_PROB:.0%} HDI (dotted: treatment level)",
        fit,
    )  # fmt: skip
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    return fig
