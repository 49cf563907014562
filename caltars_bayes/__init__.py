"""caltars_bayes: Bayesian psychometric models for observer-rated psychotherapy process measures.

The public API::

    from caltars_bayes import load_instrument, RatingData, simulate_trial, fit_model, load_fit

    inst = load_instrument("models/caltars.toml")
    data = RatingData.from_files("ratings.csv", inst, covariates="covariates.csv")
    fit = fit_model(data, draws=1000, tune=1000, chains=4)
    fit.summary(); fit.scores(); fit.judges()
    fit.save("fit_dir")
"""

from caltars_bayes.calibration import Calibration, calibrate, load_calibration, score, score_trial
from caltars_bayes.data import DataReport, RatingData, read_table
from caltars_bayes.diagnostics import Diagnostics, check_convergence
from caltars_bayes.errors import CaltarsError, CaltarsWarning, DataError, FitIOError, SpecError
from caltars_bayes.fit import Fit, fit_model, load_fit
from caltars_bayes.model import AllianceModel, ModelPlan, plan_model
from caltars_bayes.report import Report, build_report, methods_paragraph
from caltars_bayes.simulate import (
    FOUNDING_SESSION_COVARIATES,
    FOUNDING_SUBJECT_COVARIATES,
    Trial,
    simulate_trial,
)
from caltars_bayes.spec import Instrument, ModelOptions, Priors, load_instrument

__all__ = [
    "FOUNDING_SESSION_COVARIATES",
    "FOUNDING_SUBJECT_COVARIATES",
    "AllianceModel",
    "Calibration",
    "CaltarsError",
    "CaltarsWarning",
    "DataError",
    "DataReport",
    "Diagnostics",
    "Fit",
    "FitIOError",
    "Instrument",
    "ModelOptions",
    "ModelPlan",
    "Priors",
    "RatingData",
    "Report",
    "SpecError",
    "Trial",
    "build_report",
    "calibrate",
    "check_convergence",
    "fit_model",
    "load_calibration",
    "load_fit",
    "load_instrument",
    "methods_paragraph",
    "plan_model",
    "read_table",
    "score",
    "score_trial",
    "simulate_trial",
]
