"""Run NUTS on a built model with one of several samplers.

``nutpie`` (default, numba-compiled PyTensor), ``pymc`` (PyMC's own NUTS),
``numpyro`` and ``blackjax`` (JAX; the GPU path). Each returns an
:class:`xarray.DataTree` with ``posterior`` and ``sample_stats`` groups whose
dims carry the model's coords.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import os
import sys
import threading
import time
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import pymc as pm
import xarray as xr
from threadpoolctl import threadpool_limits

from caltars_bayes._core.progress import SamplingProgress, in_notebook, is_terminal
from caltars_bayes.inference.deterministics import add_deterministics, deterministics_after
from caltars_bayes.inference.nutpie_cache import CompileInfo, compile_numba_model
from caltars_bayes.inference.record import TREE_DEPTH_OPTION

SAMPLERS = ("nutpie", "pymc", "numpyro", "blackjax")

_EXTRA = {
    "nutpie": ("nutpie", "pip install nutpie"),
    "numpyro": ("numpyro", "pip install 'caltars-bayes[jax]'"),
    "blackjax": ("blackjax", "pip install 'caltars-bayes[jax]'"),
}


def require_sampler(sampler: str) -> None:
    """Raise a clear ImportError if the sampler's package is not installed."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    if sampler in _EXTRA:
        module, how = _EXTRA[sampler]
        missing = [m for m in (module, "jax") if sampler != "nutpie" or m == module]
        for m in missing:
            if importlib.util.find_spec(m) is None:
                raise ImportError(
                    f"sampler {sampler!r} needs the package {m!r}, which is not installed: {how}"
                )


#: nutpie options we set unless the caller does (docs/model.md, "Trajectory length"):
#:
#: - ``target_integration_time``: each trajectory runs between
#:   ``floor(log2(t / step))`` and ``ceil(log2(t / step))`` tree doublings, with
#:   NUTS's U-turn check at the last one. Once the mass matrix has whitened the
#:   posterior, every direction oscillates with about the same period (2 pi in
#:   whitened units); at step sizes where a doubling spans about a whole period
#:   the U-turn check does not fire and trajectories run to 127-1023 steps where
#:   31 do (a quarter of the founding design's tuning iterations; the rare
#:   depth-9/10 draws at 10x). With t = 3.2, just over half a period, the
#:   trajectories keep the depth at which the check fires and lose the runaways.
#:   ``None`` gives plain NUTS (up to ``maxdepth``). Unless given, the step size
#:   is kept below t / 4 (``max_step_size``): at a step of t or more the
#:   trajectory would have no steps at all, every draw would be accepted, the
#:   step size would grow, and the chain would stay where it is (seen on a
#:   40-dimensional Gaussian in tuning).
#: - ``early_window_switch_freq``: in its first 30% of tuning nutpie re-estimates
#:   the mass matrix from a fresh window every this many iterations (10 by
#:   default); windows of 10 draws give noisy scales and smaller step sizes.
NUTPIE_DEFAULTS: dict[str, Any] = {"early_window_switch_freq": 100, "target_integration_time": 3.2}
#: what changes in :data:`NUTPIE_DEFAULTS` for large designs with many session
#: deviations (``plan.short_trajectory_cap``,
#: :data:`caltars_bayes.model.build.LARGE_DESIGN_SESSION_SCALES`). nutpie ends a
#: trajectory at the latest at the first doubling where 2^depth x step >= t, so
#: t = 2.7 allows 31 steps for step sizes from 0.084 to 0.169. At 10x the founding
#: design the joint form's final step sizes were 0.089-0.110, so t = 2.7 ended
#: every draw's trajectory after 31 steps, where t = 3.2 let draws run to 63
#: (the default form at t = 3.2: 63 steps per draw); at 3x too every draw took
#: 31. At the founding size the step size reaches 0.17 and t = 2.7 would cut
#: some trajectories to 15 steps, which gives too little ESS there
#: (docs/model.md, "Large designs").
LARGE_DESIGN_NUTPIE: dict[str, Any] = {"target_integration_time": 2.7}


