"""Tests of caltars_bayes.analysis.classical against published and independent numbers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import optimize, stats

from caltars_bayes._core.errors import DataError
from caltars_bayes.analysis.classical import (
    ANOVA_METHOD,
    REML_METHOD,
    cronbach_alpha,
    feldt_interval,
    icc_shrout_fleiss,
    icc_unbalanced,
    internal_consistency,
    mcdonald_omega,
    one_factor_ml,
    pca_varimax,
    pearson_table,
    reml_variance_components,
    scale_internal_consistency,
    scale_score_icc,
)
from caltars_bayes.analysis.classical.reml import _CrossedREML

# Shrout & Fleiss (1979) worked example: 6 targets x 4 judges.
SF_DATA = np.array(
    [[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]],
    dtype=float,
)
# McGraw & Wong (1996) example data (their Table 6): 10 targets x 2 measurements.
MW_DATA = np.array(
    [[103, 119], [82, 65], [116, 106], [102, 102], [99, 105],
     [98, 100], [104, 107], [62, 85], [97, 101], [107, 110]],
    dtype=float,
)  # fmt: skip
TYPES = ["ICC(1,1)", "ICC(2,1)", "ICC(3,1)", "ICC(1,k)", "ICC(2,k)", "ICC(3,k)"]


def to_long(x: np.ndarray) -> pd.DataFrame:
    n, k = x.shape
    return pd.DataFrame(
        [(f"t{i}", f"j{j}", x[i, j]) for i in range(n) for j in range(k) if np.isfinite(x[i, j])],
        columns=["target", "judge", "score"],
    )


# ---------------------------------------------------------------------------
# balanced ICCs
# ---------------------------------------------------------------------------


def test_shrout_fleiss_published_example() -> None:
    res = icc_shrout_fleiss(SF_DATA)
    assert list(res.columns) == [
        "type", "model", "unit", "k", "icc", "F", "df1", "df2", "p", "ci_low", "ci_high",
    ]  # fmt: skip
    assert list(res["type"]) == TYPES
    assert list(res["model"]) == ["one-way random", "two-way random", "two-way mixed"] * 2
    assert list(res["unit"]) == ["single"] * 3 + ["average"] * 3
    assert (res["k"] == 4).all()
    # Shrout & Fleiss (1979) published coefficients, two decimals
    np.testing.assert_array_equal(res["icc"].round(2), [0.17, 0.29, 0.71, 0.44, 0.62, 0.91])
    # the paper's ANOVA mean squares: BMS 11.24, WMS 6.26, EMS 1.02
    np.testing.assert_allclose(res["F"], [11.24 / 6.26, 11.03, 11.03] * 2, rtol=2e-3)
    np.testing.assert_array_equal(res["df1"], [5] * 6)
    np.testing.assert_array_equal(res["df2"], [18, 15, 15, 18, 15, 15])
    # R psych::ICC(sf) printed output
    np.testing.assert_allclose(res["p"], [0.16477, 0.00013, 0.00013] * 2, atol=5e-6)
    np.testing.assert_allclose(
        res["ci_low"], [-0.133, 0.019, 0.342, -0.884, 0.071, 0.676], atol=5e-4
    )
    np.testing.assert_allclose(res["ci_high"], [0.72, 0.76, 0.95, 0.91, 0.93, 0.99], atol=5e-3)


def test_mcgraw_wong_example_matches_r() -> None:
    # R (DescTools / psych) output for McGraw & Wong's Table 6 data, three decimals.
    res = icc_shrout_fleiss(pd.DataFrame(MW_DATA, columns=["a", "b"]))
    np.testing.assert_allclose(res["icc"], [0.722, 0.720, 0.714, 0.838, 0.837, 0.833], atol=6e-4)
    np.testing.assert_allclose(res["F"], [6.18, 6.00, 6.00, 6.18, 6.00, 6.00], atol=6e-3)
    np.testing.assert_allclose(res["p"], [0.00437, 0.00677, 0.00677] * 2, atol=6e-6)
    np.testing.assert_allclose(res["ci_low"], [0.241, 0.228, 0.197, 0.389, 0.371, 0.329], atol=6e-4)
    np.testing.assert_allclose(
        res["ci_high"], [0.922, 0.922, 0.920, 0.959, 0.959, 0.959], atol=6e-4
    )


def _reference_icc(x: np.ndarray, alpha: float = 0.05) -> dict[str, np.ndarray]:
    """Independent implementation: explicit sums, then McGraw & Wong / psych formulas."""
    n, k = x.shape
    grand = sum(x[i, j] for i in range(n) for j in range(k)) / (n * k)
    row = [sum(x[i, j] for j in range(k)) / k for i in range(n)]
    col = [sum(x[i, j] for i in range(n)) / n for j in range(k)]
    bms = k * sum((r - grand) ** 2 for r in row) / (n - 1)
    jms = n * sum((c - grand) ** 2 for c in col) / (k - 1)
    wms = sum((x[i, j] - row[i]) ** 2 for i in range(n) for j in range(k)) / (n * (k - 1))
    ems = sum((x[i, j] - row[i] - col[j] + grand) ** 2 for i in range(n) for j in range(k)) / (
        (n - 1) * (k - 1)
    )
    icc = np.array(
        [
            (bms - wms) / (bms + (k - 1) * wms),
            (bms - ems) / (bms + (k - 1) * ems + k * (jms - ems) / n),
            (bms - ems) / (bms + (k - 1) * ems),
            (bms - wms) / bms,
            (bms - ems) / (bms + (jms - ems) / n),
            (bms - ems) / bms,
        ]
    )
    q = 1 - alpha / 2
    d1, dw, de = n - 1, n * (k - 1), (n - 1) * (k - 1)
    f1, f3 = bms / wms, bms / ems
    fl1, fu1 = f1 / stats.f.ppf(q, d1, dw), f1 * stats.f.ppf(q, dw, d1)
    fl3, fu3 = f3 / stats.f.ppf(q, d1, de), f3 * stats.f.ppf(q, de, d1)
    # McGraw & Wong (1996) Table 7, case 2A
    r2 = icc[1]
    fj = jms / ems
    a = k * r2 * fj + n * (1 + (k - 1) * r2) - k * r2
    v = (
        (k - 1)
        * (n - 1)
        * a**2
        / ((n - 1) * (k * r2 * fj) ** 2 + (n * (1 + (k - 1) * r2) - k * r2) ** 2)
    )
    fs_u, fs_l = stats.f.ppf(q, n - 1, v), stats.f.ppf(q, v, n - 1)
    l2 = n * (bms - fs_u * ems) / (fs_u * (k * jms + (k * n - k - n) * ems) + n * bms)
    u2 = n * (fs_l * bms - ems) / (k * jms + (k * n - k - n) * ems + n * fs_l * bms)
    low = np.array(
        [
            (fl1 - 1) / (fl1 + k - 1),
            l2,
            (fl3 - 1) / (fl3 + k - 1),
            1 - 1 / fl1,
            k * l2 / (1 + (k - 1) * l2),
            1 - 1 / fl3,
        ]
    )
    high = np.array(
        [
            (fu1 - 1) / (fu1 + k - 1),
            u2,
            (fu3 - 1) / (fu3 + k - 1),
            1 - 1 / fu1,
            k * u2 / (1 + (k - 1) * u2),
            1 - 1 / fu3,
        ]
    )
    f = np.array([f1, f3, f3, f1, f3, f3])
    df2 = np.array([dw, de, de, dw, de, de])
    return {
        "icc": icc,
        "F": f,
        "df2": df2,
        "p": stats.f.sf(f, d1, df2),
        "ci_low": low,
        "ci_high": high,
        "ms": np.array([bms, jms, wms, ems]),
    }


@pytest.mark.parametrize(("n", "k", "seed"), [(12, 3, 0), (30, 5, 1), (8, 2, 2)])
def test_balanced_icc_matches_direct_computation(n: int, k: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1.0, (n, 1)) + rng.normal(0, 0.6, (1, k)) + rng.normal(0, 0.7, (n, k)) + 4.0
    res = icc_shrout_fleiss(x)
    ref = _reference_icc(x)
    for col in ("icc", "F", "df2", "p", "ci_low", "ci_high"):
        np.testing.assert_allclose(res[col], ref[col], rtol=1e-9, atol=1e-12, err_msg=col)
    # The 95% interval contains the point estimate.
    assert (res["ci_low"] < res["icc"]).all() and (res["icc"] < res["ci_high"]).all()
    # alpha is honoured: a 50% interval is narrower.
    narrow = icc_shrout_fleiss(x, alpha=0.5)
    assert (narrow["ci_high"] - narrow["ci_low"] < res["ci_high"] - res["ci_low"]).all()


def test_shrout_fleiss_rejects_incomplete_table() -> None:
    x = SF_DATA.copy()
    x[0, 1] = np.nan
    with pytest.raises(DataError, match="icc_unbalanced"):
        icc_shrout_fleiss(x)
    with pytest.raises(DataError, match="2 targets and 2 judges"):
        icc_shrout_fleiss(SF_DATA[:, :1])


# ---------------------------------------------------------------------------
# unbalanced ICCs (REML)
# ---------------------------------------------------------------------------


def _check_balanced_agreement(x: np.ndarray) -> None:
    ref = _reference_icc(x)
    bms, jms, _, ems = ref["ms"]
    assert bms > ems and jms > ems  # ANOVA estimates positive: REML must coincide
    res = icc_unbalanced(to_long(x), "target", "judge", "score")
    sf = icc_shrout_fleiss(x)
    np.testing.assert_allclose(res["icc"], sf["icc"], atol=1e-3)
    n, k = x.shape
    assert (res["k"] == k).all()
    assert res[["n_targets", "n_judges", "n_obs"]].iloc[0].tolist() == [n, k, n * k]
    assert (res["method"] == REML_METHOD).all()
    # variance components equal the expected-mean-square (ANOVA) solutions
    vc = reml_variance_components(to_long(x), "target", "judge", "score")["variance"]
    np.testing.assert_allclose(
        vc,
        [(bms - ref["ms"][2]) / k, ref["ms"][2], (bms - ems) / k, (jms - ems) / n, ems],
        rtol=1e-4,
    )


def test_unbalanced_equals_shrout_fleiss_on_published_example() -> None:
    _check_balanced_agreement(SF_DATA)


def test_unbalanced_equals_shrout_fleiss_on_random_balanced_data() -> None:
    rng = np.random.default_rng(7)
    x = rng.normal(0, 1, (25, 1)) + rng.normal(0, 0.8, (1, 4)) + rng.normal(0, 0.6, (25, 4))
    _check_balanced_agreement(x)


def _dense_reml(long: pd.DataFrame) -> np.ndarray:
    """Direct REML: build V explicitly, maximise over log variances with Nelder-Mead."""
    y = long["score"].to_numpy(float)
    zt = pd.get_dummies(long["target"]).to_numpy(float)
    zj = pd.get_dummies(long["judge"]).to_numpy(float)
    xm = np.ones((len(y), 1))
    kt, kj = zt @ zt.T, zj @ zj.T
    eye = np.eye(len(y))

    def neg2ll(lv: np.ndarray) -> float:
        st, sj, se = np.exp(lv)
        v = st * kt + sj * kj + se * eye
        vi = np.linalg.inv(v)
        xvx = xm.T @ vi @ xm
        p = vi - vi @ xm @ np.linalg.solve(xvx, xm.T @ vi)
        return float(np.linalg.slogdet(v)[1] + np.linalg.slogdet(xvx)[1] + y @ p @ y)

    res = optimize.minimize(
        neg2ll, np.log([1.0, 0.5, 0.5]), method="Nelder-Mead",
        options={"xatol": 1e-8, "fatol": 1e-10, "maxiter": 4000},
    )  # fmt: skip
    return np.exp(res.x)


def test_reml_matches_dense_likelihood_on_small_unbalanced_design() -> None:
    rng = np.random.default_rng(3)
    t_eff, j_eff = rng.normal(0, 1, 20), rng.normal(0, 0.7, 6)
    rows = []
    for i in range(20):
        for j in rng.choice(6, size=rng.integers(2, 5), replace=False):
            rows.append((f"t{i:02d}", f"j{j}", 2 + t_eff[i] + j_eff[j] + rng.normal(0, 0.6)))
    long = pd.DataFrame(rows, columns=["target", "judge", "score"])
    vc = reml_variance_components(long, "target", "judge", "score")
    two = vc.loc[vc["model"] == "two-way random", "variance"].to_numpy()
    np.testing.assert_allclose(two, _dense_reml(long), rtol=1e-3)


def _small_crossed(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    t_eff, j_eff = rng.normal(0, 1, 30), rng.normal(0, 0.7, 8)
    rows = [
        (i, j, 2 + t_eff[i] + j_eff[j] + rng.normal(0, 0.6))
        for i in range(30)
        for j in rng.choice(8, size=rng.integers(2, 6), replace=False)
    ]
    d = np.array(rows)
    return d[:, 2], d[:, 0].astype(np.intp), d[:, 1].astype(np.intp)


def test_reml_criterion_and_gradient_match_direct_computation() -> None:
    """The absorbed, sparse criterion equals the dense one; its gradient the differences."""
    y, t, j = _small_crossed(3)
    zt, zj = np.eye(30)[t], np.eye(8)[j]
    xm = np.ones((len(y), 1))

    def dense(lg_t: float, lg_j: float) -> float:
        v = np.eye(len(y)) + np.exp(lg_t) * zt @ zt.T + np.exp(lg_j) * zj @ zj.T
        vi = np.linalg.inv(v)
        xvx = xm.T @ vi @ xm
        p = vi - vi @ xm @ xm.T @ vi / xvx[0, 0]
        logdet = np.linalg.slogdet(v)[1] + np.log(xvx[0, 0])
        return float((len(y) - 1) * np.log(y @ p @ y) + logdet)

    for a, n_a, b, n_b, flip in ((t, 30, j, 8, False), (j, 8, t, 30, True)):
        model = _CrossedREML(y, a, n_a, b, n_b)
        for x in ([-1.0, 0.3], [0.5, -2.0], [-7.0, 2.0]):
            xa = np.array(x)
            f, grad = model.objective_gradient(xa)
            assert f == pytest.approx(dense(*(xa[::-1] if flip else xa)), rel=1e-10)
            h = 1e-5
            fd = [(model.objective(xa + e) - model.objective(xa - e)) / (2 * h)
                  for e in np.eye(2) * h]  # fmt: skip
            np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-5)
    one = _CrossedREML(y, t, 30)
    f, grad = one.objective_gradient(np.array([0.2]))
    fd = (one.objective(np.array([0.2 + 1e-5])) - one.objective(np.array([0.2 - 1e-5]))) / 2e-5
    assert grad[0] == pytest.approx(fd, rel=1e-5)
    assert f == pytest.approx(dense(0.2, -50.0), rel=1e-10)


def test_unbalanced_recovers_known_components_where_listwise_deletion_fails() -> None:
    rng = np.random.default_rng(11)
    n_t, n_j = 400, 10
    # effects standardised so that the realised variances are exactly the targets
    t_eff = rng.normal(size=n_t)
    t_eff = (t_eff - t_eff.mean()) / t_eff.std(ddof=1)  # var 1
    j_eff = rng.normal(size=n_j)
    j_eff = (j_eff - j_eff.mean()) / j_eff.std(ddof=1) * np.sqrt(0.3)  # var 0.3
    rows = []
    for i in range(n_t):
        for j in rng.choice(n_j, size=rng.integers(2, 4), replace=False):
            rows.append((i, f"judge{j}", 3 + t_eff[i] + j_eff[j] + rng.normal(0, np.sqrt(0.5))))
    long = pd.DataFrame(rows, columns=["session", "judge", "score"])
    assert long.pivot(index="session", columns="judge", values="score").dropna().empty

    res = icc_unbalanced(long, "session", "judge", "score").set_index("type")
    assert res.loc["ICC(2,1)", "icc"] == pytest.approx(1 / 1.8, abs=0.05)
    assert res.loc["ICC(3,1)", "icc"] == pytest.approx(1 / 1.5, abs=0.05)
    assert res.loc["ICC(1,1)", "icc"] == pytest.approx(1 / 1.8, abs=0.05)
    k = len(long) / n_t
    assert res.loc["ICC(2,k)", "k"] == pytest.approx(k)
    assert res.loc["ICC(2,k)", "icc"] == pytest.approx(k / (0.3 + 0.5 + k), abs=0.05)
    assert res["n_targets"].iloc[0] == n_t and res["n_obs"].iloc[0] == len(long)

    vc = reml_variance_components(long, "session", "judge", "score").set_index("component")
    two = vc.loc[vc["model"] == "two-way random", "variance"]
    assert two["target"] == pytest.approx(1.0, abs=0.15)
    assert two["judge"] == pytest.approx(0.3, abs=0.12)
    assert two["error"] == pytest.approx(0.5, abs=0.07)


def test_unbalanced_average_rows_follow_spearman_brown_with_given_k() -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(0, 1, (15, 1)) + rng.normal(0, 0.5, (1, 4)) + rng.normal(0, 0.8, (15, 4))
    x[rng.random(x.shape) < 0.25] = np.nan
    res = icc_unbalanced(to_long(x), "target", "judge", "score", k=6).set_index("type")
    assert (res["k"] == 6).all()
    for case in "123":
        single = res.loc[f"ICC({case},1)", "icc"]
        assert res.loc[f"ICC({case},k)", "icc"] == pytest.approx(6 * single / (1 + 5 * single))
    # missing scores are absent cells: count matches the observed cells
    assert res["n_obs"].iloc[0] == int(np.isfinite(x).sum())


def test_unbalanced_rejects_repeated_pairs() -> None:
    long = to_long(SF_DATA)
    long = pd.concat([long, long.iloc[[3]]], ignore_index=True)
    with pytest.raises(DataError, match="more than once"):
        icc_unbalanced(long, "target", "judge", "score")


# ---------------------------------------------------------------------------
# scale_score_icc
# ---------------------------------------------------------------------------


def test_scale_score_icc_complete_uses_shrout_fleiss_with_compound_target() -> None:
    long = to_long(SF_DATA)
    long["subject"] = long["target"].str[1].astype(int) // 2
    long["session"] = long["target"].str[1].astype(int) % 2
    res = scale_score_icc(long.drop(columns="target"), ["subject", "session"], "judge", "score")
    assert (res["method"] == ANOVA_METHOD).all()
    np.testing.assert_array_equal(res["icc"].round(2), [0.17, 0.29, 0.71, 0.44, 0.62, 0.91])
    sf = icc_shrout_fleiss(SF_DATA)
    np.testing.assert_allclose(res["ci_low"], sf["ci_low"])
    assert res[["n_targets", "n_judges", "n_obs"]].iloc[0].tolist() == [6, 4, 24]


def test_scale_score_icc_incomplete_uses_reml() -> None:
    x = SF_DATA.copy()
    x[0, 1] = x[3, 2] = np.nan
    long = to_long(x)
    res = scale_score_icc(long, "target", "judge", "score")
    assert (res["method"] == REML_METHOD).all()
    assert res["F"].isna().all() and res["ci_low"].isna().all()
    direct = icc_unbalanced(long, "target", "judge", "score")
    np.testing.assert_allclose(res["icc"], direct["icc"])
    assert res["n_obs"].iloc[0] == 22


# ---------------------------------------------------------------------------
# PCA with varimax
# ---------------------------------------------------------------------------


def _simple_structure(
    seed: int = 0, n: int = 500, strength: list[float] | None = None
) -> tuple[pd.DataFrame, list[int]]:
    rng = np.random.default_rng(seed)
    groups = [0] * 4 + [1] * 4 + [2] * 4
    w = [0.8] * 12 if strength is None else strength
    f = rng.normal(size=(n, 3))
    f[:, 1] += 0.4 * f[:, 0]  # correlated factors: unrotated PC1 is a general factor
    cols = {f"item{i:02d}": w[i] * f[:, g] + rng.normal(0, 0.6, n) for i, g in enumerate(groups)}
    return pd.DataFrame(cols), groups


def _varimax_criterion(load: np.ndarray) -> float:
    h = np.sqrt((load**2).sum(axis=1, keepdims=True))
    z2 = (load / h) ** 2
    return float(np.sum(z2.var(axis=0)))


def test_pca_unrotated_reproduces_eigen_structure() -> None:
    x, _ = _simple_structure(1)
    res = pca_varimax(x, 3, rotate=False)
    corr = x.corr().to_numpy()
    w, v = np.linalg.eigh(corr)
    w, v = w[::-1], v[:, ::-1]
    np.testing.assert_allclose(res.eigenvalues.to_numpy(), w, atol=1e-10)
    assert list(res.eigenvalues.index) == [f"PC{i}" for i in range(1, 13)]
    load = res.loadings.to_numpy()
    # L L' equals the rank-3 eigen reconstruction; each column is +/- sqrt(lambda) v
    np.testing.assert_allclose(load @ load.T, v[:, :3] @ np.diag(w[:3]) @ v[:, :3].T, atol=1e-10)
    for c in range(3):
        col = load[:, c] / np.sqrt(w[c])
        assert abs(abs(col @ v[:, c]) - 1) < 1e-10
        assert load[:, c].sum() > 0
    np.testing.assert_allclose(res.rotation, np.eye(3))
    np.testing.assert_allclose(res.variance_explained["ss_loadings"], w[:3], atol=1e-10)
    np.testing.assert_allclose(res.variance_explained["cumulative"], np.cumsum(w[:3]) / 12)
    assert res.n_obs == 500


def test_pca_varimax_is_an_orthogonal_rotation_maximising_the_criterion() -> None:
    # unequal communalities, so that Kaiser normalisation matters
    x, _ = _simple_structure(2, strength=[1.2, 0.7, 0.4, 0.2] * 3)
    res = pca_varimax(x, 3)
    l0, lr, r = res.unrotated_loadings.to_numpy(), res.loadings.to_numpy(), res.rotation
    np.testing.assert_allclose(r.T @ r, np.eye(3), atol=1e-10)
    np.testing.assert_allclose(lr, l0 @ r, atol=1e-12)
    np.testing.assert_allclose((lr**2).sum(axis=1), (l0**2).sum(axis=1), atol=1e-10)
    assert (lr.sum(axis=0) > 0).all()
    ss = (lr**2).sum(axis=0)
    assert (np.diff(ss) <= 0).all()
    np.testing.assert_allclose(res.variance_explained["ss_loadings"], ss)
    np.testing.assert_allclose(res.variance_explained["proportion"], ss / 12)
    crit = _varimax_criterion(lr)
    assert crit > _varimax_criterion(l0) + 0.1
    # local maximum: no small planar rotation improves the criterion noticeably
    for a, b in [(0, 1), (0, 2), (1, 2)]:
        for angle in (-0.05, -0.01, 0.01, 0.05):
            g = np.eye(3)
            g[[a, a, b, b], [a, b, a, b]] = [
                np.cos(angle), -np.sin(angle), np.sin(angle), np.cos(angle),
            ]  # fmt: skip
            assert _varimax_criterion(lr @ g) <= crit + 1e-6


def test_pca_varimax_recovers_item_groups() -> None:
    x, groups = _simple_structure(3)
    load = pca_varimax(x, 3).loadings
    assert list(load.columns) == ["PC1", "PC2", "PC3"]
    assert list(load.index) == list(x.columns)
    best = load.abs().to_numpy().argmax(axis=1)
    mapping = {g: set(best[np.array(groups) == g]) for g in range(3)}
    assert all(len(m) == 1 for m in mapping.values())  # each group on one component
    assert len(set().union(*mapping.values())) == 3  # distinct components
    primary = load.abs().to_numpy().max(axis=1)
    assert (primary > 0.7).all()
    second = np.sort(load.abs().to_numpy(), axis=1)[:, -2]
    assert (second < 0.3).all()
    # without rotation the structure is not simple: large cross-loadings remain
    unrotated = pca_varimax(x, 3, rotate=False).loadings.abs().to_numpy()
    assert np.sort(unrotated, axis=1)[:, -2].max() > 0.4


def test_pca_rejects_constant_item() -> None:
    x, _ = _simple_structure(4, n=50)
    x["item00"] = 1.0
    with pytest.raises(DataError, match="item00"):
        pca_varimax(x, 2)


# ---------------------------------------------------------------------------
# Pearson table
# ---------------------------------------------------------------------------


def test_pearson_table_hand_example_and_scipy() -> None:
    x = pd.DataFrame({"a": [1, 2, 3, 4, 5, np.nan], "b": [5, 3, 4, 1, 2, 0]})
    y = pd.DataFrame({"c": [2, 4, 5, 4, 5, 9], "d": [1, np.nan, 2, 2, 8, 1]})
    res = pearson_table(x, y)
    assert list(res.columns) == ["x", "y", "r", "n", "p"]
    assert list(zip(res["x"], res["y"], strict=True)) == [
        ("a", "c"), ("a", "d"), ("b", "c"), ("b", "d"),
    ]  # fmt: skip
    # by hand: deviations (-2..2) and (-2,0,1,0,1): r = 6 / sqrt(10 * 6)
    first = res.iloc[0]
    assert first["n"] == 5
    assert first["r"] == pytest.approx(6 / np.sqrt(60))
    t = first["r"] * np.sqrt(3 / (1 - first["r"] ** 2))
    assert first["p"] == pytest.approx(2 * stats.t.sf(t, 3))
    for _, row in res.iterrows():
        ok = x[row["x"]].notna() & y[row["y"]].notna()
        ref = stats.pearsonr(x.loc[ok, row["x"]], y.loc[ok, row["y"]])
        assert row["n"] == ok.sum()
        assert row["r"] == pytest.approx(ref.statistic)
        assert row["p"] == pytest.approx(ref.pvalue)


def test_pearson_table_degenerate_pairs_are_missing() -> None:
    x = pd.DataFrame({"flat": [1.0, 1.0, 1.0, 1.0], "short": [1.0, 2.0, np.nan, np.nan]})
    y = pd.DataFrame({"v": [1.0, 2.0, 3.0, 5.0]})
    res = pearson_table(x, y)
    assert np.isnan(res.loc[0, "r"]) and res.loc[0, "n"] == 4
    assert np.isnan(res.loc[1, "r"]) and res.loc[1, "n"] == 2


# ---------------------------------------------------------------------------
# internal consistency: Cronbach's alpha and McDonald's omega
# ---------------------------------------------------------------------------


def _pandas_alpha(table: pd.DataFrame) -> float:
    """Cronbach's alpha written out with pandas: k/(k-1) (1 - sum var_i / var(sum))."""
    k = table.shape[1]
    return k / (k - 1) * (1 - table.var(ddof=1).sum() / table.sum(axis=1).var(ddof=1))


