"""Convergence checks on synthetic draws (no MCMC)."""

from __future__ import annotations

import numpy as np
import xarray as xr

from caltars_bayes.inference.diagnostics import _ebfmi, check_convergence


def _post(values: np.ndarray, name: str = "a") -> xr.Dataset:
    return xr.Dataset({name: (("chain", "draw", "item"), values)}, coords={"item": ["x", "y"]})


def _stats(n_chains: int, n_draws: int, diverging: int = 0, seed: int = 0) -> xr.Dataset:
    rng = np.random.default_rng(seed)
    div = np.zeros((n_chains, n_draws), bool)
    div.flat[:diverging] = True
    energy = rng.normal(size=(n_chains, n_draws))  # independent draws: E-BFMI near 2
    return xr.Dataset(
        {
            "diverging": (("chain", "draw"), div),
            "energy": (("chain", "draw"), energy),
            "maxdepth_reached": (("chain", "draw"), np.zeros((n_chains, n_draws), bool)),
        }
    )


def test_well_mixed_draws_pass():
    rng = np.random.default_rng(1)
    d = check_convergence(_post(rng.normal(size=(4, 1000, 2))), _stats(4, 1000))
    assert d.converged, d.problems
    assert d.max_rhat < 1.01 and d.min_ess_bulk > 400 and d.divergences == 0
    assert "Converged" in d.banner()


def test_stuck_chain_divergences_and_low_ebfmi_are_flagged():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(4, 1000, 2))
    x[0] += 3.0  # one chain elsewhere
    st = _stats(4, 1000, diverging=5)
    # a random-walk energy gives E-BFMI far below 0.3
    st["energy"] = (("chain", "draw"), rng.normal(size=(4, 1000)).cumsum(axis=1))
    d = check_convergence(_post(x), st)
    assert not d.converged
    assert d.max_rhat > 1.1
    assert d.divergences == 5
    assert any("E-BFMI" in p for p in d.problems)
    assert any(o["parameter"] == "a[x]" for o in d.offenders)
    assert d.banner().startswith("WARNING: NOT CONVERGED")


def test_autocorrelated_draws_fail_on_ess():
    rng = np.random.default_rng(3)
    x = np.cumsum(rng.normal(size=(4, 1000, 2)), axis=1) * 0.05 + rng.normal(size=(4, 1, 2))
    d = check_convergence(_post(x), _stats(4, 1000))
    assert not d.converged and d.min_ess_bulk < 400


def test_constant_elements_and_helper_variables_are_skipped():
    rng = np.random.default_rng(4)
    post = _post(rng.normal(size=(4, 1000, 2)))
    post["const"] = (("chain", "draw"), np.ones((4, 1000)))
    post["bad_z"] = (("chain", "draw"), np.cumsum(rng.normal(size=(4, 1000)), axis=1))
    d = check_convergence(post, _stats(4, 1000))
    assert d.converged, d.problems


def test_round_trip_dict():
    rng = np.random.default_rng(5)
    d = check_convergence(_post(rng.normal(size=(2, 300, 2))), _stats(2, 300))
    from caltars_bayes.inference.diagnostics import Diagnostics

    assert Diagnostics.from_dict(d.to_dict()) == d


def test_fits_that_cannot_be_checked_are_not_converged():
    rng = np.random.default_rng(5)
    one_chain = check_convergence(_post(rng.normal(size=(1, 1000, 2))), _stats(1, 1000))
    assert not one_chain.converged and "1 chain" in one_chain.banner()
    assert one_chain.min_ess_bulk > 400  # ESS is still computed from the one chain
    few = check_convergence(_post(rng.normal(size=(4, 3, 2))), _stats(4, 3))
    assert not few.converged and "3 draws" in few.banner()


def test_ebfmi_is_the_divisor_n_formula_arviz_stats_bfmi_times_n_over_n_minus_1():
    """Ours: mean squared energy change / variance with divisor n. arviz_stats.bfmi
    divides by the n - 1 variance; the two differ by exactly (n - 1) / n."""
    import arviz_stats as azs

    e = np.random.default_rng(0).normal(size=(3, 50)).cumsum(axis=1)
    ss = xr.Dataset({"energy": (("chain", "draw"), e)})
    direct = [np.mean(np.diff(c) ** 2) / (np.sum((c - c.mean()) ** 2) / len(c)) for c in e]
    ours = _ebfmi(ss["energy"])
    np.testing.assert_allclose(ours, direct, rtol=1e-12)
    theirs = azs.bfmi(ss, sample_dims=["chain", "draw"])["energy"].values
    np.testing.assert_allclose(ours, theirs * 50 / 49, rtol=1e-12)
    assert not np.allclose(ours, theirs, rtol=1e-3)
