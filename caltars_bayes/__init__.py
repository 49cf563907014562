"""caltars_bayes: Bayesian psychometric models for observer-rated psychotherapy process measures.

The user workflow, importable from the package root::

    from caltars_bayes import load_instrument, RatingData, fit_model, save_fit_directory

    inst = load_instrument("models/caltars.toml")
    data = RatingData.from_files("ratings.csv", inst, covariates="covariates.csv")
    fit = fit_model(data, draws=1000, chains=4)
    fit.summary(); fit.scores(); fit.judges()
    results = save_fit_directory(fit, "fit_dir")   # what `caltars-bayes fit` writes

The names below are loaded on first use (PEP 562), so ``import caltars_bayes``
and ``caltars-bayes --help`` do not import PyMC. Each lives in the layer that
ARCHITECTURE.md names; import from there for anything not listed here.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

#: public name -> the module that defines it
_EXPORTS: dict[str, str] = {
    # _core
    "CaltarsError": "caltars_bayes._core.errors",
    "CaltarsWarning": "caltars_bayes._core.errors",
    "DataError": "caltars_bayes._core.errors",
    "FitIOError": "caltars_bayes._core.errors",
    "SpecError": "caltars_bayes._core.errors",
    # spec
    "Instrument": "caltars_bayes.spec.instrument",
    "ModelOptions": "caltars_bayes.spec.instrument",
    "Priors": "caltars_bayes.spec.instrument",
    "load_instrument": "caltars_bayes.spec.instrument",
    "Hypotheses": "caltars_bayes.spec.hypotheses",
    "load_hypotheses": "caltars_bayes.spec.hypotheses",
    # data
    "DataReport": "caltars_bayes.data.report",
    "RatingData": "caltars_bayes.data.ratings",
    "read_table": "caltars_bayes.data.readers",
    "judge_table": "caltars_bayes.data.judges",
    # model
    "AllianceModel": "caltars_bayes.model.build",
    "ModelPlan": "caltars_bayes.model.plan",
    "plan_model": "caltars_bayes.model.plan",
    "FOUNDING_SESSION_COVARIATES": "caltars_bayes.model.simulate",
    "FOUNDING_SUBJECT_COVARIATES": "caltars_bayes.model.simulate",
    "Trial": "caltars_bayes.model.simulate",
    "simulate_trial": "caltars_bayes.model.simulate",
    # inference
    "Diagnostics": "caltars_bayes.inference.diagnostics",
    "check_convergence": "caltars_bayes.inference.diagnostics",
    "Fit": "caltars_bayes.inference.fit",
    "FitRecord": "caltars_bayes.inference.record",
    "fit_model": "caltars_bayes.inference.fit",
    "load_fit": "caltars_bayes.inference.fit",
    # analysis
    "reliability": "caltars_bayes.analysis.reliability.coefficients",
    "dstudy": "caltars_bayes.analysis.reliability.dstudy",
    "associations": "caltars_bayes.analysis.associations",
    "test_hypotheses": "caltars_bayes.analysis.validity",
    "compare_fits": "caltars_bayes.analysis.compare.table",
    "ppc": "caltars_bayes.analysis.ppc",
    "standardised_loadings": "caltars_bayes.analysis.structure",
    # scoring
    "Calibration": "caltars_bayes.scoring.calibration",
    "calibrate": "caltars_bayes.scoring.calibration",
    "load_calibration": "caltars_bayes.scoring.calibration",
    "score": "caltars_bayes.scoring.trial",
    "score_trial": "caltars_bayes.scoring.trial",
    # report: the workflows that write folders
    "Report": "caltars_bayes.report.document",
    "build_report": "caltars_bayes.report.build",
    "methods_paragraph": "caltars_bayes.report.methods",
    "FitResults": "caltars_bayes.report.outputs",
    "save_fit_directory": "caltars_bayes.report.outputs",
    "fit_to_directory": "caltars_bayes.report.workflows",
    "report_fit_directory": "caltars_bayes.report.workflows",
    "run_check": "caltars_bayes.report.workflows",
    "run_compare": "caltars_bayes.report.workflows",
    "run_demo": "caltars_bayes.report.demo",
    "export_table": "caltars_bayes.report.export",
    # studies
    "load_plan": "caltars_bayes.studies.plan_spec",
    "run_plan": "caltars_bayes.studies.planning",
    "run_sbc": "caltars_bayes.studies.sbc",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Import a public name from its module on first use (PEP 562)."""
    try:
        module = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'caltars_bayes' has no attribute {name!r}") from None
    value = getattr(import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
