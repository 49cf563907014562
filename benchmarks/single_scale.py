"""The single-scale brms-equivalent benchmark (one CALTARS scale, 6 items).

The anchor numbers in the performance issue come from brms 2.18 / rstan and a
hand-written PyMC 6.4 model fitted to ONE scale of a simulated CALTARS-like
trial (``/work/shared/bench``: ``simulate.py``, ``fit_brms.R``,
``fit_pymc.py``). This module reproduces that trial (same generative process,
same seed, so the same 3,744 ratings at 52 subjects) and two fits of it:

* ``brms_equivalent``: the same model as brms and ``fit_pymc.py``:
  ``rating ~ 1 + (1|item) + (1|judge) + (1|subject) + (1|subject:session)``,
  cumulative logit, SDs HalfNormal(1), thresholds StudentT(3, 0, 2.5) ordered,
  random effects non-centred, target acceptance 0.8; sampled with nutpie;
* ``caltars_single``: this package's joint model on the same ratings, with an
  instrument holding only that scale (loadings, judge discrimination and
  severity, session level; the package's priors and parameterisation choices).

Diagnostics follow the anchor benchmark: min bulk ESS over cutpoints, the four
SDs and every random-effect value ``r = sd * z`` for the brms-equivalent model;
over every reported quantity for the package's model.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd

#: The anchor results (``/work/shared/bench/results.md``; 2 cores, 24 GiB, no GPU),
#: 52 subjects (3,744 ratings), 4 chains x (1000 warm-up + 1000 draws).
BRMS_REFERENCE = {
    "tool": "brms 2.18 + rstan 2.21",
    "compile_s": 35.4,
    "sampling_s": 411.5,
    "total_s": 447.0,
    "min_ess_bulk": 1244.0,
    "ess_per_s": 3.0,
    "divergences": 20,
}
PYMC_REFERENCE = {
    "PyMC 6.4 NUTS": {"total_s": 85.0, "ess_per_s": 10.7, "divergences": 37},
    "PyMC 6.4 + nutpie": {"total_s": 46.0, "ess_per_s": 9.1, "divergences": 30},
    "PyMC 6.4 + numpyro": {"total_s": 46.0, "ess_per_s": 20.9, "divergences": 24},
}
BENCH_SEED = 20240611


def simulate_bench_trial(
    n_subjects: int = 52,
    n_sessions: int = 4,
    n_judges: int = 3,
    n_scales: int = 5,
    items_per_scale: int = 6,
    seed: int = BENCH_SEED,
) -> pd.DataFrame:
    """The anchor benchmark's simulated trial (5-point ratings, every judge rates every item).

    Latent model (logit units): subject factors ``theta ~ MVN(0, R)`` with
    unit variances and correlation 0.4 between scales; session deviations
    N(0, 0.5); judge severity N(0, 0.3); judge x session noise N(0, 0.3);
    loadings U(0.7, 1.5); thresholds (-2, -0.7, 0.5, 1.8) + item shift N(0, 0.4);
    ``eta = loading * (theta + session + noise) - severity``, ordered logistic.
    The random draws are made in the anchor script's order, so the same seed
    gives the same ratings.

    Returns
    -------
    DataFrame with integer columns ``subject, session, judge, item, scale, rating``
    (1-based codes; rating 1-5).
    """
    rng = np.random.default_rng(seed)
    k, n_items = n_scales, n_scales * items_per_scale
    corr = np.full((k, k), 0.4) + 0.6 * np.eye(k)
    theta = rng.multivariate_normal(np.zeros(k), corr, size=n_subjects)
    u = rng.normal(0, 0.5, size=(n_subjects, n_sessions, k))
    severity = rng.normal(0, 0.3, size=n_judges)
    noise = rng.normal(0, 0.3, size=(n_subjects, n_sessions, n_judges, k))
    loading = rng.uniform(0.7, 1.5, size=n_items)
    base = np.array([-2.0, -0.7, 0.5, 1.8])
    tau = base[None, :] + rng.normal(0, 0.4, size=(n_items, 1))
    item_scale = np.repeat(np.arange(k), items_per_scale)
    latent = (
        theta[:, None, None, item_scale] + u[:, :, None, item_scale] + noise[:, :, :, item_scale]
    )
    eta = loading[None, None, None, :] * latent - severity[None, None, :, None]
    cum = 1.0 / (1.0 + np.exp(-(tau[None, None, None, :, :] - eta[..., None])))
    rating = 1 + (rng.uniform(size=eta.shape)[..., None] > cum).sum(-1)
    s, t, j, i = np.meshgrid(
        np.arange(n_subjects),
        np.arange(n_sessions),
        np.arange(n_judges),
        np.arange(n_items),
        indexing="ij",
    )
    return pd.DataFrame(
        {
            "subject": s.ravel() + 1,
            "session": t.ravel() + 1,
            "judge": j.ravel() + 1,
            "item": i.ravel() + 1,
            "scale": item_scale[i.ravel()] + 1,
            "rating": rating.ravel(),
        }
    )


def build_brms_equivalent(df: pd.DataFrame):
    """The brms model ``rating ~ 1 + (1|item) + (1|judge) + (1|subject) + (1|subject:session)``.

    ``df`` holds one scale's ratings. Returns the PyMC model.
    """
    import pymc as pm

    item_idx, items = pd.factorize(df["item"], sort=True)
    judge_idx, judges = pd.factorize(df["judge"], sort=True)
    subj_idx, subjects = pd.factorize(df["subject"], sort=True)
    ss_idx, ss_levels = pd.factorize(
        df["subject"].astype(str) + "_" + df["session"].astype(str), sort=True
    )
    y = df["rating"].to_numpy() - 1
    n_cut = 4
    coords = {
        "cut": np.arange(n_cut),
        "item": items,
        "judge": judges,
        "subject": subjects,
        "subject_session": ss_levels,
    }
    groups = [
        ("item", item_idx),
        ("judge", judge_idx),
        ("subject", subj_idx),
        ("subject_session", ss_idx),
    ]
    with pm.Model(coords=coords) as model:
        cut = pm.StudentT(
            "cutpoints",
            nu=3,
            mu=0,
            sigma=2.5,
            dims="cut",
            transform=pm.distributions.transforms.ordered,
            initval=np.linspace(-1.5, 1.5, n_cut),
        )
        eta = 0.0
        for g, idx in groups:
            sd = pm.HalfNormal(f"sd_{g}", sigma=1.0)
            z = pm.Normal(f"z_{g}", 0.0, 1.0, dims=g)
            r = pm.Deterministic(f"r_{g}", sd * z, dims=g)
            eta = eta + r[idx]
        pm.OrderedLogistic("rating", eta=eta, cutpoints=cut, observed=y, compute_p=False)
    return model


def _min_ess(post, names: list[str]) -> tuple[float, float]:
    from arviz_stats import ess, rhat

    sub = post[names]
    e = ess(sub, sample_dims=["chain", "draw"], method="bulk")
    r = rhat(sub, sample_dims=["chain", "draw"])
    return (
        float(min(np.nanmin(e[v].values) for v in names)),
        float(max(np.nanmax(r[v].values) for v in names)),
    )


def fit_brms_equivalent(
    df: pd.DataFrame, *, chains: int, tune: int, draws: int, seed: int = BENCH_SEED
) -> dict[str, Any]:
    """Fit the brms-equivalent model with nutpie (numba unless the env var says jax).

    Returns
    -------
    dict with ``ratings, compile_s, sampling_s, total_s, steps_per_draw,
    min_ess_bulk, ess_per_s, max_rhat, divergences`` and the posterior mean SDs.
    """
    from caltars_bayes.inference.sampling import run_nuts

    t0 = time.perf_counter()
    model = build_brms_equivalent(df)
    build_s = time.perf_counter() - t0
    dt, timings = run_nuts(
        model,
        draws=draws,
        tune=tune,
        chains=chains,
        sampler="nutpie",
        random_seed=seed,
        target_accept=0.8,
        # nutpie's own adaptation and plain NUTS, as in the hand-written anchor
        # (not this package's NUTPIE_DEFAULTS)
        nuts={"target_integration_time": None, "early_window_switch_freq": 10},
        progressbar=False,
    )
    total = time.perf_counter() - t0
    post = dt["posterior"].to_dataset()
    ss = dt["sample_stats"].to_dataset()
    names = ["cutpoints", "sd_item", "sd_judge", "sd_subject", "sd_subject_session"]
    names += ["r_item", "r_judge", "r_subject", "r_subject_session"]
    min_ess, max_rhat = _min_ess(post, names)
    return {
        "ratings": len(df),
        "build_s": build_s,
        "compile_s": timings["compile_s"],
        "sampling_s": timings["sampling_s"],
        "total_s": total,
        "steps_per_draw": float(ss["n_steps"].mean()) if "n_steps" in ss else float("nan"),
        "min_ess_bulk": min_ess,
        "ess_per_s": min_ess / timings["sampling_s"],
        "max_rhat": max_rhat,
        "divergences": int(ss["diverging"].sum()) if "diverging" in ss else -1,
        "sd_means": {n: float(post[n].mean()) for n in names if n.startswith("sd_")},
    }


def single_scale_data(df: pd.DataFrame):
    """The package's :class:`RatingData` for scale 1 of the anchor trial (CALTARS codes)."""
    from caltars_bayes import RatingData, load_instrument
    from caltars_bayes.spec.instrument import models_dir

    inst = load_instrument(models_dir() / "caltars.toml")
    first = inst.scales[0]
    one = replace(inst, scales=(first,), structures={})
    sub = df[df["scale"] == 1]
    long = pd.DataFrame(
        {
            "subject": "S" + sub["subject"].astype(str).str.zfill(4),
            "session": sub["session"].astype(str),
            "judge": "J" + sub["judge"].astype(str),
            "item": [first.items[i - 1] for i in sub["item"]],
            "rating": sub["rating"],
        }
    )
    return RatingData.from_frame(long, one, layout="long", source="anchor trial, scale 1")


