"""Interrater and generalizability coefficients: per draw, and the ``reliability`` table.

:func:`coefficient_from_components` turns the five variance components
(:mod:`caltars_bayes.analysis.reliability.components`) into every coefficient
reported here and projected by the decision study, so the posterior, the
simulation truth and the planning code all use one formula.
:func:`reliability_draws` gives the per-draw coefficients of a fit by both
routes; :func:`reliability` summarises them beside the classical Shrout &
Fleiss ICCs of the observed scale scores (:func:`classical_reliability`), and
adds the classical internal consistency of each scale (Cronbach's alpha and
McDonald's omega, :func:`classical_internal_consistency`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import xarray as xr

from caltars_bayes._core.dims import CI_PROB
from caltars_bayes._core.errors import DataError
from caltars_bayes._core.summaries import describe_finite
from caltars_bayes.analysis.classical.icc import scale_score_icc
from caltars_bayes.analysis.classical.internal import N_BOOT, scale_internal_consistency
from caltars_bayes.analysis.reliability.components import (
    NEW_JUDGES,
    OBSERVED_DRAWS,
    ROUTES,
    _posterior_latent_components,
    _posterior_observed_components,
    _thin,
    judges_per_session,
    sessions_per_subject,
)
from caltars_bayes.inference.diagnostics import stamp

if TYPE_CHECKING:
    from caltars_bayes.data.ratings import RatingData
    from caltars_bayes.inference.fit import Fit

LEVELS = ("session", "treatment")
COEFFICIENTS = ("agreement", "consistency")
GENERALIZES_JUDGES = "judges"
GENERALIZES_BOTH = "judges and sessions"
GENERALIZES_ITEMS = "items"
#: ``route`` of the classical internal-consistency rows (``coefficient`` alpha, omega).
CLASSICAL_ROUTE = "classical"
_COEF_ORDER = (*COEFFICIENTS, "alpha", "omega")


def coefficient_from_components(
    components: Mapping[str, Any],
    *,
    judges: Any = 1,
    sessions: Any = 1,
    level: str = "session",
    coefficient: str = "agreement",
    generalize_sessions: bool = False,
) -> Any:
    """A reliability coefficient from the five variance components.

    With ``k = judges``, ``n = sessions`` and the components ``Vp, Vs, Vj,
    Vpj, Vr`` (:data:`~caltars_bayes.analysis.reliability.components.COMPONENTS`);
    ``Vj*`` is ``Vj`` for ``"agreement"`` (absolute agreement, the ICC(2)
    family) and 0 for ``"consistency"`` (the ICC(3) family, judges' leniency
    removed):

    - session level (the session's alliance, mean of ``k`` judges)::

          (Vp + Vs) / (Vp + Vs + (Vj* + Vpj + Vr) / k)

    - treatment level, interrater (the founding study's coefficient: the
      subject's scale score averaged over its ``n`` rated sessions, the same
      ``k`` judges rating every session; the rated sessions are part of the
      target, only judges are generalized over)::

          (Vp + Vs/n) / (Vp + Vs/n + (Vj* + Vpj + Vr/n) / k)

    - treatment level, ``generalize_sessions=True`` (the generalizability
      coefficient of the treatment-level score for the subject's alliance over
      the whole treatment: sessions and judges both random; the decision
      study's coefficient)::

          Vp / (Vp + Vs/n + (Vj* + Vpj) / k + Vr / (n k))

    Parameters
    ----------
    components : mapping with the five component names (numbers or arrays).
    judges, sessions : ``k`` and ``n`` (numbers or broadcastable arrays).
    level : ``"session"`` or ``"treatment"``.
    coefficient : ``"agreement"`` or ``"consistency"``.
    generalize_sessions : see above (treatment level only).

    Returns
    -------
    The coefficient, broadcast over the inputs.
    """
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
    if coefficient not in COEFFICIENTS:
        raise ValueError(f"coefficient must be one of {COEFFICIENTS}, got {coefficient!r}")
    vp, vs = components["var_subject"], components["var_session"]
    vj = components["var_judge"] if coefficient == "agreement" else 0.0
    vpj, vr = components["var_subject_judge"], components["var_residual"]
    k, n = judges, sessions
    if level == "session":
        if generalize_sessions:
            raise ValueError("generalize_sessions applies to the treatment level only")
        true = vp + vs
        err = (vj + vpj + vr) / k
    elif generalize_sessions:
        true = vp
        err = vs / n + (vj + vpj) / k + vr / (n * k)
    else:
        true = vp + vs / n
        err = (vj + vpj + vr / n) / k
    return true / (true + err)


def spearman_brown(r: Any, k: Any) -> Any:
    """Reliability of the mean of ``k`` parallel measures of single reliability ``r``."""
    return k * r / (1 + (k - 1) * r)


# --------------------------------------------------------------------------- per-draw coefficients


def _coefficients(
    comps: Mapping[str, xr.DataArray], judges: xr.DataArray, n_sessions: float
) -> dict[str, xr.DataArray]:
    """Interrater (session, treatment) and generalizability coefficients from components."""
    out: dict[str, xr.DataArray] = {}
    for coef in COEFFICIENTS:
        per_level = [
            coefficient_from_components(
                comps, judges=judges, sessions=n_sessions, level=lev, coefficient=coef
            )
            for lev in LEVELS
        ]
        out[coef] = xr.concat(per_level, dim=xr.DataArray(list(LEVELS), dims="level"))
        gen = coefficient_from_components(
            comps, judges=judges, sessions=n_sessions, level="treatment",
            coefficient=coef, generalize_sessions=True,
        )  # fmt: skip
        out["generalizability" if coef == "agreement" else f"generalizability_{coef}"] = gen
    return out


def reliability_draws(
    fit: Fit,
    k_judges: int | None = None,
    *,
    routes: Sequence[str] = ROUTES,
    max_observed_draws: int | None = OBSERVED_DRAWS,
    n_new_judges: int = NEW_JUDGES,
    seed: int = 0,
) -> xr.Dataset:
    """Per-draw reliability coefficients and variance components, both routes.

    Parameters
    ----------
    fit : a fitted model.
    k_judges : the ``k`` of the mean-of-``k``-judges coefficients; default the
        design's judges per session (:func:`judges_per_session`).
    routes : ``"latent"`` and/or ``"observed"``.
    max_observed_draws : draws (evenly thinned within chains) used by the
        observed route; ``None`` for all. The other draws are NaN there.
    n_new_judges : new judges replicated per draw by the observed route.
    seed : seed of the observed route's replication.

    Returns
    -------
    xarray.Dataset with

    ``agreement``, ``consistency`` : dims ``(chain, draw, scale, level, judges, route)``
        interrater coefficients (absolute agreement, ICC(2)-type; consistency,
        ICC(3)-type) at ``level`` ``"session"`` and ``"treatment"`` (the
        subject's scale score averaged over its rated sessions), for one judge
        and the mean of ``k`` judges.
    ``generalizability``, ``generalizability_consistency`` : dims ``(chain,
        draw, scale, judges, route)``: the treatment-level score as a measure
        of the subject's alliance over the treatment (sessions and judges both
        generalized over, ``n`` = the design's sessions per subject).
    ``var_subject``, ``var_session``, ``var_judge``, ``var_subject_judge``,
    ``var_residual`` : dims ``(chain, draw, scale, route)``, the components.

    ``attrs``: ``k_judges``, ``sessions_per_subject``, ``observed_draws``
    (draws used by the observed route), ``n_new_judges``, ``seed`` and
    ``diagnostics`` (the fit's convergence banner).
    """
    bad = [r for r in routes if r not in ROUTES]
    if bad or not routes:
        raise ValueError(f"routes must be among {ROUTES}, got {list(routes)!r}")
    data, post = fit.data, fit.posterior
    k = judges_per_session(data) if k_judges is None else int(k_judges)
    if k < 1:
        raise ValueError(f"k_judges must be >= 1, got {k_judges}")
    n_ses = sessions_per_subject(data)
    judges = xr.DataArray(sorted({1, k}), dims="judges")
    judges = judges.assign_coords(judges=judges.values)
    latent = _posterior_latent_components(fit)
    ref = latent["var_subject"]
    per_route: list[dict[str, xr.DataArray]] = []
    n_obs_draws = 0
    for route in routes:
        if route == "latent":
            comps = latent
        else:
            n_c, n_d = post.sizes["chain"], post.sizes["draw"]
            ci, di = _thin(n_c, n_d, max_observed_draws)
            n_obs_draws = len(ci)
            obs = _posterior_observed_components(fit, ci, di, n_new_judges, seed)
            comps = {}
            for name, vals in obs.items():
                full = np.full((n_c, n_d, data.n_scales), np.nan)
                full[ci, di] = vals.reshape(len(ci), -1)
                comps[name] = xr.DataArray(full, dims=ref.dims, coords=ref.coords)
        coefs = _coefficients(comps, judges, n_ses)
        per_route.append({**coefs, **comps})
    ds = xr.concat([xr.Dataset(r) for r in per_route], dim=xr.DataArray(list(routes), dims="route"))
    ds = ds.assign_coords(route=list(routes))
    order = ("chain", "draw", "scale", "level", "judges", "route")
    for var in list(ds.data_vars):
        ds[var] = ds[var].transpose(*[d for d in order if d in ds[var].dims])
    ds.attrs = {
        "k_judges": k,
        "sessions_per_subject": n_ses,
        "observed_draws": n_obs_draws,
        "n_new_judges": n_new_judges if "observed" in routes else 0,
        "seed": seed,
        "diagnostics": fit.diagnostics.banner(),
    }
    return ds


# --------------------------------------------------------------------------- summaries


def classical_reliability(data: RatingData) -> pd.DataFrame:
    """Shrout & Fleiss ICCs of the observed scale scores, per scale, session and treatment level.

    Session level: targets are sessions, each judge's scale score is the mean
    of the items of the scale it rated. Treatment level: targets are
    subjects, each judge's score is the mean of its session scale scores
    over the subject's sessions. A complete targets x judges table uses the
    two-way ANOVA (:func:`caltars_bayes.analysis.classical.icc.icc_shrout_fleiss`); an
    incomplete one REML variance components of the crossed random-effects
    model (:func:`caltars_bayes.analysis.classical.icc.icc_unbalanced`), never listwise
    deletion. When every subject has one session the treatment-level table is
    the session-level one, so its rows are copied, not computed again
    (the REML fit of a sparse 1,128 subjects x 2,972 judges table, the
    crossed shape of benchmarks/real_size.py, took 128 s before the fit was
    made sparse, and about 2 s since; see :mod:`caltars_bayes.analysis.classical.reml`).

    Returns
    -------
    DataFrame with columns ``scale, level, type, model, unit, k, icc, F, df1,
    df2, p, ci_low, ci_high, method, n_targets, n_judges, n_obs`` (six rows
    per scale and level; empty when fewer than two judges rated a target).
    """
    parts: list[pd.DataFrame] = []
    one_session = bool(data.sessions["subject"].is_unique)
    for level, targets in (("session", ["subject", "session"]), ("treatment", ["subject"])):
        if level == "treatment" and one_session:
            # each subject's one session is its treatment: the same table and ICCs
            parts += [p.assign(level="treatment") for p in list(parts)]
            break
        scores = data.scale_scores("session" if level == "session" else "subject", by_judge=True)
        for scale in data.scales:
            sub = scores[[*targets, "judge", scale]].dropna()
            try:
                icc = scale_score_icc(sub, targets, "judge", scale)
            except DataError:
                continue
            icc.insert(0, "level", level)
            icc.insert(0, "scale", scale)
            parts.append(icc)
    if not parts:
        return pd.DataFrame(
            columns=["scale", "level", "type", "model", "unit", "k", "icc", "F", "df1", "df2",
                     "p", "ci_low", "ci_high", "method", "n_targets", "n_judges", "n_obs"]
        )  # fmt: skip
    return pd.concat(parts, ignore_index=True)


def classical_internal_consistency(
    data: RatingData, prob: float = CI_PROB, *, n_boot: int = N_BOOT, seed: int = 0
) -> pd.DataFrame:
    """Cronbach's alpha and McDonald's omega per scale as rows of the ``reliability`` table.

    Computed on the observed item scores (after reverse keying), one row per
    subject x session x judge, the scale's items as columns, incomplete rows
    deleted within the scale, with percentile intervals of a bootstrap over
    subjects (:func:`caltars_bayes.analysis.classical.internal.internal_consistency`).
    They describe one judge's scale score of one session, generalizing over
    items, hence ``level = "session"``, ``judges = 1``, ``sessions = 1``,
    ``route = "classical"``, ``generalizes_over = "items"``.

    Returns
    -------
    DataFrame with the columns of :func:`reliability` but ``converged``:
    ``median`` and ``mean`` hold the point estimate, ``hdi_low`` and
    ``hdi_high`` the confidence limits (level ``prob``), ``n_draws`` the
    bootstrap resamples, ``classical_method`` the method, ``n_obs`` the
    complete rows used and ``n_items`` the items; ``classical`` and
    ``classical_oneway`` are NaN.
    """
    ic = scale_internal_consistency(data, n_boot=n_boot, seed=seed, prob=prob)
    return pd.DataFrame(
        {
            "scale": ic["scale"],
            "level": "session",
            "judges": 1,
            "sessions": 1.0,
            "route": CLASSICAL_ROUTE,
            "coefficient": ic["coefficient"],
            "generalizes_over": GENERALIZES_ITEMS,
            "median": ic["estimate"].astype(float),
            "mean": ic["estimate"].astype(float),
            "hdi_low": ic["ci_low"].astype(float),
            "hdi_high": ic["ci_high"].astype(float),
            "n_draws": ic["n_boot"].astype(int),
            "classical": np.nan,
            "classical_oneway": np.nan,
            "classical_method": ic["method"],
            "n_obs": ic["n_obs"].astype(float),
            "n_items": ic["n_items"].astype(float),
        }
    )


def _classical_lookup(classical: pd.DataFrame, scale: str, level: str, case: str, k: int):
    """Classical coefficient of ``case`` (1, 2, 3) for ``k`` judges (Spearman-Brown from single)."""
    row = classical[
        (classical["scale"] == scale)
        & (classical["level"] == level)
        & (classical["type"] == f"ICC({case},1)")
    ]
    if row.empty:
        return np.nan
    return float(spearman_brown(float(row["icc"].iloc[0]), k))


def _in_table_order(out: pd.DataFrame, scales: Sequence[str]) -> pd.DataFrame:
    """The ``reliability`` rows in order (scale; posterior rows by level, generalizability,
    coefficient, judges, route; then alpha and omega) and columns."""
    out["judges"] = out["judges"].astype(int)
    out["_s"] = out["scale"].map({s: i for i, s in enumerate(scales)})
    out["_k"] = (out["route"] == CLASSICAL_ROUTE).astype(int)
    out["_l"] = out["level"].map({"session": 0, "treatment": 1})
    out["_g"] = (out["generalizes_over"] != GENERALIZES_JUDGES).astype(int)
    out["_c"] = out["coefficient"].map({c: i for i, c in enumerate(_COEF_ORDER)})
    out["_r"] = out["route"].map({r: i for i, r in enumerate(ROUTES)}).fillna(len(ROUTES))
    out = out.sort_values(["_s", "_k", "_l", "_g", "_c", "judges", "_r"], kind="stable")
    cols = [
        "scale", "level", "judges", "sessions", "route", "coefficient", "generalizes_over",
        "median", "mean", "hdi_low", "hdi_high", "n_draws", "classical", "classical_oneway",
        "classical_method", "n_obs", "n_items",
    ]  # fmt: skip
    return out[cols].reset_index(drop=True)


def reliability(
    fit: Fit,
    k_judges: int | None = None,
    prob: float = CI_PROB,
    *,
    draws: xr.Dataset | None = None,
    max_observed_draws: int | None = OBSERVED_DRAWS,
    n_new_judges: int = NEW_JUDGES,
    seed: int = 0,
    n_boot: int = N_BOOT,
) -> pd.DataFrame:
    """Reliability coefficients as posteriors, with the classical ICC beside them.

    Parameters
    ----------
    fit : a fitted model.
    k_judges : ``k`` of the mean-of-``k``-judges rows; default the design's
        judges per session.
    prob : HDI probability.
    draws : a :func:`reliability_draws` result to summarise (else computed).
    max_observed_draws, n_new_judges, seed : see :func:`reliability_draws`
        (``seed`` also seeds the bootstrap of the classical alpha and omega).
    n_boot : bootstrap resamples of the alpha and omega intervals.

    Returns
    -------
    DataFrame, one row per scale x level x judges x route x coefficient
    (interrater rows), the treatment-level generalizability rows and, last
    for each scale, the classical internal-consistency rows
    (:func:`classical_internal_consistency`: ``route = "classical"``,
    ``coefficient = "alpha"`` or ``"omega"``, ``generalizes_over =
    "items"``, the point estimate in ``median`` and ``mean`` and the
    bootstrap confidence limits in ``hdi_low`` and ``hdi_high``), columns

    ``scale``; ``level`` (``"session"`` or ``"treatment"``); ``judges`` (1 or
    ``k``); ``sessions`` (sessions averaged: 1 at session level, the design's
    harmonic mean per subject at treatment level); ``route`` (``"latent"`` or
    ``"observed"``); ``coefficient`` (``"agreement"``: absolute agreement,
    ICC(2)-type; ``"consistency"``: ICC(3)-type); ``generalizes_over``
    (``"judges"``: interrater reliability of the rated sessions, the founding
    study's kind of number; ``"judges and sessions"``: the treatment-level
    score as a measure of the subject's alliance over the treatment);
    ``median``, ``mean``, ``hdi_low``, ``hdi_high`` (posterior);
    ``n_draws`` (draws summarised: the observed route uses a thinned subset);
    ``classical`` (Shrout & Fleiss ICC(2,·) for agreement, ICC(3,·) for
    consistency, of the observed scale scores; average-judge values are
    Spearman-Brown step-ups of the single-judge value, equal to S&F's
    ICC(·,k) when ``k`` is the number of judges; NaN for generalizability
    rows); ``classical_oneway`` (ICC(1,·), on agreement rows: it estimates
    the same population coefficient); ``classical_method`` (ANOVA or REML;
    alpha or omega and their interval); ``n_obs`` and ``n_items`` (rows and
    items behind alpha and omega; NaN on posterior rows); ``converged``.
    ``attrs``: ``diagnostics``, ``observed_draws``, ``n_new_judges``.
    """

    ds = (
        draws
        if draws is not None
        else reliability_draws(
            fit,
            k_judges,
            max_observed_draws=max_observed_draws,
            n_new_judges=n_new_judges,
            seed=seed,
        )
    )
    n_ses = float(ds.attrs["sessions_per_subject"])
    classical = classical_reliability(fit.data)
    parts = []
    for coef in COEFFICIENTS:
        d = describe_finite(ds[coef], prob).reset_index()
        d["coefficient"] = coef
        d["generalizes_over"] = GENERALIZES_JUDGES
        parts.append(d)
        gname = "generalizability" if coef == "agreement" else f"generalizability_{coef}"
        g = describe_finite(ds[gname], prob).reset_index()
        g["level"] = "treatment"
        g["coefficient"] = coef
        g["generalizes_over"] = GENERALIZES_BOTH
        parts.append(g)
    out = pd.concat(parts, ignore_index=True)
    out["sessions"] = np.where(out["level"] == "session", 1.0, n_ses)
    cls, one, meth = [], [], []
    for row in out.itertuples():
        if row.generalizes_over != GENERALIZES_JUDGES:
            cls.append(np.nan)
            one.append(np.nan)
            meth.append("")
            continue
        case = "2" if row.coefficient == "agreement" else "3"
        cls.append(_classical_lookup(classical, row.scale, row.level, case, int(row.judges)))
        one.append(
            _classical_lookup(classical, row.scale, row.level, "1", int(row.judges))
            if row.coefficient == "agreement"
            else np.nan
        )
        m = classical.loc[
            (classical["scale"] == row.scale) & (classical["level"] == row.level), "method"
        ]
        meth.append(str(m.iloc[0]) if len(m) else "")
    out["classical"], out["classical_oneway"], out["classical_method"] = cls, one, meth
    ic = classical_internal_consistency(fit.data, prob, n_boot=n_boot, seed=seed)
    out["n_obs"], out["n_items"] = np.nan, np.nan
    if len(ic):
        out = pd.concat([out, ic], ignore_index=True)
    out = stamp(_in_table_order(out, fit.data.scales), fit.diagnostics)
    out.attrs["observed_draws"] = int(ds.attrs.get("observed_draws", 0))
    out.attrs["n_new_judges"] = int(ds.attrs.get("n_new_judges", 0))
    out.attrs["prob"] = prob
    return out
