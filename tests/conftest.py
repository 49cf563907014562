"""Shared fixtures: the instrument specs that ship with the package."""

from __future__ import annotations

import os

import pytest

from caltars_bayes.spec import Instrument, load_instrument, models_dir


@pytest.fixture(scope="session")
def caltars() -> Instrument:
    return load_instrument(models_dir() / "caltars.toml")


@pytest.fixture(scope="session")
def calpas() -> Instrument:
    return load_instrument(models_dir() / "calpas.toml")


# Tiny MCMC fits use nutpie's JAX backend: it compiles in seconds where numba
# takes tens of seconds per graph. The default (numba) path is exercised by the
# recovery tests.
os.environ.setdefault("CALTARS_BAYES_NUTPIE_BACKEND", "jax")


@pytest.fixture(scope="session")
def tiny_trial(calpas):
    from caltars_bayes.simulate import simulate_trial

    return simulate_trial(
        calpas,
        n_subjects=12,
        n_sessions=2,
        n_judges=3,
        seed=5,
        subject_covariates={"x": {"PC": 0.5}},
    )


@pytest.fixture(scope="session")
def tiny_fit(tiny_trial):
    """A short (unconverged) fit shared by flow tests."""
    from caltars_bayes.fit import fit_model

    return fit_model(
        tiny_trial.to_rating_data(),
        draws=60,
        tune=60,
        chains=2,
        random_seed=3,
        progressbar=False,
    )
