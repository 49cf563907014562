"""Priors borrowed from an earlier trial, in the report (a fit made with ``--prior-from``).

:func:`borrowed_section` is the report's section "Priors borrowed from an
earlier trial": what was borrowed, from which fit, with what power-prior
weight, and the prior-data conflict of each borrowed element;
:func:`borrowed_methods_text` is the methods paragraph's sentences on it and
:func:`borrowed_headline` its line in the summary. The record
(``prior_from.json``) and conflict table (``prior_conflict.csv``) come from
:mod:`caltars_bayes.analysis.borrow`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy.special import ndtri

from caltars_bayes.analysis.borrow import (
    CONFLICT_ALPHA,
    PRIOR_CONFLICT_FILE,
    PRIOR_FROM_FILE,
    conflict_summary,
)
from caltars_bayes.report.elements import ReportTable, Section

if TYPE_CHECKING:
    from caltars_bayes.inference.fit import Fit

#: Columns of the report's borrowed-prior and prior-data conflict tables.
BORROWED_COLUMNS = [
    "quantity", "element", "variable", "family", "location", "scale", "source_mean",
    "source_sd", "weight",
]  # fmt: skip
PRIOR_CONFLICT_COLUMNS = [
    "quantity", "element", "prior_mean", "prior_sd", "post_mean", "post_sd", "z", "flag",
]  # fmt: skip
#: The ``flag`` of a borrowed element in prior-data conflict.
CONFLICT_FLAG = "CONFLICT"


def _conflict_threshold(doc: dict[str, Any] | None, conflict: pd.DataFrame | None) -> float:
    """The |z| bound of the conflict check (from the table, else from the number of elements)."""
    if conflict is not None and len(conflict):
        return float(conflict["threshold"].iloc[0])
    n = max(len((doc or {}).get("priors", [])), 1)
    return float(ndtri(1.0 - CONFLICT_ALPHA / (2 * n)))


def _borrowed_source(fit: Fit, doc: dict[str, Any] | None) -> tuple[str, float | None]:
    """Path of the earlier fit and the power-prior weight, as recorded."""
    recorded = fit.record.prior_from
    src = (doc or {}).get("source", {})
    path = src.get("path") or (recorded and recorded.fit)
    # a report never shows an absolute path: the folder's name instead
    if path and Path(str(path)).is_absolute():
        path = Path(str(path)).name
    path = str(path) if path else "an earlier fit (path not recorded)"
    weight = (doc or {}).get("weight", recorded and recorded.weight)
    return str(path), None if weight is None else float(weight)


def borrowed_methods_text(
    fit: Fit, doc: dict[str, Any] | None, conflict: pd.DataFrame | None
) -> str | None:
    """The methods paragraph's sentences on borrowed priors (None when nothing was borrowed)."""
    if doc is None and conflict is None and fit.record.prior_from is None:
        return None
    path, weight = _borrowed_source(fit, doc)
    w = "unrecorded" if weight is None else f"{weight:g}"
    if doc is None:
        return (
            f"Informative priors were borrowed from an earlier fit ({path}) with power-prior "
            f"weight {w} (moment-matched Normal priors; the derivation is in prior_from.json)."
        )
    if not doc["priors"]:
        return (
            f"Priors from an earlier fit ({path}) were requested with weight {w}: nothing was "
            "borrowed."
        )
    src = doc.get("source", {})
    design = ", ".join(
        f"{src[k]:,} {label}"
        for k, label in (("n_subjects", "subjects"), ("n_ratings", "ratings"))
        if isinstance(src.get(k), int)
    )
    what = "; ".join(doc.get("quantities", {}).values()) or "see prior_from.json"
    text = (
        f"Informative priors were borrowed from an earlier fit of the "
        f"{src.get('instrument', fit.instrument.name)} ({design + '; ' if design else ''}{path}): "
        f"each element of the borrowed quantities ({what}) received a "
        f"{doc.get('family', 'Normal')} prior on its unconstrained scale with the earlier "
        "posterior's mean and SD (moment matching; correlations between elements were not "
        f"kept), discounted by the power-prior weight {w} (SD divided by the square root of "
        "the weight) and added to the priors above; subjects, judges, covariate associations "
        "and each scale's overall cutpoint location were not borrowed."
    )
    if src.get("converged") is False:
        text += " The earlier fit had NOT converged."
    if conflict is not None and len(conflict):
        n_flag = int(conflict["conflict"].astype(bool).sum())
        text += (
            f" Prior-data conflict was checked per borrowed element (new posterior mean against "
            f"the borrowed prior, flagged beyond |z| = {_conflict_threshold(doc, conflict):.2f}, "
            f"Bonferroni over {len(conflict)} elements): {n_flag} flagged."
        )
    return text


