"""Declarative specs: instruments (items -> scales), model options and priors.

A spec is data, parsed from TOML with :mod:`tomllib` and validated once, here.
Unknown keys are errors (a typo must never be ignored), and nothing from a
spec file is ever evaluated as code: priors name a distribution from a fixed
list and give its numeric parameters.

An instrument file has these tables (see ``models/caltars.toml``)::

    [instrument]   name, title, rater ("observer" | "self-report"), notes
    [response]     min, max (whole numbers; 2..11 categories), labels
    [[scale]]      code, name, items = [...], provisional, note
    reverse_keyed  = [...]  (under [instrument]) item codes scored max+min-rating
    [structures.NAME]   alternative factor structures (factor -> scales or items)
    [model]        model options (see :class:`ModelOptions`)
    [priors]       prior overrides (see :class:`Priors`)

A model spec file (``--model``) may hold just ``[model]`` and ``[priors]``;
it overrides the instrument's defaults.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from caltars_bayes._core.errors import SpecError
from caltars_bayes._core.keys import check_keys

MAX_ITEMS = 200
MAX_SCALES = 12
MIN_CATEGORIES, MAX_CATEGORIES = 2, 11

#: Prior families a spec may name, with the parameters each takes.
PRIOR_FAMILIES: dict[str, tuple[str, ...]] = {
    "Normal": ("mu", "sigma"),
    "HalfNormal": ("sigma",),
    "LogNormal": ("mu", "sigma"),
    "Exponential": ("lam",),
    "Gamma": ("alpha", "beta"),
    "HalfStudentT": ("nu", "sigma"),
    "StudentT": ("nu", "mu", "sigma"),
}


@dataclass(frozen=True)
class Prior:
    """A prior distribution named by family, with numeric parameters."""

    dist: str
    params: dict[str, float]

    @classmethod
    def parse(cls, value: Any, where: str) -> Prior:
        if not isinstance(value, Mapping):
            raise SpecError(
                f"{where}: a prior is a table like {{ dist = 'HalfNormal', sigma = 1 }}"
            )
        if "dist" not in value:
            raise SpecError(f"{where}: prior needs 'dist' (one of {', '.join(PRIOR_FAMILIES)})")
        dist = value["dist"]
        if dist not in PRIOR_FAMILIES:
            raise SpecError(
                f"{where}: unknown prior family {dist!r}; use one of {', '.join(PRIOR_FAMILIES)}"
            )
        names = PRIOR_FAMILIES[dist]
        check_keys(value, {"dist", *names}, where)
        params: dict[str, float] = {}
        for name in names:
            if name not in value:
                raise SpecError(f"{where}: {dist} prior needs '{name}'")
            v = value[name]
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise SpecError(f"{where}: prior parameter '{name}' must be a number, got {v!r}")
            if name in ("sigma", "lam", "alpha", "beta", "nu") and v <= 0:
                raise SpecError(f"{where}: prior parameter '{name}' must be > 0, got {v}")
            params[name] = float(v)
        return cls(dist, params)

    def to_dict(self) -> dict[str, Any]:
        return {"dist": self.dist, **self.params}

    def __str__(self) -> str:
        args = ", ".join(f"{k}={v:g}" for k, v in self.params.items())
        return f"{self.dist}({args})"


@dataclass(frozen=True)
class Priors:
    """Weakly informative default priors, each overridable in ``[priors]``.

    Everything is on the logit scale of the average judge and the average item
    of a scale: ``sd_alliance`` is the SD of the treatment-level factor,
    ``sd_session`` of session deviations; ``log_loading`` is the prior of an
    item's log loading before centring within its scale (loadings have
    geometric mean 1 per scale).
    """

    sd_alliance: Prior = Prior("HalfNormal", {"sigma": 2.0})
    log_loading: Prior = Prior("Normal", {"mu": 0.0, "sigma": 0.5})
    cutpoint: Prior = Prior("Normal", {"mu": 0.0, "sigma": 3.0})
    sd_session: Prior = Prior("HalfNormal", {"sigma": 1.0})
    sd_severity: Prior = Prior("Gamma", {"alpha": 4.0, "beta": 8.0})
    sd_log_discrimination: Prior = Prior("Gamma", {"alpha": 4.0, "beta": 20.0})
    sd_interaction: Prior = Prior("HalfNormal", {"sigma": 0.5})
    trend: Prior = Prior("Normal", {"mu": 0.0, "sigma": 0.5})
    log_general_loading: Prior = Prior("Normal", {"mu": 0.0, "sigma": 0.75})
    covariate_intercept: Prior = Prior("Normal", {"mu": 0.0, "sigma": 1.0})
    covariate_slope: Prior = Prior("Normal", {"mu": 0.0, "sigma": 0.5})
    covariate_sd: Prior = Prior("HalfNormal", {"sigma": 1.0})
    lkj_eta: float = 2.0

    @classmethod
    def parse(cls, table: Mapping[str, Any], where: str, base: Priors | None = None) -> Priors:
        base = base or cls()
        allowed = {f.name for f in fields(cls)}
        check_keys(table, allowed, where)
        updates: dict[str, Any] = {}
        for key, value in table.items():
            if key == "lkj_eta":
                if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                    raise SpecError(f"{where}: 'lkj_eta' must be a number > 0, got {value!r}")
                updates[key] = float(value)
            else:
                updates[key] = Prior.parse(value, f"{where}.{key}")
        return replace(base, **updates)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = v.to_dict() if isinstance(v, Prior) else v
        return out


AUTO = "auto"
_TRISTATE = {True, False, AUTO}


@dataclass(frozen=True)
class ModelOptions:
    """Switches for each part of the measurement model (``[model]`` table).

    ``"auto"`` means: include the part when the design can identify it (a
    session level needs some subject with two sessions; judge effects need two
    judges), and say in the data report when it was dropped.
    """

    session_level: bool | str = AUTO
    session_trend: bool = False
    judge_severity: bool | str = AUTO
    judge_discrimination: bool | str = AUTO
    judge_subject_interaction: bool = False
    cutpoints: str = "item"  # "item" | "scale"
    #: "auto" | "centred" | "noncentred" | "joint" (subject factors sampled through
    #: each subject's average session alliance; judges by the auto rule)
    parameterisation: str = AUTO
    target_accept: float = 0.9
    bifactor: bool = False  # a general factor besides orthogonal scale factors
    covariates: bool = True  # model subject covariates jointly with the alliance
    session_covariates: str = "session"  # "session" | "subject" (aggregate) | "none"
    #: how the likelihood holds the ratings (not the data file's layout):
    #: "vector": one vector of observed ratings with index gathers (any design;
    #: fastest on CPU). "dense": a session x judge x item array (complete
    #: designs only; no per-rating gathers, so its gradient has no scatter-adds:
    #: about 1000x faster on a GPU, see docs/model.md). "auto": dense for the
    #: JAX samplers (numpyro, blackjax) when the design is complete, else vector.
    likelihood_layout: str = AUTO

    @classmethod
    def parse(
        cls, table: Mapping[str, Any], where: str, base: ModelOptions | None = None
    ) -> ModelOptions:
        base = base or cls()
        allowed = {f.name for f in fields(cls)}
        check_keys(table, allowed, where)
        for key in ("session_level", "judge_severity", "judge_discrimination"):
            if key in table and table[key] not in _TRISTATE:
                raise SpecError(f'{where}.{key}: must be true, false or "auto"')
        for key in ("session_trend", "judge_subject_interaction", "covariates", "bifactor"):
            if key in table and not isinstance(table[key], bool):
                raise SpecError(f"{where}.{key}: must be true or false")
        if "cutpoints" in table and table["cutpoints"] not in ("item", "scale"):
            raise SpecError(f'{where}.cutpoints: must be "item" or "scale"')
        if "likelihood_layout" in table and table["likelihood_layout"] not in (
            AUTO,
            "vector",
            "dense",
        ):
            raise SpecError(f'{where}.likelihood_layout: must be "auto", "vector" or "dense"')
        if "session_covariates" in table and table["session_covariates"] not in (
            "session",
            "subject",
            "none",
        ):
            raise SpecError(f'{where}.session_covariates: must be "session", "subject" or "none"')
        if "parameterisation" in table and table["parameterisation"] not in (
            AUTO,
            "centred",
            "noncentred",
            "joint",
        ):
            raise SpecError(
                f'{where}.parameterisation: must be "auto", "centred", "noncentred" or "joint"'
            )
        if "target_accept" in table:
            ta = table["target_accept"]
            if isinstance(ta, bool) or not isinstance(ta, float | int) or not 0.5 <= ta < 1:
                raise SpecError(f"{where}.target_accept: must be a number in [0.5, 1)")
        return replace(base, **dict(table))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Scale:
    """One scale of an instrument: a code, a display name and its item codes."""

    code: str
    name: str
    items: tuple[str, ...]
    provisional: bool = False
    note: str = ""


@dataclass(frozen=True)
class Structure:
    """A factor structure over an instrument's items: factor name -> item codes."""

    name: str
    factors: dict[str, tuple[str, ...]]
    description: str = ""
    #: a general factor over all items besides the (orthogonal) specific factors
    bifactor: bool = False


