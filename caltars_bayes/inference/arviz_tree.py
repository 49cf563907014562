"""A fit as a complete ArviZ DataTree: the groups ``arviz_stats`` and ``arviz_plots`` read.

A :class:`~caltars_bayes.inference.fit.Fit` keeps only ``posterior`` and
``sample_stats``. :func:`fit_datatree` (``Fit.to_datatree``) adds, in the
package's dims:

``observed_data``
    ``rating`` (dim ``obs``): each used rating as the model sees it, the
    score after reverse keying (``data.y + response_min``), with the rating's
    ``subject``, ``session`` (``"subject|session"``), ``judge`` and ``item``
    labels as coordinates on ``obs``.
``constant_data``
    ``subject``, ``session``, ``judge``, ``item`` (dim ``obs``): each rating's
    integer index into ``fit.data.subjects``, ``fit.data.session_labels``,
    ``fit.data.judges`` and ``fit.data.items`` (the posterior's coordinates).
``log_likelihood``
    ``rating``, named like the observed variable so that ArviZ pairs them.
    ``"session"`` (default; dim ``session``): the log density of a whole
    session's ratings with that session's own deviations integrated out
    (:func:`caltars_bayes.inference.predict.log_likelihood` with
    ``marginal=True``), the unit of leave-one-session-out cross-validation.
    ``"rating"`` (dim ``obs``): each rating's log density given the draws;
    needed by ``plot_loo_pit``, which pairs it with ``posterior_predictive``
    rating by rating.
``posterior_predictive`` (when ``posterior_predictive=n``)
    ``rating`` (dims ``chain, draw, obs``): replicated ratings of the same
    design from ``n`` evenly spaced draws of each chain, on the observed scale.
``prior``, ``prior_predictive``, ``log_prior`` (when ``prior=n``)
    ``n`` draws from the priors and the ratings they imply (PyMC's forward
    sampler on the model rebuilt from ``fit.data``), and the log prior density
    of every free parameter at each posterior draw (``pm.compute_log_prior``,
    what ``arviz_stats.psense`` needs).

Every group with a ``session`` dim gets the non-index coordinates
``session_number`` (the session's time as the model uses it: its number when
sessions are numbered, else its order within the subject) and the session's
subject label, named ``subject`` where the group has no ``subject`` dim and
``session_subject`` where it has one (the posterior, the prior), because a
coordinate cannot share its name with another dim.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal, Protocol

import numpy as np
import pymc as pm
import xarray as xr
from pymc.backends.arviz import apply_function_over_dataset, coords_and_dims_for_inferencedata
from pymc.model.transform.conditioning import remove_value_transforms

from caltars_bayes._core.dims import SAMPLE_DIMS
from caltars_bayes.data.ratings import RatingData
from caltars_bayes.inference.diagnostics import Diagnostics
from caltars_bayes.inference.predict import log_likelihood as pointwise_loglik
from caltars_bayes.inference.predict import replicate_ratings, sample_index
from caltars_bayes.model.build import AllianceModel

#: the variable of the ratings in observed_data, log_likelihood and the predictive groups
OBSERVED = "rating"
#: the groups :func:`fit_datatree` can add to a fit's posterior and sample_stats
EXTRA_GROUPS = (
    "observed_data",
    "constant_data",
    "log_likelihood",
    "posterior_predictive",
    "prior",
    "prior_predictive",
    "log_prior",
)
LogLikBy = Literal["session", "rating"]


class TreeFit(Protocol):
    """What :func:`fit_datatree` reads of a fit (a :class:`~caltars_bayes.inference.fit.Fit`)."""

    datatree: xr.DataTree
    data: RatingData
    diagnostics: Diagnostics

    @property
    def posterior(self) -> xr.Dataset: ...


@dataclass
class _Draws:
    """A fit seen through a subset of its draws (for :func:`replicate_ratings`)."""

    data: RatingData
    diagnostics: Diagnostics
    posterior: xr.Dataset


# --------------------------------------------------------------------------- coordinates


def with_session_coords(ds: xr.Dataset, data: RatingData) -> xr.Dataset:
    """Add ``session_number`` and the session's subject to the ``session`` dim of ``ds``.

    The subject coordinate is ``subject`` when ``ds`` has no ``subject`` dim,
    else ``session_subject``. Labels not among ``data.session_labels`` get an
    empty subject and a NaN number. ``ds`` without a ``session`` dim is returned as is.
    """
    if "session" not in ds.dims:
        return ds
    sessions = data.sessions.set_index("label")
    labels = [str(v) for v in ds["session"].values]
    table = sessions.reindex(labels)
    subject = table["subject"].fillna("").to_numpy(dtype=str)
    number = table["session_time"].to_numpy(dtype=float)
    if np.all(np.isfinite(number)) and np.all(number == np.round(number)):
        number = number.astype(np.int64)
    name = "session_subject" if "subject" in ds.dims else "subject"
    return ds.assign_coords({name: ("session", subject), "session_number": ("session", number)})


def _obs_coords(data: RatingData) -> dict[str, object]:
    labels = np.asarray(data.session_labels, dtype=str)
    return {
        "obs": np.arange(data.n_ratings),
        "subject": ("obs", np.asarray(data.subjects, dtype=str)[data.subject_idx]),
        "session": ("obs", labels[data.session_idx]),
        "judge": ("obs", np.asarray(data.judges, dtype=str)[data.judge_idx]),
        "item": ("obs", np.asarray(data.items, dtype=str)[data.item_idx]),
    }


def _on_rating_scale(y: np.ndarray, data: RatingData) -> np.ndarray:
    """0-based categories (``data.y`` coding) as scores (``response_min`` and up)."""
    return np.asarray(y, dtype=np.int64) + int(data.instrument.response_min)


# --------------------------------------------------------------------------- groups


def observed_data(data: RatingData) -> xr.Dataset:
    """The ratings the model saw: ``rating`` (dim ``obs``) with their labels as coordinates."""
    return xr.Dataset({OBSERVED: ("obs", _on_rating_scale(data.y, data))}, coords=_obs_coords(data))


def constant_data(data: RatingData) -> xr.Dataset:
    """Each rating's subject, session, judge and item as integer indices (dim ``obs``)."""
    return xr.Dataset(
        {
            "subject": ("obs", np.asarray(data.subject_idx, dtype=np.int64)),
            "session": ("obs", np.asarray(data.session_idx, dtype=np.int64)),
            "judge": ("obs", np.asarray(data.judge_idx, dtype=np.int64)),
            "item": ("obs", np.asarray(data.item_idx, dtype=np.int64)),
        },
        coords={"obs": np.arange(data.n_ratings)},
    )


