"""A helper process compiles a model's graph from its other end (compile_ahead)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest
from numba.core import event
from test_nutpie_cache import _data, _model, cache_dir  # noqa: F401 (a fixture)

from caltars_bayes.inference import compile_ahead as ca
from caltars_bayes.inference.flat_logp import compile_flat


def test_late_first_order_respects_the_graph_and_starts_where_toposort_ends():
    x = pt.dvector("x")
    first = pt.exp(x).sum()
    second = pt.log1p(x * x).sum()
    fgraph = pytensor.function([x], [first + second], mode="FAST_COMPILE").maker.fgraph
    order = ca.late_first_order(fgraph)
    topo = fgraph.toposort()
    assert set(order) == set(topo) and len(order) == len(topo)
    seen: set = set()
    for node in order:  # every node after the nodes that make its inputs
        assert all(i.owner is None or i.owner in seen for i in node.inputs)
        seen.add(node)
    # of the nodes with no parents, the one toposort takes last comes first
    roots = [n for n in topo if all(i.owner is None for i in n.inputs)]
    assert len(roots) >= 2 and order[0] is roots[-1] and order != topo


def _wait_for(path: Path, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert time.monotonic() < deadline, f"the helper did not reach {path.name}"
        time.sleep(0.1)


def _compiles(fn, point: np.ndarray) -> int:
    """numba compilations (cache misses) while ``fn`` is first called at ``point``."""
    with event.install_recorder("numba:compile") as rec:
        fn(point)
    return sum(1 for ev in rec.buffer if ev[1].is_start)


@pytest.mark.skipif(not ca._usable(), reason="needs fork and two CPUs")
def test_the_helper_compiles_the_nodes_the_main_process_then_loads(cache_dir, tmp_path):  # noqa: F811
    point = np.zeros(6)  # beta (2), u (3), log sigma (1)
    flat = compile_flat(_model(*_data(1), prior_sd=7.125))  # a graph never compiled before
    fgraph = flat.logp_fn.maker.fgraph
    arrays = [np.asarray(v.get_value()) for v in flat.logp_fn.get_shared()]
    marker = tmp_path / "then"
    with ca.compile_ahead(fgraph, ca.logp_arg_types(arrays), marker.touch) as pid:
        assert pid is not None
        _wait_for(marker, 300)
    with pytest.raises(ChildProcessError):  # stopped and reaped
        os.waitpid(pid, os.WNOHANG)
    # compiled alone, this graph takes one numba compilation per node function
    # and more for their helpers (152 when measured, in a process that had
    # compiled nothing before); here the whole graph's function, which the
    # helper typed but emitted no code for, and a few of numba's own helpers
    # the first time a process uses them (2-4 when measured)
    assert len(fgraph.apply_nodes) >= 10
    assert _compiles(flat.logp_fn, point) <= 10
    lp, grad = flat.logp_fn(point)
    assert np.isfinite(lp) and np.isfinite(grad).all()


@pytest.mark.skipif(not ca._usable(), reason="needs fork and two CPUs")
def test_a_busy_helper_is_stopped_when_the_block_ends(tmp_path):
    x = pt.dvector("x")
    fgraph = pytensor.function([x], pt.exp(x).sum(), mode="FAST_COMPILE").maker.fgraph
    marker = tmp_path / "then"

    def then() -> None:
        marker.touch()
        time.sleep(600)

    t0 = time.monotonic()
    with ca.compile_ahead(fgraph, ca.logp_arg_types([]), then) as pid:
        _wait_for(marker, 120)
        t0 = time.monotonic()
    assert time.monotonic() - t0 < ca.STOP_GRACE_S + 3
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def test_the_helper_is_not_started_when_switched_off_or_unwanted(monkeypatch):
    x = pt.dvector("x")
    fgraph = pytensor.function([x], pt.exp(x).sum(), mode="FAST_COMPILE").maker.fgraph
    with ca.compile_ahead(fgraph, [], lambda: None, wanted=False) as pid:
        assert pid is None
    monkeypatch.setenv(ca.ENV_SWITCH, "0")
    assert not ca._usable()
    with ca.compile_ahead(fgraph, [], lambda: None) as pid:
        assert pid is None