def _one_factor_sample(
    loadings: np.ndarray, uniques: np.ndarray, n: int, seed: int
) -> tuple[np.ndarray, float, float]:
    """n rows from x = loading * f + e (f ~ N(0, 1), e ~ N(0, unique)) and the population
    alpha and omega of the unit-weighted sum."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 1)) * loadings + rng.normal(size=(n, len(loadings))) * np.sqrt(uniques)
    cov = np.outer(loadings, loadings) + np.diag(uniques)
    k = len(loadings)
    alpha = k / (k - 1) * (1 - np.trace(cov) / cov.sum())
    omega = loadings.sum() ** 2 / (loadings.sum() ** 2 + uniques.sum())
    return x, float(alpha), float(omega)


def test_cronbach_alpha_equals_a_pandas_computation() -> None:
    rng = np.random.default_rng(21)
    table = pd.DataFrame(rng.integers(1, 8, size=(40, 5)) + rng.integers(0, 3, size=(40, 1)))
    assert cronbach_alpha(table) == pytest.approx(_pandas_alpha(table), rel=1e-12)
    res = internal_consistency(table, n_boot=0)
    assert res.loc[res["coefficient"] == "alpha", "estimate"].item() == pytest.approx(
        _pandas_alpha(table), rel=1e-12
    )
    assert res["ci_low"].isna().all() and (res["n_obs"] == 40).all()
    with pytest.raises(DataError, match="missing"):
        cronbach_alpha(table.where(table > 1))


def test_omega_recovers_a_known_one_factor_population() -> None:
    lam = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    psi = np.array([0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
    x, alpha_pop, omega_pop = _one_factor_sample(lam, psi, 40_000, seed=3)
    assert omega_pop == pytest.approx(0.7717, abs=1e-4) and alpha_pop < omega_pop
    load, uniq = one_factor_ml(np.cov(x, rowvar=False))
    np.testing.assert_allclose(load, lam, atol=0.02)
    np.testing.assert_allclose(uniq, psi, atol=0.03)
    assert mcdonald_omega(x) == pytest.approx(omega_pop, abs=0.005)
    assert cronbach_alpha(x) == pytest.approx(alpha_pop, abs=0.005)
    # rescaling an item changes neither the ML fit's standardised solution nor omega's
    # meaning: its loading and unique variance scale with it
    y = x * np.array([1, 2, 1, 1, 1, 1])
    load2, uniq2 = one_factor_ml(np.cov(y, rowvar=False))
    np.testing.assert_allclose(load2 / [1, 2, 1, 1, 1, 1], load, rtol=1e-4)
    np.testing.assert_allclose(uniq2 / [1, 4, 1, 1, 1, 1], uniq, rtol=1e-4)


def test_omega_equals_alpha_for_tau_equivalent_items() -> None:
    # equal loadings, unequal unique variances: population omega == population alpha
    lam = np.full(5, 0.7)
    psi = np.array([0.3, 0.5, 0.7, 0.9, 1.1])
    x, alpha_pop, omega_pop = _one_factor_sample(lam, psi, 40_000, seed=4)
    assert alpha_pop == pytest.approx(omega_pop, rel=1e-12)
    assert mcdonald_omega(x) == pytest.approx(cronbach_alpha(x), abs=0.002)
    assert mcdonald_omega(x) == pytest.approx(omega_pop, abs=0.005)


def test_one_factor_ml_matches_a_direct_maximum_likelihood_fit() -> None:
    """factanal's concentrated fit against minimising log|S| + tr(S Sigma^-1) directly."""
    x, _, _ = _one_factor_sample(np.array([1.2, 0.9, 0.8, 0.5]), np.array([1, 0.8, 1, 1.5]), 300, 5)
    s = np.cov(x, rowvar=False)

    def discrepancy(par: np.ndarray) -> float:
        sigma = np.outer(par[:4], par[:4]) + np.diag(np.exp(par[4:]))
        return np.linalg.slogdet(sigma)[1] + np.trace(s @ np.linalg.inv(sigma))

    direct = optimize.minimize(discrepancy, np.r_[np.ones(4), np.zeros(4)], method="BFGS",
                               options={"gtol": 1e-10})  # fmt: skip
    load, uniq = one_factor_ml(s)
    np.testing.assert_allclose(load, np.abs(direct.x[:4]), atol=1e-3)
    np.testing.assert_allclose(uniq, np.exp(direct.x[4:]), atol=1e-3)


