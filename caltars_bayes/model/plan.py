"""The model plan: the spec's options resolved against the design, before any PyMC is built.

:func:`plan_model` decides, from the instrument's ``[model]`` options and the
ratings' design, which parts the model has (session level, judge severity and
discrimination, session trend, covariates) and how each is parameterised:

* judge parameters are *centred* when judges have many ratings each (their
  likelihood is sharp and a non-centred form would make a funnel the other
  way), non-centred when judges are many and sparse; session deviations and
  subject factors the same, by ratings per session and per subject;
* large designs (from :data:`LARGE_DESIGN_SESSIONS` sessions) sample subjects
  and sessions in the joint form and start from the data; those with many
  session deviations (:data:`LARGE_DESIGN_SESSION_SCALES`) also cap the
  sampler's trajectories (docs/model.md, "Large designs");
* small designs keep the ratings rule. A CALTARS pilot of 10-15 subjects x 2
  sessions x 2 judges has 24 ratings per subject and scale and 12 per
  session, so subject factors and session deviations are non-centred, while
  each judge has 720 ratings per scale and is centred. Measured on simulated
  pilots (realistic parameters, 4 chains x (1000 + 1000), benchmarks/pilots.py):
  in this form no pilot had divergences and every miss was R-hat or ESS on
  ``sd_alliance``, ``sd_session``, ``theta`` or ``factor_corr`` (12 subjects:
  1 of 13 met the verdict, min bulk ESS 56-590, tail 25-447), which
  :func:`caltars_bayes.inference.fit.fit_model` takes up by sampling longer
  (``max_draws``). The joint form (subject means centred) at target
  acceptance 0.95 met the verdict more often at 1000 draws on 12 subjects (6
  of 10) but had divergences in 4 of 20 pilots of 10-15 subjects (4 to 68
  each), all where one scale's ``sd_alliance`` neared zero, where the
  conditional covariance of subject factors given their means becomes
  singular; with centred subject factors (sessions non-centred) 3 of 5 pilots
  diverged along the subject/session ridge.

With two judges each judge's contrasts - one severity per scale and one log
discrimination - are sharp (hundreds of ratings) and sampled centred; only
their SDs (``sd_severity`` from 5 contrasts, ``sd_log_discrimination`` from
one) are barely identified. Their default priors (Gamma(4, 8): mean 0.5, 95%
within 0.14-1.1 logits; Gamma(4, 20): mean 0.2, 95% within 0.05-0.44) keep
them off zero, so with a sharp contrast the SD's posterior is close to its
prior and smooth, without a funnel: no pilot miss was on a judge parameter.
Discrimination is kept with two judges, since its contrast is identified by
the data; dropping it would assume the two judges equally discriminating.

Parts the design cannot identify (a judge level with one judge, a session
level with one session per subject) are left out with a note. This module
needs no PyMC, so validating data and hypotheses stays light.

The design's sizes and indices enter the PyMC graph as data, so designs of any
size share one compiled model (:mod:`caltars_bayes.inference.flat_logp`); what
changes the graph, and compiles anew, is the plan: the parts kept (session
level, judge severity and discrimination, the trend, the interaction, each
modelled covariate), the parameterisation chosen from the ratings per
subject, session and judge (in the joint form only the judges' is used) or
by size (the joint form from :data:`LARGE_DESIGN_SESSIONS` sessions), the
likelihood layout, and two facts of the data: whether any covariate value is
missing, and, in the joint form, whether every subject has the same number
of sessions (a cheaper graph, 1.17 against 1.61 ms per gradient at 157 x 4 x
3).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from caltars_bayes._core.errors import SpecError
from caltars_bayes.data.ratings import RatingData
from caltars_bayes.spec.instrument import AUTO, ModelOptions

#: Ratings per judge (per scale) from which judge parameters are centred.
CENTRED_JUDGE_MIN_RATINGS = 60

#: Ratings per session (per scale) from which session deviations are centred.
CENTRED_SESSION_MIN_RATINGS = 60

#: Ratings per subject (per scale) from which subject factors are centred.
CENTRED_SUBJECT_MIN_RATINGS = 40

#: Sessions from which a design with a session level counts as large: there
#: ``parameterisation = "auto"`` samples subjects and sessions in the joint form,
#: and a joint-form fit of a large design starts from the data (docs/model.md,
#: "Large designs"). Measured (seed 1, 4 x (1000 + 1000)): at the founding size
#: (208 sessions) the default form met the targets in less time; at 3x (624)
#: and 10x (2,080), and on a 2-scale self-report design of 600 sessions, the
#: joint form gave more ESS per second.
LARGE_DESIGN_SESSIONS = 400

#: Session deviations (sessions x scales) from which a large design's nutpie
#: trajectories are capped at :data:`caltars_bayes.inference.sampling.LARGE_DESIGN_NUTPIE`
#: instead of the default. The cap suits small step sizes, which come with many
#: latent values: 0.089-0.110 at 10 400 (CALTARS 10x), 0.14-0.16 at 2 000 (2
#: scales x 1 000 sessions), but 0.16-0.18 at 1 200 (2 x 600), where t = 2.7
#: cut over half of the draws' trajectories to 15 steps (21.5 steps per draw)
#: and lost ESS.
LARGE_DESIGN_SESSION_SCALES = 2000


@dataclass
class ModelPlan:
    """The model actually built: spec options resolved against the design."""

    session_level: bool
    session_trend: bool
    judge_severity: bool
    judge_discrimination: bool
    judge_subject_interaction: bool
    cutpoints: str
    centred_subjects: bool
    centred_judges: bool
    centred_sessions: bool
    notes: list[str] = field(default_factory=list)
    #: subject-level covariates modelled jointly with ``theta`` (after any
    #: aggregation of session covariates), and session-level ones with ``eta``
    covariates: list[str] = field(default_factory=list)
    session_covariates: list[str] = field(default_factory=list)
    #: covariate -> [mean, sd] of its observed values (covariates are modelled
    #: standardised); session covariates aggregated to subjects are listed in
    #: ``aggregated``
    covariate_scaling: dict[str, list[float]] = field(default_factory=dict)
    session_covariate_scaling: dict[str, list[float]] = field(default_factory=dict)
    aggregated: list[str] = field(default_factory=list)
    #: a general factor over all items besides orthogonal scale-specific factors
    bifactor: bool = False
    #: "vector" (a vector of observed ratings) or "dense" (session x judge x item)
    likelihood_layout: str = "vector"
    #: subject factors and session deviations sampled through each subject's
    #: average session alliance (:func:`_subject_session_block`); False in fits
    #: saved before this form existed
    joint_subject_sessions: bool = False
    #: at least :data:`LARGE_DESIGN_SESSIONS` sessions, in the joint form: fits
    #: start from the data unless told otherwise (False in fits saved before the
    #: rule existed)
    large_design: bool = False
    #: a large design with at least :data:`LARGE_DESIGN_SESSION_SCALES` session
    #: deviations: nutpie's trajectories are capped at 2.7 unless told otherwise
    short_trajectory_cap: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _resolve(value: bool | str, identifiable: bool, what: str, why: str, notes: list[str]) -> bool:
    if value == AUTO:
        if not identifiable:
            notes.append(f"{what} dropped: {why}")
        return identifiable
    if value and not identifiable:
        notes.append(f"{what} requested but {why}: it is constrained only by its prior")
    return bool(value)


#: Samplers that run the model through JAX (the dense likelihood layout suits them).
JAX_SAMPLERS = ("numpyro", "blackjax")


def plan_model(
    data: RatingData, options: ModelOptions | None = None, sampler: str | None = None
) -> ModelPlan:
    """Resolve ``"auto"`` options against the design and choose parameterisations.

    ``sampler`` (when known) resolves ``likelihood_layout = "auto"``: dense for
    the JAX samplers on complete designs, else vector.
    """
    opt = options or data.instrument.model
    notes: list[str] = []
    ses_per_subject = np.bincount(
        np.asarray(data.sessions["subject"].map({s: i for i, s in enumerate(data.subjects)})),
        minlength=data.n_subjects,
    )
    multi_session = bool((ses_per_subject >= 2).any())
    session_level = _resolve(
        opt.session_level,
        multi_session,
        "session level",
        "every subject has a single session, so session and subject levels are confounded",
        notes,
    )
    n_judges = data.n_judges
    severity = _resolve(
        opt.judge_severity, n_judges >= 2, "judge severity", "only one judge", notes
    )
    discrimination = _resolve(
        opt.judge_discrimination, n_judges >= 2, "judge discrimination", "only one judge", notes
    )
    times = np.asarray(data.sessions["session_time"], dtype=float)
    trend = bool(opt.session_trend)
    if trend and np.unique(times).size < 2:
        notes.append("session trend dropped: all sessions have the same time")
        trend = False
    if trend and not session_level:
        notes.append("session trend kept without a session level")

    per_judge = np.bincount(data.judge_idx, minlength=n_judges) / max(data.n_scales, 1)
    per_session = np.bincount(data.session_idx, minlength=data.n_sessions) / max(data.n_scales, 1)
    per_subject = np.bincount(data.subject_idx, minlength=data.n_subjects) / max(data.n_scales, 1)
    big = session_level and data.n_sessions >= LARGE_DESIGN_SESSIONS
    joint = opt.parameterisation == "joint"
    if joint and not session_level:
        notes.append("joint subject/session form needs a session level: the auto rule used")
        joint = False
    if opt.parameterisation == AUTO and big:
        joint = True
        notes.append(
            f"large design ({data.n_sessions} sessions >= {LARGE_DESIGN_SESSIONS}): subjects "
            "and sessions sampled in the joint form (docs/model.md, 'Large designs')"
        )
    if opt.parameterisation in (AUTO, "joint"):
        centred_p = bool(np.median(per_subject) >= CENTRED_SUBJECT_MIN_RATINGS)
        centred_j = bool(np.median(per_judge) >= CENTRED_JUDGE_MIN_RATINGS)
        centred_s = bool(np.median(per_session) >= CENTRED_SESSION_MIN_RATINGS)
    else:
        centred_p = centred_j = centred_s = opt.parameterisation == "centred"
    bifactor = bool(opt.bifactor)
    if bifactor:
        per_scale = np.bincount(np.asarray(data.item_scale_idx), minlength=data.n_scales)
        if data.n_scales < 3 or per_scale.min() < 2:
            raise SpecError(
                f"{data.instrument.source or data.instrument.name}: a bifactor model needs at "
                "least 3 specific factors with at least 2 items each (got "
                f"{data.n_scales} factors, smallest with {int(per_scale.min())} items)"
            )
        if data.covariates is not None or data.session_covariates is not None:
            notes.append("covariates are not modelled with a bifactor structure")
            opt = replace(opt, covariates=False, session_covariates="none")
    cov_table, ses_table, aggregated = covariate_tables(data, opt, notes)
    large = big and joint
    layout = opt.likelihood_layout
    if layout == AUTO:
        complete = sampler in JAX_SAMPLERS and dense_cells(data) is not None
        layout = "dense" if complete else "vector"
    elif layout == "dense" and dense_cells(data) is None:
        n_cells = data.n_sessions * data.n_judges * data.n_items
        notes.append(
            f"dense likelihood layout requested but the design is incomplete ({data.n_ratings} "
            f"ratings for {n_cells} session x judge x item cells): vector layout used"
        )
        layout = "vector"
    return ModelPlan(
        session_level=session_level,
        session_trend=trend,
        judge_severity=severity,
        judge_discrimination=discrimination,
        judge_subject_interaction=bool(opt.judge_subject_interaction) and n_judges >= 2,
        cutpoints=opt.cutpoints,
        centred_subjects=centred_p,
        centred_judges=centred_j,
        centred_sessions=centred_s,
        joint_subject_sessions=joint,
        large_design=large,
        short_trajectory_cap=large
        and data.n_sessions * data.n_scales >= LARGE_DESIGN_SESSION_SCALES,
        notes=notes,
        covariates=[] if cov_table is None else list(cov_table.columns),
        session_covariates=[] if ses_table is None else list(ses_table.columns),
        covariate_scaling=_scaling(cov_table),
        session_covariate_scaling=_scaling(ses_table),
        aggregated=aggregated,
        bifactor=bifactor,
        likelihood_layout=layout,
    )


def dense_cells(data: RatingData) -> np.ndarray | None:
    """Ratings as a session x judge x item array, or None when any cell is missing.

    The dense likelihood layout needs every judge to rate every item of every
    session once.
    """
    n_cells = data.n_sessions * data.n_judges * data.n_items
    if data.n_ratings != n_cells:
        return None
    code = (
        np.asarray(data.session_idx, np.int64) * data.n_judges + np.asarray(data.judge_idx)
    ) * data.n_items + np.asarray(data.item_idx)
    y = np.full(n_cells, -1, dtype=np.int64)
    y[code] = np.asarray(data.y, np.int64)
    if (y < 0).any():  # some cell rated twice, another not at all
        return None
    return y.reshape(data.n_sessions, data.n_judges, data.n_items)


#: Fewest observed values a covariate needs to be modelled.
MIN_COVARIATE_VALUES = 3


def _usable(table: pd.DataFrame | None, what: str, notes: list[str]) -> pd.DataFrame | None:
    """Drop covariate columns that cannot be modelled (too few values, constant)."""
    if table is None:
        return None
    keep = []
    for c in table.columns:
        col = table[c].to_numpy(dtype=float)
        n_obs = int(np.isfinite(col).sum())
        if n_obs < MIN_COVARIATE_VALUES:
            notes.append(
                f"{what} {c!r} not modelled: {n_obs} observed value(s), "
                f"needs {MIN_COVARIATE_VALUES}"
            )
        elif np.nanstd(col) == 0:
            notes.append(f"{what} {c!r} not modelled: it has the same value for everyone")
        else:
            keep.append(c)
    return table[keep] if keep else None


def covariate_tables(
    data: RatingData, options: ModelOptions, notes: list[str] | None = None
) -> tuple[pd.DataFrame | None, pd.DataFrame | None, list[str]]:
    """The covariates the model uses: subject-level and session-level tables.

    With ``session_covariates = "subject"`` each session covariate is averaged
    over the subject's sessions (observed values only) and joins the subject
    covariates (renamed ``NAME_mean`` if a subject covariate has its name).

    Returns
    -------
    (subject table indexed like ``data.subjects`` or None, session table in
    ``data.sessions`` order or None, names of the aggregated columns)
    """
    notes = [] if notes is None else notes
    subj = data.covariates if options.covariates else None
    if data.covariates is not None and not options.covariates:
        notes.append("subject covariates given but not modelled (model.covariates = false)")
    ses = data.session_covariates
    aggregated: list[str] = []
    if ses is not None and options.session_covariates == "none":
        notes.append('session covariates given but not modelled (session_covariates = "none")')
        ses = None
    elif ses is not None and options.session_covariates == "subject":
        means = ses.groupby(level="subject", sort=False).mean().reindex(list(data.subjects))
        means.index = pd.Index(list(data.subjects), name="subject", dtype="str")
        taken = set() if subj is None else set(subj.columns)
        means.columns = [f"{c}_mean" if c in taken else str(c) for c in means.columns]
        aggregated = list(means.columns)
        subj = means if subj is None else pd.concat([subj, means], axis=1)
        notes.append(
            f"session covariates averaged over each subject's sessions: {', '.join(aggregated)}"
        )
        ses = None
    if ses is not None:
        ses = ses.reset_index(drop=True)
    return _usable(subj, "covariate", notes), _usable(ses, "session covariate", notes), aggregated


def _scaling(table: pd.DataFrame | None) -> dict[str, list[float]]:
    if table is None:
        return {}
    return {
        str(c): [float(np.nanmean(table[c])), float(np.nanstd(table[c], ddof=1))]
        for c in table.columns
    }
