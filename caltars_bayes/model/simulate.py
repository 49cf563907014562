"""Simulate whole trials from the generative model that :mod:`caltars_bayes.model.build` fits.

For the rating that judge ``j`` gives item ``i`` (on scale ``k``) in session
``t`` of subject ``p``::

    theta[p, :]    ~ MVN(0, diag(sd) Omega diag(sd)), centred over subjects
    zeta[p, t, k]  ~ Normal(0, sd_session[k])      session deviation
    eta[p, t, k]   = theta[p, k] + zeta[p, t, k] + trend[k] * time[p, t]
    mu             = alpha[j] * lambda[i] * eta[p, t, k] - delta[j, k] (+ gamma[j, p, k])
    P(y <= c)      = logistic(tau[i, c] - mu)      graded response (cumulative logit)

Judge severities ``delta`` sum to zero over judges within each scale, the log
discriminations ``log alpha`` sum to zero over judges (geometric mean 1) and
the log loadings sum to zero within each scale (geometric mean 1): exactly the
identification the model uses, so the truth is directly comparable with the
posterior.

Covariates are drawn jointly with the latent alliance: subject-level ones with
``theta`` (so their correlation with the *latent* factor is the one asked for),
session-level ones with the session-level alliance ``eta``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from caltars_bayes._core.io import atomic_write_dir
from caltars_bayes.data.ratings import RatingData
from caltars_bayes.spec.instrument import Instrument

#: Subject-level covariates of the founding study and their latent correlations
#: with the CALTARS scales used by the demo (positive contribution scales relate
#: positively to resources and gains and negatively to stressful life events;
#: alliance is independent of pretreatment symptoms).
FOUNDING_SUBJECT_COVARIATES: dict[str, dict[str, float]] = {
    "education": {"PPC": 0.35, "TPC": 0.2, "PTA": 0.25},
    "motivation": {"PPC": 0.45, "TPC": 0.2, "PTA": 0.3},
    "pretreatment_interpersonal": {"PPC": 0.4, "PTA": 0.2},
    "symptom_change": {"PPC": 0.4, "TPC": 0.3, "PTA": 0.3, "PNC": -0.2},
    "interpersonal_gain": {"PPC": 0.35, "TPC": 0.25},
    "life_events": {"PPC": -0.35, "PTA": -0.2},
    "pretreatment_symptoms": {},
}
#: Session-level covariates: patient experiencing and therapist emphasis on resistances.
FOUNDING_SESSION_COVARIATES: dict[str, dict[str, float]] = {
    "experiencing": {"PPC": 0.45, "PTA": 0.2},
    "resistance_emphasis": {"PPC": -0.3, "PNC": 0.4, "TNC": 0.35},
}


@dataclass
class Trial:
    """A simulated trial: ratings, covariates and every parameter as truth.

    ``ratings`` is long (``subject, session, judge, item, rating``) with raw
    ratings (reverse-keyed items already reversed, as a judge would write them).
    ``covariates`` has ``subject`` plus one column per subject covariate;
    ``session_covariates`` has ``subject, session`` plus one column per session
    covariate. ``truth`` is an :class:`xarray.Dataset` with dims ``subject``,
    ``session`` (one entry per rated subject x session, labelled
    ``"subject|session"``), ``judge``, ``item``, ``scale``, ``cutpoint``,
    ``covariate``.
    """

    instrument: Instrument
    ratings: pd.DataFrame
    covariates: pd.DataFrame
    session_covariates: pd.DataFrame
    truth: xr.Dataset
    params: dict = field(default_factory=dict)

    def to_rating_data(self, **kwargs):
        """Build a :class:`caltars_bayes.data.ratings.RatingData` from this trial."""
        return RatingData.from_frame(
            self.ratings,
            self.instrument,
            layout="long",
            covariates=self.covariates if self.covariates.shape[1] > 1 else None,
            session_covariates=(
                self.session_covariates if self.session_covariates.shape[1] > 2 else None
            ),
            source="<simulated ratings>",
            **kwargs,
        )

    def write(self, out: str | Path, force: bool = False) -> list[Path]:
        """Write ``ratings.csv``, ``covariates.csv``, ``session_covariates.csv``, ``truth.nc``."""
        files = {
            "ratings.csv": lambda p: self.ratings.to_csv(p, index=False),
            "covariates.csv": lambda p: self.covariates.to_csv(p, index=False),
            "session_covariates.csv": lambda p: self.session_covariates.to_csv(p, index=False),
            "truth.nc": lambda p: self.truth.to_netcdf(p, engine="h5netcdf"),
        }
        return atomic_write_dir(Path(out), files, force=force)


def _cutpoint_base(n_cat: int) -> np.ndarray:
    if n_cat == 5:
        return np.array([-2.0, -0.7, 0.5, 1.8])
    return np.linspace(-2.0, 2.0, n_cat - 1)


def _corr_matrix(codes: tuple[str, ...], factor_corr: float | np.ndarray) -> np.ndarray:
    k = len(codes)
    if np.isscalar(factor_corr):
        r = np.full((k, k), float(factor_corr))  # type: ignore[arg-type]
        np.fill_diagonal(r, 1.0)
        return r
    r = np.asarray(factor_corr, dtype=float)
    if r.shape != (k, k):
        raise ValueError(f"factor_corr must be {k}x{k}, got {r.shape}")
    return r


def _cross(
    spec: Mapping[str, Mapping[str, float]], codes: tuple[str, ...]
) -> tuple[list[str], np.ndarray]:
    names = list(spec)
    c = np.zeros((len(codes), len(names)))
    for j, name in enumerate(names):
        for scale, r in spec[name].items():
            if scale in codes:
                c[codes.index(scale), j] = r
    return names, c


def _draw_joint(
    rng: np.random.Generator, latent_cov: np.ndarray, latent: np.ndarray, cross_corr: np.ndarray
) -> np.ndarray:
    """Draw unit-variance covariates given latent values, with set correlations.

    ``latent`` has rows ~ MVN(0, latent_cov); each covariate column gets
    correlation ``cross_corr[k, j]`` with latent ``k`` and the covariates are
    conditionally independent given the latent values.
    """
    sd = np.sqrt(np.diag(latent_cov))
    cov_lx = cross_corr * sd[:, None]  # Cov(latent_k, x_j)
    b = np.linalg.solve(latent_cov, cov_lx)  # regression weights (K, J)
    explained = np.einsum("kj,kj->j", b, cov_lx)
    if np.any(explained >= 1.0):
        bad = int(np.argmax(explained))
        raise ValueError(
            f"covariate #{bad + 1}: the requested correlations are impossible given the factor"
            " correlations (explained variance >= 1)"
        )
    noise = rng.normal(size=(latent.shape[0], b.shape[1])) * np.sqrt(1.0 - explained)
    return latent @ b + noise


@dataclass(frozen=True)
class _Design:
    """Who is rated when: subjects, judges and the subject x session cells."""

    subjects: list[str]
    judges: list[str]
    cell_subject: np.ndarray  # subject index of each cell
    cell_session: np.ndarray  # session number (1, 2, ...) of each cell
    cell_time: np.ndarray  # session number centred at the middle session

    @property
    def n_cells(self) -> int:
        return len(self.cell_subject)


@dataclass(frozen=True)
class _Truth:
    """The true parameters a trial was drawn from."""

    omega: np.ndarray
    sd_a: np.ndarray
    sd_s: np.ndarray
    trend: np.ndarray
    theta: np.ndarray
    zeta: np.ndarray
    eta: np.ndarray
    delta: np.ndarray
    alpha: np.ndarray
    gamma: np.ndarray | None
    lam: np.ndarray
    tau: np.ndarray

    @property
    def sigma(self) -> np.ndarray:
        """The covariance of the treatment-level factors."""
        return self.omega * np.outer(self.sd_a, self.sd_a)


def _draw_design(
    rng: np.random.Generator,
    n_subjects: int,
    n_sessions: int,
    n_judges: int,
    min_sessions: int | None,
) -> _Design:
    """Labels and sessions per subject (random in ``min_sessions..n_sessions`` if given)."""
    subjects = [f"P{p + 1:0{max(2, len(str(n_subjects)))}d}" for p in range(n_subjects)]
    judges = [f"J{j + 1:0{len(str(n_judges))}d}" for j in range(n_judges)]
    if min_sessions is not None:
        n_ses = rng.integers(min_sessions, n_sessions + 1, size=n_subjects)
    else:
        n_ses = np.full(n_subjects, n_sessions)
    cell_subject = np.repeat(np.arange(n_subjects), n_ses)
    cell_session = np.concatenate([np.arange(1, n + 1) for n in n_ses])
    mean_time = (n_sessions + 1) / 2
    cell_time = cell_session - mean_time
    return _Design(subjects, judges, cell_subject, cell_session, cell_time)


def _draw_alliance(
    rng: np.random.Generator,
    d: _Design,
    chol: np.ndarray,
    sd_a: np.ndarray,
    sd_s: np.ndarray,
    trend: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The latent alliance: (theta per subject, zeta and eta per cell)."""
    n_k = len(sd_a)
    theta = (rng.normal(size=(len(d.subjects), n_k)) @ chol.T) * sd_a
    theta -= theta.mean(axis=0)  # origin: the sample's average subject, as in the model
    zeta = rng.normal(size=(d.n_cells, n_k)) * sd_s
    eta = theta[d.cell_subject] + zeta + trend * d.cell_time[:, None]
    return theta, zeta, eta