def borrowed_section(
    fit: Fit, doc: dict[str, Any] | None, conflict: pd.DataFrame | None
) -> Section | None:
    """Priors borrowed from an earlier trial and their prior-data conflict (None: not borrowed).

    Tables: ``prior_source`` (the earlier fit as recorded), ``borrowed_priors``
    (one row per borrowed element: ``quantity, element, variable`` (the
    posterior variable it comes from), ``family, location, scale`` (the prior
    the new model used: location is the earlier posterior mean, scale its SD
    divided by the square root of the weight), ``source_mean, source_sd`` (the
    earlier posterior's moments), ``weight``, ``converged`` (the earlier fit's
    verdict)) and ``prior_conflict`` (``quantity, element, prior_mean,
    prior_sd, post_mean, post_sd, z, flag`` (``CONFLICT`` when flagged; flagged
    rows first, by |z|), ``converged`` (this fit's verdict)).
    """
    if doc is None and conflict is None and fit.record.prior_from is None:
        return None
    key, title = "borrowed", "Priors borrowed from an earlier trial"
    path, weight = _borrowed_source(fit, doc)
    w = "unrecorded" if weight is None else f"{weight:g}"
    text: list[str] = []
    tables: list[ReportTable] = []
    if doc is None:
        text.append(
            f"This fit used informative priors borrowed from {path} (power-prior weight {w}), "
            f"but their derivation ({PRIOR_FROM_FILE}) was not given to the report, so what was "
            "borrowed cannot be shown here: build the report from the fit directory."
        )
    else:
        _describe_borrowed(doc, path, w, text, tables)
    if conflict is None:
        if doc is not None and doc["priors"]:
            text.append(
                f"The prior-data conflict table ({PRIOR_CONFLICT_FILE}) was not given to the "
                "report: conflict is not shown."
            )
    elif len(conflict):
        _describe_conflict(fit, doc, conflict, text, tables)
    else:
        why = " (weight 0)" if weight == 0 else ""
        text.append(f"Nothing was borrowed{why}: no prior-data conflict check.")
    return Section(key, title, text, tables)


