"""REML variance components of one-way and crossed two-way random-effects models.

The components behind :func:`caltars_bayes.analysis.classical.icc.icc_unbalanced`:
incomplete, unbalanced crossings of targets and judges, nothing listwise-deleted.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import linalg, optimize

from caltars_bayes._core.errors import DataError

# ---------------------------------------------------------------------------
# Unbalanced designs: REML variance components of the crossed model
# ---------------------------------------------------------------------------


def _long_codes(
    long: pd.DataFrame, target: str | Sequence[str], judge: str, value: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """Validate long ratings and return (y, target codes, judge codes, n_targets, n_judges)."""
    targets = [target] if isinstance(target, str) else list(target)
    for col in [*targets, judge, value]:
        if col not in long.columns:
            raise DataError(f"<data frame>, column '{col}': no such column")
    df = long[[*targets, judge, value]]
    try:
        y_all = pd.to_numeric(df[value], errors="raise").to_numpy(dtype=float)
    except (TypeError, ValueError):
        raise DataError(f"<data frame>, column '{value}': ratings must be numeric") from None
    keep = np.isfinite(y_all)  # a missing rating is an absent cell, not a deleted target
    df = df.loc[keep]
    y = y_all[keep]
    if df[[*targets, judge]].isna().any().any():
        raise DataError("<data frame>: missing target or judge identifiers")
    dup = df.duplicated([*targets, judge], keep=False)
    if dup.any():
        rows = [int(i) + 2 for i in np.flatnonzero(dup.to_numpy())[:5]]
        raise DataError(
            f"<data frame>, rows {', '.join(map(str, rows))}: the same judge rated the same "
            "target more than once; average or drop the repeats first"
        )
    t_codes = df.groupby(targets, sort=True, observed=True).ngroup().to_numpy()
    j_codes, j_levels = pd.factorize(df[judge], sort=True)
    n_t, n_j = int(t_codes.max()) + 1 if len(t_codes) else 0, len(j_levels)
    if n_t < 2 or n_j < 2:
        raise DataError(f"<data frame>: need at least 2 targets and 2 judges, got {n_t} and {n_j}")
    if len(y) <= n_t:
        raise DataError("<data frame>: no target was rated by more than one judge")
    return y, t_codes.astype(np.intp), np.asarray(j_codes, dtype=np.intp), n_t, n_j


class _CrossedREML:
    """Profiled REML criterion of y = mu + a + b + e with a, b crossed random factors.

    Random effects are scaled (Z* = Z sqrt(gamma), gamma = variance / error
    variance) so that the mixed-model equations stay well conditioned as a
    variance ratio goes to 0.  The factor ``a`` (chosen as the one with more
    levels) has a diagonal block in those equations and is absorbed.  Levels
    of ``a`` with the same number of ratings share their diagonal entry, so
    their contributions are summed once, up front; an evaluation then costs
    O(c m^2 + m^3), with c distinct rating counts and m = 1 + levels of ``b``,
    whatever the number of observations.
    """

    def __init__(
        self,
        y: np.ndarray,
        a: np.ndarray,
        n_a: int,
        b: np.ndarray | None = None,
        n_b: int = 0,
    ) -> None:
        self.n = len(y)
        self.n_b = n_b
        self.yy = float(y @ y)
        self.sum_y = float(y.sum())
        cnt_a = np.bincount(a, minlength=n_a).astype(float)
        r_a = np.bincount(a, weights=y, minlength=n_a)
        if b is None:
            self.cnt_b = np.zeros(0)
            self.r_b = np.zeros(0)
            n_ab = np.zeros((n_a, 0))
        else:
            self.cnt_b = np.bincount(b, minlength=n_b).astype(float)
            self.r_b = np.bincount(b, weights=y, minlength=n_b)
            n_ab = np.zeros((n_a, n_b))
            np.add.at(n_ab, (a, b), 1.0)
        # rows b_i = [count_i, N_ab[i, :]] of the a-by-(intercept, b) cross-product block
        bmat = np.column_stack([cnt_a, n_ab])
        self.counts, group = np.unique(cnt_a, return_inverse=True)
        n_groups = len(self.counts)
        self.n_per = np.bincount(group, minlength=n_groups).astype(float)
        self.m_c = np.zeros((n_groups, 1 + n_b, 1 + n_b))  # sum of b_i b_i'
        self.v_c = np.zeros((n_groups, 1 + n_b))  # sum of b_i r_i
        self.s_c = np.bincount(group, weights=r_a**2, minlength=n_groups)  # sum of r_i^2
        for g in range(n_groups):
            rows = bmat[group == g]
            self.m_c[g] = rows.T @ rows
            self.v_c[g] = rows.T @ r_a[group == g]

    def solve(self, log_gamma: np.ndarray) -> tuple[float, float]:
        """Return (quadratic form y'Py in error-variance units, log|G| + log|C|)."""
        g_a = float(np.exp(log_gamma[0]))
        g_b = float(np.exp(log_gamma[1])) if self.n_b else 0.0
        sb = np.sqrt(g_b)
        lam = np.concatenate([[1.0], np.full(self.n_b, sb)])  # scaling of the dense block
        w = g_a / (g_a * self.counts + 1.0)  # absorbed diagonal, inverted, per count group
        amat = np.empty((1 + self.n_b, 1 + self.n_b))
        amat[0, 0] = self.n
        amat[0, 1:] = amat[1:, 0] = sb * self.cnt_b
        amat[1:, 1:] = np.diag(g_b * self.cnt_b + 1.0)
        absorbed = np.tensordot(w, self.m_c, axes=1) * np.outer(lam, lam)
        schur = amat - absorbed
        r_d = np.concatenate([[self.sum_y], sb * self.r_b])
        v = (w @ self.v_c) * lam
        chol = linalg.cho_factor(schur, lower=True)
        theta_d = linalg.cho_solve(chol, r_d - v)
        # theta_a . r_a* = sum_i r_i* (r_i* - b_i* theta_d) / D_i
        theta_a_r = float(w @ self.s_c - v @ theta_d)
        quad = self.yy - theta_a_r - float(theta_d @ r_d)
        logdet = float(
            self.n_per @ np.log(g_a * self.counts + 1.0) + 2.0 * np.sum(np.log(np.diag(chol[0])))
        )
        return quad, logdet

    def objective(self, log_gamma: np.ndarray) -> float:
        """-2 x profiled restricted log-likelihood, up to a constant."""
        try:
            quad, logdet = self.solve(log_gamma)
        except linalg.LinAlgError:
            return np.inf
        if not quad > 0.0:
            return np.inf
        return (self.n - 1) * np.log(quad) + logdet


_LOG_GAMMA_BOUNDS = (-20.0, 15.0)


def _fit_reml(model: _CrossedREML, n_ratios: int) -> tuple[np.ndarray, float]:
    """Maximise the restricted likelihood over log variance ratios; return (ratios, error var)."""
    lo, hi = _LOG_GAMMA_BOUNDS
    grid = np.linspace(-8.0, 6.0, 8)
    if n_ratios == 1:
        starts = [np.array([g]) for g in grid]
    else:
        starts = [np.array([g1, g2]) for g1 in grid for g2 in grid]
    values = [model.objective(s) for s in starts]
    x0 = starts[int(np.argmin(values))]
    res = optimize.minimize(
        model.objective,
        x0,
        method="L-BFGS-B",
        bounds=[(lo, hi)] * n_ratios,
        options={"ftol": 1e-14, "gtol": 1e-9, "maxiter": 500},
    )
    x = res.x
    # polish: L-BFGS-B with finite differences can stop a little early on flat ridges
    res2 = optimize.minimize(
        model.objective,
        x,
        method="Nelder-Mead",
        bounds=[(lo, hi)] * n_ratios,
        options={"xatol": 1e-8, "fatol": 1e-12, "maxiter": 2000},
    )
    if res2.fun <= res.fun:
        x = res2.x
    quad, _ = model.solve(x)
    sigma2_e = quad / (model.n - 1)
    gammas = np.exp(x)
    gammas[x <= lo + 5.0] = 0.0  # ratio pinned at the boundary: the component is zero
    return gammas, sigma2_e


def _variance_components(
    y: np.ndarray, t: np.ndarray, j: np.ndarray, n_t: int, n_j: int
) -> dict[str, float]:
    # Centre and scale y for conditioning (the intercept absorbs the mean).
    centre, scale = float(y.mean()), float(y.std())
    if not scale > 0.0:
        raise DataError("<data frame>: all ratings are identical; variance components undefined")
    z = (y - centre) / scale
    s2 = scale**2
    # one-way: target + residual (judge variance pooled into the residual)
    one = _CrossedREML(z, t, n_t)
    (g_t1,), e1 = _fit_reml(one, 1)
    # two-way crossed: absorb the factor with more levels
    if n_t >= n_j:
        two = _CrossedREML(z, t, n_t, j, n_j)
        (g_t, g_j), e2 = _fit_reml(two, 2)
    else:
        two = _CrossedREML(z, j, n_j, t, n_t)
        (g_j, g_t), e2 = _fit_reml(two, 2)
    return {
        "one_way_target": g_t1 * e1 * s2,
        "one_way_within": e1 * s2,
        "target": g_t * e2 * s2,
        "judge": g_j * e2 * s2,
        "error": e2 * s2,
    }


def reml_variance_components(
    long: pd.DataFrame, target: str | list[str], judge: str, value: str
) -> pd.DataFrame:
    """REML variance components of one-way and crossed two-way random-effects models.

    Parameters
    ----------
    long : pandas.DataFrame
        One row per rating.
    target : str or list of str
        Column(s) identifying the rated target (e.g. ``["subject", "session"]``).
    judge : str
        Column identifying the judge.
    value : str
        Column holding the rating (or scale score).  Rows whose value is
        missing are absent cells; no target or judge is dropped because of them.

    Returns
    -------
    pandas.DataFrame
        Five rows with columns

        ``model``
            ``"one-way random"`` (rating = mean + target + residual) or
            ``"two-way random"`` (rating = mean + target + judge + error).
        ``component``
            ``"target"`` / ``"within"`` for the one-way model (``within``
            is judge and error variance together); ``"target"``,
            ``"judge"``, ``"error"`` for the two-way model.
        ``variance``
            REML estimate, constrained to be non-negative.

    Notes
    -----
    Restricted (residual) maximum likelihood: the likelihood of the ratings
    after the overall mean has been projected out is maximised over the
    variance components.  The error variance is profiled out and the
    remaining variance ratios are optimised on the log scale (a coarse grid,
    then L-BFGS-B, then a Nelder-Mead polish); a ratio that runs into the
    lower bound is reported as an exact zero.  The likelihood is evaluated
    through Henderson's mixed-model equations with the factor with more
    levels absorbed, so thousands of ratings are cheap.  On balanced,
    complete data with positive ANOVA estimates the REML estimates equal the
    ANOVA (expected mean squares) estimates.
    """
    y, t, j, n_t, n_j = _long_codes(long, target, judge, value)
    vc = _variance_components(y, t, j, n_t, n_j)
    return pd.DataFrame(
        {
            "model": ["one-way random"] * 2 + ["two-way random"] * 3,
            "component": ["target", "within", "target", "judge", "error"],
            "variance": [
                vc["one_way_target"],
                vc["one_way_within"],
                vc["target"],
                vc["judge"],
                vc["error"],
            ],
        }
    )
