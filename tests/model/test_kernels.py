"""The fused cumulative-logit Op and its vectorised exp/log1p, against numpy and
the plain PyTensor graph it replaces, on every backend the samplers use."""

from __future__ import annotations

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest

from caltars_bayes.model.components import _cutpoint_tables, cumulative_logit_logp
from caltars_bayes.model.kernels import (
    CumulativeLogit,
    CumulativeLogitSum,
    cumulative_logit,
    fuse_density_sums,
    vexp,
    vlog1p,
)


def _ulp_error(got: np.ndarray, ref: np.ndarray) -> np.ndarray:
    return np.abs(got - ref) / np.spacing(np.abs(ref))


def test_vexp_is_accurate_to_an_ulp_over_the_double_range():
    rng = np.random.default_rng(1)
    x = np.concatenate(
        [rng.uniform(-708, 708, 100_000), rng.normal(0, 1, 100_000), [0.0, -0.0, 1e-300, -1e-17]]
    )
    out = np.empty_like(x)
    vexp(x, out)
    assert _ulp_error(out, np.exp(x)).max() <= 1.0
    # beyond +-708 the argument is clipped (documented), NaN stays NaN
    special = np.empty(3)
    vexp(np.array([np.nan, 800.0, -800.0]), special)
    assert np.isnan(special[0])
    assert special[1] == pytest.approx(np.exp(708.0))
    assert special[2] == pytest.approx(np.exp(-708.0))


def test_vlog1p_is_accurate_from_subnormal_to_huge_arguments():
    rng = np.random.default_rng(2)
    z = np.concatenate(
        [
            10.0 ** rng.uniform(-320, 308, 100_000),
            rng.uniform(0, 3, 100_000),
            [0.0, 1e-17, 5e-324, 1.0, np.sqrt(2) - 1, np.sqrt(2), 1e308],
        ]
    )
    out = np.empty_like(z)
    vlog1p(z, out)
    ref = np.log1p(z)
    assert out[z == 0] == 0.0
    assert _ulp_error(out[ref > 0], ref[ref > 0]).max() <= 4.0
    special = np.empty(1)
    vlog1p(np.array([np.nan]), special)
    assert np.isnan(special[0])


def _reference_logp(y, mu, cut, row):
    """The density as the plain PyTensor graph used before the fused Op."""
    cut, t_hi, t_lo, log_gap = _cutpoint_tables(cut)
    n_cut = cut.shape[1]
    k = row * (n_cut + 1) + y
    below_top = pt.cast(pt.lt(y, n_cut), "float64")
    e = pt.exp(-mu)
    h = t_hi.ravel()[k] * e
    lo = t_lo.ravel()[k] * e
    return log_gap.ravel()[k] - below_top * mu - pt.log1p(h + lo + h * lo)


def _problem(seed: int, n: int = 4000, rows: int = 7, n_cat: int = 5):
    rng = np.random.default_rng(seed)
    cut = np.sort(rng.normal(0, 2, (rows, n_cat - 1)), axis=1)
    cut[0] = [-30.0, -29.9999, 0.0, 40.0]  # near-equal and far-apart cutpoints
    mu = np.concatenate([rng.normal(0, 3, n - 6), [-60.0, 60.0, 0.0, 1e-9, -35.0, 45.0]])
    y = rng.integers(0, n_cat, n)
    y[-6:] = [0, n_cat - 1, 0, n_cat - 1, 1, 3]
    row = rng.integers(0, rows, n)
    row[-6:] = 0
    return y, mu, cut, row


@pytest.mark.parametrize("mode", ["NUMBA", "FAST_RUN", "JAX"])
def test_fused_density_and_gradient_equal_the_plain_graph(mode):
    if mode == "JAX":
        pytest.importorskip("jax")
    y, mu0, cut0, row = _problem(3)
    # static shapes, as in a model (JAX compiles only those)
    mu = pt.tensor("mu", shape=mu0.shape, dtype="float64")
    cut = pt.tensor("cut", shape=cut0.shape, dtype="float64")
    g = pt.tensor("g", shape=mu0.shape, dtype="float64")  # any output gradient, not only ones
    ours = cumulative_logit_logp(y, mu, cut, row)
    ref = _reference_logp(y, mu, cut, row)
    outs = []
    for lp in (ours, ref):
        weighted = pt.sum(lp * g)
        outs += [lp, *pt.grad(weighted, [mu, cut])]
    f = pytensor.function([mu, cut, g], outs, mode=mode)
    gv = np.random.default_rng(4).uniform(0.5, 2.0, mu0.size)
    lp_o, dmu_o, dcut_o, lp_r, dmu_r, dcut_r = f(mu0, cut0, gv)
    assert np.all(np.isfinite(lp_o)) and np.all(lp_o <= 0)
    np.testing.assert_allclose(lp_o, lp_r, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dmu_o, dmu_r, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dcut_o, dcut_r, rtol=1e-9, atol=1e-9)
    # and the probabilities are those of the logistic cumulative model
    p_hi = 1 / (1 + np.exp(-(np.column_stack([cut0, np.full(len(cut0), np.inf)])[row, y] - mu0)))
    lo_cut = np.column_stack([np.full(len(cut0), -np.inf), cut0])[row, y]
    p_lo = 1 / (1 + np.exp(-(lo_cut - mu0)))
    ok = p_hi - p_lo > 1e-6  # where the direct difference does not cancel
    assert ok.mean() > 0.9
    np.testing.assert_allclose(np.exp(lp_o[ok]), (p_hi - p_lo)[ok], rtol=1e-8)