#: the JAX samplers' counterpart of :data:`LARGE_DESIGN_NUTPIE`: at most 2^6 - 1 =
#: 63 leapfrog steps per iteration, which is where t = 2.7 ends trajectories for
#: step sizes from 0.042 to 0.084. In the joint form numpyro took 31 steps per
#: draw at twice the founding design (the cap does not bind there); its first
#: warmup window runs with a unit mass matrix, and at 100x the founding design
#: (default form) every iteration of it went to the maximum depth of 10
#: (benchmarks/gpu_results.md). The cap bounds that cost.
LARGE_DESIGN_JAX: dict[str, dict[str, Any]] = {
    s: {TREE_DEPTH_OPTION[s]: 6} for s in ("numpyro", "blackjax")
}


def nutpie_defaults(short_cap: bool = False) -> dict[str, Any]:
    """The nutpie options the package sets unless the caller does (``short_cap``:
    with :data:`LARGE_DESIGN_NUTPIE`)."""
    return {**NUTPIE_DEFAULTS, **(LARGE_DESIGN_NUTPIE if short_cap else {})}


def sampler_defaults(sampler: str, short_cap: bool = False) -> dict[str, Any]:
    """The options the package sets for ``sampler`` unless the caller does:
    :func:`nutpie_defaults` for nutpie; for numpyro and blackjax a tree-depth cap
    on large designs (:data:`LARGE_DESIGN_JAX`); none for PyMC's NUTS."""
    if sampler == "nutpie":
        return nutpie_defaults(short_cap)
    return dict(LARGE_DESIGN_JAX.get(sampler, {})) if short_cap else {}


#: nutpie's maximum tree depth unless the caller sets ``maxdepth``
NUTPIE_MAXDEPTH = 10

#: warmup (tuning) iterations per chain unless the caller sets ``tune``
DEFAULT_TUNE = 1000
#: ratings from which a data set is tuned for :data:`LARGE_DATA_TUNE` iterations
LARGE_DATA_RATINGS = 50_000
#: warmup iterations per chain for data sets of at least :data:`LARGE_DATA_RATINGS`
#: ratings (docs/model.md, "Warmup length"). Tuning finds one step size and
#: one scale per parameter, and each tuning iteration costs as much as a kept
#: draw or more (the survey shape: 56 leapfrog steps per tuning iteration, 45
#: per draw). On the large designs measured, 500 iterations reached the step
#: size and steps per draw of 1,000 (crossed: 31 steps per draw both; survey:
#: step 0.101 and 45.1 steps against 45.7). Measured at 500 against 1,000 (seed
#: 1, 4 x 1,000 kept draws, 2 cores, one run after the other): the sparse
#: crossed shape (73,410 ratings) sampled for 135.6 s against 188.6 s, both
#: converged (bulk ESS 871 / 919, tail 1,033 / 1,705). The survey shape
#: (70,000) converged at 500 in 208.1 s (bulk 759, tail 1,305; 128,223 tuning
#: steps against 225,519 at 1,000 in an earlier run); CALTARS at 3x and 10x in
#: docs/model.md. Smaller designs keep 1,000: the pilots' and SBC's results
#: were measured with it, and their fits take a minute or less.
LARGE_DATA_TUNE = 500


def default_tune(n_ratings: int) -> int:
    """Warmup iterations per chain for ``n_ratings`` ratings when the caller
    gives none: :data:`LARGE_DATA_TUNE` from :data:`LARGE_DATA_RATINGS`
    ratings, else :data:`DEFAULT_TUNE`."""
    return LARGE_DATA_TUNE if n_ratings >= LARGE_DATA_RATINGS else DEFAULT_TUNE


