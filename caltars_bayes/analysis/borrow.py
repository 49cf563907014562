"""Informative priors from an earlier trial (``fit NEW --prior-from FITDIR``).

What is borrowed. The instrument and the population parameters, each on an
unconstrained scale, moment-matched per element (posterior mean and SD over
the earlier fit's draws; correlations between elements are not kept):

=========================== ============================================ ==========
quantity                    definition                                   source
=========================== ============================================ ==========
``log_loading``             log of each item's loading                   loading
``cutpoint_location``       an item's first cutpoint minus the mean      cutpoints
                            first cutpoint of its scale
``cutpoint_log_gap``        log of each gap between adjacent cutpoints   cutpoints
``log_sd_alliance``         log SD of treatment-level alliance           sd_alliance
``log_sd_session``          log SD of session deviations                 sd_session
``log_sd_severity``         log SD of judge severity                     sd_severity
``log_sd_log_discrimination`` log SD of log judge discrimination         sd_log_discrimination
``factor_corr_z``           Fisher z of each factor correlation          factor_corr
``session_trend``           change per session                           session_trend
=========================== ============================================ ==========

Not borrowed: subjects (other people), judges (a new panel has another
average judge, which the severities and discriminations are relative to),
covariate associations, and the overall location of each scale's cutpoints.
The last matters: each trial's scale origin is its own sample's average
subject, so cutpoints are thresholds for that subject; borrowing them whole
would force the new sample to have the earlier sample's average alliance.
Cutpoint *shapes* (item locations relative to their scale, gaps) are
instrument properties and are borrowed; the scale's location is not.

Power prior. With weight ``w`` in (0, 1] the borrowed Normal(m, s) is raised
to the power ``w``: Normal(m, s / sqrt(w)). ``w = 1`` borrows the earlier
posterior in full, smaller ``w`` discounts it. The borrowed terms are added
to the model's default (weak) priors as ``pm.Potential`` terms.

Prior-data conflict (:func:`prior_conflict`): for each borrowed element,
``z = (new posterior mean - borrowed mean) / sqrt(borrowed var - new posterior var)``
(floored at a tenth of the borrowed variance). In a Gaussian conjugate update
with no conflict ``z`` is standard normal (the data's pull on the posterior
mean has variance ``prior var - posterior var``). An element is flagged when
``|z|`` exceeds the Bonferroni bound for a family-wise 5% over all borrowed
elements; any flag is reported as prior-data conflict.

Files. ``caltars-bayes fit NEW --prior-from FITDIR`` writes the derivation
(:meth:`Borrowed.to_dict`, with the source fit's path and the conflict
summary) to ``prior_from.json`` and the conflict table to
``prior_conflict.csv`` in the new fit directory; :func:`read_prior_from` reads
them back for the report (``caltars_bayes.report.document``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import ndtri

from caltars_bayes._core.errors import DataError, FitIOError
from caltars_bayes.data.ratings import RatingData
from caltars_bayes.inference.fit import Fit
from caltars_bayes.model.informative import QUANTITIES, InformativePriors, transform
from caltars_bayes.model.plan import ModelPlan, plan_model

CONFLICT_ALPHA = 0.05
#: Smallest moment-matched SD (the earlier posterior can be nearly degenerate).
MIN_SD = 1e-3
#: Family of every borrowed prior (on the quantity's unconstrained scale).
FAMILY = "Normal"
#: Files a ``fit --prior-from`` adds to the fit directory.
PRIOR_FROM_FILE = "prior_from.json"
PRIOR_CONFLICT_FILE = "prior_conflict.csv"
#: Columns of a borrowed element in ``prior_from.json`` (``priors``) and of the conflict table.
PRIOR_COLUMNS = ["quantity", "element", "source", "definition", "mean", "sd", "weight", "prior_sd"]
CONFLICT_COLUMNS = [
    "quantity", "element", "prior_mean", "prior_sd", "post_mean", "post_sd", "z", "threshold",
    "conflict",
]  # fmt: skip


def element_labels(name: str, data: RatingData, n_rows: int, n_cut: int) -> list[str]:
    """Labels of the flattened elements of a borrowed quantity."""
    items, scales = list(data.items), list(data.scales)
    if name in ("log_loading", "cutpoint_location"):
        return items
    if name == "cutpoint_log_gap":
        rows = items if n_rows == len(items) else scales
        return [f"{r}, gap {c + 1}" for r in rows for c in range(n_cut - 1)]
    if name in ("log_sd_alliance", "log_sd_session", "session_trend"):
        return scales
    if name == "factor_corr_z":
        iu = np.triu_indices(len(scales), 1)
        return [f"{scales[i]}, {scales[j]}" for i, j in zip(*iu, strict=True)]
    return [""]


def _wanted(name: str, plan: ModelPlan, data: RatingData) -> bool:
    """Is the quantity part of the new model?"""
    return {
        "log_loading": True,
        "cutpoint_location": plan.cutpoints == "item",
        "cutpoint_log_gap": True,
        "log_sd_alliance": True,
        "log_sd_session": plan.session_level,
        "log_sd_severity": plan.judge_severity,
        "log_sd_log_discrimination": plan.judge_discrimination,
        "factor_corr_z": data.n_scales > 1 and not plan.bifactor,
        "session_trend": plan.session_trend,
    }[name]


@dataclass
class Borrowed:
    """Informative priors derived from an earlier fit.

    Attributes
    ----------
    informative : quantity -> (mean, effective sd), with the weight and the
        earlier fit's directory, for
        :class:`~caltars_bayes.model.build.AllianceModel` (``informative=``).
    table : one row per borrowed element: ``quantity, element, source,
        definition, mean, sd`` (moment-matched), ``weight, prior_sd`` (``sd /
        sqrt(weight)``, what the new model uses).
    weight : the power-prior weight.
    source : the earlier fit's design, hashes and convergence verdict.
    notes : what was not borrowed and why.
    """

    informative: InformativePriors
    table: pd.DataFrame
    weight: float
    source: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Everything a reader needs to see what was borrowed (``prior_from.json``)."""
        return {
            "method": (
                "moment-matched Normal priors per element on the unconstrained scale "
                "(mean and SD over the earlier fit's posterior draws), raised to the power "
                "weight (SD / sqrt(weight)), added to the default priors"
            ),
            "family": FAMILY,
            "weight": self.weight,
            "source": self.source,
            "notes": self.notes,
            "quantities": {k: v[1] for k, v in QUANTITIES.items() if k in self.informative},
            "priors": self.table.to_dict(orient="records"),
        }


