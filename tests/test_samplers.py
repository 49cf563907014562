"""Every sampler path runs on a tiny design and returns the same named structure."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from caltars_bayes.fit import fit_model


@pytest.fixture(scope="module")
def tiny_data(tiny_trial):
    return tiny_trial.to_rating_data()


@pytest.mark.parametrize("sampler", ["pymc", "numpyro", "blackjax"])
def test_sampler_paths(tiny_data, sampler):
    if sampler in ("numpyro", "blackjax") and importlib.util.find_spec(sampler) is None:
        pytest.fail(f"{sampler} is part of the [jax] extra that `make test` installs")
    fit = fit_model(
        tiny_data, draws=40, tune=40, chains=2, sampler=sampler, random_seed=2, progressbar=False
    )
    post = fit.posterior
    assert post.sizes["chain"] == 2 and post.sizes["draw"] == 40
    assert set(post["theta"].dims) == {"chain", "draw", "subject", "scale"}
    assert list(post["theta"].subject.values) == list(tiny_data.subjects)
    assert np.isfinite(post["loading"].values).all()
    assert fit.meta["sampler"] == sampler
    assert fit.diagnostics.n_draws == 40
    assert "diverging" in fit.sample_stats