class _StepCounter:
    """nutpie progress callback: each chain's last report (draws done, leapfrog steps).

    nutpie calls it every ``progress_rate`` ms (100) with one report per chain
    (``finished_draws`` tuning included, ``tuning``, ``divergences`` after
    tuning, ``total_num_steps``...), whether or not its own bar is shown. Each
    report is also passed on to ``bar`` (the plain progress lines).
    """

    def __init__(self, bar: SamplingProgress | None = None) -> None:
        self._lock = threading.Lock()
        self._last: dict[int, tuple[int, int]] = {}
        self._bar = bar

    def __call__(self, progress: list[Any]) -> None:
        with self._lock:
            for i, p in enumerate(progress):
                self._last[i] = (int(p.finished_draws), int(p.total_num_steps))
        if self._bar is not None:
            for i, p in enumerate(progress):
                self._bar.report(i, p.finished_draws, p.tuning, p.divergences)

    def reached(self, chains: int, iterations: int) -> bool:
        """Whether every chain has reported at least ``iterations`` finished."""
        with self._lock:
            return len(self._last) == chains and all(
                d >= iterations for d, _ in self._last.values()
            )

    def snapshot(self) -> dict[int, tuple[int, int]]:
        """Each chain's last report: (iterations finished, leapfrog steps so far)."""
        with self._lock:
            return dict(self._last)

    @staticmethod
    def tune_steps(
        snapshot: dict[int, tuple[int, int]], dt: xr.DataTree, tune: int
    ) -> float | None:
        """Leapfrog steps of the tuning iterations: each chain's steps at a report
        made after its tuning, less the steps of its draws up to that report
        (``dt`` must hold those draws)."""
        if "n_steps" not in dt["sample_stats"] or not snapshot:
            return None
        n_steps = np.asarray(dt["sample_stats"]["n_steps"].transpose("chain", "draw").values)
        total = 0.0
        for chain, (done, steps) in snapshot.items():
            kept = done - tune
            if kept < 0 or kept > n_steps.shape[1]:
                return None
            total += steps - float(np.nansum(n_steps[chain, :kept]))
        return total

    def total(self, chains: int, iterations: int) -> float | None:
        """All chains' leapfrog steps, or None unless every chain's last report
        came after its last iteration (the count would be short)."""
        with self._lock:
            last = dict(self._last)
        if len(last) != chains or any(d < iterations for d, _ in last.values()):
            return None
        return float(sum(n for _, n in last.values()))


class _PyMCDraws:
    """PyMC's per-draw ``callback``, passed on to the sampling progress.

    ``draw`` has ``chain``, ``draw_idx`` (0-based, tuning included), ``tuning``
    and ``stats`` (one dict per step method, NUTS's with ``diverging``);
    divergences are counted after tuning, as nutpie counts them.
    """

    def __init__(self, bar: SamplingProgress) -> None:
        self._bar = bar
        self._divergences: dict[int, int] = {}

    def __call__(self, trace: Any, draw: Any) -> None:
        stats = draw.stats if isinstance(draw.stats, list | tuple) else [draw.stats]
        n = self._divergences.get(draw.chain, 0)
        if not draw.tuning and any(bool(st.get("diverging", False)) for st in stats):
            n += 1
        self._divergences[draw.chain] = n
        self._bar.report(draw.chain, draw.draw_idx + 1, draw.tuning, n)


def _displays(progressbar: bool) -> tuple[bool, bool]:
    """(the sampler shows its own progress display, plain progress lines are written).

    The samplers' own displays show each chain's draws, divergences, elapsed
    time and time left on a terminal (nutpie's bar, PyMC's rich table) and in
    a notebook (their HTML); elsewhere (a log file, a pipe) they show nothing
    until the end, so :class:`~caltars_bayes._core.progress.SamplingProgress`
    writes plain lines to stderr instead.
    """
    if not progressbar:
        return False, False
    own = is_terminal(sys.stderr) or in_notebook()
    return own, not own


def _divergences(dt: Any) -> int | None:
    """Divergent draws after tuning in ``dt``'s sample stats (None without them)."""
    try:
        return int(dt["sample_stats"]["diverging"].sum())
    except (KeyError, TypeError):
        return None


def _model_order(model: pm.Model) -> list[str]:
    """The posterior's variable order: free variables without a transform, then
    the model's other unobserved variables (transformed free variables on their
    own scale, and deterministics) in the model's order."""
    plain = [v.name for v in model.free_RVs if model.rvs_to_transforms.get(v) is None]
    rest = [v.name for v in model.unobserved_value_vars if v.name not in plain]
    return [*plain, *rest]


def _in_model_order(dt: xr.DataTree, model: pm.Model) -> xr.DataTree:
    """``dt`` with its posterior's variables in :func:`_model_order` (nutpie's own
    order depends on which variables it stored)."""
    post = dt["posterior"].to_dataset()
    order: list[Hashable] = [n for n in _model_order(model) if n in post.data_vars]
    order += [n for n in post.data_vars if n not in order]
    if order != list(post.data_vars):
        dt["posterior"] = xr.DataTree(post[order])
    return dt


