"""nutpie's numba model of a PyMC model, with its C entry points cached on disk.

nutpie samples a numba-compiled model through two C callbacks: the log density
with its gradient, and the "expand" function that turns a point of the sampler
into the stored values. ``nutpie.compile_pymc_model`` builds both as closures
over the model's data, which numba cannot cache, so every new process compiles
them again. PyTensor's numba functions inside them are cached, but a C callback
links its callee's code into its own module and LLVM optimises and emits the
whole model again: measured on the founding design (2 cores), 15-19 s of a
24-26 s compilation, every time.

:func:`compile_numba_model` builds the same :class:`nutpie.compile_pymc.
CompiledPyMCModel`, but writes each callback as source text whose only globals
are PyTensor's (cached) function, numpy dtypes and numba helpers, and whose
data slots have fixed names (``s0``, ``s1``, ...). That text can be cached:
the cache entry is keyed by PyTensor's own cache key of the compiled graph
(which covers the graph and its constants), the text itself and the numba and
nutpie versions, and lives in PyTensor's numba cache directory. A later
process with the same model graph loads the callbacks instead of compiling
them. Where PyTensor gives its function no cache key, the callbacks are
compiled as before, without caching.

The data themselves are not part of the compiled code: they are passed at run
time through nutpie's ``user_data`` record, so ``with_data`` works as with
nutpie's own compilation.

This relies on names that nutpie and PyTensor do not publish (``nutpie.
compile_pymc._make_functions`` and its neighbours, PyTensor's numba cache
helpers). Where a later version lacks one of them, :func:`compile_numba_model`
warns once (:class:`NutpiePrivateAPIWarning`) and falls back to nutpie's public
``compile_pymc_model(model, backend="numba")``: fits then compile more slowly,
but they still run.
"""

from __future__ import annotations

import hashlib
import time
import warnings
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any

import numpy as np

from caltars_bayes._core.errors import CaltarsWarning
from caltars_bayes.inference.compile_ahead import compile_ahead, logp_arg_types
from caltars_bayes.inference.flat_logp import FlatFunctions, compile_flat, layout, traced_shape

__all__ = [
    "CompileInfo",
    "NutpiePrivateAPIWarning",
    "callback_source",
    "clear_compiled",
    "compile_numba_model",
    "model_signature",
    "same_model",
]

#: nutpie's unpublished names that :func:`compile_numba_model` uses
NUTPIE_PRIVATE_NAMES = (
    "_wrap_with_lock",
    "_make_functions",
    "_compute_shapes",
    "_rv_dict_to_flat_array_wrapper",
    "_prepare_dims_and_coords",
    "make_user_data",
    "address_as_void_pointer",
    "CompiledPyMCModel",
)
#: PyTensor's unpublished numba-cache names that the cached callbacks use
PYTENSOR_PRIVATE_NAMES = ("CACHED_SRC_FUNCTIONS", "compile_numba_function_src")

FALLBACK_MESSAGE = (
    "nutpie's private compile API changed ({missing}); using compile_pymc_model "
    "(slower first compile)"
)


#: PyTensor's ``numba__fastmath`` while it generates a model's numba code. Off,
#: so that a fit's draws depend only on its seed. With LLVM's fast-math flags
#: (reassociation, contraction into fused multiply-adds) the code that runs
#: depends on whether PyTensor's functions were compiled in this process (and
#: optimised together with their callers) or loaded from its disk cache: on a
#: small regression model (tests/inference/test_nutpie_cache.py) a process that
#: compiled the model and a process that loaded it gave gradients differing by
#: one unit in the last place at 63 of 120 points, and different draws from the
#: same seed; with fast math off, identical gradients and draws (2026-12-07;
#: also on a 12-subject CALTARS pilot). Its cost, measured on the founding
#: design (52 x 4 x 3, 2 cores, same process, interleaved): 2% per gradient at
#: the median of 8 runs and 13% at the best, because the cumulative-logit
#: kernel (:mod:`caltars_bayes.model.kernels`), which sets its own flags,
#: does most of the work.
FAST_MATH = False


class NutpiePrivateAPIWarning(CaltarsWarning):
    """nutpie's or PyTensor's private names are missing: nutpie compiles the model itself."""


