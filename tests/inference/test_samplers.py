"""Every sampler path runs on a tiny design and returns the same named structure."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from threadpoolctl import threadpool_limits

from caltars_bayes.inference import deterministics, nutpie_cache, sampling
from caltars_bayes.inference.fit import fit_model


@pytest.fixture(scope="module")
def tiny_data(tiny_trial):
    return tiny_trial.to_rating_data()


@pytest.mark.parametrize(
    "sampler",
    [
        "pymc",
        # numpyro and blackjax: 71 s (62 CPU s) and 72 s in CI runs, JAX compiling PyMC's pipeline;
        # run by `make test-long`. CI enters numpyro's path up to its kernel in
        # test_numpyro_caps_the_tree_depth_of_large_designs.
        pytest.param("numpyro", marks=pytest.mark.long),
        pytest.param("blackjax", marks=pytest.mark.long),
    ],
)
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
    assert fit.record.sampler == sampler
    assert fit.diagnostics.n_draws == 40
    assert "diverging" in fit.sample_stats


# ----------------------------------------------------------------------------- compile reuse


def _normal_model(y: np.ndarray, prior_sd: float = 10.0):
    import pymc as pm

    with pm.Model(coords={"obs": np.arange(len(y))}) as m:
        data = pm.Data("y", y, dims="obs")
        mu = pm.Normal("mu", 0.0, prior_sd)
        pm.Normal("obs_y", mu, 1.0, observed=data, dims="obs")
    return m


def test_nutpie_reuses_a_compilation_with_new_data():
    """A second model with the same graph samples the NEW data without recompiling."""
    import nutpie

    rng = np.random.default_rng(0)
    nutpie_cache.clear_compiled()
    first, _ = sampling.compile_nutpie(_normal_model(rng.normal(0.0, 1.0, 50)), "numba")
    second, info = sampling.compile_nutpie(_normal_model(rng.normal(5.0, 1.0, 50)), "numba")
    assert info.source == "reused"  # not compiled again
    assert second.compiled_logp_func is first.compiled_logp_func
    means = [
        float(nutpie.sample(c, draws=300, tune=200, chains=1, seed=1, progress_bar=False)
              .posterior["mu"].mean())
        for c in (first, second)
    ]  # fmt: skip
    assert abs(means[0]) < 0.5 and abs(means[1] - 5.0) < 0.5
    # another prior constant is another model; another data size is the same model
    _, info = sampling.compile_nutpie(
        _normal_model(rng.normal(0.0, 1.0, 50), prior_sd=2.0), "numba"
    )
    assert info.source != "reused" and len(nutpie_cache._COMPILED) == 2
    _, info = sampling.compile_nutpie(_normal_model(rng.normal(0.0, 1.0, 40)), "numba")
    assert info.source == "reused" and len(nutpie_cache._COMPILED) == 2
    nutpie_cache.clear_compiled()


def _model_with_deterministics(y: np.ndarray):
    import pymc as pm

    with pm.Model(coords={"obs": np.arange(len(y)), "group": ["a", "b", "c"]}) as m:
        mu = pm.Normal("mu", 0.0, 3.0, dims="group")
        sd = pm.HalfNormal("sd", 2.0)
        pm.Deterministic("mu_scaled", mu / sd, dims="group")
        pm.Deterministic("contrast", mu[1:] - mu[0])  # no dims
        pm.Normal("obs_y", mu[np.arange(len(y)) % 3], sd, observed=y, dims="obs")
    return m


@pytest.mark.parametrize("backend", ["numba", "jax"])
def test_deterministics_after_sampling_equal_those_stored_while_sampling(backend, monkeypatch):
    """Large models leave deterministics out of nutpie's stored values and compute
    them from the kept draws: the posterior is the same, in the same order."""
    y = np.random.default_rng(4).normal([0.0, 1.0, -2.0] * 20, 1.0)
    compiled = []
    real = sampling.compile_nutpie

    def spy(*args, **kwargs):
        compiled.append(real(*args, **kwargs))
        return compiled[-1]

    monkeypatch.setattr(sampling, "compile_nutpie", spy)
    run = dict(draws=100, tune=100, chains=2, sampler="nutpie", random_seed=5, target_accept=0.9)
    model = _model_with_deterministics(y)
    posts, timings = {}, {}
    for mode in ("during", "after"):
        dt, timings[mode] = sampling.run_nuts(
            model, nuts={"deterministics": mode, "backend": backend}, progressbar=False, **run
        )
        posts[mode] = dt["posterior"].to_dataset()
    during, after = posts["during"], posts["after"]
    assert list(after.data_vars) == list(during.data_vars) == [
        "mu", "sd", "mu_scaled", "contrast"
    ]  # fmt: skip
    xr.testing.assert_allclose(during, after)
    assert after["contrast"].dims == during["contrast"].dims
    # nutpie stored fewer values per draw (numba models say how many), and the
    # computation was timed
    if backend == "numba":
        assert compiled[1][0].n_expanded < compiled[0][0].n_expanded
    assert "deterministics_s" in timings["after"] and "deterministics_s" not in timings["during"]
    # "auto": by the size of the deterministics' draws over all iterations
    assert not deterministics.deterministics_after(model, "auto", chains=4, iterations=2000)
    monkeypatch.setattr(deterministics, "DETERMINISTICS_AFTER_BYTES", 8 * 5 * 4 * 2000 - 1)
    assert deterministics.deterministics_after(model, "auto", chains=4, iterations=2000)
    with pytest.raises(ValueError, match="deterministics must be"):
        deterministics.deterministics_after(model, "later", chains=4, iterations=2000)


def test_alliance_models_of_any_size_share_a_compilation(calpas):
    from caltars_bayes.model.build import AllianceModel
    from caltars_bayes.model.simulate import simulate_trial

    def sig(n_subjects: int, seed: int, any_size: bool = True) -> dict:
        trial = simulate_trial(
            calpas, n_subjects=n_subjects, n_sessions=2, n_judges=2, seed=seed,
            subject_covariates={"x": {"PC": 0.5}}, covariate_missing_rate=0.5,
        )  # fmt: skip
        model = AllianceModel(trial.to_rating_data()).model
        return nutpie_cache.model_signature(model, None, any_size)

    a = sig(12, 1)
    assert nutpie_cache.same_model(a, sig(12, 2))  # new ratings, same design
    assert nutpie_cache.same_model(a, sig(16, 2))  # more subjects, other missing covariates
    # code specific to the sizes (nutpie's own layout) is not shared across sizes
    assert not nutpie_cache.same_model(sig(12, 1, False), sig(16, 2, False))


def test_chains_sample_with_one_blas_thread(tiny_data, monkeypatch):
    """Several chains on every core: BLAS must not start threads of its own."""
    import nutpie
    from threadpoolctl import threadpool_info

    seen = []
    real = nutpie.sample

    def spy(*args, **kwargs):
        seen.append([i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"])
        return real(*args, **kwargs)

    monkeypatch.setattr(nutpie, "sample", spy)
    with threadpool_limits(limits=2, user_api="blas"):  # as on a 2-core machine
        before = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
        fit_model(tiny_data, draws=10, tune=10, chains=2, progressbar=False)
        after = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
    assert seen and all(n == 1 for n in seen[0])
    assert after == before  # restored afterwards


@pytest.mark.parametrize("given", [None, {"early_window_switch_freq": 20}])
def test_nutpie_defaults_are_applied_unless_given(tiny_data, monkeypatch, given):
    """nutpie's early windows are 100 draws and the integration time 3.2 unless the
    caller says otherwise, and nutpie applies them (read back from the settings it
    records); depth hits are counted against the maximum depth, not the cap."""
    import json

    import nutpie

    applied, max_steps = [], []
    real = nutpie.sample

    def spy(*args, **kwargs):
        dt = real(*args, **kwargs)
        settings = json.loads(dt["sample_stats"].attrs["inference_library_settings"])["settings"]
        applied.append(
            (
                settings["adapt_options"]["early_mass_matrix_switch_freq"],
                settings["target_integration_time"],
            )
        )
        step = settings["adapt_options"]["step_size_settings"]["adapt_options"]
        max_steps.append(step["dual_average"]["max_step_size"])
        return dt

    monkeypatch.setattr(nutpie, "sample", spy)
    fit = fit_model(tiny_data, draws=30, tune=30, chains=1, nuts=given, progressbar=False)
    assert applied == [(100, 3.2) if given is None else (20, 3.2)]
    assert max_steps == [0.8]
    # the fit records the defaults it ran with (those the caller did not give)
    assert fit.record.sampler_defaults == (
        sampling.NUTPIE_DEFAULTS if given is None else {"target_integration_time": 3.2}
    )
    assert sampling.NUTPIE_DEFAULTS == {
        "early_window_switch_freq": 100,
        "target_integration_time": 3.2,
    }
    ss = fit.sample_stats
    assert "integration_time_reached" in ss
    assert int(ss["maxdepth_reached"].sum()) == int((ss["depth"] >= 10).sum())
    assert fit.diagnostics.treedepth_hits == int((ss["depth"] >= 10).sum())


def test_large_data_tunes_for_fewer_iterations_unless_told_otherwise(tiny_data, monkeypatch):
    """From ``LARGE_DATA_RATINGS`` ratings (lowered to this design's here) a fit
    tunes for ``LARGE_DATA_TUNE`` iterations (made 25), below it for
    ``DEFAULT_TUNE`` (made 35), and for what the caller gives whatever the size;
    nutpie runs with the number the record and the methods text give (one
    fit; the other cases stop at the sampler, whose ``tune`` is recorded)."""
    from dataclasses import replace

    import nutpie

    from caltars_bayes.inference import fit as fit_module
    from caltars_bayes.report.methods import methods_paragraph

    n = tiny_data.n_ratings
    assert sampling.default_tune(sampling.LARGE_DATA_RATINGS) == sampling.LARGE_DATA_TUNE == 500
    assert sampling.default_tune(sampling.LARGE_DATA_RATINGS - 1) == sampling.DEFAULT_TUNE == 1000
    monkeypatch.setattr(sampling, "LARGE_DATA_TUNE", 25)
    monkeypatch.setattr(sampling, "DEFAULT_TUNE", 35)
    monkeypatch.setattr(sampling, "LARGE_DATA_RATINGS", n)
    applied = []
    real = nutpie.sample

    def spy(*args, **kwargs):
        applied.append(kwargs["tune"])
        return real(*args, **kwargs)

    monkeypatch.setattr(nutpie, "sample", spy)
    fit = fit_model(tiny_data, draws=20, chains=1, progressbar=False)
    assert applied == [25] and fit.record.tune == 25
    said = f"25 tuning (the package's default for data sets of {n:,} ratings or more; here {n:,})"
    assert said in methods_paragraph(fit)
    given = replace(fit, record=replace(fit.record, tune=30))
    assert "(the package's default" not in methods_paragraph(given)

    class Stop(Exception):
        pass

    def stop(*args, **kwargs):
        applied.append(kwargs["tune"])
        raise Stop

    monkeypatch.setattr(fit_module, "run_nuts", stop)
    for threshold, tune in ((n, 30), (n + 1, None)):
        monkeypatch.setattr(sampling, "LARGE_DATA_RATINGS", threshold)
        with pytest.raises(Stop):
            fit_model(tiny_data, draws=20, tune=tune, chains=1, progressbar=False)
    assert applied == [25, 30, 35]


@pytest.mark.parametrize(
    ("options", "nuts", "more_units", "large", "start", "t"),
    [
        ({}, None, 0, True, "data", 2.7),  # the rule: joint form, data start, shorter cap
        ({}, None, 1, True, "data", 3.2),  # too few session deviations for the cap
        ({}, {"target_integration_time": 3.0}, 0, True, "default", 3.0),
        ({"parameterisation": "noncentred"}, None, 0, False, "default", 3.2),  # asked otherwise
    ],
)
def test_large_designs_get_their_settings_unless_told_otherwise(
    tiny_data, monkeypatch, options, nuts, more_units, large, start, t
):
    """From ``LARGE_DESIGN_SESSIONS`` sessions (lowered to this design's 24 here)
    the auto parameterisation is the joint form and a fit starts from the data;
    from ``LARGE_DESIGN_SESSION_SCALES`` session deviations (lowered to 24 x the
    scales, or one more) nutpie's cap is 2.7; unless the caller says otherwise.
    The plan, the data report's notes and the fit's record say which applied."""
    import json
    from dataclasses import replace

    import nutpie

    from caltars_bayes.model import plan as model_mod
    from caltars_bayes.model.build import AllianceModel

    monkeypatch.setattr(model_mod, "LARGE_DESIGN_SESSIONS", tiny_data.n_sessions)
    units = tiny_data.n_sessions * tiny_data.n_scales
    monkeypatch.setattr(model_mod, "LARGE_DESIGN_SESSION_SCALES", units + more_units)
    applied = []
    real = nutpie.sample

    def spy(*args, **kwargs):
        dt = real(*args, **kwargs)
        settings = json.loads(dt["sample_stats"].attrs["inference_library_settings"])["settings"]
        applied.append(settings["target_integration_time"])
        return dt

    monkeypatch.setattr(nutpie, "sample", spy)
    am = AllianceModel(tiny_data, options=replace(tiny_data.instrument.model, **options))
    given_start = "default" if nuts else "auto"  # told otherwise: start and cap given
    fit = fit_model(
        tiny_data, model=am, draws=20, tune=20, chains=1, nuts=nuts, start=given_start,
        progressbar=False,
    )  # fmt: skip
    assert fit.plan.large_design is large
    assert fit.plan.joint_subject_sessions is large
    assert fit.plan.short_trajectory_cap is (large and not more_units)
    assert any(n.startswith("large design (24 sessions >= 24)") for n in fit.plan.notes) is large
    assert fit.record.start == start
    assert applied == [t]
    assert fit.record.sampler_defaults.get("target_integration_time") == (None if nuts else t)
    # one session fewer than the threshold: the defaults
    monkeypatch.setattr(model_mod, "LARGE_DESIGN_SESSIONS", tiny_data.n_sessions + 1)
    plan = AllianceModel(tiny_data).plan
    assert not plan.large_design and not plan.joint_subject_sessions


@pytest.mark.jax
@pytest.mark.parametrize(
    ("large", "nuts", "depth"),
    [(True, None, 6), (True, {"max_tree_depth": 8}, 8), (False, None, 10)],
)
def test_numpyro_caps_the_tree_depth_of_large_designs(tiny_data, monkeypatch, large, nuts, depth):
    """numpyro's counterpart of nutpie's shorter cap: a large design with many session
    deviations runs at most 63 leapfrog steps (tree depth 6) unless the caller says
    otherwise; other designs keep numpyro's own depth (10). Read from the kernel
    numpyro is given (the spy stops the fit there)."""
    pytest.importorskip("numpyro")
    import numpyro.infer

    from caltars_bayes.model import plan as model_mod

    if large:
        monkeypatch.setattr(model_mod, "LARGE_DESIGN_SESSIONS", tiny_data.n_sessions)
        units = tiny_data.n_sessions * tiny_data.n_scales
        monkeypatch.setattr(model_mod, "LARGE_DESIGN_SESSION_SCALES", units)
    seen = []
    real = numpyro.infer.NUTS

    class Stop(Exception):
        pass

    def spy(*args, **kwargs):
        seen.append(real(*args, **kwargs)._max_tree_depth)
        raise Stop

    monkeypatch.setattr(numpyro.infer, "NUTS", spy)
    with pytest.raises(Stop):
        fit_model(tiny_data, draws=5, tune=5, chains=1, sampler="numpyro", nuts=nuts)
    assert seen == [depth]
    assert sampling.sampler_defaults("numpyro", large) == ({"max_tree_depth": 6} if large else {})
    assert sampling.sampler_defaults("blackjax", True) == {"max_num_doublings": 6}
    assert sampling.sampler_defaults("pymc", True) == {}


@pytest.mark.long  # 74 s in CI; `make test-long` runs it with test_sampler_paths[numpyro]
def test_numpyro_samples_the_joint_form_on_the_dense_layout(tiny_data):
    """Designs large enough for the joint form on a GPU use the dense layout too."""
    from dataclasses import replace

    from caltars_bayes.model.build import AllianceModel

    options = replace(tiny_data.instrument.model, parameterisation="joint")
    am = AllianceModel(tiny_data, options=options, sampler="numpyro")
    assert am.plan.joint_subject_sessions and am.plan.likelihood_layout == "dense"
    fit = fit_model(
        tiny_data, model=am, draws=40, tune=40, chains=2, sampler="numpyro", progressbar=False
    )
    assert fit.posterior.sizes["draw"] == 40
    for name in ("theta", "zeta", "subject_mean"):
        assert np.isfinite(fit.posterior[name].values).all()
    # the block's identity, computed through JAX: a subject's average session
    # alliance is theta_raw plus the mean of its sessions' deviations, and theta is
    # theta_raw less its average, so u - theta - mean zeta is the same for every subject
    post = fit.posterior
    subj = xr.DataArray(
        np.asarray(tiny_data.subjects)[tiny_data.session_subject_idx], dims="session"
    )
    mean_zeta = post["zeta"].groupby(subj.rename("subject")).mean()
    gap = post["subject_mean"] - post["theta"] - mean_zeta.sel(subject=post.subject)
    assert float(gap.std("subject").max()) < 1e-8
    assert float(post["zeta"].std()) > 0.01


def test_tuning_steps_are_counted_without_storing_the_warmup():
    """nutpie stores no warmup draws by default; the tuning steps counted from its
    progress reports equal those in the stored warmup stats of the same run."""
    dts, timings = [], []
    for nuts in ({}, {"save_warmup": True}):
        dt, t = sampling.run_nuts(
            _normal_model(np.random.default_rng(1).normal(size=30)),
            draws=50, tune=60, chains=2, sampler="nutpie", random_seed=4,
            target_accept=0.9, nuts=nuts, progressbar=False,
        )  # fmt: skip
        dts.append(dt)
        timings.append(t)
    assert "warmup_posterior" not in dts[0].children
    stored = float(dts[1]["warmup_sample_stats"]["n_steps"].sum())
    assert stored > 60 * 2  # at least one step per tuning iteration
    assert timings[0]["tune_steps"] == timings[1]["tune_steps"] == stored
    # the same draws either way
    np.testing.assert_array_equal(dts[0]["posterior"]["mu"], dts[1]["posterior"]["mu"])


def test_step_counter_needs_every_chains_final_report():
    from types import SimpleNamespace as P

    counter = sampling._StepCounter()
    done = P(finished_draws=100, total_num_steps=900)
    counter([done, P(finished_draws=90, total_num_steps=800)])
    assert counter.total(2, 100) is None  # chain 2 had not finished when last seen
    counter([done, P(finished_draws=100, total_num_steps=870)])
    assert counter.total(2, 100) == 1770
    assert counter.total(3, 100) is None  # a chain never reported


def test_depth_hits_are_counted_against_the_maximum_depth():
    import xarray as xr

    stats = xr.Dataset(
        {
            "depth": (("chain", "draw"), [[3, 5, 10, 12]]),
            "maxdepth_reached": (("chain", "draw"), [[False, True, True, True]]),
        },
        attrs={"kept": 1},
    )
    dt = xr.DataTree.from_dict({"sample_stats": stats})
    out = sampling._count_depth_hits_against(dt, 10)["sample_stats"].to_dataset()
    assert out["maxdepth_reached"].values.tolist() == [[False, False, True, True]]
    assert out["integration_time_reached"].values.tolist() == [[False, True, True, True]]
    assert out.attrs == {"kept": 1}


def test_nutpie_with_the_defaults_samples_a_correlated_gaussian():
    """The integration-time cap keeps NUTS exact: means, SDs and a correlation of a
    known 40-dimensional Gaussian (scales 0.1 to 10, one pair correlated 0.9).

    Without the step-size bound (t / 4) tuning drove the step size past t here,
    trajectories shrank to no steps and the chains stood still (ESS 2)."""
    import pymc as pm

    d = 40
    sd = np.geomspace(0.1, 10.0, d)
    cov = np.diag(sd**2)
    cov[0, 1] = cov[1, 0] = 0.9 * sd[0] * sd[1]
    with pm.Model() as m:
        pm.MvNormal("x", mu=np.arange(d, dtype=float), cov=cov)
    dt, _ = sampling.run_nuts(
        m, draws=1000, tune=1000, chains=2, sampler="nutpie", random_seed=3,
        target_accept=0.9, progressbar=False,
    )  # fmt: skip
    x = dt["posterior"]["x"].values.reshape(-1, d)
    z_mean = (x.mean(0) - np.arange(d)) / sd
    # 2000 draws, ESS well above 500 per coordinate: mean errors under 0.2 SD
    assert np.abs(z_mean).max() < 0.2, z_mean
    assert np.allclose(x.std(0) / sd, 1.0, atol=0.12)
    assert abs(np.corrcoef(x[:, 0], x[:, 1])[0, 1] - 0.9) < 0.05
    assert int(dt["sample_stats"]["diverging"].sum()) == 0


def _faults_per_round(rounds: int = 6) -> float:
    """Minor page faults per round of a thread that allocates, touches and frees
    80 MB of 2 MB arrays (more than one 64 MB per-thread glibc heap), as a
    gradient of a large design does; the first round (heap growth) not counted."""
    import resource
    import threading

    counts: list[int] = []

    def work() -> None:
        for _ in range(rounds + 1):
            before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
            arrays = [np.ones(1 << 18) for _ in range(40)]
            del arrays
            counts.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before)

    t = threading.Thread(target=work)
    t.start()
    t.join()
    return float(np.mean(counts[1:]))


@pytest.mark.skipif(sampling._glibc() is None, reason="glibc's mallopt only")
def test_keep_heap_memory_stops_page_faults_between_gradients():
    """Sampler threads reuse freed memory instead of faulting it in again each time.

    Measured in a fresh process: in this one, earlier tests' sampler threads leave
    glibc arenas behind whose state a new thread may inherit."""
    import json
    import subprocess
    import sys

    code = (
        "import json\n"
        "from caltars_bayes.inference import sampling\n"
        "from tests.inference.test_samplers import _faults_per_round\n"
        "before = _faults_per_round()\n"
        "with sampling.keep_heap_memory() as applied:\n"
        "    kept = _faults_per_round()\n"
        "after = _faults_per_round()\n"
        "print(json.dumps([applied, before, kept, after]))\n"
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True
    )
    applied, before, kept, after = json.loads(out.stdout.strip().splitlines()[-1])
    assert applied
    assert kept < 100  # 80 MB is 20,480 pages: nearly all reused
    assert before > 10 * max(kept, 10)  # glibc untouched: the pages fault every round
    assert after > 10 * max(kept, 10)  # and the sampling settings are lifted


@pytest.mark.skipif(sampling._glibc() is None, reason="glibc's mallopt only")
def test_arrays_after_sampling_reuse_memory():
    """After the context, arrays of a founding-size gradient (160 KB) come from the
    heap: fixed thresholds must not leave every array above 128 KB mapped afresh."""
    import resource

    with sampling.keep_heap_memory():
        pass
    for _ in range(3):
        [np.ones(20_000) for _ in range(30)]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        arrays = [np.ones(20_000) for _ in range(30)]
        del arrays
    per_round = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20
    assert per_round < 50  # mapped afresh: about 1,000 per round (30 x 40 pages)