@dataclass(frozen=True)
class Instrument:
    """An instrument: items grouped into scales, a response range, reverse keys.

    Also carries the model options and priors written in its spec file, and any
    alternative factor structures it declares.
    """

    name: str
    scales: tuple[Scale, ...]
    response_min: int = 1
    response_max: int = 5
    title: str = ""
    rater: str = "observer"
    notes: str = ""
    reverse_keyed: frozenset[str] = frozenset()
    response_labels: tuple[str, ...] = ()
    structures: dict[str, Structure] = field(default_factory=dict)
    model: ModelOptions = field(default_factory=ModelOptions)
    priors: Priors = field(default_factory=Priors)
    source: str | None = None

    @property
    def items(self) -> tuple[str, ...]:
        """All item codes, scale by scale, in spec order."""
        return tuple(i for s in self.scales for i in s.items)

    @property
    def scale_codes(self) -> tuple[str, ...]:
        return tuple(s.code for s in self.scales)

    @property
    def item_scale(self) -> dict[str, str]:
        """Map item code -> scale code."""
        return {i: s.code for s in self.scales for i in s.items}

    @property
    def n_categories(self) -> int:
        return self.response_max - self.response_min + 1

    def scale(self, code: str) -> Scale:
        for s in self.scales:
            if s.code == code:
                return s
        raise KeyError(code)

    def with_structure(self, name: str) -> Instrument:
        """Return this instrument regrouped by the named alternative structure.

        Each factor of the structure becomes a scale; item codes, response range
        and reverse keys stay as they are.
        """
        if name in ("default", "scales") and name not in self.structures:
            return self
        if name not in self.structures:
            known = ", ".join(["default", *self.structures]) or "default"
            raise SpecError(f"{self.source or self.name}: no structure {name!r}; known: {known}")
        st = self.structures[name]
        scales = tuple(Scale(code=f, name=f, items=items) for f, items in st.factors.items())
        model = replace(self.model, bifactor=True) if st.bifactor else self.model
        return replace(self, scales=scales, structures={}, model=model)

    def spec_dict(self) -> dict[str, Any]:
        """A plain-data form of the whole spec (for hashing and saving with a fit)."""
        return {
            "instrument": {
                "name": self.name,
                "title": self.title,
                "rater": self.rater,
                "notes": self.notes,
                "reverse_keyed": sorted(self.reverse_keyed),
            },
            "response": {
                "min": self.response_min,
                "max": self.response_max,
                **({"labels": list(self.response_labels)} if self.response_labels else {}),
            },
            "scale": [
                {
                    "code": s.code,
                    "name": s.name,
                    "items": list(s.items),
                    "provisional": s.provisional,
                    **({"note": s.note} if s.note else {}),
                }
                for s in self.scales
            ],
            "structures": {
                n: {
                    "description": st.description,
                    "factors": {k: list(v) for k, v in st.factors.items()},
                    **({"bifactor": True} if st.bifactor else {}),
                }
                for n, st in self.structures.items()
            },
            "model": self.model.to_dict(),
            "priors": self.priors.to_dict(),
        }

    def hash(self) -> str:
        """A short stable hash of the spec's content (not its file path)."""
        blob = json.dumps(self.spec_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def _read_toml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.exists():
        raise SpecError(f"{p}: spec file not found")
    try:
        with p.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{p}: not valid TOML ({exc})") from None


def _str_list(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise SpecError(f"{where}: must be a list of non-empty strings")
    return tuple(v.strip() for v in value)


def parse_instrument(doc: Mapping[str, Any], source: str = "<spec>") -> Instrument:
    """Validate a parsed TOML document and build an :class:`Instrument`."""
    check_keys(doc, {"instrument", "response", "scale", "structures", "model", "priors"}, source)
    head = doc.get("instrument")
    if not isinstance(head, Mapping):
        raise SpecError(f"{source}: missing [instrument] table")
    check_keys(head, {"name", "title", "rater", "notes", "reverse_keyed"}, f"{source} [instrument]")
    name = head.get("name")
    if not isinstance(name, str) or not name:
        raise SpecError(f"{source} [instrument]: 'name' is required")
    rater = head.get("rater", "observer")
    if rater not in ("observer", "self-report"):
        raise SpecError(f'{source} [instrument].rater: must be "observer" or "self-report"')

    rmin, rmax, labels = _parse_response(doc.get("response", {}), source)
    scales, seen_items = _parse_scales(doc.get("scale"), source)

    rev = _str_list(head.get("reverse_keyed", []), f"{source} [instrument].reverse_keyed")
    for it in rev:
        if it not in seen_items:
            raise SpecError(
                f"{source} [instrument].reverse_keyed: {it!r} is not an item of any scale"
            )

    structures = _parse_structures(doc.get("structures", {}), scales, seen_items, source)
    model = ModelOptions.parse(doc.get("model", {}), f"{source} [model]")
    priors = Priors.parse(doc.get("priors", {}), f"{source} [priors]")
    return Instrument(
        name=name,
        scales=tuple(scales),
        response_min=rmin,
        response_max=rmax,
        title=str(head.get("title", "")),
        rater=rater,
        notes=str(head.get("notes", "")),
        reverse_keyed=frozenset(rev),
        response_labels=labels,
        structures=structures,
        model=model,
        priors=priors,
        source=source,
    )


def _parse_response(resp: Any, source: str) -> tuple[int, int, tuple[str, ...]]:
    """The ``[response]`` table: (min, max, labels)."""
    check_keys(resp, {"min", "max", "labels"}, f"{source} [response]")
    rmin, rmax = resp.get("min", 1), resp.get("max", 5)
    for key, v in (("min", rmin), ("max", rmax)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise SpecError(f"{source} [response].{key}: must be a whole number, got {v!r}")
    n_cat = rmax - rmin + 1
    if not MIN_CATEGORIES <= n_cat <= MAX_CATEGORIES:
        raise SpecError(
            f"{source} [response]: {rmin}..{rmax} gives {n_cat} categories; "
            f"allowed {MIN_CATEGORIES}..{MAX_CATEGORIES}"
        )
    labels = _str_list(resp["labels"], f"{source} [response].labels") if "labels" in resp else ()
    if labels and len(labels) != n_cat:
        raise SpecError(f"{source} [response].labels: {len(labels)} labels for {n_cat} categories")
    return rmin, rmax, labels


def _parse_scales(raw_scales: Any, source: str) -> tuple[list[Scale], dict[str, str]]:
    """The ``[[scale]]`` tables: (scales, item code -> scale code)."""
    if not isinstance(raw_scales, list) or not raw_scales:
        raise SpecError(f"{source}: at least one [[scale]] table is required")
    if len(raw_scales) > MAX_SCALES:
        raise SpecError(f"{source}: {len(raw_scales)} scales; at most {MAX_SCALES} are supported")
    scales: list[Scale] = []
    seen_items: dict[str, str] = {}
    for n, sc in enumerate(raw_scales, start=1):
        w = f"{source} [[scale]] #{n}"
        if not isinstance(sc, Mapping):
            raise SpecError(f"{w}: must be a table")
        check_keys(sc, {"code", "name", "items", "provisional", "note"}, w)
        code = sc.get("code")
        if not isinstance(code, str) or not code.strip():
            raise SpecError(f"{w}: 'code' is required")
        code = code.strip()
        if code in {s.code for s in scales}:
            raise SpecError(f"{w}: duplicate scale code {code!r}")
        if "items" not in sc:
            raise SpecError(f"{w} ({code}): 'items' is required")
        items = _str_list(sc["items"], f"{w} ({code}).items")
        if not items:
            raise SpecError(f"{w} ({code}): needs at least one item")
        for it in items:
            if it in seen_items:
                raise SpecError(
                    f"{w} ({code}): item {it!r} already belongs to scale {seen_items[it]!r}"
                )
            seen_items[it] = code
        prov = sc.get("provisional", False)
        if not isinstance(prov, bool):
            raise SpecError(f"{w} ({code}).provisional: must be true or false")
        scales.append(Scale(code, str(sc.get("name", code)), items, prov, str(sc.get("note", ""))))
    if len(seen_items) > MAX_ITEMS:
        raise SpecError(f"{source}: {len(seen_items)} items; at most {MAX_ITEMS} are supported")
    return scales, seen_items


def _parse_structures(
    raw_structs: Any, scales: list[Scale], seen_items: Mapping[str, str], source: str
) -> dict[str, Structure]:
    """The ``[structures.NAME]`` tables: alternative factor structures by name."""
    structures: dict[str, Structure] = {}
    if not isinstance(raw_structs, Mapping):
        raise SpecError(f"{source} [structures]: must be a table of structures")
    scale_items = {s.code: s.items for s in scales}
    for sname, st in raw_structs.items():
        w = f"{source} [structures.{sname}]"
        if not isinstance(st, Mapping):
            raise SpecError(f"{w}: must be a table")
        check_keys(st, {"description", "factors", "bifactor"}, w)
        bifactor = st.get("bifactor", False)
        if not isinstance(bifactor, bool):
            raise SpecError(f"{w}.bifactor: must be true or false")
        facs = st.get("factors")
        if bifactor and facs is None:  # the instrument's scales are the specific factors
            facs = {s.code: [s.code] for s in scales}
        if not isinstance(facs, Mapping) or not facs:
            raise SpecError(f"{w}: 'factors' must map factor names to lists of scale or item codes")
        mapped: dict[str, tuple[str, ...]] = {}
        used: set[str] = set()
        for fname, members in facs.items():
            codes = _str_list(members, f"{w}.factors.{fname}")
            factor_items: list[str] = []
            for c in codes:
                if c in scale_items:
                    factor_items.extend(scale_items[c])
                elif c in seen_items:
                    factor_items.append(c)
                else:
                    raise SpecError(f"{w}.factors.{fname}: {c!r} is neither a scale nor an item")
            dup = used.intersection(factor_items)
            if dup:
                raise SpecError(f"{w}.factors.{fname}: item(s) {sorted(dup)} assigned twice")
            used.update(factor_items)
            mapped[fname] = tuple(factor_items)
        missing = [i for i in seen_items if i not in used]
        if missing:
            raise SpecError(f"{w}: items not assigned to any factor: {missing[:5]}")
        structures[sname] = Structure(
            sname, mapped, str(st.get("description", "")), bifactor=bifactor
        )
    return structures


def load_instrument(path: str | Path, model: str | Path | None = None) -> Instrument:
    """Read and validate an instrument spec (and optionally a model spec overriding it).

    Parameters
    ----------
    path : path to the instrument TOML (e.g. ``models/caltars.toml``).
    model : optional path to a TOML with ``[model]`` and/or ``[priors]`` tables.
    """
    inst = parse_instrument(_read_toml(path), source=str(path))
    if model is not None:
        inst = apply_model_spec(inst, _read_toml(model), source=str(model))
    return inst


def apply_model_spec(
    inst: Instrument, doc: Mapping[str, Any], source: str = "<model>"
) -> Instrument:
    """Override an instrument's model options and priors with a model spec document."""
    check_keys(doc, {"model", "priors"}, source)
    return replace(
        inst,
        model=ModelOptions.parse(doc.get("model", {}), f"{source} [model]", base=inst.model),
        priors=Priors.parse(doc.get("priors", {}), f"{source} [priors]", base=inst.priors),
    )


def instrument_from_dict(doc: Mapping[str, Any]) -> Instrument:
    """Rebuild an instrument from :meth:`Instrument.spec_dict` output (as saved with a fit)."""
    d = dict(doc)
    structures = d.pop("structures", {}) or {}
    d["structures"] = {
        n: {k: st[k] for k in ("description", "factors", "bifactor") if k in st}
        for n, st in structures.items()
    }
    return parse_instrument(d, source="<saved spec>")


def models_dir() -> Path:
    """The ``models/`` folder that ships with the source tree."""
    return Path(__file__).resolve().parents[2] / "models"