def _missing_private_names() -> list[str]:
    """The private names of nutpie and PyTensor that this module needs but cannot find."""
    missing: list[str] = []
    for module, names in (
        ("nutpie.compile_pymc", NUTPIE_PRIVATE_NAMES),
        ("pytensor.link.numba.cache", PYTENSOR_PRIVATE_NAMES),
    ):
        try:
            mod = __import__(module, fromlist=["_"])
        except ImportError:
            missing.append(module)
            continue
        missing += [f"{module}.{n}" for n in names if not hasattr(mod, n)]
    return missing


_LOGP_SIG = "int64(uint64, CPointer(double), CPointer(double), CPointer(double), voidptr)"
_EXPAND_SIG = "int64(uint64, uint64, CPointer(double), CPointer(double), voidptr)"


def _extract_lines(keys: list[str], ndims: list[int]) -> list[str]:
    """Source lines that rebuild each data array from nutpie's user-data record."""
    lines = ["    rec = numba.carray(user_data_, (), RECORD)", '    shared = rec["shared"]']
    for i, (key, ndim) in enumerate(zip(keys, ndims, strict=True)):
        shape = ", ".join(f'int(shared["shape"]["{key}"][{d}])' for d in range(ndim))
        shape = f"({shape},)" if ndim == 1 else f"({shape})"
        lines += [
            f'    d{i} = numba.carray(address_as_void_pointer(shared["data"]["{key}"][()]),',
            f'                        int(shared["size"]["{key}"][()]), DTYPE{i})',
            f"    a{i} = d{i}.reshape({shape})",
        ]
    return lines


def callback_source(kind: str, keys: list[str], ndims: list[int]) -> str:
    """Source text of nutpie's ``logp`` or ``expand`` C callback.

    The text holds nothing of the design's size: the parameter and output
    lengths are the ``dim`` and ``expanded`` that nutpie passes (it checks them
    against the model it was given), and the data's shapes are read from the
    user-data record. The return codes are nutpie's: 0 success, 1 (logp) or
    -2 (expand) an exception, 3 a non-finite gradient, 4 a non-finite density.
    """
    args = ", ".join(["x", *(f"a{i}" for i in range(len(keys)))])
    if kind == "logp":
        head = [
            "def callback(dim, x_, out_, logp_, user_data_):",
        ]
        body = [
            "    try:",
            "        x = numba.carray(x_, (dim,))",
            "        out = numba.carray(out_, (dim,))",
            "        logp = numba.carray(logp_, ())",
            f"        logp_val, grad = FN({args})",
            "        logp[()] = logp_val",
            "        out[...] = grad",
            "        if not np.all(np.isfinite(out)):",
            "            return 3",
            "        if not np.isfinite(logp_val):",
            "            return 4",
            "    except Exception:",
            "        return 1",
            "    return 0",
        ]
    elif kind == "expand":
        head = [
            "def callback(dim, expanded, x_, out_, user_data_):",
        ]
        body = [
            "    try:",
            "        x = numba.carray(x_, (dim,))",
            "        out = numba.carray(out_, (expanded,))",
            f"        (values,) = FN({args})",
            "        out[...] = values",
            "    except Exception:",
            "        return -2",
            "    return 0",
        ]
    else:
        raise ValueError(f"kind must be 'logp' or 'expand', not {kind!r}")
    return "\n".join([*head, *_extract_lines(keys, ndims), *body]) + "\n"


def _callback_parts(
    kind: str,
    fn_pt: Any,
    keys: dict[Any, str],
    shared_data: dict[str, np.ndarray],
    record: np.dtype,
) -> tuple[str, dict[str, Any], str | None]:
    """A callback's source, its globals, and its cache key (None when PyTensor
    gives its function no key)."""
    import numba
    from nutpie.compile_pymc import address_as_void_pointer
    from pytensor.link.numba.cache import CACHED_SRC_FUNCTIONS

    jit_fn = fn_pt.vm.jit_fn
    names = [keys[v] for v in fn_pt.get_shared()]
    src = callback_source(kind, names, [shared_data[k].ndim for k in names])
    env: dict[str, Any] = {
        "__name__": __name__,  # numba rebuilds a cached function's environment from it
        "numba": numba,
        "np": np,
        "address_as_void_pointer": address_as_void_pointer,
        "RECORD": record,
        "FN": jit_fn,
        **{f"DTYPE{i}": shared_data[k].dtype for i, k in enumerate(names)},
    }
    graph_key = CACHED_SRC_FUNCTIONS.get(jit_fn.py_func)
    key = None
    if graph_key is not None:
        parts = [graph_key, src, str(record), version("numba"), version("nutpie"), "v2"]
        parts += [str(env[f"DTYPE{i}"]) for i in range(len(names))]
        key = hashlib.sha256("\x00".join(parts).encode()).hexdigest()
    return src, env, key


