"""Planning a trial by simulation: power of candidate designs, run on Dask.

A plan (TOML, see ``models/plan-example.toml`` and ``docs/planning.md``) names
a grid of designs (subjects x sessions x judges x items per scale), a grid of
effects (the latent correlation of a covariate with one scale; the true
reliability of the decided coefficient), the number of replications, the
analysis (NUTS, an approximate method, or the classical analysis) and the
decision rules. Each replication is one task (:mod:`caltars_bayes.tasks`):

1. simulate a trial of the design with the effect (:func:`simulate_trial`,
   seed derived from the plan's seed and the task id);
2. fit it (:func:`fit_model`, single core, its own derived seed);
3. apply the decision rules:

   * association supported: ``P(association[scale, x] in the effect's
     direction) >= prob`` (positive direction for a zero effect, so the
     zero-effect row is the one-sided false-positive rate);
   * reliability reached: ``P(coefficient >= threshold) >= prob`` for every
     decided scale, with the coefficient of
     :func:`caltars_bayes.reliability.reliability_draws` (latent route).

The power of a design for an effect is the share of replications whose
decision succeeded, with a 95% Wilson interval for the Monte Carlo error.

Effects
-------
``association = r``: the simulated covariate ``x`` has latent correlation
``r`` with the treatment-level alliance of ``simulation.association_scale``
and 0 with the other scales.
``reliability = R``: ``sd_alliance`` is set (per design, every scale alike,
``sd_session`` and the judge SDs held at their ``[simulation]`` values, item
loadings taken as 1) so that the true latent-route value of the *decided*
coefficient is ``R`` (without a reliability rule: the session-level,
single-judge agreement coefficient). The table reports the true value of each
simulated trial (with its own loadings) beside it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
import math
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from caltars_bayes.errors import CaltarsError, SpecError
from caltars_bayes.io import atomic_write_file
from caltars_bayes.spec import Instrument, instrument_from_dict, load_instrument, models_dir
from caltars_bayes.tasks import Task, TaskRun, collect_results, prepare_output, run_tasks

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from caltars_bayes.data import RatingData
    from caltars_bayes.fit import Fit
    from caltars_bayes.simulate import Trial

METHODS = ("nuts", "advi", "pathfinder", "fullrank_advi", "classical")
#: The simulated covariate's name.
COVARIATE = "x"
DESIGN_COLUMNS = ["subjects", "sessions", "judges", "items"]
EFFECT_COLUMNS = ["association", "reliability"]
#: Defaults of ``[simulation]`` (the simulate_trial arguments a plan may set).
SIMULATION_DEFAULTS: dict[str, Any] = {
    "association_scale": None,  # default: the instrument's first scale
    "factor_corr": 0.3,
    "sd_alliance": 1.3,
    "sd_session": 0.6,
    "sd_severity": 0.3,
    "sd_log_discrimination": 0.15,
    "sd_log_loading": 0.2,
    "sd_item_location": 0.4,
    "missing_rate": 0.0,
}
ANALYSIS_DEFAULTS: dict[str, Any] = {
    "method": "nuts",
    "draws": 500,
    "tune": 500,
    "chains": 2,
    "backend": None,  # nutpie backend; default jax when installed (compiles in seconds)
}
LEVELS = ("session", "treatment")
COEFFICIENTS = ("agreement", "consistency")


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class Design:
    """One candidate design: ``items`` is items per scale (None: all of the instrument's)."""

    subjects: int
    sessions: int
    judges: int
    items: int | None = None

    def label(self) -> str:
        return (
            f"s{self.subjects}-n{self.sessions}-j{self.judges}-i"
            f"{'all' if self.items is None else self.items}"
        )


@dataclass(frozen=True)
class Effect:
    """One effect: latent correlation with the covariate, true reliability (None: not set)."""

    association: float | None = None
    reliability: float | None = None

    def label(self) -> str:
        a = "none" if self.association is None else f"{self.association:+.3f}"
        r = "none" if self.reliability is None else f"{self.reliability:.3f}"
        return f"a{a}-r{r}"


@dataclass(frozen=True)
class AssociationRule:
    """Association supported when P(direction of the effect) >= ``prob``."""

    prob: float = 0.95


@dataclass(frozen=True)
class ReliabilityRule:
    """Reliability reached when P(coefficient >= ``threshold``) >= ``prob`` on every scale.

    ``level``: ``"session"`` or ``"treatment"``; ``judges``: ``"design"`` (the
    design's judges per session) or a number; ``coefficient``: ``"agreement"``
    or ``"consistency"``; ``generalize_sessions``: treatment level, sessions
    generalized over too; ``scales``: scale codes, or empty for all.
    """

    threshold: float = 0.8
    prob: float = 0.9
    level: str = "session"
    judges: int | str = "design"
    coefficient: str = "agreement"
    generalize_sessions: bool = False
    scales: tuple[str, ...] = ()

    def k(self, design: Design) -> int:
        return design.judges if self.judges == "design" else int(self.judges)


@dataclass(frozen=True)
class Plan:
    """A parsed plan (see the module docstring and ``docs/planning.md``).

    The fields are plain values, so a plan can be shrunk with
    :func:`dataclasses.replace` (e.g. fewer ``replications`` or ``designs``).
    """

    name: str
    instrument: Instrument
    designs: tuple[Design, ...]
    effects: tuple[Effect, ...]
    replications: int
    seed: int
    method: str = "nuts"
    draws: int = 500
    tune: int = 500
    chains: int = 2
    backend: str | None = None
    simulation: dict[str, Any] = field(default_factory=dict)
    association: AssociationRule | None = None
    reliability: ReliabilityRule | None = None
    source: str = "<plan>"

    @property
    def association_scale(self) -> str:
        return self.simulation.get("association_scale") or self.instrument.scale_codes[0]

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (saved as ``plan.json``; its hash identifies the results)."""
        return {
            "name": self.name,
            "instrument": self.instrument.spec_dict(),
            "instrument_hash": self.instrument.hash(),
            "designs": [dataclasses.asdict(d) for d in self.designs],
            "effects": [dataclasses.asdict(e) for e in self.effects],
            "replications": self.replications,
            "seed": self.seed,
            "analysis": {
                "method": self.method,
                "draws": self.draws,
                "tune": self.tune,
                "chains": self.chains,
                "backend": self.backend,
            },
            "simulation": {**self.simulation, "association_scale": self.association_scale},
            "decisions": {
                "association": None if self.association is None else vars(self.association),
                "reliability": None
                if self.reliability is None
                else {**vars(self.reliability), "scales": list(self.reliability.scales)},
            },
        }

    def fingerprint(self) -> str:
        """Hash of everything that changes a replication's numbers.

        Not the name, nor the number of replications: seeds depend on task ids
        only, so raising ``replications`` on a finished run adds replications.
        """
        d = self.to_dict()
        for key in ("name", "instrument", "replications"):
            d.pop(key)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def tasks(self) -> list[Task]:
        """One task per design x effect x replication; ids name the values."""
        out = []
        for d, e in itertools.product(self.designs, self.effects):
            for rep in range(1, self.replications + 1):
                tid = f"{d.label()}_{e.label()}_rep{rep:04d}"
                params = {**dataclasses.asdict(d), **dataclasses.asdict(e), "replication": rep}
                out.append(Task.make(tid, params, self.seed))
        return out

    def __repr__(self) -> str:
        n = len(self.designs) * len(self.effects) * self.replications
        fits = "" if self.method == "classical" else f" {self.chains}x{self.draws}"
        return (
            f"Plan({self.name!r}: {len(self.designs)} design(s) x {len(self.effects)} effect(s)"
            f" x {self.replications} replications = {n} fits; {self.method}{fits};"
            f" instrument {self.instrument.name})"
        )


_TOP = {"plan", "design", "effects", "simulation", "analysis", "decisions"}
_PLAN_KEYS = {"name", "instrument", "replications", "seed"}
_DESIGN_KEYS = {"subjects", "sessions", "judges", "items"}
_DECISION_KEYS = {"association", "reliability"}
_ASSOC_KEYS = {"prob"}
_REL_KEYS = {
    "threshold",
    "prob",
    "level",
    "judges",
    "coefficient",
    "generalize_sessions",
    "scales",
}


def _keys(table: Any, allowed: set[str], where: str) -> dict[str, Any]:
    if not isinstance(table, Mapping):
        raise SpecError(f"{where}: must be a table")
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise SpecError(
            f"{where}: unknown key(s) {', '.join(repr(k) for k in unknown)}; "
            f"allowed: {', '.join(sorted(allowed))}"
        )
    return dict(table)


def _int_list(v: Any, where: str, low: int) -> list[int]:
    vals = v if isinstance(v, list) else [v]
    if not vals or any(isinstance(x, bool) or not isinstance(x, int) or x < low for x in vals):
        raise SpecError(f"{where}: must be a whole number >= {low} or a list of them, got {v!r}")
    return sorted(set(vals))


def _float_list(v: Any, where: str, low: float, high: float) -> list[float]:
    vals = v if isinstance(v, list) else [v]
    if not vals or any(
        isinstance(x, bool) or not isinstance(x, int | float) or not low <= x <= high for x in vals
    ):
        raise SpecError(f"{where}: must be numbers in [{low}, {high}] (a list), got {v!r}")
    return sorted({float(x) for x in vals})


def _prob(v: Any, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not 0.5 <= v < 1:
        raise SpecError(f"{where}: must be a probability in [0.5, 1), got {v!r}")
    return float(v)


def _resolve_instrument(value: Any, base: Path, where: str) -> Instrument:
    if not isinstance(value, str) or not value:
        raise SpecError(f"{where}: must be a path to an instrument TOML")
    for cand in (base / value, models_dir() / value, Path(value)):
        if cand.is_file():
            return load_instrument(cand)
    raise SpecError(f"{where}: instrument file {value!r} not found (beside the plan or in models/)")


def plan_from_dict(
    doc: Mapping[str, Any], source: str = "<plan>", base: Path | None = None
) -> Plan:
    """Validate a plan document (the parsed TOML); errors name ``source`` and the key."""
    base = base or Path.cwd()
    top = _keys(doc, _TOP, source)
    for req in ("plan", "design", "effects"):
        if req not in top:
            raise SpecError(f"{source}: missing table [{req}]")
    p = _keys(top["plan"], _PLAN_KEYS, f"{source}: [plan]")
    if "instrument" not in p:
        raise SpecError(f"{source}: [plan].instrument is required")
    inst = _resolve_instrument(p["instrument"], base, f"{source}: [plan].instrument")
    reps = p.get("replications", 20)
    if isinstance(reps, bool) or not isinstance(reps, int) or reps < 1:
        raise SpecError(f"{source}: [plan].replications must be a whole number >= 1")
    seed = p.get("seed", 1)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise SpecError(f"{source}: [plan].seed must be a whole number >= 0")
    name = str(p.get("name", Path(source).stem))

    d = _keys(top["design"], _DESIGN_KEYS, f"{source}: [design]")
    for req in ("subjects", "sessions", "judges"):
        if req not in d:
            raise SpecError(f"{source}: [design].{req} is required")
    subjects = _int_list(d["subjects"], f"{source}: [design].subjects", 4)
    sessions = _int_list(d["sessions"], f"{source}: [design].sessions", 1)
    judges = _int_list(d["judges"], f"{source}: [design].judges", 1)
    min_items = min(len(s.items) for s in inst.scales)
    items: list[int | None] = [None]
    if "items" in d:
        per_scale = _int_list(d["items"], f"{source}: [design].items", 1)
        if max(per_scale) > min_items:
            raise SpecError(
                f"{source}: [design].items: {max(per_scale)} items per scale, but the "
                f"instrument's smallest scale has {min_items}"
            )
        items = list(per_scale)
    designs = tuple(Design(*c) for c in itertools.product(subjects, sessions, judges, items))

    e = _keys(top["effects"], set(EFFECT_COLUMNS), f"{source}: [effects]")
    if not e:
        raise SpecError(f"{source}: [effects] needs association and/or reliability")
    assoc = (
        _float_list(e["association"], f"{source}: [effects].association", -0.95, 0.95)
        if ("association" in e)
        else [None]
    )
    rel = (
        _float_list(e["reliability"], f"{source}: [effects].reliability", 0.01, 0.99)
        if ("reliability" in e)
        else [None]
    )
    effects = tuple(Effect(a, r) for a, r in itertools.product(assoc, rel))  # type: ignore[arg-type]

    sim = {**SIMULATION_DEFAULTS}
    for k, v in _keys(
        top.get("simulation", {}), set(SIMULATION_DEFAULTS), f"{source}: [simulation]"
    ).items():
        where = f"{source}: [simulation].{k}"
        if k == "association_scale":
            if v not in inst.scale_codes:
                raise SpecError(
                    f"{where}: {v!r} is not a scale of {inst.name} ({', '.join(inst.scale_codes)})"
                )
        elif isinstance(v, bool) or not isinstance(v, int | float) or v < 0:
            raise SpecError(f"{where}: must be a number >= 0, got {v!r}")
        elif k in ("factor_corr", "missing_rate") and v >= 1:
            raise SpecError(f"{where}: must be < 1, got {v!r}")
        sim[k] = v

    a = {
        **ANALYSIS_DEFAULTS,
        **_keys(top.get("analysis", {}), set(ANALYSIS_DEFAULTS), f"{source}: [analysis]"),
    }
    if a["method"] not in METHODS:
        raise SpecError(
            f"{source}: [analysis].method must be one of {', '.join(METHODS)}, got {a['method']!r}"
        )
    for k, low in (("draws", 10), ("tune", 0), ("chains", 1)):
        if isinstance(a[k], bool) or not isinstance(a[k], int) or a[k] < low:
            raise SpecError(f"{source}: [analysis].{k} must be a whole number >= {low}")
    if a["backend"] is not None and a["backend"] not in ("jax", "numba"):
        raise SpecError(f'{source}: [analysis].backend must be "jax" or "numba"')

    dec = _keys(top.get("decisions", {}), _DECISION_KEYS, f"{source}: [decisions]")
    arule = rrule = None
    if "association" in dec:
        t = _keys(dec["association"], _ASSOC_KEYS, f"{source}: [decisions.association]")
        arule = AssociationRule(
            _prob(t.get("prob", 0.95), f"{source}: [decisions.association].prob")
        )
        if "association" not in e:
            raise SpecError(f"{source}: [decisions.association] needs [effects].association")
    if "reliability" in dec:
        where = f"{source}: [decisions.reliability]"
        t = _keys(dec["reliability"], _REL_KEYS, where)
        thr = t.get("threshold", 0.8)
        if isinstance(thr, bool) or not isinstance(thr, int | float) or not 0 < thr < 1:
            raise SpecError(f"{where}.threshold must be a number in (0, 1)")
        level = t.get("level", "session")
        if level not in LEVELS:
            raise SpecError(f"{where}.level must be one of {', '.join(LEVELS)}")
        coef = t.get("coefficient", "agreement")
        if coef not in COEFFICIENTS:
            raise SpecError(f"{where}.coefficient must be one of {', '.join(COEFFICIENTS)}")
        kj = t.get("judges", "design")
        if kj != "design" and (isinstance(kj, bool) or not isinstance(kj, int) or kj < 1):
            raise SpecError(f'{where}.judges must be "design" or a whole number >= 1')
        gen = t.get("generalize_sessions", False)
        if not isinstance(gen, bool) or (gen and level != "treatment"):
            raise SpecError(f"{where}.generalize_sessions must be true or false (treatment level)")
        scales = t.get("scales", [])
        if not isinstance(scales, list) or any(s not in inst.scale_codes for s in scales):
            raise SpecError(f"{where}.scales must be a list of scale codes of {inst.name}")
        rrule = ReliabilityRule(
            float(thr),
            _prob(t.get("prob", 0.9), f"{where}.prob"),
            level,
            kj,
            coef,
            gen,
            tuple(scales),
        )
    if arule is None and rrule is None:
        raise SpecError(f"{source}: [decisions] needs association and/or reliability rules")
    plan = Plan(
        name=name,
        instrument=inst,
        designs=designs,
        effects=effects,
        replications=reps,
        seed=seed,
        method=a["method"],
        draws=a["draws"],
        tune=a["tune"],
        chains=a["chains"],
        backend=a["backend"],
        simulation=sim,
        association=arule,
        reliability=rrule,
        source=source,
    )
    for des, eff in itertools.product(designs, effects):  # reachable reliabilities?
        if eff.reliability is not None:
            try:
                sd_alliance_for(plan, des, eff.reliability)
            except ValueError as exc:
                raise SpecError(f"{source}: [effects].reliability: {exc}") from None
    return plan


def load_plan(path: str | Path) -> Plan:
    """Read and validate a plan TOML; errors name the file and the key."""
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise SpecError(f"{path}: plan file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{path}: not valid TOML ({exc})") from None
    return plan_from_dict(doc, source=str(path), base=path.parent)


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


def _rule(plan: Plan) -> ReliabilityRule:
    return plan.reliability or ReliabilityRule()


def _latent_coefficient(plan: Plan, design: Design, sd_alliance: float) -> float:
    from caltars_bayes.reliability import coefficient_from_components, latent_components

    rule, sim = _rule(plan), plan.simulation
    n_items = design.items or min(len(s.items) for s in plan.instrument.scales)
    one_judge = design.judges < 2
    comps = latent_components(
        sd_alliance,
        sim["sd_session"] if design.sessions > 1 else 0.0,
        1.0,
        n_items,
        sd_severity=0.0 if one_judge else sim["sd_severity"],
        sd_log_discrimination=0.0 if one_judge else sim["sd_log_discrimination"],
    )
    return float(
        coefficient_from_components(
            comps,
            judges=rule.k(design),
            sessions=design.sessions,
            level=rule.level,
            coefficient=rule.coefficient,
            generalize_sessions=rule.generalize_sessions,
        )
    )


def sd_alliance_for(plan: Plan, design: Design, target: float) -> float:
    """``sd_alliance`` giving the decided coefficient a true latent value of ``target``.

    Solved numerically (the coefficient increases with ``sd_alliance``); the
    other SDs are the plan's ``[simulation]`` values and loadings are 1.
    Raises ValueError when ``target`` cannot be reached in this design.
    """
    from scipy.optimize import brentq

    lo, hi = 1e-4, 50.0
    f_lo, f_hi = _latent_coefficient(plan, design, lo), _latent_coefficient(plan, design, hi)
    if not f_lo < target < f_hi:
        raise ValueError(
            f"{target} cannot be reached in design {design.label()} (possible range "
            f"{f_lo:.3f}-{f_hi:.3f} with the [simulation] SDs)"
        )
    return float(
        brentq(lambda s: _latent_coefficient(plan, design, s) - target, lo, hi, xtol=1e-10)
    )


def simulate_replication(plan: Plan, task: Task) -> Trial:
    """The trial of one task (seed ``task.seeds[0]``)."""
    from caltars_bayes.simulate import simulate_trial

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
    rule = _rule(plan)
    return list(rule.scales) if rule.scales else list(scales)


def _true_reliability(plan: Plan, trial: Trial, k: int) -> float:
    from caltars_bayes.reliability import true_reliability

    rule = _rule(plan)
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
        from caltars_bayes.reliability import reliability_draws

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
    from scipy import stats

    from caltars_bayes.classical import icc_shrout_fleiss

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
        from caltars_bayes.tasks import fit_in_task

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


def _savefig(fig: Any, path: Path, fmt: str) -> None:
    fig.savefig(path, format=fmt, dpi=120)


# --------------------------------------------------------------------------- power


def wilson_interval(k: Any, n: Any, prob: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of a binomial proportion ``k / n`` (NaN where n = 0)."""
    from scipy.stats import norm

    k, n = np.asarray(k, dtype=float), np.asarray(n, dtype=float)
    z = norm.ppf(0.5 + prob / 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        ph = k / n
        centre = (ph + z**2 / (2 * n)) / (1 + z**2 / n)
        half = z * np.sqrt(ph * (1 - ph) / n + z**2 / (4 * n**2)) / (1 + z**2 / n)
    return np.clip(centre - half, 0.0, 1.0), np.clip(centre + half, 0.0, 1.0)


def power_table(results: pd.DataFrame, plan: Plan) -> pd.DataFrame:
    """Power per design x effect from the replication results.

    Returns
    -------
    DataFrame, one row per design x effect, columns ``subjects, sessions,
    judges, items, association, reliability`` (design and effect; ``items``
    and unused effects empty), ``method``, ``replications`` (planned),
    ``done`` (finished), ``converged_share`` (share of fits whose convergence
    verdict was "converged"), ``max_rhat`` (largest R-hat of any fit, NUTS
    only), ``divergent_share`` (share of fits with divergences); when the plan decides associations:
    ``association_power`` with ``association_power_low/high`` (95% Wilson
    interval of the Monte Carlo error), ``association_width`` (mean 95%
    interval width), ``association_estimate`` (mean posterior mean);
    when it decides reliability: ``reliability_power`` (+ ``_low/_high``),
    ``reliability_reached`` (mean posterior median), ``reliability_width``
    (mean 95% HDI width), ``reliability_true`` (mean true value).
    ``attrs["diagnostics"]``: how many fits converged.
    """
    keys = DESIGN_COLUMNS + EFFECT_COLUMNS
    grid = pd.DataFrame(
        [
            {**dataclasses.asdict(d), **dataclasses.asdict(e)}
            for d, e in itertools.product(plan.designs, plan.effects)
        ]
    )
    res = results.copy()
    for c in keys:
        if c not in res:
            res[c] = np.nan
    for df in (grid, res):
        for c in keys:
            df[c] = df[c].astype(float)
    rows = []
    for _, g in grid.iterrows():
        sel = np.ones(len(res), dtype=bool)
        for c in keys:
            sel &= (res[c] == g[c]).to_numpy() | (res[c].isna() & pd.isna(g[c])).to_numpy()
        r = res[sel]
        row = {c: g[c] for c in keys}
        row |= {
            "method": plan.method,
            "replications": plan.replications,
            "done": len(r),
            "converged_share": float(r["converged"].astype(bool).mean()) if len(r) else np.nan,
            "max_rhat": float(r["max_rhat"].max()) if len(r) and "max_rhat" in r else np.nan,
            "divergent_share": float((r["divergences"] > 0).mean())
            if len(r) and "divergences" in r
            else np.nan,
        }
        if plan.association is not None:
            k = int(r["association_supported"].astype(bool).sum()) if len(r) else 0
            lo, hi = wilson_interval(k, len(r))
            row |= {
                "association_power": k / len(r) if len(r) else np.nan,
                "association_power_low": float(lo),
                "association_power_high": float(hi),
                "association_width": float(
                    (r["association_hdi_high"] - r["association_hdi_low"]).mean()
                )
                if len(r)
                else np.nan,
                "association_estimate": float(r["association_mean"].mean()) if len(r) else np.nan,
            }
        if plan.reliability is not None:
            k = int(r["reliability_supported"].astype(bool).sum()) if len(r) else 0
            lo, hi = wilson_interval(k, len(r))
            row |= {
                "reliability_power": k / len(r) if len(r) else np.nan,
                "reliability_power_low": float(lo),
                "reliability_power_high": float(hi),
                "reliability_reached": float(r["reliability_median"].mean()) if len(r) else np.nan,
                "reliability_width": float(
                    (r["reliability_hdi_high"] - r["reliability_hdi_low"]).mean()
                )
                if len(r)
                else np.nan,
                "reliability_true": float(r["reliability_true"].mean()) if len(r) else np.nan,
            }
        rows.append(row)
    out = pd.DataFrame(rows)
    for c in ("subjects", "sessions", "judges"):
        out[c] = out[c].astype(int)
    out["items"] = out["items"].astype("Int64")
    n_conv = int(results["converged"].astype(bool).sum()) if len(results) else 0
    if plan.method == "nuts":
        verdict = f"{n_conv} of {len(results)} NUTS fits converged"
    elif plan.method == "classical":
        verdict = "classical analysis (no MCMC)"
    else:
        verdict = f"APPROXIMATE fits ({plan.method}): convergence diagnostics do not apply"
    out.attrs["diagnostics"] = verdict
    return out


def plot_power(power: pd.DataFrame, plan: Plan) -> Figure:
    """Power curves: power against subjects, one line per other design factors x effect.

    Error bars are the 95% Monte Carlo (Wilson) intervals; the dashed line is
    80% power.
    """
    import matplotlib.pyplot as plt

    kinds = [k for k in ("association", "reliability") if getattr(plan, k) is not None]
    fig, axes = plt.subplots(1, len(kinds), figsize=(6 * len(kinds), 4), squeeze=False)
    others = ["sessions", "judges", "items"]
    for ax, kind in zip(axes[0], kinds, strict=True):
        groups = power.groupby(others + EFFECT_COLUMNS, dropna=False, sort=True)
        for i, (key, g) in enumerate(groups):
            ses, jud, items, assoc, rel = key
            label = f"{ses} sess, {jud} judges" + ("" if pd.isna(items) else f", {items} items")
            if not pd.isna(assoc):
                label += f", r={assoc:g}"
            if not pd.isna(rel):
                label += f", rel={rel:g}"
            g = g.sort_values("subjects")
            y = g[f"{kind}_power"]
            err = np.vstack([y - g[f"{kind}_power_low"], g[f"{kind}_power_high"] - y]).clip(0)
            ax.errorbar(
                g["subjects"], y, yerr=err, marker="o", capsize=3, label=label, color=f"C{i % 10}"
            )
        ax.axhline(0.8, ls="--", color="0.5", lw=1)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("subjects")
        ax.set_ylabel("power")
        if kind == "association":
            prob = plan.association.prob if plan.association else float("nan")
            ax.set_title(f"association with {plan.association_scale} supported (P >= {prob:g})")
        else:
            rule = _rule(plan)
            ax.set_title(
                f"{rule.level} {rule.coefficient} >= {rule.threshold:g} (P >= {rule.prob:g})"
            )
        ax.legend(fontsize=7)
    fig.suptitle(
        f"{plan.name}: {plan.method}, {plan.replications} replications; "
        f"{power.attrs.get('diagnostics', '')}",
        fontsize=9,
    )
    fig.tight_layout()
    return fig


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
    progress : one line per finished replication on stderr.

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
    )
    results = collect_results(tasks, out)
    power = power_table(results, plan)
    res = PlanResult(plan, results, power, run, out)
    atomic_write_file(out / "results.csv", lambda p: results.to_csv(p, index=False), force=True)
    atomic_write_file(out / "power.csv", lambda p: power.to_csv(p, index=False), force=True)
    import matplotlib.pyplot as plt

    fig = res.plot()
    for ext in ("png", "svg"):
        atomic_write_file(
            out / f"power.{ext}", functools.partial(_savefig, fig, fmt=ext), force=True
        )
    plt.close(fig)
    if run.failed:
        first = next(iter(run.failed.items()))
        print(
            f"warning: {len(run.failed)} replication(s) failed (e.g. {first[0]}: {first[1]}); "
            "rerun to retry them",
            file=sys.stderr,
        )
    return res


__all__ = [
    "AssociationRule",
    "Design",
    "Effect",
    "Plan",
    "PlanResult",
    "ReliabilityRule",
    "load_plan",
    "plan_from_dict",
    "plot_power",
    "power_table",
    "run_plan",
    "run_replication",
    "sd_alliance_for",
    "wilson_interval",
]
