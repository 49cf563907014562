"""Hand-built fits for tests that need a posterior but no MCMC.

``posterior_from_truth`` turns a simulated trial's true parameters into a
posterior-shaped Dataset (every draw near the truth), ``prior_fit`` draws a
model's parameters from its prior, and ``synthetic_fit`` wraps either into a
:class:`caltars_bayes.inference.fit.Fit`.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pymc as pm
import xarray as xr

from caltars_bayes.data.ratings import RatingData
from caltars_bayes.inference.diagnostics import check_convergence
from caltars_bayes.inference.fit import Fit, data_hash
from caltars_bayes.inference.record import FitRecord
from caltars_bayes.model.build import AllianceModel
from caltars_bayes.model.plan import plan_model
from caltars_bayes.model.simulate import Trial


def synthetic_fit(data: RatingData, post: xr.Dataset) -> Fit:
    """A Fit holding ``post`` as its posterior (diagnostics computed on it)."""
    dt = xr.DataTree.from_dict({"posterior": post})
    n_chain, n_draw = post.sizes["chain"], post.sizes["draw"]
    plan = plan_model(data)
    record = FitRecord(
        sampler="nutpie",
        method="NUTS",
        draws=n_draw,
        tune=n_draw,
        chains=n_chain,
        random_seed=1,
        target_accept=0.9,
        data_hash=data_hash(data),
        spec_hash=data.instrument.hash(),
    )
    return Fit(dt, data, plan, check_convergence(post, None), record)


def posterior_from_truth(
    trial: Trial,
    data: RatingData,
    *,
    n_chains: int = 2,
    n_draws: int = 50,
    noise: float = 0.05,
    constant: bool = False,
    seed: int = 0,
) -> xr.Dataset:
    """Draws scattered around the trial's truth (``noise`` on the logit scale).

    With ``constant`` every draw equals the truth. Variables and dims are the
    model's; only the parts the data's model plan has are included.
    """
    rng = np.random.default_rng(seed)
    t = trial.truth
    plan = plan_model(data)
    subjects, sessions = list(data.subjects), list(data.session_labels)
    judges, items, scales = list(data.judges), list(data.items), list(data.scales)
    shape = (n_chains, n_draws)
    sd = 0.0 if constant else noise

    def loc(values: np.ndarray) -> np.ndarray:
        v = np.broadcast_to(values, (*shape, *np.shape(values)))
        return v + sd * rng.normal(size=v.shape)

    def pos(values: np.ndarray) -> np.ndarray:
        v = np.broadcast_to(values, (*shape, *np.shape(values)))
        return v * np.exp(sd * rng.normal(size=v.shape))

    s = ("chain", "draw")
    tv = {k: t[k] for k in t.data_vars}
    cut = np.sort(loc(tv["cutpoints"].sel(item=items).values), axis=-1)
    post = {
        "theta": ((*s, "subject", "scale"), loc(tv["theta"].sel(subject=subjects).values)),
        "sd_alliance": ((*s, "scale"), pos(tv["sd_alliance"].values)),
        "loading": ((*s, "item"), pos(tv["loading"].sel(item=items).values)),
        "cutpoints": ((*s, "item", "cutpoint"), cut),
    }
    coords = {
        "chain": np.arange(n_chains),
        "draw": np.arange(n_draws),
        "subject": subjects,
        "session": sessions,
        "judge": judges,
        "item": items,
        "scale": scales,
        "scale2": scales,
        "cutpoint": np.arange(cut.shape[-1]),
    }
    if len(scales) > 1:
        fc = tv["factor_corr"].values
        post["factor_corr"] = ((*s, "scale", "scale2"), np.broadcast_to(fc, (*shape, *fc.shape)))
    if plan.session_level:
        post["zeta"] = ((*s, "session", "scale"), loc(tv["zeta"].sel(session=sessions).values))
        post["sd_session"] = ((*s, "scale"), pos(tv["sd_session"].values))
    if plan.judge_discrimination:
        post["discrimination"] = ((*s, "judge"), pos(tv["discrimination"].sel(judge=judges).values))
    if plan.judge_severity:
        sev = tv["severity"].sel(judge=judges).values.T  # (scale, judge)
        post["severity"] = ((*s, "scale", "judge"), loc(sev))
    if plan.judge_subject_interaction:
        pairs = sorted({(j, p) for j, p in zip(data.judge_idx, data.subject_idx, strict=True)})
        g = tv["interaction"].values  # (judge, subject, scale)
        vals = np.stack([g[j, list(t.subject.values).index(subjects[p])] for j, p in pairs])
        coords["judge_subject"] = [f"{judges[j]}|{subjects[p]}" for j, p in pairs]
        post["interaction"] = ((*s, "judge_subject", "scale"), loc(vals))
        post["sd_interaction"] = (s, pos(np.float64(0.5)))
    return xr.Dataset(post, coords=coords)


def prior_fit(data: RatingData, draws: int = 8, seed: int = 1) -> tuple[Fit, AllianceModel]:
    """A Fit whose 'posterior' are prior draws of the model (cutpoints sorted)."""
    am = AllianceModel(data)
    with am.model:
        pri = pm.sample_prior_predictive(
            draws=draws, random_seed=seed, compile_kwargs={"mode": "FAST_COMPILE"}
        )
    post = pri["prior"].to_dataset()
    post["cutpoints"] = post["cutpoints"].copy(data=np.sort(post["cutpoints"].values, axis=-1))
    return synthetic_fit(data, post), am


#: MCMC settings of the structure proof fits (short: about 10 s each on an idle machine).
PROOF_FIT = {"draws": 200, "tune": 200, "chains": 2, "random_seed": 1, "progressbar": False}
#: The proof design: 16 subjects x 4 sessions x 2 judges of CALPAS (24 items, 4 scales).
PROOF_DESIGN = {"n_subjects": 16, "n_sessions": 4, "n_judges": 2}


def fit_structures(trial: Trial, instrument, names: list[str], **options) -> dict[str, Fit]:
    """Fit the same ratings under structures of ``instrument`` (``"default"``: its scales)."""
    from caltars_bayes.inference.fit import fit_model

    out = {}
    for name in names:
        inst = instrument.with_structure(name)
        if options:
            inst = dataclasses.replace(inst, model=dataclasses.replace(inst.model, **options))
        data = RatingData.from_frame(trial.ratings, inst, layout="long")
        out[name] = fit_model(data, **PROOF_FIT)
    return out
