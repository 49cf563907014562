"""Scoring a new trial with a calibration: :func:`score_trial` and :func:`score`.

The ratings are checked against the calibration's instrument, indexed against
its judges (:mod:`caltars_bayes.scoring.design`), fitted per calibration draw
and importance-weighted (:mod:`caltars_bayes.scoring.engine`, where the method
is written up), summarised into the scores table
(:mod:`caltars_bayes.scoring.result`), and the new judges are checked for
rater drift (:mod:`caltars_bayes.scoring.drift`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import xarray as xr

from caltars_bayes._core.dims import CI_PROB
from caltars_bayes._core.errors import DataError
from caltars_bayes._core.progress import Say, progress_for
from caltars_bayes.scoring.calibration import Calibration, check_instrument
from caltars_bayes.scoring.design import _Design, build_design
from caltars_bayes.scoring.drift import judge_drift, own_estimates
from caltars_bayes.scoring.engine import (
    MIN_RELATIVE_ESS,
    PARETO_K_MAX,
    laplace_draws,
    psis_weights,
)
from caltars_bayes.scoring.result import ScoreResult, score_table

if TYPE_CHECKING:
    from caltars_bayes.data.ratings import RatingData


def score_trial(
    data: RatingData,
    calibration: Calibration,
    *,
    seed: int = 0,
    importance: bool = True,
    new_judges: str = "unknown",
    progress: bool | Say = True,
) -> ScoreResult:
    """Score new subjects and sessions with a calibration; see :mod:`caltars_bayes.scoring.engine`.

    Parameters
    ----------
    data : ratings of the new trial (same instrument as the calibration).
    calibration : the calibration.
    seed : random seed of the Laplace draws.
    importance : correct each subject's Laplace draws by Pareto-smoothed
        importance weights (default); ``False`` uses the Gaussian draws as they are.
    new_judges : ``"unknown"`` (default): judges not in the calibration get the
        calibrated judge population as prior and are estimated; ``"all"``: every
        judge is treated as new (to check a calibrated judge for drift).
    progress : calibration draws done (the Laplace fits, in chunks), elapsed and
        ETA on stderr (a bar on a terminal, else a line per chunk and at least
        every 10 s); a function: one such line per chunk to it; False: nothing
        (a :func:`~caltars_bayes._core.progress.log_to` file still gets them).

    Returns
    -------
    ScoreResult with ``scores``, ``new_judges``, ``draws`` and ``report``.
    """
    check_instrument(data, calibration)
    if new_judges not in ("unknown", "all"):
        raise DataError(f"new_judges must be 'unknown' or 'all', got {new_judges!r}")
    return run_scoring(
        data,
        calibration,
        seed=seed,
        importance=importance,
        all_new=new_judges == "all",
        progress=progress,
    )


def score(
    data: RatingData,
    calibration: Calibration,
    *,
    seed: int = 0,
    importance: bool = True,
    new_judges: str = "unknown",
    progress: bool | Say = True,
) -> pd.DataFrame:
    """Posterior alliance scores of new subjects and sessions, from a calibration.

    Parameters are those of :func:`score_trial`.

    Returns
    -------
    DataFrame in the format of a fit's ``scores.csv``: ``level`` (subject or
    session), ``subject``, ``session`` (empty at subject level), ``scale``,
    ``mean``, ``sd``, ``hdi_low``, ``hdi_high`` (95% HDI), ``converged`` (the
    calibration's verdict, and False for a subject whose importance weights
    failed); ``attrs["diagnostics"]`` holds the banner. The new judges' table is
    :attr:`ScoreResult.new_judges` of :func:`score_trial`.

    Examples
    --------
    >>> cal = calibrate(fit)                       # doctest: +SKIP
    >>> score(new_data, cal).query("level == 'subject'")  # doctest: +SKIP
    """
    return score_trial(
        data,
        calibration,
        seed=seed,
        importance=importance,
        new_judges=new_judges,
        progress=progress,
    ).scores


def run_scoring(
    data: RatingData,
    cal: Calibration,
    *,
    seed: int = 0,
    importance: bool = True,
    all_new: bool = False,
    progress: bool | Say = True,
) -> ScoreResult:
    """:func:`score_trial` without its checks (method: :mod:`caltars_bayes.scoring.engine`)."""
    if "sd_interaction" in cal.draws:
        raise DataError(
            "scoring with a calibration that has judge x subject interactions is not supported"
        )
    design, notes = build_design(data, cal, all_new=all_new)
    n_total = cal.n_draws
    with progress_for("score: calibration draws", n_total, progress) as bar:
        cat, ok = laplace_draws(design, cal, seed, bar)
    smoothed, khat, rel_ess = psis_weights(cat["log_w"], importance)
    subj_ok = np.full(design.n_subjects, bool(ok.all()))
    bad_k = (khat > PARETO_K_MAX) & (rel_ess < MIN_RELATIVE_ESS)
    subj_ok &= ~bad_k
    draws = _draws_dataset(design, cat, smoothed, cal)
    problems = []
    if not ok.all():
        problems.append(f"Newton did not converge in {int((~ok).sum())} of {n_total} draws")
    if bad_k.any():
        listed = ", ".join(np.asarray(design.subjects)[bad_k][:10])
        problems.append(
            f"{int(bad_k.sum())} subject(s) whose importance weights failed (Pareto k-hat > "
            f"{PARETO_K_MAX}, relative ESS < {MIN_RELATIVE_ESS}): {listed}"
        )
    cal_banner = cal.diagnostics.banner()
    banner = f"calibration: {cal_banner}" + (
        "; scoring: " + "; ".join(problems) if problems else ""
    )
    report = {
        "method": "per-draw Laplace approximation"
        + (" with Pareto-smoothed importance weights" if importance else ", no importance weights"),
        "n_draws": n_total,
        "seed": seed,
        "importance": importance,
        "banner": banner,
        "calibration_converged": cal.converged,
        "calibration_verdict": cal.diagnostics.verdict,
        "calibration_source": cal.meta.get("source", {}),
        "pareto_k": {s: float(k) for s, k in zip(design.subjects, khat, strict=True)},
        "pareto_k_max": float(khat.max(initial=0.0)),
        "relative_ess": {s: float(e) for s, e in zip(design.subjects, rel_ess, strict=True)},
        "subjects_flagged": [s for s, b in zip(design.subjects, bad_k, strict=True) if b],
        "newton_unconverged_draws": int((~ok).sum()),
        "new_judges": list(design.new_judges),
        "notes": notes,
        "problems": problems,
        "subject_ok": {s: bool(v) for s, v in zip(design.subjects, subj_ok, strict=True)},
        "approximate": bool(cal.diagnostics.approximate),
        "approx_method": cal.diagnostics.approx_method,
    }
    scores = score_table(draws, report, CI_PROB)
    own = None
    if "v_mode" in cat:
        own = own_estimates(cat["v_mode"], cat["v_prec"], cat["v_prior"])
    judges = judge_drift(draws, cal, design, report, own)
    return ScoreResult(scores, judges, draws, report, data.report.to_dict())


def _draws_dataset(
    d: _Design, cat: dict[str, np.ndarray], log_w: np.ndarray, cal: Calibration
) -> xr.Dataset:
    n = cat["theta"].shape[0]
    coords = {
        "draw": np.arange(n),
        "subject": d.subjects,
        "session": list(d.sessions["label"]),
        "scale": d.scales,
    }
    ds = xr.Dataset(
        {
            "theta": (("draw", "subject", "scale"), cat["theta"]),
            "eta": (("draw", "session", "scale"), cat["eta"]),
            "log_weight": (("draw", "subject"), log_w.T),
        },
        coords=coords,
    )
    ds = ds.assign_coords(
        session_subject=("session", list(d.sessions["subject"])),
        session_number=("session", list(d.sessions["session"])),
    )
    if d.n_new:
        ds = ds.assign_coords(judge=d.new_judges)
        if "severity" in cal.draws:
            ds["severity"] = (("draw", "scale", "judge"), np.swapaxes(cat["sev"], 1, 2))
        if "discrimination" in cal.draws:
            ds["discrimination"] = (("draw", "judge"), np.exp(cat["ld"]))
    return ds
