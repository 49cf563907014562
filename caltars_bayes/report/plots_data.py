"""Report figures of the data and of the ratings' categories: the design map, the category PPC.

- :func:`design_counts` and :func:`plot_design`: which judge rated which
  session, and how many of the instrument's items (from the validated
  :class:`~caltars_bayes.data.ratings.RatingData`);
- :func:`category_tree` and :func:`plot_category_ppc`: how often each rating
  category was used, observed against the posterior predictive distribution,
  per scale, as an :func:`arviz_plots.plot_ppc_rootogram` of the fit's
  DataTree (:meth:`Fit.to_datatree
  <caltars_bayes.inference.fit.Fit.to_datatree>` with replicated ratings).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import xarray as xr

from caltars_bayes._core.dims import CI_PROB, SAMPLE_DIMS
from caltars_bayes.data.ratings import RatingData
from caltars_bayes.report.plots import verdict_title

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from caltars_bayes.inference.fit import Fit

#: replicated draws per chain behind the category rootogram
CATEGORY_PPC_DRAWS = 50
#: subject labels shown at most along the design map's axis
MAX_SUBJECT_TICKS = 40
#: cells of the design map written as numbers at most
MAX_ANNOTATED_CELLS = 300
#: judge labels shown at most along the design map's axis (and rows of figure
#: height: a taller map is not drawn taller). Measured (benchmarks/real_size.py,
#: crossed shape: 2,972 judges) one label and 0.32 in per judge made a 950-inch
#: figure that took 126 s to draw and write.
MAX_JUDGE_TICKS = 40
#: subjects up to which white lines separate the subjects' sessions; beyond,
#: the lines (one pixel each) would cover the map (2,800 survey respondents on
#: a 12-inch figure: 1,800 pixels)
MAX_SUBJECT_LINES = 200


# --------------------------------------------------------------------------- design map


def design_counts(data: RatingData) -> pd.DataFrame:
    """Items rated by each judge in each session.

    Returns
    -------
    DataFrame of ints, one row per judge (``data.judges``), one column per
    observed session (``data.session_labels``, ``"subject|session"``): the
    number of the instrument's ``data.n_items`` items the judge rated in the
    session (used ratings); 0 where the judge did not rate the session.
    """
    nj, ns = data.n_judges, data.n_sessions
    code = np.asarray(data.session_idx) * nj + np.asarray(data.judge_idx)
    counts = np.bincount(code, minlength=ns * nj).reshape(ns, nj).T
    return pd.DataFrame(counts, index=list(data.judges), columns=list(data.session_labels))


def plot_design(data: RatingData | Fit) -> Figure:
    """The design and missingness map: judges x sessions, coloured by the items rated.

    One row per judge, one column per observed session (grouped by subject,
    the subjects' labels along the axis): light grey where the judge did not
    rate the session, else a colour for the number of items rated (the
    colour bar; the top of the scale is every item). Small designs also get
    the counts written in the cells. The title counts the judge x session
    cells rated and the incomplete ones. Large designs keep every cell in the
    image but label at most :data:`MAX_SUBJECT_TICKS` subjects and
    :data:`MAX_JUDGE_TICKS` judges (evenly spaced), are no taller than
    :data:`MAX_JUDGE_TICKS` judge rows, and separate subjects by lines only up
    to :data:`MAX_SUBJECT_LINES` subjects.

    Parameters
    ----------
    data : the validated ratings (or a fit, whose ``data`` is used).

    Returns
    -------
    matplotlib Figure; its image holds :func:`design_counts`.
    """
    import matplotlib.pyplot as plt

    ratings = data if isinstance(data, RatingData) else data.data
    counts = design_counts(ratings)
    n_items, (nj, ns) = ratings.n_items, counts.shape
    values = np.ma.masked_equal(counts.to_numpy(), 0)
    cmap = plt.get_cmap("viridis").with_extremes(bad="#e0e0e0")
    width = min(12.0, max(5.5, 0.07 * ns + 2.5))
    fig, ax = plt.subplots(figsize=(width, 0.32 * min(nj, MAX_JUDGE_TICKS) + 1.9))
    im = ax.imshow(values, aspect="auto", cmap=cmap, vmin=0, vmax=n_items,
                   interpolation="nearest", gid="design_counts")  # fmt: skip
    subjects = ratings.sessions["subject"].astype(str).to_numpy()
    starts = np.flatnonzero(np.r_[True, subjects[1:] != subjects[:-1]])
    ends = np.r_[starts[1:], ns]
    if len(starts) <= MAX_SUBJECT_LINES:
        for b in starts[1:]:
            ax.axvline(b - 0.5, color="white", lw=0.8)
    step = max(1, math.ceil(len(starts) / MAX_SUBJECT_TICKS))
    ax.set_xticks((starts[::step] + ends[::step] - 1) / 2, subjects[starts[::step]],
                  rotation=90, fontsize=7)  # fmt: skip
    j_step = max(1, math.ceil(nj / MAX_JUDGE_TICKS))
    ax.set_yticks(range(0, nj, j_step), list(counts.index)[::j_step], fontsize=8)
    ax.set_xlabel("sessions, grouped by subject")
    ax.set_ylabel("judge")
    if nj * ns <= MAX_ANNOTATED_CELLS:
        for j in range(nj):
            for s in range(ns):
                n = int(counts.iat[j, s])
                if n:
                    colour = "black" if n > 0.6 * n_items else "white"
                    ax.text(s, j, str(n), ha="center", va="center", fontsize=6, color=colour)
    bar = fig.colorbar(im, ax=ax, pad=0.01, fraction=0.04)
    bar.set_label(f"items rated (of {n_items})", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    rated = counts.to_numpy() > 0
    partial = rated & (counts.to_numpy() < n_items)
    fig.suptitle(
        f"Design: {int(rated.sum())} of {nj * ns} judge x session cells rated "
        f"({int(partial.sum())} incomplete); grey: not rated",
        fontsize=10,
    )
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- category PPC


def category_tree(
    fit: Fit, draws: int = CATEGORY_PPC_DRAWS, by: str | None = "scale", seed: int = 0
) -> xr.DataTree:
    """The observed and replicated ratings, per scale, as a DataTree for the rootogram.

    Takes ``fit.to_datatree(log_likelihood=None, posterior_predictive=draws)``
    (replicated ratings of the whole design from ``draws`` evenly spaced draws
    of each chain) and, with ``by="scale"``, splits the variable ``rating`` by
    the scale of the rated item into one variable per scale (dims
    ``obs_<scale>``), so that the rootogram has a panel per scale. ``by=None``
    keeps the pooled ``rating``. Falls back to the pooled ratings when the
    scales do not use the same categories (a rootogram's panels share them).

    Returns
    -------
    DataTree with ``observed_data`` and ``posterior_predictive``.
    """
    if by not in ("scale", None):
        raise ValueError(f"by must be 'scale' or None, got {by!r}")
    tree = fit.to_datatree(log_likelihood=None, posterior_predictive=draws, seed=seed)
    obs = tree["observed_data"]["rating"].reset_coords(drop=True)
    rep = tree["posterior_predictive"]["rating"].reset_coords(drop=True)
    pooled = xr.DataTree.from_dict(
        {"observed_data": xr.Dataset({"rating": obs}),
         "posterior_predictive": xr.Dataset({"rating": rep})}
    )  # fmt: skip
    if by is None:
        return pooled
    scale_idx = np.asarray(fit.data.scale_idx)
    o, p = {}, {}
    for k, scale in enumerate(fit.data.scales):
        where = np.flatnonzero(scale_idx == k)
        if not len(where):
            continue
        o[scale] = obs.isel(obs=where).rename(obs=f"obs_{scale}")
        p[scale] = rep.isel(obs=where).rename(obs=f"obs_{scale}")
    for group in (o, p):  # each panel counts the same categories
        if len({len(np.unique(v.values)) for v in group.values()}) > 1:
            return pooled
    return xr.DataTree.from_dict(
        {"observed_data": xr.Dataset(o), "posterior_predictive": xr.Dataset(p)}
    )


def plot_category_ppc(
    fit: Fit,
    draws: int = CATEGORY_PPC_DRAWS,
    by: str | None = "scale",
    seed: int = 0,
    tree: xr.DataTree | None = None,
) -> Figure:
    """Rootogram of the rating categories: observed counts against replicated ones, per scale.

    :func:`arviz_plots.plot_ppc_rootogram` of :func:`category_tree`: for each
    category, the number of ratings in it (square-root axis), observed (black)
    against the posterior predictive median and 95% interval (blue) of
    replicated data sets of the same design. An observed count outside its
    interval shows thresholds (or judge severities) that do not reproduce how
    the categories were used.

    Parameters
    ----------
    fit : the fit.
    draws : replicated draws per chain.
    by : ``"scale"`` (a panel per scale) or None (all ratings pooled).
    seed : seed of the replications.
    tree : a :func:`category_tree` already made (else made here).

    Returns
    -------
    matplotlib Figure.
    """
    import arviz_plots as azp

    tree = category_tree(fit, draws, by, seed) if tree is None else tree
    n = len(tree["observed_data"].data_vars)
    ncol = min(n, 3)
    nrow = math.ceil(n / ncol)
    pc = azp.plot_ppc_rootogram(
        tree,
        backend="matplotlib",
        ci_prob=CI_PROB,
        point_estimate="median",
        sample_dims=list(SAMPLE_DIMS),
        col_wrap=ncol,
        visuals={"xlabel": {"text": "rating"}, "ylabel": {"text": "ratings"}},
        figure_kwargs={"figsize": (2.4 * ncol + 0.6, 2.2 * nrow + 0.9), "layout": "constrained"},
    )
    fig = pc.viz["figure"].item()
    rep = tree["posterior_predictive"]
    n_rep = rep.sizes["chain"] * rep.sizes["draw"]
    verdict_title(
        fig,
        f"Rating categories: observed (black) against {CI_PROB:.0%} predictive intervals "
        f"({n_rep} replications)",
        fit,
    )
    return fig