def test_batched_bootstrap_fits_equal_one_at_a_time_fits() -> None:
    from caltars_bayes.analysis.classical.internal import (
        _boot_omegas,
        _bootstrap_covariances,
        _omega_from_fit,
    )

    x, _, _ = _one_factor_sample(np.array([0.9, 0.7, 0.6, 0.5, 0.4]), np.full(5, 0.8), 120, 6)
    cluster = np.repeat(np.arange(40), 3)
    covs = _bootstrap_covariances(x, cluster, 60, seed=1)
    batched = _boot_omegas(covs, np.full(5, 0.5))
    single = [_omega_from_fit(*one_factor_ml(c)) for c in covs]
    np.testing.assert_allclose(batched, single, atol=1e-5)
    # the resampled covariances are those of the rows of the drawn clusters
    rng = np.random.default_rng(1)
    w = rng.multinomial(40, np.full(40, 1 / 40), size=60)
    rows = np.repeat(np.arange(120), np.repeat(w[7], 3))
    np.testing.assert_allclose(covs[7], np.cov(x[rows], rowvar=False), rtol=1e-10)


def test_feldt_covers_with_independent_rows_and_the_cluster_bootstrap_with_clusters() -> None:
    """Why the table bootstraps subjects: rows of one subject share its alliance, and
    Feldt's interval, which treats every row as independent, is then too narrow."""
    from caltars_bayes.analysis.classical.internal import (
        _alpha_from_cov,
        _bootstrap_covariances,
        _percentile,
    )

    rng = np.random.default_rng(0)
    k, lam, psi = 4, np.ones(4), np.full(4, 1.5)
    alpha_pop = k / (k - 1) * (1 - (k + k * 1.5) / (k * k + k * 1.5))
    reps, n_subj, rows = 300, 30, 8
    feldt_iid = feldt_clustered = boot_clustered = 0
    for r in range(reps):
        f = rng.normal(size=60)
        x = f[:, None] * lam + rng.normal(size=(60, k)) * np.sqrt(psi)
        lo, hi = feldt_interval(cronbach_alpha(x), 60, k)
        feldt_iid += lo <= alpha_pop <= hi
        # the same population, 8 rows per subject, 80% of the factor variance shared
        f = np.repeat(rng.normal(size=n_subj) * np.sqrt(0.8), rows)
        f = f + rng.normal(size=n_subj * rows) * np.sqrt(0.2)
        x = f[:, None] * lam + rng.normal(size=(n_subj * rows, k)) * np.sqrt(psi)
        lo, hi = feldt_interval(cronbach_alpha(x), len(x), k)
        feldt_clustered += lo <= alpha_pop <= hi
        covs = _bootstrap_covariances(x, np.repeat(np.arange(n_subj), rows), 400, seed=r)
        lo, hi = _percentile(_alpha_from_cov(covs), 0.95)
        boot_clustered += lo <= alpha_pop <= hi
    # measured: 0.95, 0.72 and 0.85 (percentile intervals from 30 clusters cover a little
    # less than nominal; 0.90 with 1000 resamples in another run of 300)
    assert 0.91 <= feldt_iid / reps <= 0.98
    assert feldt_clustered / reps < 0.82
    assert boot_clustered / reps >= 0.83
    assert boot_clustered - feldt_clustered >= 0.05 * reps


