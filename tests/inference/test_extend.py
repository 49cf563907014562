"""Extending a fit that misses the verdict on R-hat or ESS alone.

The rule is tested on hand-made verdicts; the sampling mechanics on a
two-parameter model (seconds): a fit that stops at a later checkpoint holds
exactly the draws a fit asking for that many gives with the same seed.
"""

from __future__ import annotations

import itertools

import numpy as np
import pymc as pm
import pytest

from caltars_bayes.inference.diagnostics import Diagnostics
from caltars_bayes.inference.extend import (
    EXTEND_FACTOR,
    Extension,
    default_max_draws,
    short_of_draws_only,
)
from caltars_bayes.inference.sampling import run_nuts


def verdict(draws, bulk=500.0, tail=500.0, rhat=1.0, div=0, depth=0, ebfmi=(1.0, 1.0)):
    problems = []
    if rhat > 1.01:
        problems.append("R-hat")
    if min(bulk, tail) < 400:
        problems.append("ESS")
    if div:
        problems.append("divergences")
    if depth:
        problems.append("depth")
    if min(ebfmi) < 0.3:
        problems.append("E-BFMI")
    return Diagnostics(
        converged=not problems, max_rhat=rhat, min_ess_bulk=bulk, min_ess_tail=tail,
        divergences=div, treedepth_hits=depth, ebfmi=list(ebfmi), n_chains=4,
        n_draws=draws, problems=problems,
    )  # fmt: skip


def test_extension_triggers_only_on_precision_misses():
    assert short_of_draws_only(verdict(1000, bulk=300))
    assert short_of_draws_only(verdict(1000, tail=150, rhat=1.02))
    assert not short_of_draws_only(verdict(1000))  # met: nothing to extend
    assert not short_of_draws_only(verdict(1000, bulk=300, div=1))
    assert not short_of_draws_only(verdict(1000, bulk=300, depth=3))
    assert not short_of_draws_only(verdict(1000, bulk=300, ebfmi=(1.0, 0.2)))

    ext = Extension(requested=1000, cap=4000)
    assert ext.next_draws(verdict(1000)) is None and not ext.extended
    assert Extension(1000, 4000).next_draws(verdict(1000, bulk=300, div=2)) is None


def test_checkpoints_follow_the_shortfall_and_respect_the_cap():
    """ESS 300 of 400 at 1000 draws: 1000 x 400/300 x 1.1 = 1467, rounded up to
    a multiple of 250: 1500; an R-hat miss alone adds a quarter; at most a half
    of the draws asked for more per checkpoint; never past the cap; a shortfall
    the cap cannot make up (prediction > 1.5 x cap) is not extended."""
    ext = Extension(requested=1000, cap=4000)
    assert ext.next_draws(verdict(1000, bulk=300)) == 1500
    assert ext.next_draws(verdict(1500, tail=390, rhat=1.02)) == 1750
    assert ext.next_draws(verdict(1750, tail=200)) == 2250  # 3850 predicted: +500 at most
    assert ext.next_draws(verdict(3750, tail=390)) == 4000  # never past the cap
    assert ext.next_draws(verdict(4000, tail=390)) is None  # at the cap
    assert [c["draws"] for c in ext.checks] == [1000, 1500, 1750, 3750, 4000]
    assert Extension(1000, 4000).next_draws(verdict(1000, tail=60)) is None  # needs 6,667
    assert Extension(60, 240).next_draws(verdict(60, bulk=40)) is None  # needs 600


