"""A plan for planning a trial by simulation: the plan file and what its effects mean.

A plan (TOML, see ``models/plan-example.toml`` and ``docs/planning.md``) names
a grid of designs (subjects x sessions x judges x items per scale), a grid of
effects (the latent correlation of a covariate with one scale; the true
reliability of the decided coefficient), the number of replications, the
analysis (NUTS, an approximate method, or the classical analysis) and the
decision rules. :func:`load_plan` reads and validates it into a :class:`Plan`;
running it is :func:`caltars_bayes.studies.planning.run_plan`.

Effects
-------
``association = r``: the simulated covariate ``x`` has latent correlation
``r`` with the treatment-level alliance of ``simulation.association_scale``
and 0 with the other scales.
``reliability = R``: ``sd_alliance`` is set (per design, every scale alike,
``sd_session`` and the judge SDs held at their ``[simulation]`` values, item
loadings taken as 1) so that the true latent-route value of the *decided*
coefficient is ``R`` (without a reliability rule: the session-level,
single-judge agreement coefficient; :func:`sd_alliance_for`). The table
reports the true value of each simulated trial (with its own loadings) beside it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scipy.optimize import brentq

from caltars_bayes._core.errors import SpecError
from caltars_bayes._core.keys import check_keys
from caltars_bayes.analysis.reliability import coefficient_from_components, latent_components
from caltars_bayes.spec.instrument import Instrument, load_instrument, models_dir
from caltars_bayes.studies.tasks import Task

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


# --------------------------------------------------------------------------- reading a plan


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
    top = check_keys(doc, _TOP, source)
    for req in ("plan", "design", "effects"):
        if req not in top:
            raise SpecError(f"{source}: missing table [{req}]")
    inst, reps, seed, name = _plan_table(top["plan"], source, base)
    designs = _designs(top["design"], inst, source)
    e = check_keys(top["effects"], set(EFFECT_COLUMNS), f"{source}: [effects]")
    effects = _effects(e, source)
    sim = _simulation(top.get("simulation", {}), inst, source)
    a = _analysis(top.get("analysis", {}), source)
    arule, rrule = _decisions(top.get("decisions", {}), e, inst, source)
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


def _plan_table(table: Any, source: str, base: Path) -> tuple[Instrument, int, int, str]:
    """``[plan]``: the instrument, replications, seed and name."""
    p = check_keys(table, _PLAN_KEYS, f"{source}: [plan]")
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
    return inst, reps, seed, name


def _designs(table: Any, inst: Instrument, source: str) -> tuple[Design, ...]:
    """``[design]``: every combination of the listed subjects, sessions, judges and items."""
    d = check_keys(table, _DESIGN_KEYS, f"{source}: [design]")
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
    return tuple(Design(*c) for c in itertools.product(subjects, sessions, judges, items))


def _effects(e: dict[str, Any], source: str) -> tuple[Effect, ...]:
    """``[effects]`` (its keys already checked): every association x reliability."""
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
    return tuple(Effect(a, r) for a, r in itertools.product(assoc, rel))  # type: ignore[arg-type]


def _simulation(table: Any, inst: Instrument, source: str) -> dict[str, Any]:
    """``[simulation]`` over :data:`SIMULATION_DEFAULTS`."""
    sim = {**SIMULATION_DEFAULTS}
    for k, v in check_keys(table, set(SIMULATION_DEFAULTS), f"{source}: [simulation]").items():
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
    return sim


def _analysis(table: Any, source: str) -> dict[str, Any]:
    """``[analysis]`` over :data:`ANALYSIS_DEFAULTS`."""
    a = {
        **ANALYSIS_DEFAULTS,
        **check_keys(table, set(ANALYSIS_DEFAULTS), f"{source}: [analysis]"),
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
    return a


def _decisions(
    table: Any, effects: dict[str, Any], inst: Instrument, source: str
) -> tuple[AssociationRule | None, ReliabilityRule | None]:
    """``[decisions]``: the association and reliability rules (at least one)."""
    dec = check_keys(table, _DECISION_KEYS, f"{source}: [decisions]")
    arule = rrule = None
    if "association" in dec:
        t = check_keys(dec["association"], _ASSOC_KEYS, f"{source}: [decisions.association]")
        arule = AssociationRule(
            _prob(t.get("prob", 0.95), f"{source}: [decisions.association].prob")
        )
        if "association" not in effects:
            raise SpecError(f"{source}: [decisions.association] needs [effects].association")
    if "reliability" in dec:
        rrule = _reliability_rule(dec["reliability"], inst, f"{source}: [decisions.reliability]")
    if arule is None and rrule is None:
        raise SpecError(f"{source}: [decisions] needs association and/or reliability rules")
    return arule, rrule


def _reliability_rule(table: Any, inst: Instrument, where: str) -> ReliabilityRule:
    """``[decisions.reliability]``."""
    t = check_keys(table, _REL_KEYS, where)
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
    return ReliabilityRule(
        float(thr),
        _prob(t.get("prob", 0.9), f"{where}.prob"),
        level,
        kj,
        coef,
        gen,
        tuple(scales),
    )


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


# --------------------------------------------------------------------------- the reliability effect


def reliability_rule(plan: Plan) -> ReliabilityRule:
    """The plan's reliability rule, or the default one (it defines the ``reliability`` effect)."""
    return plan.reliability or ReliabilityRule()


def _latent_coefficient(plan: Plan, design: Design, sd_alliance: float) -> float:
    rule, sim = reliability_rule(plan), plan.simulation
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