def test_scale_internal_consistency_reverse_keys_and_deletes_incomplete_rows() -> None:
    from caltars_bayes.data.ratings import RatingData
    from caltars_bayes.spec.instrument import parse_instrument

    doc = {
        "instrument": {"name": "RK", "reverse_keyed": ["A4"]},
        "response": {"min": 1, "max": 5},
        "scale": [
            {"code": "A", "name": "A", "items": ["A1", "A2", "A3", "A4"]},
            {"code": "B", "name": "B", "items": ["B1", "B2"]},
        ],
    }
    inst = parse_instrument(doc, "<test>")
    rng = np.random.default_rng(8)
    rows = []
    for s in range(25):
        for ses in (1, 2):
            for j in ("J1", "J2"):
                eta = rng.normal()
                for item, sign in (("A1", 1), ("A2", 1), ("A3", 1), ("A4", -1), ("B1", 1),
                                   ("B2", 1)):  # fmt: skip
                    val = np.clip(np.round(3 + sign * eta + rng.normal(scale=0.8)), 1, 5)
                    rows.append((f"S{s:02d}", str(ses), j, item, int(val)))
    long = pd.DataFrame(rows, columns=["subject", "session", "judge", "item", "rating"])
    long = long.drop(index=[3, 10, 50]).reset_index(drop=True)  # A4, B1 and A3 missing
    data = RatingData.from_frame(long, inst, layout="long")
    res = scale_internal_consistency(data, n_boot=200, seed=1).set_index(["scale", "coefficient"])
    wide = long.pivot_table(index=["subject", "session", "judge"], columns="item", values="rating")
    a = wide[["A1", "A2", "A3", "A4"]].assign(A4=lambda d: 6 - d["A4"]).dropna()
    assert res.loc[("A", "alpha"), "estimate"] == pytest.approx(_pandas_alpha(a), abs=1e-12)
    assert res.loc[("A", "alpha"), "n_obs"] == len(a) == 100 - 2
    assert _pandas_alpha(a) > 0.7 > _pandas_alpha(wide[["A1", "A2", "A3", "A4"]].dropna())
    b = wide[["B1", "B2"]].dropna()
    assert res.loc[("B", "alpha"), "estimate"] == pytest.approx(_pandas_alpha(b), abs=1e-12)
    assert ("B", "omega") not in res.index  # a two-item factor model is not identified
    assert res.loc[("A", "omega"), "n_items"] == 4
    assert (res["n_clusters"] == 25).all() and (res["n_boot"] == 200).all()
    assert (res["ci_low"] < res["estimate"]).all() and (res["estimate"] < res["ci_high"]).all()