def test_the_message_and_record_say_what_happened():
    ext = Extension(requested=1000, cap=4000)
    ext.next_draws(verdict(1000, bulk=300))
    final = verdict(1500)
    ext.next_draws(final)
    assert ext.extended
    msg = "extended to 1,500 draws per chain (1,000 asked for) to reach ESS 400"
    assert ext.message(final) == msg
    rec = ext.to_record(final)
    assert rec["requested_draws"] == 1000 and rec["max_draws"] == 4000 and rec["draws"] == 1500
    assert rec["message"] == msg and len(rec["checks"]) == 2
    final.extension = msg
    assert final.banner().endswith(f"0 divergences ({msg})")

    capped = Extension(requested=1000, cap=2000)
    capped.next_draws(verdict(1000, bulk=300, rhat=1.02))
    last = verdict(2000, bulk=390)
    capped.next_draws(last)
    assert capped.message(last) == (
        "extended to 2,000 draws per chain (1,000 asked for), the cap, without reaching "
        "R-hat <= 1.01 and ESS 400"
    )


def test_default_cap():
    assert default_max_draws(1000, 4) == EXTEND_FACTOR * 1000 == 4000  # the defaults
    assert default_max_draws(500, 2) == 500  # SBC and planning replications: not extended
    assert default_max_draws(60, 2) == 60


@pytest.fixture(scope="module")
def two_normals():
    with pm.Model() as m:
        pm.Normal("a", 0.0, 1.0)
        pm.Normal("b", 0.0, 2.0, shape=2)
    return m


def test_an_extended_run_holds_the_draws_of_a_run_asking_for_them(two_normals):
    """The checkpoints see the first 100, then 250 draws of each chain; stopped
    there, the fit holds draws (and tuning steps) equal to those of a run of
    250 draws with the same seed."""
    seen = []

    def extend(dt):
        n = dt["posterior"].sizes["draw"]
        seen.append(n)
        return 250 if n < 250 else None

    run = dict(tune=100, chains=2, sampler="nutpie", random_seed=7, target_accept=0.9)
    dt, timings = run_nuts(
        two_normals, draws=100, max_draws=400, extend=extend, progressbar=False, **run
    )
    plain, plain_timings = run_nuts(two_normals, draws=250, progressbar=False, **run)
    assert seen == [100, 250]
    assert dt["posterior"].sizes == plain["posterior"].sizes
    for v in ("a", "b"):
        np.testing.assert_array_equal(dt["posterior"][v].values, plain["posterior"][v].values)
    np.testing.assert_array_equal(
        dt["sample_stats"]["step_size"].values, plain["sample_stats"]["step_size"].values
    )
    assert timings["tune_steps"] == plain_timings["tune_steps"]


def test_checkpoints_pause_the_chains_where_they_occupy_every_core(two_normals, monkeypatch):
    """Where the chains occupy every core (``pause_for_checks``, forced here)
    they are paused while a checkpoint is checked and resumed when it asks for
    more; otherwise they run on. The checks' time is ``timings["checks_s"]``,
    not sampling time."""
    import sys
    import time

    from caltars_bayes.inference import sampling

    rule = sampling.pause_for_checks
    assert rule(10**6) and not rule(0)  # one thread a chain: pause when cores <= chains
    background = sys.modules["nutpie.sample"]._BackgroundSampler
    events: list[object] = []

    def spied(name):
        real = getattr(background, name)

        def spy(self):
            events.append(name)
            return real(self)

        return spy

    for name in ("pause", "resume"):
        monkeypatch.setattr(background, name, spied(name))

    def extend(dt):
        n = dt["posterior"].sizes["draw"]
        events.append(n)
        time.sleep(0.3)
        return 250 if n < 250 else None

    run = dict(tune=100, chains=2, sampler="nutpie", random_seed=7, target_accept=0.9)
    for paused in (True, False):
        monkeypatch.setattr(sampling, "pause_for_checks", lambda chains, p=paused: p)
        events.clear()
        t0 = time.perf_counter()
        _, timings = run_nuts(
            two_normals, draws=100, max_draws=200_000, extend=extend, progressbar=False, **run
        )
        wall = time.perf_counter() - t0
        assert events == (["pause", 100, "resume", "pause", 250] if paused else [100, 250])
        assert 0.6 <= timings["checks_s"] <= wall - timings["sampling_s"]


