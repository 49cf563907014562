"""The whole analysis of a simulated founding-design trial (``caltars-bayes demo``).

:func:`run_demo` simulates a trial of the founding design (52 subjects x 4
sessions x 3 judges, CALTARS, the founding study's covariates), fits the joint
model with the founding hypotheses, runs the decision study and writes the
report: ``trial/``, ``fit/``, ``dstudy/``, ``report.html``, ``report.md``,
``report.tex`` and ``report_figures/`` in one folder.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from caltars_bayes._core.errors import CaltarsError
from caltars_bayes._core.progress import Say, silent
from caltars_bayes.analysis.reliability import DStudy, dstudy
from caltars_bayes.inference.fit import Fit
from caltars_bayes.model.simulate import (
    FOUNDING_SESSION_COVARIATES,
    FOUNDING_SUBJECT_COVARIATES,
    Trial,
    simulate_trial,
)
from caltars_bayes.report.build import build_report
from caltars_bayes.report.document import render
from caltars_bayes.report.outputs import FitResults
from caltars_bayes.report.workflows import fit_summary, fit_to_directory
from caltars_bayes.spec.hypotheses import load_hypotheses
from caltars_bayes.spec.instrument import Instrument, load_instrument, models_dir

#: the founding study's validity hypotheses
FOUNDING_HYPOTHESES = "caltars-1989-hypotheses.toml"
#: the demo's report formats
DEMO_FORMATS = ("html", "md", "latex")


@dataclass
class DemoResults:
    """What :func:`run_demo` made and wrote."""

    out: Path
    trial: Trial
    fit: Fit
    results: FitResults
    dstudy: DStudy
    report_files: list[Path]
    summary: list[str] = field(default_factory=list)
    hypotheses: str | None = None


def founding_hypotheses(instrument: Instrument, say: Say = silent) -> str | None:
    """The founding study's hypotheses file when its scales are the instrument's, else None."""
    path = models_dir() / FOUNDING_HYPOTHESES
    missing = sorted(
        {h.scale for h in load_hypotheses(path).hypotheses} - set(instrument.scale_codes)
    )
    if missing:
        say(
            f"note: the founding hypotheses name scales not in {instrument.name} "
            f"({', '.join(missing)}): no hypotheses tested (give --hypotheses F)"
        )
        return None
    return str(path)


def run_demo(
    out: str | Path = "demo_output",
    *,
    instrument: Instrument | str | Path | None = None,
    subjects: int = 52,
    sessions: int = 4,
    judges: int = 3,
    seed: int = 1,
    hypotheses: str | Path | bool | None = True,
    force: bool = False,
    say: Say = silent,
    **fit_options: Any,
) -> DemoResults:
    """Simulate, fit, run the decision study and write the report of a founding-design trial.

    Parameters
    ----------
    out : the folder to write (an existing one needs ``force``).
    instrument : the instrument (default ``models/caltars.toml``).
    subjects, sessions, judges : the design.
    seed : seed of the simulation and of the fit.
    hypotheses : a hypotheses TOML; True (default) for the founding study's when
        the instrument has its scales; False or None for none.
    say : where progress lines go (``print`` on the command line).
    fit_options : keywords of :func:`~caltars_bayes.inference.fit.fit_model`.

    Returns
    -------
    DemoResults
    """
    t0 = time.perf_counter()
    out = Path(out)
    if out.exists() and not force:
        raise CaltarsError(f"{out}: already exists; use --force to overwrite")

    def step(n: int, text: str) -> None:
        say(f"\n[{n}/6] {text}  ({time.perf_counter() - t0:.0f} s)")

    if not isinstance(instrument, Instrument):
        instrument = load_instrument(instrument or models_dir() / "caltars.toml")
    if hypotheses is True:
        hypotheses = founding_hypotheses(instrument, say)
    hyp_path = str(hypotheses) if hypotheses else None
    step(
        1,
        f"simulating a trial of the founding design: {subjects} subjects x "
        f"{sessions} sessions x {judges} judges, {instrument.name} "
        f"({len(instrument.items)} items), with the founding study's covariates",
    )
    trial = simulate_trial(
        instrument,
        n_subjects=subjects,
        n_sessions=sessions,
        n_judges=judges,
        subject_covariates=FOUNDING_SUBJECT_COVARIATES,
        session_covariates=FOUNDING_SESSION_COVARIATES,
        seed=seed,
    )
    trial.write(out / "trial", force=force)
    data = trial.to_rating_data()
    step(2, "data report")
    say(data.report.format())
    step(
        3,
        "fitting the joint model with covariates"
        + (f" and the hypotheses in {hyp_path}" if hyp_path else ""),
    )
    fit_options.setdefault("random_seed", seed)
    fit, results = fit_to_directory(
        data, out / "fit", hypotheses=hyp_path, force=force, say=say, **fit_options
    )
    for line in fit_summary(fit, results):
        say(line)
    say(f"wrote {out / 'fit'}/")
    step(4, "decision study (1-8 judges x 1-12 sessions, target .80 with P >= .90)")
    study = dstudy(fit)
    study.save(out / "dstudy", force=force)
    say(study.smallest.drop(columns="converged").to_string(index=False))
    step(5, "writing the report (HTML, markdown, LaTeX)")
    report = build_report(
        fit,
        results=results,
        dstudy=study,
        progress=lambda name: say(f"  {name} ({time.perf_counter() - t0:.0f} s)"),
    )
    try:
        files = render(report, out / "report", list(DEMO_FORMATS), force=force)
    finally:
        report.close()
    return DemoResults(out, trial, fit, results, study, files, list(report.summary), hyp_path)
