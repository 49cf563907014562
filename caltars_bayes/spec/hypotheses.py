"""Validity hypotheses written in TOML (their verdicts: :mod:`caltars_bayes.analysis.validity`).

A hypotheses file (see ``models/caltars-1989-hypotheses.toml``)::

    [settings]                 # optional; these are the defaults
    rope = 0.1                 # |r| < rope counts as "no association"
    support = 0.95             # verdict thresholds on posterior probabilities
    contradict = 0.95

    [[gain]]                   # optional: residualised gains (post given pre)
    name = "symptom_gain"
    pre = "symptoms_pre"
    post = "symptoms_post"

    [[hypothesis]]
    scales = ["PPC", "TPC"]    # or scale = "PPC"
    covariate = "education"    # a subject or session covariate, or a gain name
    direction = "positive"     # "positive" | "negative" | "null"
    label = "..."              # optional text for tables

Verdicts. A directional hypothesis is *supported* when the posterior
probability of the expected sign is at least ``support``, *contradicted* when
the probability of the opposite sign is at least ``contradict``, otherwise
*inconclusive*. A null hypothesis is supported when ``P(|r| < rope) >=
support`` and contradicted when ``P(r > rope)`` or ``P(r < -rope)`` reaches
``contradict``.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from caltars_bayes._core.errors import SpecError
from caltars_bayes._core.keys import check_keys

DIRECTIONS = ("positive", "negative", "null")


@dataclass(frozen=True)
class Hypothesis:
    """One expected association: a scale, a covariate and a direction."""

    scale: str
    covariate: str
    direction: str
    label: str = ""


@dataclass(frozen=True)
class Gain:
    """A residualised gain: ``post`` regressed on ``pre`` (both subject covariates)."""

    name: str
    pre: str
    post: str


@dataclass
class Hypotheses:
    """A set of hypotheses with the verdict thresholds."""

    hypotheses: list[Hypothesis]
    gains: list[Gain] = field(default_factory=list)
    rope: float = 0.1
    support: float = 0.95
    contradict: float = 0.95
    source: str = "<hypotheses>"

    def to_dict(self) -> dict[str, Any]:
        return {
            "settings": {"rope": self.rope, "support": self.support, "contradict": self.contradict},
            "gain": [g.__dict__ for g in self.gains],
            "hypothesis": [h.__dict__ for h in self.hypotheses],
        }


def _text(table: dict, key: str, where: str) -> str:
    v = table.get(key)
    if not isinstance(v, str) or not v.strip():
        raise SpecError(f"{where}: '{key}' must be a non-empty string")
    return v.strip()


def _prob(table: dict, key: str, default: float, where: str, upper: float = 1.0) -> float:
    v = table.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v < upper:
        raise SpecError(f"{where}.{key}: must be a number between 0 and {upper:g}, got {v!r}")
    return float(v)


def hypotheses_from_dict(doc: dict[str, Any], source: str = "<hypotheses>") -> Hypotheses:
    """Validate a parsed hypotheses document (see the module docstring)."""
    check_keys(doc, {"settings", "gain", "hypothesis"}, source)
    settings = doc.get("settings", {})
    check_keys(settings, {"rope", "support", "contradict"}, f"{source} [settings]")
    where = f"{source} [settings]"
    rope = _prob(settings, "rope", 0.1, where)
    support = _prob(settings, "support", 0.95, where)
    contradict = _prob(settings, "contradict", 0.95, where)
    gains = []
    for i, g in enumerate(doc.get("gain", []), start=1):
        w = f"{source} [[gain]] #{i}"
        check_keys(g, {"name", "pre", "post"}, w)
        gains.append(Gain(_text(g, "name", w), _text(g, "pre", w), _text(g, "post", w)))
    items = doc.get("hypothesis", [])
    if not isinstance(items, list) or not items:
        raise SpecError(f"{source}: no [[hypothesis]] entries")
    hyps: list[Hypothesis] = []
    for i, h in enumerate(items, start=1):
        w = f"{source} [[hypothesis]] #{i}"
        check_keys(h, {"scale", "scales", "covariate", "direction", "label"}, w)
        if ("scale" in h) == ("scales" in h):
            raise SpecError(f"{w}: give either 'scale' or 'scales'")
        scales = [h["scale"]] if "scale" in h else h["scales"]
        if (
            not isinstance(scales, list)
            or not scales
            or not all(isinstance(s, str) and s for s in scales)
        ):
            raise SpecError(f"{w}: 'scales' must be a non-empty list of scale codes")
        cov = _text(h, "covariate", w)
        direction = _text(h, "direction", w)
        if direction not in DIRECTIONS:
            raise SpecError(f"{w}: direction {direction!r} must be one of {', '.join(DIRECTIONS)}")
        label = h.get("label", "")
        if not isinstance(label, str):
            raise SpecError(f"{w}: 'label' must be a string")
        hyps.extend(Hypothesis(s, cov, direction, label) for s in scales)
    return Hypotheses(hyps, gains, rope, support, contradict, source)


def load_hypotheses(path: str | Path) -> Hypotheses:
    """Read and validate a hypotheses TOML file (one-line :class:`SpecError` on bad input)."""
    p = Path(path)
    if not p.is_file():
        raise SpecError(f"{p}: hypotheses file not found")
    try:
        with p.open("rb") as fh:
            doc = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{p}: not valid TOML ({exc})") from None
    return hypotheses_from_dict(doc, str(p))


def check_hypotheses(hypotheses: Hypotheses, scales: list[str], covariates: list[str]) -> None:
    """Check that every scale, covariate and gain named exists (before fitting).

    ``covariates`` are the subject and session covariates the model uses.
    Raises a one-line :class:`SpecError` naming the hypothesis.
    """
    for g in hypotheses.gains:
        for v in (g.pre, g.post):
            if v not in covariates:
                raise SpecError(
                    f"{hypotheses.source}: gain {g.name!r} uses {v!r}, which is not a modelled "
                    f"covariate (covariates: {', '.join(covariates) or 'none'})"
                )
    known = set(covariates) | {g.name for g in hypotheses.gains}
    for i, h in enumerate(hypotheses.hypotheses, start=1):
        where = f"{hypotheses.source} hypothesis #{i}"
        if h.scale not in scales:
            raise SpecError(f"{where}: scale {h.scale!r} is not in the fit ({', '.join(scales)})")
        if h.covariate not in known:
            raise SpecError(
                f"{where}: covariate {h.covariate!r} is not a modelled covariate "
                f"(covariates: {', '.join(sorted(known)) or 'none'})"
            )
