"""Planning a trial by simulation: power of candidate designs, run on Dask.

A plan (:mod:`caltars_bayes.studies.plan_spec`, ``docs/planning.md``) names a
grid of designs and effects, the analysis and the decision rules. Each
replication is one task (:mod:`caltars_bayes.studies.tasks`):

1. simulate a trial of the design with the effect (:func:`simulate_trial`,
   seed derived from the plan's seed and the task id);
2. fit it (:func:`fit_model`, single core, its own derived seed);
3. apply the decision rules:

   * association supported: ``P(association[scale, x] in the effect's
     direction) >= prob`` (positive direction for a zero effect, so the
     zero-effect row is the one-sided false-positive rate);
   * reliability reached: ``P(coefficient >= threshold) >= prob`` for every
     decided scale, with the coefficient of
     :func:`caltars_bayes.analysis.reliability.reliability_draws` (latent route).

The power of a design for an effect is the share of replications whose
decision succeeded, with a 95% Wilson interval for the Monte Carlo error
(:mod:`caltars_bayes.studies.power`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
from scipy import stats

from caltars_bayes._core.errors import CaltarsError
from caltars_bayes._core.figures import close_figures, figure_files
from caltars_bayes._core.io import atomic_write_file
from caltars_bayes.analysis.classical import icc_shrout_fleiss
from caltars_bayes.analysis.reliability import reliability_draws, true_reliability
from caltars_bayes.data.ratings import RatingData
from caltars_bayes.inference.fit import Fit
from caltars_bayes.model.simulate import Trial, simulate_trial
from caltars_bayes.spec.instrument import Instrument, instrument_from_dict
from caltars_bayes.studies.plan_spec import (
    COVARIATE,
    Design,
    Effect,
    Plan,
    load_plan,
    reliability_rule,
    sd_alliance_for,
)
from caltars_bayes.studies.power import plot_power, power_table
from caltars_bayes.studies.tasks import (
    Task,
    TaskRun,
    collect_results,
    fit_in_task,
    prepare_output,
    run_tasks,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure


# --------------------------------------------------------------------------- one replication


def design_instrument(instrument: Instrument, items: int | None) -> Instrument:
    """The instrument cut to the first ``items`` items of every scale (None: unchanged)."""
    if items is None:
        return instrument
    d = instrument.spec_dict()
    keep: set[str] = set()
    for s in d["scale"]:
        s["items"] = s["items"][:items]
        keep.update(s["items"])
    d["instrument"]["reverse_keyed"] = [i for i in d["instrument"]["reverse_keyed"] if i in keep]
    d["structures"] = {}
    return instrument_from_dict(d)


def simulate_replication(plan: Plan, task: Task) -> Trial:
    """The trial of one task (seed ``task.seeds[0]``)."""
    p = task.params
    design = Design(p["subjects"], p["sessions"], p["judges"], p["items"])
    sim = plan.simulation
    sd_alliance = sim["sd_alliance"]
    if p.get("reliability") is not None:
        sd_alliance = sd_alliance_for(plan, design, p["reliability"])
    covs = None
    if p.get("association") is not None:
        covs = {COVARIATE: {plan.association_scale: float(p["association"])}}
    return simulate_trial(
        design_instrument(plan.instrument, design.items),
        n_subjects=design.subjects,
        n_sessions=design.sessions,
        n_judges=design.judges,
        factor_corr=sim["factor_corr"],
        sd_alliance=sd_alliance,
        sd_session=sim["sd_session"],
        sd_severity=sim["sd_severity"],
        sd_log_discrimination=sim["sd_log_discrimination"],
        sd_log_loading=sim["sd_log_loading"],
        sd_item_location=sim["sd_item_location"],
        missing_rate=sim["missing_rate"],
        subject_covariates=covs,
        seed=task.seeds[0],
    )


def _decided_scales(plan: Plan, scales: list[str]) -> list[str]:
    rule = reliability_rule(plan)
    return list(rule.scales) if rule.scales else list(scales)


def _true_reliability(plan: Plan, trial: Trial, k: int) -> float:
    rule = reliability_rule(plan)
    tr = true_reliability(trial.truth, trial.instrument, k_judges=k, routes=("latent",))
    gen = "judges and sessions" if rule.generalize_sessions else "judges"
    sel = tr[
        (tr["level"] == rule.level)
        & (tr["judges"] == k)
        & (tr["coefficient"] == rule.coefficient)
        & (tr["generalizes_over"] == gen)
        & tr["scale"].isin(_decided_scales(plan, list(tr["scale"])))
    ]
    return float(sel["value"].mean())


def _bayes_decisions(plan: Plan, fit: Fit, effect: Effect, design: Design) -> dict[str, Any]:
    from arviz_stats import hdi

    row: dict[str, Any] = {}
    if plan.association is not None and effect.association is not None:
        if "association" not in fit.posterior:
            raise CaltarsError("the fit has no 'association' variable (covariates not modelled)")
        da = fit.posterior["association"].sel(scale=plan.association_scale, covariate=COVARIATE)
        sign = -1.0 if effect.association < 0 else 1.0
        h = hdi(da, prob=0.95)
        row |= {
            "association_mean": float(da.mean()),
            "association_hdi_low": float(h.sel(ci_bound="lower")),
            "association_hdi_high": float(h.sel(ci_bound="upper")),
            "association_p_direction": float((sign * da > 0).mean()),
        }
        row["association_supported"] = row["association_p_direction"] >= plan.association.prob
    if plan.reliability is not None:
        rule, k = plan.reliability, plan.reliability.k(design)
        rd = reliability_draws(fit, k_judges=k, routes=("latent",))
        if rule.generalize_sessions:
            var = (
                "generalizability"
                if rule.coefficient == "agreement"
                else ("generalizability_consistency")
            )
            da = rd[var].sel(judges=k, route="latent")
        else:
            da = rd[rule.coefficient].sel(level=rule.level, judges=k, route="latent")
        da = da.sel(scale=_decided_scales(plan, list(da["scale"].values)))
        p = (da >= rule.threshold).mean(("chain", "draw"))
        h = hdi(da, prob=0.95)
        row |= {
            "reliability_median": float(da.median(("chain", "draw")).mean()),
            "reliability_hdi_low": float(h.sel(ci_bound="lower").mean()),
            "reliability_hdi_high": float(h.sel(ci_bound="upper").mean()),
            "reliability_p": float(p.min()),
            "reliability_supported": bool((p >= rule.prob).all()),
        }
    return row


def _classical_decisions(plan: Plan, data: RatingData, effect: Effect, design: Design) -> dict:
    """Pearson r (one-sided test at 1 - prob) and the Shrout-Fleiss ICC's lower bound."""
    row: dict[str, Any] = {}
    if plan.association is not None and effect.association is not None:
        scores = data.scale_scores(level="subject", by_judge=False).set_index("subject")
        if data.covariates is None or COVARIATE not in data.covariates:
            raise CaltarsError("the simulated trial has no covariate x")
        x = data.covariates[COVARIATE].reindex(scores.index)
        y = scores[plan.association_scale]
        ok = x.notna() & y.notna()
        n = int(ok.sum())
        r = float(np.corrcoef(x[ok], y[ok])[0, 1])
        sign = -1.0 if effect.association < 0 else 1.0
        t = sign * r * math.sqrt((n - 2) / max(1e-300, 1 - r**2))
        p_one = float(stats.t.sf(t, n - 2))
        z, se = math.atanh(r), 1 / math.sqrt(n - 3)
        row |= {
            "association_mean": r,
            "association_hdi_low": math.tanh(z - 1.959964 * se),
            "association_hdi_high": math.tanh(z + 1.959964 * se),
            "association_p_direction": 1 - p_one,
            "association_supported": p_one < 1 - plan.association.prob,
        }
    if plan.reliability is not None:
        rule, k = plan.reliability, plan.reliability.k(design)
        if rule.generalize_sessions or k > design.judges:
            raise CaltarsError(
                "the classical analysis decides interrater reliability of the "
                "design's judges only (no generalize_sessions, judges <= design)"
            )
        level: Literal["session", "subject"] = "session" if rule.level == "session" else "subject"
        sc = data.scale_scores(level=level, by_judge=True)
        ids = ["subject", "session"] if level == "session" else ["subject"]
        case = 2 if rule.coefficient == "agreement" else 3
        label = f"ICC({case},{'1' if k == 1 else 'k'})"
        est, low = [], []
        for s in _decided_scales(plan, list(data.scales)):
            table = sc.pivot_table(index=ids, columns="judge", values=s).dropna()
            icc = icc_shrout_fleiss(table, alpha=2 * (1 - rule.prob)).set_index("type")
            lab = label if k in (1, design.judges) else None
            if lab is None:
                raise CaltarsError("classical reliability: judges must be 1 or the design's")
            key = lab if lab in icc.index else lab.replace("k", str(design.judges))
            est.append(float(icc.loc[key, "icc"]))
            low.append(float(icc.loc[key, "ci_low"]))
        row |= {
            "reliability_median": float(np.mean(est)),
            "reliability_hdi_low": float(np.mean(low)),
            "reliability_hdi_high": np.nan,
            "reliability_p": np.nan,
            "reliability_supported": bool(min(low) >= rule.threshold),
        }
    return row


