"""The notebook display of a fit, and the HTML escaping shared with the HTML report.

:func:`fit_html` is what :meth:`Fit._repr_html_
<caltars_bayes.inference.fit.Fit._repr_html_>` shows: the convergence verdict
(red when not converged), the design, the scale-level SDs and the factor
correlations. :func:`esc` escapes any value for HTML (the report's HTML
renderer uses it too).
"""

from __future__ import annotations

import html
from typing import Any, Protocol

import pandas as pd

from caltars_bayes._core.summaries import describe
from caltars_bayes.inference.diagnostics import Diagnostics
from caltars_bayes.inference.record import FitRecord
from caltars_bayes.inference.tables import FitParts
from caltars_bayes.spec.instrument import Instrument


class FitView(FitParts, Protocol):
    """What the display reads of a fit (a :class:`~caltars_bayes.inference.fit.Fit` has it)."""

    record: FitRecord

    @property
    def instrument(self) -> Instrument: ...


def sampling_text(record: FitRecord, diagnostics: Diagnostics) -> str:
    """How the posterior was obtained, e.g. ``nutpie NUTS, 4 chains x 1000 draws``."""
    d = diagnostics
    if d.approximate:
        return f"{record.method} (approximate), {d.n_draws} draws"
    how = f"{record.sampler} NUTS, {d.n_chains} chains x {d.n_draws} draws"
    return f"{how} ({record.compile_text()})" if record.compile_text() else how


def esc(x: Any) -> str:
    """``x`` as text, escaped for HTML."""
    return html.escape(str(x))


def fit_html(fit: FitView) -> str:
    """The notebook display of a fit: the verdict, the design and the scale-level tables.

    Shows the convergence banner (red when not converged), the scale-level
    parameters (``sd_alliance``, ``sd_session``, ``session_trend``: median
    and 95% HDI per scale), the factor correlation matrix (posterior medians)
    and the calls that give the rest.
    """
    d, data, post = fit.diagnostics, fit.data, fit.posterior
    colour = "#2e7d32" if d.converged else ("#f9a825" if d.approximate else "#c62828")
    how = sampling_text(fit.record, d)
    parts = [
        f"<div style='border-left:6px solid {colour};padding:4px 8px;margin-bottom:6px'>"
        f"<b>{esc(fit.instrument.name)} fit</b>: {data.n_ratings:,} ratings, "
        f"{data.n_subjects} subjects, {data.n_sessions} sessions, {data.n_judges} judges, "
        f"{data.n_items} items; {esc(how)}<br>"
        f"<b style='color:{colour}'>{esc(d.banner())}</b></div>"
    ]
    cols = {}
    for name in ("sd_alliance", "sd_session", "session_trend"):
        if name in post and "scale" in post[name].dims:
            t = describe(post[name])
            cols[name] = pd.Series(
                [f"{m:.2f} [{lo:.2f}, {hi:.2f}]"
                 for m, lo, hi in zip(t["median"], t["hdi_low"], t["hdi_high"], strict=True)],
                index=t.index,
            )  # fmt: skip
    if cols:
        frame = pd.DataFrame(cols)
        parts.append(
            "<p style='margin:4px 0'><i>Scale-level SDs (logits; median [95% HDI])</i></p>"
            + frame.to_html()
        )
    if "factor_corr" in post:
        med = post["factor_corr"].median(("chain", "draw")).to_pandas()
        parts.append(
            "<p style='margin:4px 0'><i>Factor correlations (posterior medians)</i></p>"
            + med.to_html(float_format=lambda v: f"{v:.2f}")
        )
    parts.append(
        "<p style='font-size:smaller;color:#555'>More: <code>fit.summary()</code>, "
        "<code>fit.scores()</code>, <code>fit.judges()</code>, "
        "<code>caltars_bayes.analysis.reliability.reliability(fit)</code>, "
        "<code>caltars_bayes.report.build.build_report(fit)</code> (every table and figure).</p>"
    )
    return "".join(parts)
