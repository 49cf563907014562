"""The data report: what was read, used, missing and rejected, and the design.

Its invariant is ``ratings_read == used + missing + rejected`` (for the long
layout a rating is a row; for the wide layout it is a cell); it also lists the
rejected cells (the first :data:`MAX_REJECTED_LISTED`), how judges cross
sessions and the notes on what was left out.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["DataReport"]

#: At most this many rejected cells are listed one by one in the report.
MAX_REJECTED_LISTED = 200
#: At most this many session labels are listed per judge in ``report.crossing``.
MAX_CROSSING_LISTED = 500
#: Panels of at most this many judges are listed one judge a line by
#: :meth:`DataReport.format`; larger panels are summarised.
MAX_JUDGES_LISTED = 30
#: A summarised panel lists this many most and least active judges.
N_JUDGES_RANKED = 5


@dataclass
class DataReport:
    """What was read, used, missing and rejected, and how the design is crossed.

    The invariant ``ratings_read == used + missing + rejected`` always holds
    (for the long layout a rating is a row; for the wide layout it is a cell).

    Attributes
    ----------
    sources : file (or frame) names: ``ratings``, ``covariates``, ``session_covariates``.
    rows_read, ratings_read : data rows read (blank rows not counted) and
        ratings read (rows for long data, item cells for wide data).
    used, missing, rejected : how the ratings read were accounted for.
    rejected_reasons : count per reason; rejected_rows : the first
        :data:`MAX_REJECTED_LISTED` rejected cells as ``{row, column, reason}``.
    ignored_columns : columns that are neither ids nor items (nor item/rating).
    ratings_per_judge, sessions_per_judge : counts per judge label.
    sessions_per_subject, judges_per_session : ``{min, median, max}``.
    crossing : judge -> ``{n_sessions, sessions (labels, capped), truncated}``.
    design_notes : notes on the design and on what was left out (see :meth:`add_note`).
    covariates, session_covariates : ``{source, columns, rows, missing (per
        column, after alignment), no_row, unknown (ids not in the ratings)}`` or None.
    """

    instrument: str
    layout: str
    sources: dict[str, str | None] = field(default_factory=dict)
    rows_read: int = 0
    ratings_read: int = 0
    used: int = 0
    missing: int = 0
    rejected: int = 0
    rejected_reasons: dict[str, int] = field(default_factory=dict)
    rejected_rows: list[dict[str, Any]] = field(default_factory=list)
    blank_rows_skipped: int = 0
    ignored_columns: list[str] = field(default_factory=list)
    n_subjects: int = 0
    n_sessions: int = 0
    n_judges: int = 0
    n_items: int = 0
    n_items_observed: int = 0
    n_scales: int = 0
    items_unobserved: list[str] = field(default_factory=list)
    ratings_per_judge: dict[str, int] = field(default_factory=dict)
    sessions_per_subject: dict[str, float] = field(default_factory=dict)
    judges_per_session: dict[str, float] = field(default_factory=dict)
    sessions_per_judge: dict[str, int] = field(default_factory=dict)
    sessions_multiple_judges: int = 0
    crossing: dict[str, dict[str, Any]] = field(default_factory=dict)
    subjects_without_ratings: list[str] = field(default_factory=list)
    design_notes: list[str] = field(default_factory=list)
    covariates: dict[str, Any] | None = None
    session_covariates: dict[str, Any] | None = None

    def add_note(self, note: str) -> None:
        """Append a design note (e.g. a model part dropped for this design)."""
        if note not in self.design_notes:
            self.design_notes.append(note)

    def check(self) -> None:
        """Assert the accounting invariant ``ratings_read == used + missing + rejected``."""
        total = self.used + self.missing + self.rejected
        if self.ratings_read != total:  # pragma: no cover - a bug, not a user error
            raise AssertionError(
                f"data report does not add up: read {self.ratings_read} != used {self.used} "
                f"+ missing {self.missing} + rejected {self.rejected}"
            )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of the report."""
        return json.loads(json.dumps(asdict(self), default=_json_default))

    def to_json(self, path: str | Path) -> None:
        """Write the report as indented JSON."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    def format(self) -> str:
        """A readable multi-line text report (over 30 judges: a summary, not one line each)."""
        lines = [f"Data report ({self.instrument})"]
        for k, v in self.sources.items():
            if v is not None:
                lines.append(f"  {k}: {v}")
        unit = "cells" if self.layout == "wide" else "rows"
        lines.append(
            f"  layout: {self.layout}; rows read: {self.rows_read}"
            + (
                f" ({self.blank_rows_skipped} blank rows skipped)"
                if self.blank_rows_skipped
                else ""
            )
        )
        lines.append(
            f"  ratings read ({unit}): {self.ratings_read} = used {self.used}"
            f" + missing {self.missing} + rejected {self.rejected}"
        )
        sps = self.sessions_per_subject
        lines.append(
            f"  subjects: {self.n_subjects}; sessions: {self.n_sessions}"
            + (
                f" (per subject min {sps['min']:g}, median {sps['median']:g}, max {sps['max']:g})"
                if sps
                else ""
            )
        )
        lines.append(
            f"  judges: {self.n_judges}; items observed: {self.n_items_observed} of {self.n_items};"
            f" scales: {self.n_scales}"
        )
        if self.items_unobserved:
            lines.append(f"  items never rated: {', '.join(self.items_unobserved)}")
        lines.extend(self._judge_lines())
        jps = self.judges_per_session
        if jps:
            lines.append(
                f"  judges per session: min {jps['min']:g}, median {jps['median']:g}, "
                f"max {jps['max']:g}; sessions rated by 2+ judges: {self.sessions_multiple_judges}"
            )
        if self.rejected:
            reasons = ", ".join(f"{k} {v}" for k, v in self.rejected_reasons.items())
            lines.append(f"  rejected: {self.rejected} ({reasons})")
            for e in self.rejected_rows[:20]:
                lines.append(f"    row {e['row']}, column '{e['column']}': {e['reason']}")
            if self.rejected > min(20, len(self.rejected_rows)):
                lines.append(f"    ... {self.rejected - min(20, len(self.rejected_rows))} more")
        if self.ignored_columns:
            lines.append(f"  ignored columns: {', '.join(self.ignored_columns)}")
        if self.subjects_without_ratings:
            lines.append(
                "  subjects without any usable rating: "
                + ", ".join(self.subjects_without_ratings[:20])
            )
        for title, cov in (
            ("covariates", self.covariates),
            ("session covariates", self.session_covariates),
        ):
            if cov is None:
                continue
            cols = ", ".join(f"{c} ({n} missing)" for c, n in cov["missing"].items())
            lines.append(f"  {title} ({cov['source']}): {cols}")
            unk = cov.get("unknown", [])
            if unk:
                lines.append(
                    f"    rows for {len(unk)} unknown id(s) ignored: {', '.join(unk[:10])}"
                )
        if self.design_notes:
            lines.append("  notes:")
            lines.extend(f"    - {n}" for n in self.design_notes)
        return "\n".join(lines)

    def _judge_lines(self) -> list[str]:
        """One line per judge, or a summary when there are over :data:`MAX_JUDGES_LISTED`."""
        rpj, spj = self.ratings_per_judge, self.sessions_per_judge
        if not rpj:
            return []
        if len(rpj) <= MAX_JUDGES_LISTED:
            lines = ["  judge: ratings, sessions rated"]
            lines.extend(f"    {j}: {n}, {spj.get(j, 0)}" for j, n in rpj.items())
            return lines
        spread = _spread(np.fromiter(rpj.values(), dtype=float, count=len(rpj)))
        # most active first; ties keep the judges' order
        ranked = sorted(rpj, key=lambda j: -rpj[j])
        fewest = sorted(rpj, key=lambda j: rpj[j])

        def listed(judges: list[str]) -> str:
            return "; ".join(f"{j} ({rpj[j]}, {spj.get(j, 0)})" for j in judges)

        return [
            f"  {len(rpj)} judges (over {MAX_JUDGES_LISTED}: summarised; the full table is"
            " judge_table(data), or validate --out FILE)",
            f"    ratings per judge: min {spread['min']:g}, median {spread['median']:g},"
            f" max {spread['max']:g}",
            f"    {N_JUDGES_RANKED} most active (ratings, sessions rated): "
            + listed(ranked[:N_JUDGES_RANKED]),
            f"    {N_JUDGES_RANKED} least active (ratings, sessions rated): "
            + listed(fewest[:N_JUDGES_RANKED]),
        ]

    def __str__(self) -> str:
        return self.format()


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def _spread(counts: np.ndarray) -> dict[str, float]:
    if len(counts) == 0:
        return {}
    return {
        "min": float(np.min(counts)),
        "median": float(np.median(counts)),
        "max": float(np.max(counts)),
    }
