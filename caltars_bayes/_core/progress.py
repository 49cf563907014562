"""Progress of long work: a ``say`` callback for lines, and :class:`Progress` for done/total loops.

:class:`Progress` shows a loop of ``total`` steps (refits, tasks, units):

* on a terminal, a ``rich`` progress bar (done/total, failed, elapsed, ETA);
* elsewhere (a log file, a pipe, a notebook), plain lines such as
  ``[3/10] compare: K-fold refit, 40 s elapsed, ETA 2 min: model a, fold 4``,
  one at each completion and one at least every ``every`` seconds while a
  step runs (a background heartbeat), so a log never falls silent;
* also appended, with a timestamp, to a log file: the ``log=`` of one
  :class:`Progress`, or the file of :func:`log_to` for every progress line of
  the work inside it (what ``--log FILE`` of the command line sets).

``quiet=True`` silences the stream (no bar, no lines) but a log still gets the
lines: a log is asked for explicitly, so it is kept even when the terminal is
quiet.

:class:`SamplingProgress` is the same for MCMC sampling: the samplers report
each chain's draws done, whether it is tuning and its divergences, and the lines
read ``sampling: 2 chains, 1400/4000 draws (tuning), 0 divergences, 35 s
elapsed, ETA 1 min``.

The ETA is the mean time per finished step times the steps left. The clock is
injectable (``clock=``) so that the ETA and the heartbeat cadence can be tested.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

#: a function that takes one line of progress text
Say = Callable[[str], None]

#: seconds between plain progress lines while a step runs
EVERY_S = 10.0


def silent(text: str) -> None:
    """The default ``say`` of library workflows: print nothing."""


_LOG_LOCK = threading.Lock()
_LOG: list[Path] = []  # the files of the open log_to blocks, innermost last


@contextmanager
def log_to(path: str | Path | None) -> Iterator[Path | None]:
    """Append every progress line of the work inside the block to ``path`` too.

    Each :class:`Progress` and :class:`SamplingProgress` made inside the block
    without a ``say=`` function writes its lines there, with a timestamp, also
    when it is ``quiet`` (see :func:`write_log`). ``None``: no log (the block
    changes nothing). The setting is process-wide (the heartbeat threads see
    it); blocks nest, the innermost wins.
    """
    if path is None:
        yield None
        return
    log = Path(path)
    log.parent.mkdir(parents=True, exist_ok=True)
    with _LOG_LOCK:
        _LOG.append(log)
    try:
        yield log
    finally:
        with _LOG_LOCK:
            _LOG.remove(log)


def current_log() -> Path | None:
    """The file of the innermost open :func:`log_to` block, or None."""
    with _LOG_LOCK:
        return _LOG[-1] if _LOG else None


def write_log(text: str, log: str | Path | None = None) -> None:
    """Append ``text`` to ``log`` (default :func:`current_log`), each line after a timestamp.

    The timestamp is local time to the second, ``2025-03-01 14:02:07``. Nothing
    happens when there is no log.
    """
    target = Path(log) if log is not None else current_log()
    if target is None:
        return
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    lines = "".join(f"{stamp} {line}\n" for line in str(text).splitlines() or [""])
    with _LOG_LOCK, target.open("a", encoding="utf-8") as fh:
        fh.write(lines)


def is_terminal(stream: IO[str] | None = None) -> bool:
    """Whether ``stream`` (default ``sys.stderr``) is a terminal."""
    stream = stream if stream is not None else sys.stderr
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


def in_notebook() -> bool:
    """Whether this runs in a Jupyter kernel (where samplers draw their own HTML progress)."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None  # type: ignore[attr-defined]
    return type(shell).__name__ == "ZMQInteractiveShell" or "google.colab" in sys.modules


def format_duration(seconds: float) -> str:
    """A duration: ``"40 s"`` below 90 s, ``"12 min"`` below 90 min, else ``"2 h 5 min"``."""
    s = max(0.0, float(seconds))
    if s < 90:
        return f"{s:.0f} s"
    if s < 90 * 60:
        return f"{s / 60:.0f} min"
    h, m = divmod(round(s / 60), 60)
    return f"{h} h {m} min"