def derive_priors(earlier: Fit, data: RatingData, weight: float = 1.0) -> Borrowed:
    """Moment-matched informative priors for a new trial from an earlier fit.

    Parameters
    ----------
    earlier : the earlier trial's fit (same instrument).
    data : the new trial's ratings (decides which quantities its model has).
    weight : power-prior weight in [0, 1]; 0 borrows nothing.

    Returns
    -------
    Borrowed
    """
    if not 0.0 <= weight <= 1.0 or not np.isfinite(weight):
        raise DataError(f"--prior-weight {weight!r}: must be a number in [0, 1]")
    old, new = earlier.data.instrument, data.instrument
    if tuple(old.items) != tuple(new.items) or old.item_scale != new.item_scale:
        raise DataError(
            f"--prior-from: the earlier fit is of {old.name!r} with other items or scales than "
            f"the new ratings' {new.name!r}"
        )
    if (old.response_min, old.response_max) != (new.response_min, new.response_max):
        raise DataError("--prior-from: the earlier fit has another response range")
    if old.reverse_keyed != new.reverse_keyed:
        raise DataError("--prior-from: the earlier fit has other reverse-keyed items")
    plan = plan_model(data)
    post = earlier.posterior
    notes = [
        "not borrowed: subjects, judges (a new panel has another average judge), covariate "
        "associations, and each scale's overall cutpoint location (the origin is each "
        "sample's own average subject)"
    ]
    rows, informative = [], {}
    if weight == 0:
        notes.append("weight 0: nothing borrowed")
    for name, (var, definition) in QUANTITIES.items():
        if weight == 0:
            break
        if not _wanted(name, plan, data):
            continue
        if var not in post:
            notes.append(f"{name}: not in the earlier fit ({var} absent)")
            continue
        if name == "cutpoint_location" and earlier.plan.cutpoints != "item":
            notes.append("cutpoint_location: the earlier fit has cutpoints per scale")
            continue
        if name == "cutpoint_log_gap" and earlier.plan.cutpoints != plan.cutpoints:
            notes.append("cutpoint_log_gap: cutpoints per item vs per scale differ")
            continue
        da = post[var].stack(sample=("chain", "draw")).transpose("sample", ...)
        vals = transform(name, np.asarray(da.values, dtype=float), data)
        vals = vals.reshape(vals.shape[0], -1)
        mean, sd = vals.mean(axis=0), np.maximum(vals.std(axis=0, ddof=1), MIN_SD)
        prior_sd = sd / np.sqrt(weight)
        informative[name] = (mean, prior_sd)
        shape = da.shape[1:]
        labels = element_labels(
            name, data, shape[0] if shape else 1, shape[1] if len(shape) > 1 else 1
        )
        for lab, m, s, ps in zip(labels, mean, sd, prior_sd, strict=True):
            rows.append([name, lab, var, definition, m, s, weight, ps])
    table = pd.DataFrame(rows, columns=PRIOR_COLUMNS)
    ed = earlier.data
    source = {
        "instrument": old.name,
        "data_hash": earlier.record.data_hash,
        "spec_hash": earlier.record.spec_hash,
        "created": earlier.record.created,
        "n_subjects": ed.n_subjects,
        "n_sessions": ed.n_sessions,
        "n_judges": ed.n_judges,
        "n_ratings": ed.n_ratings,
        "converged": earlier.diagnostics.converged,
        "verdict": earlier.diagnostics.banner(),
    }
    if not earlier.diagnostics.converged:
        notes.append("the earlier fit did NOT converge: the borrowed priors inherit its problems")
    directory = str(earlier.directory) if earlier.directory is not None else None
    priors = InformativePriors(informative, float(weight), directory)
    return Borrowed(priors, table, float(weight), source, notes)


