"""A model's deterministics: stored while sampling, or computed from the draws after.

nutpie keeps every iteration's stored values in memory until sampling ends, so
large models leave their deterministics out of it and compute them afterwards
from the kept draws (:func:`deterministics_after`, :func:`add_deterministics`).

Computing them afterwards is one evaluation of the deterministics' graph over a
block of draws at once: the graph is vectorised over a leading draw axis
(PyTensor's ``vectorize_graph``) and run by PyTensor's Python linker
(``FAST_COMPILE``: numpy, nothing to compile). PyMC's
``compute_deterministics`` instead evaluates one draw at a time through a
compiled function; with its numba backend that function is compiled anew in
every process whose numba cache lacks it. Measured on the founding design
(52 x 4 x 3, 4 chains x 1,000 draws from the prior, 2 cores, 2026-12-07):
draw by draw with numba, 8.9 s with empty caches, 4.4 s in a new process of a
warm machine and 0.3-1.1 s once compiled; vectorised, 0.6-0.8 s for the first
call of a process and 0.2-0.3 s after, the same values to 2e-15. In ``make
demo``'s fit, which computes them afterwards, the time beyond compiling and
sampling went from 47 s to 4 s with empty caches. Where numba's function is
already in this machine's cache the vectorised route can be slower: on the
real-size shapes (``benchmarks/real_size.py``, 4,000 draws) 1.9 s against
1.7 s for the survey and 1.6 s against 0.7 s for the crossed design, a
second or less against 20-30 s of work after sampling.
(``tests/inference/test_deterministics.py`` checks the values against PyMC's.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pymc as pm
import xarray as xr

__all__ = [
    "DETERMINISTICS_AFTER_BYTES",
    "add_deterministics",
    "compute_deterministics",
    "deterministics_after",
]

#: nutpie keeps every iteration's stored values in memory until sampling ends
#: (tuning included, whether or not warmup draws are kept) and then copies them
#: once more into arrays. Deterministics whose values over all iterations would
#: take more than this are therefore not stored while sampling but computed
#: afterwards from the kept draws (``nuts={"deterministics": "auto"}``).
#: Measured at 10x the founding design: ``zeta`` and ``theta`` are 45% of the
#: stored values. At 3x (248 MiB of deterministics) computing them afterwards
#: lowered the peak from 1804 to 1299 MB for 0.46 s; the founding design's
#: 89 MiB are stored (docs/model.md, "Where the memory goes").
DETERMINISTICS_AFTER_BYTES = 128 * 2**20
#: draws evaluated together are chosen so that their deterministics take about
#: this much memory; the graph's intermediate arrays are of the same order
BLOCK_BYTES = 32 * 2**20


def _deterministic_values(model: pm.Model) -> int:
    """Number of values the model's deterministics hold in one draw (from their
    dims' coords, else their static shapes, else their shapes computed once)."""
    import pytensor

    total, unknown = 0, []
    for var in model.deterministics:
        dims = model.named_vars_to_dims.get(var.name)
        if dims and all(model.coords.get(d) is not None for d in dims):
            total += int(np.prod([len(model.coords[d]) for d in dims]))
        elif all(n is not None for n in var.type.shape):
            total += int(np.prod(var.type.shape))
        else:
            unknown.append(var.shape)
    if unknown:
        total += sum(int(np.prod(shape)) for shape in pytensor.function([], unknown)())
    return total


def deterministics_after(model: pm.Model, setting: str, chains: int, iterations: int) -> bool:
    """Whether nutpie should leave the deterministics out of its stored values.

    ``setting``: ``"during"`` (store them while sampling), ``"after"`` (compute
    them from the kept draws) or ``"auto"`` (after, when storing them for every
    iteration of every chain would take more than
    :data:`DETERMINISTICS_AFTER_BYTES`).
    """
    if setting not in ("auto", "during", "after"):
        raise ValueError(
            f"nuts deterministics must be 'auto', 'during' or 'after', not {setting!r}"
        )
    if not model.deterministics or setting == "during":
        return False
    if setting == "after":
        return True
    return 8 * _deterministic_values(model) * chains * iterations > DETERMINISTICS_AFTER_BYTES


def _vectorised(model: pm.Model, names: Sequence[str]) -> Any:
    """A PyTensor function from the free variables' draws (a leading draw axis
    on each) to the named deterministics' values for those draws, run by the
    Python linker (numpy; nothing is compiled)."""
    import pytensor
    import pytensor.tensor as pt
    from pytensor.graph.replace import vectorize_graph

    batched = [
        pt.tensor(f"{rv.name}_draws", shape=(None, *rv.type.shape), dtype=rv.dtype)
        for rv in model.free_RVs
    ]
    replace = dict(zip(model.free_RVs, batched, strict=True))
    outs = vectorize_graph([model[n] for n in names], replace=replace)
    return pytensor.function(batched, outs, mode="FAST_COMPILE", on_unused_input="ignore")


def compute_deterministics(
    posterior: xr.Dataset, model: pm.Model, names: Sequence[str] | None = None
) -> xr.Dataset:
    """The named deterministics (all by default) for every draw of ``posterior``.

    ``posterior`` holds the model's free variables with dims ``chain`` and
    ``draw``. The draws are taken in blocks of about :data:`BLOCK_BYTES` of
    output; each block is one call of the vectorised graph. Dims and coords
    are the model's, as PyMC's ``compute_deterministics`` gives them.
    """
    from pymc.backends.arviz import coords_and_dims_for_inferencedata, dict_to_dataset

    names = [v.name for v in model.deterministics] if names is None else list(names)
    fn = _vectorised(model, names)
    n_chain, n_draw = posterior.sizes["chain"], posterior.sizes["draw"]
    total = n_chain * n_draw
    draws = []  # each free variable's draws, one row a draw
    for rv in model.free_RVs:
        da = posterior[rv.name].transpose("chain", "draw", ...)
        draws.append(da.values.reshape(total, *da.shape[2:]).astype(rv.dtype, copy=False))
    block = max(1, BLOCK_BYTES // (8 * max(_deterministic_values(model), 1)))
    core_ndim = [model[n].ndim for n in names]
    parts: list[list[np.ndarray]] = []
    for start in range(0, total, block):
        n_rows = min(block, total - start)
        out = fn(*[d[start : start + n_rows] for d in draws])
        # a deterministic that no free variable enters comes back without the draw axis
        parts.append(
            [
                np.broadcast_to(o, (n_rows, *np.shape(o))) if np.ndim(o) == nd else np.asarray(o)
                for o, nd in zip(out, core_ndim, strict=True)
            ]
        )
    values = {
        name: np.concatenate([p[i] for p in parts]).reshape(n_chain, n_draw, *parts[0][i].shape[1:])
        for i, name in enumerate(names)
    }
    coords, dims = coords_and_dims_for_inferencedata(model)
    stacked = {"chain": posterior["chain"].values, "draw": posterior["draw"].values}
    return dict_to_dataset(
        values,
        inference_library=pm,
        dims=dims,
        coords={**coords, **stacked},
        sample_dims=["chain", "draw"],
        skip_event_dims=True,
    )


def add_deterministics(dt: xr.DataTree, model: pm.Model) -> xr.DataTree:
    """Compute the model's deterministics that ``dt``'s posterior lacks from the
    draws of its free variables, and add them to it."""
    post = dt["posterior"].to_dataset()
    names = [v.name for v in model.deterministics if v.name not in post]
    if names:
        det = compute_deterministics(post, model, names)
        dt["posterior"] = xr.DataTree(post.assign({k: det[k] for k in names}))
    return dt
