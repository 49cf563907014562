"""The model's building blocks as PyMC/PyTensor pieces: priors, the cutpoint
transform, the cumulative-logit likelihood, sum-to-zero bases, and the
subject/session and covariate blocks that :class:`~caltars_bayes.model.build.AllianceModel`
assembles.

Each item's cutpoints are sampled as their mean and the logs of the gaps
between neighbours (:class:`CentredOrdered`; same prior, same posterior):
with PyMC's ``ordered`` transform the lowest cutpoint carries the item's
location, so the item's location and its first gap are correlated coordinates
and the lowest cutpoints mixed slowest (see ``docs/model.md``).

The likelihood is a hand-written vectorised cumulative-logit log density over
one long vector of observed ratings (missing ratings are simply absent)::

    log P(y = c) = log(logistic(tau_hi - mu) - logistic(tau_lo - mu))

evaluated on the numerically safe side, with ``tau_lo = -inf`` for the lowest
and ``tau_hi = +inf`` for the highest category. No probability table is built.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pymc as pm
import pytensor.tensor as pt
from pytensor.tensor.linalg import solve_triangular

from caltars_bayes.data.ratings import RatingData
from caltars_bayes.model.kernels import cumulative_logit
from caltars_bayes.spec.instrument import Prior, Priors


def prior_rv(name: str, prior: Prior, **kwargs: Any) -> pt.TensorVariable:
    """Create a PyMC random variable from a spec :class:`Prior` (no eval: a fixed lookup)."""
    family = {
        "Normal": pm.Normal,
        "HalfNormal": pm.HalfNormal,
        "LogNormal": pm.LogNormal,
        "Exponential": pm.Exponential,
        "Gamma": pm.Gamma,
        "HalfStudentT": pm.HalfStudentT,
        "StudentT": pm.StudentT,
    }[prior.dist]
    return family(name, **prior.params, **kwargs)


class CentredOrdered(pm.distributions.transforms.Transform):
    """``n`` ordered values from their mean and the logs of their ``n - 1`` gaps.

    ``y[0]`` is the mean of the ordered values and ``y[1:]`` the logs of the
    gaps between neighbours: ``x = y[0] + s - mean(s)`` with ``s`` the running
    sum of the gaps (``s_0 = 0``), a constant matrix times ``exp(y[1:])``.
    PyMC's ``ordered`` transform starts from the lowest value instead, so moving
    the middle of a set of cutpoints moves the lowest one and every gap against
    it; here the location and the spacing are separate coordinates. The
    Jacobian of ``(mean, gaps) -> x`` has determinant 1, so
    ``log |J| = sum(y[1:])``.
    """

    name = "centred_ordered"
    ndim_supp = 1

    def __init__(self, n: int) -> None:
        self.n = n
        before = np.tri(n, n - 1, -1).T  # [j, k] = 1 where gap j lies below value k
        self._spread = before - before.mean(axis=1, keepdims=True)

    def backward(self, value, *inputs):
        return value[..., 0][..., None] + pt.dot(pt.exp(value[..., 1:]), self._spread)

    def forward(self, value, *inputs):
        loc = value.mean(axis=-1, keepdims=True)
        return pt.concatenate([loc, pt.log(value[..., 1:] - value[..., :-1])], axis=-1)

    def log_jac_det(self, value, *inputs):
        return pt.sum(value[..., 1:], axis=-1)


def cumulative_logit_logp(
    y: pt.TensorLike, mu: pt.TensorLike, cutpoints: pt.TensorLike, row: pt.TensorLike
) -> pt.TensorVariable:
    """Log probability of ordinal ratings under a cumulative-logit (graded response) model.

    ``y`` are 0-based categories, ``mu`` the linear predictor per rating,
    ``cutpoints`` a table (rows x C-1) of ordered cutpoints and ``row`` the table
    row each rating uses. ``P(y <= c) = logistic(cutpoints[row, c] - mu)``.

    Written for speed (it is most of the cost of every gradient): with
    ``E = exp(-mu)`` and ``T = exp(tau)``, the probability of the category
    between cutpoints ``tau_lo < tau_hi`` is
    ``E (T_hi - T_lo) / ((1 + T_hi E)(1 + T_lo E))``, so
    ``log p = L - mu - log1p(h + l + h l)`` with ``h = T_hi E``, ``l = T_lo E``
    and ``L = log(T_hi - T_lo)`` computed per cutpoint pair (a small table).
    One exp and one log1p per rating instead of two logistic functions and a
    log, with no cancellation between probabilities. The bottom category has
    ``T_lo = 0``; the top one ``log p = -log1p(l)`` (``L = 0`` and no ``-mu``).
    Absolute error is about one ulp of ``|tau - mu|`` (1e-14 at 90 logits).
    The per-rating work is one fused Op (:mod:`caltars_bayes.model.kernels`).
    """
    cut, t_hi, t_lo, log_gap = _cutpoint_tables(cutpoints)
    n_cat = cut.shape[1] + 1
    k = pt.cast(row, "int64") * n_cat + pt.cast(y, "int64")
    return cumulative_logit(mu, t_hi, t_lo, log_gap, k, n_cat)


def _cutpoint_tables(cutpoints: pt.TensorLike) -> tuple[pt.TensorVariable, ...]:
    """The cutpoint table (rows x C-1) and, per row and category (rows x C),
    ``T_hi``, ``T_lo`` and ``L = log(T_hi - T_lo)`` (see cumulative_logit_logp)."""
    cut = pt.as_tensor_variable(cutpoints)
    while cut.ndim > 2:  # batch dims added by the gufunc signature of CustomDist
        cut = cut[0]
    zero = pt.zeros((cut.shape[0], 1), dtype=cut.dtype)
    t_cut = pt.exp(cut)
    t_hi = pt.concatenate([t_cut, zero], axis=1)
    t_lo = pt.concatenate([zero, t_cut], axis=1)
    # log(T_hi - T_lo) = tau_hi + log(1 - exp(tau_lo - tau_hi))
    gap = cut[:, 1:] + pt.log1mexp(cut[:, :-1] - cut[:, 1:])
    log_gap = pt.concatenate([cut[:, :1], gap, zero], axis=1)
    return cut, t_hi, t_lo, log_gap


def cumulative_logit_logp_dense(
    y: pt.TensorLike, mu: pt.TensorLike, cutpoints: pt.TensorLike
) -> pt.TensorVariable:
    """``cumulative_logit_logp`` for ratings in a (..., item) array with one
    cutpoint row per item (the dense likelihood layout).

    The same formula, but each rating's entries of the per-category tables are
    picked by comparing its category with every category (a one-hot sum over
    the last axis) instead of by an index gather. The gradient is then sums over
    sessions and judges (reductions) rather than a scatter-add of every rating
    into a small table, which on a GPU serialises on atomic collisions.
    """
    cut, t_hi, t_lo, log_gap = _cutpoint_tables(cutpoints)
    n_cut = cut.shape[1]
    yy = pt.cast(y, "int64")
    # categories 0..C-1 without pt.arange, which JAX needs with constant bounds
    categories = pt.cumsum(pt.ones_like(t_hi[0], dtype="int64")) - 1
    one_hot = pt.eq(yy[..., None], categories)  # (..., item, C)

    def pick(table: pt.TensorVariable) -> pt.TensorVariable:
        return pt.sum(pt.switch(one_hot, table, 0.0), axis=-1)

    mu_t = pt.as_tensor_variable(mu)
    below_top = pt.cast(pt.lt(yy, n_cut), mu_t.dtype)
    e = pt.exp(-mu_t)
    h = pick(t_hi) * e
    lo = pick(t_lo) * e
    return pick(log_gap) - below_top * mu_t - pt.log1p(h + lo + h * lo)


def _cumulative_logit_random(mu, cutpoints, row, rng=None, size=None):
    """Draw ratings from the cumulative-logit model (numpy; for predictive checks)."""
    mu = np.asarray(mu)
    cut = np.asarray(cutpoints)
    while cut.ndim > 2:  # broadcast batch dims added by the gufunc signature
        cut = cut[0]
    tau = cut[np.asarray(row, dtype=int)]
    if size is not None:
        mu = np.broadcast_to(mu, size)
        tau = np.broadcast_to(tau, (*tuple(np.atleast_1d(size)), tau.shape[-1]))
    cum = 1.0 / (1.0 + np.exp(-(tau - mu[..., None])))
    u = rng.uniform(size=mu.shape)
    return (u[..., None] > cum).sum(-1)


def _cumulative_logit_random_dense(mu, cutpoints, rng=None, size=None):
    """Draw ratings in the dense likelihood layout (cutpoints: one row per item)."""
    cut = np.asarray(cutpoints)
    while cut.ndim > 2:
        cut = cut[0]
    return _cumulative_logit_random(mu, cut, np.arange(cut.shape[0]), rng=rng, size=size)


def sum_to_zero_basis(
    groups: np.ndarray, n_groups: int, labels: list[str]
) -> tuple[np.ndarray, list[str]]:
    """Orthonormal basis of the vectors that sum to zero within each group.

    Returns an ``n x (n - number of non-empty groups)`` matrix of Helmert
    contrasts (column ``j`` of a group: its first ``j`` members against member
    ``j + 1``, scaled to unit length) and a label per column.
    """
    n = len(groups)
    cols, names = [], []
    for g in range(n_groups):
        idx = np.flatnonzero(groups == g)
        for j in range(1, len(idx)):
            v = np.zeros(n)
            v[idx[:j]] = 1.0
            v[idx[j]] = -float(j)
            cols.append(v / np.sqrt(j * (j + 1.0)))
            names.append(f"{labels[idx[j]]} vs earlier")
    return (np.column_stack(cols) if cols else np.zeros((n, 0))), names


def origin_sd(data: RatingData) -> float:
    """Spread given to the subjects' average (not identified) in centred form.

    About the posterior SD of one subject's factor score: ``1 / sqrt(0.25 n)``
    for ``n`` ratings per subject and scale (a rating of a graded-response item
    carries roughly 0.25 units of Fisher information). Any value gives the same
    posterior for every reported quantity (see :func:`_pin_origin`); this one
    makes the direction about as wide as the others, so NUTS neither crawls
    along it nor shrinks its step for it.
    """
    n = np.bincount(data.subject_idx, minlength=data.n_subjects) / max(data.n_scales, 1)
    return float(1.0 / np.sqrt(0.25 * max(float(np.median(n)), 1.0)))


def _subject_session_block(
    chol_cov: pt.TensorVariable,
    sd_session: pt.TensorVariable,
    d: RatingData,
    tau: float,
    k: int,
    session_subject: pt.TensorVariable,
) -> tuple[pt.TensorVariable, pt.TensorVariable]:
    """Subject factors and session deviations, sampled along what the data see.

    The model is unchanged: ``theta_raw[p] ~ MVN(0, S)`` with ``S`` the factor
    covariance, and ``zeta[s] ~ Normal(0, sd_session)`` independently. But the
    ratings of subject ``p`` see only ``u[p] = theta_raw[p] + m[p]`` (``m``
    the average deviation of p's ``n`` sessions) and each session's departure
    ``w[s] = zeta[s] - m[p]``. Sampled as ``theta_raw`` and ``zeta``, a rise in
    ``theta_raw`` offset by a fall in every ``zeta`` of the subject leaves the
    likelihood unchanged: posterior correlation about -0.8 between a subject's
    factor and its average deviation on the founding design, a ridge that
    needs longer trajectories per effective draw (docs/model.md, "What sets
    the trajectory length now").

    Here, with ``D = diag(sd_session^2) / n`` and standard normal ``b``
    (``theta_z``) and ``z`` (``zeta_z``):

        u ~ MVN(0, S + D)                           (``subject_mean``, centred)
        theta_raw = A u + chol(B) b,  A = S (S + D)^-1,  B = D - D (S + D)^-1 D
        zeta[s] = (u - theta_raw)[p] + sd_session (z[s] - mean of z over p's sessions)

    which gives ``theta_raw`` and ``m = u - theta_raw`` their prior laws,
    independent of each other (``theta_raw | u`` is the Gaussian conditional),
    and the within-subject departures theirs (deviations of iid normals from
    their mean); so ``zeta`` is iid ``Normal(0, sd_session)`` as before.
    ``u`` is centred because the ratings pin it down; ``b`` is not, because
    only the prior and the covariates meet ``theta_raw`` given ``u`` (with
    ``u`` non-centred too the factor correlations mixed badly). The matrices
    depend on ``n`` only through its distinct values: computed once per
    distinct number of sessions (all at once, as a stack) and picked per
    subject; with one number for every subject, once for all. The average of
    ``theta_raw`` over subjects is met by nothing but its prior;
    :func:`_pin_origin` narrows it as for the centred form.

    Everything the design decides enters as data (``pm.Data``), not as
    constants of the graph: the sessions per subject (``joint_sessions``),
    their distinct values (``joint_session_counts``), each subject's place
    among them (``joint_count_group``) and ``session_subject`` (each session's
    subject). Designs of any size then share one compiled model
    (:mod:`caltars_bayes.inference.flat_logp`); only whether every subject has
    the same number of sessions changes the graph.
    """
    n_sess = np.bincount(np.asarray(d.session_subject_idx), minlength=d.n_subjects)
    counts, group = np.unique(n_sess, return_inverse=True)
    if counts.min() < 1:
        raise ValueError("every subject needs at least one session for the joint form")
    n_t = pm.Data("joint_sessions", n_sess.astype(np.float64), dims="subject")
    counts_t = pm.Data("joint_session_counts", counts.astype(np.float64))
    cov = chol_cov @ chol_cov.T
    var_s = sd_session**2
    eye = np.eye(k)

    def conditional(n: pt.TensorVariable) -> tuple[Any, Any, Any]:
        """chol(S + D), A and chol(B) for subjects with ``n`` sessions: one set of
        matrices for a scalar ``n``, a stack of them for a column of counts."""
        dvar = (var_s / n)[..., None] * eye  # D = diag(sd_session^2) / n
        s_plus_d = cov + dvar
        chol_sd = pt.linalg.cholesky(s_plus_d)
        inv_l_d = solve_triangular(chol_sd, dvar, lower=True)  # L^-1 D
        sol_d = solve_triangular(chol_sd.mT, inv_l_d, lower=False)  # (S + D)^-1 D
        a_mat = eye - sol_d.mT  # S (S + D)^-1 = I - D (S + D)^-1
        b_mat = dvar - inv_l_d.mT @ inv_l_d  # D - D (S + D)^-1 D
        return chol_sd, a_mat, pt.linalg.cholesky(b_mat)

    b_z = pm.Normal("theta_z", 0.0, 1.0, dims=("subject", "scale"))
    if counts.size == 1:  # every subject has the same number of sessions
        chol_sd, a_mat, chol_b = conditional(counts_t[0])
        u = pm.MvNormal("subject_mean", mu=np.zeros(k), chol=chol_sd, dims=("subject", "scale"))
        theta_raw = u @ a_mat.T + b_z @ chol_b.T
    else:
        g = pm.Data("joint_count_group", group.astype(np.int64), dims="subject")
        chol_sd, a_mat, chol_b = (m[g] for m in conditional(counts_t[:, None]))
        u = pm.MvNormal("subject_mean", mu=np.zeros(k), chol=chol_sd, dims=("subject", "scale"))
        theta_raw = (a_mat @ u[:, :, None])[:, :, 0] + (chol_b @ b_z[:, :, None])[:, :, 0]
    _pin_origin(theta_raw, chol_cov, tau, k)
    z = pm.Normal("zeta_z", 0.0, 1.0, dims=("session", "scale"))
    z_mean = pt.inc_subtensor(pt.zeros_like(u)[session_subject], z) / n_t[:, None]
    zeta = pm.Deterministic(
        "zeta",
        (u - theta_raw)[session_subject] + sd_session * (z - z_mean[session_subject]),
        dims=("session", "scale"),
    )
    return theta_raw, zeta


def _pin_origin(
    theta_raw: pt.TensorVariable, chol_cov: pt.TensorVariable, tau: float, k: int
) -> None:
    """Give the average of centred-form subject factors its own narrow prior.

    ``theta`` is ``theta_raw`` minus its average over subjects, so the
    likelihood never sees that average ``m``. With rows iid ``MVN(0, S)`` the
    average is independent of the deviations and distributed ``MVN(0, S / N)``:
    as wide as the population SD along its (normalised) direction, while each
    subject's deviations are as narrow as the data make them - a long ridge
    that costs NUTS many leapfrog steps. The potential swaps ``MVN(0, S / N)``
    for ``MVN(0, tau^2 I / N)``; the deviations, hence ``theta`` and everything
    else, keep exactly the same posterior.
    """
    # the subject count N and tau enter as data, not constants: the compiled
    # model then serves trials of any size (see caltars_bayes.inference.flat_logp)
    n_subj = pt.cast(theta_raw.shape[0], "float64")
    tau_t = pm.Data("origin_sd", np.asarray(float(tau)))
    m = theta_raw.mean(axis=0)
    w = solve_triangular(chol_cov, m, lower=True)  # S^-1/2 m
    log_det = pt.log((chol_cov * np.eye(k)).sum(axis=1)).sum()  # JAX-safe diag
    old = -0.5 * n_subj * (w**2).sum() - log_det  # log MVN(m; 0, S / N) up to constants
    new = -0.5 * n_subj * (m**2).sum() / tau_t**2 - k * pt.log(tau_t)
    pm.Potential("theta_origin", new - old)


def lkj_cholesky(name: str, n: int, eta: float) -> pt.TensorVariable:
    """Cholesky factor of an ``n x n`` correlation matrix with an LKJ(eta) prior.

    The free variable is ``{name}_chol`` (``{name}_beta`` for n = 2: LKJ(eta)
    for two variables is r = 2 * Beta(eta, eta) - 1, written out because
    ``pm.LKJCorr(n=2)`` does not compile to JAX with PyTensor 3.3).
    """
    if n == 2:
        r = 2.0 * pm.Beta(f"{name}_beta", eta, eta) - 1.0
        return pt.stack([pt.stack([1.0, 0.0]), pt.stack([r, pt.sqrt(1.0 - r**2)])])
    if n > 2:
        return pm.LKJCorr(f"{name}_chol", n=n, eta=eta)
    return pt.ones((1, 1))


def covariate_block(
    prefix: str,
    x: np.ndarray,
    latent: pt.TensorVariable,
    latent_corr: pt.TensorVariable,
    row_labels: list[str],
    names: list[str],
    priors: Priors,
    n_scales: int,
) -> None:
    """Covariates modelled jointly with standardised latent alliance values.

    For each row (a subject, or a session) with standardised latent alliance
    ``u`` (correlation matrix ``R`` over scales) and standardised covariates
    ``x``::

        x = a + B' u + diag(s) e,   e ~ MVN(0, R_e)   (R_e: LKJ prior)

    which is a joint multivariate normal of ``(u, x)`` with every cross
    covariance free (``B`` has a normal prior per element, so no dimension-driven
    shrinkage of the alliance-covariate correlations). Derived:
    ``association[k, q] = (R B)[k, q] / sd(x_q)`` is the latent (disattenuated)
    correlation, ``covariate_corr`` the covariates' own correlation matrix.
    Missing covariate values are parameters (``*_missing_z`` on the standardised
    scale, flat prior: their distribution is the model's conditional one);
    :func:`caltars_bayes.analysis.associations.imputed_covariates` puts them back on the
    original scale.
    """
    q = x.shape[1]
    cdim = f"{prefix}covariate"
    model = pm.modelcontext(None)
    model.add_coord(cdim, names)
    model.add_coord(f"{cdim}2", names)
    miss_r, miss_c = np.nonzero(~np.isfinite(x))
    # pm.Data, not constants: trials of any size then share a compiled model
    # (caltars_bayes.inference.flat_logp); whether any value is missing stays structural
    xt = pm.Data(f"{cdim}_values", np.where(np.isfinite(x), x, 0.0))
    n = pt.cast(xt.shape[0], "float64")
    if len(miss_r):
        model.add_coord(
            f"{cdim}_missing",
            [f"{row_labels[r]}|{names[c]}" for r, c in zip(miss_r, miss_c, strict=True)],
        )
        xm = pm.Flat(f"{cdim}_missing_z", dims=f"{cdim}_missing")
        rows = pm.Data(f"{cdim}_missing_row", miss_r.astype(np.int64), dims=f"{cdim}_missing")
        cols = pm.Data(f"{cdim}_missing_col", miss_c.astype(np.int64), dims=f"{cdim}_missing")
        xt = pt.set_subtensor(xt[rows, cols], xm)
    a = prior_rv(f"{cdim}_intercept", priors.covariate_intercept, dims=cdim)
    b = prior_rv(f"{cdim}_slope", priors.covariate_slope, dims=("scale", cdim))
    s = prior_rv(f"{cdim}_sd", priors.covariate_sd, dims=cdim)
    resid = (xt - a - latent @ b) / s
    chol = lkj_cholesky(f"{cdim}_resid_corr", q, priors.lkj_eta)
    if q > 1:
        z = solve_triangular(chol, resid.T, lower=True).T
        log_det = pt.log((chol * np.eye(q)).sum(axis=1)).sum()  # no arange: JAX-safe
    else:
        z, log_det = resid, 0.0
    pm.Potential(
        f"{cdim}_loglik",
        -0.5 * (z**2).sum() - n * (pt.log(s).sum() + log_det) - 0.5 * n * q * np.log(2 * np.pi),
    )
    cov_x = b.T @ latent_corr @ b + pt.outer(s, s) * (chol @ chol.T)
    # Var(x_q) = b_q' R b_q + s_q^2 (R_e has a unit diagonal); written without
    # pt.diagonal, whose arange JAX cannot compile
    sd_x = pt.sqrt((b * (latent_corr @ b)).sum(axis=0) + s**2)
    assoc = (latent_corr @ b) / sd_x[None, :]
    pm.Deterministic(f"{prefix}association", assoc, dims=("scale", cdim))
    if q > 1:
        pm.Deterministic(f"{cdim}_corr", cov_x / pt.outer(sd_x, sd_x), dims=(cdim, f"{cdim}2"))
