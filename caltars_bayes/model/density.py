"""The rating log density of the cumulative-logit model, in numpy (no PyMC).

A rating in category ``c`` with linear predictor ``mu`` lies between the
cutpoints ``tau_lo = tau[c - 1]`` and ``tau_hi = tau[c]`` of its row of the
cutpoint table (the table padded with ``-BIG`` below and ``+BIG`` above, see
:func:`pad_cutpoints`, so the lowest and highest categories need no special
case). With ``F`` the logistic CDF, ``a = tau_hi - mu`` and ``b = tau_lo - mu``,
its probability is ``F(a) - F(b)`` and its log density::

    log p = log(F(a) - F(b))

Both logistic values are taken on the side of ``mu`` where they are small
(``F(x) = 1 - F(-x)``: when ``a + b > 0`` the pair ``(a, b)`` is replaced by
``(-b, -a)``, which has the same difference), so the difference never cancels
and a rating far in a tail keeps its precision. This is the numpy twin of the
model's :func:`caltars_bayes.model.build.cumulative_logit_logp`.

Derivatives in ``mu``. Because the logistic density is ``F (1 - F)``, the
first derivative simplifies to a sum with no division by the probability::

    d log p / d mu   = F(a) + F(b) - 1
    d2 log p / d mu2 = -(F(a) (1 - F(a)) + F(b) (1 - F(b)))

The second derivative is never positive: the log density is concave in ``mu``,
which is what makes Newton's method on a linear predictor safe (the scoring
engine, the integrated session likelihood of :mod:`caltars_bayes.inference.predict`).
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit

__all__ = ["BIG", "cumulative_logit_derivatives", "cumulative_logit_logp", "pad_cutpoints"]

#: Stand-in for +-infinity at the ends of the cutpoint table.
BIG = 1e10


def pad_cutpoints(cut: np.ndarray) -> np.ndarray:
    """The cutpoint table (..., C-1) padded to (..., C+1) with ``-BIG`` first and ``+BIG`` last.

    Category ``c`` (0-based) then lies between entries ``c`` and ``c + 1``.
    """
    big = np.full((*cut.shape[:-1], 1), BIG)
    return np.concatenate([-big, cut, big], axis=-1)


def cumulative_logit_logp(mu: np.ndarray, tau_lo: np.ndarray, tau_hi: np.ndarray) -> np.ndarray:
    """``log(F(tau_hi - mu) - F(tau_lo - mu))``, evaluated on the safe side (module docstring)."""
    a = tau_hi - mu
    b = tau_lo - mu
    mirror = (a + b) > 0
    hi = np.where(mirror, -b, a)
    lo = np.where(mirror, -a, b)
    with np.errstate(divide="ignore"):
        return np.log(expit(hi) - expit(lo))


def cumulative_logit_derivatives(
    mu: np.ndarray, tau_lo: np.ndarray, tau_hi: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """First and second derivatives of :func:`cumulative_logit_logp` in ``mu``.

    ``F(a) + F(b) - 1`` and ``-(F(a)(1 - F(a)) + F(b)(1 - F(b)))`` with
    ``a = tau_hi - mu``, ``b = tau_lo - mu`` (module docstring).
    """
    fa, fb = expit(tau_hi - mu), expit(tau_lo - mu)
    return fa + fb - 1.0, -(fa * (1.0 - fa) + fb * (1.0 - fb))