def _draw_judges(
    rng: np.random.Generator,
    n_judges: int,
    n_subjects: int,
    n_k: int,
    sd_severity: float,
    sd_log_discrimination: float,
    sd_interaction: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Judge severities (sum to zero), discriminations (geometric mean 1), interactions."""
    delta = rng.normal(0, sd_severity, size=(n_judges, n_k)) if n_judges > 1 else np.zeros((1, n_k))
    delta -= delta.mean(axis=0, keepdims=True)
    log_alpha = rng.normal(0, sd_log_discrimination, size=n_judges) if n_judges > 1 else np.zeros(1)
    log_alpha -= log_alpha.mean()
    alpha = np.exp(log_alpha)
    gamma = (
        rng.normal(0, sd_interaction, size=(n_judges, n_subjects, n_k)) if sd_interaction else None
    )
    return delta, alpha, gamma


def _draw_items(
    rng: np.random.Generator,
    item_scale: np.ndarray,
    n_k: int,
    n_cat: int,
    sd_log_loading: float,
    sd_item_location: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Item loadings (geometric mean 1 per scale) and cutpoints."""
    log_lam = rng.normal(0, sd_log_loading, size=len(item_scale))
    for k in range(n_k):
        log_lam[item_scale == k] -= log_lam[item_scale == k].mean()
    lam = np.exp(log_lam)
    tau = _cutpoint_base(n_cat)[None, :] + rng.normal(0, sd_item_location, size=(len(lam), 1))
    return lam, tau


def _draw_ratings(
    rng: np.random.Generator,
    instrument: Instrument,
    d: _Design,
    t: _Truth,
    item_scale: np.ndarray,
    judges_per_session: int | None,
    missing_rate: float,
) -> pd.DataFrame:
    """The long rating table: every item of each sheet (cell x judge rating it)."""
    items = instrument.items
    n_i, n_judges = len(items), len(d.judges)
    # which judge rates which session (sheet = cell x judge)
    if judges_per_session is None or judges_per_session >= n_judges:
        sheet_cell = np.repeat(np.arange(d.n_cells), n_judges)
        sheet_judge = np.tile(np.arange(n_judges), d.n_cells)
    else:
        picks = np.argsort(rng.random((d.n_cells, n_judges)), axis=1)[:, :judges_per_session]
        sheet_cell = np.repeat(np.arange(d.n_cells), judges_per_session)
        sheet_judge = np.sort(picks, axis=1).ravel()
    n_sheets = len(sheet_cell)

    # ratings: sheets x items
    k_of = item_scale[None, :]
    c_idx = sheet_cell[:, None]
    j_idx = sheet_judge[:, None]
    mu = t.alpha[j_idx] * t.lam[None, :] * t.eta[c_idx, k_of] - t.delta[j_idx, k_of]
    if t.gamma is not None:
        mu = mu + t.gamma[j_idx, d.cell_subject[c_idx], k_of]
    cum = 1.0 / (1.0 + np.exp(-(t.tau[None, :, :] - mu[..., None])))  # P(y <= c)
    u = rng.uniform(size=mu.shape)
    score = instrument.response_min + (u[..., None] > cum).sum(-1)
    rev = np.array([it in instrument.reverse_keyed for it in items])
    rating = np.where(
        rev[None, :], instrument.response_min + instrument.response_max - score, score
    )

    long = pd.DataFrame(
        {
            "subject": np.repeat(np.array(d.subjects)[d.cell_subject[sheet_cell]], n_i),
            "session": np.repeat(d.cell_session[sheet_cell], n_i),
            "judge": np.repeat(np.array(d.judges)[sheet_judge], n_i),
            "item": np.tile(np.array(items), n_sheets),
            "rating": rating.ravel().astype(float),
        }
    )
    if missing_rate > 0:
        keep = rng.random(len(long)) >= missing_rate
        long = long.loc[keep].reset_index(drop=True)
    long["rating"] = long["rating"].astype(int)
    return long


def _draw_covariates(
    rng: np.random.Generator,
    d: _Design,
    t: _Truth,
    codes: tuple[str, ...],
    sub_spec: Mapping[str, Mapping[str, float]],
    ses_spec: Mapping[str, Mapping[str, float]],
    covariate_missing_rate: float,
) -> tuple[pd.DataFrame, pd.DataFrame, tuple[list[str], np.ndarray], tuple[list[str], np.ndarray]]:
    """Subject covariates (drawn with ``theta``) and session ones (with ``eta``).

    Returns
    -------
    (subject covariate table, session covariate table, (names, latent correlations) of the
    subject covariates, the same of the session covariates)
    """
    n_subjects = len(d.subjects)
    sigma = t.sigma
    cov_names, cross = _cross(sub_spec, codes)
    x_sub = _draw_joint(rng, sigma, t.theta, cross) if cov_names else np.zeros((n_subjects, 0))
    eta_cov = sigma + np.diag(t.sd_s**2)
    ses_names, cross_s = _cross(ses_spec, codes)
    eta_stationary = t.eta - t.trend * d.cell_time[:, None]
    x_ses = (
        _draw_joint(rng, eta_cov, eta_stationary, cross_s)
        if ses_names
        else np.zeros((d.n_cells, 0))
    )
    covs = pd.DataFrame({"subject": d.subjects})
    for j, name in enumerate(cov_names):
        col = x_sub[:, j].copy()
        if covariate_missing_rate:
            col[rng.random(n_subjects) < covariate_missing_rate] = np.nan
        covs[name] = col
    scovs = pd.DataFrame(
        {"subject": np.array(d.subjects)[d.cell_subject], "session": d.cell_session}
    )
    for j, name in enumerate(ses_names):
        col = x_ses[:, j].copy()
        if covariate_missing_rate:
            col[rng.random(d.n_cells) < covariate_missing_rate] = np.nan
        scovs[name] = col
    return covs, scovs, (cov_names, cross), (ses_names, cross_s)


def _truth_dataset(
    instrument: Instrument,
    d: _Design,
    t: _Truth,
    item_scale: np.ndarray,
    cov_cross: tuple[list[str], np.ndarray],
    ses_cross: tuple[list[str], np.ndarray],
    sd_severity: float,
    sd_log_discrimination: float,
    attrs: dict[str, Any],
) -> xr.Dataset:
    """Every true parameter of a trial as a dataset (see :class:`Trial`)."""
    codes = instrument.scale_codes
    subjects, n_k = d.subjects, len(codes)
    cov_names, cross = cov_cross
    ses_names, cross_s = ses_cross
    session_labels = [
        f"{subjects[p]}|{s}" for p, s in zip(d.cell_subject, d.cell_session, strict=True)
    ]
    coords: dict[str, Any] = {
        "subject": subjects,
        "session": session_labels,
        "judge": d.judges,
        "item": list(instrument.items),
        "scale": list(codes),
        "scale2": list(codes),
        "cutpoint": np.arange(instrument.n_categories - 1),
    }
    data_vars: dict[str, Any] = {
        "theta": (("subject", "scale"), t.theta),
        "zeta": (("session", "scale"), t.zeta),
        "eta": (("session", "scale"), t.eta),
        "factor_corr": (("scale", "scale2"), t.omega),
        # the correlation of this sample's true scores: what the trial can inform
        "factor_corr_sample": (
            ("scale", "scale2"),
            np.corrcoef(t.theta.T) if len(subjects) > 2 and n_k > 1 else np.eye(n_k),
        ),
        "sd_alliance": (("scale",), t.sd_a),
        "sd_session": (("scale",), t.sd_s),
        "session_trend": (("scale",), t.trend),
        "severity": (("judge", "scale"), t.delta),
        "discrimination": (("judge",), t.alpha),
        "loading": (("item",), t.lam),
        "cutpoints": (("item", "cutpoint"), t.tau),
        "sd_severity": ((), float(sd_severity)),
        "sd_log_discrimination": ((), float(sd_log_discrimination)),
    }
    if t.gamma is not None:
        data_vars["interaction"] = (("judge", "subject", "scale"), t.gamma)
    if cov_names:
        coords["covariate"] = cov_names
        data_vars["covariate_corr"] = (("scale", "covariate"), cross)
    if ses_names:
        coords["session_covariate"] = ses_names
        data_vars["session_covariate_corr"] = (("scale", "session_covariate"), cross_s)
    return xr.Dataset(
        data_vars,
        coords={
            **coords,
            "session_subject": ("session", np.array(subjects)[d.cell_subject]),
            "session_number": ("session", d.cell_session),
            "item_scale": ("item", [codes[k] for k in item_scale]),
        },
        attrs=attrs,
    )


def simulate_trial(
    instrument: Instrument,
    n_subjects: int = 52,
    n_sessions: int = 4,
    n_judges: int = 3,
    *,
    judges_per_session: int | None = None,
    min_sessions: int | None = None,
    factor_corr: float | np.ndarray = 0.3,
    sd_alliance: float | np.ndarray = 1.3,
    sd_session: float | np.ndarray = 0.6,
    session_trend: float | np.ndarray = 0.0,
    sd_severity: float = 0.3,
    sd_log_discrimination: float = 0.15,
    sd_log_loading: float = 0.2,
    sd_item_location: float = 0.4,
    sd_interaction: float = 0.0,
    missing_rate: float = 0.0,
    subject_covariates: Mapping[str, Mapping[str, float]] | None = None,
    session_covariates: Mapping[str, Mapping[str, float]] | None = None,
    covariate_missing_rate: float = 0.0,
    seed: int | None = 1,
) -> Trial:
    """Draw a trial from the measurement model with known parameters.

    Parameters
    ----------
    instrument : the instrument (items, scales, response range, reverse keys).
    n_subjects, n_sessions, n_judges : the design; default is the founding study
        (52 subjects x 4 sessions x 3 judges, every judge rating every session).
    judges_per_session : if given (< n_judges), each session is rated by that many
        judges drawn at random: a sparse, incomplete crossing.
    min_sessions : if given, each subject has a random number of sessions in
        ``min_sessions..n_sessions`` (unequal sessions per subject).
    factor_corr : correlation between the latent scale factors (scalar or matrix).
    sd_alliance : SD of the treatment-level factor per scale (logit units of the
        average judge and item).
    sd_session : SD of session deviations (same units).
    session_trend : linear change per session (centred session number), per scale.
    sd_severity : SD of judge severity (logit units), per scale, sum-to-zero over judges.
    sd_log_discrimination : SD of log judge discrimination (sum-to-zero over judges).
    sd_log_loading : SD of log item loadings (centred to geometric mean 1 per scale).
    sd_item_location : SD of item shifts added to the base cutpoints.
    sd_interaction : SD of judge x subject x scale interactions (0: none).
    missing_rate : fraction of ratings deleted at random.
    subject_covariates : ``{name: {scale_code: latent r}}``; default: none.
        Use :data:`FOUNDING_SUBJECT_COVARIATES` for the founding study's.
    session_covariates : same for session-level covariates (correlated with the
        session-level alliance ``eta``).
    covariate_missing_rate : fraction of covariate values set to missing.
    seed : random seed; the same seed gives the same trial.

    Returns
    -------
    Trial
    """
    rng = np.random.default_rng(seed)
    codes = instrument.scale_codes
    items = instrument.items
    n_k = len(codes)
    item_scale = np.array([codes.index(instrument.item_scale[i]) for i in items])

    omega = _corr_matrix(codes, factor_corr)
    try:
        chol = np.linalg.cholesky(omega)
    except np.linalg.LinAlgError:
        raise ValueError("factor_corr is not a valid correlation matrix") from None
    sd_s = np.broadcast_to(np.asarray(sd_session, dtype=float), (n_k,)).copy()
    sd_a = np.broadcast_to(np.asarray(sd_alliance, dtype=float), (n_k,)).copy()
    trend = np.broadcast_to(np.asarray(session_trend, dtype=float), (n_k,)).copy()

    d = _draw_design(rng, n_subjects, n_sessions, n_judges, min_sessions)
    theta, zeta, eta = _draw_alliance(rng, d, chol, sd_a, sd_s, trend)
    delta, alpha, gamma = _draw_judges(
        rng, n_judges, n_subjects, n_k, sd_severity, sd_log_discrimination, sd_interaction
    )
    lam, tau = _draw_items(
        rng, item_scale, n_k, instrument.n_categories, sd_log_loading, sd_item_location
    )
    t = _Truth(omega, sd_a, sd_s, trend, theta, zeta, eta, delta, alpha, gamma, lam, tau)
    long = _draw_ratings(rng, instrument, d, t, item_scale, judges_per_session, missing_rate)
    sub_spec = dict(subject_covariates or {})
    ses_spec = dict(session_covariates or {})
    covs, scovs, cov_cross, ses_cross = _draw_covariates(
        rng, d, t, codes, sub_spec, ses_spec, covariate_missing_rate
    )
    truth = _truth_dataset(
        instrument,
        d,
        t,
        item_scale,
        cov_cross,
        ses_cross,
        sd_severity,
        sd_log_discrimination,
        attrs={
            "instrument": instrument.name,
            "seed": -1 if seed is None else int(seed),
            "n_subjects": n_subjects,
            "n_sessions": n_sessions,
            "n_judges": n_judges,
        },
    )
    params = {
        "n_subjects": n_subjects,
        "n_sessions": n_sessions,
        "n_judges": n_judges,
        "judges_per_session": judges_per_session,
        "min_sessions": min_sessions,
        "seed": seed,
    }
    return Trial(instrument, long, covs, scovs, truth, params)


def simulate_ratings(
    trial: Trial,
    judges: Mapping[str, tuple[float | np.ndarray, float]],
    subjects: list[str] | None = None,
    seed: int | None = 1,
) -> pd.DataFrame:
    """Ratings of a simulated trial's sessions by other judges (e.g. new or drifting ones).

    Every listed judge rates every item of every session of ``subjects`` (all
    by default) from the trial's true session alliance, loadings and
    cutpoints, with the given severity (a number, or one per scale) and
    discrimination, on the trial's scale (severity relative to its panel's
    average judge, discrimination relative to its geometric mean).

    Returns
    -------
    DataFrame ``subject, session, judge, item, rating`` (raw ratings:
    reverse-keyed items reversed as a judge writes them).
    """
    rng = np.random.default_rng(seed)
    t, inst = trial.truth, trial.instrument
    codes = list(t["scale"].values)
    items = list(t["item"].values)
    item_scale = np.array([codes.index(inst.item_scale[i]) for i in items])
    ses_subject = np.asarray(t["session_subject"].values).astype(str)
    keep = np.ones(len(ses_subject), bool) if subjects is None else np.isin(ses_subject, subjects)
    eta = t["eta"].transpose("session", "scale").values[keep]
    numbers = np.asarray(t["session_number"].values)[keep]
    lam = t["loading"].values
    tau = t["cutpoints"].transpose("item", "cutpoint").values
    rev = np.array([i in inst.reverse_keyed for i in items])
    frames = []
    for name, (severity, discrimination) in judges.items():
        sev = np.broadcast_to(np.asarray(severity, dtype=float), (len(codes),))
        mu = discrimination * lam[None, :] * eta[:, item_scale] - sev[item_scale][None, :]
        cum = 1.0 / (1.0 + np.exp(-(tau[None, :, :] - mu[..., None])))
        score = inst.response_min + (rng.uniform(size=mu.shape)[..., None] > cum).sum(-1)
        rating = np.where(rev[None, :], inst.response_min + inst.response_max - score, score)
        frames.append(
            pd.DataFrame(
                {
                    "subject": np.repeat(ses_subject[keep], len(items)),
                    "session": np.repeat(numbers, len(items)),
                    "judge": name,
                    "item": np.tile(items, len(eta)),
                    "rating": rating.ravel().astype(int),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)
