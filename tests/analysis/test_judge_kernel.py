"""The fused judge-correlation kernel against a plain numpy statement of the same sums."""

from __future__ import annotations

import numpy as np
import pytest

from caltars_bayes.analysis.reliability.judges import _NONE2, _NONE3, _judge_correlations


def _reference(eta, loading, cut, disc, sev, item_scale, offset=None, general=None):
    """(J, K) correlations written with whole arrays: every (J, S, I, C) probability."""
    base = loading[None, :] * eta[:, item_scale]
    if general is not None:
        base = base + general
    mu = disc[:, None, None] * base[None] - sev.T[:, None, item_scale]
    if offset is not None:
        mu = mu + offset[:, :, item_scale]
    p_gt = 1.0 / (1.0 + np.exp(cut[None, None] - mu[..., None]))
    c = np.arange(cut.shape[-1])
    ey = p_gt.sum(-1)
    vy = (p_gt * (2 * c + 1)).sum(-1) - ey**2
    n_k = np.bincount(item_scale)
    avg = np.zeros((len(item_scale), len(n_k)))
    avg[np.arange(len(item_scale)), item_scale] = 1.0 / n_k[item_scale]
    m = np.einsum("jsi,ik->jsk", ey, avg)
    v = np.einsum("jsi,ik->jsk", vy, avg**2)
    e = eta - eta.mean(0)
    mc = m - m.mean(1, keepdims=True)
    cov = (mc * e[None]).mean(1)
    var_x = (mc**2).mean(1) + v.mean(1)
    return cov / np.sqrt(var_x * (e**2).mean(0)[None])


@pytest.mark.parametrize("extras", ["none", "offset", "general", "both"])
def test_kernel_equals_the_array_statement(extras):
    rng = np.random.default_rng(3)
    n_s, n_k, n_j, n_c = 37, 3, 5, 4
    item_scale = np.array([0, 0, 1, 1, 1, 2, 0], dtype=np.int64)
    n_i = len(item_scale)
    eta = rng.normal(size=(n_s, n_k))
    loading = rng.uniform(0.5, 2.0, n_i)
    cut = np.sort(rng.normal(0, 2, (n_i, n_c)), axis=1)
    disc = rng.uniform(0.3, 2.5, n_j)
    sev = rng.normal(0, 1.5, (n_k, n_j))
    offset = rng.normal(0, 0.7, (n_j, n_s, n_k)) if extras in ("offset", "both") else None
    general = rng.normal(0, 0.5, (n_s, n_i)) if extras in ("general", "both") else None
    got = _judge_correlations(
        eta,
        loading,
        cut,
        disc,
        sev,
        item_scale,
        _NONE3 if offset is None else offset,
        _NONE2 if general is None else general,
    )
    want = _reference(eta, loading, cut, disc, sev, item_scale, offset, general)
    np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-13)
    # a judge with more discrimination correlates more with the truth (no offset noise)
    if extras == "none":
        flat_sev = np.zeros_like(sev)
        r = _judge_correlations(eta, loading, cut, disc, flat_sev, item_scale, _NONE3, _NONE2)
        order = np.argsort(disc)
        assert np.all(np.diff(r[order, 0]) > 0)