class Progress:
    """Done/total progress of a loop, on a terminal (rich bar) or as plain lines.

    Parameters
    ----------
    label : what is counted, e.g. ``"compare: K-fold refit"``.
    total : number of steps.
    stream : where the bar or lines go (default ``sys.stderr``).
    quiet : show nothing on ``stream`` or ``say`` (the ``--quiet`` of the
        command line); a log still gets the lines.
    say : send plain lines to this function instead of ``stream`` (one per
        completion; no start line, no bar and no heartbeat). The function is
        then where the lines go: the :func:`log_to` file is not written.
    log : a file to which every plain line is also appended, with a timestamp
        (default: the file of the enclosing :func:`log_to` block, unless ``say``
        is given).
    every : seconds between plain lines while a step runs (default :data:`EVERY_S`, 10).
    terminal : force the bar (True) or plain lines (False); default: whether
        ``stream`` is a terminal.
    clock : the clock in seconds (default ``time.monotonic``).
    heartbeat : run the background thread that writes a plain line at least
        every ``every`` seconds (default: for plain lines to a stream, and for
        a log).

    Use as a context manager; call :meth:`working` when a step starts (its
    description shows in the lines) and :meth:`advance` when it ends.
    """

    def __init__(
        self,
        label: str,
        total: int,
        *,
        stream: IO[str] | None = None,
        quiet: bool = False,
        say: Say | None = None,
        log: str | Path | None = None,
        every: float | None = None,
        terminal: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
        heartbeat: bool | None = None,
    ) -> None:
        self.label, self.total = label, int(total)
        self.stream = stream if stream is not None else sys.stderr
        self.every = float(EVERY_S if every is None else every)
        self.quiet, self.say, self.clock = quiet, say, clock
        self.log = Path(log) if log is not None else (current_log() if say is None else None)
        if terminal is None:
            terminal = say is None and is_terminal(self.stream)
        self.terminal = bool(terminal) and say is None and not quiet
        #: whether plain lines go to the stream (not quiet, no bar, no say)
        self.plain = not quiet and not self.terminal and say is None
        if heartbeat is None:
            heartbeat = self.plain or self.log is not None
        self.heartbeat = bool(heartbeat) and (self.plain or self.log is not None)
        self.done = self.failed = 0
        self.note = ""
        self.start = self.last = clock()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._bar: Any = None
        self._task: Any = None

    # --- the numbers -------------------------------------------------
    def elapsed(self) -> float:
        """Seconds since the start."""
        return self.clock() - self.start

    def eta(self) -> float | None:
        """Seconds left: mean seconds per finished step times the steps left.

        None before the first step has finished.
        """
        if self.done == 0:
            return None
        return self.elapsed() / self.done * max(self.total - self.done, 0)

    def line(self) -> str:
        """The plain progress line now."""
        eta = self.eta()
        parts = [f"[{self.done}/{self.total}] {self.label}"]
        if self.failed:
            parts.append(f"{self.failed} failed")
        parts.append(f"{format_duration(self.elapsed())} elapsed")
        parts.append("ETA " + ("?" if eta is None else format_duration(eta)))
        text = ", ".join(parts)
        return f"{text}: {self.note}" if self.note else text

    # --- events ------------------------------------------------------
    def working(self, note: str) -> None:
        """Say what the step now running is (shown in the lines and beside the bar)."""
        self.note = note
        if self._bar is not None:
            self._bar.update(self._task, description=f"{self.label}: {note}")

    def advance(self, n: int = 1, *, failed: bool = False, note: str | None = None) -> None:
        """Count ``n`` finished steps (``failed``: they failed) and write a line."""
        self.done += n
        if failed:
            self.failed += n
        if note is not None:
            self.note = note
        if self._bar is not None:
            self._bar.update(self._task, advance=n, failed=self.failed)
        self._emit()

    def tick(self, slack: float = 0.0) -> bool:
        """Write a plain line if ``every - slack`` seconds have passed since the last.

        The line goes to the stream (plain mode) and the log, not to ``say``.
        True if written.
        """
        if not (self.plain or self.log is not None):
            return False
        if self.clock() - self.last < self.every - slack:
            return False
        self._emit(heartbeat=True)
        return True

    def _emit(self, heartbeat: bool = False) -> None:
        with self._lock:
            self.last = self.clock()
            text = self.line()
            if self.log is not None:
                write_log(text, self.log)
            if self.quiet or self.terminal:
                return
            if self.say is not None:
                if not heartbeat:
                    self.say(text)
            else:
                print(text, file=self.stream, flush=True)

    # --- context -----------------------------------------------------
    def __enter__(self) -> Self:
        self.start = self.last = self.clock()
        if self.terminal:
            self._start_bar()
        if self.plain or (self.log is not None and self.say is None):
            self._emit()  # a stream or log shows at once that the work started
        if self.heartbeat:
            self._thread = threading.Thread(target=self._beat, daemon=True)
            self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def _beat(self) -> None:
        # polled every `wait` s and written when `every - 3 wait` s have passed, so
        # that no gap between lines exceeds `every` even when a busy machine wakes
        # the thread late (a compare run at load 5 had a 10.35 s gap with 1 s polls)
        wait = max(min(0.5, self.every / 8), 0.01)
        while not self._stop.wait(wait):
            self.tick(slack=3 * wait)

    def _start_bar(self) -> None:
        import rich.console
        import rich.progress as rp

        self._bar = rp.Progress(
            rp.TextColumn("{task.description}"),
            rp.BarColumn(),
            rp.MofNCompleteColumn(),
            rp.TextColumn("{task.fields[failed]} failed"),
            rp.TimeElapsedColumn(),
            rp.TextColumn("ETA"),
            rp.TimeRemainingColumn(),
            console=rich.console.Console(file=self.stream, force_terminal=True),
        )
        self._task = self._bar.add_task(self.label, total=self.total, failed=0)
        self._bar.start()


