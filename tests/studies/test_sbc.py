"""Simulation-based calibration: ranks, uniformity tests, prior draws, a tiny SBC run on Dask.

The statistical machinery is checked without MCMC on a conjugate normal model
(exact posterior: uniform ranks; an overconfident posterior: detected). The
tiny SBC run is the CI smoke test of the whole pipeline; the full SBC is
``benchmarks/sbc_full.py``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from caltars_bayes._core.errors import CaltarsError
from caltars_bayes.cli import main
from caltars_bayes.spec.instrument import load_instrument
from caltars_bayes.studies.sbc import (
    SBCConfig,
    design_data,
    draw_from_prior,
    plot_ecdf_differences,
    quantity_arrays,
    run_sbc,
    sbc_ranks,
    uniformity_tests,
    with_ratings,
)
from caltars_bayes.studies.sbc_uniformity import pit_dataset, pit_values, pot_c_p_value

TINY_TOML = """
[instrument]
name = "TINY"
rater = "observer"
reverse_keyed = ["B2"]

[response]
min = 1
max = 4

[[scale]]
code = "A"
name = "Scale A"
items = ["A1", "A2"]

[[scale]]
code = "B"
name = "Scale B"
items = ["B1", "B2"]
"""


@pytest.fixture(scope="module")
def tiny_instrument(tmp_path_factory):
    path = tmp_path_factory.mktemp("sbc") / "tiny.toml"
    path.write_text(TINY_TOML)
    return load_instrument(path), path


# --------------------------------------------------------------------------- ranks and tests


def test_sbc_ranks_by_hand():
    rng = np.random.default_rng(0)
    draws = np.arange(10, dtype=float)[:, None] * np.array([[1.0, -1.0]])  # (10, 2)
    # L = 5 keeps draws 0, 2, 4, 7, 9 (evenly spaced): column 0 = 0, 2, 4, 7, 9
    ranks = sbc_ranks(np.array([4.5, -100.0]), draws, 5, rng)
    assert ranks.tolist() == [3, 0]
    ranks = sbc_ranks(np.array([100.0, 0.5]), draws, 5, rng)
    assert ranks.tolist() == [5, 5]
    with pytest.raises(ValueError):
        sbc_ranks(np.zeros(2), draws, 11, rng)


def test_pit_values_spread_each_rank_over_its_own_interval():
    L = 3
    r = np.array([0, 0, 1, 1, 0, 1, 2, 3])
    u = pit_values(r, L)
    assert ((u >= r / (L + 1)) & (u < (r + 1) / (L + 1))).all()
    np.testing.assert_array_equal(u, pit_values(r, L))  # seeded by (n, L)
    # uniform ranks give uniform PIT values: mean 1/2, variance 1/12 (n = 4000)
    big = pit_values(np.random.default_rng(0).integers(0, L + 1, size=4000), L)
    assert abs(big.mean() - 0.5) < 4 * np.sqrt(1 / 12 / 4000)
    assert abs(big.var() - 1 / 12) < 0.005


def test_uniform_ranks_pass_and_biased_ranks_fail():
    rng = np.random.default_rng(1)
    n, L = 200, 19
    good = rng.integers(0, L + 1, size=n)
    skew = np.minimum(L, rng.integers(0, L + 1, size=n) + rng.integers(0, 6, size=n))
    df = pd.DataFrame(
        {
            "variable": ["good"] * n + ["skew"] * n,
            "quantity": ["good"] * n + ["skew"] * n,
            "rank": np.concatenate([good, skew]),
        }
    )
    t = uniformity_tests(df, L).set_index("quantity")
    assert t.attrs["level"] == pytest.approx(0.05 / 2)  # Bonferroni over 2 quantities
    assert not t.loc["good", "fails"] and t.loc["good", "pot_c_p"] > 0.05
    assert t.loc["skew", "fails"] and t.loc["skew", "pot_c_p"] < 0.001
    assert t.loc["skew", "mean_rank"] > 0.55 and abs(t.loc["good", "mean_rank"] - 0.5) < 0.05
    assert t.loc["good", "pot_c_p"] == pot_c_p_value(good, L)
    assert np.isnan(t["low_ess_share"]).all()
    # the verdict reads the ranks in simulation order, whatever the row order
    df["sim"] = np.tile(np.arange(n), 2)
    shuffled = df.sample(frac=1.0, random_state=3)
    again = uniformity_tests(shuffled, L).set_index("quantity")
    assert (
        again.loc[["good", "skew"], "pot_c_p"].tolist()
        == t.loc[["good", "skew"], "pot_c_p"].tolist()
    )


def _conjugate_sbc(n_sims: int, sd_factor: float, rng) -> pd.DataFrame:
    """SBC of mu ~ N(0, 1), y_i ~ N(mu, 1), i = 1..5, with exact posterior draws.

    ``sd_factor`` != 1 scales the posterior sd: a wrong ("buggy") posterior.
    """
    ranks = []
    for _ in range(n_sims):
        mu = rng.normal()
        y = rng.normal(mu, 1.0, size=5)
        post_var = 1.0 / (1.0 + 5.0)
        post_mean = post_var * y.sum()
        draws = rng.normal(post_mean, sd_factor * np.sqrt(post_var), size=(99, 1))
        ranks.append(int(sbc_ranks(np.array([mu]), draws, 99, rng)[0]))
    return pd.DataFrame({"variable": "mu", "quantity": "mu", "rank": ranks})


def test_sbc_detects_a_miscalibrated_posterior_without_mcmc():
    rng = np.random.default_rng(7)
    right = uniformity_tests(_conjugate_sbc(300, 1.0, rng), 99).iloc[0]
    narrow = uniformity_tests(_conjugate_sbc(300, 0.5, rng), 99).iloc[0]  # U-shaped ranks
    wide = uniformity_tests(_conjugate_sbc(300, 2.0, rng), 99).iloc[0]  # central ranks
    assert not right["fails"] and right["pot_c_p"] > 0.05
    assert narrow["fails"] and narrow["pot_c_p"] < 1e-4
    assert wide["fails"] and wide["pot_c_p"] < 1e-4


def test_pot_c_is_a_level_alpha_test_on_uniform_ranks():
    """Under uniform ranks the POT-C p-value rejects at 5% about 5% of the time;
    ranks too central (an over-wide posterior) are rejected nearly always."""
    rng = np.random.default_rng(11)
    n, L = 100, 49
    p_null = [pot_c_p_value(rng.integers(0, L + 1, size=n), L) for _ in range(400)]
    assert 0.02 <= np.mean(np.array(p_null) < 0.05) <= 0.09
    central = [np.clip(rng.binomial(L, 0.5, size=n), 0, L) for _ in range(20)]
    assert np.mean([pot_c_p_value(r, L) < 0.05 for r in central]) >= 0.95
    assert pot_c_p_value(np.arange(n) % (L + 1), L) == pot_c_p_value(np.arange(n) % (L + 1), L)


def test_ecdf_figure_has_a_labelled_panel_per_quantity_with_its_p_value():
    rng = np.random.default_rng(2)
    n, L = 40, 9
    df = pd.DataFrame(
        {
            "sim": np.tile(np.arange(n), 3),
            "variable": np.repeat(["a", "a", "b"], n),
            "quantity": np.repeat(["a[x, 1]", "a[y, 1]", "b"], n),
            "rank": np.r_[rng.integers(0, L + 1, 2 * n), np.full(n, L)],  # b: all at the top
        }
    )
    ds = pit_dataset(df, L, ["a", "b"])
    assert list(ds["a"]["a_q"].values) == ["x, 1", "y, 1"] and ds["b"].dims == ("sim",)
    fig = plot_ecdf_differences(df, L)
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible() and ax.get_title()]
    assert titles == ["a\nx, 1", "a\ny, 1", "b"]
    tests = uniformity_tests(df, L).set_index("quantity")
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    for q in ("a[x, 1]", "a[y, 1]", "b"):
        p = tests.loc[q, "pot_c_p"]
        assert f"p={p:.3f}" + (" fails" if tests.loc[q, "fails"] else "") in texts
    assert tests.loc["b", "fails"]
    # the simultaneous band is drawn in every panel
    for ax in fig.axes:
        if ax.get_title():
            assert any("PolyCollection" in type(c).__name__ for c in ax.collections)


# --------------------------------------------------------------------------- prior draws


def test_prior_draws_are_ordered_and_make_valid_data(tiny_instrument):
    from caltars_bayes.model.build import AllianceModel

    inst, _ = tiny_instrument
    cfg = SBCConfig(inst, sims=1, subjects=5, sessions=2, judges=2, draws=20, chains=1, n_ranks=9)
    data0 = design_data(cfg)
    assert (data0.n_subjects, data0.n_judges, data0.n_sessions) == (5, 2, 10)
    am = AllianceModel(data0)
    for seed in (4, 5):
        prior, y = draw_from_prior(am, seed, seed + 100)
        # the model's prior on cutpoints is that of SORTED iid normals
        cut = prior["cutpoints"].transpose(..., "cutpoint").values
        assert (np.diff(cut, axis=-1) > 0).all()
        data = with_ratings(data0, y, "<prior draw>")
        np.testing.assert_array_equal(data.y, y)  # reverse keying round-trips
        assert data.n_ratings == data0.n_ratings
        rev = (data.ratings["item"] == "B2").to_numpy()
        np.testing.assert_array_equal(data.ratings.loc[rev, "rating"], 1 + 4 - (1 + y[rev]))
    q = quantity_arrays(prior, ("factor_corr", "theta", "sd_alliance"), {"subject": ["P01"]})
    assert list(q["factor_corr"]["q"].values) == ["factor_corr[A, B]"]
    assert list(q["theta"]["q"].values) == ["theta[P01, A]", "theta[P01, B]"]
    assert q["sd_alliance"].shape == (1, 1, 2)
    with pytest.raises(CaltarsError):
        with_ratings(data0, np.full(data0.n_ratings, 4), "<bad>")


def test_ratings_follow_the_sorted_cutpoints(tiny_instrument):
    """Simulated ratings come from the prior draw: category shares match its probabilities."""
    from caltars_bayes.model.build import AllianceModel

    inst, _ = tiny_instrument
    cfg = SBCConfig(inst, sims=1, subjects=40, sessions=2, judges=2, draws=20, chains=1, n_ranks=9)
    am = AllianceModel(design_data(cfg))
    prior, y = draw_from_prior(am, 9, 10)
    # mean rating of the first item against the cumulative-logit expectation
    post = prior.isel(chain=0, draw=0)
    d = am.data
    eta = post["theta"].values[d.session_subject_idx] + post["zeta"].values
    item0 = np.asarray(d.item_idx) == 0
    k = int(d.item_scale_idx[0])
    disc = post["discrimination"].values[np.asarray(d.judge_idx)[item0]]
    sev = post["severity"].values[k, np.asarray(d.judge_idx)[item0]]
    mu = disc * float(post["loading"].values[0]) * eta[np.asarray(d.session_idx)[item0], k] - sev
    cut = post["cutpoints"].values[0]
    p_le = 1 / (1 + np.exp(-(cut[None, :] - mu[:, None])))
    expected = (1 - p_le).sum(axis=1)  # E[y] = sum_c P(y > c)
    # Var(y) <= (C - 1)^2 / 4 for C categories: 4 standard errors of the mean at most
    assert abs(y[item0].mean() - expected.mean()) < 4 * np.sqrt(2.25 / item0.sum())


def test_config_checks_n_ranks(tiny_instrument):
    inst, _ = tiny_instrument
    with pytest.raises(CaltarsError, match="n_ranks"):
        SBCConfig(inst, draws=20, chains=2, n_ranks=41)


# --------------------------------------------------------------------------- tiny SBC (CI smoke)


@pytest.mark.slow
def test_tiny_sbc_on_dask_and_cli(tiny_instrument, dask_client, tmp_path, capsys):
    """A few simulations of a tiny design on 2 Dask workers: the CI smoke test of SBC."""
    inst, path = tiny_instrument
    kw = dict(subjects=5, sessions=2, judges=2, draws=40, tune=60, chains=2, n_ranks=19)
    res = run_sbc(inst, 3, out=tmp_path / "sbc", scheduler=dask_client, progress=False, **kw)
    assert not res.run.failed and len(res.run.done) == 3
    r = res.ranks
    assert sorted(r["sim"].unique()) == [1, 2, 3]
    assert r["rank"].between(0, 19).all() and (r["n_ranks"] == 19).all()
    assert {"sd_alliance", "factor_corr", "loading", "reliability"} <= set(r["variable"])
    assert r["truth"].notna().all() and r["post_sd"].gt(0).all()
    rel = r[r["variable"] == "reliability"]
    assert rel["truth"].between(0, 1).all() and len(rel) == 3 * 2
    assert set(res.tests["quantity"]) == set(r["quantity"])
    for name in ("ranks.csv", "sbc_tests.csv", "sbc_ecdf.png", "sbc_ecdf.svg", "sbc.json"):
        assert (tmp_path / "sbc" / name).is_file()
    assert "3 simulation(s)" in res.summary()
    # the CLI resumes the Dask run: more simulations only run the new ones
    args = ["sbc", "--instrument", str(path), "--sims", "4", "--subjects", "5", "--sessions"]
    args += ["2", "--judges", "2", "--draws", "40", "--tune", "60", "--ranks", "19"]
    args += ["--out", str(tmp_path / "sbc"), "--scheduler", "serial", "--quiet"]
    rc = main(args)
    out = capsys.readouterr().out
    assert rc == 0 and "1 task(s) run, 3 already done" in out and "quantities fail" in out