def prior_conflict(fit: Fit, borrowed: Borrowed) -> pd.DataFrame:
    """Prior-data conflict per borrowed element (see the module docstring).

    Returns
    -------
    DataFrame with columns ``quantity, element, prior_mean, prior_sd`` (the
    borrowed prior the new model used), ``post_mean, post_sd`` (the new
    posterior of the same quantity), ``z``, ``threshold`` (the Bonferroni bound
    on ``|z|``), ``conflict`` (``|z| > threshold``) and ``converged`` (the new
    fit's verdict); ``attrs["diagnostics"]`` holds its banner and
    ``attrs["summary"]`` one line.
    """
    post = fit.posterior
    rows = []
    for name, (mean, sd) in borrowed.informative.items():
        var = QUANTITIES[name][0]
        da = post[var].stack(sample=("chain", "draw")).transpose("sample", ...)
        vals = transform(name, np.asarray(da.values, dtype=float), fit.data)
        vals = vals.reshape(vals.shape[0], -1)
        labels = borrowed.table.loc[borrowed.table["quantity"] == name, "element"].tolist()
        pm_, ps = vals.mean(axis=0), vals.std(axis=0, ddof=1)
        for lab, m0, s0, m1, s1 in zip(labels, mean, sd, pm_, ps, strict=True):
            rows.append([name, lab, m0, s0, m1, s1])
    out = pd.DataFrame(
        rows, columns=["quantity", "element", "prior_mean", "prior_sd", "post_mean", "post_sd"]
    )
    pv, qv = out["prior_sd"] ** 2, out["post_sd"] ** 2
    out["z"] = (out["post_mean"] - out["prior_mean"]) / np.sqrt(np.maximum(pv - qv, 0.1 * pv))
    n = max(len(out), 1)
    thr = float(ndtri(1.0 - CONFLICT_ALPHA / (2 * n)))
    out["threshold"] = thr
    out["conflict"] = out["z"].abs() > thr
    out["converged"] = fit.diagnostics.converged
    out.attrs["diagnostics"] = fit.diagnostics.banner()
    out.attrs["summary"] = conflict_summary(out)
    return out


