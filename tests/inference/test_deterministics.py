"""Deterministics computed from draws, all at once, equal PyMC's draw-by-draw ones."""

from __future__ import annotations

import dataclasses

import numpy as np
import pymc as pm
import pytest
import xarray as xr

from caltars_bayes.inference import deterministics


def _prior_posterior(model: pm.Model, chains: int, draws: int, seed: int) -> xr.Dataset:
    """Draws of the free variables from the prior, shaped like a posterior."""
    with model:
        prior = pm.sample_prior_predictive(
            draws=chains * draws, var_names=[rv.name for rv in model.free_RVs], random_seed=seed
        )
    ds = prior["prior"].to_dataset() if isinstance(prior, xr.DataTree) else prior.prior
    ds = ds.isel(chain=0, drop=True)
    out = {}
    for name, da in ds.data_vars.items():
        values = da.values.reshape(chains, draws, *da.shape[1:])
        out[name] = (("chain", "draw", *da.dims[1:]), values)
    coords = {k: v for k, v in ds.coords.items() if k != "draw"}
    return xr.Dataset(out, coords={**coords, "chain": np.arange(chains), "draw": np.arange(draws)})


@pytest.mark.parametrize(
    "options",
    [{}, {"bifactor": True, "judge_subject_interaction": True}, {"parameterisation": "joint"}],
    ids=["default", "bifactor-interaction", "joint"],
)
@pytest.mark.filterwarnings("ignore:The effect of Potentials")
def test_vectorised_deterministics_equal_pymcs_draw_by_draw(tiny_trial, options, monkeypatch):
    from caltars_bayes.model.build import AllianceModel

    data = tiny_trial.to_rating_data()
    base = data.instrument.model
    model = AllianceModel(data, dataclasses.replace(base, **options)).model
    post = _prior_posterior(model, chains=2, draws=7, seed=11)
    names = [v.name for v in model.deterministics]
    assert len(names) >= 3
    expected = pm.compute_deterministics(
        post, model=model, progressbar=False, compile_kwargs={"mode": "FAST_COMPILE"}
    )
    # blocks of 3 draws (the last one short), so that blocks are put together
    per_draw = 8 * deterministics._deterministic_values(model)
    monkeypatch.setattr(deterministics, "BLOCK_BYTES", 3 * per_draw)
    got = deterministics.compute_deterministics(post, model)
    assert list(got.data_vars) == names
    for name in names:
        assert got[name].dims == expected[name].dims, name
        for dim in got[name].dims:
            np.testing.assert_array_equal(got[name][dim].values, expected[name][dim].values)
        np.testing.assert_allclose(got[name].values, expected[name].values, rtol=1e-10, atol=1e-12)
    # the posterior's own dim order does not matter
    swapped = deterministics.compute_deterministics(post.transpose("draw", "chain", ...), model)
    xr.testing.assert_equal(swapped, got)
    # each draw's values are its own: shuffling the draws shuffles them
    order = np.random.default_rng(0).permutation(post.sizes["draw"])
    shuffled = deterministics.compute_deterministics(
        post.isel(draw=order).assign_coords(draw=post["draw"]), model, names[:1]
    )
    np.testing.assert_allclose(
        shuffled[names[0]].values, got[names[0]].values[:, order], rtol=1e-12
    )


@pytest.mark.filterwarnings("ignore:The effect of Potentials")
def test_add_deterministics_fills_only_what_is_missing(tiny_trial):
    from caltars_bayes.model.build import AllianceModel

    model = AllianceModel(tiny_trial.to_rating_data()).model
    post = _prior_posterior(model, chains=1, draws=4, seed=2)
    names = [v.name for v in model.deterministics]
    kept = post.assign({names[0]: post[next(iter(post.data_vars))] * 0 + 7.0})
    dt = deterministics.add_deterministics(xr.DataTree.from_dict({"posterior": kept}), model)
    out = dt["posterior"].to_dataset()
    assert set(names) <= set(out.data_vars)
    assert (out[names[0]].values == 7.0).all()  # present already: left as it was


def test_a_deterministic_no_free_variable_enters_is_repeated_for_every_draw():
    import pytensor.tensor as pt

    with pm.Model(coords={"group": ["a", "b", "c"]}) as model:
        mu = pm.Normal("mu", 0.0, 1.0, dims="group")
        pm.Deterministic("mu_sq", mu**2, dims="group")
        pm.Deterministic("fixed", pt.as_tensor(np.array([1.0, 2.0, 3.0])), dims="group")
    post = _prior_posterior(model, chains=2, draws=5, seed=3)
    got = deterministics.compute_deterministics(post, model)
    assert got["fixed"].dims == ("chain", "draw", "group")
    np.testing.assert_array_equal(got["fixed"].values, np.broadcast_to([1.0, 2.0, 3.0], (2, 5, 3)))
    np.testing.assert_allclose(got["mu_sq"].values, post["mu"].values ** 2)
