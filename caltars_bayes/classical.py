"""Classical (non-Bayesian) statistics printed beside the posterior results.

Psychotherapy process researchers expect to see the familiar numbers next to
any model-based estimate: intraclass correlations of judges' ratings, the
principal-components-with-varimax solution that the founding studies of the
observer-rated alliance scales used, and plain Pearson correlations.  Every
function here is a pure function of its inputs (pandas / numpy in, pandas
out); nothing is sampled.

Functions
---------
icc_shrout_fleiss
    The six Shrout & Fleiss (1979) intraclass correlations, with F tests and
    95% confidence intervals, for a complete targets x judges table.
icc_unbalanced
    ICC analogues for incomplete, unbalanced crossings of targets and judges,
    from variance components estimated by restricted maximum likelihood.
reml_variance_components
    The variance components behind :func:`icc_unbalanced`.
scale_score_icc
    Long scale scores in, the right one of the two ICC functions out.
pca_varimax
    Principal components of the item correlation matrix, varimax-rotated.
pearson_table
    Pearson r, pairwise-complete n and two-sided p for every column pair.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import linalg, optimize, stats

from caltars_bayes.errors import DataError

__all__ = [
    "ANOVA_METHOD",
    "REML_METHOD",
    "PCAResult",
    "icc_shrout_fleiss",
    "icc_unbalanced",
    "pca_varimax",
    "pearson_table",
    "reml_variance_components",
    "scale_score_icc",
]

#: ``method`` label of ICCs from the balanced two-way ANOVA.
ANOVA_METHOD = "ANOVA (Shrout & Fleiss 1979)"
#: ``method`` label of ICCs from REML variance components.
REML_METHOD = "REML variance components (crossed random effects)"

_ICC_TYPES = ("ICC(1,1)", "ICC(2,1)", "ICC(3,1)", "ICC(1,k)", "ICC(2,k)", "ICC(3,k)")
_ICC_MODELS = ("one-way random", "two-way random", "two-way mixed") * 2
_ICC_UNITS = ("single",) * 3 + ("average",) * 3
_SF_COLUMNS = ["type", "model", "unit", "k", "icc", "F", "df1", "df2", "p", "ci_low", "ci_high"]
_UNBALANCED_COLUMNS = [
    "type", "model", "unit", "k", "icc", "method", "n_targets", "n_judges", "n_obs",
]  # fmt: skip
_SCALE_COLUMNS = [*_SF_COLUMNS, "method", "n_targets", "n_judges", "n_obs"]


# ---------------------------------------------------------------------------
# Balanced ICCs (Shrout & Fleiss 1979; McGraw & Wong 1996)
# ---------------------------------------------------------------------------


def _as_complete_matrix(table: pd.DataFrame | np.ndarray) -> np.ndarray:
    try:
        x = np.asarray(table, dtype=float)
    except (TypeError, ValueError) as exc:
        raise DataError(f"ICC table: ratings must be numeric ({exc})") from None
    if x.ndim != 2:
        raise DataError(f"ICC table: expected a 2-D targets x judges table, got {x.ndim}-D")
    n, k = x.shape
    if n < 2 or k < 2:
        raise DataError(f"ICC table: need at least 2 targets and 2 judges, got {n} x {k}")
    if not np.all(np.isfinite(x)):
        raise DataError(
            "ICC table: missing or non-finite ratings; the Shrout & Fleiss coefficients need "
            "a complete table (use icc_unbalanced for incomplete designs)"
        )
    return x


def icc_shrout_fleiss(table: pd.DataFrame | np.ndarray, alpha: float = 0.05) -> pd.DataFrame:
    """Six Shrout & Fleiss (1979) intraclass correlations of a complete rating table.

    Parameters
    ----------
    table : pandas.DataFrame or numpy.ndarray
        Complete ``n`` targets x ``k`` judges table of ratings: one row per
        rated target (for example a session), one column per judge.  No
        missing values are allowed (see :func:`icc_unbalanced`).
    alpha : float, default 0.05
        One minus the confidence level of the intervals (0.05 gives 95%).

    Returns
    -------
    pandas.DataFrame
        Six rows, in the order ICC(1,1), ICC(2,1), ICC(3,1), ICC(1,k),
        ICC(2,k), ICC(3,k), with columns

        ``type``
            Shrout & Fleiss label, e.g. ``"ICC(2,1)"``; ``k`` in the
            average-measure labels is the number of judges.
        ``model``
            ``"one-way random"`` (case 1), ``"two-way random"`` (case 2,
            absolute agreement) or ``"two-way mixed"`` (case 3, consistency).
        ``unit``
            ``"single"`` (reliability of one judge's rating) or
            ``"average"`` (reliability of the mean of ``k`` judges).
        ``k``
            Number of judges.
        ``icc``
            The coefficient.
        ``F``, ``df1``, ``df2``, ``p``
            F test of "no target variance": for case 1 the between-targets
            mean square over the within-target mean square, with ``n - 1``
            and ``n(k - 1)`` degrees of freedom; for cases 2 and 3 the
            between-targets mean square over the residual mean square, with
            ``n - 1`` and ``(n - 1)(k - 1)`` degrees of freedom; ``p`` is the
            upper-tail probability.
        ``ci_low``, ``ci_high``
            Confidence limits.

    Notes
    -----
    The ratings are decomposed by a two-way analysis of variance without
    interaction into four mean squares: between targets (BMS, ``n - 1`` df),
    between judges (JMS, ``k - 1`` df), residual (EMS, ``(n - 1)(k - 1)``
    df) and within targets (WMS, judges and residual pooled, ``n(k - 1)``
    df).  Then

    - ICC(1,1) = (BMS - WMS) / (BMS + (k - 1) WMS)
    - ICC(2,1) = (BMS - EMS) / (BMS + (k - 1) EMS + k (JMS - EMS) / n)
    - ICC(3,1) = (BMS - EMS) / (BMS + (k - 1) EMS)
    - ICC(1,k) = (BMS - WMS) / BMS
    - ICC(2,k) = (BMS - EMS) / (BMS + (JMS - EMS) / n)
    - ICC(3,k) = (BMS - EMS) / BMS

    Confidence intervals are the exact F-based intervals for cases 1 and 3
    and the Satterthwaite-type approximation of Fleiss & Shrout (1978) for
    case 2 (McGraw & Wong 1996, Table 7), as computed by R's
    ``psych::ICC`` and ``pingouin.intraclass_corr``: for case 1 the observed
    F is divided (lower limit) or multiplied (upper limit) by the F
    quantile and turned back into a correlation; for case 2 the F quantile
    has ``n - 1`` and ``v`` degrees of freedom, ``v`` estimated from the
    judges-to-residual mean square ratio; average-measure limits are the
    Spearman-Brown step-ups of the single-measure limits.

    References
    ----------
    Shrout, P. E., & Fleiss, J. L. (1979). Intraclass correlations: uses in
    assessing rater reliability. Psychological Bulletin, 86, 420-428.
    McGraw, K. O., & Wong, S. P. (1996). Forming inferences about some
    intraclass correlation coefficients. Psychological Methods, 1, 30-46.
    """
    x = _as_complete_matrix(table)
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    n, k = x.shape
    grand = x.mean()
    ss_targets = k * np.sum((x.mean(axis=1) - grand) ** 2)
    ss_judges = n * np.sum((x.mean(axis=0) - grand) ** 2)
    ss_total = np.sum((x - grand) ** 2)
    ss_error = ss_total - ss_targets - ss_judges
    df_b, df_j, df_e, df_w = n - 1, k - 1, (n - 1) * (k - 1), n * (k - 1)
    bms, jms, ems = ss_targets / df_b, ss_judges / df_j, ss_error / df_e
    wms = (ss_judges + ss_error) / df_w

    with np.errstate(divide="ignore", invalid="ignore"):
        icc1 = (bms - wms) / (bms + (k - 1) * wms)
        icc2 = (bms - ems) / (bms + (k - 1) * ems + k * (jms - ems) / n)
        icc3 = (bms - ems) / (bms + (k - 1) * ems)
        icc1k = (bms - wms) / bms
        icc2k = (bms - ems) / (bms + (jms - ems) / n)
        icc3k = (bms - ems) / bms

        q = 1.0 - alpha / 2.0
        f1 = bms / wms
        f3 = bms / ems
        f1_low = f1 / stats.f.ppf(q, df_b, df_w)
        f1_high = f1 * stats.f.ppf(q, df_w, df_b)
        f3_low = f3 / stats.f.ppf(q, df_b, df_e)
        f3_high = f3 * stats.f.ppf(q, df_e, df_b)
        ci1 = ((f1_low - 1) / (f1_low + k - 1), (f1_high - 1) / (f1_high + k - 1))
        ci3 = ((f3_low - 1) / (f3_low + k - 1), (f3_high - 1) / (f3_high + k - 1))
        ci1k = (1 - 1 / f1_low, 1 - 1 / f1_high)
        ci3k = (1 - 1 / f3_low, 1 - 1 / f3_high)

        # Case 2: approximate denominator df v (Fleiss & Shrout 1978).
        fj = jms / ems
        a = n * (1 + (k - 1) * icc2) - k * icc2
        v = (k - 1) * (n - 1) * (k * icc2 * fj + a) ** 2 / ((n - 1) * k**2 * icc2**2 * fj**2 + a**2)
        f_star_high = stats.f.ppf(q, n - 1, v)
        f_star_low = stats.f.ppf(q, v, n - 1)
        denom_common = k * jms + (k * n - k - n) * ems
        l2 = n * (bms - f_star_high * ems) / (f_star_high * denom_common + n * bms)
        u2 = n * (f_star_low * bms - ems) / (denom_common + n * f_star_low * bms)
        ci2 = (l2, u2)
        ci2k = (l2 * k / (1 + l2 * (k - 1)), u2 * k / (1 + u2 * (k - 1)))

    p1 = float(stats.f.sf(f1, df_b, df_w))
    p3 = float(stats.f.sf(f3, df_b, df_e))
    cis = (ci1, ci2, ci3, ci1k, ci2k, ci3k)
    out = pd.DataFrame(
        {
            "type": list(_ICC_TYPES),
            "model": list(_ICC_MODELS),
            "unit": list(_ICC_UNITS),
            "k": [int(k)] * 6,
            "icc": [icc1, icc2, icc3, icc1k, icc2k, icc3k],
            "F": [f1, f3, f3, f1, f3, f3],
            "df1": [df_b] * 6,
            "df2": [df_w, df_e, df_e, df_w, df_e, df_e],
            "p": [p1, p3, p3, p1, p3, p3],
            "ci_low": [float(c[0]) for c in cis],
            "ci_high": [float(c[1]) for c in cis],
        }
    )
    out[["icc", "F"]] = out[["icc", "F"]].astype(float)
    return out[_SF_COLUMNS]


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


def icc_unbalanced(
    long: pd.DataFrame,
    target: str | list[str],
    judge: str,
    value: str,
    k: float | None = None,
) -> pd.DataFrame:
    """ICC analogues for incomplete, unbalanced crossings of targets and judges.

    Nothing is listwise-deleted: every observed rating enters the likelihood,
    whether each target was rated by two judges or by ten, and whether or not
    any judge rated every target.

    Parameters
    ----------
    long : pandas.DataFrame
        One row per rating; each (target, judge) pair at most once.
    target : str or list of str
        Column(s) identifying the rated target (several columns, such as
        subject and session, are combined).
    judge : str
        Column identifying the judge.
    value : str
        Column holding the rating or scale score; rows with a missing value
        are ignored (an absent cell).
    k : float, optional
        Number of judges whose average the ``"average"`` rows describe.
        Defaults to the mean number of judges per target (ratings / targets).

    Returns
    -------
    pandas.DataFrame
        Six rows (ICC(1,1), ICC(2,1), ICC(3,1), ICC(1,k), ICC(2,k),
        ICC(3,k) analogues) with columns

        ``type``
            Shrout & Fleiss label of the coefficient it generalises.
        ``model``
            ``"one-way random"``, ``"two-way random"`` or ``"two-way mixed"``.
        ``unit``
            ``"single"`` or ``"average"`` (of ``k`` judges).
        ``k``
            The ``k`` used for the average rows (also shown on single rows).
        ``icc``
            The coefficient (see Notes).
        ``method``
            :data:`REML_METHOD`.
        ``n_targets``, ``n_judges``, ``n_obs``
            Targets, distinct judges and ratings used.

    Notes
    -----
    Variance components come from :func:`reml_variance_components`.  With
    target variance T, judge variance J, error variance E from the crossed
    two-way model, and target variance T1 and within-target variance W1
    (judges and error pooled) from the one-way model:

    - ICC(1,1) = T1 / (T1 + W1); ICC(1,k) = T1 / (T1 + W1 / k)
    - ICC(2,1) = T / (T + J + E) (absolute agreement of one random judge);
      ICC(2,k) = T / (T + (J + E) / k)
    - ICC(3,1) = T / (T + E) (consistency, judges' leniency removed);
      ICC(3,k) = T / (T + E / k)

    On balanced complete data these equal the Shrout & Fleiss coefficients
    whenever the ANOVA variance estimates are positive.  For ICC(3,·) the
    judge effects are estimated as random; with few judges this differs
    slightly from treating them as fixed.  No F tests or confidence
    intervals are given: the exact F distributions of the balanced case do
    not hold here.
    """
    y, t, j, n_t, n_j = _long_codes(long, target, judge, value)
    vc = _variance_components(y, t, j, n_t, n_j)
    k_used = float(len(y) / n_t) if k is None else float(k)
    if not k_used > 0:
        raise ValueError(f"k must be positive, got {k}")
    t1, w1 = vc["one_way_target"], vc["one_way_within"]
    tv, jv, ev = vc["target"], vc["judge"], vc["error"]

    def ratio(num: float, den: float) -> float:
        return float(num / den) if den > 0 else float("nan")

    iccs = [
        ratio(t1, t1 + w1),
        ratio(tv, tv + jv + ev),
        ratio(tv, tv + ev),
        ratio(t1, t1 + w1 / k_used),
        ratio(tv, tv + (jv + ev) / k_used),
        ratio(tv, tv + ev / k_used),
    ]
    out = pd.DataFrame(
        {
            "type": list(_ICC_TYPES),
            "model": list(_ICC_MODELS),
            "unit": list(_ICC_UNITS),
            "k": [k_used] * 6,
            "icc": iccs,
            "method": [REML_METHOD] * 6,
            "n_targets": [n_t] * 6,
            "n_judges": [n_j] * 6,
            "n_obs": [len(y)] * 6,
        }
    )
    return out[_UNBALANCED_COLUMNS]


def scale_score_icc(
    scores: pd.DataFrame, target: str | list[str], judge: str, value: str
) -> pd.DataFrame:
    """ICCs of long-format scale scores, balanced or not.

    The scores are pivoted to a targets x judges table.  If that table is
    complete, :func:`icc_shrout_fleiss` is used; otherwise
    :func:`icc_unbalanced`.

    Parameters
    ----------
    scores : pandas.DataFrame
        One row per (target, judge) scale score.
    target : str or list of str
        Column(s) identifying the target, e.g. ``["subject", "session"]``.
    judge : str
        Column identifying the judge.
    value : str
        Column holding the scale score; missing values are absent cells.

    Returns
    -------
    pandas.DataFrame
        Six rows (ICC(1,1), ICC(2,1), ICC(3,1), ICC(1,k), ICC(2,k),
        ICC(3,k)) with columns ``type``, ``model``, ``unit``, ``k``,
        ``icc``, ``F``, ``df1``, ``df2``, ``p``, ``ci_low``, ``ci_high``
        (as in :func:`icc_shrout_fleiss`; missing for unbalanced data),
        ``method`` (:data:`ANOVA_METHOD` or :data:`REML_METHOD`),
        ``n_targets``, ``n_judges`` and ``n_obs``.
    """
    targets = [target] if isinstance(target, str) else list(target)
    y, _, _, n_t, n_j = _long_codes(scores, targets, judge, value)  # validates
    df = scores.loc[pd.to_numeric(scores[value]).notna(), [*targets, judge, value]]
    wide = df.set_index([*targets, judge])[value].astype(float).unstack(judge)
    if wide.notna().all().all():
        out = icc_shrout_fleiss(wide)
        out["method"] = ANOVA_METHOD
        out["n_targets"], out["n_judges"], out["n_obs"] = n_t, n_j, len(y)
        out["k"] = out["k"].astype(float)
        return out[_SCALE_COLUMNS]
    out = icc_unbalanced(scores, targets, judge, value)
    for col in ("F", "df1", "df2", "p", "ci_low", "ci_high"):
        out[col] = np.nan
    return out[_SCALE_COLUMNS]


# ---------------------------------------------------------------------------
# Principal components with varimax rotation
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PCAResult:
    """Principal components of an item correlation matrix.

    Attributes
    ----------
    loadings : pandas.DataFrame
        Items x components (``"PC1"`` .. ``"PCn"``): rotated loadings when
        rotation was asked for, otherwise the unrotated ones.
    unrotated_loadings : pandas.DataFrame
        Items x components: eigenvectors times the square roots of their
        eigenvalues, each column's sign chosen so that it sums positive.
    eigenvalues : pandas.Series
        All eigenvalues of the correlation matrix, largest first, indexed
        ``"PC1"`` .. ``"PCp"``.
    variance_explained : pandas.DataFrame
        One row per retained component with columns ``component``,
        ``ss_loadings`` (sum of squared loadings), ``proportion``
        (``ss_loadings`` over the number of items) and ``cumulative``.
    rotation : numpy.ndarray
        Orthogonal ``n x n`` matrix with
        ``loadings = unrotated_loadings @ rotation`` (the identity when not
        rotated).
    n_obs : int
        Rows (complete cases) the correlations were computed from.
    """

    loadings: pd.DataFrame
    unrotated_loadings: pd.DataFrame
    eigenvalues: pd.Series
    variance_explained: pd.DataFrame
    rotation: np.ndarray
    n_obs: int


def _varimax(x: np.ndarray, normalize: bool = True, eps: float = 1e-5) -> np.ndarray:
    """Varimax rotation matrix, the algorithm of R's ``stats::varimax``."""
    p, nc = x.shape
    if nc < 2:
        return np.eye(nc)
    if normalize:
        sc = np.sqrt(np.sum(x**2, axis=1))
        sc[sc == 0] = 1.0
        x = x / sc[:, None]
    rot = np.eye(nc)
    d = 0.0
    for _ in range(1000):
        z = x @ rot
        b = x.T @ (z**3 - z * (np.sum(z**2, axis=0) / p))
        u, s, vt = np.linalg.svd(b)
        rot = u @ vt
        d_past, d = d, float(np.sum(s))
        if d < d_past * (1 + eps):
            break
    return rot


def _names(n: int) -> list[str]:
    return [f"PC{i + 1}" for i in range(n)]


def pca_varimax(X: pd.DataFrame, n_components: int, rotate: bool = True) -> PCAResult:
    """Principal components of the items' correlation matrix, varimax-rotated.

    Parameters
    ----------
    X : pandas.DataFrame
        Observations x items (numeric).  Rows with any missing item are
        dropped (complete cases) so that the correlation matrix is a proper
        correlation matrix.
    n_components : int
        Number of components to retain (1 .. number of items).
    rotate : bool, default True
        Varimax-rotate the retained components.

    Returns
    -------
    PCAResult
        ``loadings`` (items x ``PC1``..``PCn``), ``unrotated_loadings``,
        ``eigenvalues`` (Series, all components), ``variance_explained``
        (columns ``component``, ``ss_loadings``, ``proportion``,
        ``cumulative``), ``rotation`` (matrix) and ``n_obs``.

    Notes
    -----
    The Pearson correlation matrix of the items is eigen-decomposed; the
    unrotated loadings of a component are its eigenvector times the square
    root of its eigenvalue, so an item's loading is its correlation with the
    component.  The first ``n_components`` are kept and rotated by varimax
    with Kaiser normalisation (each item's loadings scaled to unit length
    before rotating and scaled back afterwards; R's ``stats::varimax`` with
    ``normalize = TRUE, eps = 1e-5``), which maximises the summed variance
    of the squared loadings within each component, pushing loadings towards
    0 or +/-1.  Afterwards each component's sign is chosen so that its
    loadings sum positive and the components are ordered by the variance
    they explain (sum of squared loadings) after rotation.  Rotation leaves
    each item's communality (row sum of squared loadings) unchanged.
    """
    if not isinstance(X, pd.DataFrame):
        X = pd.DataFrame(X)
    try:
        data = X.apply(pd.to_numeric, errors="raise").astype(float)
    except (TypeError, ValueError):
        raise DataError("<data frame>: PCA needs numeric item columns") from None
    data = data.dropna(axis=0, how="any")
    p = data.shape[1]
    if p < 2:
        raise DataError("<data frame>: PCA needs at least 2 item columns")
    if not 1 <= n_components <= p:
        raise ValueError(f"n_components must be between 1 and {p}, got {n_components}")
    if len(data) < 3:
        raise DataError(f"<data frame>: PCA needs at least 3 complete rows, got {len(data)}")
    sd = data.std(axis=0, ddof=1)
    flat = [str(c) for c in sd.index[~(sd > 0)]]
    if flat:
        raise DataError(f"<data frame>, column '{flat[0]}': item has no variance")
    corr = np.corrcoef(data.to_numpy(), rowvar=False)
    evals, evecs = np.linalg.eigh(corr)
    order = np.argsort(evals)[::-1]
    evals, evecs = evals[order], evecs[:, order]
    m = n_components
    load0 = evecs[:, :m] * np.sqrt(np.clip(evals[:m], 0.0, None))
    signs0 = np.where(load0.sum(axis=0) < 0, -1.0, 1.0)
    load0 = load0 * signs0
    if rotate and m > 1:
        rot = _varimax(load0)
        load = load0 @ rot
        signs = np.where(load.sum(axis=0) < 0, -1.0, 1.0)
        rot = rot * signs
        ss = np.sum((load0 @ rot) ** 2, axis=0)
        order_r = np.argsort(-ss, kind="stable")
        rot = rot[:, order_r]
    else:
        rot = np.eye(m)
    load = load0 @ rot
    names = _names(m)
    items = list(data.columns)
    ss = np.sum(load**2, axis=0)
    prop = ss / p
    ve = pd.DataFrame(
        {
            "component": names,
            "ss_loadings": ss,
            "proportion": prop,
            "cumulative": np.cumsum(prop),
        }
    )
    return PCAResult(
        loadings=pd.DataFrame(load, index=items, columns=names),
        unrotated_loadings=pd.DataFrame(load0, index=items, columns=names),
        eigenvalues=pd.Series(evals, index=_names(p), name="eigenvalue"),
        variance_explained=ve,
        rotation=rot,
        n_obs=len(data),
    )


# ---------------------------------------------------------------------------
# Pearson correlations
# ---------------------------------------------------------------------------


def pearson_table(x: pd.DataFrame, y: pd.DataFrame) -> pd.DataFrame:
    """Pearson correlation of every column of ``x`` with every column of ``y``.

    Parameters
    ----------
    x, y : pandas.DataFrame
        Numeric columns on the same row index (rows are aligned by index).

    Returns
    -------
    pandas.DataFrame
        One row per (x column, y column) pair, x-major, with columns

        ``x``, ``y``
            The column names.
        ``r``
            Pearson correlation over the rows where both values are present
            (pairwise-complete).
        ``n``
            Number of such rows.
        ``p``
            Two-sided p value of the test of zero correlation: t =
            r sqrt((n - 2) / (1 - r^2)) referred to Student's t with
            ``n - 2`` degrees of freedom.  Missing when ``n < 3`` or either
            column is constant over those rows.
    """
    if not (isinstance(x, pd.DataFrame) and isinstance(y, pd.DataFrame)):
        raise TypeError("pearson_table takes two DataFrames")
    xa, ya = x.align(y, join="inner", axis=0)
    rows = []
    for cx in x.columns:
        xv = pd.to_numeric(xa[cx], errors="coerce").to_numpy(dtype=float)
        for cy in y.columns:
            yv = pd.to_numeric(ya[cy], errors="coerce").to_numpy(dtype=float)
            ok = np.isfinite(xv) & np.isfinite(yv)
            n = int(ok.sum())
            r = p = np.nan
            if n >= 3:
                a, b = xv[ok] - xv[ok].mean(), yv[ok] - yv[ok].mean()
                den = np.sqrt((a @ a) * (b @ b))
                if den > 0:
                    r = float(np.clip((a @ b) / den, -1.0, 1.0))
                    if abs(r) < 1.0:
                        t = r * np.sqrt((n - 2) / (1.0 - r * r))
                        p = float(2.0 * stats.t.sf(abs(t), n - 2))
                    else:
                        p = 0.0
            rows.append((cx, cy, r, n, p))
    return pd.DataFrame(rows, columns=["x", "y", "r", "n", "p"])
