"""A whole fit directory: the fit's core with its tables, figures and records.

:func:`save_fit_directory` writes what ``caltars-bayes fit`` writes: the
reloadable core (:meth:`~caltars_bayes.inference.fit.Fit.save`) with the
tables, the figures (:data:`FIT_FIGURES`, PNG and SVG), the hypothesis
verdicts and the borrowed-prior records, in one atomic write (nothing is overwritten without
``force``; a failed write leaves no half folder). It returns the tables
(:class:`FitResults`), so that a report reuses them instead of computing them
again or reading the CSVs back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd

from caltars_bayes._core.errors import CaltarsError, FitIOError
from caltars_bayes._core.figures import close_figures, figure_files
from caltars_bayes._core.io import atomic_write_dir, json_writer
from caltars_bayes.analysis.associations import (
    associations,
    imputed_covariates,
    plot_associations,
)
from caltars_bayes.analysis.borrow import (
    PRIOR_CONFLICT_FILE,
    PRIOR_FROM_FILE,
    Borrowed,
    prior_conflict,
)
from caltars_bayes.analysis.reliability import judges_table, reliability
from caltars_bayes.analysis.validity import test_hypotheses
from caltars_bayes.inference.fit import Fit
from caltars_bayes.report.plots import plot_judges
from caltars_bayes.report.plots_data import plot_design
from caltars_bayes.report.plots_results import (
    plot_alliance_sessions,
    plot_loadings,
    plot_reliability,
)
from caltars_bayes.spec.hypotheses import Hypotheses, hypotheses_from_dict

#: the hypotheses a fit was made with, saved in its directory
HYPOTHESES_FILE = "hypotheses.json"
#: the figures of a fit directory (``NAME.png`` and ``NAME.svg``): the design and
#: missingness map, reliability per scale, standardised loadings, the judges
#: (with judge effects), the alliance over sessions of a few subjects and the
#: associations (with covariates)
FIT_FIGURES = ("design", "reliability", "loadings", "judges", "alliance_sessions", "associations")


@dataclass
class FitResults:
    """The tables of a fit directory, computed once (see :func:`save_fit_directory`).

    Attributes
    ----------
    summary, scores, judges, reliability : ``summary.csv``, ``scores.csv``,
        ``judges.csv`` (with each judge's reliability) and ``reliability.csv``.
    associations, imputed_covariates : with covariates only (else None).
    hypotheses, verdicts : the hypotheses tested and ``hypotheses.csv``.
    borrowed, prior_conflict : ``prior_from.json`` and ``prior_conflict.csv``
        of a fit with borrowed priors.
    figures : the figures (:data:`FIT_FIGURES`) by name, until
        :func:`save_fit_directory` has written and closed them.
    """

    summary: pd.DataFrame
    scores: pd.DataFrame
    judges: pd.DataFrame
    reliability: pd.DataFrame
    associations: pd.DataFrame | None = None
    imputed_covariates: pd.DataFrame | None = None
    hypotheses: Hypotheses | None = None
    verdicts: pd.DataFrame | None = None
    borrowed: dict[str, Any] | None = None
    prior_conflict: pd.DataFrame | None = None
    figures: dict[str, Any] = field(default_factory=dict, repr=False)

    def tables(self) -> dict[str, pd.DataFrame]:
        """Every table there is, by its file name in the fit directory."""
        named = {
            "summary.csv": self.summary,
            "scores.csv": self.scores,
            "judges.csv": self.judges,
            "reliability.csv": self.reliability,
            "associations.csv": self.associations,
            "imputed_covariates.csv": self.imputed_covariates,
            "hypotheses.csv": self.verdicts,
            PRIOR_CONFLICT_FILE: self.prior_conflict,
        }
        return {k: v for k, v in named.items() if v is not None}


def fit_results(
    fit: Fit, hypotheses: Hypotheses | None = None, borrowed: Borrowed | None = None
) -> FitResults:
    """Compute the tables (and the associations figure) of a fit directory."""
    res = FitResults(
        summary=fit.summary(),
        scores=fit.scores(),
        judges=judges_table(fit),
        reliability=reliability(fit),
        hypotheses=hypotheses,
    )
    _add_figures(fit, res)
    if fit.plan.covariates or fit.plan.session_covariates:
        res.associations = associations(fit, hypotheses=hypotheses)
        res.imputed_covariates = imputed_covariates(fit)
        if hypotheses is not None:
            res.verdicts = test_hypotheses(fit, hypotheses)
        res.figures["associations"] = plot_associations(fit, res.associations, res.verdicts)
    if borrowed is not None:
        conflict = prior_conflict(fit, borrowed)
        doc = {**borrowed.to_dict(), "conflict_summary": conflict.attrs["summary"]}
        doc["source"] = {"path": borrowed.informative.source, **doc["source"]}
        res.borrowed, res.prior_conflict = doc, conflict
    return res


def _add_figures(fit: Fit, res: FitResults) -> None:
    """The figures drawn from the tables (all of :data:`FIT_FIGURES` but the associations)."""
    res.figures["design"] = plot_design(fit.data)
    res.figures["reliability"] = plot_reliability(fit, res.reliability)
    res.figures["loadings"] = plot_loadings(fit)
    if "severity" in fit.posterior or "discrimination" in fit.posterior:
        res.figures["judges"] = plot_judges(fit)
    res.figures["alliance_sessions"] = plot_alliance_sessions(fit, scores=res.scores)


def save_fit_directory(
    fit: Fit,
    out: str | Path,
    *,
    hypotheses: Hypotheses | None = None,
    borrowed: Borrowed | None = None,
    force: bool = False,
) -> FitResults:
    """Write a whole fit directory atomically and return its tables.

    Parameters
    ----------
    fit : the fit.
    out : the directory to write (an existing one needs ``force``).
    hypotheses : validity hypotheses to test (written as ``hypotheses.json``
        and their verdicts as ``hypotheses.csv``; needs covariates).
    borrowed : the borrowed priors the fit was made with
        (:func:`~caltars_bayes.analysis.borrow.derive_priors`): writes
        ``prior_from.json`` and the prior-data conflict ``prior_conflict.csv``.

    Returns
    -------
    FitResults : the tables, for :func:`~caltars_bayes.report.build.build_report`
    (``results=``) to reuse.
    """
    out = Path(out)
    if out.exists() and not force:
        raise CaltarsError(f"{out}: already exists; use --force to overwrite")
    res = fit_results(fit, hypotheses, borrowed)
    files = fit.core_files()
    for name, table in res.tables().items():
        files[name] = partial(_write_csv, table)
    if hypotheses is not None and res.verdicts is not None:
        files[HYPOTHESES_FILE] = json_writer(hypotheses.to_dict())
    if res.borrowed is not None:
        files[PRIOR_FROM_FILE] = json_writer(res.borrowed)
    for name, fig in res.figures.items():
        files.update(figure_files(name, fig))
    try:
        atomic_write_dir(out, files, force=force)
    finally:
        close_figures(list(res.figures.values()))
        res.figures.clear()
    fit.directory = out
    return res


def _write_csv(table: pd.DataFrame, path: Path) -> None:
    table.to_csv(path, index=False)


def saved_hypotheses(fitdir: str | Path) -> Hypotheses | None:
    """The hypotheses a fit directory was written with (None when it has none)."""
    path = Path(fitdir) / HYPOTHESES_FILE
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
        raise FitIOError(f"{path}: corrupted ({exc})") from None
    return hypotheses_from_dict(doc, str(path))
