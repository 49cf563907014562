"""The true reliability coefficients of a simulated trial, by both routes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import xarray as xr

from caltars_bayes.analysis.reliability.coefficients import (
    COEFFICIENTS,
    GENERALIZES_BOTH,
    GENERALIZES_JUDGES,
    _coefficients,
)
from caltars_bayes.analysis.reliability.components import (
    ROUTES,
    _Design,
    _harmonic_mean,
    latent_components,
    simulate_observed_components,
)

if TYPE_CHECKING:
    from caltars_bayes.spec.instrument import Instrument


def true_reliability(
    truth: xr.Dataset,
    instrument: Instrument,
    k_judges: int | None = None,
    *,
    routes: Sequence[str] = ROUTES,
    sd_interaction: float | None = None,
    n_new_judges: int = 200,
    n_replicates: int = 8,
    min_subjects: int = 200,
    seed: int = 0,
) -> pd.DataFrame:
    """The true coefficients of a simulated trial (``simulate_trial(...).truth``).

    The latent route applies :func:`latent_components` and
    :func:`coefficient_from_components` to the true population SDs
    (``sd_alliance``, ``sd_session``, ``sd_severity``,
    ``sd_log_discrimination``; ``sd_interaction`` from the argument, else the
    SD of the true interactions) and the true loadings: the same formula the
    posterior uses. The observed route is brute force with the posterior's
    simulator (:func:`simulate_observed_components`) at the true parameters:
    ``n_replicates`` new trials of the design (at least ``min_subjects``
    subjects each, new subjects, sessions and ``n_new_judges`` judges from the
    true populations, rated with the true loadings and cutpoints); their
    components are averaged.

    Parameters
    ----------
    truth : the trial's truth Dataset.
    instrument : the instrument simulated.
    k_judges : ``k`` of the mean-of-``k`` rows; default the truth's ``n_judges``
        attribute (the design's judges per session for a complete crossing).

    Returns
    -------
    DataFrame with columns ``scale, level, judges, sessions, route,
    coefficient, generalizes_over, value``, rows matching :func:`reliability`.
    """
    codes = list(truth["scale"].values)
    items = list(truth["item"].values)
    item_scale = np.array([codes.index(instrument.item_scale[i]) for i in items])
    subjects = list(truth["subject"].values)
    ses_subj = np.array([subjects.index(s) for s in truth["session_subject"].values])
    n_p = np.bincount(ses_subj, minlength=len(subjects))
    n_ses = _harmonic_mean(n_p[n_p > 0])
    k = int(truth.attrs.get("n_judges", 1)) if k_judges is None else int(k_judges)
    judges = xr.DataArray(sorted({1, k}), dims="judges")
    judges = judges.assign_coords(judges=judges.values)
    if sd_interaction is None:
        sd_interaction = float(truth["interaction"].std()) if "interaction" in truth else 0.0
    avg = np.zeros((len(items), len(codes)))
    avg[np.arange(len(items)), item_scale] = 1.0 / np.bincount(item_scale)[item_scale]
    scale = xr.DataArray(codes, dims="scale")
    mean_loading = xr.DataArray(
        truth["loading"].values @ avg, dims="scale", coords={"scale": scale}
    )
    n_items = xr.DataArray(np.bincount(item_scale).astype(float), dims="scale")
    n_items = n_items.assign_coords(scale=codes)
    sd_sev = float(truth["sd_severity"]) if int(truth.attrs.get("n_judges", 2)) > 1 else 0.0
    sd_ld = (
        float(truth["sd_log_discrimination"]) if int(truth.attrs.get("n_judges", 2)) > 1 else 0.0
    )
    rows = []
    for route in routes:
        if route == "latent":
            comps = latent_components(
                truth["sd_alliance"].assign_coords(scale=codes),
                truth["sd_session"].assign_coords(scale=codes),
                mean_loading,
                n_items,
                sd_severity=sd_sev,
                sd_log_discrimination=sd_ld,
                sd_interaction=sd_interaction,
            )
        elif route == "observed":
            design = _Design(ses_subj, len(subjects), item_scale, len(codes))
            one = lambda a: np.repeat(np.asarray(a, float)[None], n_replicates, 0)  # noqa: E731
            obs = simulate_observed_components(
                design,
                one(truth["sd_alliance"].values),
                one(truth["sd_session"].values),
                one(truth["loading"].values),
                one(truth["cutpoints"].transpose("item", "cutpoint").values),
                np.full(n_replicates, sd_sev),
                np.full(n_replicates, sd_ld),
                np.full(n_replicates, float(sd_interaction)),
                n_new_judges,
                np.random.default_rng(seed),
                min_subjects=min_subjects,
            )
            comps = {
                n: xr.DataArray(v.mean(0), dims="scale", coords={"scale": codes})
                for n, v in obs.items()
            }
        else:
            raise ValueError(f"unknown route {route!r}")
        coefs = _coefficients(comps, judges, n_ses)
        for coef in COEFFICIENTS:
            s = coefs[coef].to_dataframe(name="value").reset_index()
            s["coefficient"], s["generalizes_over"], s["route"] = coef, GENERALIZES_JUDGES, route
            rows.append(s)
            gname = "generalizability" if coef == "agreement" else f"generalizability_{coef}"
            g = coefs[gname].to_dataframe(name="value").reset_index()
            g["level"] = "treatment"
            g["coefficient"], g["generalizes_over"], g["route"] = coef, GENERALIZES_BOTH, route
            rows.append(g)
    out = pd.concat(rows, ignore_index=True)
    out["sessions"] = np.where(out["level"] == "session", 1.0, n_ses)
    out["judges"] = out["judges"].astype(int)
    cols = ["scale", "level", "judges", "sessions", "route", "coefficient", "generalizes_over",
            "value"]  # fmt: skip
    return out[cols]
