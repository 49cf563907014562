"""The result of scoring a trial: the scores table, the new judges' table, the draws.

:class:`ScoreResult` holds what :func:`caltars_bayes.scoring.trial.score_trial`
returns and writes it (``scores.csv``, ``new_judges.csv``, ``data_report.json``,
``score_report.json``); :func:`score_table` summarises the importance-weighted
draws into the rows of a fit's ``scores.csv``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from caltars_bayes._core.io import atomic_write_dir, json_writer
from caltars_bayes._core.summaries import weighted_describe


@dataclass
class ScoreResult:
    """Scores of a new trial from a calibration.

    Attributes
    ----------
    scores : posterior alliance per subject x scale and per session x scale, in
        the format of a fit's ``scores.csv`` (see :func:`caltars_bayes.scoring.trial.score`).
    new_judges : the judges not in the calibration (see
        :func:`caltars_bayes.scoring.drift.judge_drift`).
    draws : :class:`xarray.Dataset` with ``theta`` (draw, subject, scale),
        ``eta`` (draw, session, scale), ``log_weight`` (draw, subject; PSIS-smoothed
        and normalised per subject), and the new judges' ``severity`` (draw,
        scale, judge) and ``discrimination`` (draw, judge).
    report : method, Pareto k-hat per subject, Newton failures, notes, the
        calibration's verdict and source.
    """

    scores: pd.DataFrame
    new_judges: pd.DataFrame
    draws: xr.Dataset
    report: dict[str, Any]
    data_report: dict[str, Any] = field(default_factory=dict)

    @property
    def banner(self) -> str:
        return str(self.report["banner"])

    def intervals(self, prob: float) -> pd.DataFrame:
        """Scores with a ``prob`` HDI instead of 95% (same columns as ``scores``)."""
        return score_table(self.draws, self.report, prob=prob)

    def save(self, out: str | Path, force: bool = False) -> Path:
        """Write ``scores.csv``, ``new_judges.csv``, ``data_report.json``, ``score_report.json``."""
        out = Path(out)
        files = {
            "scores.csv": lambda p: self.scores.to_csv(p, index=False),
            "new_judges.csv": lambda p: self.new_judges.to_csv(p, index=False),
            "data_report.json": json_writer(self.data_report),
            "score_report.json": json_writer(self.report),
        }
        atomic_write_dir(out, files, force=force)
        return out

    def __repr__(self) -> str:
        return (
            f"ScoreResult({self.draws.sizes['subject']} subjects, "
            f"{self.draws.sizes['session']} sessions, {len(self.report['new_judges'])} new "
            f"judges; {self.banner})"
        )


def score_table(draws: xr.Dataset, report: dict[str, Any], prob: float) -> pd.DataFrame:
    """Subject x scale and session x scale rows from the weighted draws."""
    subjects = [str(s) for s in draws["subject"].values]
    scales = [str(k) for k in draws["scale"].values]
    lw = draws["log_weight"].transpose("subject", "draw").values
    theta = draws["theta"].transpose("subject", "scale", "draw").values
    k_n = len(scales)
    st = weighted_describe(
        theta.reshape(-1, theta.shape[-1]), np.repeat(lw, k_n, axis=0), prob=prob
    )
    sub = pd.DataFrame(
        {
            "level": "subject",
            "subject": np.repeat(subjects, k_n),
            "session": "",
            "scale": np.tile(scales, len(subjects)),
            **st,
        }
    )
    eta = draws["eta"].transpose("session", "scale", "draw").values
    ses_subj = [str(s) for s in draws["session_subject"].values]
    pos = {s: i for i, s in enumerate(subjects)}
    lw_ses = lw[[pos[s] for s in ses_subj]]
    se = weighted_describe(eta.reshape(-1, eta.shape[-1]), np.repeat(lw_ses, k_n, axis=0), prob)
    ses = pd.DataFrame(
        {
            "level": "session",
            "subject": np.repeat(ses_subj, k_n),
            "session": np.repeat([str(s) for s in draws["session_number"].values], k_n),
            "scale": np.tile(scales, len(ses_subj)),
            **se,
        }
    )
    out = pd.concat([sub, ses], ignore_index=True)
    out = out[["level", "subject", "session", "scale", "mean", "sd", "hdi_low", "hdi_high"]]
    ok = report["subject_ok"]
    out["converged"] = bool(report["calibration_converged"]) & out["subject"].map(ok).astype(bool)
    if report.get("approximate"):
        out["approximate"] = report.get("approx_method") or "yes"
    out.attrs["diagnostics"] = report["banner"]
    return out


def read_report(path: str | Path) -> dict[str, Any]:
    """Read a ``score_report.json``."""
    return json.loads(Path(path).read_text())