def _describe_borrowed(
    doc: dict[str, Any], path: str, w: str, text: list[str], tables: list[ReportTable]
) -> None:
    """Add the text and tables on what was borrowed (``prior_source``, ``borrowed_priors``)."""
    src = doc.get("source", {})
    source_ok = src.get("converged")
    text.append(
        f"This fit used informative priors derived from the posterior of an earlier fit "
        f"({path}): {doc.get('method', 'moment-matched priors')}. Power-prior weight {w}: "
        "each borrowed Normal(m, s) was raised to the power of the weight, i.e. used as "
        "Normal(m, s / sqrt(weight)); 1 borrows the earlier posterior in full, smaller "
        "weights discount it."
    )
    quantities = doc.get("quantities", {})
    if quantities:
        text.append(
            "Borrowed quantities: " + "; ".join(f"{k} ({v})" for k, v in quantities.items()) + "."
        )
    text.extend(f"Note: {n}" for n in doc.get("notes", []))
    rows = [("path", path)]
    for k in ("instrument", "n_subjects", "n_sessions", "n_judges", "n_ratings",
              "data_hash", "spec_hash", "created", "verdict"):  # fmt: skip
        if src.get(k) is not None:
            rows.append((k, str(src[k])))
    rows.append(("weight", w))
    tables.append(
        ReportTable(
            "prior_source",
            "The earlier fit the priors were borrowed from, as recorded.",
            pd.DataFrame(rows, columns=["field", "value"]),
            posterior=False,
        )
    )
    pri = pd.DataFrame(doc["priors"])
    if not len(pri):
        return
    table = pd.DataFrame(
        {
            "quantity": pri["quantity"],
            "element": pri["element"].fillna(""),
            "variable": pri["source"],
            "family": doc.get("family", "Normal"),
            "location": pri["mean"].astype(float),
            "scale": pri["prior_sd"].astype(float),
            "source_mean": pri["mean"].astype(float),
            "source_sd": pri["sd"].astype(float),
            "weight": pri["weight"].astype(float),
            "converged": bool(source_ok),
        }
    )
    tables.append(
        ReportTable(
            "borrowed_priors",
            "Moment-matched priors borrowed from the earlier fit, one row per element: "
            "location and scale of the prior the new model used (on the quantity's "
            "scale), from the earlier posterior's mean and SD.",
            table,
            digits=3,
            column_digits={"weight": 2},
            note=(
                ""
                if source_ok
                else "The earlier fit's verdict was not recorded."
                if source_ok is None
                else f"The earlier fit did NOT converge ({src.get('verdict', '')}): the "
                "borrowed priors inherit its problems."
            ),
            posterior=False,
        )
    )


def _describe_conflict(
    fit: Fit,
    doc: dict[str, Any] | None,
    conflict: pd.DataFrame,
    text: list[str],
    tables: list[ReportTable],
) -> None:
    """Add the text and the ``prior_conflict`` table on prior-data conflict (non-empty table)."""
    thr = _conflict_threshold(doc, conflict)
    text.append(
        "Prior-data conflict is judged element by element: z is the distance of this fit's "
        "posterior mean from the borrowed prior mean, in units of how far the new data "
        "could be expected to move it if both trials shared the parameter (the square root "
        "of the prior variance minus the new posterior variance, at least a tenth of the "
        f"prior variance). An element is flagged ({CONFLICT_FLAG}) when |z| exceeds "
        f"{thr:.2f}, the bound that keeps the chance of any false flag among the "
        f"{len(conflict)} borrowed elements at 5% (Bonferroni)."
    )
    text.append(f"Result: {conflict_summary(conflict)}.")
    if not fit.diagnostics.converged:
        text.append(
            "This fit did NOT converge: its posterior means and SDs, hence z and the flags, "
            "are provisional."
        )
    flagged = conflict["conflict"].astype(bool)
    worst_first = conflict.loc[flagged, "z"].abs().sort_values(ascending=False, kind="stable")
    order = [*worst_first.index, *conflict.index[~flagged]]  # flagged first, then as borrowed
    frame = conflict.loc[order, PRIOR_CONFLICT_COLUMNS[:-1]].copy()
    frame["element"] = frame["element"].fillna("")
    frame["flag"] = np.where(flagged.loc[order], CONFLICT_FLAG, "")
    frame["converged"] = fit.diagnostics.converged
    tables.append(
        ReportTable(
            "prior_conflict",
            f"Prior-data conflict per borrowed element: z of this fit's posterior mean "
            f"against the borrowed prior; {CONFLICT_FLAG} when |z| > {thr:.2f} "
            f"({int(flagged.sum())} flagged, listed first).",
            frame.reset_index(drop=True),
            digits=3,
            column_digits={"z": 2},
        )
    )


def borrowed_headline(fit: Fit, doc: dict[str, Any] | None, conflict: pd.DataFrame | None) -> str:
    """The summary line on the borrowed priors and their prior-data conflict."""
    path, weight = _borrowed_source(fit, doc)
    w = "unrecorded" if weight is None else f"{weight:g}"
    head = f"Priors borrowed from {path} (weight {w})"
    if doc is None:
        return f"{head}: their derivation (prior_from.json) is missing"
    if conflict is None:
        return f"{head}: prior-data conflict not shown (prior_conflict.csv missing)"
    return f"{head}: {conflict_summary(conflict)}"
