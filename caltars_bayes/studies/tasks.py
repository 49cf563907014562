"""Many independent tasks (simulate, fit, summarise) on Dask: reproducible and resumable.

Planning a trial and simulation-based calibration both run hundreds of
independent fits. This module runs such a list of :class:`Task` objects

* on a Dask ``LocalCluster`` sized to the machine (default), on an existing
  Dask scheduler (``"tcp://host:8786"`` or a :class:`distributed.Client`), or
  in this process (``"serial"``, no Dask needed);
* writing each task's result to ``DIR/tasks/<task id>.csv`` atomically as soon
  as it finishes (on the worker), so a crash, a killed worker or an interrupted
  run loses at most the tasks in flight, and a rerun skips every task whose
  file exists (resumable);
* with seeds derived per task from the run's seed and the task's *id* (numpy
  ``SeedSequence`` with a spawn key hashed from the id), so the numbers do not
  depend on where, when or in which order a task ran: a distributed run and a
  serial run give identical results, and adding tasks to a grid does not
  change the seeds of the others.

A task that raises leaves ``<task id>.error.txt`` instead of a result (a rerun
tries it again); a task whose worker died is rescheduled by Dask on another
worker (its file is written once, by the attempt that finishes).

The tasks are handed out by :func:`caltars_bayes._core.parallel.parallel_map`,
the package's one map over items in this process or on Dask (K-fold refits use
it too). Dask (``dask`` and ``distributed``) is an optional extra, imported
only inside functions: ``pip install 'caltars-bayes[dask]'``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from caltars_bayes._core.errors import CaltarsError
from caltars_bayes._core.io import atomic_write_file, json_writer
from caltars_bayes._core.parallel import SERIAL, parallel_map
from caltars_bayes._core.progress import Progress
from caltars_bayes.inference.fit import fit_model

_ID = re.compile(r"^[A-Za-z0-9_.+=-]+$")

TaskFn = Callable[["Task"], pd.DataFrame]


def task_seeds(seed: int, task_id: str, n: int = 4) -> tuple[int, ...]:
    """Seeds of one task: ``n`` 32-bit words from ``SeedSequence(seed, spawn_key=(h,))``.

    ``h`` is the first 8 bytes of the SHA-256 of the task id, so the seeds
    depend only on the run's seed and the task's id.
    """
    h = int.from_bytes(hashlib.sha256(task_id.encode()).digest()[:8], "little")
    ss = np.random.SeedSequence(int(seed), spawn_key=(h,))
    return tuple(int(s) for s in ss.generate_state(n, dtype=np.uint32))


@dataclass(frozen=True)
class Task:
    """One unit of work.

    Attributes
    ----------
    id : unique, file-name-safe id (letters, digits, ``_ . + = -``).
    params : JSON-like parameters the task function reads.
    seeds : 32-bit seeds derived from the run's seed and ``id`` (:func:`task_seeds`).
    """

    id: str
    params: dict[str, Any]
    seeds: tuple[int, ...]

    @classmethod
    def make(cls, task_id: str, params: dict[str, Any], seed: int) -> Task:
        if not _ID.match(task_id):
            raise ValueError(f"task id {task_id!r} has characters unsafe in a file name")
        return cls(task_id, dict(params), task_seeds(seed, task_id))


@dataclass
class TaskRun:
    """What :func:`run_tasks` did.

    Attributes
    ----------
    done : ids whose result was written by this run.
    skipped : ids whose result existed already: done by an earlier run (resumed), or
        by an earlier attempt in this run whose worker died before reporting back.
    failed : id -> one-line error, for tasks that raised or whose workers kept dying.
    seconds : wall time of the run.
    """

    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def __str__(self) -> str:
        return (
            f"{len(self.done)} task(s) run, {len(self.skipped)} already done, "
            f"{len(self.failed)} failed, in {self.seconds:.0f} s"
        )


def result_path(out: str | Path, task_id: str) -> Path:
    """Where a task's result lives: ``OUT/tasks/<id>.csv``."""
    return Path(out) / "tasks" / f"{task_id}.csv"


