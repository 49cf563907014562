"""nutpie's numba model with disk-cached C callbacks (caltars_bayes.inference.nutpie_cache)."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

from caltars_bayes.inference import nutpie_cache
from caltars_bayes.inference.nutpie_cache import (
    NutpiePrivateAPIWarning,
    callback_source,
    compile_numba_model,
)

_P = ctypes.POINTER(ctypes.c_double)


def _model(y: np.ndarray, x: np.ndarray, group: np.ndarray, scale: float, prior_sd: float = 10.0):
    """Shared data of every rank and two dtypes: a matrix, an integer index, a scalar."""
    import pymc as pm

    coords = {"obs": np.arange(len(y)), "coef": ["a", "b"], "group": ["g0", "g1", "g2"]}
    with pm.Model(coords=coords) as m:
        xd = pm.Data("x", x, dims=("obs", "coef"))
        gd = pm.Data("group_idx", group, dims="obs")
        sd = pm.Data("scale", scale)
        yd = pm.Data("y_obs", y, dims="obs")
        beta = pm.Normal("beta", 0.0, prior_sd, dims="coef")
        u = pm.Normal("u", 0.0, 1.0, dims="group")
        sigma = pm.HalfNormal("sigma", 1.0)
        pm.Deterministic("sigma_scaled", sigma * sd)
        pm.Normal("y", xd @ beta + u[gd], sigma * sd, observed=yd, dims="obs")
    return m


def _data(seed: int, n: int = 40):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2))
    group = rng.integers(0, 3, n).astype("int32")
    y = x @ np.array([1.0, -0.5]) + rng.normal(size=n)
    return y, x, group, 1.5


def _logp(compiled, point: np.ndarray) -> tuple[float, np.ndarray, int]:
    n = compiled.n_dim
    x = np.ascontiguousarray(point, dtype=float)
    grad, lp = np.zeros(n), np.zeros(())
    rc = compiled.compiled_logp_func.ctypes(
        n, x.ctypes.data_as(_P), grad.ctypes.data_as(_P), lp.ctypes.data_as(_P),
        ctypes.c_void_p(compiled.user_data.ctypes.data),
    )  # fmt: skip
    return float(lp), grad, rc


def _expand(compiled, point: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(point, dtype=float)
    out = np.zeros(compiled.n_expanded)
    rc = compiled.compiled_expand_func.ctypes(
        compiled.n_dim, compiled.n_expanded, x.ctypes.data_as(_P), out.ctypes.data_as(_P),
        ctypes.c_void_p(compiled.user_data.ctypes.data),
    )  # fmt: skip
    assert rc == 0
    return out


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """A fresh numba cache for PyTensor's functions and ours, shared by this module.

    Tests that need a graph never compiled before use a prior constant of their own.
    """
    import pytensor.link.numba.cache as cache

    path = tmp_path_factory.mktemp("numba_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cache, "NUMBA_CACHE_PATH", path)
        yield path


@pytest.fixture(autouse=True)
def _no_reuse():
    """Each test starts as a new process would: nothing compiled in this process."""
    nutpie_cache.clear_compiled()
    yield
    nutpie_cache.clear_compiled()


def test_callbacks_agree_with_nutpies_own_compilation(cache_dir):
    import nutpie

    model = _model(*_data(0))
    ours, _ = compile_numba_model(model)
    theirs = nutpie.compile_pymc_model(model, backend="numba")
    assert ours.n_dim == theirs.n_dim == 6 and ours.n_expanded == theirs.n_expanded
    rng = np.random.default_rng(1)
    for _ in range(3):
        point = rng.normal(size=ours.n_dim)
        lp, grad, rc = _logp(ours, point)
        lp0, grad0, rc0 = _logp(theirs, point)
        assert rc == rc0 == 0
        assert lp == pytest.approx(lp0, rel=1e-12) and np.isfinite(lp)
        np.testing.assert_allclose(grad, grad0, rtol=1e-10)
        np.testing.assert_allclose(_expand(ours, point), _expand(theirs, point), rtol=1e-12)
    # a non-finite density is reported with nutpie's code, not returned as a number
    bad = np.full(ours.n_dim, np.nan)
    assert _logp(ours, bad)[2] == _logp(theirs, bad)[2] != 0


def test_a_second_compilation_loads_the_callbacks_from_disk(cache_dir):
    model = _model(*_data(0), prior_sd=7.0)
    first, info = compile_numba_model(model)
    assert first.compiled_logp_func.cache_hits == 0 and info.source == "compiled"
    nutpie_cache.clear_compiled()  # as in a new process
    second, info = compile_numba_model(_model(*_data(0), prior_sd=7.0))  # same graph, again
    assert info.source == "disk cache" and info.any_size
    assert second.compiled_logp_func.cache_hits == 1
    assert second.compiled_expand_func.cache_hits == 1
    point = np.random.default_rng(2).normal(size=first.n_dim)
    assert _logp(second, point)[0] == pytest.approx(_logp(first, point)[0], rel=1e-12)
    # another graph (another prior constant) is another cache entry, not a stale load
    other_model = _model(*_data(0), prior_sd=2.0)
    other, _ = compile_numba_model(other_model)
    assert other.compiled_logp_func.cache_hits == 0
    expected = other_model.compile_logp()(other_model.initial_point())
    start = _flat(other, other_model.initial_point())
    assert _logp(other, start)[0] == pytest.approx(float(expected), rel=1e-10)
    assert _logp(first, start)[0] != pytest.approx(float(expected), rel=1e-6)


def _flat(compiled, point: dict[str, np.ndarray]) -> np.ndarray:
    names = compiled.shape_info[0]
    return np.concatenate([np.asarray(point[n], float).reshape(-1) for n in names if n in point])[
        : compiled.n_dim
    ]


def test_new_data_give_the_new_models_density(cache_dir):
    compiled, _ = compile_numba_model(_model(*_data(0)))
    y, x, group, _ = _data(5)
    swapped = compiled.with_data(y_obs=y, x=x, group_idx=group, scale=3.0)
    fresh_model = _model(y, x, group, 3.0)
    nutpie_cache.clear_compiled()
    fresh, _ = compile_numba_model(fresh_model)
    point = np.random.default_rng(3).normal(size=compiled.n_dim)
    assert _logp(swapped, point)[0] == pytest.approx(_logp(fresh, point)[0], rel=1e-12)
    assert _logp(swapped, point)[0] != pytest.approx(_logp(compiled, point)[0], rel=1e-6)
    start = _flat(fresh, fresh_model.initial_point())
    expected = float(fresh_model.compile_logp()(fresh_model.initial_point()))
    assert _logp(swapped, start)[0] == pytest.approx(expected, rel=1e-10)


def test_the_sampler_recovers_a_regression(cache_dir):
    import nutpie

    y, x, group, _ = _data(0, n=400)
    compiled, _ = compile_numba_model(_model(y, x, group, 1.0))
    post = nutpie.sample(compiled, draws=300, tune=300, chains=2, seed=1, progress_bar=False)
    beta = post.posterior["beta"].mean(("chain", "draw"))
    assert list(beta["coef"].values) == ["a", "b"]
    np.testing.assert_allclose(beta.values, [1.0, -0.5], atol=0.2)
    assert "sigma_scaled" in post.posterior


def test_callback_source_names_each_data_slot():
    src = callback_source("logp", ["s0", "s1", "s2"], [2, 1, 0])
    assert "def callback(dim, x_, out_, logp_, user_data_):" in src
    assert "FN(x, a0, a1, a2)" in src
    assert 'a0 = d0.reshape((int(shared["shape"]["s0"][0]), int(shared["shape"]["s0"][1])))' in src
    assert 'a1 = d1.reshape((int(shared["shape"]["s1"][0]),))' in src
    assert "a2 = d2.reshape(())" in src
    compile(src, "<test>", "exec")  # valid Python
    expand = callback_source("expand", [], [])
    assert "numba.carray(out_, (expanded,))" in expand and "FN(x)" in expand
    # nothing of a design's size is in the text: one cache entry serves every size
    assert not any(ch.isdigit() for line in src.splitlines() if "carray(x_" in line for ch in line)
    with pytest.raises(ValueError, match="kind"):
        callback_source("hessian", [], [])


def test_an_unreadable_cache_entry_falls_back_to_compiling(cache_dir):
    before = set(cache_dir.glob("*callback*.nbc"))
    first, _ = compile_numba_model(_model(*_data(0), prior_sd=3.0))
    entries = set(cache_dir.glob("*callback*.nbc")) - before
    assert entries  # the density's callback is new (the stored values' may be shared)
    for path in entries:
        path.write_bytes(b"not a numba cache entry")
    nutpie_cache.clear_compiled()
    with pytest.warns(UserWarning, match="not cached"):
        second, _ = compile_numba_model(_model(*_data(0), prior_sd=3.0))
    point = np.random.default_rng(4).normal(size=first.n_dim)
    assert _logp(second, point)[0] == pytest.approx(_logp(first, point)[0], rel=1e-12)


def test_without_a_graph_cache_key_the_callbacks_are_compiled_uncached(cache_dir):
    import pytensor

    before = set(cache_dir.glob("*callback*"))
    model = _model(*_data(0), prior_sd=5.0)
    with pytensor.config.change_flags(numba__cache=False):  # PyTensor gives no cache key
        compiled, _ = compile_numba_model(model)
    assert set(cache_dir.glob("*callback*")) == before  # nothing written
    start = _flat(compiled, model.initial_point())
    expected = float(model.compile_logp()(model.initial_point()))
    assert _logp(compiled, start)[0] == pytest.approx(expected, rel=1e-10)


def test_missing_private_names_fall_back_to_nutpies_public_compilation(cache_dir, monkeypatch):
    """A nutpie or PyTensor upgrade that drops a private name slows fits, not breaks them."""
    import warnings

    import nutpie
    import pytensor.link.numba.cache as pt_cache
    import pytensor.link.numba.dispatch  # noqa: F401  (imports the name before it goes)

    y, x, group, _ = _data(0, n=200)
    model = _model(y, x, group, 1.0)
    # PyTensor's own modules imported the name already, so only ours can miss it
    monkeypatch.delattr(pt_cache, "compile_numba_function_src")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compiled, _ = compile_numba_model(model, var_names=["beta"])
    ours = [w for w in caught if issubclass(w.category, NutpiePrivateAPIWarning)]
    assert len(ours) == 1
    text = str(ours[0].message)
    assert "\n" not in text and text.startswith("nutpie's private compile API changed")
    assert "compile_numba_function_src" in text and "compile_pymc_model" in text
    # nutpie's own compilation: no cached callbacks of ours, same density
    assert "_make_c_logp_func" in repr(compiled.compiled_logp_func)
    start = _flat(compiled, model.initial_point())
    expected = float(model.compile_logp()(model.initial_point()))
    assert _logp(compiled, start)[0] == pytest.approx(expected, rel=1e-10)
    post = nutpie.sample(compiled, draws=150, tune=150, chains=1, seed=2, progress_bar=False)
    beta = post.posterior["beta"].mean(("chain", "draw"))
    np.testing.assert_allclose(beta.values, [1.0, -0.5], atol=0.25)
    assert "sigma_scaled" not in post.posterior  # var_names passed through


def test_a_renamed_nutpie_name_is_reported_and_reuse_still_swaps_the_data(monkeypatch):
    from caltars_bayes.inference import sampling

    names = (*nutpie_cache.NUTPIE_PRIVATE_NAMES, "_renamed_in_a_later_version")
    monkeypatch.setattr(nutpie_cache, "NUTPIE_PRIVATE_NAMES", names)
    with pytest.warns(NutpiePrivateAPIWarning, match="_renamed_in_a_later_version"):
        first, info = sampling.compile_nutpie(_model(*_data(0), prior_sd=4.0), "numba")
    assert info.source == "nutpie"
    y, x, group, _ = _data(6)
    fresh_model = _model(y, x, group, 2.0, prior_sd=4.0)
    with pytest.warns(NutpiePrivateAPIWarning):
        again, info = sampling.compile_nutpie(fresh_model, "numba")  # reused, not compiled
    assert again is not first and info.source == "reused"
    assert again.compiled_logp_func is first.compiled_logp_func
    start = _flat(again, fresh_model.initial_point())
    expected = float(fresh_model.compile_logp()(fresh_model.initial_point()))
    assert _logp(again, start)[0] == pytest.approx(expected, rel=1e-10)


def _sizes_model(n: int, n_groups: int, seed: int, prior_sd: float = 10.0):
    rng = np.random.default_rng(seed)
    import pymc as pm

    x = rng.normal(size=(n, 2))
    group = rng.integers(0, n_groups, n).astype("int32")
    y = x @ np.array([1.0, -0.5]) + rng.normal(size=n)
    coords = {"obs": np.arange(n), "coef": ["a", "b"], "group": [f"g{i}" for i in range(n_groups)]}
    with pm.Model(coords=coords) as m:
        xd = pm.Data("x", x, dims=("obs", "coef"))
        gd = pm.Data("group_idx", group, dims="obs")
        yd = pm.Data("y_obs", y, dims="obs")
        beta = pm.Normal("beta", 0.0, prior_sd, dims="coef")
        u = pm.ZeroSumNormal("u", 1.0, dims="group")  # a transform that drops one value
        sigma = pm.HalfNormal("sigma", 1.0)
        pm.Deterministic("u_scaled", u * sigma, dims="group")
        pm.Normal("y", xd @ beta + u[gd], sigma, observed=yd, dims="obs")
    return m


def test_one_compilation_serves_data_of_any_size(cache_dir):
    small, info = compile_numba_model(_sizes_model(30, 3, 0, prior_sd=6.0))
    assert info.source == "compiled" and info.any_size
    model = _sizes_model(70, 5, 1, prior_sd=6.0)  # more rows and more groups
    big, info = compile_numba_model(model)
    assert info.source == "reused"
    assert big.compiled_logp_func is small.compiled_logp_func
    assert (small.n_dim, big.n_dim) == (2 + 2 + 1, 2 + 4 + 1)
    assert big.shape_info[2][big.shape_info[0].index("u_scaled")] == (5,)
    start = _flat(big, model.initial_point())
    expected = float(model.compile_logp()(model.initial_point()))
    assert _logp(big, start)[0] == pytest.approx(expected, rel=1e-10)
    point = np.random.default_rng(3).normal(size=big.n_dim)
    grad = _logp(big, point)[1]
    dlogp = model.compile_dlogp()(_unflat(big, point))
    np.testing.assert_allclose(grad, dlogp, rtol=1e-9)
    # the stored values of the larger design, in nutpie's layout
    # free values, then u, sigma and u_scaled
    assert _expand(big, point).shape == (big.n_expanded,) == (7 + 5 + 1 + 5,)


def _unflat(compiled, x: np.ndarray) -> dict[str, np.ndarray]:
    names, slices, shapes = compiled.shape_info
    n = compiled.n_dim
    return {
        name: x[sl].reshape(shape)
        for name, sl, shape in zip(names, slices, shapes, strict=True)
        if sl.stop <= n
    }


def test_same_seed_same_draws_whether_compiled_loaded_or_reused(cache_dir):
    import nutpie

    def draws(compiled):
        post = nutpie.sample(compiled, draws=60, tune=60, chains=2, seed=9, progress_bar=False)
        return post.posterior["beta"].values

    model = _sizes_model(40, 3, 2, prior_sd=8.0)
    compiled, info = compile_numba_model(model)
    assert info.source == "compiled"
    fresh = draws(compiled)
    nutpie_cache.clear_compiled()
    loaded, info = compile_numba_model(_sizes_model(40, 3, 2, prior_sd=8.0))
    assert info.source == "disk cache"
    compile_numba_model(_sizes_model(25, 4, 3, prior_sd=8.0))  # another size in between
    reused, info = compile_numba_model(_sizes_model(40, 3, 2, prior_sd=8.0))
    assert info.source == "reused"
    np.testing.assert_array_equal(draws(loaded), fresh)
    np.testing.assert_array_equal(draws(reused), fresh)


@pytest.mark.parametrize("which", ["regression", "caltars"])
def test_shapes_from_dims_equal_nutpies_shape_function(which):
    """The reuse path reads shapes from dims and one initial point instead of
    compiling nutpie's shape function; they must be the same shapes."""
    from nutpie import compile_pymc as cp
    from pymc.initial_point import make_initial_point_fn

    if which == "regression":
        model = _sizes_model(30, 4, 0)
    else:
        from caltars_bayes.model.build import AllianceModel
        from caltars_bayes.model.simulate import simulate_trial
        from caltars_bayes.spec.instrument import load_instrument, models_dir

        inst = load_instrument(models_dir() / "caltars.toml")
        data = simulate_trial(inst, n_subjects=7, n_sessions=2, n_judges=2, seed=3)
        model = AllianceModel(data.to_rating_data()).model
    values = [model.rvs_to_values[rv].name for rv in model.free_RVs]
    stored = [v.name for v in model.unobserved_value_vars if v.name not in values]
    point_fn = make_initial_point_fn(model=model, return_transformed=True)
    shapes = nutpie_cache._dim_shapes(model, point_fn, values, stored)
    expected = cp._compute_shapes(model)
    assert shapes is not None
    assert {k: tuple(v) for k, v in shapes.items()} == {
        k: tuple(expected[k]) for k in [*values, *stored]
    }
    if which == "caltars":  # a matrix with dims, and one without (traced to the dims)
        assert len(shapes["theta"]) == 2 and len(shapes["factor_corr_chol"]) == 2
        assert model.named_vars_to_dims.get("factor_corr_chol") is None