def test_a_chain_whose_draws_are_not_yet_stored_is_not_cut_short():
    """nutpie pads the arrays of chains with fewer stored draws with NaN: a
    checkpoint must not take those as draws (it waits, or refuses)."""
    import xarray as xr

    from caltars_bayes.inference.sampling import _first_draws, _kept_draws

    energy = np.ones((2, 10))
    energy[1, 7:] = np.nan  # chain 1: 7 draws stored so far
    dt = xr.DataTree.from_dict(
        {
            "posterior": xr.Dataset({"a": (("chain", "draw"), np.zeros((2, 10)))}),
            "sample_stats": xr.Dataset({"energy": (("chain", "draw"), energy)}),
        }
    )
    assert _kept_draws(dt) == 7
    assert _first_draws(dt, 7)["posterior"].sizes["draw"] == 7
    with pytest.raises(RuntimeError, match="7 draws in a chain, expected 8"):
        _first_draws(dt, 8)


def test_a_fit_records_and_shows_its_extension(tiny_trial, tiny_fit, tmp_path, monkeypatch):
    """A fit asking for 60 draws per chain with a cap of 240 (the give-up rule
    switched off: this tiny fit is far from the verdict) takes more draws, keeps
    its first 60 equal to those of the same fit without extension (``tiny_fit``,
    same seed), and its record, its saved and reloaded record and its banner say
    how far it went and why it stopped."""
    from caltars_bayes.inference import extend, mcmcstats
    from caltars_bayes.inference import fit as fit_module
    from caltars_bayes.inference.fit import fit_model, load_fit

    monkeypatch.setattr(extend, "GIVE_UP_FACTOR", 1e9)
    # R-hat and ESS computed by each verdict: the fit's own, on the last
    # checkpoint's draws, takes them all from that checkpoint's
    computed: list[int] = []
    per_verdict: list[int] = []
    stats, check = mcmcstats.convergence_stats, fit_module.check_convergence

    def counted_stats(x, *args, columns=None, **kwargs):
        computed.append(x.shape[2] if columns is None else len(columns))
        return stats(x, *args, columns=columns, **kwargs)

    def counted_check(*args, **kwargs):
        computed.clear()
        diag = check(*args, **kwargs)
        per_verdict.append(sum(computed))
        return diag

    monkeypatch.setattr(mcmcstats, "convergence_stats", counted_stats)
    monkeypatch.setattr(fit_module, "check_convergence", counted_check)
    data = tiny_trial.to_rating_data()
    fit = fit_model(
        data, draws=60, tune=60, chains=2, random_seed=3, progressbar=False, max_draws=240
    )
    assert len(per_verdict) >= 3 and min(per_verdict[:-1]) > 0 and per_verdict[-1] == 0
    n = fit.posterior.sizes["draw"]
    assert 60 < n <= 240
    assert fit.record.max_draws == 240 and fit.record.draws == n == fit.diagnostics.n_draws
    np.testing.assert_array_equal(
        fit.posterior["loading"].values[:, :60], tiny_fit.posterior["loading"].values
    )
    ext = fit.record.extension
    assert ext is not None and ext["requested_draws"] == 60 and ext["draws"] == n
    checks = [c["draws"] for c in ext["checks"]]
    assert checks[0] == 60 and checks[-1] == n and checks == sorted(checks)
    assert all(b - a <= 30 for a, b in itertools.pairwise(checks))  # <= 2 x 60/4
    assert fit.diagnostics.extension == ext["message"]
    assert ext["message"].startswith(f"extended to {n:,} draws per chain (60 asked for)")
    if n == 240:
        assert "the cap, without reaching" in ext["message"]
    assert ext["message"] in fit.diagnostics.banner()
    loaded = load_fit(fit.save(tmp_path / "fit"))
    assert loaded.record.extension == ext and loaded.diagnostics.extension == ext["message"]
