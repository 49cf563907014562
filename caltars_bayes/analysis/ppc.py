"""Posterior predictive checks: does the fitted model reproduce the ratings' features?

For a thinned set of posterior draws the whole design is rated again
(:func:`caltars_bayes.inference.predict.replicate_ratings`: same subjects, sessions,
judges and items; new ratings from the model), and each statistic ``T`` is
computed on the observed and on every replicated data set. The posterior
predictive p-value is ``P(T_rep > T_obs) + P(T_rep = T_obs) / 2``; values
outside 0.05-0.95 are flagged.

Checks (``check`` column; ``group`` says where):

``category_item``, ``category_judge``
    Share of ratings in each category (``statistic`` ``"P(score = c)"``), per
    item and per judge: thresholds and judge severity.
``scale_score``
    Distribution of judges' scale scores (mean of a judge's item scores on a
    scale in a session), per scale: ``mean``, ``sd``, ``q10``, ``median``,
    ``q90``.
``agreement``
    Between-judge agreement per scale: ``judge_r`` (mean over judge pairs of
    the correlation of their scale scores across the sessions both rated),
    ``judge_spread`` (mean within-session variance of the judges' scale
    scores) and ``exact_agreement`` (share of item ratings on which two
    judges of the same session gave the same score). Needs two judges rating
    some sessions in common; a judge x subject interaction that the model
    leaves out shows here.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import sparse

from caltars_bayes.inference.diagnostics import stamp
from caltars_bayes.inference.predict import replicate_ratings

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from caltars_bayes.data.ratings import RatingData
    from caltars_bayes.inference.diagnostics import Diagnostics
    from caltars_bayes.inference.fit import Fit

#: p-values outside (FLAG_LOW, FLAG_HIGH) are flagged.
FLAG_LOW, FLAG_HIGH = 0.05, 0.95
PPC_COLUMNS = [
    "check", "group", "statistic", "observed", "rep_mean", "rep_low", "rep_high", "p_value",
    "flag", "converged",
]  # fmt: skip
#: A check shows misfit when some p is below MISFIT_P or above 1 - MISFIT_P, or
#: more than MISFIT_SHARE of its statistics are flagged.
MISFIT_P, MISFIT_SHARE = 0.01, 0.10
CHECKS = ("category_item", "category_judge", "scale_score", "agreement")


# --------------------------------------------------------------------------- statistics


def category_shares(y: np.ndarray, groups: np.ndarray, n_groups: int, n_cat: int) -> np.ndarray:
    """Share of each category within each group.

    Parameters
    ----------
    y : (sets, obs) 0-based categories.
    groups : (obs,) group index of each rating.

    Returns
    -------
    array (sets, groups, categories); NaN for a group without ratings.
    """
    y = np.atleast_2d(y)
    n_sets = y.shape[0]
    code = (np.arange(n_sets)[:, None] * n_groups + groups[None, :]) * n_cat + y
    counts = np.bincount(code.ravel(), minlength=n_sets * n_groups * n_cat).reshape(
        n_sets, n_groups, n_cat
    )
    total = np.bincount(groups, minlength=n_groups).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return counts / total[None, :, None]


@dataclass
class _Cells:
    """Judge x session x scale cells: which ratings average into each scale score."""

    weights: sparse.csr_matrix  # (obs, cells): 1 / n ratings of the cell
    session: np.ndarray  # (cells,)
    judge: np.ndarray
    scale: np.ndarray


def _cells(data: RatingData) -> _Cells:
    nj, nk = data.n_judges, data.n_scales
    code = (np.asarray(data.session_idx) * nj + data.judge_idx) * nk + data.scale_idx
    uniq, inv = np.unique(code, return_inverse=True)
    n = np.bincount(inv).astype(float)
    w = sparse.csr_matrix((1.0 / n[inv], (np.arange(len(inv)), inv)), shape=(len(inv), len(uniq)))
    return _Cells(w, uniq // (nj * nk), (uniq // nk) % nj, uniq % nk)


def scale_scores(y: np.ndarray, cells: _Cells) -> np.ndarray:
    """Judges' scale scores (mean item score per judge x session x scale): (sets, cells)."""
    return np.asarray(np.atleast_2d(y).astype(float) @ cells.weights)


def _score_stats(scores: np.ndarray) -> dict[str, np.ndarray]:
    """Distribution statistics over cells (axis 1) of each set."""
    q = np.quantile(scores, [0.1, 0.5, 0.9], axis=1)
    return {
        "mean": scores.mean(axis=1),
        "sd": scores.std(axis=1, ddof=1) if scores.shape[1] > 1 else np.full(len(scores), np.nan),
        "q10": q[0],
        "median": q[1],
        "q90": q[2],
    }


