"""A fit's model on its unconstrained space: the sampler's parameter vector.

NUTS samples the model's *value variables*: every free random variable mapped
to the real line by its PyMC transform (``log`` for SDs, ``ordered`` for
cutpoints, ``zerosum`` for judge effects, the LKJ Cholesky transform for factor
correlations; untransformed variables such as ``theta_z`` as they are). The
posterior stores the constrained values. :class:`UnconstrainedModel` rebuilds
the fit's :class:`~caltars_bayes.model.build.AllianceModel` and gives, vectorised
over draws,

* :meth:`~UnconstrainedModel.upars`: posterior draws -> unconstrained vectors
  (chain, draw, unconstrained_parameter), the forward transforms;
* :meth:`~UnconstrainedModel.logp`: the joint log density on that space
  (priors, covariate potentials and likelihood, with the log Jacobians of the
  transforms), i.e. the density NUTS sampled, up to a constant;
* :meth:`~UnconstrainedModel.posterior`: unconstrained vectors -> a posterior
  Dataset of the free variables and deterministics (``theta``, ``zeta``,
  ``loading`` ...) with the model's dims, which
  :func:`caltars_bayes.inference.predict.posterior_draws` reads.

Moment matching for PSIS-LOO (:func:`caltars_bayes.analysis.compare.loo_moment_match_fit`)
moves draws on this space. Each function is compiled once (PyTensor, the
model's graph vectorised over a leading draw dimension) and evaluated on
chunks of draws, so no array larger than about
:data:`caltars_bayes.inference.predict.CHUNK_ELEMENTS` values per rating-sized term exists.
"""

from __future__ import annotations

from functools import cached_property
from itertools import pairwise
from typing import TYPE_CHECKING, Any

import numpy as np
import pytensor
import pytensor.tensor as pt
import xarray as xr
from pytensor.graph.replace import vectorize_graph
from pytensor.graph.traversal import ancestors
from pytensor.tensor.random.op import RandomVariable

from caltars_bayes._core.dims import SAMPLE_DIMS
from caltars_bayes._core.errors import CaltarsError
from caltars_bayes.inference.predict import CHUNK_ELEMENTS
from caltars_bayes.model.build import AllianceModel

if TYPE_CHECKING:
    from caltars_bayes.inference.fit import Fit

#: Name of the parameter dimension of unconstrained draws.
PARAM_DIM = "unconstrained_parameter"
#: Plan fields that change the model's parameters (a rebuilt model must agree on them).
_PLAN_FIELDS = (
    "session_level", "session_trend", "judge_severity", "judge_discrimination",
    "judge_subject_interaction", "cutpoints", "centred_subjects", "centred_judges",
    "centred_sessions", "covariates", "session_covariates", "covariate_scaling",
    "session_covariate_scaling", "bifactor", "joint_subject_sessions",
)  # fmt: skip


def _batched(inputs: list, outputs: list, shapes: list[tuple[int, ...]], mode: Any = None):
    """Compile ``outputs`` of ``inputs`` vectorised over a leading draw dimension.

    Returns ``f(blocks) -> list of arrays``, ``blocks[n]`` of shape (draws,
    size of input n) holding input n flattened.
    """
    blocks = [pt.matrix(f"batch_{n}", dtype="float64") for n in range(len(inputs))]
    replace = {
        v: b.reshape((b.shape[0], *shape))
        for v, b, shape in zip(inputs, blocks, shapes, strict=True)
    }
    batched = vectorize_graph(outputs, replace)
    if any(
        a.owner is not None and isinstance(a.owner.op, RandomVariable) for a in ancestors(batched)
    ):  # a transform that reads another random variable would be evaluated at a random draw
        raise CaltarsError("the model's graph has a random term outside the value variables")
    return pytensor.function(blocks, batched, on_unused_input="ignore", mode=mode)


