"""Rater drift: are the new judges of a scored trial from the calibrated judge population?

Each new judge's severity (per scale) and log discrimination is estimated
twice: with the calibrated judge population as prior (what scoring used), and
from its own ratings alone (:func:`own_estimates`, the prior taken out of the
Laplace approximation). The population's band (:func:`population_band`, a
Bonferroni-corrected central interval of a new judge's predictive
distribution) is compared with the own estimate; :func:`judge_drift` gives the
table and :func:`drift_summary` one line per judge.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
from scipy.optimize import brentq
from scipy.special import ndtr

from caltars_bayes._core.summaries import weighted_describe
from caltars_bayes.scoring.calibration import Calibration
from caltars_bayes.scoring.design import _Design

#: Rater drift: family-wise level of the population band, and the posterior
#: probability of lying outside it that flags a judge.
DRIFT_ALPHA = 0.05
DRIFT_PROB = 0.9
#: A new judge's parameter is assessed for drift when its own ratings carry at
#: least this fraction of the population prior's information (precision) on it.
MIN_OWN_INFORMATION = 0.25


def population_band(sd_draws: np.ndarray, level: float) -> float:
    """Half-width ``q`` of the central ``level`` interval of a new judge's value.

    The calibrated population of a judge parameter is Normal(0, sd) per draw;
    over the calibration's draws of ``sd`` it is their mixture (a new judge's
    predictive distribution), so ``q`` solves
    ``mean_s Phi(q / sd_s) = 1 - (1 - level) / 2``.
    """
    sd = np.asarray(sd_draws, dtype=float)
    target = 1.0 - (1.0 - level) / 2.0
    hi = 50.0 * float(sd.max())
    return float(brentq(lambda q: float(ndtr(q / sd).mean()) - target, 0.0, hi, xtol=1e-10))


def own_estimates(
    v_mode: np.ndarray, v_prec: np.ndarray, v_prior: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """New judges' parameters estimated from their own ratings: the prior taken out.

    In the Laplace approximation the new judges' posterior given a calibration
    draw is Normal(v, S^-1) with ``S = S_data + P`` (``P`` the diagonal prior
    precision, the population's), so the data alone say Normal(m, S_data^-1)
    with ``m = S_data^-1 S v``.

    The extrapolation (which moves the mode by ``S_data^-1 P v``) is trusted
    only where the judge's own ratings carry at least a quarter of the
    population prior's information on a parameter (``1 / var >= P / 4``):
    with fewer ratings the parameter is not assessed.

    Returns
    -------
    mean, var : (draws, parameters); NaN where ``S_data`` is not positive
    definite or the parameter is not informed by the judge's own ratings.
    """
    s_data = v_prec - v_prior[:, :, None] * np.eye(v_prec.shape[-1])
    ev = np.linalg.eigvalsh(s_data)
    ok = ev.min(axis=1) > 1e-9 * np.maximum(ev.max(axis=1), 1e-300)
    safe = np.where(ok[:, None, None], s_data, np.eye(v_prec.shape[-1]))
    mean = np.linalg.solve(safe, np.einsum("svw,sw->sv", v_prec, v_mode)[..., None])[..., 0]
    var = np.diagonal(np.linalg.inv(safe), axis1=1, axis2=2)
    own_info = 1.0 / np.where(var > 0, var, np.inf)
    informed = ok[:, None] & (var > 0) & (own_info >= MIN_OWN_INFORMATION * v_prior)
    return np.where(informed, mean, np.nan), np.where(informed, var, np.nan)


def judge_drift(
    draws: xr.Dataset,
    cal: Calibration,
    design: _Design,
    report: dict[str, Any],
    own: tuple[np.ndarray, np.ndarray] | None = None,
) -> pd.DataFrame:
    """The new judges' severity and discrimination, and rater-drift flags.

    Each new judge is reported twice: its posterior with the calibrated judge
    population as prior (what scoring used: ``mean, sd, hdi_*``), and its
    estimate from its own ratings with that prior taken out (``own_mean,
    own_sd``, :func:`own_estimates`). Drift is a question about the prior
    itself (does this judge belong to the calibrated population?), so it is
    judged on the own estimate, which is not shrunk towards the population it
    is tested against.

    The calibrated judge population of a parameter is a new judge's predictive
    distribution (:func:`population_band`). Each parameter (severity on each
    scale, log discrimination) gets the central ``1 - 0.05 / m`` band, ``m`` the
    number of parameters per judge (Bonferroni: a judge drawn from the
    population has at most a 5% chance that any of its parameters lies outside
    its band). A parameter is flagged when its own estimate lies credibly on
    one side of the band: ``P(above) >= 0.9`` or ``P(below) >= 0.9``
    (averaged over the calibration's draws; a one-sided probability, so a vague
    estimate from a few ratings is never flagged). A parameter is assessed only
    when the judge's own ratings carry at least a quarter of the population's
    information on it (``informed``; see :func:`own_estimates`). A judge
    with any flagged parameter has ``drift`` True.

    Returns
    -------
    DataFrame with columns ``judge, parameter`` (severity or discrimination),
    ``scale`` (empty for discrimination), ``mean, sd, hdi_low, hdi_high`` (95%
    HDI, population prior), ``own_mean, own_sd`` (own ratings only; for
    discrimination ``exp`` of the log-scale mean and a delta-method sd; NaN when
    the judge's ratings cannot estimate it alone), ``informed`` (the own
    estimate exists, so drift was assessed), ``n_ratings, n_subjects``,
    ``band_low, band_high`` (the population band), ``panel_min, panel_max``
    (range of the calibrated judges' posterior means), ``p_outside`` (the larger
    of P(above) and P(below)), ``flagged``, ``direction`` (severe / lenient, low
    / high discrimination, or empty), ``drift`` and ``converged`` (the
    calibration's verdict).
    """
    cols = [
        "judge", "parameter", "scale", "mean", "sd", "hdi_low", "hdi_high", "own_mean", "own_sd",
        "informed", "n_ratings", "n_subjects", "band_low", "band_high", "panel_min", "panel_max",
        "p_outside", "flagged", "direction", "drift", "converged",
    ]  # fmt: skip
    if not design.n_new:
        out = pd.DataFrame(columns=cols)
        out.attrs["diagnostics"] = report["banner"]
        return out
    has_sev, has_disc = "severity" in draws, "discrimination" in draws
    jn, k_n = design.n_new, design.n_scales
    m = k_n * has_sev + has_disc
    level = 1.0 - DRIFT_ALPHA / max(m, 1)
    n_draws = draws.sizes["draw"]
    own_mean, own_var = own if own is not None else (np.full((n_draws, m * jn), np.nan),) * 2

    def one_sided(i: int, q: float) -> tuple[float, float, float, float]:
        mu, sd = own_mean[:, i], np.sqrt(own_var[:, i])
        fine = np.isfinite(mu) & np.isfinite(sd)
        if fine.mean() < 0.5:  # the judge's own ratings do not inform it: not assessed
            return 0.0, 0.0, np.nan, np.nan
        p_hi = float(np.where(fine, ndtr((mu - q) / np.where(fine, sd, 1.0)), 0.0).mean())
        p_lo = float(np.where(fine, ndtr((-q - mu) / np.where(fine, sd, 1.0)), 0.0).mean())
        if fine.sum() < 2:
            return p_hi, p_lo, np.nan, np.nan
        mean = float(mu[fine].mean())
        return p_hi, p_lo, mean, float(np.sqrt(own_var[fine, i].mean() + mu[fine].var()))

    rows = []
    cd = cal.draws
    if has_sev:
        q = population_band(cd["sd_severity"].values, level)
        panel = cd["severity"].mean("draw").transpose("scale", "judge").values
        sev = draws["severity"].transpose("judge", "scale", "draw").values
        for j, judge in enumerate(design.new_judges):
            st = weighted_describe(sev[j])
            for k, scale in enumerate(design.scales):
                p_hi, p_lo, om, osd = one_sided(j * k_n + k, q)
                rows.append(
                    [judge, "severity", scale, st["mean"][k], st["sd"][k], st["hdi_low"][k],
                     st["hdi_high"][k], om, osd, -q, q, panel[k].min(), panel[k].max(),
                     max(p_hi, p_lo), "severe" if p_hi >= p_lo else "lenient"]
                )  # fmt: skip
    if has_disc:
        q = population_band(cd["sd_log_discrimination"].values, level)
        panel = cd["discrimination"].mean("draw").values
        disc = draws["discrimination"].transpose("judge", "draw").values
        st = weighted_describe(disc)
        n_sev = jn * k_n if has_sev else 0
        for j, judge in enumerate(design.new_judges):
            p_hi, p_lo, om, osd = one_sided(n_sev + j, q)
            rows.append(
                [judge, "discrimination", "", st["mean"][j], st["sd"][j], st["hdi_low"][j],
                 st["hdi_high"][j], np.exp(om), np.exp(om) * osd, np.exp(-q), np.exp(q),
                 panel.min(), panel.max(), max(p_hi, p_lo),
                 "high discrimination" if p_hi >= p_lo else "low discrimination (less reliable)"]
            )  # fmt: skip
    out = pd.DataFrame(
        rows,
        columns=[
            "judge", "parameter", "scale", "mean", "sd", "hdi_low", "hdi_high", "own_mean",
            "own_sd", "band_low", "band_high", "panel_min", "panel_max", "p_outside", "direction",
        ],
    )  # fmt: skip
    pos = {j: i for i, j in enumerate(design.new_judges)}
    out["n_ratings"] = [int(design.n_new_ratings[pos[j]]) for j in out["judge"]]
    out["n_subjects"] = [int(design.n_new_subjects[pos[j]]) for j in out["judge"]]
    out["informed"] = out["own_mean"].notna()
    out["flagged"] = out["p_outside"] >= DRIFT_PROB
    out["direction"] = np.where(out["flagged"], out["direction"], "")
    out["drift"] = out.groupby("judge")["flagged"].transform("any")
    out["converged"] = bool(report["calibration_converged"])
    out = out[cols]
    out.attrs["diagnostics"] = report["banner"]
    out.attrs["drift_level"] = level
    return out


def drift_summary(new_judges: pd.DataFrame) -> list[str]:
    """One line per new judge: flagged parameters, or that it lies within the population."""
    lines = []
    for judge, g in new_judges.groupby("judge", sort=False):
        n = int(g["n_ratings"].iloc[0])
        flagged = g[g["flagged"]]
        if flagged.empty:
            lines.append(f"judge {judge} ({n} ratings): within the calibrated judge population")
        else:
            what = ", ".join(
                f"{r.direction}{f' on {r.scale}' if r.scale else ''} "
                f"(P outside = {r.p_outside:.2f})"
                for r in flagged.itertuples()
            )
            lines.append(f"judge {judge} ({n} ratings): RATER DRIFT: {what}")
    return lines
