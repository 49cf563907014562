"""Approximate posteriors for quick looks at any size: Pathfinder and ADVI.

These are APPROXIMATIONS, not MCMC. Their draws go into a DataTree with the
same variables and dims as a NUTS fit, so every table works, but the fit's
:class:`~caltars_bayes.inference.diagnostics.Diagnostics` is marked ``approximate``,
``converged`` is always False, and every table and report says so.

Methods
-------
``pathfinder``
    Multi-path Pathfinder (Zhang, Carpenter, Gelman & Vehtari 2022, JMLR
    23(306)). Each path runs L-BFGS on minus the log density (unconstrained
    space, with Jacobians) from a jittered start. At every iterate, the L-BFGS
    estimate of the inverse Hessian (a diagonal plus a rank-2J correction built
    from the last J position and gradient differences) defines a normal
    distribution; the iterate whose normal has the largest ELBO (estimated with
    a few draws) is kept. The draws of all paths are pooled and resampled with
    Pareto-smoothed importance weights. Written here, following the algorithm
    of the paper and the layout of pymc-extras, because pymc-extras has no
    release that accepts PyMC 6.4 (0.15.1 requires ``pymc<6.4``).
``advi`` / ``fullrank_advi``
    Automatic differentiation variational inference (Kucukelbir et al. 2017):
    a normal with diagonal (mean-field) or full covariance in the
    unconstrained space, fitted by stochastic gradient ascent (Adam) on the
    ELBO. The algorithm of PyMC's ``pm.fit(method="advi")``, run here on the
    same compiled log density as Pathfinder because PyMC 6.4's ADVI step
    cannot be compiled to JAX. Full rank has ``d (d + 1) / 2`` parameters:
    only for small models.

On this model mean-field ADVI gave the better approximation: on the
simulated founding design its ELBO was about 1,200 nats higher than
Pathfinder's best path, it recovered ``theta`` slightly better and it ran
faster (about 3,000 gradient evaluations); see ``docs/approximate.md``.

Quality of the approximation
----------------------------
Every method reports the Pareto k-hat of the importance ratios
``log p(x) - log q(x)`` over its draws (PSIS diagnostic, Yao, Vehtari,
Simpson & Gelman 2018): below 0.5 the approximation is close to the
posterior, 0.5-0.7 usable for means, above 0.7 (usual with hundreds of
parameters) it is rough: means are indicative, intervals can be too narrow.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
import pymc as pm
import xarray as xr
from scipy.linalg import solve_triangular
from scipy.optimize import minimize

from caltars_bayes.inference.diagnostics import Diagnostics, check_convergence

METHODS = ("pathfinder", "advi", "fullrank_advi")

#: Default options per method (override any of them with ``options``).
DEFAULTS: dict[str, dict[str, Any]] = {
    "pathfinder": {
        "paths": 4,  # independent L-BFGS paths from jittered starts
        "maxiter": 1000,  # L-BFGS iterations per path, at most
        "history": 6,  # J: position/gradient differences in the inverse-Hessian estimate
        "elbo_draws": 10,  # draws per iterate to estimate the ELBO
        "jitter": 2.0,  # starts: initial point + Uniform(-jitter, jitter) per coordinate
        "ftol": 1e-5,
        "gtol": 1e-8,
        # pooled draws (paths x draws) resampled to ``draws`` with Pareto-smoothed
        # importance weights: "psis" without replacement (distinct draws, as
        # pymc-extras), "psir" with replacement, "none" a uniform subsample
        "resample": "psis",
    },
    # Adam steps; stop early when the mean loss (minus ELBO) over the last
    # ``check_every`` steps improves on the window before by less than
    # ``tolerance`` (relative)
    "advi": {
        "iterations": 30000,
        "learning_rate": 0.01,
        "tolerance": 1e-3,
        "check_every": 1000,
        "init_scale": 0.1,  # initial sd of every coordinate of q
    },
}
DEFAULTS["fullrank_advi"] = dict(DEFAULTS["advi"])

#: Pareto k-hat thresholds (Vehtari et al. 2024).
KHAT_GOOD = 0.5
KHAT_OK = 0.7


def khat_label(k: float) -> str:
    """Plain-words reading of a Pareto k-hat for an approximation."""
    if np.isnan(k):
        return "unknown"
    if k < KHAT_GOOD:
        return "close to the posterior"
    if k < KHAT_OK:
        return "usable for means"
    return "rough: means indicative, intervals unreliable"


def _mode(backend: str) -> str:
    return {"numba": "NUMBA", "jax": "JAX", "c": "FAST_RUN"}[backend]


def _backend(options: dict[str, Any]) -> str:
    """The compile backend: option ``backend``, else ``$CALTARS_BAYES_APPROX_BACKEND``.

    Without either, ``jax`` when installed (it compiled the founding model's
    log density and gradient in 11 s against numba's 57 s, and runs them as
    fast), else ``numba``.
    """
    import importlib.util

    default = "jax" if importlib.util.find_spec("jax") is not None else "numba"
    backend = options.pop("backend", os.environ.get("CALTARS_BAYES_APPROX_BACKEND", default))
    if backend not in ("numba", "jax", "c"):
        raise ValueError(f"unknown backend {backend!r}; choose numba, jax or c")
    return str(backend)


class _FlatModel:
    """The model's log density as a function of one flat unconstrained vector.

    The vector holds the model's value variables (``model.value_vars``) in
    order, each raveled; ``slices`` says where each one lies.
    """

    def __init__(self, model: pm.Model, backend: str) -> None:
        import pytensor.tensor as pt
        from pymc.model.transform.optimization import freeze_dims_and_data
        from pymc.pytensorf import compile as pm_compile
        from pymc.pytensorf import join_nonshared_inputs

        # fixed shapes and data: JAX needs static shapes, and constants fold
        model = freeze_dims_and_data(model)
        self.model = model
        self.mode = _mode(backend)
        self.start = model.initial_point()
        value_vars = list(model.value_vars)
        self.slices: dict[str, slice] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        pos = 0
        for v in value_vars:
            shape = tuple(np.shape(self.start[v.name]))
            size = int(np.prod(shape, dtype=int))
            self.slices[v.name] = slice(pos, pos + size)
            self.shapes[v.name] = shape
            pos += size
        self.n = pos
        logp = model.logp(jacobian=True)
        grad = pt.concatenate([pt.grad(logp, v).ravel() for v in value_vars])  # type: ignore[union-attr]
        (lp_j, g_j), x = join_nonshared_inputs(self.start, [logp, grad], value_vars)
        # pm's compile turns parameter checks into -inf rather than errors
        self._vg = pm_compile([x], [lp_j, g_j], mode=self.mode)
        (lp_only,), x2 = join_nonshared_inputs(self.start, [logp], value_vars)
        self._lp = pm_compile([x2], lp_only, mode=self.mode)
        self.n_grad = 0
        self.n_logp = 0

    def flat_start(self) -> np.ndarray:
        out = np.empty(self.n)
        for name, sl in self.slices.items():
            out[sl] = np.ravel(self.start[name])
        return out

    def value_and_grad(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        self.n_grad += 1
        lp, g = self._vg(x)
        return float(lp), np.asarray(g, dtype=float)

    def logp(self, xs: np.ndarray) -> np.ndarray:
        """Log density of each row of ``xs`` (non-finite values become -inf)."""
        xs = np.atleast_2d(xs)
        self.n_logp += len(xs)
        out = np.array([float(self._lp(x)) for x in xs])
        out[~np.isfinite(out)] = -np.inf
        return out

    def to_datatree(
        self, draws: np.ndarray, sample_stats: dict[str, np.ndarray] | None = None
    ) -> xr.DataTree:
        """Posterior DataTree (chain, draw, model dims) from flat draws (chain, draw, n).

        Holds every free variable on its constrained scale and every
        Deterministic, as a NUTS fit does (no transformed values).
        """
        from arviz_base import from_dict
        from pymc.backends.arviz import coords_and_dims_for_inferencedata
        from pymc.pytensorf import compile as pm_compile
        from pymc.pytensorf import join_nonshared_inputs
        from pymc.util import get_default_varnames

        model = self.model
        outs = list(get_default_varnames(model.unobserved_value_vars, include_transformed=False))
        joined, x = join_nonshared_inputs(self.start, outs, list(model.value_vars))
        fn = pm_compile([x], joined, mode=self.mode)
        n_chain, n_draw = draws.shape[:2]
        flat = draws.reshape(n_chain * n_draw, self.n)
        values: list[list[np.ndarray]] = [[] for _ in outs]
        for row in flat:
            for store, val in zip(values, fn(row), strict=True):
                store.append(np.asarray(val))
        post = {
            v.name: np.stack(store).reshape(n_chain, n_draw, *store[0].shape)
            for v, store in zip(outs, values, strict=True)
        }
        coords, dims = coords_and_dims_for_inferencedata(model)
        groups: dict[str, Any] = {"posterior": post}
        if sample_stats:
            groups["sample_stats"] = sample_stats
        return from_dict(groups, coords=coords, dims=dims, sample_dims=["chain", "draw"])


@dataclass
class _Normal:
    """A normal approximation N(mean, Sigma) with Sigma = D^1/2 A A' D^1/2.

    ``A = I + Q (L - I) Q'`` where ``Q`` (n x r) has orthonormal columns, so a
    draw costs O(n r) and no n x n matrix is ever formed.
    """

    mean: np.ndarray
    sqrt_diag: np.ndarray
    q: np.ndarray | None
    l_minus_i: np.ndarray | None
    log_det: float

    def draw(self, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
        """``size`` draws and their log densities under the approximation."""
        n = self.mean.size
        u = rng.standard_normal((size, n))
        z = u
        if self.q is not None and self.l_minus_i is not None:
            z = u + ((u @ self.q) @ self.l_minus_i.T) @ self.q.T
        x = self.mean + self.sqrt_diag * z
        log_q = -0.5 * (self.log_det + np.sum(u * u, axis=1) + n * np.log(2 * np.pi))
        return x, log_q


def _alpha_update(alpha: np.ndarray, s: np.ndarray, z: np.ndarray) -> np.ndarray:
    """One update of the diagonal inverse-Hessian estimate (Gilbert & Lemarechal 1989).

    ``s`` is a position difference, ``z`` the matching gradient difference of
    minus the log density (``s . z > 0``).
    """
    a = np.sum(alpha * z**2)
    b = np.sum(z * s)
    c = np.sum(s**2 / alpha)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        inv = a / (b * alpha) + z**2 / b - a * s**2 / (b * c * alpha**2)
        new = 1.0 / inv
    if not np.all(np.isfinite(new)) or np.any(new <= 0):
        return alpha
    return new


def _lbfgs_normal(
    x: np.ndarray, grad_f: np.ndarray, alpha: np.ndarray, s_mat: np.ndarray, z_mat: np.ndarray
) -> _Normal | None:
    """The Pathfinder normal at one L-BFGS iterate.

    ``grad_f`` is the gradient of minus the log density at ``x``; ``s_mat``
    and ``z_mat`` (n x J) the last J accepted position and gradient
    differences. The inverse Hessian is the compact L-BFGS form (Byrd, Nocedal
    & Schnabel 1994) ``H = D + B G B'`` with ``D = diag(alpha)``,
    ``B = [D Z, S]``; the normal has mean ``x - H grad_f`` and covariance ``H``.
    Returns None where ``H`` is not numerically positive definite.
    """
    n, j = s_mat.shape
    e = np.triu(s_mat.T @ z_mat) + 1e-8 * np.eye(j)
    e_inv = solve_triangular(e, np.eye(j), lower=False)
    az = alpha[:, None] * z_mat
    b = np.hstack([az, s_mat])
    block = e_inv.T @ (np.diag(np.diag(e)) + z_mat.T @ az) @ e_inv
    g = np.block([[np.zeros((j, j)), -e_inv], [-e_inv.T, block]])
    sqrt_alpha = np.sqrt(alpha)
    if 2 * j < n:  # thin QR: only 2J x 2J matrices besides the n x 2J factor
        q, r = np.linalg.qr(b / sqrt_alpha[:, None], mode="reduced")
    else:  # few parameters: work with the full n x n matrix
        q, r = np.eye(n), b / sqrt_alpha[:, None]
    m = np.eye(q.shape[1]) + r @ g @ r.T
    try:
        chol = np.linalg.cholesky(0.5 * (m + m.T))
    except np.linalg.LinAlgError:
        return None
    log_det = 2.0 * np.sum(np.log(np.diag(chol))) + np.sum(np.log(alpha))
    mean = x - (alpha * grad_f + b @ (g @ (b.T @ grad_f)))
    if not (np.isfinite(log_det) and np.all(np.isfinite(mean))):
        return None
    return _Normal(mean, sqrt_alpha, q, chol - np.eye(q.shape[1]), float(log_det))


def _jittered_start(fm: _FlatModel, rng: np.random.Generator, jitter: float) -> np.ndarray:
    """The initial point plus Uniform(-jitter, jitter) noise, retried until finite."""
    base = fm.flat_start()
    for _ in range(50):
        x0 = base + rng.uniform(-jitter, jitter, fm.n)
        lp, g = fm.value_and_grad(x0)
        if np.isfinite(lp) and np.all(np.isfinite(g)):
            return x0
    return base


def _single_path(
    fm: _FlatModel, x0: np.ndarray, opts: dict[str, Any], rng: np.random.Generator
) -> dict[str, Any]:
    """One Pathfinder path: L-BFGS, then the best-ELBO normal along the path."""
    cache: dict[bytes, tuple[float, np.ndarray]] = {}

    def f(x: np.ndarray) -> tuple[float, np.ndarray]:
        lp, g = fm.value_and_grad(x)
        cache[x.tobytes()] = (lp, g)
        if not np.isfinite(lp) or not np.all(np.isfinite(g)):
            return np.inf, np.zeros_like(x)
        return -lp, -g

    xs = [x0.copy()]
    f(x0)

    def callback(intermediate_result: Any) -> None:
        xs.append(np.array(intermediate_result.x, copy=True))

    res = minimize(
        f,
        x0,
        jac=True,
        method="L-BFGS-B",
        callback=callback,
        options={
            "maxiter": int(opts["maxiter"]),
            "maxcor": int(opts["history"]),
            "ftol": float(opts["ftol"]),
            "gtol": float(opts["gtol"]),
        },
    )
    j_max = int(opts["history"])
    grads = []
    for x in xs:
        hit = cache.get(x.tobytes())
        grads.append(-hit[1] if hit is not None else -fm.value_and_grad(x)[1])
    alpha = np.ones(fm.n)
    s_list: list[np.ndarray] = []
    z_list: list[np.ndarray] = []
    best: tuple[float, int, _Normal | None] = (-np.inf, -1, None)
    elbos = []
    for i in range(1, len(xs)):
        s = xs[i] - xs[i - 1]
        z = grads[i] - grads[i - 1]
        if np.dot(s, z) > 1e-10 * np.dot(z, z):  # curvature condition, else skip the pair
            alpha = _alpha_update(alpha, s, z)
            s_list = [*s_list, s][-j_max:]
            z_list = [*z_list, z][-j_max:]
        if not s_list:
            elbos.append(-np.inf)
            continue
        normal = _lbfgs_normal(
            xs[i], grads[i], alpha, np.column_stack(s_list), np.column_stack(z_list)
        )
        if normal is None:
            elbos.append(-np.inf)
            continue
        phi, log_q = normal.draw(rng, int(opts["elbo_draws"]))
        elbo = float(np.mean(fm.logp(phi) - log_q))
        elbos.append(elbo)
        if elbo > best[0]:
            best = (elbo, i, normal)
    return {
        "normal": best[2],
        "elbo": best[0],
        "best_iteration": best[1],
        "iterations": len(xs) - 1,
        "lbfgs_message": str(res.message),
        "elbo_path": elbos,
    }


def _psis_khat(log_ratio: np.ndarray) -> tuple[np.ndarray, float]:
    """Pareto-smoothed normalised log weights and k-hat of importance ratios."""
    from arviz_stats.base import array_stats

    finite = np.isfinite(log_ratio)
    if not finite.any():
        return np.full(log_ratio.shape, -np.inf), float("inf")
    if np.ptp(log_ratio[finite]) < 1e-12:  # q equals p up to a constant: equal weights
        log_w = np.where(finite, -np.log(finite.sum()), -np.inf)
        return log_w, float("-inf")
    lr = np.where(finite, log_ratio, np.min(log_ratio[finite]) - 50)
    log_w, khat = array_stats.psislw(-lr)
    log_w = np.where(finite, log_w, -np.inf)
    return np.asarray(log_w), float(khat)


def _resample(rng: np.random.Generator, log_w: np.ndarray, size: int, how: str) -> np.ndarray:
    """Indices of ``size`` pooled draws chosen by normalised log weights ``log_w``."""
    if how == "none":
        return rng.choice(len(log_w), size=size, replace=False)
    if how not in ("psis", "psir"):
        raise ValueError(f"resample must be 'psis', 'psir' or 'none', not {how!r}")
    p = np.exp(log_w - np.logaddexp.reduce(log_w[np.isfinite(log_w)]))
    p = np.where(np.isfinite(p), p, 0.0)
    p /= p.sum()
    replace = bool(how == "psir" or np.count_nonzero(p) < size)
    return rng.choice(len(log_w), size=size, replace=replace, p=p)


def run_pathfinder(
    model: pm.Model, *, draws: int, random_seed: int, options: dict[str, Any] | None = None
) -> tuple[xr.DataTree, dict[str, float], dict[str, Any]]:
    """Multi-path Pathfinder (see the module docstring).

    Returns
    -------
    (DataTree with ``posterior`` (1 chain x ``draws``) and ``sample_stats``
    (``lp``, ``log_q``), timings ``{compile_s, sampling_s}``, info dict with
    ``pareto_k``, per-path iterations and ELBOs, gradient and density evaluations)
    """
    opts = {**DEFAULTS["pathfinder"], **(options or {})}
    backend = _backend(opts)
    unknown = set(opts) - set(DEFAULTS["pathfinder"])
    if unknown:
        raise ValueError(f"unknown pathfinder option(s): {', '.join(sorted(unknown))}")
    t0 = time.perf_counter()
    fm = _FlatModel(model, backend)
    fm.value_and_grad(fm.flat_start())  # compile (JAX compiles on the first call)
    fm.logp(fm.flat_start())
    t1 = time.perf_counter()
    rng = np.random.default_rng(random_seed)
    paths = []
    pool_x, pool_lq = [], []
    for _ in range(int(opts["paths"])):
        p = _single_path(fm, _jittered_start(fm, rng, float(opts["jitter"])), opts, rng)
        if p["normal"] is not None:
            x, lq = p["normal"].draw(rng, draws)
            pool_x.append(x)
            pool_lq.append(lq)
        paths.append({k: v for k, v in p.items() if k not in ("normal", "elbo_path")})
    if not pool_x:
        raise RuntimeError("pathfinder: no path produced a usable normal approximation")
    x = np.concatenate(pool_x)
    log_q = np.concatenate(pool_lq)
    lp = fm.logp(x)
    log_w, khat = _psis_khat(lp - log_q)
    idx = _resample(rng, log_w, draws, str(opts["resample"]))
    t2 = time.perf_counter()
    stats = {"lp": lp[idx][None, :], "log_q": log_q[idx][None, :]}
    dt = fm.to_datatree(x[idx][None, :, :], stats)
    info = {
        "method": "pathfinder",
        "backend": backend,
        "options": opts,
        "pareto_k": khat,
        "pareto_k_reading": khat_label(khat),
        "paths": paths,
        "distinct_draws": len(np.unique(idx)),
        "gradient_evaluations": fm.n_grad,
        "density_evaluations": fm.n_logp,
        "n_parameters": fm.n,
    }
    timings = {
        "compile_s": t1 - t0,
        "sampling_s": t2 - t1,
        "postprocess_s": time.perf_counter() - t2,
    }
    return dt, timings, info


class _ElboPlateau:
    """ADVI stopping rule: the windowed mean loss stopped improving (relative change).

    Called as ``stop(approx, losses, i)`` after step ``i`` with the losses
    (minus the ELBO estimates) so far; raises StopIteration on a plateau.
    """

    def __init__(self, every: int, tolerance: float) -> None:
        self.every = every
        self.tolerance = tolerance

    def __call__(self, approx: Any, losses: np.ndarray, i: int) -> None:
        w = self.every
        if i % w or len(losses) < 2 * w:
            return
        cur, prev = np.mean(losses[-w:]), np.mean(losses[-2 * w : -w])
        if np.isfinite(cur) and abs(prev - cur) <= self.tolerance * abs(cur):
            raise StopIteration(f"ELBO plateau at iteration {i}")


class _Adam:
    """Adam steps (Kingma & Ba 2015) that ascend an objective."""

    def __init__(self, shape: tuple[int, ...], lr: float) -> None:
        self.lr, self.t = lr, 0
        self.m, self.v = np.zeros(shape), np.zeros(shape)

    def step(self, grad: np.ndarray) -> np.ndarray:
        self.t += 1
        self.m = 0.9 * self.m + 0.1 * grad
        self.v = 0.999 * self.v + 0.001 * grad**2
        m_hat = self.m / (1 - 0.9**self.t)
        v_hat = self.v / (1 - 0.999**self.t)
        return self.lr * m_hat / (np.sqrt(v_hat) + 1e-8)


def _fit_advi(
    fm: Any, x0: np.ndarray, opts: dict[str, Any], rng: np.random.Generator, full_rank: bool
) -> dict[str, Any]:
    """ADVI (Kucukelbir et al. 2017): stochastic gradient ascent on the ELBO.

    ``q = N(mu, diag(exp(omega))^2)`` (mean-field) or ``N(mu, L L')`` with
    ``L`` lower triangular, positive diagonal ``exp(omega)`` (full rank). One
    draw ``x = mu + scale * eps`` per step; the ELBO gradient is ``g`` (the
    log density's gradient at ``x``) for ``mu``, ``g * eps * exp(omega) + 1``
    for ``omega`` (the 1 is the entropy's) and ``g eps'`` below the diagonal.
    """
    n = fm.n
    mu = x0.copy()
    omega = np.full(n, np.log(float(opts["init_scale"])))
    low = np.zeros((n, n)) if full_rank else None
    tril = np.tril_indices(n, -1)
    opt_mu = _Adam((n,), float(opts["learning_rate"]))
    opt_om = _Adam((n,), float(opts["learning_rate"]))
    opt_low = _Adam((len(tril[0]),), float(opts["learning_rate"])) if full_rank else None
    stop = _ElboPlateau(int(opts["check_every"]), float(opts["tolerance"]))
    losses = np.full(int(opts["iterations"]), np.nan)
    skipped, done = 0, 0
    for i in range(int(opts["iterations"])):
        eps = rng.standard_normal(n)
        sd = np.exp(omega)
        x = mu + sd * eps if low is None else mu + sd * eps + low @ eps
        lp, g = fm.value_and_grad(x)
        done = i + 1
        if not (np.isfinite(lp) and np.all(np.isfinite(g))):
            skipped += 1
            if skipped > max(50, int(opts["iterations"]) // 10):
                raise RuntimeError("advi: the log density is not finite at most draws")
            continue
        losses[i] = -(lp + omega.sum())
        mu = mu + opt_mu.step(g)
        omega = np.clip(omega + opt_om.step(g * eps * sd + 1.0), -20.0, 10.0)
        if low is not None and opt_low is not None:
            low[tril] += opt_low.step(np.outer(g, eps)[tril])
        try:
            seen = losses[:done]
            stop(None, seen[np.isfinite(seen)], done)
        except StopIteration:
            break
    return {
        "mu": mu,
        "sd": np.exp(omega),
        "low": low,
        "losses": losses[:done],
        "iterations": done,
        "skipped_steps": skipped,
    }


def run_advi(
    model: pm.Model,
    *,
    draws: int,
    random_seed: int,
    method: str = "advi",
    options: dict[str, Any] | None = None,
) -> tuple[xr.DataTree, dict[str, float], dict[str, Any]]:
    """ADVI, mean-field (``advi``) or full-rank (``fullrank_advi``); see :func:`_fit_advi`.

    The same algorithm as PyMC's ``pm.fit(method="advi")`` (Adam steps, one
    Monte Carlo draw per step) run on this module's compiled log density: PyMC
    6.4's ADVI step cannot be compiled to JAX (it draws its random numbers
    inside the graph) and would compile a second graph. Starts at the model's
    initial point with unit scales; stops after ``iterations`` steps or when
    the mean loss over ``check_every`` steps improves by less than
    ``tolerance`` (relative). Draws come from the fitted normal; the Pareto
    k-hat of their importance ratios is reported (draws are not reweighted).

    Returns
    -------
    (DataTree with ``posterior`` (1 chain x ``draws``) and ``sample_stats``
    (``lp``, ``log_q``), timings ``{compile_s, sampling_s}``, info dict with
    ``pareto_k``, iterations run and the final ELBO estimate)
    """
    opts = {**DEFAULTS[method], **(options or {})}
    backend = _backend(opts)
    unknown = set(opts) - set(DEFAULTS[method])
    if unknown:
        raise ValueError(f"unknown {method} option(s): {', '.join(sorted(unknown))}")
    t0 = time.perf_counter()
    fm = _FlatModel(model, backend)
    fm.value_and_grad(fm.flat_start())  # compile (JAX compiles on the first call)
    fm.logp(fm.flat_start())
    t1 = time.perf_counter()
    rng = np.random.default_rng(random_seed)
    res = _fit_advi(fm, fm.flat_start(), opts, rng, full_rank=method == "fullrank_advi")
    t2 = time.perf_counter()
    u = rng.standard_normal((draws, fm.n))
    if res["low"] is None:
        x = res["mu"] + res["sd"] * u
    else:
        chol = res["low"] + np.diag(res["sd"])
        x = res["mu"] + u @ chol.T
    log_det = 2.0 * np.sum(np.log(res["sd"]))
    log_q = -0.5 * (log_det + np.sum(u * u, axis=1) + fm.n * np.log(2 * np.pi))
    lp = fm.logp(x)
    _, khat = _psis_khat(lp - log_q)
    t3 = time.perf_counter()
    dt = fm.to_datatree(x[None], {"lp": lp[None], "log_q": log_q[None]})
    losses = res["losses"][np.isfinite(res["losses"])]
    tail = losses[-min(len(losses), int(opts["check_every"])) :]
    info = {
        "method": method,
        "backend": backend,
        "options": opts,
        "pareto_k": khat,
        "pareto_k_reading": khat_label(khat),
        "iterations": res["iterations"],
        "stopped_early": res["iterations"] < int(opts["iterations"]),
        "skipped_steps": res["skipped_steps"],
        # minus the loss is E log p + sum(omega); the entropy adds n (1 + log 2 pi) / 2
        "final_elbo": float(-np.mean(tail) + 0.5 * fm.n * (1 + np.log(2 * np.pi)))
        if len(tail)
        else float("nan"),
        "gradient_evaluations": fm.n_grad,
        "n_parameters": fm.n,
    }
    timings = {
        "compile_s": t1 - t0,
        "sampling_s": t3 - t1,
        "optimisation_s": t2 - t1,
        "postprocess_s": time.perf_counter() - t3,
    }
    return dt, timings, info


def run_approx(
    model: pm.Model,
    *,
    method: str,
    draws: int,
    random_seed: int,
    options: dict[str, Any] | None = None,
    progressbar: bool = False,
) -> tuple[xr.DataTree, dict[str, float], dict[str, Any]]:
    """Fit ``model`` approximately with ``method`` (one of :data:`METHODS`).

    ``options`` override :data:`DEFAULTS` for the method (plus ``backend``);
    ``progressbar`` is accepted for a common signature with NUTS and unused.

    Returns
    -------
    (DataTree, timings, info) as :func:`run_pathfinder` / :func:`run_advi`.
    """
    if method not in METHODS:
        raise ValueError(
            f"unknown method {method!r}; choose nuts or an approximate one: {', '.join(METHODS)}"
        )
    if draws < 2:
        raise ValueError("draws must be at least 2")
    if method == "pathfinder":
        return run_pathfinder(model, draws=draws, random_seed=random_seed, options=options)
    return run_advi(model, draws=draws, random_seed=random_seed, method=method, options=options)


def approximate_diagnostics(posterior: xr.Dataset, info: dict[str, Any]) -> Diagnostics:
    """The verdict of an approximate fit: never converged, labelled with method and k-hat.

    ``converged`` is False (an approximation is not a converged MCMC
    posterior), ``approximate`` is True, R-hat and ESS are NaN (they do not
    apply), and ``problems`` says what the Pareto k-hat means.
    """
    d = check_convergence(posterior, None, approximate=True)
    k = float(info["pareto_k"])
    problems = [
        f"approximate fit ({info['method']}, not MCMC): R-hat, ESS and divergences do not apply",
        f"Pareto k-hat {k:.2f} of the importance ratios log p - log q: {khat_label(k)}",
    ]
    return replace(
        d,
        converged=False,
        max_rhat=float("nan"),
        approx_method=str(info["method"]),
        pareto_k=k,
        problems=problems,
    )


#: Groups of summary rows compared by :func:`compare_posteriors`.
COMPARISON_GROUPS = {
    "all": lambda p: True,
    "theta": lambda p: p.startswith("theta["),
    "sds and correlations": lambda p: p.startswith(
        ("sd_", "factor_corr[", "association[", "session_association[")
    ),
}


def compare_posteriors(reference: pd.DataFrame, other: pd.DataFrame) -> pd.DataFrame:
    """How far one posterior summary (e.g. approximate) is from a reference (NUTS).

    Both are summary tables (:meth:`Fit.summary`), matched on ``parameter``;
    rows whose reference sd is 0 or missing are skipped. For each quantity the
    error is ``|mean - reference mean| / reference sd`` (in posterior-sd
    units) and the width ratio ``(hdi_high - hdi_low) / reference width``.

    Returns
    -------
    DataFrame, one row per group (``all``, ``theta``, ``sds and
    correlations``; groups with no rows are left out), columns ``group, n,
    mean_abs_error_sd, p90_abs_error_sd, max_abs_error_sd, width_ratio_median,
    width_ratio_p10, width_ratio_p90``.
    """
    cols = ["parameter", "mean", "sd", "hdi_low", "hdi_high"]
    m = reference[cols].merge(other[cols], on="parameter", suffixes=("_ref", ""))
    m = m[np.isfinite(m["sd_ref"]) & (m["sd_ref"] > 0)]
    err = (m["mean"] - m["mean_ref"]).abs() / m["sd_ref"]
    ratio = (m["hdi_high"] - m["hdi_low"]) / (m["hdi_high_ref"] - m["hdi_low_ref"])
    rows = []
    for group, keep in COMPARISON_GROUPS.items():
        sel = m["parameter"].map(keep).to_numpy(dtype=bool)
        if not sel.any():
            continue
        e, r = err[sel].to_numpy(), ratio[sel].to_numpy()
        rows.append(
            {
                "group": group,
                "n": int(sel.sum()),
                "mean_abs_error_sd": float(np.mean(e)),
                "p90_abs_error_sd": float(np.quantile(e, 0.9)),
                "max_abs_error_sd": float(np.max(e)),
                "width_ratio_median": float(np.median(r)),
                "width_ratio_p10": float(np.quantile(r, 0.1)),
                "width_ratio_p90": float(np.quantile(r, 0.9)),
            }
        )
    return pd.DataFrame(rows)