def _on_disk(key: str | None) -> bool:
    """Whether numba's disk cache holds an entry under ``key``."""
    from pytensor.link.numba.cache import NUMBA_CACHE_PATH

    return key is not None and any(NUMBA_CACHE_PATH.glob(f"*{key}*.nbi"))


def _callback(
    kind: str,
    fn_pt: Any,
    keys: dict[Any, str],
    shared_data: dict[str, np.ndarray],
    record: np.dtype,
) -> Any:
    """Compile one callback, cached on disk when PyTensor's function has a cache key."""
    import numba
    from pytensor.link.numba.cache import compile_numba_function_src

    src, env, key = _callback_parts(kind, fn_pt, keys, shared_data, record)
    py_fn = compile_numba_function_src(src, "callback", global_env=env, cache_key=key)
    sig = _LOGP_SIG if kind == "logp" else _EXPAND_SIG
    if key is None:
        return numba.cfunc(sig)(py_fn)
    try:
        return numba.cfunc(sig, cache=True)(py_fn)
    except Exception as err:  # an unreadable cache entry must not stop a fit
        warnings.warn(f"nutpie callback not cached ({err}); compiled without it", stacklevel=3)
        py_fn = compile_numba_function_src(src, "callback", global_env=env)
        return numba.cfunc(sig)(py_fn)


@dataclass(frozen=True)
class CompileInfo:
    """How a fit got its compiled model, and how long that took.

    ``source``: ``"compiled"`` (numba compiled the callbacks in this process),
    ``"disk cache"`` (they were loaded from the on-disk cache of an earlier
    process), ``"reused"`` (a model compiled earlier in this process, given
    the new data) or ``"nutpie"`` (nutpie's own compilation: the JAX backend,
    or the fallback when private names are missing). ``any_size``: the
    compiled code takes the design's sizes as data (see
    :mod:`caltars_bayes.inference.flat_logp`).
    """

    source: str
    seconds: float
    any_size: bool = False


@dataclass
class _Compiled:
    """A model's compiled functions and C callbacks, reusable for new data."""

    signature: dict[str, Any]
    logp_fn: Any
    expand_fn: Any
    logp_cb: Any
    expand_cb: Any
    keys: dict[str, str]  # shared variable name -> user-data slot
    value_names: list[str]
    stored_names: list[str]
    renamed: list[str]
    any_size: bool


#: models compiled in this process, newest first
_COMPILED: list[_Compiled] = []
#: nutpie's own compilations (the fallback), by signature, newest first
_FALLBACK: list[tuple[dict[str, Any], Any]] = []
_COMPILED_SIZE = 4


def clear_compiled() -> None:
    """Forget the models compiled in this process (the disk cache stays).

    The next fit of any model then compiles, or loads from the disk cache:
    what a new process does (benchmarks and tests of those paths use it).
    """
    _COMPILED.clear()
    _FALLBACK.clear()