def test_omega_guards_many_items_and_few_rows():
    """Omega is not fitted with fewer than 2 complete rows per item, and has no
    bootstrap interval beyond 12 items (the refits' cost); alpha keeps its interval."""
    from caltars_bayes.analysis.classical.internal import (
        OMEGA_MAX_BOOT_ITEMS,
        internal_consistency,
    )

    rng = np.random.default_rng(3)

    def one_factor(n, k):
        f = rng.normal(size=(n, 1))
        return 0.8 * f + 0.6 * rng.normal(size=(n, k))

    few = internal_consistency(one_factor(32, 24), n_boot=50).set_index("coefficient")
    assert np.isnan(few.loc["omega", "estimate"]) and "not estimated" in few.loc["omega", "method"]
    assert np.isfinite(few.loc["alpha", "ci_low"])
    many = internal_consistency(
        one_factor(400, OMEGA_MAX_BOOT_ITEMS + 3), n_boot=50
    ).set_index("coefficient")
    assert 0.8 < many.loc["omega", "estimate"] < 1.0
    assert np.isnan(many.loc["omega", "ci_low"]) and "no interval" in many.loc["omega", "method"]
    small = internal_consistency(one_factor(400, 6), n_boot=50).set_index("coefficient")
    lo, est, hi = small.loc["omega", ["ci_low", "estimate", "ci_high"]]
    assert lo < est < hi