def log_likelihood_group(fit: TreeFit, by: LogLikBy = "session") -> xr.Dataset:
    """Pointwise log likelihood named ``rating``: per session (deviations integrated out)
    or per rating (see the module docstring)."""
    if by == "session":
        da = pointwise_loglik(fit, "session", marginal=True)
        ds = xr.Dataset({OBSERVED: da.rename(None)})
        return with_session_coords(ds, fit.data)
    if by == "rating":
        da = pointwise_loglik(fit, "rating")
        return xr.Dataset({OBSERVED: da.rename(None)}).assign_coords(_obs_coords(fit.data))
    raise ValueError(f"log_likelihood must be 'session', 'rating' or None, got {by!r}")


def posterior_predictive_group(fit: TreeFit, draws: int, seed: int = 0) -> xr.Dataset:
    """Replicated ratings ``rating`` (chain, draw, obs) from ``draws`` evenly spaced draws
    of each chain (all draws when ``draws`` is at least the chain length)."""
    post = fit.posterior
    n_chain, n_draw = post.sizes["chain"], post.sizes["draw"]
    flat = sample_index(post, int(draws))
    pos = flat[flat < n_draw]  # the positions within chain 0 are those of every chain
    thinned = post.isel(draw=pos)
    rep = replicate_ratings(
        _Draws(fit.data, fit.diagnostics, thinned), n_draws=n_chain * len(pos), seed=seed
    )
    values = _on_rating_scale(rep.values, fit.data).reshape(n_chain, len(pos), -1)
    da = xr.DataArray(
        values,
        dims=(*SAMPLE_DIMS, "obs"),
        coords={"chain": post["chain"].values, "draw": post["draw"].values[pos]},
    )
    return xr.Dataset({OBSERVED: da}).assign_coords(_obs_coords(fit.data))


def prior_groups(fit: TreeFit, draws: int, seed: int = 0) -> dict[str, xr.Dataset]:
    """``prior``, ``prior_predictive`` (``draws`` draws) and ``log_prior`` (at the posterior draws).

    The model is rebuilt from ``fit.data`` with its ratings as one vector
    (same parameters as the fitted model); priors borrowed from an earlier
    fit (``fit_model(model=...)``) are not in it. PyMC's forward sampler
    ignores the model's potentials (the covariate likelihood and the
    reparameterisation of the subjects' mean), so the prior is the priors'
    own joint distribution.
    """
    data = fit.data
    options = replace(data.instrument.model, likelihood_layout="vector")
    model = AllianceModel(data, options=options).model
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The effect of Potentials", category=UserWarning)
        tree = pm.sample_prior_predictive(draws=int(draws), model=model, random_seed=seed)
    prior = tree["prior"].to_dataset()
    pp = tree["prior_predictive"].to_dataset()[[OBSERVED]]
    pp = pp.assign({OBSERVED: pp[OBSERVED].copy(data=_on_rating_scale(pp[OBSERVED].values, data))})
    pp = pp.drop_vars("obs").assign_coords(_obs_coords(data))
    log_prior = _log_prior(model, fit.posterior)
    return {
        "prior": prior,
        "prior_predictive": pp,
        "log_prior": log_prior,
    }