def progress_for(label: str, total: int, progress: bool | Say = True) -> Progress:
    """The :class:`Progress` that a library function's ``progress`` option asks for.

    ``True``: on stderr (a bar on a terminal, else plain lines at least every
    10 s); a function: one line per finished step to it; ``False``: nothing on
    the terminal (a :func:`log_to` file still gets the lines).
    """
    say = progress if callable(progress) else None
    return Progress(label, total, say=say, quiet=not progress)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


class SamplingProgress(Progress):
    """Progress of MCMC sampling as plain lines: chains, draws, tuning, divergences, ETA.

    A line at the start, at least every ``every`` seconds while the sampler
    runs (the heartbeat), and one at the end (:meth:`finish`)::

        sampling: 2 chains, compiling the model, 12 s elapsed
        sampling: 2 chains, 1400/4000 draws (tuning), 0 divergences, 35 s elapsed, ETA 1 min
        sampling: 2 chains, 4000/4000 draws, 0 divergences, done in 1 min

    The sampler's progress callback calls :meth:`report` with each chain's
    draws done (tuning included), whether it is still tuning and its
    divergences after tuning. Draws are counted over all chains (``total`` =
    chains x draws per chain), and the ETA is the draws left over the rate of
    draws since the first report (so compiling does not count). A sampler that
    reports nothing until it ends (``reports=False``, the JAX samplers) gets
    lines with the elapsed time only.

    It never draws a bar: on a terminal the sampler's own display is used and
    this object is made ``quiet`` (it then writes only to a log, if any).

    Parameters
    ----------
    chains : number of chains.
    draws_per_chain : iterations per chain, tuning included.
    reports : whether the sampler reports its draws while it runs.
    label, stream, quiet, log, every, clock, heartbeat : as for :class:`Progress`.
    """

    def __init__(
        self,
        chains: int,
        draws_per_chain: int,
        *,
        reports: bool = True,
        label: str = "sampling",
        stream: IO[str] | None = None,
        quiet: bool = False,
        log: str | Path | None = None,
        every: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        heartbeat: bool | None = None,
    ) -> None:
        super().__init__(
            label,
            int(chains) * int(draws_per_chain),
            stream=stream,
            quiet=quiet,
            log=log,
            every=every,
            terminal=False,
            clock=clock,
            heartbeat=heartbeat,
        )
        self.chains, self.reports = int(chains), bool(reports)
        self.note = "starting"
        self.finished = False
        self.stopped = ""
        self._chain: dict[int, tuple[int, bool, int]] = {}
        self._first: tuple[float, int] | None = None
        self._divergences = 0

    def report(self, chain: int, finished: int, tuning: bool, divergences: int) -> None:
        """One chain's state: draws done (tuning included), still tuning, divergences so far."""
        with self._lock:
            self._chain[int(chain)] = (int(finished), bool(tuning), int(divergences))
            self.done = sum(d for d, _, _ in self._chain.values())
            self._divergences = sum(v for _, _, v in self._chain.values())
            if self._first is None:
                self._first = (self.clock(), self.done)

    @property
    def divergences(self) -> int:
        """Divergences after tuning, over all chains, so far."""
        return self._divergences

    @property
    def tuning(self) -> bool:
        """Whether some chain that has started is still tuning (or none has reported)."""
        return any(t and d > 0 for d, t, _ in self._chain.values()) or self.done == 0

    def eta(self) -> float | None:
        """Seconds left: draws left over the rate of draws since the first report.

        None before two reports with different counts.
        """
        if self._first is None:
            return None
        t0, d0 = self._first
        seconds = self.clock() - t0
        if self.done <= d0 or seconds <= 0:
            return None
        return max(self.total - self.done, 0) * seconds / (self.done - d0)

    def line(self) -> str:
        """The plain progress line now."""
        head = f"{self.label}: {_plural(self.chains, 'chain')}"
        elapsed = format_duration(self.elapsed())
        if self.finished or self.stopped:
            end = f"done in {elapsed}" if self.finished else f"{self.stopped} after {elapsed}"
            return (
                f"{head}, {self.done}/{self.total} draws, "
                f"{_plural(self.divergences, 'divergence')}, {end}"
            )
        if not self.reports or self._first is None:
            return f"{head}, {self.note}, {elapsed} elapsed"
        eta = self.eta()
        return (
            f"{head}, {self.done}/{self.total} draws{' (tuning)' if self.tuning else ''}, "
            f"{_plural(self.divergences, 'divergence')}, {elapsed} elapsed, "
            f"ETA {'?' if eta is None else format_duration(eta)}"
        )

    def finish(self, divergences: int | None = None) -> None:
        """Write the last line: every draw done (``divergences``: the final count)."""
        self._stop.set()
        with self._lock:
            self.finished = True
            self.done = self.total
            if divergences is not None:
                self._divergences = int(divergences)
        self._emit()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        super().__exit__(exc_type, exc, tb)
        if exc_type is not None and not self.finished:
            self.stopped = f"stopped ({exc_type.__name__})"
            self._emit()