def model_signature(model: Any, var_names: list[str] | None, any_size: bool) -> dict[str, Any]:
    """What a compiled model depends on besides the values of its data.

    The log density and the deterministics as graphs of the value variables,
    the data variables and the dimension lengths, with their names, the
    variables' dims and the stored variables; with ``any_size=False`` also the
    data shapes and the coords (the compiled code is then specific to them).
    """
    data = sorted(model.data_vars, key=lambda v: v.name)
    values = sorted(model.value_vars, key=lambda v: v.name)
    lengths = [model.dim_lengths[k] for k in sorted(model.dim_lengths)]
    outputs = [model.logp(), *model.replace_rvs_by_values(model.deterministics)]
    sig: dict[str, Any] = {
        "inputs": [*values, *data, *lengths],
        "outputs": outputs,
        "names": [v.name for v in (*values, *data)] + sorted(model.dim_lengths),
        "data_dtypes": [v.get_value().dtype for v in data],
        "data_ndims": [v.get_value().ndim for v in data],
        "dims": dict(model.named_vars_to_dims),
        "deterministics": [v.name for v in model.deterministics],
        "var_names": None if var_names is None else sorted(var_names),
        "any_size": any_size,
    }
    return sig if any_size else _with_sizes(sig, model)


def _with_sizes(sig: dict[str, Any], model: Any) -> dict[str, Any]:
    """A signature for code specific to the design's sizes: the data shapes and coords too."""
    data = sorted(model.data_vars, key=lambda v: v.name)
    coords = {k: tuple(v) if v is not None else None for k, v in model.coords.items()}
    return {
        **sig,
        "any_size": False,
        "data_shapes": [v.get_value().shape for v in data],
        "coords": coords,
    }