def run_replication(task: Task, plan: Plan) -> pd.DataFrame:
    """Simulate, fit and decide one replication (a Dask task); one row.

    Returns
    -------
    DataFrame with one row: the design (``subjects, sessions, judges, items``),
    the effect (``association, reliability``), ``replication``, ``method``,
    ``converged`` (convergence verdict; False for approximate and classical
    analyses), ``divergences``, ``max_rhat`` and ``min_ess_bulk`` (NUTS); for
    associations ``association_mean`` (posterior mean, or Pearson r),
    ``association_hdi_low/high`` (95% HDI, or Fisher-z interval),
    ``association_p_direction`` (posterior probability of the
    effect's direction, or 1 - one-sided p), ``association_supported``; for
    reliability ``reliability_true`` (true latent value of the decided
    coefficient in this trial), ``reliability_median`` (posterior median, mean
    over decided scales; classical: the ICC), ``reliability_hdi_low/high``,
    ``reliability_p`` (smallest P(coefficient >= threshold) over scales),
    ``reliability_supported``.
    """
    p = task.params
    design = Design(p["subjects"], p["sessions"], p["judges"], p["items"])
    effect = Effect(p["association"], p["reliability"])
    trial = simulate_replication(plan, task)
    data = trial.to_rating_data()
    row: dict[str, Any] = {
        **dataclasses.asdict(design),
        **dataclasses.asdict(effect),
        "replication": p["replication"],
        "method": plan.method,
    }
    if plan.reliability is not None:
        row["reliability_true"] = (
            _true_reliability(plan, trial, plan.reliability.k(design))
            if plan.method != "classical"
            else np.nan
        )
    if plan.method == "classical":
        row |= {"converged": False, "divergences": 0, "max_rhat": np.nan, "min_ess_bulk": np.nan}
        row |= _classical_decisions(plan, data, effect, design)
    else:
        fit = fit_in_task(data, plan, task.seeds[1])
        d = fit.diagnostics
        row |= {
            "converged": fit.converged,
            "divergences": d.divergences,
            "max_rhat": d.max_rhat if plan.method == "nuts" else np.nan,
            "min_ess_bulk": d.min_ess_bulk if plan.method == "nuts" else np.nan,
        }
        row |= _bayes_decisions(plan, fit, effect, design)
    return pd.DataFrame([row])


