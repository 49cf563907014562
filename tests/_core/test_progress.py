"""Progress: plain lines at least every 10 s of (fake) time, the ETA, quiet, the log, the bar."""

from __future__ import annotations

import io
import itertools
import re
import time

from caltars_bayes._core.progress import (
    Progress,
    current_log,
    format_duration,
    log_to,
    write_log,
)

STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ")


class Clock:
    """A fake clock moved by hand."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_eta_is_mean_time_per_step_times_steps_left():
    clock, out = Clock(), io.StringIO()
    with Progress("refit", 10, stream=out, clock=clock, heartbeat=False) as p:
        assert p.eta() is None and "ETA ?" in p.line()
        clock.t += 30
        p.advance()
        clock.t += 30
        p.advance(failed=True, note="model a, fold 2")
        # 60 s for 2 steps: 30 s each, 8 left -> 240 s
        assert p.eta() == 240.0
        assert p.line() == "[2/10] refit, 1 failed, 60 s elapsed, ETA 4 min: model a, fold 2"
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("[0/10] refit") and lines[-1].startswith("[2/10] refit, 1 failed")
    assert len(lines) == 3  # the start and each completion


def test_plain_lines_at_least_every_ten_seconds():
    clock, out = Clock(), io.StringIO()
    stamps = []
    with Progress("refit", 3, stream=out, clock=clock, heartbeat=False) as p:
        p.working("model a, fold 1")
        for _ in range(95):  # a step of 95 s with the heartbeat polled every second
            clock.t += 1
            if p.tick():
                stamps.append(clock.t)
        p.advance()
    gaps = [b - a for a, b in zip([1000.0, *stamps], stamps, strict=False)]
    assert len(stamps) == 9 and max(gaps) <= 10
    assert all("fold 1" in line for line in out.getvalue().splitlines()[1:])


def test_heartbeat_polling_never_leaves_a_gap_over_ten_seconds():
    # the heartbeat polls every second and writes a second early: no gap exceeds 10 s
    clock, out = Clock(), io.StringIO()
    stamps = [clock.t]
    with Progress("refit", 1, stream=out, clock=clock, heartbeat=False) as p:
        for _ in range(60):
            clock.t += 1
            if p.tick(slack=1.0):
                stamps.append(clock.t)
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    assert len(gaps) == 6 and max(gaps) <= 10 and min(gaps) >= 9


def test_heartbeat_thread_writes_while_a_step_runs():
    out = io.StringIO()
    with Progress("refit", 2, stream=out, every=0.02) as p:
        p.working("slow step")
        time.sleep(0.3)
    lines = out.getvalue().splitlines()
    assert len(lines) >= 4 and all(line.startswith("[0/2] refit") for line in lines)


def test_quiet_writes_nothing_without_a_log():
    out = io.StringIO()
    with Progress("refit", 2, stream=out, quiet=True, every=0.01) as p:
        assert p._thread is None  # nothing to write: no heartbeat either
        time.sleep(0.05)
        p.advance()
        assert not p.tick()
    assert out.getvalue() == ""


def test_quiet_keeps_the_log(tmp_path):
    out, log, clock = io.StringIO(), tmp_path / "log.txt", Clock()
    with Progress("refit", 2, stream=out, quiet=True, log=log, clock=clock, heartbeat=False) as p:
        clock.t += 10
        assert p.tick()
        p.advance()
    assert out.getvalue() == ""
    lines = log.read_text().splitlines()
    # the start, the heartbeat, the completion; each after a timestamp
    assert len(lines) == 3 and all(STAMP.match(line) for line in lines)
    assert lines[-1].endswith("[1/2] refit, 10 s elapsed, ETA 10 s")


def test_say_and_log_get_the_same_lines(tmp_path):
    said: list[str] = []
    log = tmp_path / "log.txt"
    with Progress("tasks", 2, say=said.append, log=log) as p:
        p.advance(note="t1: done")
        p.advance(note="t2: done")
    logged = [STAMP.sub("", line) for line in log.read_text().splitlines()]
    assert said == logged and len(said) == 2
    assert said[-1].startswith("[2/2] tasks") and said[-1].endswith("t2: done")


def test_log_to_sends_every_progress_inside_to_the_file(tmp_path):
    log, out = tmp_path / "run.log", io.StringIO()
    with log_to(log) as path:
        assert current_log() == path == log
        with Progress("refit", 1, stream=out, heartbeat=False) as p:
            p.advance()
        write_log("a result line\nand a second")
        said: list[str] = []
        with Progress("tasks", 1, say=said.append, heartbeat=False) as p:
            p.advance()  # a say function is where its lines go: not logged
    assert current_log() is None
    with Progress("after", 1, stream=out, heartbeat=False) as p:
        p.advance()
    logged = [STAMP.sub("", line) for line in log.read_text().splitlines()]
    assert logged == [*out.getvalue().splitlines()[:2], "a result line", "and a second"]
    assert said == ["[1/1] tasks, 0 s elapsed, ETA 0 s"]


def test_terminal_bar_does_not_crash_and_shows_counts():
    out = io.StringIO()
    with Progress("refit", 4, stream=out, terminal=True) as p:
        assert p.terminal and not p.heartbeat
        p.working("model a, fold 1")
        p.advance()
        p.advance(failed=True)
    text = out.getvalue()
    assert "2/4" in text and "1 failed" in text


def test_format_duration():
    assert [format_duration(s) for s in (5, 89, 150, 7200 + 300)] == [
        "5 s",
        "89 s",
        "2 min",
        "2 h 5 min",
    ]
