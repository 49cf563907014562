"""Shared fixtures: the instrument specs that ship with the package."""

from __future__ import annotations

import os

import pytest

from caltars_bayes.spec.instrument import Instrument, load_instrument, models_dir


@pytest.fixture(scope="session")
def caltars() -> Instrument:
    return load_instrument(models_dir() / "caltars.toml")


@pytest.fixture(scope="session")
def calpas() -> Instrument:
    return load_instrument(models_dir() / "calpas.toml")


# Tiny MCMC fits use nutpie's JAX backend: it compiles in seconds where numba
# takes tens of seconds per new graph (with empty caches). The default (numba)
# path is exercised by the recovery tests (tests/inference/test_recovery.py, the
# associations recovery trial), whose fits are large enough that sampling, about
# 4.5x slower per gradient under JAX, costs more than compiling.
os.environ.setdefault("CALTARS_BAYES_NUTPIE_BACKEND", "jax")


@pytest.fixture(scope="session")
def tiny_trial(calpas):
    from caltars_bayes.model.simulate import simulate_trial

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
    from caltars_bayes.inference.fit import fit_model

    return fit_model(
        tiny_trial.to_rating_data(),
        draws=60,
        tune=60,
        chains=2,
        random_seed=3,
        progressbar=False,
    )


# --- factor-structure proofs (test_structure, test_compare, test_ppc): short MCMC fits
# of CALPAS trials, 16 subjects x 4 sessions x 2 judges (tests/synthetic.py)


@pytest.fixture(scope="session")
def correlated_factor_fits(calpas):
    """Trial with four factors correlated .3, fitted with its scales and with one factor."""
    from synthetic import PROOF_DESIGN, fit_structures

    from caltars_bayes.model.simulate import simulate_trial

    trial = simulate_trial(calpas, factor_corr=0.3, seed=11, **PROOF_DESIGN)
    return trial, fit_structures(trial, calpas, ["default", "general"])


@pytest.fixture(scope="session")
def one_factor_fits(calpas):
    """Trial with one factor behind all items, fitted with the four scales and with one factor."""
    from synthetic import PROOF_DESIGN, fit_structures

    from caltars_bayes.model.simulate import simulate_trial

    trial = simulate_trial(calpas.with_structure("general"), seed=12, **PROOF_DESIGN)
    return trial, fit_structures(trial, calpas, ["default", "general"])


@pytest.fixture(scope="session")
def interaction_misfit(calpas):
    """Trial with a strong judge x subject interaction, fitted WITHOUT the interaction."""
    from synthetic import PROOF_DESIGN, fit_structures

    from caltars_bayes.model.simulate import simulate_trial

    trial = simulate_trial(calpas, sd_interaction=0.8, seed=21, **PROOF_DESIGN)
    return trial, fit_structures(trial, calpas, ["default"])["default"]


@pytest.fixture(scope="session")
def thread_client():
    """A Dask cluster of two worker threads in this process (starts in about a
    second; a stubbed ``fit_model`` reaches it)."""
    import logging

    from distributed import Client, LocalCluster

    cluster = LocalCluster(
        n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None,
        silence_logs=logging.ERROR,
    )  # fmt: skip
    client = Client(cluster)
    yield client
    client.close()
    cluster.close()


@pytest.fixture(scope="session")
def dask_client():
    """A Dask LocalCluster of 2 single-threaded worker processes (tests of the Dask machinery),
    made as the package makes its own (:func:`caltars_bayes._core.parallel.cluster_client`)."""
    from caltars_bayes._core.parallel import LOCAL, cluster_client

    client, to_close = cluster_client(LOCAL, 2)
    yield client
    for thing in to_close:
        thing.close()


@pytest.fixture(scope="session")
def calibration_fits(calpas):
    """Trial A (30 subjects) and B (15) from one simulation, and a short fit of A.

    Shared by the slow calibration and borrowing tests (test_calibration.py,
    test_borrow.py). The fit is short (2 x 250 draws) and does not converge.
    """
    from caltars_bayes.inference.fit import fit_model
    from caltars_bayes.model.simulate import simulate_trial

    trial = simulate_trial(calpas, n_subjects=45, n_sessions=2, n_judges=3, seed=21)
    data = trial.to_rating_data()
    a = data.subset_subjects([f"P{i:02d}" for i in range(1, 31)])
    b = data.subset_subjects([f"P{i:02d}" for i in range(31, 46)])
    fit_a = fit_model(a, draws=250, tune=250, chains=2, random_seed=1, progressbar=False)
    return {"trial": trial, "data": data, "A": a, "B": b, "fit_A": fit_a}
