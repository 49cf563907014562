"""The fast paths that large designs take give the numbers the direct computations give."""

from __future__ import annotations

import numpy as np
import pandas as pd

from caltars_bayes.analysis.classical import scale_score_icc
from caltars_bayes.analysis.reliability import classical_reliability
from caltars_bayes.analysis.reliability.components import (
    _categories,
    _logistic,
    subject_means,
)
from caltars_bayes.analysis.reliability.judges import (
    JUDGE_DRAWS,
    MIN_JUDGE_DRAWS,
    judge_draws_for,
)
from caltars_bayes.model.simulate import simulate_trial


def test_subject_means_equal_the_dense_averaging_matrix() -> None:
    rng = np.random.default_rng(0)
    subj = rng.permutation(np.r_[np.repeat([0, 1, 3], [3, 1, 2])])  # subject 2: no session
    x = rng.normal(size=(4, 2, len(subj), 5))
    n_p = np.bincount(subj)
    avg = np.zeros((len(n_p), len(subj)))
    avg[subj, np.arange(len(subj))] = 1.0 / n_p[subj]
    got = subject_means(x, subj, n_p)
    np.testing.assert_allclose(got, np.einsum("ps,...sj->...pj", avg, x), rtol=1e-12)
    assert (got[..., 2, :] == 0).all()
    assert not np.allclose(got, subject_means(x, np.sort(subj), n_p))  # the order matters


def test_replicated_categories_are_rng_logistic_cut_at_the_cutpoints() -> None:
    cut = np.sort(np.random.default_rng(1).normal(size=(6, 4)), axis=1)  # 6 items, 5 categories
    mu = np.random.default_rng(2).normal(size=(3, 50, 6))
    direct = mu + np.random.default_rng(3).logistic(size=mu.shape)
    ystar = mu + _logistic(np.random.default_rng(3), mu.shape)
    np.testing.assert_allclose(ystar, direct, rtol=1e-13, atol=1e-13)
    y = _categories(ystar, cut, np.empty(mu.shape, dtype=np.int8))
    np.testing.assert_array_equal(y, (direct[..., None] > cut).sum(-1))
    assert set(np.unique(y)) == {0, 1, 2, 3, 4}


def test_one_session_treatment_icc_is_computed_like_the_session_icc(calpas) -> None:
    """With one session per subject the treatment rows are copies: check them directly."""
    trial = simulate_trial(calpas, n_subjects=15, n_sessions=1, n_judges=3, seed=4)
    data = trial.to_rating_data()
    cls = classical_reliability(data)
    scores = data.scale_scores("subject", by_judge=True)
    scale = data.scales[1]
    direct = scale_score_icc(scores[["subject", "judge", scale]].dropna(), ["subject"], "judge",
                             scale)  # fmt: skip
    got = cls[(cls["level"] == "treatment") & (cls["scale"] == scale)]
    np.testing.assert_allclose(got["icc"].to_numpy(), direct["icc"].to_numpy(), rtol=1e-12)
    ses = cls[cls["level"] == "session"].drop(columns="level").reset_index(drop=True)
    trt = cls[cls["level"] == "treatment"].drop(columns="level").reset_index(drop=True)
    pd.testing.assert_frame_equal(ses, trt)


def test_judge_draws_shrink_only_for_very_large_designs() -> None:
    assert judge_draws_for(3, 2080, 30, 4) == JUDGE_DRAWS  # 10x the founding design
    assert judge_draws_for(2972, 1128, 1, 4) == 111  # the real-size crossed design
    assert judge_draws_for(10**5, 10**4, 30, 6) == MIN_JUDGE_DRAWS
