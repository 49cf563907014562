"""Informative priors on the model's unconstrained scale (borrowed from an earlier fit).

Each borrowed quantity (:data:`QUANTITIES`) is a transform of one posterior
variable to an unconstrained scale: log loadings, cutpoint locations relative
to their scale and log gaps, log SDs, Fisher z of factor correlations, the
session trend. :func:`add_borrowed_priors` adds a Normal(mean, sd) term per
element of each quantity to the model as a ``pm.Potential``, on top of the
default priors. How the means and SDs are derived from an earlier fit, and the
prior-data conflict check, are in :mod:`caltars_bayes.analysis.borrow`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pymc as pm
import pytensor.tensor as pt

from caltars_bayes.data.ratings import RatingData


@dataclass(frozen=True, eq=False)
class InformativePriors(Mapping[str, tuple[np.ndarray, np.ndarray]]):
    """Borrowed Normal priors: quantity name -> (mean, sd) arrays, with their origin.

    A mapping of :data:`QUANTITIES` names to the means and (power-prior
    discounted) SDs of their elements; ``weight`` is the power-prior weight and
    ``source`` the earlier fit they came from (recorded in the new fit's
    :class:`~caltars_bayes.inference.record.FitRecord` as ``prior_from``).
    """

    priors: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    weight: float = 1.0
    source: str | None = None

    def __getitem__(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        return self.priors[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.priors)

    def __len__(self) -> int:
        return len(self.priors)


#: Borrowed quantities: name -> (posterior variable, one-line definition).
QUANTITIES: dict[str, tuple[str, str]] = {
    "log_loading": ("loading", "log item loading"),
    "cutpoint_location": ("cutpoints", "first cutpoint minus its scale's mean first cutpoint"),
    "cutpoint_log_gap": ("cutpoints", "log gap between adjacent cutpoints"),
    "log_sd_alliance": ("sd_alliance", "log SD of treatment-level alliance"),
    "log_sd_session": ("sd_session", "log SD of session deviations"),
    "log_sd_severity": ("sd_severity", "log SD of judge severity"),
    "log_sd_log_discrimination": ("sd_log_discrimination", "log SD of log discrimination"),
    "factor_corr_z": ("factor_corr", "Fisher z of a factor correlation"),
    "session_trend": ("session_trend", "change per session"),
}


def _scale_average(data: RatingData) -> np.ndarray:
    """(items x items) matrix whose product averages each item's scale mates."""
    isc = np.asarray(data.item_scale_idx)
    same = (isc[:, None] == isc[None, :]).astype(float)
    return same / same.sum(axis=0, keepdims=True)


def transform(name: str, value: Any, data: RatingData, xp: Any = np) -> Any:
    """The borrowed quantity ``name`` from its posterior variable's value.

    Works on numpy arrays with leading draw dims (``xp=numpy``) and on PyTensor
    tensors (``xp=pytensor.tensor``); returns the elements flattened last.
    """
    if name == "log_loading":
        return xp.log(value)
    if name == "cutpoint_location":
        first = value[..., 0]
        return first - first @ _scale_average(data)
    if name == "cutpoint_log_gap":
        gaps = xp.log(value[..., 1:] - value[..., :-1])
        return gaps.reshape((*gaps.shape[:-2], -1)) if xp is np else gaps.flatten()
    if name in ("log_sd_alliance", "log_sd_session", "log_sd_severity",
                "log_sd_log_discrimination"):  # fmt: skip
        return xp.log(value)
    if name == "factor_corr_z":
        iu = np.triu_indices(data.n_scales, 1)
        return xp.arctanh(value[..., iu[0], iu[1]])
    if name == "session_trend":
        return value
    raise KeyError(name)


def add_borrowed_priors(
    model: pm.Model, informative: Mapping[str, tuple[np.ndarray, np.ndarray]], data: RatingData
) -> None:
    """Add each borrowed Normal prior as a ``pm.Potential`` (inside the model context)."""
    for name, (mean, sd) in informative.items():
        var = QUANTITIES[name][0]
        value = transform(name, model[var], data, xp=pt).flatten()
        z = (value - np.asarray(mean)) / np.asarray(sd)
        pm.Potential(f"borrowed_{name}", -0.5 * (z**2).sum())
