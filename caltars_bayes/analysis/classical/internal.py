"""Internal consistency of a scale's items: Cronbach's alpha and McDonald's omega.

Both describe how reliably a scale score (the sum, or equivalently the mean,
of the scale's items) measures what the items have in common, treating the
items as the random facet: one row per rated unit (here one judge's ratings of
one session), one column per item.

cronbach_alpha
    alpha = k / (k - 1) * (1 - sum of item variances / variance of the sum).
feldt_interval
    Feldt's (1965) F-distribution confidence interval of alpha (independent rows).
one_factor_ml
    Maximum-likelihood one-factor model of an item covariance matrix.
mcdonald_omega
    omega = (sum of loadings)^2 / ((sum of loadings)^2 + sum of unique variances).
internal_consistency
    Alpha and omega of an items table with cluster-bootstrap confidence intervals.
scale_internal_consistency
    The same per scale of a :class:`~caltars_bayes.data.ratings.RatingData`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import optimize, stats

from caltars_bayes._core.dims import CI_PROB
from caltars_bayes._core.errors import DataError

if TYPE_CHECKING:
    from caltars_bayes.data.ratings import RatingData

#: Bootstrap resamples of the confidence intervals (subjects resampled).
N_BOOT = 1000
#: ``method`` label of alpha rows.
ALPHA_METHOD = "Cronbach's alpha; percentile CI, bootstrap over subjects"
#: ``method`` label of omega rows.
OMEGA_METHOD = (
    "McDonald's omega total, one-factor ML on the item covariances; "
    "percentile CI, bootstrap over subjects"
)
#: omega's bootstrap refits a k-item factor model per resample at a cost that
#: grows about as k^4 (Newton steps with a k-column Hessian of k x k
#: eigenproblems): measured on this 2-core machine, 4 scales of 6 items took
#: 1.1 s in all, one scale of 24 items 94 s. Above this many items omega gets
#: its point estimate and no interval.
OMEGA_MAX_BOOT_ITEMS = 12
#: complete rows per item below which the one-factor model is not fitted
#: (the item covariance matrix is then near-singular): omega is not reported
OMEGA_MIN_ROWS_PER_ITEM = 2
#: ``method`` labels of omega rows without an interval or without an estimate
OMEGA_NO_INTERVAL = (
    f"McDonald's omega total, one-factor ML on the item covariances; no interval "
    f"(more than {OMEGA_MAX_BOOT_ITEMS} items)"
)
OMEGA_NOT_ESTIMATED = (
    f"McDonald's omega: not estimated (fewer than {OMEGA_MIN_ROWS_PER_ITEM} complete rows "
    "per item)"
)
_LOWER_PSI = 0.005  # lower bound of a standardised unique variance (as R's factanal)
_COLUMNS = [
    "coefficient", "estimate", "ci_low", "ci_high", "method",
    "n_obs", "n_items", "n_clusters", "n_boot",
]  # fmt: skip


def _complete_items(items: pd.DataFrame | np.ndarray, what: str) -> np.ndarray:
    try:
        x = np.asarray(items, dtype=float)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{what}: item scores must be numeric ({exc})") from None
    if x.ndim != 2:
        raise DataError(f"{what}: expected a 2-D rows x items table, got {x.ndim}-D")
    if not np.all(np.isfinite(x)):
        raise DataError(f"{what}: missing item scores; delete incomplete rows first")
    if x.shape[1] < 2 or x.shape[0] < 3:
        raise DataError(
            f"{what}: need at least 3 rows and 2 items, got {x.shape[0]} x {x.shape[1]}"
        )
    return x


def _alpha_from_cov(cov: np.ndarray) -> np.ndarray:
    """Alpha of one covariance matrix (``k x k``) or a stack of them (``... x k x k``)."""
    k = cov.shape[-1]
    total = cov.sum(axis=(-2, -1))
    trace = np.trace(cov, axis1=-2, axis2=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return k / (k - 1) * (1.0 - trace / total)


def cronbach_alpha(items: pd.DataFrame | np.ndarray) -> float:
    """Cronbach's alpha of a complete rows x items table.

    alpha = k / (k - 1) * (1 - sum of the k item variances / variance of the
    row sums), variances with ``n - 1`` in the denominator (the ratio does not
    depend on that choice). It is the reliability of the sum score when the
    items are essentially tau-equivalent (equal loadings on one factor), and a
    lower bound otherwise.
    """
    x = _complete_items(items, "alpha")
    return float(_alpha_from_cov(np.cov(x, rowvar=False)))


def feldt_interval(alpha: float, n: int, k: int, prob: float = CI_PROB) -> tuple[float, float]:
    """Feldt's (1965) confidence interval of alpha from ``n`` independent rows of ``k`` items.

    (1 - alpha) / (1 - population alpha) follows an F distribution with
    ``n - 1`` and ``(n - 1)(k - 1)`` degrees of freedom, so the limits are
    ``1 - (1 - alpha) F_upper`` and ``1 - (1 - alpha) F_lower`` with the F
    quantiles at ``(1 + prob) / 2`` and ``(1 - prob) / 2``. It assumes
    independent rows (and normal, compound-symmetric items): with several rows
    per subject it is too narrow, which is why :func:`internal_consistency`
    bootstraps subjects instead.
    """
    if not 0.0 < prob < 1.0:
        raise ValueError(f"prob must lie in (0, 1), got {prob}")
    df1, df2 = n - 1, (n - 1) * (k - 1)
    f_hi = stats.f.ppf((1 + prob) / 2, df1, df2)
    f_lo = stats.f.ppf((1 - prob) / 2, df1, df2)
    return float(1 - (1 - alpha) * f_hi), float(1 - (1 - alpha) * f_lo)


def _ml_objective(psi: np.ndarray, r: np.ndarray) -> tuple[float, np.ndarray]:
    """R's factanal discrepancy of one factor, concentrated over the loadings, and its gradient.

    With ``R* = Psi^-1/2 R Psi^-1/2`` and its eigenvalues ``e1 >= e2 >= ...``
    the ML discrepancy (up to a constant) is ``-sum_{j>1} (log e_j - e_j)``;
    the loadings are ``Psi^1/2 v1 sqrt(max(e1 - 1, 0))``.
    """
    sc = 1.0 / np.sqrt(psi)
    vals, vecs = np.linalg.eigh(r * sc[:, None] * sc[None, :])
    rest = vals[:-1]
    f = -float(np.sum(np.log(rest) - rest)) + 1.0 - len(psi)
    load = np.sqrt(psi) * vecs[:, -1] * np.sqrt(max(vals[-1] - 1.0, 0.0))
    grad = (load**2 + psi - np.diag(r)) / psi**2
    return f, grad


def one_factor_ml(
    cov: np.ndarray, start: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Maximum-likelihood one-factor model of a covariance matrix.

    Fitted as R's ``factanal`` does: on the correlation matrix, the unique
    variances ``psi`` (bounded to [0.005, 1]) minimise the ML discrepancy with
    the loadings concentrated out (:func:`_ml_objective`), by L-BFGS-B from
    ``psi = 1 - 0.5 / diag(R^-1)``. ML is scale-invariant, so the loadings and
    unique variances are then put back on the covariance metric by the item
    standard deviations.

    Parameters
    ----------
    cov : ``k x k`` item covariance matrix (``k >= 3``).
    start : standardised unique variances to start from (e.g. a previous fit).

    Returns
    -------
    (loadings, unique variances) : two length-``k`` arrays on the covariance
    metric; loadings signed so that their sum is not negative.
    """
    cov = np.asarray(cov, dtype=float)
    k = cov.shape[0]
    if k < 3:
        raise DataError(f"one-factor model: need at least 3 items, got {k}")
    sd = np.sqrt(np.diag(cov))
    if not np.all(sd > 0):
        raise DataError("one-factor model: an item has no variance")
    r = cov / sd[:, None] / sd[None, :]
    if start is None:
        try:
            start = 1.0 - 0.5 / np.diag(np.linalg.inv(r))
        except np.linalg.LinAlgError:
            start = np.full(k, 0.5)
    x0 = np.clip(start, _LOWER_PSI, 1.0)
    res = optimize.minimize(
        _ml_objective, x0, args=(r,), jac=True, method="L-BFGS-B",
        bounds=[(_LOWER_PSI, 1.0)] * k,
    )  # fmt: skip
    psi = res.x
    sc = 1.0 / np.sqrt(psi)
    vals, vecs = np.linalg.eigh(r * sc[:, None] * sc[None, :])
    load = np.sqrt(psi) * vecs[:, -1] * np.sqrt(max(vals[-1] - 1.0, 0.0))
    if load.sum() < 0:
        load = -load
    return load * sd, psi * sd**2


