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
    icc_shrout_fleiss,
    icc_unbalanced,
    pca_varimax,
    pearson_table,
    reml_variance_components,
    scale_score_icc,
)

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