class UnconstrainedModel:
    """The model of a fit on its unconstrained space (see the module docstring).

    Parameters
    ----------
    fit : a fitted model. Its model is rebuilt from ``fit.data`` (instrument,
        options, priors), so a fit with borrowed priors (``--prior-from``) is
        refused, as is one whose rebuilt plan differs from the fitted plan.
    mode : PyTensor compilation mode of the functions (default PyTensor's;
        ``"FAST_COMPILE"`` compiles in a fraction of the time and runs slower).

    Attributes
    ----------
    model : the rebuilt ``pm.Model``.
    names : the value variables' names, in parameter order.
    labels : one label per unconstrained parameter (``name[i,j]``).
    """

    def __init__(self, fit: Fit, mode: Any = None) -> None:
        if fit.record.prior_from is not None:
            raise CaltarsError(
                "the fit used borrowed priors (--prior-from): its joint density cannot be "
                "rebuilt from the fit alone"
            )
        am = AllianceModel(fit.data)
        diff = [f for f in _PLAN_FIELDS if getattr(am.plan, f) != getattr(fit.plan, f)]
        if diff:
            raise CaltarsError(
                f"the model rebuilt from the fit's spec and data differs from the fitted one "
                f"({', '.join(diff)})"
            )
        self.model = m = am.model
        self.mode = mode
        point = m.initial_point()
        self._values = list(m.value_vars)
        self.names = [v.name for v in self._values]
        self._shapes = [tuple(point[n].shape) for n in self.names]
        sizes = [int(np.prod(s, dtype=int)) for s in self._shapes]
        edges = np.cumsum([0, *sizes])
        self._slices = [slice(int(a), int(b)) for a, b in pairwise(edges)]
        self.labels = [
            n if size == 1 and not shape else f"{n}[{','.join(map(str, idx))}]"
            for n, shape, size in zip(self.names, self._shapes, sizes, strict=True)
            for idx in np.ndindex(*shape)
        ]
        self._rvs = [m.values_to_rvs[v] for v in self._values]
        self.outputs = [o.name for o in (*m.free_RVs, *m.deterministics)]
        self._chunk = max(1, CHUNK_ELEMENTS // max(fit.data.n_ratings, 1))

    @cached_property
    def _forward(self):
        """Constrained free values -> unconstrained blocks (the forward transforms)."""
        m = self.model
        cons = [rv.type() for rv in self._rvs]
        fwd = []
        for rv, c in zip(self._rvs, cons, strict=True):
            tr = m.rvs_to_transforms[rv]
            fwd.append(tr.forward(c, *rv.owner.inputs) if tr is not None else c)
        shapes = m.eval_rv_shapes()  # constrained (RV) shapes, by name
        rv_shapes = [tuple(int(x) for x in shapes[rv.name]) for rv in self._rvs]
        return _batched(cons, fwd, rv_shapes, self.mode)

    @cached_property
    def _logp(self):
        """Unconstrained vector -> joint log density (with the transforms' Jacobians)."""
        logp = self.model.logp(jacobian=True, sum=True)
        return _batched(self._values, [logp], self._shapes, self.mode)

    @cached_property
    def _backward(self):
        """Unconstrained vector -> free variables and deterministics (constrained)."""
        m = self.model
        outs = m.replace_rvs_by_values([*m.free_RVs, *m.deterministics])
        return _batched(self._values, outs, self._shapes, self.mode)

    @property
    def n_params(self) -> int:
        return len(self.labels)

    def _blocks(self, flat: np.ndarray) -> list[np.ndarray]:
        return [np.ascontiguousarray(flat[:, s]) for s in self._slices]

    def _chunks(self, n: int):
        for a in range(0, n, self._chunk):
            yield slice(a, min(a + self._chunk, n))

    def upars(self, post: xr.Dataset) -> xr.DataArray:
        """Posterior draws on the unconstrained space: DataArray (chain, draw, parameter)."""
        post = post.transpose(*SAMPLE_DIMS, ...)
        n_chain, n_draw = post.sizes["chain"], post.sizes["draw"]
        missing = [rv.name for rv in self._rvs if rv.name not in post]
        if missing:
            raise CaltarsError(f"the posterior lacks the free variables {', '.join(missing)}")
        blocks = [
            np.ascontiguousarray(post[rv.name].values.reshape(n_chain * n_draw, -1), dtype=float)
            for rv in self._rvs
        ]
        flat = np.concatenate(
            [np.asarray(o).reshape(n_chain * n_draw, -1) for o in self._forward(*blocks)], axis=1
        )
        return xr.DataArray(
            flat.reshape(n_chain, n_draw, -1),
            dims=(*SAMPLE_DIMS, PARAM_DIM),
            coords={
                "chain": post["chain"].values,
                "draw": post["draw"].values,
                PARAM_DIM: self.labels,
            },
            name="upars",
        )

    def logp(self, upars: np.ndarray) -> np.ndarray:
        """Joint log density at unconstrained draws (draws, parameter): array (draws,)."""
        flat = np.asarray(upars, dtype=float).reshape(-1, self.n_params)
        out = np.empty(flat.shape[0])
        for sl in self._chunks(flat.shape[0]):
            out[sl] = self._logp(*self._blocks(flat[sl]))[0]
        return out

    def posterior(self, upars: xr.DataArray) -> xr.Dataset:
        """The free variables and deterministics at unconstrained draws, as a posterior Dataset.

        ``upars`` has dims (chain, draw, parameter); the result has the model's
        dims and coords (a dimension the model does not name is called
        ``{var}_dim_{n}``, as in a sampled posterior).
        """
        upars = upars.transpose(*SAMPLE_DIMS, ...)
        n_chain, n_draw = upars.sizes["chain"], upars.sizes["draw"]
        flat = np.asarray(upars.values, dtype=float).reshape(n_chain * n_draw, -1)
        parts = [self._backward(*self._blocks(flat[sl])) for sl in self._chunks(flat.shape[0])]
        m = self.model
        coords = {k: list(v) for k, v in m.coords.items() if v is not None}
        ds = {}
        for n, name in enumerate(self.outputs):
            values = np.concatenate([np.asarray(p[n]) for p in parts], axis=0)
            values = values.reshape(n_chain, n_draw, *values.shape[1:])
            dims = m.named_vars_to_dims.get(name) or tuple(
                f"{name}_dim_{d}" for d in range(values.ndim - 2)
            )
            ds[name] = ((*SAMPLE_DIMS, *dims), values)
        used = {d for v in ds.values() for d in v[0]}
        return xr.Dataset(
            ds,
            coords={
                "chain": upars["chain"].values,
                "draw": upars["draw"].values,
                **{k: v for k, v in coords.items() if k in used},
            },
        )
