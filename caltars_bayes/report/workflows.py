"""The workflows behind ``caltars-bayes fit``, ``check`` and ``compare``, as library functions.

Each command line is argument parsing around one of these, so a notebook and
the command line write the same folder from the same call:

- :func:`fit_to_directory` (``caltars-bayes fit``): check the hypotheses
  against the data, borrow priors from an earlier fit if asked, fit, and write
  the fit directory (:func:`~caltars_bayes.report.outputs.save_fit_directory`).
- :func:`run_check` (``caltars-bayes check``): standardised loadings beside the
  classical PCA, factor correlations and posterior predictive checks.
- :func:`run_compare` (``caltars-bayes compare``): fits compared by
  cross-validation.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from caltars_bayes._core.errors import CaltarsError
from caltars_bayes._core.figures import close_figures, figure_files
from caltars_bayes._core.io import atomic_write_dir
from caltars_bayes._core.progress import Say, silent
from caltars_bayes.analysis.borrow import Borrowed, derive_priors, read_prior_from
from caltars_bayes.analysis.compare import compare_fits, plot_compare
from caltars_bayes.analysis.ppc import PPC, ppc
from caltars_bayes.analysis.structure import (
    classical_structure,
    factor_correlations,
    plot_factor_correlations,
    standardised_loadings,
)
from caltars_bayes.analysis.validity import summarise_verdicts
from caltars_bayes.data.ratings import RatingData
from caltars_bayes.inference.fit import Fit, fit_model, load_fit
from caltars_bayes.inference.sampling import default_tune
from caltars_bayes.model.build import AllianceModel
from caltars_bayes.model.plan import plan_model
from caltars_bayes.report.build import build_report
from caltars_bayes.report.document import Report
from caltars_bayes.report.formats import FORMATS, SUFFIX
from caltars_bayes.report.outputs import FitResults, save_fit_directory, saved_hypotheses
from caltars_bayes.spec.hypotheses import Hypotheses, check_hypotheses, load_hypotheses

#: fit_model's keyword defaults (what a fit runs with unless told otherwise)
FIT_DEFAULTS = {
    k: p.default
    for k, p in inspect.signature(fit_model).parameters.items()
    if p.default is not inspect.Parameter.empty
}


def checked_hypotheses(hypotheses: Hypotheses | str | Path, data: RatingData) -> Hypotheses:
    """Hypotheses (a TOML path or parsed) checked against the data's scales and
    modelled covariates, before anything is fitted."""
    hyps = load_hypotheses(hypotheses) if isinstance(hypotheses, str | Path) else hypotheses
    plan = plan_model(data)
    check_hypotheses(hyps, list(data.scales), plan.covariates + plan.session_covariates)
    return hyps


def borrow_priors(
    prior_from: Fit | str | Path,
    data: RatingData,
    weight: float = 1.0,
    say: Say = silent,
) -> Borrowed:
    """Informative priors for ``data`` from an earlier fit (or its directory)."""
    earlier = prior_from if isinstance(prior_from, Fit) else load_fit(prior_from)
    borrowed = derive_priors(earlier, data, weight=weight)
    say(
        f"borrowing {len(borrowed.table)} prior elements from {borrowed.informative.source} "
        f"(weight {borrowed.weight:g}; {borrowed.source['verdict']})"
    )
    for note in borrowed.notes:
        say(f"note: {note}")
    return borrowed


def fit_to_directory(
    data: RatingData,
    out: str | Path,
    *,
    hypotheses: Hypotheses | str | Path | None = None,
    prior_from: Fit | str | Path | None = None,
    prior_weight: float = 1.0,
    force: bool = False,
    say: Say = silent,
    **fit_options: Any,
) -> tuple[Fit, FitResults]:
    """Fit ``data`` and write the whole fit directory ``out``: what ``caltars-bayes fit`` does.

    Parameters
    ----------
    data : validated ratings.
    out : the fit directory (an existing one needs ``force``).
    hypotheses : validity hypotheses (TOML path or parsed), checked against the
        data before fitting and tested after.
    prior_from, prior_weight : borrow informative priors from an earlier fit
        (or its directory) with this power-prior weight (docs/calibration.md).
    say : where progress lines go (``print`` on the command line).
    fit_options : keywords of :func:`~caltars_bayes.inference.fit.fit_model`.

    Returns
    -------
    (Fit, FitResults)
    """
    out = Path(out)
    if out.exists() and not force:
        raise CaltarsError(f"{out}: already exists; use --force to overwrite")
    hyps = checked_hypotheses(hypotheses, data) if hypotheses is not None else None
    borrowed = None
    if prior_from is not None:
        borrowed = borrow_priors(prior_from, data, prior_weight, say)
        sampler = fit_options.get("sampler", FIT_DEFAULTS["sampler"])
        fit_options["model"] = AllianceModel(
            data, informative=borrowed.informative, sampler=sampler
        )
    opts = {**FIT_DEFAULTS, **fit_options}
    if opts["tune"] is None:
        opts["tune"] = default_tune(data.n_ratings)
    method = opts["method"]
    how = (
        f"with {opts['sampler']}: {opts['chains']} chains x ({opts['tune']} tune + "
        f"{opts['draws']} draws)"
        if method == "nuts"
        else f"APPROXIMATELY with {method} (not MCMC; a quick look): {opts['draws']} draws"
    )
    say(
        f"fitting {data.n_ratings} ratings ({data.n_subjects} subjects, {data.n_sessions} sessions,"
        f" {data.n_judges} judges) {how}"
    )
    fit = fit_model(data, **fit_options)
    say(f"writing the fit directory {Path(out).name}/ (tables, figures)")
    results = save_fit_directory(fit, out, hypotheses=hyps, borrowed=borrowed, force=force)
    if results.prior_conflict is not None:
        say(results.prior_conflict.attrs["summary"])
    return fit, results


#: the columns a model-comparison table must have (``compare.csv``)
COMPARISON_COLUMNS = {"name", "elpd", "se", "elpd_diff", "dse", "weight"}


def read_comparison(path: str | Path) -> pd.DataFrame:
    """A model-comparison table written by :func:`run_compare` (``compare.csv``)."""
    if not Path(path).is_file():
        raise CaltarsError(f"{path}: model-comparison table not found")
    try:
        table = pd.read_csv(path)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CaltarsError(f"{path}: not a CSV table ({exc})") from None
    if not COMPARISON_COLUMNS <= set(table.columns):
        missing = ", ".join(sorted(COMPARISON_COLUMNS - set(table.columns)))
        raise CaltarsError(f"{path}: not a model-comparison table (no {missing})")
    return table


def report_fit_directory(
    fitdir: str | Path,
    out: str | Path | None = None,
    fmt: str = "html",
    *,
    hypotheses: Hypotheses | str | Path | None = None,
    comparison: pd.DataFrame | str | Path | None = None,
    dstudy: bool = True,
    ppc: bool = True,
    force: bool = False,
    say: Say = silent,
    progress: Callable[[str], None] | None = None,
) -> tuple[Report, Path]:
    """Write the report of a fit directory: what ``caltars-bayes report`` does.

    It reuses what the directory holds: ``reliability.csv``, the hypotheses the
    fit was made with (unless ``hypotheses`` are given) and, for a fit made with
    borrowed priors, ``prior_from.json`` and ``prior_conflict.csv``.

    Returns
    -------
    (Report, Path) : the report (its figures closed) and the file written
    (default ``FITDIR/report.html|md|tex``).
    """
    fitdir = Path(fitdir)
    if fmt not in FORMATS:
        raise CaltarsError(f"--format {fmt!r}: use one of {', '.join(FORMATS)}")
    out = Path(out) if out is not None else fitdir / f"report{SUFFIX[fmt]}"
    fit = load_fit(fitdir)
    prior_from, prior_conflict = read_prior_from(fitdir)  # written by fit --prior-from
    hyps: Hypotheses | None = (
        checked_hypotheses(hypotheses, fit.data)
        if hypotheses is not None
        else saved_hypotheses(fitdir)
    )
    if comparison is not None and not isinstance(comparison, pd.DataFrame):
        comparison = read_comparison(comparison)
    reliability_csv = fitdir / "reliability.csv"
    say(f"building the report of {fitdir} ({fit.diagnostics.verdict})")
    report = build_report(
        fit,
        hypotheses=hyps,
        dstudy=None if dstudy else False,
        comparison=comparison,
        ppc=ppc,
        reliability_table=pd.read_csv(reliability_csv) if reliability_csv.is_file() else None,
        prior_from=prior_from,
        prior_conflict=prior_conflict,
        progress=progress,
    )
    try:
        path = report.write(out, fmt, force=force)
    finally:
        report.close()
    return report, path


def fit_summary(fit: Fit, results: FitResults) -> list[str]:
    """Lines saying how a fit went: time, the convergence verdict, the plan's
    notes and the hypothesis verdicts (what ``caltars-bayes fit`` prints)."""
    t = fit.record.timings
    lines = [
        f"done in {t['total_s']:.0f} s "
        f"({fit.record.compile_text() or f'compile {t['compile_s']:.0f} s'}, "
        f"sampling {t['sampling_s']:.0f} s)",
        str(fit.diagnostics),
        *(f"note: {note}" for note in fit.plan.notes),
    ]
    if results.verdicts is not None:
        lines.append(summarise_verdicts(results.verdicts))
    return lines


@dataclass
class CheckResults:
    """What :func:`run_check` wrote: structure tables and posterior predictive checks."""

    loadings: pd.DataFrame
    classical_structure: pd.DataFrame
    factor_correlations: pd.DataFrame
    ppc: PPC


def run_check(
    fit: Fit, out: str | Path, *, draws: int = 200, seed: int = 0, force: bool = False
) -> CheckResults:
    """Write the factor structure and posterior predictive checks of a fit into ``out``.

    Files: ``loadings.csv`` beside ``classical_structure.csv`` (PCA/varimax),
    ``factor_correlations.csv/.png/.svg``, ``ppc.csv``, ``ppc_verdict.csv``,
    ``ppc.png`` and ``ppc.svg`` (``draws`` posterior draws replicated).
    """
    out = Path(out)
    if out.exists() and not force:
        raise CaltarsError(f"{out}: already exists; use --force to overwrite")
    check = ppc(fit, n_draws=draws, seed=seed)
    res = CheckResults(
        standardised_loadings(fit),
        classical_structure(fit.data),
        factor_correlations(fit),
        check,
    )
    figs = {"factor_correlations": plot_factor_correlations(fit), "ppc": check.plot()}
    files: dict[str, Any] = {
        "loadings.csv": lambda p: res.loadings.to_csv(p, index=False),
        "classical_structure.csv": lambda p: res.classical_structure.to_csv(p, index=False),
        "factor_correlations.csv": lambda p: res.factor_correlations.to_csv(p, index=False),
        "ppc.csv": lambda p: check.table.to_csv(p, index=False),
        "ppc_verdict.csv": lambda p: check.verdict.to_csv(p, index=False),
    }
    for name, fig in figs.items():
        files.update(figure_files(name, fig))
    try:
        atomic_write_dir(out, files, force=force)
    finally:
        close_figures(list(figs.values()))
    return res


def run_compare(
    fits: dict[str, Fit],
    out: str | Path,
    *,
    by: str = "session",
    fallback: str = "moment_match",
    n_folds: int = 5,
    scheduler: Any = None,
    workers: int | None = None,
    force: bool = False,
    quiet: bool = False,
) -> pd.DataFrame:
    """Compare fits of the same ratings by cross-validation; write ``compare.csv/.png/.svg``.

    See :func:`~caltars_bayes.analysis.compare.compare_fits` for the table;
    ``scheduler`` and ``workers`` say where its K-fold refits run (default: in
    parallel on a Dask LocalCluster where the machine has the cores, see
    :func:`~caltars_bayes.analysis.compare.kfold_fits`); ``quiet`` turns its
    progress off.
    """
    out = Path(out)
    if out.exists() and not force:
        raise CaltarsError(f"{out}: already exists; use --force to overwrite")
    if len(fits) < 2:
        raise CaltarsError("compare: give at least two fits")
    table = compare_fits(
        fits,
        by=by,
        fallback=fallback,
        n_folds=n_folds,
        scheduler=scheduler,
        workers=workers,
        quiet=quiet,
    )
    fig = plot_compare(table)
    files: dict[str, Any] = {"compare.csv": lambda p: table.to_csv(p, index=False)}
    files.update(figure_files("compare", fig))
    try:
        atomic_write_dir(out, files, force=force)
    finally:
        close_figures([fig])
    return table