def judge_agreement(
    scores: np.ndarray, session: np.ndarray, judge: np.ndarray, n_sessions: int, n_judges: int
) -> dict[str, np.ndarray]:
    """Between-judge agreement of scale scores on one scale, for each set.

    Parameters
    ----------
    scores : (sets, cells) scale scores of one scale.
    session, judge : (cells,) indices of each cell.

    Returns
    -------
    ``judge_r``: mean over judge pairs (with at least 3 common sessions and
    some variance) of the Pearson correlation of their scores across sessions;
    ``judge_spread``: mean over sessions with two or more judges of the
    variance (ddof 0) of the judges' scores. Each an array (sets,), NaN when
    undefined.
    """
    n_sets = scores.shape[0]
    mat = np.full((n_sets, n_sessions, n_judges), np.nan)
    mat[:, session, judge] = scores
    rs = []
    for a in range(n_judges):
        for b in range(a + 1, n_judges):
            both = ~np.isnan(mat[0, :, a]) & ~np.isnan(mat[0, :, b])
            if both.sum() < 3:
                continue
            x, z = mat[:, both, a], mat[:, both, b]
            x = x - x.mean(axis=1, keepdims=True)
            z = z - z.mean(axis=1, keepdims=True)
            den = np.sqrt((x**2).sum(1) * (z**2).sum(1))
            with np.errstate(invalid="ignore", divide="ignore"):
                rs.append(np.where(den > 0, (x * z).sum(1) / den, np.nan))
    judge_r = np.nanmean(np.array(rs), axis=0) if rs else np.full(n_sets, np.nan)
    n_j = (~np.isnan(mat[0])).sum(axis=1)
    multi = n_j >= 2
    if multi.any():
        spread = np.nanvar(mat[:, multi, :], axis=2).mean(axis=1)
    else:
        spread = np.full(n_sets, np.nan)
    return {"judge_r": judge_r, "judge_spread": spread}


def rating_pairs(data: RatingData) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of ratings of the same item in the same session by two different judges."""
    key = np.asarray(data.session_idx, dtype=np.int64) * data.n_items + data.item_idx
    order = np.argsort(key, kind="stable")
    k_sorted = key[order]
    starts = np.flatnonzero(np.r_[True, k_sorted[1:] != k_sorted[:-1]])
    ends = np.r_[starts[1:], len(order)]
    first, second = [], []
    for s, e in zip(starts, ends, strict=True):
        if e - s < 2:
            continue
        idx = order[s:e]
        a, b = np.triu_indices(len(idx), k=1)
        first.append(idx[a])
        second.append(idx[b])
    if not first:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.concatenate(first), np.concatenate(second)


def exact_agreement(y: np.ndarray, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Share of rating pairs with the same category: (sets,); NaN without pairs."""
    y = np.atleast_2d(y)
    if len(first) == 0:
        return np.full(y.shape[0], np.nan)
    return (y[:, first] == y[:, second]).mean(axis=1)


def ppp_value(observed: float, replicated: np.ndarray) -> float:
    """Posterior predictive p-value ``P(T_rep > T_obs) + P(T_rep = T_obs) / 2``."""
    rep = np.asarray(replicated, dtype=float)
    rep = rep[np.isfinite(rep)]
    if not np.isfinite(observed) or rep.size == 0:
        return float("nan")
    return float(np.mean(rep > observed) + 0.5 * np.mean(rep == observed))


# --------------------------------------------------------------------------- the check


