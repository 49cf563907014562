"""Data-based starting values for the sampler (large designs).

NUTS starts by default from the prior's centre: every subject at 0, cutpoints
evenly spaced. With a few hundred subjects that start is close enough; with
thousands of subjects and millions of ratings the posterior is so narrow that
the first tuning iterations take the longest trajectories the sampler allows
while it travels to it (measured on a GPU: 615 leapfrog steps per iteration
over the first 10 at 100x the founding design). These values put the chains
near the posterior from the start, from simple summaries of the ratings:

* each rating's *score*: the logit of the middle of its category's
  cumulative-proportion interval for its item (``logit((F(y-1) + F(y)) / 2)``),
  a logistic "normal score" that is 0 for the item's median rating;
* subject factors: the mean score of the subject's ratings on the scale,
  centred over subjects; session deviations: the session's mean score minus its
  subject's, halved (shrinkage); SDs: their spreads;
* cutpoints: each item's marginal cumulative logits, stretched by
  ``sqrt(1 + v / 3.29)`` for the latent variance ``v`` they average over;
* judge severities: minus each judge's mean score on the scale, centred over
  judges. Loadings, discriminations and correlations start at their defaults.

The sampler still jitters these starts (nutpie: uniform +-1 on the
unconstrained scale), so chains do not start at one point. Nothing here
changes the model or its posterior.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy.special import logit

if TYPE_CHECKING:
    from caltars_bayes.data.ratings import RatingData
    from caltars_bayes.model.plan import ModelPlan

__all__ = ["rating_scores", "starting_values"]

#: smallest starting SD (a spread of exactly 0 would start on a boundary)
_MIN_SD = 0.1


def rating_scores(data: RatingData, n_categories: int) -> tuple[np.ndarray, np.ndarray]:
    """Each rating's logistic score and each item's marginal cumulative logits.

    Returns ``(score per rating, item x (C - 1) cumulative logits)``; category
    counts get half a rating each so that empty categories stay finite.
    """
    n_items = data.n_items
    counts = np.full((n_items, n_categories), 0.5)
    np.add.at(counts, (np.asarray(data.item_idx), np.asarray(data.y, dtype=np.int64)), 1.0)
    cum = np.cumsum(counts, axis=1) / counts.sum(axis=1, keepdims=True)  # F(c), c = 0..C-1
    lower = np.concatenate([np.zeros((n_items, 1)), cum[:, :-1]], axis=1)  # F(c - 1)
    mid = (lower + cum) / 2
    score = logit(mid)[np.asarray(data.item_idx), np.asarray(data.y, dtype=np.int64)]
    return score, logit(cum[:, :-1])


def _group_mean(values: np.ndarray, index: np.ndarray, n: int) -> np.ndarray:
    total = np.bincount(index, weights=values, minlength=n)
    count = np.bincount(index, minlength=n)
    return np.where(count > 0, total / np.maximum(count, 1), 0.0)


def starting_values(data: RatingData, plan: ModelPlan, n_categories: int) -> dict[str, np.ndarray]:
    """Starting values (constrained scale) for the free variables of the model ``plan`` builds.

    Keyed by variable name, as ``pm.sample(initvals=...)`` and
    ``nutpie.compile_pymc_model(initial_points=...)`` take them.
    """
    n_p, n_s, n_k, n_j = data.n_subjects, data.n_sessions, data.n_scales, data.n_judges
    score, item_cuts = rating_scores(data, n_categories)
    kk = np.asarray(data.scale_idx)
    subj = np.asarray(data.subject_idx) * n_k + kk
    subject_mean = _group_mean(score, subj, n_p * n_k).reshape(n_p, n_k)
    theta = subject_mean - subject_mean.mean(axis=0)
    sd_alliance = np.maximum(theta.std(axis=0), _MIN_SD)
    out: dict[str, np.ndarray] = {"sd_alliance": sd_alliance}
    if plan.joint_subject_sessions:  # set with the session level below
        pass
    elif plan.centred_subjects:
        out["theta_raw"] = theta
    else:
        out["theta_z"] = theta / sd_alliance  # factor correlations start at 0
    v = sd_alliance**2
    if plan.session_level:
        ses = np.asarray(data.session_idx) * n_k + kk
        zeta = _group_mean(score, ses, n_s * n_k).reshape(n_s, n_k)
        zeta = 0.5 * (zeta - subject_mean[np.asarray(data.session_subject_idx)])
        sd_session = np.maximum(zeta.std(axis=0), _MIN_SD)
        out["sd_session"] = sd_session
        if plan.joint_subject_sessions:
            # the subject's average over its sessions, each session's departure
            # from it, and theta_raw at its conditional mean given that average
            ss = np.asarray(data.session_subject_idx)
            z = zeta / sd_session
            z_mean = np.stack([_group_mean(z[:, k], ss, n_p) for k in range(n_k)], axis=1)
            out["subject_mean"] = theta + z_mean * sd_session
            out["theta_z"] = np.zeros((n_p, n_k))
            out["zeta_z"] = z - z_mean[ss]
        else:
            out["zeta" if plan.centred_sessions else "zeta_z"] = (
                zeta if plan.centred_sessions else zeta / sd_session
            )
        v = v + sd_session**2
    stretch = np.sqrt(1.0 + float(np.mean(v)) / 3.29)
    cuts = item_cuts * stretch
    if plan.cutpoints != "item":  # one row per scale: the average of its items
        isc = np.asarray(data.item_scale_idx)
        cuts = np.stack([cuts[isc == k].mean(axis=0) for k in range(n_k)])
    # strictly increasing already (every category count is at least 0.5), as the
    # ordered transform needs; so is an average of such rows
    out["cutpoints"] = cuts
    if plan.judge_severity:
        jk = kk * n_j + np.asarray(data.judge_idx)
        sev = -_group_mean(score, jk, n_k * n_j).reshape(n_k, n_j)
        sev -= sev.mean(axis=1, keepdims=True)
        sd_sev = max(float(sev.std()), _MIN_SD)
        out["sd_severity"] = np.asarray(sd_sev)
        out["severity" if plan.centred_judges else "severity_z"] = (
            sev if plan.centred_judges else sev / sd_sev
        )
    return out
