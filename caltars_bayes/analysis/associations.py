"""Construct validity: latent associations of the alliance scales with covariates.

The model (:func:`caltars_bayes.model.build.covariate_block`) draws covariates
jointly with the latent alliance, so its correlations are *disattenuated*: they
carry the measurement error of the ratings instead of being weakened by it.

* ``association[scale, covariate]``: correlation of a subject-level covariate
  with the treatment-level alliance ``theta``;
* ``session_association[scale, session_covariate]``: correlation of a
  session-level covariate with the session-level alliance ``eta`` (trend
  excluded).

Everything here is a pure function of a fit's posterior. Beside each posterior
the tables print the classical Pearson correlation of observed scale means
that the founding study would have reported (pairwise-complete).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import xarray as xr

from caltars_bayes._core.dims import CI_PROB, SAMPLE_DIMS
from caltars_bayes._core.errors import CaltarsError
from caltars_bayes._core.summaries import describe
from caltars_bayes.analysis.classical.pearson import pearson_table
from caltars_bayes.inference.diagnostics import stamp
from caltars_bayes.inference.fit import Fit
from caltars_bayes.model.plan import covariate_tables
from caltars_bayes.spec.hypotheses import Hypotheses

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: Columns of an associations table, in order (``converged`` is added by the stamp).
_COLUMNS = [
    "scale",
    "covariate",
    "level",
    "median",
    "mean",
    "sd",
    "hdi_low",
    "hdi_high",
    "p_positive",
    "p_negative",
    "p_rope",
    "classical_r",
    "classical_p",
    "classical_n",
]

#: Default region of practical equivalence for a correlation: |r| < ROPE.
ROPE = 0.1

_LEVELS = {
    "subject": ("association", "covariate"),
    "session": ("session_association", "session_covariate"),
}


def association_draws(fit: Fit, level: str = "subject") -> xr.DataArray | None:
    """Posterior draws of the latent correlations at one level (None when absent).

    Returns
    -------
    DataArray with dims ``chain, draw, scale, covariate`` (the session level's
    covariate dim is renamed ``covariate`` too).
    """
    var, dim = _LEVELS[level]
    if var not in fit.posterior:
        return None
    return fit.posterior[var].rename({dim: "covariate"})


def _probabilities(da: xr.DataArray, rope: float) -> pd.DataFrame:
    frame = xr.Dataset(
        {
            "p_positive": (da > 0).mean(SAMPLE_DIMS),
            "p_negative": (da < 0).mean(SAMPLE_DIMS),
            "p_rope": (abs(da) < rope).mean(SAMPLE_DIMS),
        }
    ).to_dataframe()
    return frame[["p_positive", "p_negative", "p_rope"]]


def classical_associations(fit: Fit) -> pd.DataFrame:
    """Pearson r (and p) of observed scale means with each covariate.

    Subject level: the subject's scale score averaged over its sessions (each
    session the mean over judges of the judge's item mean); session level: the
    session's scale score averaged over judges. Pairwise-complete, as SPSS would.

    Returns
    -------
    DataFrame with columns ``scale, covariate, level, classical_r, classical_p,
    classical_n``.
    """
    data, plan = fit.data, fit.plan
    parts = []
    if plan.covariates:
        subj_cov, _, _ = covariate_tables(data, fit.instrument.model)
        assert subj_cov is not None  # the plan has subject covariates
        scores = data.scale_scores("subject", by_judge=False).set_index("subject")
        tab = pearson_table(scores[list(data.scales)], subj_cov[plan.covariates])
        tab["level"] = "subject"
        parts.append(tab)
    if plan.session_covariates:
        scores = data.scale_scores("session", by_judge=False)
        scores.index = pd.Index(
            scores["subject"] + "|" + scores["session"].astype(str), name="session"
        )
        assert data.session_covariates is not None  # the plan has session covariates
        ses = data.session_covariates.copy()
        ses.index = pd.Index(list(data.session_labels), name="session")
        tab = pearson_table(scores[list(data.scales)], ses[plan.session_covariates])
        tab["level"] = "session"
        parts.append(tab)
    if not parts:
        return pd.DataFrame(
            columns=["scale", "covariate", "level", "classical_r", "classical_p", "classical_n"]
        )
    out = pd.concat(parts, ignore_index=True).rename(
        columns={
            "x": "scale",
            "y": "covariate",
            "r": "classical_r",
            "p": "classical_p",
            "n": "classical_n",
        }
    )
    return out[["scale", "covariate", "level", "classical_r", "classical_p", "classical_n"]]


def associations(
    fit: Fit,
    rope: float = ROPE,
    prob: float = CI_PROB,
    gains: bool = True,
    hypotheses: Hypotheses | None = None,
) -> pd.DataFrame:
    """Latent correlations of every scale with every covariate, beside the classical r.

    Parameters
    ----------
    fit : a fit whose data had covariates.
    rope : half-width of the region of practical equivalence around r = 0.
    prob : HDI probability.

    Returns
    -------
    DataFrame, one row per scale x covariate x level, with columns ``scale,
    covariate, level`` ("subject" or "session"), ``median, mean, sd, hdi_low,
    hdi_high`` (posterior of the latent correlation), ``p_positive, p_negative,
    p_rope`` (posterior probabilities of r > 0, r < 0, |r| < rope),
    ``classical_r, classical_p, classical_n`` (Pearson r of observed scale
    means, pairwise-complete) and ``converged``. ``attrs["rope"]`` holds the rope.
    With ``gains`` and ``hypotheses`` that define residualised gains, one row
    per scale x gain follows (see :func:`residualised_gain`).
    """
    parts = []
    for level in ("subject", "session"):
        da = association_draws(fit, level)
        if da is None:
            continue
        desc = describe(da, prob=prob).join(_probabilities(da, rope)).reset_index()
        desc.insert(2, "level", level)
        parts.append(desc)
    if not parts:
        raise CaltarsError(
            "this fit has no covariates: fit with a covariate table (--covariates / "
            "--session-covariates) to estimate associations"
        )
    out = pd.concat(parts, ignore_index=True)
    out = out[_COLUMNS[:11]]
    out = out.merge(classical_associations(fit), on=["scale", "covariate", "level"], how="left")
    if gains and hypotheses is not None:
        extra = [
            residualised_gain(fit, g.pre, g.post, g.name, rope=rope, prob=prob).drop(
                columns="converged"
            )
            for g in hypotheses.gains
        ]
        out = pd.concat([out, *extra], ignore_index=True)
    out.attrs["rope"] = rope
    return stamp(out, fit.diagnostics)


def joint_correlation(fit: Fit) -> xr.DataArray:
    """Draws of the correlation matrix of the scales and the subject covariates.

    Returns
    -------
    DataArray with dims ``chain, draw, variable, variable2``; variables are the
    scale codes then the covariate names.
    """
    post, plan = fit.posterior, fit.plan
    scales = list(fit.data.scales)
    if not plan.covariates:
        raise CaltarsError("this fit has no subject covariates")
    names = scales + list(plan.covariates)
    k, q = len(scales), len(plan.covariates)
    shape = (post.sizes["chain"], post.sizes["draw"], k + q, k + q)
    r = np.zeros(shape)
    r[..., :k, :k] = post["factor_corr"].values if "factor_corr" in post else 1.0
    a = post["association"].transpose("chain", "draw", "scale", "covariate").values
    r[..., :k, k:] = a
    r[..., k:, :k] = np.swapaxes(a, -1, -2)
    r[..., k:, k:] = post["covariate_corr"].values if "covariate_corr" in post else np.ones((1, 1))
    return xr.DataArray(
        r,
        dims=("chain", "draw", "variable", "variable2"),
        coords={"chain": post.chain, "draw": post.draw, "variable": names, "variable2": names},
    )


def latent_regression(
    fit: Fit, outcome: str, predictors: list[str] | None = None, prob: float = CI_PROB
) -> pd.DataFrame:
    """Standardised latent regression of one variable on others, per posterior draw.

    Any of the scales and subject covariates can be the outcome or a predictor
    (an outcome on the alliance scales, or a scale on covariates). From the joint
    correlation matrix ``R`` of a draw: ``beta = R_pp^-1 R_py`` and
    ``R^2 = R_yp beta``, i.e. the regression implied by the model's joint normal
    distribution, with the ratings' measurement error already removed.

    Returns
    -------
    DataFrame with columns ``outcome, predictor, median, mean, sd, hdi_low,
    hdi_high, p_positive, p_negative`` (predictor ``"R2"`` is the variance explained)
    and ``converged``.
    """
    r = joint_correlation(fit)
    names = list(r["variable"].values)
    if outcome not in names:
        raise CaltarsError(f"latent regression: unknown outcome {outcome!r}; known: {names}")
    preds = predictors or [n for n in fit.data.scales if n != outcome]
    bad = [p for p in preds if p not in names or p == outcome]
    if bad:
        raise CaltarsError(f"latent regression: bad predictor(s) {bad}; known: {names}")
    rv = r.values
    iy, ip = names.index(outcome), [names.index(p) for p in preds]
    r_pp = rv[..., ip, :][..., :, ip]
    r_py = rv[..., ip, iy]
    beta = np.linalg.solve(r_pp, r_py[..., None])[..., 0]
    r2 = np.einsum("...p,...p->...", r_py, beta)
    coef = xr.DataArray(
        np.concatenate([beta, r2[..., None]], axis=-1),
        dims=("chain", "draw", "predictor"),
        coords={"predictor": [*preds, "R2"]},
    )
    desc = describe(coef, prob=prob).join(_probabilities(coef, 0.0)[["p_positive", "p_negative"]])
    desc = desc.reset_index()
    desc.insert(0, "outcome", outcome)
    return stamp(desc, fit.diagnostics)


def residualised_gain_draws(fit: Fit, pre: str, post: str) -> xr.DataArray:
    """Draws of each scale's latent correlation with the residualised gain ``post | pre``.

    The residualised gain is what is left of the post-treatment score after
    regressing it on the pre-treatment score. Its correlation with a scale is the
    semipartial correlation ``(r_kpost - r_kpre r_prepost) / sqrt(1 - r_prepost^2)``,
    computed per draw from the joint (latent) correlation matrix; both ``pre``
    and ``post`` must be subject covariates of the fit.

    Returns
    -------
    DataArray with dims ``chain, draw, scale``.
    """
    for v in (pre, post):
        if v not in fit.plan.covariates:
            raise CaltarsError(
                f"residualised gain: {v!r} is not a subject covariate of this fit "
                f"(covariates: {', '.join(fit.plan.covariates) or 'none'})"
            )
    r = joint_correlation(fit).sel(variable=list(fit.data.scales))
    r_kpost = r.sel(variable2=post, drop=True)
    r_kpre = r.sel(variable2=pre, drop=True)
    r_pp = joint_correlation(fit).sel(variable=pre, variable2=post, drop=True)
    gain = (r_kpost - r_kpre * r_pp) / np.sqrt(1.0 - r_pp**2)
    return gain.rename(variable="scale")


def residualised_gain(
    fit: Fit,
    pre: str,
    post: str,
    name: str | None = None,
    rope: float = ROPE,
    prob: float = CI_PROB,
) -> pd.DataFrame:
    """Latent correlation of each scale with the residualised gain (``post`` given ``pre``).

    See :func:`residualised_gain_draws` for the definition.

    Returns
    -------
    DataFrame in the format of :func:`associations` with ``covariate`` = ``name``
    (default ``"post|pre"``), ``level = "subject"`` and empty classical columns.
    """
    da = residualised_gain_draws(fit, pre, post).expand_dims(covariate=[name or f"{post}|{pre}"])
    da = da.transpose("chain", "draw", "scale", "covariate")
    desc = describe(da, prob=prob).join(_probabilities(da, rope)).reset_index()
    desc["level"] = "subject"
    for c in ("classical_r", "classical_p", "classical_n"):
        desc[c] = np.nan
    return stamp(desc[_COLUMNS], fit.diagnostics)


def imputed_covariates(fit: Fit, prob: float = CI_PROB) -> pd.DataFrame:
    """Posterior of every missing covariate value, on the covariate's own scale.

    Returns
    -------
    DataFrame with columns ``level, row`` (subject, or ``subject|session``),
    ``covariate, mean, sd, median, hdi_low, hdi_high`` and ``converged``; empty
    when nothing was missing.
    """
    post, plan = fit.posterior, fit.plan
    parts = []
    for level, prefix, scaling in (
        ("subject", "covariate", plan.covariate_scaling),
        ("session", "session_covariate", plan.session_covariate_scaling),
    ):
        var = f"{prefix}_missing_z"
        if var not in post:
            continue
        dim = f"{prefix}_missing"
        labels = [str(v) for v in post[var][dim].values]
        covs = [lab.rsplit("|", 1)[1] for lab in labels]
        rows = [lab.rsplit("|", 1)[0] for lab in labels]
        mean = xr.DataArray([scaling[c][0] for c in covs], dims=dim)
        sd = xr.DataArray([scaling[c][1] for c in covs], dims=dim)
        desc = describe(post[var] * sd + mean, prob=prob).reset_index(drop=True)
        desc.insert(0, "level", level)
        desc.insert(1, "row", rows)
        desc.insert(2, "covariate", covs)
        parts.append(desc)
    cols = ["level", "row", "covariate", "mean", "sd", "median", "hdi_low", "hdi_high"]
    out = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=cols)
    return stamp(out, fit.diagnostics)


def plot_associations(
    fit: Fit,
    table: pd.DataFrame | None = None,
    verdicts: pd.DataFrame | None = None,
    rope: float = ROPE,
) -> Figure:
    """Forest plot of the latent correlations grouped by scale, hypotheses marked.

    Each row is a covariate: the posterior median with its 95% HDI, and a cross
    at the classical Pearson r of observed means. ``table`` is the
    :func:`associations` table (computed when None); with ``verdicts`` (the
    table of :func:`caltars_bayes.analysis.validity.test_hypotheses`), the
    expected direction is drawn as an arrow (or ``0`` for a null hypothesis),
    coloured by the verdict.
    """
    import matplotlib.pyplot as plt

    if table is None:
        table = associations(fit, rope=rope)
    marked = {}
    if verdicts is not None:
        for _, h in verdicts.iterrows():
            marked[(h["scale"], h["covariate"], h["level"])] = (h["direction"], h["verdict"])
    scales = list(dict.fromkeys(table["scale"]))
    n_rows = len(table) + len(scales)
    fig, ax = plt.subplots(figsize=(7.5, max(3.0, 0.24 * n_rows + 1)))
    colours = {"supported": "#2e7d32", "contradicted": "#c62828", "inconclusive": "#f9a825"}
    marks = {"positive": ">", "negative": "<", "null": "o"}
    y, ticks, labels = 0.0, [], []
    headers = []
    for scale in scales:
        rows = table[table["scale"] == scale]
        ticks.append(y)
        labels.append(scale)
        headers.append(len(labels) - 1)
        y -= 1
        for _, r in rows.iterrows():
            ax.plot([r["hdi_low"], r["hdi_high"]], [y, y], color="#37474f", lw=1.6)
            ax.plot(r["median"], y, "o", color="#37474f", ms=4)
            if np.isfinite(r["classical_r"]):
                ax.plot(r["classical_r"], y, "x", color="#8d6e63", ms=5)
            key = (r["scale"], r["covariate"], r["level"])
            if key in marked:
                direction, verdict = marked[key]
                ax.plot(0.97, y, marks[direction], color=colours[verdict], ms=7)
            ticks.append(y)
            labels.append(f"{r['covariate']}" + (" (session)" if r["level"] == "session" else ""))
            y -= 1
    ax.axvline(0, color="grey", lw=0.8)
    ax.axvspan(-rope, rope, color="grey", alpha=0.12, lw=0)
    ax.set_yticks(ticks, labels, fontsize=8)
    for i in headers:
        ax.get_yticklabels()[i].set_fontweight("bold")
    ax.set_xlim(-1.05, 1.05)
    ax.set_xlabel("latent correlation (median, 95% HDI); x: classical r of observed means")
    title = "Associations of alliance scales with covariates"
    if not fit.diagnostics.converged:
        title += f"\n{fit.diagnostics.verdict}"
    ax.set_title(title, fontsize=10, color="black" if fit.diagnostics.converged else "#c62828")
    fig.tight_layout()
    return fig