def test_fused_gradient_matches_finite_differences():
    y, mu0, cut0, row = _problem(5, n=60, rows=3)
    cut0[0] = [-1.0, -0.2, 0.5, 1.5]

    def f(mu, cut):
        return pt.sum(cumulative_logit_logp(y, mu, cut, row) * np.linspace(0.5, 1.5, 60))

    pytensor.gradient.verify_grad(
        f, [np.clip(mu0, -5, 5), cut0], rng=np.random.default_rng(6), mode="NUMBA"
    )


def test_fused_op_broadcasts_and_propagates_nan():
    cut = np.array([[-1.0, 0.0, 1.0]])
    t = _cutpoint_tables(cut)
    lp = cumulative_logit(
        pt.as_tensor_variable(np.array([[0.0], [np.nan]])),
        t[1],
        t[2],
        t[3],
        np.array([0, 3]),  # rows 0, categories 0 and 3: broadcast to 2 x 2
        4,
    )
    out = pytensor.function([], lp, mode="NUMBA")()
    assert out.shape == (2, 2)
    # P(y = 0) = logistic(-1 - 0), P(y = 3) = 1 - logistic(1 - 0): both 1 / (1 + e)
    np.testing.assert_allclose(out[0], np.log([1 / (1 + np.e)] * 2))
    assert np.isnan(out[1]).all()


@pytest.mark.parametrize("mode", ["NUMBA", "FAST_RUN"])
@pytest.mark.parametrize("n", [4000, 2051, 7])  # blocks, a ragged last block, tiny
def test_summed_op_equals_the_sum_and_its_gradient(mode, n):
    """``fuse_density_sums`` swaps Sum(CumulativeLogit) for the one-pass summed Op;
    value and gradient (also scaled by an outer factor) equal the unfused graph's."""
    y, mu0, cut0, row = _problem(7, n=n)
    mu = pt.tensor("mu", shape=mu0.shape, dtype="float64")
    cut = pt.tensor("cut", shape=cut0.shape, dtype="float64")
    scale = pt.dscalar("scale")
    total = scale * pt.sum(cumulative_logit_logp(y, mu, cut, row)) + pt.sum(mu**2)
    [fused] = fuse_density_sums([total])
    ops = [type(a.op) for a in pytensor.graph.traversal.applys_between([mu, cut], [fused])]
    assert CumulativeLogitSum in ops and CumulativeLogit not in ops
    outs = [v for t in (total, fused) for v in (t, *pt.grad(t, [mu, cut]))]
    f = pytensor.function([mu, cut, scale], outs, mode=mode)
    ref_v, ref_dmu, ref_dcut, v, dmu, dcut = f(mu0, cut0, 1.7)
    np.testing.assert_allclose(v, ref_v, rtol=1e-13)
    np.testing.assert_allclose(dmu, ref_dmu, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dcut, ref_dcut, rtol=1e-10, atol=1e-10)


def test_fuse_density_sums_leaves_other_graphs_alone():
    mu = pt.dvector("mu")
    per_rating = cumulative_logit(mu, np.ones(2), np.zeros(2), np.zeros(2), np.zeros(3, int), 2)
    weighted = pt.sum(per_rating * 2.0)  # not a plain sum: left as it is
    assert fuse_density_sums([weighted])[0] is weighted
    [summed] = fuse_density_sums([pt.sum(per_rating)])
    ops = [type(a.op) for a in pytensor.graph.traversal.applys_between([mu], [summed])]
    assert ops.count(CumulativeLogitSum) == 1


def test_the_samplers_compiled_density_uses_the_summed_op(tiny_trial):
    """``compile_flat`` (nutpie's log density and gradient) runs the one-pass Op."""
    from caltars_bayes.inference.flat_logp import compile_flat
    from caltars_bayes.model.build import AllianceModel

    flat = compile_flat(AllianceModel(tiny_trial.to_rating_data()).model)
    assert flat is not None
    ops = {type(node.op) for node in flat.logp_fn.maker.fgraph.apply_nodes}
    assert CumulativeLogitSum in ops
    assert CumulativeLogit not in ops
