"""REML variance components of one-way and crossed two-way random-effects models.

The components behind :func:`caltars_bayes.analysis.classical.icc.icc_unbalanced`:
incomplete, unbalanced crossings of targets and judges, nothing listwise-deleted.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import linalg, optimize, sparse
from scipy.linalg import lapack
from threadpoolctl import threadpool_limits

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
    levels) has a diagonal block in those equations and is absorbed, leaving
    a dense block of m = 1 + levels of ``b`` (the Schur complement).  Levels of
    ``a`` with the same number of ratings share their diagonal entry, so the
    absorbed part is a sum over count groups of the b-by-b co-rating counts
    (how often two levels of ``b`` share a level of ``a``), kept sparse: the
    Schur complement is rebuilt by one weighted sum over the co-rated pairs,
    then one Cholesky factorisation, O(pairs + m^3) per evaluation.
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
        self.n_a, self.n_b = n_a, n_b
        self.yy = float(y @ y)
        self.sum_y = float(y.sum())
        self.cnt_a = np.bincount(a, minlength=n_a).astype(float)
        self.r_a = np.bincount(a, weights=y, minlength=n_a)
        self.counts, self.group = np.unique(self.cnt_a, return_inverse=True)
        n_groups = len(self.counts)
        self.n_per = np.bincount(self.group, minlength=n_groups).astype(float)
        self.s_c = np.bincount(self.group, weights=self.r_a**2, minlength=n_groups)
        # e_c[g] = sum of b_i over the a-levels i of count group g, b_i = [count_i, N_ab[i, :]];
        # v_c[g] = sum of b_i r_i (r_i: level i's rating total)
        self.e_c = np.zeros((n_groups, 1 + n_b))
        self.v_c = np.zeros((n_groups, 1 + n_b))
        self.e_c[:, 0] = self.n_per * self.counts
        self.v_c[:, 0] = self.counts * np.bincount(self.group, self.r_a, minlength=n_groups)
        self.a, self.b = a, b
        if b is None:
            self.cnt_b = self.r_b = np.zeros(0)
            self.co = sparse.csr_matrix((0, n_groups))
            self.co_sym = sparse.csr_matrix((n_groups, 0))
            return
        self.cnt_b = np.bincount(b, minlength=n_b).astype(float)
        self.r_b = np.bincount(b, weights=y, minlength=n_b)
        cell = self.group[a] * n_b + b
        size = n_groups * n_b
        self.e_c[:, 1:] = np.bincount(cell, minlength=size).reshape(n_groups, n_b)
        self.v_c[:, 1:] = np.bincount(cell, self.r_a[a], minlength=size).reshape(n_groups, n_b)
        # co-rating counts per count group, sum over a-levels i in g of N_ab[i]' N_ab[i],
        # lower triangle only: row (k * n_b + l, k >= l), column g
        flat, grp, mult = [], [], []
        for g in range(n_groups):
            rows = self.group[a] == g
            nab = sparse.csr_matrix(
                (np.ones(int(rows.sum())), (a[rows], b[rows])), shape=(n_a, n_b)
            )
            co = sparse.tril(nab.T @ nab).tocoo()
            flat.append(co.row.astype(np.intp) * n_b + co.col)
            grp.append(np.full(co.nnz, g, dtype=np.intp))
            mult.append(co.data.astype(float))
        pairs = (np.concatenate(flat), np.concatenate(grp))
        self.co = sparse.csr_matrix((np.concatenate(mult), pairs), shape=(n_b * n_b, n_groups))
        # the same with off-diagonal pairs counted twice (sums over the full symmetric block)
        off = np.where(pairs[0] // n_b == pairs[0] % n_b, 1.0, 2.0)
        self.co_sym = sparse.csr_matrix(
            (np.concatenate(mult) * off, pairs), shape=(n_b * n_b, n_groups)
        ).T.tocsr()

    def _schur(self, g_a: float, g_b: float) -> np.ndarray:
        """Dense block of the scaled mixed-model equations with ``a`` absorbed."""
        m = 1 + self.n_b
        sb = np.sqrt(g_b)
        w = g_a / (g_a * self.counts + 1.0)  # absorbed diagonal, inverted, per count group
        schur = np.empty((m, m))
        schur[0, 0] = self.n - float((w * self.counts) @ self.e_c[:, 0])
        row = sb * (self.cnt_b - (w * self.counts) @ self.e_c[:, 1:])
        schur[0, 1:] = schur[1:, 0] = row
        if self.n_b:
            bb = schur[1:, 1:]  # lower triangle filled; the Cholesky reads no other
            bb[...] = (-g_b * (self.co @ w)).reshape(self.n_b, self.n_b)
            bb[np.diag_indices(self.n_b)] += g_b * self.cnt_b + 1.0
        return schur

    def solve(
        self, log_gamma: np.ndarray, gradient: bool = False
    ) -> tuple[float, float, np.ndarray]:
        """Return (y'Py in error-variance units, log|G| + log|C|, gradient of the criterion).

        The gradient (with respect to the log variance ratios) is only computed
        when asked for; otherwise an empty array is returned.
        """
        g_a = float(np.exp(log_gamma[0]))
        g_b = float(np.exp(log_gamma[1])) if self.n_b else 0.0
        sb = np.sqrt(g_b)
        lam = np.concatenate([[1.0], np.full(self.n_b, sb)])  # scaling of the dense block
        d_c = g_a * self.counts + 1.0
        w = g_a / d_c
        schur = self._schur(g_a, g_b)
        r_d = np.concatenate([[self.sum_y], sb * self.r_b])
        v = (w @ self.v_c) * lam
        chol = linalg.cho_factor(schur, lower=True, overwrite_a=True, check_finite=False)
        theta_d = linalg.cho_solve(chol, r_d - v, check_finite=False)
        # theta_a . r_a* = sum_i r_i* (r_i* - b_i* theta_d) / D_i
        theta_a_r = float(w @ self.s_c - v @ theta_d)
        quad = self.yy - theta_a_r - float(theta_d @ r_d)
        logdet = float(self.n_per @ np.log(d_c) + 2.0 * np.sum(np.log(np.diag(chol[0]))))
        if not gradient:
            return quad, logdet, np.zeros(0)
        return quad, logdet, self._gradient(g_a, lam, chol[0], theta_d, quad)

    def _gradient(
        self, g_a: float, lam: np.ndarray, low: np.ndarray, theta_d: np.ndarray, quad: float
    ) -> np.ndarray:
        """Gradient of the criterion in the log variance ratios.

        For a factor k with q_k levels, scaled BLUPs u*_k and the k-block of
        the inverse of the scaled equations C*: d log|C*| / d log gamma_k =
        q_k - trace of that block, and d y'Py / d log gamma_k = -|u*_k|^2.
        """
        d_i = g_a * self.cnt_a + 1.0
        phi = lam * theta_d  # b-part of the solution in unscaled units
        h = self.cnt_a * phi[0]
        if self.n_b:
            h += np.bincount(self.a, phi[1:][self.b], minlength=self.n_a)
        ua2 = g_a * float(np.sum((self.r_a - h) ** 2 / d_i**2))
        inv, info = lapack.dpotri(low, lower=1)  # lower triangle of S^-1
        if info != 0:
            raise linalg.LinAlgError("the REML equations are singular")
        # sum over a-levels i of group g of b_i' (S^-1 scaled back by lam) b_i
        quad_b = self.counts**2 * self.n_per * inv[0, 0]
        if self.n_b:
            sb = lam[1]
            quad_b = quad_b + 2.0 * sb * self.counts * (self.e_c[:, 1:] @ inv[1:, 0])
            quad_b = quad_b + sb**2 * (self.co_sym @ inv[1:, 1:].ravel())
        d_c = g_a * self.counts + 1.0
        tr_a = float(np.sum(self.n_per / d_c) + g_a * np.sum(quad_b / d_c**2))
        scale = (self.n - 1) / quad
        grad = [-scale * ua2 + self.n_a - tr_a]
        if self.n_b:
            tr_b = float(np.trace(inv[1:, 1:]))
            grad.append(-scale * float(theta_d[1:] @ theta_d[1:]) + self.n_b - tr_b)
        return np.array(grad)

    def objective(self, log_gamma: np.ndarray) -> float:
        """-2 x profiled restricted log-likelihood, up to a constant."""
        try:
            quad, logdet, _ = self.solve(log_gamma)
        except linalg.LinAlgError:
            return np.inf
        if not quad > 0.0:
            return np.inf
        return (self.n - 1) * np.log(quad) + logdet

    def objective_gradient(self, log_gamma: np.ndarray) -> tuple[float, np.ndarray]:
        """The criterion and its gradient in the log variance ratios."""
        try:
            quad, logdet, grad = self.solve(log_gamma, gradient=True)
        except linalg.LinAlgError:
            return np.inf, np.zeros(len(log_gamma))
        if not quad > 0.0:
            return np.inf, np.zeros(len(log_gamma))
        return (self.n - 1) * np.log(quad) + logdet, grad


_LOG_GAMMA_BOUNDS = (-20.0, 15.0)


def _newton_polish(model: _CrossedREML, x: np.ndarray, f: float) -> tuple[np.ndarray, float]:
    """A few Newton steps on the ratios away from the bounds, Hessian by differences.

    The Hessian is the central difference (step 1e-5) of the exact gradient;
    a step is kept only if it lowers the criterion.
    """
    lo, hi = _LOG_GAMMA_BOUNDS
    free = np.flatnonzero((x > lo + 5.0) & (x < hi - 1e-6))
    if not len(free):
        return x, f
    step = 1e-5
    for _ in range(4):
        hess = np.empty((len(free), len(free)))
        for col, k in enumerate(free):
            e = np.zeros_like(x)
            e[k] = step
            g_up = model.objective_gradient(x + e)[1]
            g_dn = model.objective_gradient(x - e)[1]
            hess[:, col] = (g_up - g_dn)[free] / (2.0 * step)
        hess = 0.5 * (hess + hess.T)
        grad = model.objective_gradient(x)[1][free]
        try:
            delta = -linalg.solve(hess, grad, assume_a="pos")
        except (linalg.LinAlgError, ValueError):
            break
        x_new = x.copy()
        x_new[free] = np.clip(x[free] + delta, lo, hi)
        f_new = model.objective(x_new)
        if not f_new <= f:
            break
        x, f = x_new, f_new
        if np.max(np.abs(delta)) < 1e-9:
            break
    return x, f


def _fit_reml(model: _CrossedREML, n_ratios: int) -> tuple[np.ndarray, float]:
    """Maximise the restricted likelihood over log variance ratios; return (ratios, error var).

    A coarse grid picks the start, L-BFGS-B with the exact gradient climbs,
    and Newton steps polish the ratios that are not at a bound.  One BLAS
    thread: the dense block is small, and competing BLAS threads on a busy
    machine made each factorisation some 30 times slower.
    """
    lo, hi = _LOG_GAMMA_BOUNDS
    grid = np.linspace(-8.0, 6.0, 8)
    if n_ratios == 1:
        starts = [np.array([g]) for g in grid]
    else:
        starts = [np.array([g1, g2]) for g1 in grid for g2 in grid]
    with threadpool_limits(limits=1, user_api="blas"):
        values = [model.objective(s) for s in starts]
        x0 = starts[int(np.argmin(values))]
        res = optimize.minimize(
            model.objective_gradient,
            x0,
            jac=True,
            method="L-BFGS-B",
            bounds=[(lo, hi)] * n_ratios,
            options={"ftol": 1e-15, "gtol": 1e-10, "maxiter": 500},
        )
        x, _ = _newton_polish(model, res.x, float(res.fun))
        quad = model.solve(x)[0]
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
    then L-BFGS-B with the exact gradient, then Newton steps); a ratio that runs into the
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
