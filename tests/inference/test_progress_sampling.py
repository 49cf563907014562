"""Sampling progress: nutpie's and PyMC's reports turned into plain lines, without sampling.

The reports are synthetic (objects with the attributes nutpie's ``PyChainProgress``
and PyMC's ``Draw`` have); the clock is faked, so the cadence and the ETA are exact.
"""

from __future__ import annotations

import io
import itertools
import re
from types import SimpleNamespace

import pytest

from caltars_bayes._core.progress import SamplingProgress, log_to
from caltars_bayes.inference import sampling
from caltars_bayes.inference.sampling import _PyMCDraws, _StepCounter


class Clock:
    def __init__(self) -> None:
        self.t = 500.0

    def __call__(self) -> float:
        return self.t


def chain(finished: int, tuning: bool, divergences: int = 0, total: int = 2000) -> SimpleNamespace:
    """One chain's report as nutpie's progress callback receives it."""
    return SimpleNamespace(
        finished_draws=finished,
        total_draws=total,
        tuning=tuning,
        divergences=divergences,
        total_num_steps=7 * finished,
        started=finished > 0,
    )


def test_nutpie_reports_give_draws_tuning_divergences_and_eta():
    clock, out = Clock(), io.StringIO()
    with SamplingProgress(2, 2000, stream=out, clock=clock, heartbeat=False) as bar:
        counter = _StepCounter(bar)
        clock.t += 20  # compiling
        counter([chain(0, True), chain(0, True)])
        clock.t += 10
        counter([chain(400, True), chain(300, True)])
        # 700 draws in 10 s: 3300 left take 47 s
        assert bar.eta() == pytest.approx(3300 / 70)
        assert bar.tick()
        clock.t += 30
        counter([chain(1500, False, 2), chain(1400, False, 1)])
        assert bar.tick()
        clock.t += 15
        counter([chain(2000, False, 3), chain(2000, False, 1)])
        bar.finish(divergences=4)
    lines = out.getvalue().splitlines()
    assert lines == [
        "sampling: 2 chains, starting, 0 s elapsed",
        "sampling: 2 chains, 700/4000 draws (tuning), 0 divergences, 30 s elapsed, ETA 47 s",
        "sampling: 2 chains, 2900/4000 draws, 3 divergences, 60 s elapsed, ETA 15 s",
        "sampling: 2 chains, 4000/4000 draws, 4 divergences, done in 75 s",
    ]
    # the step counter still adds up the leapfrog steps for the timings
    assert counter.total(2, 2000) == 7 * 4000


def test_plain_lines_at_least_every_ten_seconds_while_sampling():
    clock, out = Clock(), io.StringIO()
    stamps = [clock.t]
    with SamplingProgress(4, 3000, stream=out, clock=clock, heartbeat=False) as bar:
        counter = _StepCounter(bar)
        for i in range(1, 301):  # nutpie reports every 0.1 s; the heartbeat polls each second
            clock.t += 0.1
            counter([chain(i * 10, i <= 100, total=3000)] * 4)
            if i % 10 == 0 and bar.tick(slack=1.0):
                stamps.append(clock.t)
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    assert len(gaps) == 3 and max(gaps) <= 10
    lines = out.getvalue().splitlines()[1:]
    assert all("divergences" in line and "ETA" in line for line in lines)
    assert ["(tuning)" in line for line in lines] == [True, False, False]


def test_a_chain_that_has_not_started_shows_compiling_then_eta_unknown():
    clock, out = Clock(), io.StringIO()
    with SamplingProgress(2, 100, stream=out, clock=clock, heartbeat=False) as bar:
        bar.working("compiling the model (nutpie, numba)")
        clock.t += 12
        assert bar.tick()
        _StepCounter(bar)([chain(0, True), chain(0, True)])
        clock.t += 12
        assert bar.eta() is None
        assert bar.tick()
    lines = out.getvalue().splitlines()
    assert lines[1] == "sampling: 2 chains, compiling the model (nutpie, numba), 12 s elapsed"
    assert lines[2] == (
        "sampling: 2 chains, 0/200 draws (tuning), 0 divergences, 24 s elapsed, ETA ?"
    )


def test_pymc_draws_count_divergences_after_tuning_only():
    clock, out = Clock(), io.StringIO()
    with SamplingProgress(2, 6, stream=out, clock=clock, heartbeat=False) as bar:
        callback = _PyMCDraws(bar)
        for idx in range(6):
            for c in range(2):
                tuning = idx < 3
                stats = [{"diverging": idx in (1, 4) and c == 0, "tune": tuning}]
                callback(trace=None, draw=SimpleNamespace(chain=c, draw_idx=idx, tuning=tuning,
                                                          stats=stats))  # fmt: skip
        assert bar.done == 12 and bar.divergences == 1 and not bar.tuning


def test_quiet_sampling_writes_only_to_the_log(tmp_path):
    log, out, clock = tmp_path / "fit.log", io.StringIO(), Clock()
    with log_to(log):
        with SamplingProgress(1, 10, stream=out, quiet=True, clock=clock, heartbeat=False) as bar:
            _StepCounter(bar)([chain(5, True, total=10)])
            clock.t += 10
            assert bar.tick()
            bar.finish(divergences=0)
    with SamplingProgress(1, 10, stream=out, quiet=True) as bar:
        assert bar._thread is None and not bar.heartbeat  # nothing to write to
        bar.finish()
    assert out.getvalue() == ""
    lines = log.read_text().splitlines()
    assert len(lines) == 3
    assert re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d sampling: 1 chain,", lines[0])
    assert lines[-1].endswith("sampling: 1 chain, 10/10 draws, 0 divergences, done in 10 s")


def test_an_interrupted_run_says_so():
    out = io.StringIO()
    with pytest.raises(KeyboardInterrupt), SamplingProgress(2, 10, stream=out, heartbeat=False):
        raise KeyboardInterrupt
    last = out.getvalue().splitlines()[-1]
    assert last.startswith(
        "sampling: 2 chains, 0/20 draws, 0 divergences, stopped (KeyboardInterrupt) after"
    )


def test_displays_sampler_bar_on_a_terminal_plain_lines_elsewhere(monkeypatch):
    assert sampling._displays(False) == (False, False)
    monkeypatch.setattr(sampling, "is_terminal", lambda stream=None: True)
    assert sampling._displays(True) == (True, False)
    monkeypatch.setattr(sampling, "is_terminal", lambda stream=None: False)
    monkeypatch.setattr(sampling, "in_notebook", lambda: False)
    assert sampling._displays(True) == (False, True)
    monkeypatch.setattr(sampling, "in_notebook", lambda: True)
    assert sampling._displays(True) == (True, False)