def same_model(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two signatures of :func:`model_signature` describe the same compiled model."""
    from pytensor.graph.basic import equal_computations

    if set(a) != set(b) or len(a["outputs"]) != len(b["outputs"]):
        return False
    if any(a[k] != b[k] for k in a if k not in ("inputs", "outputs")):
        return False
    return equal_computations(a["outputs"], b["outputs"], in_xs=a["inputs"], in_ys=b["inputs"])


def _compile(
    model: Any, var_names: list[str] | None, point_fn: Any
) -> tuple[_Compiled, bool, dict[str, Any]]:
    """Compile a model's functions and callbacks; also whether numba loaded both from
    disk, and the shared inputs of the compiled functions by name."""
    from nutpie import compile_pymc as cp

    flat = compile_flat(model, var_names)
    if flat is None:  # a shape not traced to the dims: nutpie's fixed-shape functions
        _, _, logp_fn, expand_fn, _, (names, _, _), renamed = cp._make_functions(
            model,
            mode="NUMBA",
            compute_grad=True,
            join_expanded=True,
            pymc_initial_point_fn=point_fn,
            var_names=var_names,
        )
        n_free = len(model.free_RVs)
        flat = FlatFunctions(logp_fn, expand_fn, names[:n_free], names[n_free:], renamed)
        any_size = False
    else:
        any_size = True
    shared = list(dict.fromkeys([*flat.logp_fn.get_shared(), *flat.expand_fn.get_shared()]))
    keys = {v: f"s{i}" for i, v in enumerate(shared)}
    shared_data = _shared_values(keys)
    record = cp.make_user_data(keys, shared_data).dtype
    key = _callback_parts("logp", flat.logp_fn, keys, shared_data, record)[2]
    arrays = [shared_data[keys[v]] for v in flat.logp_fn.get_shared()]
    with compile_ahead(
        flat.logp_fn.maker.fgraph,
        logp_arg_types(arrays),
        lambda: _callback("expand", flat.expand_fn, keys, shared_data, record),
        wanted=key is not None and not _on_disk(key),
    ):
        logp = _callback("logp", flat.logp_fn, keys, shared_data, record)
        expand = _callback("expand", flat.expand_fn, keys, shared_data, record)
    from_disk = bool(getattr(logp, "_cache_hits", 0)) and bool(getattr(expand, "_cache_hits", 0))
    compiled = _Compiled(
        model_signature(model, var_names, any_size),
        flat.logp_fn,
        flat.expand_fn,
        logp,
        expand,
        {v.name: k for v, k in keys.items()},
        flat.value_names,
        flat.stored_names,
        flat.renamed,
        any_size,
    )
    return compiled, from_disk, {v.name: v for v in shared}


def _shared_values(keys: dict[Any, str]) -> dict[str, np.ndarray]:
    """Read-only C-ordered copies of the shared variables' values, by user-data slot."""
    values = {}
    for v, key in keys.items():
        value = np.array(v.get_value(), order="C", copy=True)
        value.flags.writeable = False
        values[key] = value
    return values


def _data_inputs(model: Any) -> dict[str, Any]:
    """The model's shared inputs by name: its data variables and dimension lengths."""
    return {v.name: v for v in [*model.data_vars, *model.dim_lengths.values()]}


def _assemble(model: Any, c: _Compiled, point_fn: Any, by_name: dict[str, Any]) -> Any:
    """nutpie's model object for ``model``'s data from compiled functions and callbacks."""
    from nutpie import compile_pymc as cp

    keys = {by_name[name]: key for name, key in c.keys.items()}
    shared_data = _shared_values(keys)
    user_data = cp.make_user_data(keys, shared_data)
    shapes = _dim_shapes(model, point_fn, c.value_names, c.stored_names)
    if shapes is None:
        shapes = cp._compute_shapes(model)
    n_dim, n_expanded, shape_info = layout(shapes, c.value_names, c.stored_names)
    n_free = len(c.value_names)
    initial_point_fn = cp._rv_dict_to_flat_array_wrapper(
        point_fn, names=shape_info[0][:n_free], shapes=shape_info[2][:n_free]
    )
    dims, coords = cp._prepare_dims_and_coords(model, shape_info, c.renamed)
    return cp.CompiledPyMCModel(
        _n_dim=n_dim,
        dims=dims,
        _coords=coords,
        _shapes={name: tuple(shape) for name, _, shape in zip(*shape_info, strict=True)},
        compiled_logp_func=c.logp_cb,
        compiled_expand_func=c.expand_cb,
        initial_point_func=initial_point_fn,
        shared_data=shared_data,
        shared_var_keys=keys,
        user_data=user_data,
        n_expanded=n_expanded,
        shape_info=shape_info,
        logp_func=c.logp_fn,
        expand_func=c.expand_fn,
        reparameterized_names=c.renamed,
    )


def _dim_shapes(
    model: Any, point_fn: Any, value_names: list[str], stored_names: list[str]
) -> dict[str, tuple[int, ...]] | None:
    """The variables' shapes without compiling nutpie's shape function.

    Free (unconstrained) values: the shapes of one initial point. Stored
    variables: ``()`` for a scalar, else the lengths of their named dims, else
    their shape traced to the dimension lengths (:func:`traced_shape`). None
    where neither works (then nutpie's ``_compute_shapes`` compiles a function
    for all of them). Measured on a
    13-subject CALTARS pilot reusing a 12-subject compilation (2 cores, under
    load): nutpie's shape function was a second initial-point function and a
    third of the 11.7 s the reuse took.
    """
    point = point_fn(0)
    shapes: dict[str, tuple[int, ...]] = {n: tuple(np.shape(point[n])) for n in value_names}
    lengths = {k: int(v.get_value()) for k, v in model.dim_lengths.items()}
    for name in stored_names:
        var = model.named_vars.get(name)
        if var is None:
            return None
        dims = model.named_vars_to_dims.get(name) or ()
        if var.ndim == 0:
            shapes[name] = ()
        elif len(dims) == var.ndim and all(d in lengths for d in dims):
            shapes[name] = tuple(lengths[d] for d in dims)
        elif (traced := traced_shape(var)) is not None:
            shapes[name] = tuple(int(n) for n in traced.eval())
        else:
            return None
    return shapes


def _find(model: Any, var_names: list[str] | None) -> _Compiled | None:
    """A compilation in this process that serves ``model`` (any size, or its own size)."""
    if not _COMPILED:
        return None
    any_size = model_signature(model, var_names, True)
    sigs = {True: any_size, False: _with_sizes(any_size, model)}
    names = set(_data_inputs(model))
    for c in _COMPILED:
        if set(c.keys) <= names and same_model(sigs[c.any_size], c.signature):
            return c
    return None


def start_point_fn(model: Any, initial_points: dict[str, Any] | None = None) -> Any:
    """nutpie's start points: PyMC's support points with a uniform jitter of
    every free variable (unconstrained scale), ``initial_points`` overriding.

    Built without a C compiler: PyMC asks for Python thunks (FAST_COMPILE),
    but the Scan inside it (an ordered variable's support point) links its
    inner function with C thunks, which with empty caches took 8.2 s of C
    compilation against 0.5 s without (founding instrument, 2026-12-07; 7.5 s
    of a profiled cold compile). The function runs once per chain, and gives
    the same start points either way (20 seeds compared;
    ``tests/inference/test_nutpie_cache.py``).
    """
    from pymc.initial_point import make_initial_point_fn
    from pytensor import config

    with config.change_flags(cxx=""):
        return make_initial_point_fn(
            model=model,
            overrides=initial_points,
            default_strategy="support_point",
            jitter_rvs=set(model.free_RVs),
            return_transformed=True,
        )


def compile_numba_model(
    model: Any,
    initial_points: dict[str, Any] | None = None,
    var_names: list[str] | None = None,
) -> tuple[Any, CompileInfo]:
    """``nutpie.compile_pymc_model(model, backend="numba")``, compiled once for any data.

    Same defaults as nutpie (support-point start with a uniform jitter of every
    free variable, all variables stored); ``initial_points`` overrides the
    start (constrained scale, by variable name; it is not part of the compiled
    code); ``var_names`` limits the stored variables as nutpie's own argument
    does (the free variables are always stored).

    A model whose graph equals one compiled earlier in this process (its data
    and, for any-size code, its sizes may differ) reuses that compilation;
    otherwise the functions are compiled, their C callbacks loaded from the
    disk cache where an earlier process compiled the same graph. Returns the
    compiled model and a :class:`CompileInfo` saying which happened and how long
    it took.

    Where nutpie's or PyTensor's private names are missing (a newer version),
    warns once with :class:`NutpiePrivateAPIWarning` and returns nutpie's own
    ``compile_pymc_model(model, backend="numba")`` with the same arguments
    (same sampler, no cached callbacks).

    PyTensor's numba code is generated without fast math (:data:`FAST_MATH`),
    so the same seed gives the same draws whichever way the model was got.
    """
    from pytensor import config

    # traceback__limit=0: no stack trace for each graph node built here (the
    # signature's log density, the initial-point function): a quarter of a
    # reuse's time (same measurement as :func:`_dim_shapes`)
    with config.change_flags(numba__fastmath=FAST_MATH, traceback__limit=0):
        return _compile_numba_model(model, initial_points, var_names)


def _compile_numba_model(
    model: Any, initial_points: dict[str, Any] | None, var_names: list[str] | None
) -> tuple[Any, CompileInfo]:
    """:func:`compile_numba_model` under the chosen fast-math flag."""
    t0 = time.perf_counter()
    missing = _missing_private_names()
    if missing:
        import nutpie

        warnings.warn(
            FALLBACK_MESSAGE.format(missing=", ".join(missing)),
            NutpiePrivateAPIWarning,
            stacklevel=2,
        )
        sig = _with_sizes(model_signature(model, var_names, True), model)
        sig["initial_points"] = repr(initial_points)
        for old, done in _FALLBACK:
            if same_model(sig, old):
                known = {v.name for v in done.shared_var_keys}
                new_data = {v.name: v.get_value() for v in model.data_vars if v.name in known}
                return done.with_data(**new_data), CompileInfo("reused", time.perf_counter() - t0)
        compiled = nutpie.compile_pymc_model(
            model, backend="numba", initial_points=initial_points, var_names=var_names
        )
        _FALLBACK.insert(0, (sig, compiled))
        del _FALLBACK[_COMPILED_SIZE:]
        return compiled, CompileInfo("nutpie", time.perf_counter() - t0)
    from nutpie import compile_pymc as cp

    point_fn = cp._wrap_with_lock(start_point_fn(model, initial_points))
    found = _find(model, var_names)
    by_name = _data_inputs(model)
    if found is not None:
        source = "reused"
    else:
        found, from_disk, shared = _compile(model, var_names, point_fn)
        source = "disk cache" if from_disk else "compiled"
        by_name = {**by_name, **shared}
        if set(found.keys) <= set(_data_inputs(model)):  # else its inputs cannot be matched
            _COMPILED.insert(0, found)
            del _COMPILED[_COMPILED_SIZE:]
    out = _assemble(model, found, point_fn, by_name)
    return out, CompileInfo(source, time.perf_counter() - t0, found.any_size)
