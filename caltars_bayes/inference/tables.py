"""The main result tables of a fit: parameter summary, alliance scores, judges.

Every table carries the fit's convergence verdict: a ``converged`` column
(True/False on every row, so it survives CSV export) and
``DataFrame.attrs["diagnostics"]`` with the banner text.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import pandas as pd
import xarray as xr

from caltars_bayes._core.dims import SAMPLE_DIMS
from caltars_bayes._core.summaries import describe
from caltars_bayes.data.ratings import RatingData
from caltars_bayes.inference.diagnostics import Diagnostics, reported_variables, stamp
from caltars_bayes.inference.mcmcstats import dataset_convergence


class FitParts(Protocol):
    """What the tables read of a fit (a :class:`~caltars_bayes.inference.fit.Fit` has it)."""

    data: RatingData
    diagnostics: Diagnostics

    @property
    def posterior(self) -> xr.Dataset: ...


def _label(name: str, index: pd.Index | None) -> list[str]:
    if index is None:
        return [name]
    if isinstance(index, pd.MultiIndex):
        return [f"{name}[{', '.join(map(str, t))}]" for t in index]
    return [f"{name}[{v}]" for v in index]


def posterior_summary(fit: FitParts, var_names: list[str] | None = None) -> pd.DataFrame:
    """Every reported parameter: mean, sd, median, 95% HDI, R-hat, bulk/tail ESS.

    R-hat and ESS already computed for the fit's verdict are reused (the
    fit's ``convergence_cache``, when it has one).
    """
    post = fit.posterior
    names = var_names or reported_variables(post)
    names = [n for n in names if n in post]
    rows = []
    diag = not fit.diagnostics.approximate
    sub = post[names]
    if diag:
        r, eb, et, _ = dataset_convergence(sub, cache=getattr(fit, "convergence_cache", None))
    for n in names:
        da = post[n]
        if n == "factor_corr":  # upper triangle only: unit diagonal and symmetry add nothing
            k = da.sizes["scale"]
            pairs = [(i, j) for i in range(k) for j in range(i + 1, k)]
            da = xr.concat(
                [da.isel(scale=i, scale2=j).reset_coords(drop=True) for i, j in pairs], dim="pair"
            ).assign_coords(pair=[f"{da.scale.values[i]}, {da.scale2.values[j]}" for i, j in pairs])
        desc = describe(da)
        other = [d for d in da.dims if d not in SAMPLE_DIMS]
        desc.insert(0, "parameter", _label(n, desc.index if other else None))
        if diag:
            if n == "factor_corr":
                k = post[n].sizes["scale"]
                sel = [(i, j) for i in range(k) for j in range(i + 1, k)]
                rv = [float(r[n].values[i, j]) for i, j in sel]
                bv = [float(eb[n].values[i, j]) for i, j in sel]
                tv = [float(et[n].values[i, j]) for i, j in sel]
            else:
                rv = np.ravel(r[n].transpose(*other).values).tolist()
                bv = np.ravel(eb[n].transpose(*other).values).tolist()
                tv = np.ravel(et[n].transpose(*other).values).tolist()
            desc["r_hat"], desc["ess_bulk"], desc["ess_tail"] = rv, bv, tv
        else:
            desc["r_hat"] = desc["ess_bulk"] = desc["ess_tail"] = np.nan
        rows.append(desc.reset_index(drop=True))
    out = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()
    return stamp(out, fit.diagnostics)


def session_alliance(fit: FitParts) -> xr.DataArray:
    """Draws of the session-level alliance ``eta[session, scale]``."""
    post, data = fit.posterior, fit.data
    theta = post["theta"]
    subj = xr.DataArray(
        np.asarray(data.session_subject_idx),
        dims="session",
        coords={"session": list(data.session_labels)},
    )
    eta = theta.isel(subject=subj).drop_vars("subject", errors="ignore")
    if "zeta" in post:
        eta = eta + post["zeta"]
    if "session_trend" in post:
        times = np.asarray(data.sessions["session_time"], dtype=float)
        eta = eta + post["session_trend"] * xr.DataArray(times - times.mean(), dims="session")
    return eta.transpose("chain", "draw", "session", "scale")


def scores(fit: FitParts, level: str = "both") -> pd.DataFrame:
    """Posterior alliance scores per subject x scale and per session x scale."""
    if level not in ("both", "subject", "session"):
        raise ValueError("level must be 'both', 'subject' or 'session'")
    parts = []
    if level in ("both", "subject"):
        d = describe(fit.posterior["theta"]).reset_index()
        d.insert(0, "level", "subject")
        d.insert(2, "session", "")
        parts.append(d)
    if level in ("both", "session"):
        d = describe(session_alliance(fit)).reset_index()
        ses = fit.data.sessions.set_index("label")
        d.insert(0, "level", "session")
        d.insert(1, "subject", ses.loc[d["session"], "subject"].to_numpy())
        d["session"] = ses.loc[d["session"], "session"].to_numpy()
        parts.append(d)
    out = pd.concat(parts, ignore_index=True)
    out = out[["level", "subject", "session", "scale", "mean", "sd", "hdi_low", "hdi_high"]]
    return stamp(out, fit.diagnostics)


def judges(fit: FitParts) -> pd.DataFrame:
    """Judge severity per scale and discrimination (mean, sd, median, 95% HDI).

    Returns
    -------
    DataFrame with columns ``judge, parameter, scale, mean, sd, median,
    hdi_low, hdi_high, n_ratings`` (``scale`` empty for discrimination).
    """
    post, data = fit.posterior, fit.data
    n_by_judge = pd.Series(
        np.bincount(data.judge_idx, minlength=data.n_judges), index=list(data.judges)
    )
    parts = []
    if "severity" in post:
        d = describe(post["severity"]).reset_index()
        d.insert(1, "parameter", "severity")
        parts.append(d)
    if "discrimination" in post:
        d = describe(post["discrimination"]).reset_index()
        d.insert(1, "parameter", "discrimination")
        d.insert(2, "scale", "")
        parts.append(d)
    if not parts:
        out = pd.DataFrame(
            columns=["judge", "parameter", "scale", "mean", "sd", "median", "hdi_low", "hdi_high"]
        )
    else:
        out = pd.concat(parts, ignore_index=True)
        out = out[["judge", "parameter", "scale", "mean", "sd", "median", "hdi_low", "hdi_high"]]
    out["n_ratings"] = out["judge"].map(n_by_judge).astype("Int64")
    out = out.sort_values(["judge", "parameter", "scale"], kind="stable").reset_index(drop=True)
    return stamp(out, fit.diagnostics)
