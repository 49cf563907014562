"""The vectorised R-hat and ESS agree with ArviZ's one-parameter-at-a-time versions."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from arviz_stats.base import array_stats

from caltars_bayes.inference.diagnostics import check_convergence
from caltars_bayes.inference.mcmcstats import (
    convergence_stats,
    dataset_convergence,
    ess_basic,
)


def _chains(c: int, d: int, n: int, seed: int) -> np.ndarray:
    """AR(1) chains with autocorrelation from -.5 to .97, chain offsets, one tied column."""
    rng = np.random.default_rng(seed)
    phi = rng.uniform(-0.5, 0.97, n)
    x = np.empty((c, d, n))
    x[:, 0] = rng.normal(size=(c, n))
    for t in range(1, d):
        x[:, t] = phi * x[:, t - 1] + rng.normal(size=(c, n))
    x += rng.normal(0, 0.3, (c, 1, n))
    x[..., 0] = np.round(x[..., 0])  # many ties
    return x


def _arviz(x: np.ndarray) -> tuple[np.ndarray, ...]:
    n = x.shape[2]
    r = [array_stats.rhat(x[..., i], method="rank") if x.shape[0] > 1 else np.nan for i in range(n)]
    b = [array_stats.ess(x[..., i], method="bulk") for i in range(n)]
    t = [array_stats.ess(x[..., i], method="tail", prob=0.95) for i in range(n)]
    i_ = [array_stats.ess(x[..., i], method="identity") for i in range(n)]
    return tuple(np.asarray(v, dtype=float) for v in (r, b, t, i_))


@pytest.mark.parametrize(
    ("c", "d", "n", "seed"),
    [(4, 200, 30, 0), (4, 1000, 8, 1), (3, 9, 12, 2), (2, 7, 6, 3), (1, 50, 6, 4), (4, 301, 10, 5)],
)
def test_matches_arviz(c, d, n, seed):
    x = _chains(c, d, n, seed)
    ref_r, ref_b, ref_t, ref_i = _arviz(x)
    r, b, t = convergence_stats(x, chunk=5)  # chunks smaller than n: joins are exercised
    np.testing.assert_allclose(r, ref_r, rtol=1e-10, equal_nan=True)
    np.testing.assert_allclose(b, ref_b, rtol=1e-8, equal_nan=True)
    np.testing.assert_allclose(t, ref_t, rtol=1e-8, equal_nan=True)
    np.testing.assert_allclose(ess_basic(x), ref_i, rtol=1e-8, equal_nan=True)


def test_threads_give_the_numbers_of_one_thread():
    """Chunks computed on several threads (one per core by default) land in
    their own places: the same numbers as one thread, chunk by chunk."""
    x = _chains(4, 300, 40, 9)
    one = convergence_stats(x, chunk=3, workers=1)
    cols = np.arange(40)[::-1]  # a column order that is not the arrays' own
    for workers in (2, 3, None):
        many = convergence_stats(x, chunk=3, workers=workers)
        for a, b in zip(one, many, strict=True):
            np.testing.assert_array_equal(a, b)
        picked = convergence_stats(x, chunk=3, workers=workers, columns=cols)
        for a, b in zip(one, picked, strict=True):
            np.testing.assert_array_equal(a[cols], b)


def test_detects_what_it_should():
    rng = np.random.default_rng(7)
    good = rng.normal(size=(4, 500, 1))
    stuck = good.copy()
    stuck[0] += 2.0
    sticky = _chains(4, 500, 2, 8)[..., 1:]  # autocorrelated
    r, b, _ = convergence_stats(np.concatenate([good, stuck, sticky], axis=2))
    assert r[0] < 1.01 and r[1] > 1.1
    assert b[0] > 1500 and b[2] < b[0]
    constant = np.ones((4, 100, 1))
    assert convergence_stats(constant)[1][0] == 400  # ArviZ: constant -> the number of draws


def test_dataset_subset_is_recorded_and_seeded():
    rng = np.random.default_rng(9)
    ds = xr.Dataset(
        {
            "small": (("chain", "draw", "k"), rng.normal(size=(2, 100, 3))),
            "big": (("chain", "draw", "s"), rng.normal(size=(2, 100, 50))),
        },
        coords={"k": list("abc"), "s": np.arange(50)},
    )
    _, b, _, sub = dataset_convergence(ds, max_values=20)
    assert sub == {"big": (20, 50)}
    assert int(np.isfinite(b["big"]).sum()) == 20 and bool(np.isfinite(b["small"]).all())
    assert list(b["small"].coords["k"].values) == ["a", "b", "c"]
    again = dataset_convergence(ds, max_values=20)[1]
    xr.testing.assert_equal(b, again)
    full = dataset_convergence(ds)[1]
    checked = np.isfinite(b["big"].values)
    np.testing.assert_allclose(b["big"].values[checked], full["big"].values[checked])
    d = check_convergence(ds, max_checked=20)
    assert d.subsampled == {"big": [20, 50]}
    assert "a random 20 of its 50 values checked" in str(d)


def test_cache_computes_each_element_once_with_the_same_numbers(monkeypatch):
    """The verdict's subset is reused by a later full call; a replaced array is recomputed."""
    from caltars_bayes.inference import mcmcstats

    rng = np.random.default_rng(11)
    ds = xr.Dataset({"big": (("chain", "draw", "s"), rng.normal(size=(2, 60, 30)))})
    seen: list[int] = []
    real = mcmcstats.convergence_stats

    def counting(x, probs=mcmcstats.TAIL_PROBS, chunk=256, columns=None):
        seen.append(len(columns))
        return real(x, probs, chunk, columns)

    plain = dataset_convergence(ds)
    plain_sub = dataset_convergence(ds, max_values=12)
    monkeypatch.setattr(mcmcstats, "convergence_stats", counting)
    cache = mcmcstats.ConvergenceCache()
    sub = dataset_convergence(ds, max_values=12, cache=cache)
    full = dataset_convergence(ds, cache=cache)
    assert seen == [12, 18]  # the 18 not checked before, and only those
    for a, b in zip(full[:3], plain[:3], strict=True):
        xr.testing.assert_allclose(a, b, rtol=1e-12)
    # the subset call still reports NaN where it did not check, cache or not
    xr.testing.assert_identical(sub[1], plain_sub[1])
    again = dataset_convergence(ds, cache=cache)
    assert seen == [12, 18]  # nothing left to compute
    xr.testing.assert_identical(again[0], full[0])
    other = ds.copy(deep=True)  # new draws under the same name: not served from the cache
    other["big"] = other["big"] * 2.0 + 1.0
    dataset_convergence(other, cache=cache)
    assert seen == [12, 18, 30]
