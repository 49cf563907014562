"""What the factor structure looks like: standardised loadings, factor correlations,
and the founding study's principal components beside them.

Standardised loadings
---------------------
The cumulative-logit model is a factor model for a latent response
``y* = mu + e`` with a standard logistic residual ``e`` (variance
``pi^2 / 3``); a rating is ``y*`` cut at the item's thresholds. For item ``i``
of scale ``k``, rated by the average judge (discrimination 1; a judge's
severity is a constant shift of that judge's ratings and adds no variance), the
standardised loading is the correlation of ``y*`` with the factor::

    level="session" (default): factor = session-level alliance eta[s, k],
        var_f = sd_alliance[k]^2 + sd_session[k]^2
        loading* = lambda[i] sqrt(var_f)
                   / sqrt(lambda[i]^2 var_f + g[i]^2 + sd_interaction^2 + pi^2/3)
    level="subject": factor = treatment-level alliance theta[p, k],
        loading* = lambda[i] sd_alliance[k]
                   / sqrt(lambda[i]^2 (sd_alliance[k]^2 + sd_session[k]^2) + g[i]^2 + ...)

where ``sd_session`` is 0 without a session level, ``sd_interaction`` the
judge x subject interaction SD (0 without it) and ``g[i]`` the general-factor
loading of a bifactor model (0 otherwise; its factor has variance 1, and its
standardised loading ``g[i] / sqrt(...)`` with the same denominator is
reported on rows with ``factor = "general"``). A session trend is left out
(it is a fixed change over time, not between-session variance). Every quantity
is computed per posterior draw; the table gives its median, mean and 95% HDI.

Classical column
----------------
The founding study analysed the items' means per session (averaged over
judges) by principal components with varimax rotation;
:func:`classical_structure` does the same with
:func:`caltars_bayes.analysis.classical.pca.pca_varimax`, keeping as many components as the
fit has factors, and matches components to factors (the assignment that
maximises the summed squared loadings of each factor's items). Each item's
``classical_loading`` is its loading on its factor's component.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import xarray as xr
from scipy.optimize import linear_sum_assignment

from caltars_bayes._core.errors import DataError
from caltars_bayes._core.summaries import describe
from caltars_bayes.analysis.classical.pca import pca_varimax
from caltars_bayes.inference.diagnostics import stamp

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from caltars_bayes.data.ratings import RatingData
    from caltars_bayes.inference.fit import Fit

#: Name of the general factor of a bifactor model in the loadings table.
GENERAL = "general"
LOADING_COLUMNS = [
    "item", "scale", "factor", "median", "mean", "sd", "hdi_low", "hdi_high", "classical_component",
    "classical_loading", "converged",
]  # fmt: skip
CORRELATION_COLUMNS = [
    "scale", "scale2", "median", "mean", "hdi_low", "hdi_high", "classical_r", "converged",
]  # fmt: skip


# --------------------------------------------------------------------------- posterior


def standardised_loading_draws(fit: Fit, level: str = "session") -> xr.Dataset:
    """Standardised loadings per draw (see the module docstring).

    Returns
    -------
    Dataset with ``specific`` (chain, draw, item) and, for a bifactor model,
    ``general`` (chain, draw, item).
    """
    if level not in ("session", "subject"):
        raise ValueError(f"level must be 'session' or 'subject', got {level!r}")
    post, data = fit.posterior, fit.data
    items = list(data.items)
    item_scale = xr.DataArray(np.asarray(data.item_scale_idx), dims="item", coords={"item": items})
    lam = post["loading"].sel(item=items)
    sd_a = post["sd_alliance"].isel(scale=item_scale).drop_vars("scale")
    var_s = 0.0 * sd_a
    if "sd_session" in post:
        var_s = post["sd_session"].isel(scale=item_scale).drop_vars("scale") ** 2
    resid: float | xr.DataArray = np.pi**2 / 3
    if "sd_interaction" in post:
        resid = resid + post["sd_interaction"] ** 2
    g2: float | xr.DataArray = 0.0
    if "general_loading" in post:
        g = post["general_loading"].sel(item=items)
        g2 = g**2
    var_f = sd_a**2 + var_s if level == "session" else sd_a**2
    total = lam**2 * (sd_a**2 + var_s) + g2 + resid
    out = xr.Dataset({"specific": lam * np.sqrt(var_f) / np.sqrt(total)})
    if "general_loading" in post:
        out["general"] = g / np.sqrt(total)
    return out


def standardised_loadings(fit: Fit, level: str = "session") -> pd.DataFrame:
    """Standardised item loadings with 95% HDIs, the classical PCA loading beside them.

    Parameters
    ----------
    fit : a fitted model.
    level : ``"session"`` (correlation with the session-level alliance,
        default) or ``"subject"`` (with the treatment-level alliance).

    Returns
    -------
    DataFrame, one row per item (and one more per item on the general factor
    of a bifactor model), columns

    ``item``, ``scale``
        Item code and its scale (factor of the fitted structure).
    ``factor``
        The factor the loading belongs to (the scale, or ``"general"``).
    ``median``, ``mean``, ``hdi_low``, ``hdi_high``
        Posterior median, mean and 95% HDI of the standardised loading.
    ``classical_component``, ``classical_loading``
        The varimax component matched to the factor and the item's loading on
        it (:func:`classical_structure`; the unrotated first component for the
        general factor); NaN when the PCA cannot be computed.
    ``converged``
        The fit's convergence verdict (``attrs["diagnostics"]``: its banner).
    """
    data = fit.data
    draws = standardised_loading_draws(fit, level)
    scale_of = {it: data.scales[k] for it, k in zip(data.items, data.item_scale_idx, strict=True)}
    classical = _classical_or_none(data)
    parts = []
    for var, factor in (("specific", None), ("general", GENERAL)):
        if var not in draws:
            continue
        d = describe(draws[var]).reset_index()
        d.insert(1, "scale", d["item"].map(scale_of))
        d.insert(2, "factor", d["scale"] if factor is None else factor)
        if classical is None:
            d["classical_component"], d["classical_loading"] = "", np.nan
        elif factor is None:
            cl = classical.set_index("item")
            d["classical_component"] = d["item"].map(cl["component"]).fillna("")
            d["classical_loading"] = d["item"].map(cl["loading"]).astype(float)
        else:
            pc1 = classical.attrs["unrotated_pc1"]
            d["classical_component"] = "PC1 (unrotated)"
            d["classical_loading"] = d["item"].map(pc1).astype(float)
        parts.append(d)
    out = pd.concat(parts, ignore_index=True)
    out = stamp(out, fit.diagnostics)
    return out[[c for c in LOADING_COLUMNS if c in out.columns] + _extra(out)]


def _extra(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if c not in LOADING_COLUMNS + CORRELATION_COLUMNS]


def _classical_or_none(data: RatingData, n_components: int | None = None) -> pd.DataFrame | None:
    try:
        return classical_structure(data, n_components)
    except DataError:
        return None


def factor_correlations(fit: Fit) -> pd.DataFrame:
    """Latent correlations between the factors, with the observed scale-score correlations.

    Returns
    -------
    DataFrame, one row per pair of scales (``scale`` before ``scale2`` in
    spec order), columns ``scale, scale2, median, mean, hdi_low, hdi_high``
    (posterior of ``factor_corr``: correlation of the treatment-level
    alliance factors), ``classical_r`` (Pearson correlation of the observed
    scale scores per session, averaged over judges: attenuated by
    measurement error and mixing session and subject variance) and
    ``converged``. Empty (same columns) for one scale or a bifactor model
    (orthogonal factors).
    """
    post, data = fit.posterior, fit.data
    scales = list(data.scales)
    if "factor_corr" not in post or len(scales) < 2:
        out = pd.DataFrame(columns=CORRELATION_COLUMNS[:-1])
        return stamp(out, fit.diagnostics)
    fc = post["factor_corr"]
    obs = data.scale_scores(level="session", by_judge=False)[scales].corr()
    rows = []
    for a in range(len(scales)):
        for b in range(a + 1, len(scales)):
            da = fc.sel(scale=scales[a], scale2=scales[b]).reset_coords(drop=True)
            d = describe(da).iloc[0]
            rows.append(
                {
                    "scale": scales[a],
                    "scale2": scales[b],
                    "median": float(d["median"]),
                    "mean": float(d["mean"]),
                    "hdi_low": float(d["hdi_low"]),
                    "hdi_high": float(d["hdi_high"]),
                    "classical_r": float(obs.loc[scales[a], scales[b]]),
                }
            )
    return stamp(pd.DataFrame(rows), fit.diagnostics)


def plot_factor_correlations(fit: Fit) -> Figure:
    """Heatmap of the factor correlations.

    Below the diagonal: posterior median with its 95% HDI; above it: the
    classical correlation of observed scale scores. The title carries the
    convergence verdict.

    Returns
    -------
    matplotlib Figure.
    """
    import matplotlib.pyplot as plt

    table = factor_correlations(fit)
    scales = list(fit.data.scales)
    k = len(scales)
    fig, ax = plt.subplots(figsize=(1.4 + 1.25 * k, 1.0 + 1.15 * k))
    verdict = fit.diagnostics.verdict
    if table.empty:
        why = "one factor" if k < 2 else "orthogonal factors (bifactor model)"
        ax.text(0.5, 0.5, f"No factor correlations: {why}", ha="center", va="center")
        ax.set_axis_off()
        ax.set_title(verdict, fontsize="small")
        return fig
    mat = np.full((k, k), np.nan)
    pos = {s: n for n, s in enumerate(scales)}
    for r in table.itertuples():
        a, b = pos[r.scale], pos[r.scale2]
        mat[b, a] = r.median
        mat[a, b] = r.classical_r
    cmap = plt.get_cmap("RdBu_r").with_extremes(bad="0.85")
    im = ax.imshow(np.ma.masked_invalid(mat), cmap=cmap, vmin=-1, vmax=1)
    for r in table.itertuples():
        a, b = pos[r.scale], pos[r.scale2]
        ax.text(a, b, f"{r.median:.2f}\n[{r.hdi_low:.2f}, {r.hdi_high:.2f}]", ha="center",
                va="center", fontsize="x-small")  # fmt: skip
        ax.text(b, a, f"{r.classical_r:.2f}", ha="center", va="center", fontsize="x-small",
                color="dimgray")  # fmt: skip
    ax.set_xticks(range(k), scales)
    ax.set_yticks(range(k), scales)
    fig.colorbar(im, ax=ax, shrink=0.8)
    ax.set_title(
        "Factor correlations: posterior median [95% HDI] (lower),\n"
        f"observed scale-score r (upper). {verdict}",
        fontsize="small",
        color="black" if fit.converged else "firebrick",
    )
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- classical


def item_means(data: RatingData) -> pd.DataFrame:
    """Each item's score per session averaged over the judges who rated it.

    Returns
    -------
    DataFrame indexed by session label, one column per observed item (scores
    after reverse keying; NaN where no judge rated the item in that session).
    """
    df = pd.DataFrame(
        {
            "session": np.asarray(data.session_labels, dtype=object)[data.session_idx],
            "item": np.asarray(data.items, dtype=object)[data.item_idx],
            "score": data.ratings["score"].to_numpy(dtype=float),
        }
    )
    wide = df.groupby(["session", "item"], sort=False)["score"].mean().unstack("item")
    cols = [i for i in data.items if i in wide.columns]
    return wide.reindex(index=list(data.session_labels), columns=cols)


def classical_structure(data: RatingData, n_components: int | None = None) -> pd.DataFrame:
    """The founding study's analysis: PCA with varimax of item means per session.

    Parameters
    ----------
    data : ratings.
    n_components : components kept (default: the number of scales of the
        data's instrument, i.e. of the structure being fitted).

    Returns
    -------
    DataFrame, one row per item, columns ``item``, ``scale``, ``PC1`` ..
    ``PCn`` (varimax-rotated loadings, components ordered by variance
    explained), ``component`` (the component matched to the item's scale)
    and ``loading`` (the item's loading on it). ``attrs`` hold
    ``eigenvalues``, ``variance_explained``, ``n_obs`` (complete sessions
    used), ``matching`` (scale -> component) and ``unrotated_pc1``.
    """
    x = item_means(data)
    m = n_components or data.n_scales
    m = min(m, x.shape[1])
    res = pca_varimax(x, m)
    load = res.loadings
    items = list(load.index)
    scale_of = {it: data.scales[k] for it, k in zip(data.items, data.item_scale_idx, strict=True)}
    item_scales = [scale_of[i] for i in items]
    scales = [s for s in data.scales if s in set(item_scales)]
    # summed squared loadings of each scale's items on each component
    ss = np.array([(load.loc[[i for i in items if scale_of[i] == s]] ** 2).sum() for s in scales])
    if ss.shape[1] >= len(scales):
        rows, cols = linear_sum_assignment(-ss)
        match = {scales[r]: load.columns[c] for r, c in zip(rows, cols, strict=True)}
    else:
        match = {s: load.columns[int(np.argmax(ss[n]))] for n, s in enumerate(scales)}
    out = pd.DataFrame({"item": items, "scale": item_scales})
    for c in load.columns:
        out[c] = load[c].to_numpy()
    out["component"] = [match[s] for s in item_scales]
    out["loading"] = [float(load.loc[i, match[s]]) for i, s in zip(items, item_scales, strict=True)]
    out.attrs["eigenvalues"] = res.eigenvalues
    out.attrs["variance_explained"] = res.variance_explained
    out.attrs["n_obs"] = res.n_obs
    out.attrs["matching"] = match
    out.attrs["unrotated_pc1"] = res.unrotated_loadings["PC1"]
    return out