def _omega_from_fit(load: np.ndarray, uniq: np.ndarray) -> float:
    common = float(load.sum()) ** 2
    return common / (common + float(uniq.sum()))


def mcdonald_omega(items: pd.DataFrame | np.ndarray) -> float:
    """McDonald's omega total of a complete rows x items table (at least 3 items).

    omega = (sum of loadings)^2 / ((sum of loadings)^2 + sum of unique
    variances), from the maximum-likelihood one-factor model of the item
    covariance matrix (:func:`one_factor_ml`): the share of the sum score's
    model-implied variance due to the common factor. Covariances, not
    correlations, because the scale score is the unweighted sum (mean) of the
    raw item scores; for essentially tau-equivalent items omega equals alpha.
    ``psych::omega`` divides by the observed variance of the sum instead of the
    model-implied one; the two agree when the one-factor model fits.
    """
    x = _complete_items(items, "omega")
    return _omega_from_fit(*one_factor_ml(np.cov(x, rowvar=False)))


def _bootstrap_covariances(
    x: np.ndarray, cluster: np.ndarray, n_boot: int, seed: int
) -> np.ndarray:
    """Item covariance matrices of ``n_boot`` resamples of whole clusters (``B x k x k``).

    Each resample draws as many clusters as there are, with replacement, and
    keeps all rows of each drawn cluster; the covariances come from per-cluster
    counts, sums and cross-products weighted by how often each cluster was drawn.
    """
    codes, inv = np.unique(cluster, return_inverse=True)
    n_c, k = len(codes), x.shape[1]
    cnt = np.bincount(inv, minlength=n_c).astype(float)
    sums = np.zeros((n_c, k))
    np.add.at(sums, inv, x)
    cross = np.zeros((n_c, k, k))
    np.add.at(cross, inv, x[:, :, None] * x[:, None, :])
    rng = np.random.default_rng(seed)
    w = rng.multinomial(n_c, np.full(n_c, 1.0 / n_c), size=n_boot).astype(float)
    n = w @ cnt
    s = w @ sums
    q = np.einsum("bc,cij->bij", w, cross)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (q - s[:, :, None] * s[:, None, :] / n[:, None, None]) / (n - 1)[:, None, None]