@dataclass
class PPC:
    """Posterior predictive checks of a fit.

    Attributes
    ----------
    table : one row per statistic, columns ``check, group, statistic,
        observed, rep_mean, rep_low, rep_high`` (2.5% and 97.5% quantiles of
        the replicated statistic), ``p_value``, ``flag`` (p outside 0.05-0.95)
        and ``converged``.
    verdict : one row per check, columns ``check, n_statistics, n_flagged,
        most_extreme`` (group and statistic of the smallest two-sided p),
        ``p_value`` (its p), ``verdict`` (``"ok"``: nothing flagged;
        ``"misfit"``: some p below 0.01 or above 0.99, or more than 10% of the
        statistics flagged; ``"some flags"`` otherwise: expected now and then
        by chance among many statistics) and
        ``converged``.
    replicated : the statistics of every replicated data set (long: check,
        group, statistic, sample, value), for plots.
    n_draws : posterior draws replicated.
    diagnostics : the fit's convergence verdict.
    """

    table: pd.DataFrame
    verdict: pd.DataFrame
    replicated: pd.DataFrame = field(repr=False)
    n_draws: int = 0
    diagnostics: Diagnostics | None = field(default=None, repr=False)

    @property
    def summary(self) -> str:
        """One line: the checks that flag misfit, and the fit's verdict."""
        bad = self.verdict[self.verdict["verdict"] == "misfit"]
        conv = self.diagnostics.verdict if self.diagnostics is not None else ""
        if bad.empty:
            n = int(self.verdict["n_flagged"].sum())
            text = f"no misfit ({n} of {len(self.table)} statistics flagged, {self.n_draws} draws)"
        else:
            text = "misfit flagged in " + ", ".join(
                f"{r.check} ({r.n_flagged}/{r.n_statistics}: worst {r.most_extreme}, "
                f"p = {r.p_value:.3f})"
                for r in bad.itertuples()
            )
        return f"{text}; fit {conv}" if conv else text

    def __str__(self) -> str:
        return self.summary

    def plot(self, check: str | None = None) -> Figure:
        """Observed statistic against its replicated 95% interval, for every check.

        Parameters
        ----------
        check : one check only (see ``table.check``); default all, one panel each.

        Returns
        -------
        matplotlib Figure; flagged statistics in red; the suptitle carries the
        convergence verdict.
        """
        import matplotlib.pyplot as plt

        checks = [c for c in CHECKS if c in set(self.table["check"])]
        if check is not None:
            if check not in checks:
                raise ValueError(f"check must be one of {', '.join(checks)}, got {check!r}")
            checks = [check]
        n = max(len(checks), 1)
        heights = [
            max(2.0, 0.14 * min(int((self.table["check"] == c).sum()), 40)) for c in checks
        ] or [2.0]
        fig, axes = plt.subplots(
            n, 1, figsize=(7.5, sum(heights) + 1.0), squeeze=False,
            gridspec_kw={"height_ratios": heights},
        )  # fmt: skip
        for ax, c in zip(axes[:, 0], checks, strict=False):
            self._panel(ax, c)
        verdict = self.diagnostics.banner() if self.diagnostics is not None else ""
        verdict = "\n".join(textwrap.wrap(verdict, 95))
        conv = self.diagnostics is None or self.diagnostics.converged
        fig.suptitle(
            f"Posterior predictive checks ({self.n_draws} draws)\n{verdict}",
            fontsize="small",
            color="black" if conv else "firebrick",
        )
        fig.tight_layout()
        return fig

    def _panel(self, ax, check: str) -> None:
        rows = self.table[self.table["check"] == check].reset_index(drop=True)
        rep = self.replicated[self.replicated["check"] == check]
        sd = rep.groupby(["group", "statistic"], sort=False)["value"].std()
        y = np.arange(len(rows))[::-1]
        scale = np.array(
            [sd.get((g, s), np.nan) for g, s in zip(rows["group"], rows["statistic"], strict=True)]
        )
        scale = np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)
        mid = rows["rep_mean"].to_numpy(float)
        lo = (rows["rep_low"].to_numpy(float) - mid) / scale
        hi = (rows["rep_high"].to_numpy(float) - mid) / scale
        ob = (rows["observed"].to_numpy(float) - mid) / scale
        lw = 2.0 if len(rows) <= 40 else 0.6
        ax.hlines(y, lo, hi, color="tab:blue", lw=lw, alpha=0.6, label="replicated 95%")
        flag = rows["flag"].to_numpy(bool)
        ax.plot(ob[~flag], y[~flag], "k|", ms=7, label="observed")
        ax.plot(ob[flag], y[flag], "o", color="firebrick", ms=4, label="observed (flagged)")
        ax.axvline(0, color="grey", lw=0.6)
        if len(rows) <= 40:
            ax.set_yticks(
                y, [f"{g}: {s}" for g, s in zip(rows["group"], rows["statistic"], strict=True)]
            )
            ax.tick_params(axis="y", labelsize="x-small")
        else:
            ax.set_yticks([])
            ax.set_ylabel(f"{len(rows)} statistics")
        n_flag = int(flag.sum())
        ax.set_title(f"{check}: {n_flag} of {len(rows)} flagged", fontsize="small")
        ax.set_xlabel("(statistic - replicated mean) / replicated SD", fontsize="small")
        ax.legend(loc="lower right", fontsize="x-small", frameon=False)