def test_start_points_are_pymcs_built_without_c_thunks(calpas):
    """The start-point function's Scan (an ordered variable's support point)
    runs Python thunks, not C ones that a cold machine would compile, and the
    start points equal PyMC's own function's."""
    from pymc.initial_point import make_initial_point_fn
    from pytensor.scan.op import Scan

    from caltars_bayes.model.build import AllianceModel
    from caltars_bayes.model.simulate import simulate_trial

    data = simulate_trial(calpas, n_subjects=6, n_sessions=2, n_judges=2, seed=12)
    model = AllianceModel(data.to_rating_data()).model
    fn = nutpie_cache.start_point_fn(model)
    scans = [n.op for n in fn.__wrapped__.maker.fgraph.toposort() if isinstance(n.op, Scan)]
    assert scans, "the CALPAS model's start points no longer need a Scan: update this test"
    for op in scans:
        assert not any(hasattr(t, "cthunk") for t in op.fn.vm.thunks)
    pymc_fn = make_initial_point_fn(
        model=model,
        default_strategy="support_point",
        jitter_rvs=set(model.free_RVs),
        return_transformed=True,
    )
    for seed in range(5):
        ours, theirs = fn(seed), pymc_fn(seed)
        assert ours.keys() == theirs.keys()
        for name in ours:
            np.testing.assert_array_equal(ours[name], theirs[name])