def _count_depth_hits_against(dt: xr.DataTree, maxdepth: int) -> xr.DataTree:
    """Make ``maxdepth_reached`` mean the configured maximum depth.

    With ``target_integration_time`` nutpie flags every draw whose tree reached
    the depth that the integration time allows, which is the setting working,
    not a failure; that flag is kept as ``integration_time_reached`` and
    ``maxdepth_reached`` becomes ``depth >= maxdepth``, what the convergence
    checks count.
    """
    for group in ("sample_stats", "warmup_sample_stats"):
        if group not in dt.children or "depth" not in dt[group]:
            continue
        ds = dt[group].to_dataset()
        if "maxdepth_reached" in ds:
            ds = ds.rename_vars({"maxdepth_reached": "integration_time_reached"})
        dt[group] = xr.DataTree(ds.assign(maxdepth_reached=ds["depth"] >= maxdepth))
    return dt


def compile_nutpie(
    model: pm.Model,
    backend: str,
    initial_points: dict[str, Any] | None = None,
    gradient_backend: str | None = None,
    var_names: list[str] | None = None,
) -> tuple[Any, CompileInfo]:
    """nutpie's compiled model for ``model``, and how it was obtained.

    Numba models come from :func:`caltars_bayes.inference.nutpie_cache.
    compile_numba_model`: compiled once per model graph for data of any size,
    reused within a process (planning and SBC replications, K-fold refits,
    refits of new trials) and loaded from the disk cache in a new one. JAX
    models are compiled by nutpie every time (nutpie 0.16's JAX models accept
    ``with_data`` but keep sampling the data they were compiled with).
    ``var_names``: the variables nutpie stores (None: all; the free variables
    are always stored).
    """
    import nutpie

    if backend != "numba":
        t0 = time.perf_counter()
        extra: dict[str, Any] = {"initial_points": initial_points, "var_names": var_names}
        if gradient_backend is not None:
            extra["gradient_backend"] = gradient_backend
        compiled = nutpie.compile_pymc_model(model, backend=backend, **extra)
        return compiled, CompileInfo("nutpie", time.perf_counter() - t0)
    if gradient_backend not in (None, "pytensor"):
        raise ValueError(f"gradient_backend {gradient_backend!r} needs nutpie's JAX backend")
    return compile_numba_model(model, initial_points, var_names)


def one_blas_thread(chains: int) -> Any:
    """One BLAS thread per process while several chains sample side by side.

    The log density's matrix products (the covariate blocks, factor scores
    times loadings) call OpenBLAS, which by default starts a thread per core
    for arrays above a size threshold. With chains already running on every
    core those threads fight the chains for the cores: measured with the
    3x-founding design on 2 cores, one gradient took 7.4 ms with two processes
    side by side against 1.0 ms alone, and 1.0 ms side by side with one BLAS
    thread. At the founding size the products stay below the threshold.
    """
    if chains > 1:
        return threadpool_limits(limits=1, user_api="blas")
    return nullcontext()


# glibc's mallopt parameters, the values set while sampling, and those set after.
# Setting any of them stops glibc adapting its thresholds for the rest of the
# process, so its documented defaults (128 KB each) cannot simply be put back:
# with the mmap threshold fixed at 128 KB every array above it would be mapped
# and faulted in afresh (measured: 1040 faults per 30 arrays of 160 KB, 0 with
# glibc's adapting default). After sampling the values are those the adapting
# thresholds reach for large arrays (mmap threshold 32 MB, trim threshold twice
# that) with the default top pad.
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_HEAP_WHILE_SAMPLING = {
    _M_TOP_PAD: 64 << 20,
    _M_TRIM_THRESHOLD: 256 << 20,
    _M_MMAP_THRESHOLD: 32 << 20,
}
_HEAP_AFTER = {_M_TOP_PAD: 128 << 10, _M_TRIM_THRESHOLD: 64 << 20, _M_MMAP_THRESHOLD: 32 << 20}