def _statistics(
    y: np.ndarray, data: RatingData, ctx: dict
) -> list[tuple[str, str, str, np.ndarray]]:
    """Every statistic of every set in ``y`` (sets, obs): (check, group, statistic, values)."""
    inst = data.instrument
    n_cat = inst.n_categories
    cats = [f"P(score = {inst.response_min + c})" for c in range(n_cat)]
    out: list[tuple[str, str, str, np.ndarray]] = []
    shares = category_shares(y, np.asarray(data.item_idx), data.n_items, n_cat)
    for i, item in enumerate(data.items):
        if ctx["item_n"][i] == 0:
            continue
        for c in range(n_cat):
            out.append(("category_item", str(item), cats[c], shares[:, i, c]))
    shares = category_shares(y, np.asarray(data.judge_idx), data.n_judges, n_cat)
    for j, judge in enumerate(data.judges):
        for c in range(n_cat):
            out.append(("category_judge", str(judge), cats[c], shares[:, j, c]))
    cells: _Cells = ctx["cells"]
    scores = scale_scores(y + inst.response_min, cells)
    for k, scale in enumerate(data.scales):
        sel = cells.scale == k
        if not sel.any():
            continue
        for name, v in _score_stats(scores[:, sel]).items():
            out.append(("scale_score", str(scale), name, v))
        if data.n_judges >= 2:
            agree = judge_agreement(
                scores[:, sel], cells.session[sel], cells.judge[sel], data.n_sessions, data.n_judges
            )
            for name, v in agree.items():
                if np.isfinite(v).any():
                    out.append(("agreement", str(scale), name, v))
            first, second = ctx["pairs"]
            on_scale = np.asarray(data.scale_idx)[first] == k
            if on_scale.any():
                v = exact_agreement(y, first[on_scale], second[on_scale])
                out.append(("agreement", str(scale), "exact_agreement", v))
    return out


def ppc(fit: Fit, n_draws: int = 200, seed: int = 0) -> PPC:
    """Posterior predictive checks of a fit (see the module docstring).

    Parameters
    ----------
    fit : a fitted model.
    n_draws : posterior draws to replicate (evenly thinned).
    seed : random seed of the replications.

    Returns
    -------
    :class:`PPC` with ``table``, ``verdict`` (both stamped with the
    convergence verdict), ``plot()`` and ``summary``.
    """
    data = fit.data
    rep = replicate_ratings(fit, n_draws=n_draws, seed=seed).values
    y = np.vstack([np.asarray(data.y, dtype=np.int64)[None, :], rep])
    ctx = {
        "cells": _cells(data),
        "pairs": rating_pairs(data),
        "item_n": np.bincount(data.item_idx, minlength=data.n_items),
    }
    rows, reps = [], []
    for check, group, stat, values in _statistics(y, data, ctx):
        obs, r = float(values[0]), values[1:]
        finite = r[np.isfinite(r)]
        p = ppp_value(obs, r)
        rows.append(
            {
                "check": check,
                "group": group,
                "statistic": stat,
                "observed": obs,
                "rep_mean": float(finite.mean()) if finite.size else np.nan,
                "rep_low": float(np.quantile(finite, 0.025)) if finite.size else np.nan,
                "rep_high": float(np.quantile(finite, 0.975)) if finite.size else np.nan,
                "p_value": p,
                "flag": bool(np.isfinite(p) and (p < FLAG_LOW or p > FLAG_HIGH)),
            }
        )
        reps.append(
            pd.DataFrame(
                {
                    "check": check,
                    "group": group,
                    "statistic": stat,
                    "sample": np.arange(len(r)),
                    "value": r,
                }
            )
        )
    table = stamp(pd.DataFrame(rows), fit.diagnostics)[PPC_COLUMNS]
    verdict = _verdict(table, fit)
    return PPC(table, verdict, pd.concat(reps, ignore_index=True), rep.shape[0], fit.diagnostics)


def _verdict(table: pd.DataFrame, fit: Fit) -> pd.DataFrame:
    rows = []
    for check in CHECKS:
        t = table[table["check"] == check]
        if t.empty:
            continue
        two = np.minimum(t["p_value"], 1 - t["p_value"])
        worst = t.loc[two.idxmin()] if two.notna().any() else t.iloc[0]
        n_flag = int(t["flag"].sum())
        extreme = bool((two < MISFIT_P).any())
        if n_flag == 0:
            verdict = "ok"
        elif extreme or n_flag > MISFIT_SHARE * len(t):
            verdict = "misfit"
        else:
            verdict = "some flags"
        rows.append(
            {
                "check": check,
                "n_statistics": len(t),
                "n_flagged": n_flag,
                "most_extreme": f"{worst['group']}: {worst['statistic']}",
                "p_value": float(worst["p_value"]),
                "verdict": verdict,
            }
        )
    return stamp(pd.DataFrame(rows), fit.diagnostics)