def _percentile(values: np.ndarray, prob: float) -> tuple[float, float]:
    ok = values[np.isfinite(values)]
    if len(ok) < 2:
        return float("nan"), float("nan")
    lo, hi = np.quantile(ok, [(1 - prob) / 2, (1 + prob) / 2])
    return float(lo), float(hi)


def _batch_objective(psi: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_ml_objective` of a stack of correlation matrices at once (``B x k``)."""
    sc = 1.0 / np.sqrt(psi)
    vals, vecs = np.linalg.eigh(r * sc[:, :, None] * sc[:, None, :])
    rest = np.maximum(vals[:, :-1], 1e-300)
    f = -np.sum(np.log(rest) - rest, axis=1)
    load = np.sqrt(psi) * vecs[:, :, -1] * np.sqrt(np.maximum(vals[:, -1:] - 1.0, 0.0))
    return f, (load**2 + psi - 1.0) / psi**2


def _batch_one_factor(
    r: np.ndarray, psi0: np.ndarray, iters: int = 40, tol: float = 1e-7
) -> tuple[np.ndarray, np.ndarray]:
    """Standardised unique variances of a stack of correlation matrices, and which converged.

    Projected Newton steps on :func:`_ml_objective` for all matrices at once:
    the Hessian by forward differences of the analytic gradient, variables at
    a bound whose gradient points outwards held fixed, and step halving until
    the discrepancy does not increase. A matrix has converged when its
    projected gradient is below ``tol``.
    """
    lo, hi = _LOWER_PSI, 1.0
    b, k = psi0.shape
    psi = np.clip(psi0, lo, hi)
    eye = np.eye(k)
    done = np.zeros(b, dtype=bool)
    for _ in range(iters):
        f, g = _batch_objective(psi, r)
        active = ((psi <= lo + 1e-12) & (g > 0)) | ((psi >= hi - 1e-12) & (g < 0))
        gp = np.where(active, 0.0, g)
        done = np.max(np.abs(gp), axis=1) < tol
        if done.all():
            break
        h = 1e-6 * np.maximum(psi, 1e-3)
        hess = np.empty((b, k, k))
        for j in range(k):
            step = psi.copy()
            step[:, j] += h[:, j]
            hess[:, :, j] = (_batch_objective(step, r)[1] - g) / h[:, j : j + 1]
        hess = 0.5 * (hess + hess.transpose(0, 2, 1))
        free = ~active
        mask = free[:, :, None] & free[:, None, :]
        hess = np.where(mask, hess, eye)
        w, v = np.linalg.eigh(hess)
        w = np.maximum(w, 1e-8 + 1e-6 * np.abs(w).max(axis=1, keepdims=True))
        delta = np.einsum("bij,bj,bkj,bk->bi", v, 1.0 / w, v, gp)
        t = np.ones(b)
        for _ in range(30):
            cand = np.clip(psi - t[:, None] * delta, lo, hi)
            worse = _batch_objective(cand, r)[0] > f + 1e-12
            if not worse.any():
                break
            t = np.where(worse, t / 2, t)
        psi = np.where(done[:, None], psi, cand)
    return psi, done


def _boot_omegas(covs: np.ndarray, start: np.ndarray) -> np.ndarray:
    """Omega of each bootstrap covariance matrix; NaN where the model cannot be fitted."""
    out = np.full(len(covs), np.nan)
    sd = np.sqrt(np.einsum("bii->bi", covs))
    ok = np.all(np.isfinite(covs), axis=(1, 2)) & np.all(sd > 0, axis=1)
    if not ok.any():
        return out
    c, s = covs[ok], sd[ok]
    r = c / s[:, :, None] / s[:, None, :]
    psi, done = _batch_one_factor(r, np.broadcast_to(start, s.shape))
    sc = 1.0 / np.sqrt(psi)
    vals, vecs = np.linalg.eigh(r * sc[:, :, None] * sc[:, None, :])
    load = np.sqrt(psi) * vecs[:, :, -1] * np.sqrt(np.maximum(vals[:, -1:] - 1.0, 0.0)) * s
    common = load.sum(axis=1) ** 2
    omega = common / (common + (psi * s**2).sum(axis=1))
    for i in np.flatnonzero(~done):  # rare: refit alone by L-BFGS-B
        try:
            omega[i] = _omega_from_fit(*one_factor_ml(c[i], start=psi[i]))
        except (DataError, np.linalg.LinAlgError):
            omega[i] = np.nan
    out[ok] = omega
    return out


def internal_consistency(
    items: pd.DataFrame | np.ndarray,
    cluster: np.ndarray | pd.Series | None = None,
    *,
    n_boot: int = N_BOOT,
    seed: int = 0,
    prob: float = CI_PROB,
) -> pd.DataFrame:
    """Cronbach's alpha and McDonald's omega of an items table, with bootstrap intervals.

    Parameters
    ----------
    items : rows x items table of item scores (reverse-keyed items already
        reversed). Rows with a missing item are dropped (listwise deletion).
    cluster : for each row, the unit that is sampled independently (here the
        subject); default each row on its own.
    n_boot : bootstrap resamples; 0 gives no intervals.
    seed : seed of the resampling.
    prob : confidence level of the intervals.

    Returns
    -------
    DataFrame with one ``"alpha"`` row and, for 3 or more items, one
    ``"omega"`` row; columns ``coefficient, estimate, ci_low, ci_high, method,
    n_obs`` (complete rows used), ``n_items``, ``n_clusters``, ``n_boot``.

    Notes
    -----
    The intervals are percentile intervals of a bootstrap that resamples whole
    clusters: the rows of one subject (its sessions x judges) are not
    independent, so Feldt's F interval (:func:`feldt_interval`), which treats
    every row as an independent person, would be too narrow. Alpha and omega
    are recomputed from each resample's item covariance matrix, omega by
    refitting the one-factor model (warm-started at the full-sample solution).
    Omega has no interval for more than :data:`OMEGA_MAX_BOOT_ITEMS` items (the
    refits' cost) and is not estimated with fewer than
    :data:`OMEGA_MIN_ROWS_PER_ITEM` complete rows per item; its ``method`` says so.
    """
    x = np.asarray(items, dtype=float)
    cl = np.arange(len(x)) if cluster is None else np.asarray(cluster)
    if len(cl) != len(x):
        raise DataError(f"internal consistency: {len(cl)} cluster labels for {len(x)} rows")
    keep = np.isfinite(x).all(axis=1)
    x, cl = _complete_items(x[keep], "internal consistency"), cl[keep]
    n, k = x.shape
    cov = np.cov(x, rowvar=False)
    n_clusters = len(np.unique(cl))
    covs = _bootstrap_covariances(x, cl, n_boot, seed) if n_boot > 0 else np.empty((0, k, k))
    alpha = float(_alpha_from_cov(cov))
    rows = [("alpha", alpha, *_percentile(_alpha_from_cov(covs), prob), ALPHA_METHOD)]
    if k >= 3 and n < OMEGA_MIN_ROWS_PER_ITEM * k:
        rows.append(("omega", np.nan, np.nan, np.nan, OMEGA_NOT_ESTIMATED))
    elif k >= 3:
        load, uniq = one_factor_ml(cov)
        omega = _omega_from_fit(load, uniq)
        if k > OMEGA_MAX_BOOT_ITEMS:
            rows.append(("omega", omega, np.nan, np.nan, OMEGA_NO_INTERVAL))
        else:
            omegas = _boot_omegas(covs, uniq / np.diag(cov))
            rows.append(("omega", omega, *_percentile(omegas, prob), OMEGA_METHOD))
    out = pd.DataFrame(rows, columns=_COLUMNS[:5])
    out["n_obs"], out["n_items"], out["n_clusters"], out["n_boot"] = n, k, n_clusters, n_boot
    return out[_COLUMNS]


def scale_internal_consistency(
    data: RatingData, *, n_boot: int = N_BOOT, seed: int = 0, prob: float = CI_PROB
) -> pd.DataFrame:
    """Alpha and omega of every scale of a data set, from its observed ratings.

    Each scale's table has one row per subject x session x judge and one
    column per item of the scale that was rated at least once, holding the
    item score after reverse keying (``data.ratings["score"]``, as in
    :meth:`~caltars_bayes.data.ratings.RatingData.scale_scores`). Rows missing
    one of those items are dropped within that scale (listwise deletion;
    ``n_obs`` says how many rows were used). Subjects are the bootstrap's
    clusters (:func:`internal_consistency`).

    Returns
    -------
    DataFrame with a ``scale`` column and the columns of
    :func:`internal_consistency`; scales with fewer than 2 rated items or 3
    complete rows have no rows.
    """
    nj = data.n_judges
    key = data.session_idx * nj + data.judge_idx
    uk, row = np.unique(key, return_inverse=True)
    mat = np.full((len(uk), data.n_items), np.nan)
    mat[row, data.item_idx] = data.ratings["score"].to_numpy(dtype=float)
    subject = data.session_subject_idx[uk // nj]
    parts = []
    for s, scale in enumerate(data.scales):
        cols = np.flatnonzero(data.item_scale_idx == s)
        cols = cols[np.isfinite(mat[:, cols]).any(axis=0)]
        sub = mat[:, cols]
        keep = np.isfinite(sub).all(axis=1)
        if len(cols) < 2 or keep.sum() < 3:
            continue
        res = internal_consistency(sub[keep], subject[keep], n_boot=n_boot, seed=seed, prob=prob)
        res.insert(0, "scale", scale)
        parts.append(res)
    if not parts:
        return pd.DataFrame(columns=["scale", *_COLUMNS])
    return pd.concat(parts, ignore_index=True)
