"""The model's log density, its gradient and the stored values as functions of one
flat parameter vector, for data of any size.

NUTS works on one vector ``x`` of all unconstrained parameters. nutpie builds
the log density ``log p(x)`` and the "expand" function (``x`` -> every stored
value: parameters on their own scale and deterministics) by cutting ``x`` into
the model's value variables at fixed offsets, ``x[0:5]`` -> ``sd_alliance``,
``x[5:15]`` -> ``factor_corr``, ``x[15:75].reshape(12, 5)`` -> ``theta_z``, ...
Those offsets and shapes are numbers of one design, so the compiled code is
specific to it: a trial with 13 subjects instead of 12 compiled anew (measured
on the founding instrument, 2 cores: 58 s, of which 49 s LLVM for nutpie's C
callbacks; a cold machine 147 s).

:func:`compile_flat` cuts ``x`` with *symbolic* offsets and shapes instead:
each value variable's shape is the shape PyTensor infers for it from the
model's dimension lengths (``subject``, ``session``, ``judge``, ... are shared
scalars in PyMC 6, like the data), so the offsets are sums of products of
dimension lengths. The compiled functions then take the dimension lengths and
the data as run-time inputs and contain nothing of the design's size: one
compilation, cached on disk, serves every trial of the same instrument and
model plan. Where a shape cannot be written that way (a value variable whose
shape PyTensor cannot trace to the dimension lengths), :func:`compile_flat`
returns None and the caller uses nutpie's fixed-shape functions.

Measured on a 12-subject CALTARS pilot (2 cores, same run): density and
gradient equal nutpie's fixed-shape functions to 1e-14; a gradient costs
95-103 microseconds against 80-86 (the slices are computed at run time), a
fixed cost per gradient that larger designs hide.

:func:`layout` gives one design's sizes and the slices nutpie unravels its
draws with; with them :class:`nutpie.compile_pymc.CompiledPyMCModel` is built
as nutpie builds it.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod
from typing import Any, cast

import pymc as pm
import pytensor.tensor as pt
from pymc.pytensorf import compile as compile_pymc
from pytensor.graph import clone_replace, rewrite_graph
from pytensor.graph.basic import Constant
from pytensor.graph.traversal import ancestors
from pytensor.tensor.sharedvar import TensorSharedVariable

from caltars_bayes.model.kernels import fuse_density_sums

__all__ = ["FlatFunctions", "compile_flat", "layout", "symbolic_value_shapes", "traced_shape"]


def symbolic_value_shapes(model: pm.Model) -> list[pt.TensorVariable] | None:
    """Each free variable's unconstrained value shape as a graph of the dimension lengths.

    The shape of ``transform.forward(rv)`` (or of ``rv`` when untransformed),
    rewritten by PyTensor's shape inference so that it no longer refers to the
    random variable itself. None when any shape still depends on something
    other than constants and shared scalars (the dimension lengths).
    """
    shapes = []
    for rv in model.free_RVs:
        transform = model.rvs_to_transforms.get(rv)
        value = transform.forward(rv, *rv.owner.inputs) if transform is not None else rv
        shape = traced_shape(value)
        if shape is None:
            return None
        shapes.append(shape)
    return shapes


def traced_shape(var: Any) -> pt.TensorVariable | None:
    """``var``'s shape as a graph of constants and shared scalars (the dimension
    lengths), by PyTensor's shape inference; None where it depends on anything else."""
    shape = cast(
        pt.TensorVariable,
        rewrite_graph(pt.as_tensor(var.shape, ndim=1), include=("ShapeOpt", "canonicalize")),
    )
    for node in ancestors([shape]):
        if node.owner is None and not isinstance(node, Constant | TensorSharedVariable):
            return None
        if isinstance(node, TensorSharedVariable) and node.ndim != 0:
            return None
    return shape