def execute_task(fn: TaskFn, task: Task, path: str) -> str:
    """Run one task and write its result atomically (runs on a worker).

    Returns ``"done"``, ``"skipped"`` (the result file existed: an earlier
    attempt finished) or ``"failed: <error>"`` (``<path>.error.txt`` written).
    """
    target = Path(path)
    if target.exists():
        return "skipped"
    err = target.with_suffix(".error.txt")
    t0 = time.perf_counter()
    try:
        df = fn(task)
        if not isinstance(df, pd.DataFrame):
            raise TypeError(f"task function returned {type(df).__name__}, not a DataFrame")
    except Exception as exc:  # a failing task must not stop the others
        msg = f"{type(exc).__name__}: {exc}".splitlines()[0]
        atomic_write_file(
            err,
            lambda p: p.write_text(msg + "\n\n" + traceback.format_exc()),
            force=True,
        )
        return f"failed: {msg}"
    df = df.copy()
    df.insert(0, "task", task.id)
    df["seconds"] = time.perf_counter() - t0
    atomic_write_file(target, lambda p: df.to_csv(p, index=False), force=True)
    err.unlink(missing_ok=True)
    return "done"


def run_tasks(
    tasks: Sequence[Task],
    fn: TaskFn,
    out: str | Path,
    *,
    scheduler: Any = None,
    workers: int | None = None,
    progress: bool | Callable[[str], None] = True,
    label: str = "tasks",
) -> TaskRun:
    """Run every task whose result file is missing; write results as they finish.

    Parameters
    ----------
    tasks : the tasks (unique ids).
    fn : ``fn(task) -> DataFrame``; a module-level function (or a
        :func:`functools.partial` of one) so that Dask workers can import it.
    out : run folder; results go to ``out/tasks/<id>.csv``.
    scheduler : ``None`` or ``"local"`` (a LocalCluster of ``workers`` processes,
        default one per core, one thread each), ``"serial"`` (this process, no
        Dask), a scheduler address ``"tcp://HOST:8786"``, or a
        :class:`distributed.Client`.
    workers : LocalCluster size (default: the machine's cores, at most one per task).
    progress : show progress on stderr (done/total, failed, elapsed, ETA: a bar on
        a terminal, else a line per finished task and at least every 10 s), or
        call this function with one such line per finished task; False: nothing.
    label : what the progress lines call the run (``"plan"``, ``"sbc"``).

    Returns
    -------
    TaskRun
    """
    ids = [t.id for t in tasks]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"duplicate task ids: {', '.join(dup[:5])}")
    (Path(out) / "tasks").mkdir(parents=True, exist_ok=True)
    report = TaskRun()
    exists = {t.id: result_path(out, t.id).exists() for t in tasks}
    report.skipped = [t.id for t in tasks if exists[t.id]]
    todo = [t for t in tasks if not exists[t.id]]
    say = progress if callable(progress) else (_print_progress if progress else None)
    total, t0 = len(todo), time.perf_counter()
    if say and report.skipped:
        say(f"{len(report.skipped)} of {len(tasks)} task(s) already done: skipped")
    sink = progress if callable(progress) else None
    bar = Progress(label, total, say=sink, quiet=not say or total == 0)

    def record(task_id: str, status: str) -> None:
        if status == "done":
            report.done.append(task_id)
        elif status == "skipped":
            report.skipped.append(task_id)
        else:
            report.failed[task_id] = status.removeprefix("failed: ")
        bar.advance(failed=status.startswith("failed"), note=f"{task_id}: {status}")

    with bar:
        _dispatch(todo, fn, out, scheduler, workers, record)
    report.seconds = time.perf_counter() - t0
    return report


