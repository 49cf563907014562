"""Validity hypotheses written in TOML and tested against a fit's posterior.

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
from typing import TYPE_CHECKING, Any

import pandas as pd

from caltars_bayes.errors import SpecError

if TYPE_CHECKING:
    from caltars_bayes.fit import Fit

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


def _keys(table: Any, allowed: set[str], where: str) -> None:
    if not isinstance(table, dict):
        raise SpecError(f"{where}: must be a table")
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise SpecError(
            f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; "
            f"allowed: {', '.join(sorted(allowed))}"
        )


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
    _keys(doc, {"settings", "gain", "hypothesis"}, source)
    settings = doc.get("settings", {})
    _keys(settings, {"rope", "support", "contradict"}, f"{source} [settings]")
    where = f"{source} [settings]"
    rope = _prob(settings, "rope", 0.1, where)
    support = _prob(settings, "support", 0.95, where)
    contradict = _prob(settings, "contradict", 0.95, where)
    gains = []
    for i, g in enumerate(doc.get("gain", []), start=1):
        w = f"{source} [[gain]] #{i}"
        _keys(g, {"name", "pre", "post"}, w)
        gains.append(Gain(_text(g, "name", w), _text(g, "pre", w), _text(g, "post", w)))
    items = doc.get("hypothesis", [])
    if not isinstance(items, list) or not items:
        raise SpecError(f"{source}: no [[hypothesis]] entries")
    hyps: list[Hypothesis] = []
    for i, h in enumerate(items, start=1):
        w = f"{source} [[hypothesis]] #{i}"
        _keys(h, {"scale", "scales", "covariate", "direction", "label"}, w)
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


def _verdict(
    direction: str,
    p_pos: float,
    p_neg: float,
    p_rope: float,
    p_above: float,
    p_below: float,
    hyp: Hypotheses,
) -> tuple[float, str]:
    if direction == "null":
        p_expected = p_rope
        if p_rope >= hyp.support:
            return p_expected, "supported"
        if max(p_above, p_below) >= hyp.contradict:
            return p_expected, "contradicted"
        return p_expected, "inconclusive"
    p_expected, p_opposite = (p_pos, p_neg) if direction == "positive" else (p_neg, p_pos)
    if p_expected >= hyp.support:
        return p_expected, "supported"
    if p_opposite >= hyp.contradict:
        return p_expected, "contradicted"
    return p_expected, "inconclusive"


def test_hypotheses(fit: Fit, hypotheses: Hypotheses) -> pd.DataFrame:
    """Posterior verdict on each hypothesis.

    Returns
    -------
    DataFrame, one row per hypothesis (a hypothesis naming several scales gives
    one row per scale), with columns ``scale, covariate, level, direction,
    label, median, hdi_low, hdi_high, p_expected`` (P(expected sign), or
    P(|r| < rope) for a null hypothesis), ``p_opposite, p_rope, verdict``
    ("supported" | "contradicted" | "inconclusive"), ``classical_r,
    classical_p`` and ``converged``. ``attrs`` holds the thresholds.
    """
    from caltars_bayes.associations import (
        SAMPLE_DIMS,
        association_draws,
        associations,
        residualised_gain,
        residualised_gain_draws,
    )
    from caltars_bayes.tables import _stamp

    table = associations(fit, rope=hypotheses.rope, gains=False)
    draws = {lvl: association_draws(fit, lvl) for lvl in ("subject", "session")}
    gain_tables = {}
    for g in hypotheses.gains:
        gain_tables[g.name] = residualised_gain(fit, g.pre, g.post, g.name, rope=hypotheses.rope)
    check_hypotheses(
        hypotheses, list(fit.data.scales), fit.plan.covariates + fit.plan.session_covariates
    )
    rows = []
    for h in hypotheses.hypotheses:
        if h.covariate in gain_tables:
            g = next(x for x in hypotheses.gains if x.name == h.covariate)
            row = gain_tables[h.covariate].set_index("scale").loc[h.scale]
            level = "subject"
            da = residualised_gain_draws(fit, g.pre, g.post).sel(scale=h.scale)
        else:
            hit = table[(table["scale"] == h.scale) & (table["covariate"] == h.covariate)]
            row = hit.iloc[0]
            level = str(row["level"])
            level_draws = draws[level]
            assert level_draws is not None  # the table has rows only for modelled levels
            da = level_draws.sel(scale=h.scale, covariate=h.covariate)
        p_above = float((da > hypotheses.rope).mean(SAMPLE_DIMS))
        p_below = float((da < -hypotheses.rope).mean(SAMPLE_DIMS))
        p_pos, p_neg, p_rope = (
            float(row["p_positive"]),
            float(row["p_negative"]),
            float(row["p_rope"]),
        )
        p_exp, verdict = _verdict(h.direction, p_pos, p_neg, p_rope, p_above, p_below, hypotheses)
        p_opp = {"positive": p_neg, "negative": p_pos, "null": max(p_above, p_below)}[h.direction]
        rows.append(
            {
                "scale": h.scale,
                "covariate": h.covariate,
                "level": level,
                "direction": h.direction,
                "label": h.label,
                "median": float(row["median"]),
                "hdi_low": float(row["hdi_low"]),
                "hdi_high": float(row["hdi_high"]),
                "p_expected": p_exp,
                "p_opposite": p_opp,
                "p_rope": p_rope,
                "verdict": verdict,
                "classical_r": float(row["classical_r"]),
                "classical_p": float(row["classical_p"]),
            }
        )
    out = pd.DataFrame(rows)
    out.attrs.update(
        {
            "rope": hypotheses.rope,
            "support": hypotheses.support,
            "contradict": hypotheses.contradict,
        }
    )
    return _stamp(out, fit)


# not a pytest test, despite its name (it is imported into test modules)
test_hypotheses.__test__ = False  # type: ignore[attr-defined]


def summarise_verdicts(table: pd.DataFrame) -> str:
    """One line: how many hypotheses were supported, contradicted, inconclusive."""
    counts = table["verdict"].value_counts()
    parts = [f"{int(counts.get(v, 0))} {v}" for v in ("supported", "contradicted", "inconclusive")]
    return f"{len(table)} hypotheses: " + ", ".join(parts)