def _glibc() -> Any:
    """The C library when it is glibc (the only one whose ``mallopt`` is used), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018  (absent from musl and others)
    except (OSError, AttributeError):
        return None
    return libc


@contextmanager
def keep_heap_memory() -> Iterator[bool]:
    """Stop glibc handing memory back to the system between gradients.

    Every gradient allocates and frees its temporary arrays (one value per
    rating each). In sampler threads glibc serves them from per-thread heaps of
    at most 64 MB; when a gradient's temporaries need more than one heap, the
    extra heaps are unmapped as soon as they are free and mapped again by the
    next gradient, and every page is then faulted in and zeroed by the kernel.
    Measured at 10x the founding design (187,200 ratings, one core, numba):
    2,560 page faults and 8.2 ms per gradient, half of it system time, against
    3.5 ms and no faults with these settings; the founding design does not
    fault either way. While sampling, freed memory is kept for reuse (top pad
    64 MB, trim threshold 256 MB, arrays up to 32 MB from the heap); afterwards
    the thresholds are left where glibc's own adaptation takes them for large
    arrays (see ``_HEAP_AFTER``). Yields whether the settings were applied
    (glibc only; a no-op elsewhere).
    """
    libc = _glibc()
    if libc is None:
        yield False
        return
    applied = all(libc.mallopt(p, v) == 1 for p, v in _HEAP_WHILE_SAMPLING.items())
    try:
        yield applied
    finally:
        for p, v in _HEAP_AFTER.items():
            libc.mallopt(p, v)


def _one_blas_thread_per_chain(f: Any) -> Any:
    """Run ``f`` (keyword ``chains``) under :func:`one_blas_thread`."""

    @functools.wraps(f)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        with one_blas_thread(kwargs["chains"]):
            return f(*args, **kwargs)

    return wrapped


@dataclass(frozen=True)
class _Run:
    """The settings every sampler runs with (see :func:`run_nuts`)."""

    draws: int
    tune: int
    chains: int
    random_seed: int
    target_accept: float
    progressbar: bool  # the sampler's own display (see _displays)
    initvals: dict[str, Any] | None
    #: draws per chain a fit may extend to, and what decides (nutpie only)
    max_draws: int = 0
    extend: Callable[[xr.DataTree], int | None] | None = None


@_one_blas_thread_per_chain
def run_nuts(
    model: pm.Model,
    *,
    draws: int,
    tune: int,
    chains: int,
    sampler: str,
    random_seed: int,
    target_accept: float,
    nuts: dict[str, Any] | None = None,
    progressbar: bool = True,
    cores: int | None = None,
    initvals: dict[str, Any] | None = None,
    short_cap: bool = False,
    max_draws: int | None = None,
    extend: Callable[[xr.DataTree], int | None] | None = None,
) -> tuple[xr.DataTree, dict[str, float]]:
    """Sample ``model`` and return the DataTree and timings (seconds).

    ``extend`` (nutpie only): called with the first ``n`` draws of every chain
    (``n = draws`` first), it returns how many draws per chain to look at next,
    or None to stop there; sampling goes on to at most ``max_draws`` per chain
    (see :func:`_sample_extending`). The DataTree returned holds the draws at
    the checkpoint where it stopped. Other samplers ignore both.

    ``nuts`` holds extra sampler options (e.g. ``{"max_treedepth": 12}``;
    for nutpie also ``{"backend": "jax"}`` and ``{"gradient_backend": "jax"}``
    (JAX's own gradient instead of PyTensor's); the environment variable
    ``CALTARS_BAYES_NUTPIE_BACKEND`` sets nutpie's default backend, ``numba``).
    Each sampler runs with :func:`sampler_defaults` (``short_cap``: large
    designs) where ``nuts`` does not say otherwise. nutpie stores no warmup
    draws unless ``{"save_warmup": True}``; with
    ``{"deterministics": "after"}`` it stores only the free variables and the
    deterministics are computed from the kept draws afterwards (``"during"``:
    stored while sampling; ``"auto"``, the default: after, for large models;
    see :data:`~caltars_bayes.inference.deterministics.DETERMINISTICS_AFTER_BYTES`).
    Other samplers ignore it.
    ``initvals``: starting values (constrained scale) by variable name.

    ``progressbar``: on a terminal or in a notebook the sampler's own display
    (each chain's draws, divergences, elapsed, time left); elsewhere (a log
    file, a pipe) plain lines on stderr at least every 10 s and at the end,
    e.g. ``sampling: 2 chains, 1400/4000 draws (tuning), 0 divergences, 35 s
    elapsed, ETA 1 min`` (:class:`~caltars_bayes._core.progress.SamplingProgress`).
    Inside :func:`caltars_bayes._core.progress.log_to` the plain lines also go
    to its log file, with ``progressbar=False`` too.
    """
    require_sampler(sampler)
    nuts = dict(nuts or {})
    store = nuts.pop("deterministics", "auto")
    cores = cores or min(chains, os.cpu_count() or 1)
    own, plain = _displays(progressbar)
    run = _Run(
        draws, tune, chains, random_seed, target_accept, own, initvals,
        max(max_draws or draws, draws), extend,
    )  # fmt: skip
    reports = sampler in ("nutpie", "pymc")
    total = tune + (run.max_draws if extend is not None else draws)
    with SamplingProgress(chains, total, reports=reports, quiet=not plain) as bar:
        if sampler == "nutpie":
            dt, timings = _run_nutpie(model, nuts, store, cores, short_cap, run=run, bar=bar)
        elif sampler == "pymc":
            dt, timings = _run_pymc(model, nuts, cores, run=run, bar=bar)
        else:
            bar.working(f"compiling and sampling ({sampler} reports no draws until it ends)")
            dt, timings = _run_jax(model, sampler, nuts, short_cap, run=run)
        if not isinstance(dt, xr.DataTree):  # InferenceData-like from older paths
            dt = xr.DataTree.from_dict({g: dt[g].to_dataset() for g in dt.groups if g != "/"})
        bar.finish(_divergences(dt))
    return dt, timings


def _run_nutpie(
    model: pm.Model,
    nuts: dict[str, Any],
    store: str,
    cores: int,
    short_cap: bool,
    run: _Run,
    bar: SamplingProgress | None = None,
) -> tuple[xr.DataTree, dict[str, float]]:
    """nutpie (numba or JAX backend) with the package's defaults; see :func:`run_nuts`."""
    import nutpie

    backend = nuts.pop("backend", os.environ.get("CALTARS_BAYES_NUTPIE_BACKEND", "numba"))
    if "max_treedepth" in nuts:
        nuts["maxdepth"] = nuts.pop("max_treedepth")
    gradient_backend = nuts.pop("gradient_backend", None)
    extending = run.extend is not None and run.max_draws > run.draws
    after = deterministics_after(model, store, run.chains, run.tune + run.max_draws)
    stored = [v.name for v in model.free_RVs] if after else None
    nuts = {**sampler_defaults("nutpie", short_cap), **nuts}
    if nuts.get("target_integration_time") is not None:
        nuts.setdefault("max_step_size", nuts["target_integration_time"] / 4)
    # a fit keeps no warmup draws, so nutpie need not store them (at 10x the
    # founding design they are about 0.85 GB); the tuning steps are counted
    # from its progress reports instead
    nuts.setdefault("save_warmup", False)
    steps = _StepCounter(bar if bar is not None and bar.heartbeat else None)
    if bar is not None:
        bar.working(f"compiling the model (nutpie, {backend})")
    t0 = time.perf_counter()
    compiled, info = compile_nutpie(model, backend, run.initvals, gradient_backend, stored)
    t1 = time.perf_counter()
    maxdepth = int(nuts.get("maxdepth", NUTPIE_MAXDEPTH))
    capped = nuts.get("target_integration_time") is not None
    settings = dict(
        tune=run.tune,
        chains=run.chains,
        seed=int(run.random_seed),
        target_accept=run.target_accept,
        progress_bar=run.progressbar,
        progress_callback=steps,
        **nuts,
    )
    timings = {"compile_s": t1 - t0}

    def finish(dt: xr.DataTree) -> xr.DataTree:
        """Depth hits against the maximum depth, the deterministics, the model's order."""
        if capped:
            dt = _count_depth_hits_against(dt, maxdepth)
        if after:
            t3 = time.perf_counter()
            dt = add_deterministics(dt, model)
            spent = time.perf_counter() - t3
            timings["deterministics_s"] = timings.get("deterministics_s", 0.0) + spent
        return _in_model_order(dt, model)

    if bar is not None:
        bar.working("starting the chains")
    with keep_heap_memory():
        if extending:
            dt, tune_steps = _sample_extending(
                nutpie, compiled, settings, run, steps, finish, timings
            )
        else:
            dt = finish(nutpie.sample(compiled, draws=run.draws, cores=cores, **settings))
            tune_steps = _tune_steps(dt, steps, run)
    # the deterministics and the checkpoints' verdicts are timed apart
    spent_apart = timings.get("deterministics_s", 0.0) + timings.get("checks_s", 0.0)
    timings["sampling_s"] = time.perf_counter() - t1 - spent_apart
    dt.attrs["compile_source"] = info.source  # read into FitRecord.compile_source
    # tuning trajectories are longer than sampling ones (the mass matrix is
    # still being learned): recorded so that cost per step can be worked out
    if tune_steps is not None:
        timings["tune_steps"] = tune_steps
    return dt, timings


def _tune_steps(dt: xr.DataTree, steps: _StepCounter, run: _Run) -> float | None:
    """Leapfrog steps of the tuning iterations of a finished nutpie run."""
    if "warmup_sample_stats" in dt.children and "n_steps" in dt["warmup_sample_stats"]:
        return float(dt["warmup_sample_stats"]["n_steps"].sum())
    if "n_steps" in dt["sample_stats"]:
        total = steps.total(run.chains, run.tune + run.draws)
        if total is not None:
            return total - float(dt["sample_stats"]["n_steps"].sum())
    return None


#: seconds between looks at the chains' progress while waiting for a checkpoint
_POLL_S = 0.05


def pause_for_checks(chains: int) -> bool:
    """Whether an extending nutpie run pauses its chains while a checkpoint's
    draws are checked: when they already occupy every core (one thread a chain).

    The chains run on towards the cap in the background; on a machine with a
    core to spare the check costs them nothing, but where every core runs a
    chain the check and the chains slow each other down, and the draws made
    meanwhile are dropped when the check says stop. Measured on the survey
    shape (benchmarks/real_size.py, 2 cores, 4 chains), not paused: the
    deterministics of the first checkpoint took 7.6 s against 2.3 s alone.
    """
    return (os.cpu_count() or 1) <= chains


def _sample_extending(
    nutpie: Any,
    compiled: Any,
    settings: dict[str, Any],
    run: _Run,
    steps: _StepCounter,
    finish: Callable[[xr.DataTree], xr.DataTree],
    timings: dict[str, float],
) -> tuple[xr.DataTree, float | None]:
    """Sample up to ``run.max_draws`` draws per chain, stopping at the first
    checkpoint where ``run.extend`` says the draws so far are enough.

    The chains run in the background towards ``max_draws``; at ``run.draws``
    draws per chain, and then at each number of draws ``run.extend`` asks for,
    the first that many draws of every chain are taken (draws beyond them are
    dropped) and handed to ``run.extend``, which returns the next checkpoint or
    None to stop. nutpie's tuning does not depend on the number of draws and
    each chain has its own random stream, so the first ``n`` draws of a chain
    are those a run of ``n`` draws gives with the same seed: where the fit
    stops is decided by those draws alone, and the same seed gives the same
    result. Every chain runs on its own thread (nutpie otherwise starts chains
    beyond ``cores`` only when others have finished). While a checkpoint is
    checked the chains are paused where they occupy every core
    (:func:`pause_for_checks`); the seconds the checks take are added to
    ``timings["checks_s"]``.
    """
    assert run.extend is not None
    sampler = nutpie.sample(
        compiled, draws=run.max_draws, cores=run.chains, blocking=False, **settings
    )
    pause = pause_for_checks(run.chains)
    n = run.draws
    done = None  # every draw, once the sampler has finished (its results are taken once)
    try:
        while True:
            raw = done
            while raw is None:
                while not steps.reached(run.chains, run.tune + n) and not _finished(sampler):
                    time.sleep(_POLL_S)
                snapshot = steps.snapshot()
                if _finished(sampler):
                    raw = done = sampler.wait()
                else:
                    raw = sampler.inspect()
                    if _kept_draws(raw) < n:  # a chain's stored trace lags its report
                        raw = None
                        time.sleep(_POLL_S)
            paused = pause and done is None
            if paused:
                sampler.pause()
            dt = finish(_first_draws(raw, n))
            t0 = time.perf_counter()
            nxt = run.extend(dt)
            timings["checks_s"] = timings.get("checks_s", 0.0) + time.perf_counter() - t0
            if nxt is None or n >= run.max_draws:
                return dt, steps.tune_steps(snapshot, raw, run.tune)
            if paused:
                sampler.resume()
            n = min(max(int(nxt), n + 1), run.max_draws)
    finally:
        if not _finished(sampler):
            sampler.cancel()


def _finished(sampler: Any) -> bool:
    """Whether a background nutpie sampler has finished (nutpie 0.16's
    ``is_finished`` raises TimeoutError while it is still running)."""
    try:
        return bool(sampler.is_finished)
    except TimeoutError:
        return False


def _kept_draws(dt: xr.DataTree) -> int:
    """Draws stored for the chain with fewest: nutpie pads the others' arrays
    with NaN (its sample stat ``energy`` is never NaN for a stored draw)."""
    energy = dt["sample_stats"]["energy"].transpose("chain", "draw").values
    return int(np.isfinite(energy).sum(axis=1).min())


def _first_draws(dt: xr.DataTree, n: int) -> xr.DataTree:
    """The first ``n`` draws of every chain in the posterior and sample stats."""
    if _kept_draws(dt) < n:
        raise RuntimeError(f"nutpie returned {_kept_draws(dt)} draws in a chain, expected {n}")
    out = {}
    for name in dt.children:
        ds = dt[name].to_dataset()
        if "draw" in ds.dims and not name.startswith("warmup"):
            ds = ds.isel(draw=slice(0, n))
        out[name] = ds
    tree = xr.DataTree.from_dict(out)
    tree.attrs = dict(dt.attrs)
    return tree


def _run_pymc(
    model: pm.Model,
    nuts: dict[str, Any],
    cores: int,
    run: _Run,
    bar: SamplingProgress | None = None,
) -> tuple[xr.DataTree, dict[str, float]]:
    """PyMC's own NUTS; see :func:`run_nuts`."""
    if bar is not None and bar.heartbeat:
        bar.working("compiling and initialising the chains")
        nuts = {"callback": _PyMCDraws(bar), **nuts}
    t0 = time.perf_counter()
    with model:
        dt = pm.sample(
            draws=run.draws,
            tune=run.tune,
            chains=run.chains,
            cores=cores,
            random_seed=run.random_seed,
            nuts_sampler="pymc",
            target_accept=run.target_accept,
            progressbar=run.progressbar,
            compute_convergence_checks=False,
            initvals=run.initvals,
            **nuts,
        )
    total = time.perf_counter() - t0
    st = float(dt["posterior"].attrs.get("sampling_time", total))
    timings = {"compile_s": total - st, "sampling_s": st}
    return dt, timings


def _run_jax(
    model: pm.Model,
    sampler: str,
    nuts: dict[str, Any],
    short_cap: bool,
    run: _Run,
) -> tuple[xr.DataTree, dict[str, float]]:
    """numpyro or blackjax through PyMC's JAX sampling; see :func:`run_nuts`."""
    import jax
    import pymc.sampling.jax  # noqa: F401  (sets XLA's host device count before JAX starts)

    # One device per chain runs chains in parallel (pmap). If JAX was started
    # before PyMC could ask for more host devices (e.g. by nutpie's JAX
    # backend earlier in the same process), vectorise the chains instead:
    # pmap over too few devices fails.
    parallel = jax.local_device_count() >= run.chains
    nuts.setdefault("chain_method", "parallel" if parallel else "vectorized")
    nuts = {**sampler_defaults(sampler, short_cap), **nuts}
    t0 = time.perf_counter()
    with model:
        dt = pm.sample(
            draws=run.draws,
            tune=run.tune,
            chains=run.chains,
            random_seed=run.random_seed,
            nuts_sampler=sampler,
            progressbar=run.progressbar,
            compute_convergence_checks=False,
            initvals=run.initvals,
            nuts={"target_accept": run.target_accept, **nuts},
        )
    timings = {"compile_s": float("nan"), "sampling_s": time.perf_counter() - t0}
    return dt, timings
