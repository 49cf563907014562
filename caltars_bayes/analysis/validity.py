"""Posterior verdicts on validity hypotheses (parsed by :mod:`caltars_bayes.spec.hypotheses`).

A directional hypothesis is *supported* when the posterior probability of the
expected sign is at least ``support``, *contradicted* when the probability of
the opposite sign is at least ``contradict``, otherwise *inconclusive*. A null
hypothesis is supported when ``P(|r| < rope) >= support`` and contradicted when
``P(r > rope)`` or ``P(r < -rope)`` reaches ``contradict``.

:func:`plot_associations` draws the latent correlations
(:mod:`caltars_bayes.analysis.associations`) with each hypothesis's verdict.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

from caltars_bayes._core.dims import SAMPLE_DIMS
from caltars_bayes.analysis.associations import (
    association_draws,
    associations,
    residualised_gain,
    residualised_gain_draws,
)
from caltars_bayes.inference.diagnostics import stamp
from caltars_bayes.inference.fit import Fit
from caltars_bayes.spec.hypotheses import Hypotheses, check_hypotheses

if TYPE_CHECKING:
    pass


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
    return stamp(out, fit.diagnostics)


def summarise_verdicts(table: pd.DataFrame) -> str:
    """One line: how many hypotheses were supported, contradicted, inconclusive."""
    counts = table["verdict"].value_counts()
    parts = [f"{int(counts.get(v, 0))} {v}" for v in ("supported", "contradicted", "inconclusive")]
    return f"{len(table)} hypotheses: " + ", ".join(parts)


# not a pytest test, despite its name (it is imported into test modules)
test_hypotheses.__test__ = False  # type: ignore[attr-defined]