def _dispatch(
    todo: Sequence[Task],
    fn: TaskFn,
    out: str | Path,
    scheduler: Any,
    workers: int | None,
    record: Callable[[str, str], None],
) -> None:
    """Run ``todo`` in this process or on Dask, calling ``record(id, status)`` as each ends."""

    def done(i: int, status: Any) -> None:
        if isinstance(status, BaseException):  # e.g. KilledWorker: its worker died too often
            status = f"failed: {type(status).__name__}: {status}".splitlines()[0]
        record(todo[i].id, status)

    parallel_map(
        functools.partial(_execute_in, fn, str(out)),
        list(todo),
        scheduler=scheduler,
        workers=workers,
        names=[t.id for t in todo],
        on_done=done,
        errors="raise" if scheduler == SERIAL else "return",
    )


def _execute_in(fn: TaskFn, out: str, task: Task) -> str:
    """:func:`execute_task` writing to ``out/tasks/<id>.csv`` (what a worker runs)."""
    return execute_task(fn, task, str(result_path(out, task.id)))


def collect_results(tasks: Sequence[Task], out: str | Path) -> pd.DataFrame:
    """Concatenate the result files of ``tasks`` that exist, in task order.

    Returns
    -------
    DataFrame: the rows the task function returned, with ``task`` first and
    ``seconds`` (the task's wall time) last.
    """
    frames = []
    for t in tasks:
        p = result_path(out, t.id)
        if p.exists():
            frames.append(pd.read_csv(p))
    if not frames:
        return pd.DataFrame(columns=["task"])
    return pd.concat(frames, ignore_index=True)


def prepare_output(
    out: Path,
    stamp: str,
    record: dict[str, Any],
    output_files: Sequence[str],
    what: str,
    force: bool,
) -> None:
    """Make ``out`` ready for a run of tasks, resuming an earlier run of the same job.

    ``record`` (with a ``fingerprint``) is written to ``out/stamp``. A folder
    holding results of the same fingerprint is resumed; of another job, or with
    no stamp, it is refused unless ``force``, which deletes only the files a run
    writes (task results and ``output_files``). ``what`` names the job in errors.
    """
    path = out / stamp
    if out.exists() and not out.is_dir():
        raise CaltarsError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        old = None
        if path.is_file():
            try:
                old = json.loads(path.read_text()).get("fingerprint")
            except (json.JSONDecodeError, OSError):
                old = None
        if force:
            tasks = out / "tasks"
            if tasks.is_dir():
                for f in tasks.iterdir():
                    if f.suffix in (".csv", ".txt") or f.name.startswith("."):
                        f.unlink()
                if not any(tasks.iterdir()):
                    tasks.rmdir()
            for name in output_files:
                (out / name).unlink(missing_ok=True)
        elif old is None:
            raise CaltarsError(
                f"{out}: exists and holds no {what} results; use --force or another --out"
            )
        elif old != record["fingerprint"]:
            raise CaltarsError(
                f"{out}: holds results of a different {what}; use --force to start "
                "over (deletes them) or choose another --out"
            )
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_file(path, json_writer(record), force=True)


def _print_progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def default_backend() -> str:
    """nutpie backend for fits inside tasks: the environment's choice, else numba.

    Replications of one instrument and model plan build the same graph (of
    any size), so each worker compiles it once, or loads it from the disk
    cache, and reuses it with new data (``nutpie_cache.compile_numba_model``); numba
    then costs its compile time once per worker and samples about four times
    faster than nutpie's JAX backend on these models (measured here).
    """
    return os.environ.get("CALTARS_BAYES_NUTPIE_BACKEND") or "numba"


def fit_in_task(data: Any, config: Any, seed: int) -> Any:
    """Fit one replication inside a task: one core, no progress bar.

    ``config`` carries ``method``, ``backend``, ``draws``, ``tune`` and ``chains``
    (a plan or an SBC configuration). Returns the :class:`~caltars_bayes.inference.fit.Fit`.
    """
    nuts: dict[str, Any] = {}
    if config.method == "nuts":
        nuts["backend"] = config.backend or default_backend()
    return fit_model(
        data,
        draws=config.draws,
        tune=config.tune,
        chains=config.chains,
        random_seed=seed,
        progressbar=False,
        cores=1,
        method=config.method,
        nuts=nuts,
    )
