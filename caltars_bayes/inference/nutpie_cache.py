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
import warnings
from importlib.metadata import version
from typing import Any

import numpy as np

from caltars_bayes._core.errors import CaltarsWarning

__all__ = ["NutpiePrivateAPIWarning", "callback_source", "compile_numba_model"]

#: nutpie's unpublished names that :func:`compile_numba_model` uses
NUTPIE_PRIVATE_NAMES = (
    "_wrap_with_lock",
    "_make_functions",
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


def callback_source(kind: str, n_dim: int, n_out: int, keys: list[str], ndims: list[int]) -> str:
    """Source text of nutpie's ``logp`` or ``expand`` C callback.

    The return codes are nutpie's: 0 success, -1 wrong dimension, 1 (logp) or
    -2 (expand) an exception, 3 a non-finite gradient, 4 a non-finite density.
    """
    args = ", ".join(["x", *(f"a{i}" for i in range(len(keys)))])
    if kind == "logp":
        head = [
            "def callback(dim, x_, out_, logp_, user_data_):",
            f"    if dim != {n_dim}:",
            "        return -1",
        ]
        body = [
            "    try:",
            f"        x = numba.carray(x_, ({n_dim},))",
            f"        out = numba.carray(out_, ({n_dim},))",
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
            f"    if dim != {n_dim} or expanded != {n_out}:",
            "        return -1",
        ]
        body = [
            "    try:",
            f"        x = numba.carray(x_, ({n_dim},))",
            f"        out = numba.carray(out_, ({n_out},))",
            f"        (values,) = FN({args})",
            "        out[...] = values",
            "    except Exception:",
            "        return -2",
            "    return 0",
        ]
    else:
        raise ValueError(f"kind must be 'logp' or 'expand', not {kind!r}")
    return "\n".join([*head, *_extract_lines(keys, ndims), *body]) + "\n"


def _callback(
    kind: str,
    fn_pt: Any,
    n_dim: int,
    n_out: int,
    keys: dict[Any, str],
    shared_data: dict[str, np.ndarray],
    record: np.dtype,
) -> Any:
    """Compile one callback, cached on disk when PyTensor's function has a cache key."""
    import numba
    from nutpie.compile_pymc import address_as_void_pointer
    from pytensor.link.numba.cache import CACHED_SRC_FUNCTIONS, compile_numba_function_src

    jit_fn = fn_pt.vm.jit_fn
    names = [keys[v] for v in fn_pt.get_shared()]
    src = callback_source(kind, n_dim, n_out, names, [shared_data[k].ndim for k in names])
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


def compile_numba_model(
    model: Any,
    initial_points: dict[str, Any] | None = None,
    var_names: list[str] | None = None,
) -> Any:
    """``nutpie.compile_pymc_model(model, backend="numba")`` with cached callbacks.

    Same defaults as nutpie (support-point start with a uniform jitter of every
    free variable, all variables stored); ``initial_points`` overrides the
    start (constrained scale, by variable name); ``var_names`` limits the
    stored variables as nutpie's own argument does (the free variables are
    always stored).

    Where nutpie's or PyTensor's private names are missing (a newer version),
    warns once with :class:`NutpiePrivateAPIWarning` and returns nutpie's own
    ``compile_pymc_model(model, backend="numba")`` with the same arguments
    (same sampler, no cached callbacks).
    """
    missing = _missing_private_names()
    if missing:
        import nutpie

        warnings.warn(
            FALLBACK_MESSAGE.format(missing=", ".join(missing)),
            NutpiePrivateAPIWarning,
            stacklevel=2,
        )
        return nutpie.compile_pymc_model(
            model, backend="numba", initial_points=initial_points, var_names=var_names
        )
    from nutpie import compile_pymc as cp
    from pymc.initial_point import make_initial_point_fn

    point_fn = cp._wrap_with_lock(
        make_initial_point_fn(
            model=model,
            overrides=initial_points,
            default_strategy="support_point",
            jitter_rvs=set(model.free_RVs),
            return_transformed=True,
        )
    )
    n_dim, n_expanded, logp_pt, expand_pt, initial_point_fn, shape_info, renamed = (
        cp._make_functions(
            model,
            mode="NUMBA",
            compute_grad=True,
            join_expanded=True,
            pymc_initial_point_fn=point_fn,
            var_names=var_names,
        )
    )
    shared = list(dict.fromkeys([*logp_pt.get_shared(), *expand_pt.get_shared()]))
    keys = {v: f"s{i}" for i, v in enumerate(shared)}
    shared_data = {}
    for v in shared:
        value = np.array(v.get_value(), order="C", copy=True)
        value.flags.writeable = False
        shared_data[keys[v]] = value
    user_data = cp.make_user_data(keys, shared_data)
    logp = _callback("logp", logp_pt, n_dim, n_dim, keys, shared_data, user_data.dtype)
    expand = _callback("expand", expand_pt, n_dim, n_expanded, keys, shared_data, user_data.dtype)
    dims, coords = cp._prepare_dims_and_coords(model, shape_info, renamed)
    return cp.CompiledPyMCModel(
        _n_dim=n_dim,
        dims=dims,
        _coords=coords,
        _shapes={name: tuple(shape) for name, _, shape in zip(*shape_info, strict=True)},
        compiled_logp_func=logp,
        compiled_expand_func=expand,
        initial_point_func=initial_point_fn,
        shared_data=shared_data,
        shared_var_keys=keys,
        user_data=user_data,
        n_expanded=n_expanded,
        shape_info=shape_info,
        logp_func=logp_pt,
        expand_func=expand_pt,
        reparameterized_names=renamed,
    )