def conflict_summary(conflict: pd.DataFrame) -> str:
    """One line saying whether a :func:`prior_conflict` table flags anything, and what."""
    if conflict.empty:
        return "nothing borrowed: no prior-data conflict check"
    thr = float(conflict["threshold"].iloc[0])
    flagged = conflict["conflict"].astype(bool)
    bad = conflict[flagged]
    if bad.empty:
        return (
            f"no prior-data conflict: all {len(conflict)} borrowed elements within |z| <= {thr:.2f}"
        )
    worst = bad.reindex(bad["z"].abs().sort_values(ascending=False).index).head(5)
    listed = "; ".join(f"{r.quantity}[{r.element}] z={r.z:+.1f}" for r in worst.itertuples())
    return (
        f"PRIOR-DATA CONFLICT: {len(bad)} of {len(conflict)} borrowed elements beyond "
        f"|z| > {thr:.2f} ({listed}); consider a smaller --prior-weight or no borrowing"
    )


def read_prior_from(fitdir: str | Path) -> tuple[dict[str, Any] | None, pd.DataFrame | None]:
    """The borrowed-prior derivation and conflict table a ``fit --prior-from`` wrote.

    Parameters
    ----------
    fitdir : a fit directory.

    Returns
    -------
    (doc, conflict) : ``doc`` is ``prior_from.json`` (method, family, weight,
    source, notes, quantities, ``priors``: one record per borrowed element with
    ``quantity, element, source, definition, mean, sd, weight, prior_sd``,
    conflict_summary); ``conflict`` is ``prior_conflict.csv`` with the columns
    of :func:`prior_conflict` (``element`` empty for a single-element
    quantity). Either is None when its file is absent. Raises
    :class:`~caltars_bayes._core.errors.FitIOError` for a corrupted file.
    """
    p = Path(fitdir)
    doc, conflict = None, None
    path = p / PRIOR_FROM_FILE
    if path.is_file():
        try:
            doc = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
            raise FitIOError(f"{path}: corrupted ({exc})") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("priors"), list):
            raise FitIOError(f"{path}: not a borrowed-prior record (no 'priors' list)")
        for i, rec in enumerate(doc["priors"]):
            missing = [c for c in PRIOR_COLUMNS if not isinstance(rec, dict) or c not in rec]
            if missing:
                raise FitIOError(f"{path}: priors[{i}] lacks {', '.join(missing)}")
        if "weight" not in doc:
            raise FitIOError(f"{path}: no 'weight'")
    path = p / PRIOR_CONFLICT_FILE
    if path.is_file():
        try:
            conflict = pd.read_csv(path, dtype={"quantity": str, "element": str})
        except (ValueError, UnicodeDecodeError, OSError) as exc:
            raise FitIOError(f"{path}: not a CSV table ({exc})") from None
        missing = [c for c in CONFLICT_COLUMNS if c not in conflict.columns]
        if missing:
            raise FitIOError(f"{path}: not a prior-conflict table (no {', '.join(missing)})")
        conflict["element"] = conflict["element"].fillna("")
        if conflict["conflict"].dtype != bool:
            flags = conflict["conflict"].astype(str).str.strip().str.lower()
            if not flags.isin(["true", "false"]).all():
                raise FitIOError(f"{path}: column 'conflict' is not True/False")
            conflict["conflict"] = flags == "true"
    return doc, conflict
