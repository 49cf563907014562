"""Compile a model's graph from both ends at once: a helper process on the second core.

numba compiles PyTensor's log density one graph node at a time, each node a
function cached on disk by PyTensor's key for it. A compilation types the
nodes in graph order, compiling each one the disk cache lacks, and then
optimises and emits the whole model. On a cold machine the nodes are most of
the time, and they use one core.

:func:`compile_ahead` forks a helper process that types the same graph in the
opposite order: of the nodes whose inputs are ready it always takes the one the
main process will reach last (:func:`late_first_order`), so that every node it
compiles is written to the disk cache before the main process needs it, which
then loads it instead. The helper only types its copy of the graph (no code is
emitted for it); when it is through, it compiles the expand callback, which the
main process compiles last. The main process stops the helper when its own
compilation is done, whatever the helper has reached.

Nothing changes in what runs: the cached nodes are the same functions, with the
same keys and argument types, that the main process would compile itself, and
the draws are the same (``tests/inference/test_reproducible_draws.py``).
Measured on the founding design with empty caches (2 cores, 2026-12-07,
same seed and same draws each time): 86.7 s against 128.8 s without the
helper, one run after the other; with numba's compile events recorded, the
main process compiled 107 of the 222 node functions itself instead of all
222 (93.6 s against 146.2 s). In ``caltars-bayes demo`` an hour later, when
the machine ran slower: compile 102 s with the helper against 141 and 149 s
without, the demo 189 and 202 s against 220 and 248 s.

The helper runs only where it can help and cannot harm: on Linux (fork), with
at least two CPUs available to this process, when PyTensor gives the graph a
cache key, and when the log density's callback is not already on disk. The
environment variable ``CALTARS_BAYES_COMPILE_AHEAD=0`` turns it off.
"""

from __future__ import annotations

import contextlib
import heapq
import os
import signal
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

__all__ = ["ENV_SWITCH", "compile_ahead", "late_first_order"]

#: environment variable that turns the helper off when set to "0"
ENV_SWITCH = "CALTARS_BAYES_COMPILE_AHEAD"
#: seconds the main process waits for the helper to stop cleanly before killing it
STOP_GRACE_S = 2.0


class _Stop(Exception):
    """Raised in the helper by SIGTERM (an ``Exception``, so that numba's cache
    writer removes its half-written temporary file on the way out)."""


def late_first_order(fgraph: Any) -> list[Any]:
    """The nodes of ``fgraph`` in an order that respects its dependencies (and
    its in-place orderings) and, among the nodes whose inputs are ready, always
    takes the one latest in ``fgraph.toposort()``, the order the main process
    compiles in."""
    order = fgraph.toposort()
    position = {node: i for i, node in enumerate(order)}
    extra = fgraph.orderings()
    parents = {
        node: {i.owner for i in node.inputs if i.owner is not None} | set(extra.get(node, ()))
        for node in order
    }
    children: dict[Any, list[Any]] = {node: [] for node in order}
    for node, before in parents.items():
        for parent in before:
            children[parent].append(node)
    waiting = {node: len(before) for node, before in parents.items()}
    ready = [(-position[n], n) for n in order if waiting[n] == 0]  # positions differ
    heapq.heapify(ready)
    out = []
    while ready:
        _, node = heapq.heappop(ready)
        out.append(node)
        for child in children[node]:
            waiting[child] -= 1
            if waiting[child] == 0:
                heapq.heappush(ready, (-position[child], child))
    return out


def _type_in_late_first_order(fgraph: Any, arg_types: Sequence[Any]) -> None:
    """Type ``fgraph``'s numba function written in :func:`late_first_order`:
    typing compiles (and caches) each node function; the function itself is
    not lowered."""
    from numba.core import compiler, typed_passes
    from numba.core.registry import cpu_target
    from pytensor.link.numba.dispatch.basic import numba_funcify_FunctionGraph

    dispatcher, _ = numba_funcify_FunctionGraph(
        fgraph, order=late_first_order(fgraph), fgraph_name="compile_ahead_fgraph"
    )
    func_ir = compiler.run_frontend(dispatcher.py_func)
    typed_passes.type_inference_stage(
        cpu_target.typing_context, cpu_target.target_context, func_ir, tuple(arg_types), None
    )


def _helper(fgraph: Any, arg_types: Sequence[Any], then: Callable[[], Any]) -> None:
    """The forked process: quiet, stoppable by SIGTERM, never returns."""

    def stop(signum: int, frame: Any) -> None:
        raise _Stop

    try:
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process handles Ctrl-C
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        warnings.simplefilter("ignore")
        _type_in_late_first_order(fgraph, arg_types)
        then()
    except BaseException:  # the helper failing only costs its help
        pass
    finally:
        os._exit(0)


def _usable() -> bool:
    """Whether a helper process can run here and has a core of its own."""
    if os.environ.get(ENV_SWITCH, "1") == "0" or not sys.platform.startswith("linux"):
        return False
    return hasattr(os, "fork") and len(os.sched_getaffinity(0)) >= 2


def logp_arg_types(arrays: Sequence[np.ndarray]) -> list[Any]:
    """numba's types of the log-density function's arguments as the C callback
    passes them: the point (a C-contiguous float vector) and each data array,
    C-contiguous and writable, as the callback rebuilds them from pointers."""
    from numba import types
    from numba.np.numpy_support import from_dtype

    point = types.Array(types.float64, 1, "C")
    return [point, *[types.Array(from_dtype(a.dtype), a.ndim, "C") for a in arrays]]


@contextlib.contextmanager
def compile_ahead(
    fgraph: Any, arg_types: Sequence[Any], then: Callable[[], Any], *, wanted: bool = True
) -> Iterator[int | None]:
    """While the ``with`` block compiles the log density, a helper process
    types ``fgraph`` (the log density's graph) from its other end and then
    calls ``then`` (the expand callback's compilation). Yields the helper's
    process id, or None where none was started (``wanted`` False, or
    :func:`_usable` False); on leaving the block the helper is stopped
    (SIGTERM, then SIGKILL after :data:`STOP_GRACE_S`) and reaped."""
    if not (wanted and _usable()):
        yield None
        return
    with warnings.catch_warnings():
        # Python 3.12 (and JAX, once used in this process) warn when a process
        # with threads forks: a lock another thread holds stays held in the
        # child. The helper takes none of the locks those threads use (progress
        # display, logging, JAX); were it ever stuck, it would only fail to
        # help, and the main process stops it all the same
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", "os.fork", RuntimeWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the helper process
        _helper(fgraph, arg_types, then)
    try:
        yield pid
    finally:
        _stop(pid)


def _stop(pid: int) -> None:
    """Stop the helper process ``pid`` and reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    while time.monotonic() < deadline:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            return
        time.sleep(0.02)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