def _log_prior(model: pm.Model, post: xr.Dataset) -> xr.Dataset:
    """Log prior density of each free parameter (elementwise) at each posterior draw.

    What ``pm.compute_log_prior`` computes, written out because PyMC 6.4's
    version looks the draws up by value-variable names, which differ from the
    parameter names for this model's custom transforms (``cutpoints``,
    ``factor_corr_chol``).
    """
    # the initial values (where NUTS starts) do not enter the density, and
    # PyMC's graph rewriting refuses a model that has them
    for rv in list(model.rvs_to_initial_values):
        model.set_initval(rv, None)
    umodel = remove_value_transforms(model)
    free = list(umodel.free_RVs)
    fn = umodel.compile_fn(
        inputs=umodel.value_vars, outs=umodel.logp(vars=free, sum=False), on_unused_input="ignore"
    )
    values = {rv.name: umodel.rvs_to_values[rv] for rv in free}
    draws = xr.Dataset(
        {value.name: post[name].astype(value.type.dtype) for name, value in values.items()}
    )
    coords, dims = coords_and_dims_for_inferencedata(umodel)
    return apply_function_over_dataset(
        fn,
        draws,
        output_var_names=[rv.name for rv in free],
        coords=coords,
        dims=dims,
        sample_dims=SAMPLE_DIMS,
        progressbar=False,
    )


def fit_datatree(
    fit: TreeFit,
    log_likelihood: LogLikBy | None = "session",
    posterior_predictive: int | None = None,
    prior: int | None = None,
    seed: int = 0,
    session_coords: bool = True,
) -> xr.DataTree:
    """The fit as a DataTree that ``arviz_stats`` and ``arviz_plots`` use unchanged.

    Parameters
    ----------
    fit : a fitted model.
    log_likelihood : ``"session"`` (default: per session, its deviations
        integrated out), ``"rating"`` (per rating) or None (no log_likelihood group).
    posterior_predictive : number of evenly spaced draws per chain to
        replicate the ratings with (at least the chain length: every draw;
        ``plot_loo_pit`` needs every draw and ``log_likelihood="rating"``), or None.
    prior : number of prior draws for ``prior`` and ``prior_predictive``
        (``log_prior`` is then added too), or None.
    seed : random seed of the replicated ratings and of the prior draws.
    session_coords : give the ``session`` dim of the ``posterior`` and ``prior``
        the coordinates ``session_subject`` and ``session_number`` (the
        ``log_likelihood`` group always has ``subject`` and ``session_number``).
        ``arviz_stats.summary`` of a posterior with them fails in arviz-base 1.3
        (``to_stacked_array`` needs every variable to have every non-index
        coordinate): pass False for a tree to summarise, or use ``fit.summary()``.

    Returns
    -------
    :class:`xarray.DataTree` with ``posterior``, ``sample_stats``,
    ``observed_data``, ``constant_data`` and the groups asked for (see the
    module docstring for their contents).
    """
    groups: dict[str, xr.Dataset] = {}
    for name, node in fit.datatree.children.items():
        if name not in EXTRA_GROUPS:
            groups[name] = node.to_dataset()
    groups["posterior"] = fit.posterior
    if session_coords:
        groups["posterior"] = with_session_coords(fit.posterior, fit.data)
    groups["observed_data"] = observed_data(fit.data)
    groups["constant_data"] = constant_data(fit.data)
    if log_likelihood is not None:
        groups["log_likelihood"] = log_likelihood_group(fit, log_likelihood)
    if posterior_predictive is not None:
        groups["posterior_predictive"] = posterior_predictive_group(fit, posterior_predictive, seed)
    if prior is not None:
        groups.update(prior_groups(fit, prior, seed))
        if session_coords:
            groups["prior"] = with_session_coords(groups["prior"], fit.data)
    tree = xr.DataTree.from_dict(groups)
    tree.attrs = dict(fit.datatree.attrs)
    return tree


#: posterior predictive draws per chain that :func:`saved_groups` writes
SAVED_PREDICTIVE_DRAWS = 100
#: prior draws that :func:`saved_groups` writes
SAVED_PRIOR_DRAWS = 500


def saved_groups(fit: TreeFit, groups: Sequence[str], seed: int = 0) -> dict[str, xr.Dataset]:
    """The groups of :data:`EXTRA_GROUPS` named in ``groups``, for ``Fit.save(groups=...)``.

    ``log_likelihood`` is per session; ``posterior_predictive`` uses
    :data:`SAVED_PREDICTIVE_DRAWS` draws per chain; ``prior``,
    ``prior_predictive`` and ``log_prior`` use :data:`SAVED_PRIOR_DRAWS` prior draws.
    """
    unknown = [g for g in groups if g not in EXTRA_GROUPS]
    if unknown:
        raise ValueError(f"groups must be among {', '.join(EXTRA_GROUPS)}; got {unknown[0]!r}")
    tree = fit_datatree(
        fit,
        log_likelihood="session" if "log_likelihood" in groups else None,
        posterior_predictive=(SAVED_PREDICTIVE_DRAWS if "posterior_predictive" in groups else None),
        prior=SAVED_PRIOR_DRAWS
        if {"prior", "prior_predictive", "log_prior"} & set(groups)
        else None,
        seed=seed,
    )
    return {g: tree[g].to_dataset() for g in groups}
