"""Prior predictive checks: what ratings do the priors imply before seeing data?

``prior_predictive`` draws parameters from the priors and simulates every
rating of the design; ``category_frequencies`` summarises observed and
simulated ratings as the proportion in each response category per item;
``plot_prior_predictive`` draws them side by side. A good prior puts the
observed proportions well inside the prior predictive bands without making
every pattern equally likely.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pymc as pm
import xarray as xr

from caltars_bayes.model.build import AllianceModel

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from caltars_bayes.data.ratings import RatingData


def prior_predictive(
    data: RatingData, draws: int = 200, random_seed: int = 1, model: AllianceModel | None = None
) -> xr.Dataset:
    """Simulate ratings of ``data``'s design from the prior.

    Returns
    -------
    Dataset with ``rating`` (dims ``draw, obs``: 0-based categories, one per
    observed rating of the design) and the prior draws of the main parameters.
    """
    # the ratings' prior predictive does not involve covariates; leaving them out
    # also avoids the flat-prior parameters of missing covariate values. PyMC's
    # forward sampler ignores the ordered transform of the cutpoints, but the
    # ratings are unaffected: the rating simulator counts the cumulative
    # probabilities below a uniform draw, which does not depend on their order.
    no_covariates = replace(
        data.instrument.model,
        covariates=False,
        session_covariates="none",
        likelihood_layout="vector",
    )
    am = model or AllianceModel(data, options=no_covariates)
    with am.model:
        dt = pm.sample_prior_predictive(draws=draws, random_seed=random_seed)
    pp = dt["prior_predictive"].to_dataset().squeeze("chain", drop=True)
    prior = dt["prior"].to_dataset().squeeze("chain", drop=True)
    keep = [v for v in ("sd_alliance", "sd_session", "factor_corr", "loading") if v in prior]
    return xr.merge([pp[["rating"]], prior[keep]])


def category_frequencies(data: RatingData, simulated: xr.DataArray | None = None) -> pd.DataFrame:
    """Proportion of ratings in each category per item, observed and simulated.

    Returns
    -------
    DataFrame with columns ``item, category, observed`` and, when ``simulated``
    (dims ``draw, obs``) is given, ``sim_low, sim_median, sim_high`` (5%, 50%,
    95% over draws) and ``inside`` (observed within the 90% band).
    """
    n_cat = data.instrument.n_categories
    items = np.asarray(data.item_idx)
    obs = np.zeros((data.n_items, n_cat))
    np.add.at(obs, (items, np.asarray(data.y)), 1.0)
    totals = np.maximum(obs.sum(axis=1, keepdims=True), 1)
    rows = {
        "item": np.repeat(list(data.items), n_cat),
        "category": np.tile(np.arange(n_cat) + data.instrument.response_min, data.n_items),
        "observed": (obs / totals).ravel(),
    }
    if simulated is not None:
        y = np.asarray(simulated.transpose("draw", "obs").values, dtype=int)
        n_draw = y.shape[0]
        counts = np.zeros((n_draw, data.n_items, n_cat))
        for d in range(n_draw):
            np.add.at(counts[d], (items, y[d]), 1.0)
        props = counts / totals[None]
        lo, med, hi = np.quantile(props, [0.05, 0.5, 0.95], axis=0)
        rows |= {"sim_low": lo.ravel(), "sim_median": med.ravel(), "sim_high": hi.ravel()}
    out = pd.DataFrame(rows)
    if simulated is not None:
        out["inside"] = (out["observed"] >= out["sim_low"]) & (out["observed"] <= out["sim_high"])
    return out


def plot_prior_predictive(data: RatingData, pp: xr.Dataset, max_items: int = 12, ax=None) -> Figure:
    """Observed category proportions (dots) against prior predictive 90% bands."""
    import matplotlib.pyplot as plt

    freq = category_frequencies(data, pp["rating"])
    items = list(data.items)[:max_items]
    n_cat = data.instrument.n_categories
    if ax is None:
        fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(items) * n_cat / 3), 3.5))
    else:
        fig = ax.figure
    for j, item in enumerate(items):
        f = freq[freq["item"] == item]
        x = j * (n_cat + 1) + np.arange(n_cat)
        ax.vlines(x, f["sim_low"], f["sim_high"], color="0.6", lw=4, label=None)
        ax.plot(x, f["observed"], "o", color="C0", ms=4)
    ticks = [j * (n_cat + 1) + (n_cat - 1) / 2 for j in range(len(items))]
    ax.set_xticks(ticks, items, rotation=45, ha="right")
    ax.set_ylabel("proportion of ratings")
    ax.set_title("Prior predictive check: category proportions per item (bars: 90% prior band)")
    fig.tight_layout()
    return fig
