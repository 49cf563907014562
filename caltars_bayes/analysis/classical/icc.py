"""Intraclass correlations of judges' ratings, balanced (Shrout & Fleiss) or not (REML).

icc_shrout_fleiss
    The six Shrout & Fleiss (1979) intraclass correlations, with F tests and
    95% confidence intervals, for a complete targets x judges table.
icc_unbalanced
    ICC analogues for incomplete, unbalanced crossings of targets and judges,
    from variance components estimated by restricted maximum likelihood
    (:mod:`caltars_bayes.analysis.classical.reml`).
scale_score_icc
    Long scale scores in, the right one of the two ICC functions out.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from caltars_bayes._core.errors import DataError
from caltars_bayes.analysis.classical.reml import _long_codes, _variance_components

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


def _mean_squares(x: np.ndarray) -> tuple[float, float, float, float]:
    """Mean squares of the two-way ANOVA without interaction of a complete table.

    Between targets (BMS), between judges (JMS), residual (EMS) and within
    targets (WMS, judges and residual pooled).
    """
    n, k = x.shape
    grand = x.mean()
    ss_targets = k * np.sum((x.mean(axis=1) - grand) ** 2)
    ss_judges = n * np.sum((x.mean(axis=0) - grand) ** 2)
    ss_total = np.sum((x - grand) ** 2)
    ss_error = ss_total - ss_targets - ss_judges
    df_b, df_j, df_e, df_w = n - 1, k - 1, (n - 1) * (k - 1), n * (k - 1)
    bms, jms, ems = ss_targets / df_b, ss_judges / df_j, ss_error / df_e
    wms = (ss_judges + ss_error) / df_w
    return bms, jms, ems, wms


def _f_interval(
    f: float, df1: int, df2: int, k: int, q: float
) -> tuple[tuple[float, float], tuple[float, float]]:
    """Exact F-based confidence limits of the single- and average-measure ICC (cases 1, 3).

    The observed ``f`` is divided (lower limit) or multiplied (upper limit) by
    the F quantile (probability ``q``) and turned back into a correlation.
    """
    f_low = f / stats.f.ppf(q, df1, df2)
    f_high = f * stats.f.ppf(q, df2, df1)
    single = ((f_low - 1) / (f_low + k - 1), (f_high - 1) / (f_high + k - 1))
    average = (1 - 1 / f_low, 1 - 1 / f_high)
    return single, average


def _case2_interval(
    bms: float, jms: float, ems: float, n: int, k: int, icc2: float, q: float
) -> tuple[float, float]:
    """Confidence limits of ICC(2,1): the approximate F interval of Fleiss & Shrout (1978).

    The F quantile (probability ``q``) has ``n - 1`` and ``v`` degrees of
    freedom, ``v`` estimated from the judges-to-residual mean square ratio.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        # Case 2: approximate denominator df v (Fleiss & Shrout 1978).
        fj = jms / ems
        a = n * (1 + (k - 1) * icc2) - k * icc2
        v = (k - 1) * (n - 1) * (k * icc2 * fj + a) ** 2 / ((n - 1) * k**2 * icc2**2 * fj**2 + a**2)
        f_star_high = stats.f.ppf(q, n - 1, v)
        f_star_low = stats.f.ppf(q, v, n - 1)
        denom_common = k * jms + (k * n - k - n) * ems
        l2 = n * (bms - f_star_high * ems) / (f_star_high * denom_common + n * bms)
        u2 = n * (f_star_low * bms - ems) / (denom_common + n * f_star_low * bms)
    return l2, u2


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
    bms, jms, ems, wms = _mean_squares(x)
    df_b, df_e, df_w = n - 1, (n - 1) * (k - 1), n * (k - 1)

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
        ci1, ci1k = _f_interval(f1, df_b, df_w, k, q)
        ci3, ci3k = _f_interval(f3, df_b, df_e, k, q)
        l2, u2 = ci2 = _case2_interval(bms, jms, ems, n, k, icc2, q)
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
