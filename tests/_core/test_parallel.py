"""parallel_map: results in the items' order wherever they ran, callbacks as items finish,
errors raised or returned; the scheduler choices (auto, local size, bad names)."""

from __future__ import annotations

import os
import threading
import time

import pytest

from caltars_bayes._core import parallel
from caltars_bayes._core.errors import CaltarsError
from caltars_bayes._core.parallel import (
    SERIAL,
    SchedulerError,
    auto_scheduler,
    check_scheduler,
    local_workers,
    parallel_map,
)


def _slow_square(x: int) -> int:
    """x squared, later for small x (so that on Dask the items finish out of order)."""
    time.sleep(0.05 * (4 - x))
    return x * x


def _fail_on_two(x: int) -> int:
    if x == 2:
        raise ValueError(f"bad item {x}")
    return x


def test_serial_map_in_order_with_callbacks():
    events = []
    out = parallel_map(
        _slow_square,
        [1, 2, 3],
        on_start=lambda i: events.append(("start", i)),
        on_done=lambda i, r: events.append(("done", i, r)),
    )
    assert out == [1, 4, 9]
    assert events == [
        ("start", 0), ("done", 0, 1), ("start", 1), ("done", 1, 4), ("start", 2), ("done", 2, 9)
    ]  # fmt: skip


def test_serial_errors_raise_or_return():
    with pytest.raises(ValueError, match="bad item 2"):
        parallel_map(_fail_on_two, [1, 2, 3])
    out = parallel_map(_fail_on_two, [1, 2, 3], errors="return")
    assert out[0] == 1 and out[2] == 3 and isinstance(out[1], ValueError)
    with pytest.raises(ValueError, match="errors"):
        parallel_map(_fail_on_two, [1], errors="ignore")


def test_dask_map_returns_items_order_and_calls_back_as_they_finish(thread_client):
    done = []
    main = threading.get_ident()
    threads = set()

    def on_done(i, r):
        threads.add(threading.get_ident())
        done.append(i)

    items = [0, 1, 2, 3]
    out = parallel_map(
        _slow_square, items, scheduler=thread_client, names=["a b", "c/d", "e", "f"],
        on_done=on_done,
    )  # fmt: skip
    assert out == [0, 1, 4, 9]
    assert sorted(done) == [0, 1, 2, 3]
    assert done != items  # the slow first items finished last: results were reordered
    assert threads == {main}  # callbacks run in the caller's thread
    assert parallel_map(_slow_square, [], scheduler=thread_client) == []


def test_dask_map_errors_raise_or_return(thread_client):
    with pytest.raises(ValueError, match="bad item 2"):
        parallel_map(_fail_on_two, [1, 2, 3], scheduler=thread_client)
    out = parallel_map(_fail_on_two, [1, 2, 3], scheduler=thread_client, errors="return")
    assert out[0] == 1 and out[2] == 3 and isinstance(out[1], ValueError)
    # an exception of the callback stops the map and reaches the caller
    with pytest.raises(KeyError):
        parallel_map(_slow_square, [1, 2], scheduler=thread_client, on_done=lambda i, r: {}[i])


def test_local_workers_and_auto_scheduler(monkeypatch):
    monkeypatch.setattr(parallel.os, "cpu_count", lambda: 2)
    assert local_workers(10) == 2 and local_workers(1) == 1 and local_workers(10, 4) == 4
    assert local_workers(3, 8) == 3  # never more workers than items
    # items that keep 2 cores busy each (a fit's 2 chains): 2 cores hold one at a time
    assert local_workers(10, per_item=2) == 1 and local_workers(10, 3, per_item=2) == 3
    with pytest.raises(CaltarsError, match="--workers"):
        local_workers(3, 0)
    monkeypatch.setattr(parallel, "dask_available", lambda: True)
    assert auto_scheduler(None, None, 5) is None  # 2 cores, 5 items: a LocalCluster
    assert auto_scheduler("local", None, 5) is None
    assert auto_scheduler(None, None, 1) == SERIAL  # one item
    assert auto_scheduler(None, 1, 5) == SERIAL  # one worker asked for
    assert auto_scheduler(None, None, 5, per_item=2) == SERIAL  # 2 cores, 2 per item
    assert auto_scheduler(None, 2, 5, per_item=2) is None  # unless asked for
    assert auto_scheduler("tcp://h:8786", None, 1) == "tcp://h:8786"  # asked for: kept
    assert auto_scheduler(SERIAL, 4, 5) == SERIAL
    monkeypatch.setattr(parallel.multiprocessing.current_process(), "daemon", True)
    assert auto_scheduler(None, 2, 5) == SERIAL  # a Dask worker starts no processes
    monkeypatch.undo()
    monkeypatch.setattr(parallel, "dask_available", lambda: True)
    monkeypatch.setattr(parallel.os, "cpu_count", lambda: 1)
    assert auto_scheduler(None, None, 5) == SERIAL  # one core
    monkeypatch.setattr(parallel.os, "cpu_count", lambda: 8)
    assert auto_scheduler(None, None, 5, per_item=4) is None  # 8 cores hold two 4-chain fits
    assert local_workers(5, per_item=4) == 2
    monkeypatch.setattr(parallel, "dask_available", lambda: False)
    assert auto_scheduler(None, None, 5) == SERIAL  # no Dask: here, unless workers asked for
    assert auto_scheduler(None, 2, 5) is None


def test_bad_scheduler_is_refused_before_anything_runs():
    for ok in (None, "serial", "local", "tcp://127.0.0.1:8786", object()):
        check_scheduler(ok)
    with pytest.raises(SchedulerError, match=r"'localhost:8786'.*tcp://HOST:8786"):
        check_scheduler("localhost:8786")
    with pytest.raises(SchedulerError):
        parallel_map(_slow_square, [1], scheduler="threads")


def test_blocks_on_threads_covers_every_row_once_and_raises_errors(monkeypatch):
    """Every row is in exactly one slice; with several workers the slices run
    on several threads (by default one per core, or OMP_NUM_THREADS: 1 in the
    package's Dask workers); an error in a block reaches the caller."""
    from caltars_bayes._core.parallel import WORKER_ENV, blocks_on_threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    for workers, omp in ((1, None), (2, None), (3, None), (None, None), (None, "1"), (2, "1")):
        if omp is not None:
            monkeypatch.setenv("OMP_NUM_THREADS", WORKER_ENV["OMP_NUM_THREADS"])
        seen: list[slice] = []
        threads: set[int] = set()

        def block(rows: slice, seen=seen, threads=threads) -> None:
            threads.add(threading.get_ident())
            time.sleep(0.01)  # long enough for a second thread to take the next block
            seen.append(rows)

        blocks_on_threads(block, 23, 5, workers)
        covered = sorted(i for rows in seen for i in range(rows.start, rows.stop))
        assert covered == list(range(23)) and len(seen) == 5
        assert (len(threads) > 1) == ((workers or (1 if omp else 2)) > 1)

    def broken(rows: slice) -> None:
        raise ValueError(f"block {rows.start}")

    with pytest.raises(ValueError, match="block"):
        blocks_on_threads(broken, 10, 5, 2)
