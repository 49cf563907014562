"""Progress of long work: a ``say`` callback for lines, and :class:`Progress` for done/total loops.

:class:`Progress` shows a loop of ``total`` steps (refits, tasks, units):

* on a terminal, a ``rich`` progress bar (done/total, failed, elapsed, ETA);
* elsewhere (a log file, a pipe, a notebook), plain lines such as
  ``[3/10] compare: K-fold refit, 40 s elapsed, ETA 2 min: model a, fold 4``,
  one at each completion and one at least every ``every`` seconds while a
  step runs (a background heartbeat), so a log never falls silent;
* optionally also appended to a log file; nothing at all with ``quiet=True``.

The ETA is the mean time per finished step times the steps left. The clock is
injectable (``clock=``) so that the ETA and the heartbeat cadence can be tested.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import IO, Any

#: a function that takes one line of progress text
Say = Callable[[str], None]

#: seconds between plain progress lines while a step runs
EVERY_S = 10.0


def silent(text: str) -> None:
    """The default ``say`` of library workflows: print nothing."""


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
    quiet : show nothing (the ``--quiet`` of the command line).
    say : send plain lines to this function instead of ``stream`` (one per
        completion; no start line, no bar and no heartbeat).
    log : a file to which every plain line is also appended.
    every : seconds between plain lines while a step runs (default 10).
    terminal : force the bar (True) or plain lines (False); default: whether
        ``stream`` is a terminal.
    clock : the clock in seconds (default ``time.monotonic``).
    heartbeat : run the background thread that writes a plain line every
        ``every`` seconds (default: for plain lines to a stream or log).

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
        every: float = EVERY_S,
        terminal: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
        heartbeat: bool | None = None,
    ) -> None:
        self.label, self.total = label, int(total)
        self.stream = stream if stream is not None else sys.stderr
        self.quiet, self.say, self.every, self.clock = quiet, say, float(every), clock
        self.log = Path(log) if log is not None else None
        if terminal is None:
            terminal = say is None and bool(getattr(self.stream, "isatty", lambda: False)())
        self.terminal = bool(terminal) and say is None and not quiet
        if heartbeat is None:
            heartbeat = say is None and not self.terminal
        self.heartbeat = bool(heartbeat) and not quiet
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

    def tick(self) -> bool:
        """Write a plain line if ``every`` seconds have passed since the last; True if written."""
        if self.quiet or self.terminal or self.clock() - self.last < self.every:
            return False
        self._emit()
        return True

    def _emit(self) -> None:
        if self.quiet:
            return
        with self._lock:
            self.last = self.clock()
            text = self.line()
            if self.log is not None:
                with self.log.open("a", encoding="utf-8") as fh:
                    fh.write(text + "\n")
            if self.terminal:
                return
            if self.say is not None:
                self.say(text)
            else:
                print(text, file=self.stream, flush=True)

    # --- context -----------------------------------------------------
    def __enter__(self) -> Progress:
        self.start = self.last = self.clock()
        if self.quiet:
            return self
        if self.terminal:
            self._start_bar()
        elif self.say is None:
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
        wait = max(min(1.0, self.every / 4), 0.01)
        while not self._stop.wait(wait):
            self.tick()

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