# --------------------------------------------------------------------------- running


@dataclass
class PlanResult:
    """A plan's results.

    Attributes
    ----------
    plan : the plan.
    results : one row per finished replication (:func:`run_replication`'s columns).
    power : :func:`power_table`.
    run : what the task runner did (done, skipped, failed).
    out : the results folder.
    """

    plan: Plan
    results: pd.DataFrame
    power: pd.DataFrame
    run: TaskRun
    out: Path

    def plot(self) -> Figure:
        """Power curves (:func:`plot_power`)."""
        return plot_power(self.power, self.plan)


#: Files a plan run writes into its folder (besides ``tasks/``).
OUTPUT_FILES = ("plan.json", "results.csv", "power.csv", "power.png", "power.svg")


def run_plan(
    plan: Plan,
    out: str | Path,
    scheduler: Any = None,
    workers: int | None = None,
    force: bool = False,
    progress: bool = True,
) -> PlanResult:
    """Run every replication of ``plan`` (resumable) and write the power table.

    Parameters
    ----------
    plan : from :func:`load_plan`.
    out : results folder. A rerun into the same folder with the same plan
        skips finished replications; a different plan there needs ``force``
        (which deletes the old results: a forced run starts over).
    scheduler : ``None``/``"local"`` (a Dask LocalCluster, one single-threaded
        worker process per core), ``"serial"`` (this process), a scheduler
        address (``"tcp://HOST:8786"``) or a :class:`distributed.Client`.
    workers : LocalCluster size.
    force : start over in a folder holding other results.
    progress : done/total, failed and ETA on stderr (a bar on a terminal, else a line
        per finished replication and at least every 10 s); see :func:`run_tasks`.

    Returns
    -------
    PlanResult. Files in ``out``: ``plan.json``, ``tasks/<id>.csv`` (one per
    replication), ``results.csv``, ``power.csv``, ``power.png``, ``power.svg``.
    """
    out = Path(out)
    record = {"fingerprint": plan.fingerprint(), **plan.to_dict()}
    prepare_output(out, "plan.json", record, OUTPUT_FILES, "plan", force)
    tasks = plan.tasks()
    run = run_tasks(
        tasks,
        functools.partial(run_replication, plan=plan),
        out,
        scheduler=scheduler,
        workers=workers,
        progress=progress,
        label="plan: replication",
    )
    results = collect_results(tasks, out)
    power = power_table(results, plan)
    res = PlanResult(plan, results, power, run, out)
    atomic_write_file(out / "results.csv", lambda p: results.to_csv(p, index=False), force=True)
    atomic_write_file(out / "power.csv", lambda p: power.to_csv(p, index=False), force=True)
    fig = res.plot()
    for name, writer in figure_files("power", fig).items():
        atomic_write_file(out / name, writer, force=True)
    close_figures([fig])
    if run.failed:
        first = next(iter(run.failed.items()))
        print(
            f"warning: {len(run.failed)} replication(s) failed (e.g. {first[0]}: {first[1]}); "
            "rerun to retry them",
            file=sys.stderr,
        )
    return res


__all__ = [
    "PlanResult",
    "load_plan",
    "run_plan",
    "run_replication",
    "simulate_replication",
]