def fit_caltars_single(
    df: pd.DataFrame, *, chains: int, tune: int, draws: int, seed: int = BENCH_SEED
) -> dict[str, Any]:
    """Fit this package's joint model to scale 1 of the anchor trial with nutpie.

    Returns
    -------
    dict with the same keys as :func:`fit_brms_equivalent` (``sd_means`` holds
    ``sd_alliance`` and ``sd_session``).
    """
    from caltars_bayes import fit_model

    t0 = time.perf_counter()
    data = single_scale_data(df)
    fit = fit_model(
        data, draws=draws, tune=tune, chains=chains, random_seed=seed, progressbar=False
    )
    total = time.perf_counter() - t0
    d, t, ss = fit.diagnostics, fit.record.timings, fit.sample_stats
    return {
        "ratings": data.n_ratings,
        "build_s": t["build_s"],
        "compile_s": t["compile_s"],
        "sampling_s": t["sampling_s"],
        "total_s": total,
        "steps_per_draw": float(ss["n_steps"].mean())
        if ss is not None and "n_steps" in ss
        else float("nan"),
        "min_ess_bulk": d.min_ess_bulk,
        "ess_per_s": d.min_ess_bulk / t["sampling_s"],
        "max_rhat": d.max_rhat,
        "divergences": d.divergences,
        "sd_means": {
            n: float(fit.posterior[n].mean())
            for n in ("sd_alliance", "sd_session")
            if n in fit.posterior
        },
    }