@dataclass(frozen=True)
class FlatFunctions:
    """The compiled log density (with gradient) and expand function of a model.

    ``logp_fn(x) -> (log p, gradient)`` and ``expand_fn(x) -> [stored values]``
    are PyTensor functions (numba mode) of the flat vector ``x``; they take
    the model's data and dimension lengths as shared inputs. ``value_names``
    are the free (unconstrained) variables in the order they fill ``x``,
    ``stored_names`` the other stored variables in the order they follow them
    in the expanded vector, ``renamed`` the transformed value variables.
    """

    logp_fn: Any
    expand_fn: Any
    value_names: list[str]
    stored_names: list[str]
    renamed: list[str]


def compile_flat(model: pm.Model, var_names: list[str] | None = None) -> FlatFunctions | None:
    """Compile the log density, its gradient and the stored values for any data size.

    What nutpie's private ``_make_functions(model, mode="NUMBA",
    compute_grad=True, join_expanded=True)`` compiles, with the offsets and
    shapes that cut ``x`` written as graphs of the dimension lengths. None when
    a value shape cannot be traced to them (the caller then compiles nutpie's
    fixed-shape functions). ``var_names``: stored variables besides the free
    ones (None: all). The ratings' summed density and its gradient are one pass
    (:func:`caltars_bayes.model.kernels.fuse_density_sums`).
    """
    sym = symbolic_value_shapes(model)
    if sym is None:
        return None
    value_vars = [model.rvs_to_values[rv] for rv in model.free_RVs]
    names = [v.name for v in value_vars]
    joined = pt.dvector("_unconstrained_point")
    start: Any = pt.constant(0, dtype="int64")
    replacements = {}
    for value_var, shape in zip(value_vars, sym, strict=True):
        stop = start + pt.prod(shape, dtype="int64")
        piece = joined[start:stop].reshape(shape, ndim=value_var.ndim)
        replacements[value_var] = piece.astype(value_var.dtype)
        start = stop
    logp = model.logp()
    rewrites = ["canonicalize", "stabilize"]
    if not model.check_bounds:
        rewrites.append("local_remove_check_parameter")
    logp = cast(pt.TensorVariable, rewrite_graph(logp, include=rewrites))
    [logp] = fuse_density_sums([logp])
    grads = cast(list[pt.TensorVariable], pt.grad(logp, value_vars))
    grad = pt.concatenate([pt.as_tensor(g).ravel() for g in grads])
    logp, grad = clone_replace([logp, grad], replacements)
    with model:
        logp_fn = compile_pymc((joined,), (logp, grad), mode="NUMBA")
    remaining = [v for v in model.unobserved_value_vars if v.name not in names]
    if var_names is not None:
        keep = set(var_names)
        remaining = [v for v in remaining if v.name in keep]
    identity = [replacements[v] for v in value_vars]
    expanded = pt.concatenate(
        [*[v.ravel() for v in identity], *[pt.as_tensor(v).ravel() for v in remaining]]
    )
    with model:
        expand_fn = compile_pymc(
            (joined,), [expanded], givens=list(replacements.items()), mode="NUMBA"
        )
    renamed = [
        model.rvs_to_values[rv].name
        for rv in model.free_RVs
        if model.rvs_to_transforms.get(rv) is not None
    ]
    return FlatFunctions(logp_fn, expand_fn, names, [v.name for v in remaining], renamed)


def layout(
    shapes: dict[str, Any], value_names: list[str], stored_names: list[str]
) -> tuple[int, int, tuple[list[str], list[slice], list[tuple[int, ...]]]]:
    """One design's ``n_dim``, ``n_expanded`` and (names, slices, shapes) of the
    expanded vector, from the concrete shapes of its variables."""
    names, slices, out_shapes = [], [], []
    count = n_dim = 0
    for i, name in enumerate([*value_names, *stored_names]):
        if i == len(value_names):
            n_dim = count
        shape = tuple(int(n) for n in shapes[name])
        names.append(name)
        out_shapes.append(shape)
        slices.append(slice(count, count + prod(shape)))
        count += prod(shape)
    if not stored_names:
        n_dim = count
    return n_dim, count, (names, slices, out_shapes)
