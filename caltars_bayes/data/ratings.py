"""Rating data: read, validate once, label, and report.

:class:`RatingData` is the one validated, labelled container of a trial's
ratings. Tables come in two layouts:

long
    one row per rating, columns ``subject, session, judge, item, rating``;
wide
    one row per subject x session x judge, one column per item code.

Everything a user can get wrong is checked here, once, at the boundary. Each
:class:`~caltars_bayes._core.errors.DataError` is one line naming the file, the
row(s) as a spreadsheet counts them (the header is row 1, the first data row is
row 2) and the column. Records built from a data frame are numbered the same
way, as if the frame were written to a spreadsheet with a header row.

Missing ratings (blank cells) are not errors: they are counted and not used.
With ``on_invalid="drop"`` invalid ratings (bad values, unknown items,
duplicates, empty ids) are *rejected* instead of raising: kept out of the data
and listed in the :class:`~caltars_bayes.data.report.DataReport`, whose
invariant is ``ratings_read == used + missing + rejected``.

The steps live in modules of their own: :mod:`~caltars_bayes.data.readers`
(files), :mod:`~caltars_bayes.data.columns` (names, mapping, layout),
:mod:`~caltars_bayes.data.cells` (one cell per rating),
:mod:`~caltars_bayes.data.validation` (used, missing, rejected),
:mod:`~caltars_bayes.data.indexing` (canonical order and indices),
:mod:`~caltars_bayes.data.covariates` and :mod:`~caltars_bayes.data.report`.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from caltars_bayes._core.errors import CaltarsWarning, DataError
from caltars_bayes.data.cells import _table_cells
from caltars_bayes.data.columns import (
    LONG_COLUMNS,
    Layout,
    OnInvalid,
    _check_choice,
    _check_mapping,
    _prepare_columns,
)
from caltars_bayes.data.covariates import _align_covariates, _covariate_table
from caltars_bayes.data.indexing import _index_ratings
from caltars_bayes.data.readers import USER_MISSING_ATTR, read_table
from caltars_bayes.data.report import MAX_CROSSING_LISTED, MAX_REJECTED_LISTED, DataReport, _spread
from caltars_bayes.data.validation import _rejected_table, _tally, _used_ratings, _validate
from caltars_bayes.spec.instrument import Instrument

__all__ = ["RatingData"]


@dataclass(frozen=True, eq=False)
class RatingData:
    """The validated, labelled ratings of one trial.

    Build with :meth:`from_frame` or :meth:`from_files`; do not call the
    constructor directly.

    Attributes
    ----------
    instrument : the :class:`~caltars_bayes.spec.instrument.Instrument`.
    ratings : DataFrame of used ratings with columns ``subject, session, judge,
        item, scale, rating, score, source_row`` (``rating`` raw, ``score``
        after reverse keying, ``source_row`` the spreadsheet row), sorted by
        subject, session, judge and item (instrument order).
    subjects, judges, items, scales : tuples of labels; ``items`` and
        ``scales`` are all of the instrument's, observed or not.
    sessions : DataFrame with one row per observed subject x session, columns
        ``subject, session, session_time, label``.
    session_labels : ``sessions.label`` as a tuple (``"subject|session"``).
    subject_idx, session_idx, judge_idx, item_idx, scale_idx, y : int64 arrays
        aligned with ``ratings``; ``y = score - response_min``.
    item_scale_idx : for each item, the index of its scale.
    session_subject_idx : for each row of ``sessions``, the index of its subject.
    covariates : float DataFrame indexed by ``subject`` (``subjects`` order), or None.
    session_covariates : float DataFrame indexed by (``subject``, ``session``)
        in ``sessions`` order, or None.
    report : the :class:`DataReport`.
    """

    instrument: Instrument
    ratings: pd.DataFrame = field(repr=False)
    subjects: tuple[str, ...] = field(repr=False)
    judges: tuple[str, ...] = field(repr=False)
    items: tuple[str, ...] = field(repr=False)
    scales: tuple[str, ...] = field(repr=False)
    sessions: pd.DataFrame = field(repr=False)
    session_labels: tuple[str, ...] = field(repr=False)
    subject_idx: np.ndarray = field(repr=False)
    session_idx: np.ndarray = field(repr=False)
    judge_idx: np.ndarray = field(repr=False)
    item_idx: np.ndarray = field(repr=False)
    scale_idx: np.ndarray = field(repr=False)
    y: np.ndarray = field(repr=False)
    item_scale_idx: np.ndarray = field(repr=False)
    session_subject_idx: np.ndarray = field(repr=False)
    covariates: pd.DataFrame | None = field(repr=False)
    session_covariates: pd.DataFrame | None = field(repr=False)
    report: DataReport = field(repr=False)
    # Per-subject accounting (rows, cells, missing, rejected) and the rejected
    # cells, kept so that subset_subjects can re-derive a report that adds up.
    _tally: pd.DataFrame = field(repr=False)
    _rejected: pd.DataFrame = field(repr=False)

    # ------------------------------------------------------------------ sizes

    @property
    def n_ratings(self) -> int:
        return len(self.y)

    @property
    def n_subjects(self) -> int:
        return len(self.subjects)

    @property
    def n_judges(self) -> int:
        return len(self.judges)

    @property
    def n_items(self) -> int:
        return len(self.items)

    @property
    def n_scales(self) -> int:
        return len(self.scales)

    @property
    def n_sessions(self) -> int:
        return len(self.sessions)

    def __repr__(self) -> str:
        return (
            f"RatingData({self.instrument.name}: {self.n_ratings} ratings, "
            f"{self.n_subjects} subjects, {self.n_sessions} sessions, {self.n_judges} judges, "
            f"{self.n_items} items, {self.n_scales} scales)"
        )

    # ------------------------------------------------------------------ constructors

    @classmethod
    def from_files(
        cls,
        ratings_path: str | Path,
        instrument: Instrument,
        *,
        covariates: str | Path | None = None,
        session_covariates: str | Path | None = None,
        layout: Layout = "auto",
        columns: Mapping[str, str] | None = None,
        sheet: str | int | None = None,
        on_invalid: OnInvalid = "error",
        missing_codes: Iterable[float] | None = None,
    ) -> RatingData:
        """Read ratings (and optional covariate tables) from files; see :meth:`from_frame`.

        ``sheet`` applies to every Excel file given. Values an SPSS ``.sav``
        file declares user-missing are read as missing (and counted in the
        report's notes), in ratings and covariates alike.
        """
        df = read_table(ratings_path, sheet=sheet)
        cov = read_table(covariates, sheet=sheet) if covariates is not None else None
        scov = (
            read_table(session_covariates, sheet=sheet) if session_covariates is not None else None
        )
        return cls.from_frame(
            df,
            instrument,
            layout=layout,
            columns=columns,
            covariates=cov,
            session_covariates=scov,
            source=str(ratings_path),
            covariates_source=None if covariates is None else str(covariates),
            session_covariates_source=(
                None if session_covariates is None else str(session_covariates)
            ),
            on_invalid=on_invalid,
            missing_codes=missing_codes,
        )

    @classmethod
    def from_frame(
        cls,
        df: pd.DataFrame,
        instrument: Instrument,
        *,
        layout: Layout = "auto",
        columns: Mapping[str, str] | None = None,
        covariates: pd.DataFrame | None = None,
        session_covariates: pd.DataFrame | None = None,
        source: str | None = None,
        covariates_source: str | None = None,
        session_covariates_source: str | None = None,
        on_invalid: OnInvalid = "error",
        missing_codes: Iterable[float] | None = None,
    ) -> RatingData:
        """Validate a rating table and build the container.

        Parameters
        ----------
        df : ratings, long (``subject, session, judge, item, rating``) or wide
            (``subject, session, judge`` plus one column per item code).
        instrument : the instrument the ratings are of.
        layout : ``"long"``, ``"wide"`` or ``"auto"`` (long when ``item`` and
            ``rating`` columns exist, else wide when item-code columns exist).
        columns : maps your column names to ``subject``, ``session``,
            ``judge``, ``item``, ``rating`` or (wide layout) item codes. The
            same mapping renames ``subject``/``session`` in covariate tables.
        covariates : subject-level table: ``subject`` plus numeric columns.
        session_covariates : ``subject``, ``session`` plus numeric columns.
        source, covariates_source, session_covariates_source : file names used
            in messages and in the report.
        on_invalid : ``"error"`` raises on the first kind of invalid rating;
            ``"drop"`` rejects invalid ratings and lists them in the report.
        missing_codes : rating values that mean "not rated" (e.g. ``[9, 99]``):
            read as missing, like blank cells, and counted as missing in the
            report. Each must be a number outside the response range.

        Returns
        -------
        RatingData

        Raises
        ------
        DataError
            One line naming file, row(s) and column, for anything malformed.
        """
        _check_choice("layout", layout, ("auto", "long", "wide"))
        _check_choice("on_invalid", on_invalid, ("error", "drop"))
        if not isinstance(df, pd.DataFrame):
            raise DataError(f"ratings must be a pandas DataFrame, got {type(df).__name__}")
        fname = source or "<data frame>"
        mapping = _check_mapping(df, instrument, columns, covariates, session_covariates, fname)
        # kind: the layout found, long or wide
        frame, display, kind, notes = _prepare_columns(df, instrument, layout, mapping, fname)
        codes = None if missing_codes is None else list(missing_codes)
        cells, ignored, rows_read, blank_skipped = _table_cells(
            frame, display, kind, instrument, fname, codes
        )
        notes.extend(
            _reading_notes(
                cells.n_coded,
                codes,
                {
                    fname: df,
                    covariates_source or "<covariate frame>": covariates,
                    session_covariates_source or "<session covariate frame>": session_covariates,
                },
            )
        )
        status, reason, dup_rows = _validate(cells, instrument, fname, kind, on_invalid)

        # Accounting per subject (the subset of a trial must add up too).
        subj_codes, subj_labels = cells.ids["subject"]
        tally = _tally(cells, subj_codes, subj_labels, status, kind)
        rejected = _rejected_table(cells, reason, dup_rows, instrument, subj_codes, subj_labels)
        long = _used_ratings(cells, status, instrument, fname)
        seen_subjects = set(subj_labels)
        report = DataReport(
            instrument=instrument.name,
            layout=kind,
            sources={"ratings": fname},
            rows_read=rows_read,
            blank_rows_skipped=blank_skipped,
            ignored_columns=ignored,
            design_notes=notes,
        )
        cov = _covariate_table(covariates, mapping, covariates_source, ("subject",), notes)
        scov = _covariate_table(
            session_covariates, mapping, session_covariates_source, ("subject", "session"), notes
        )
        return cls._assemble(
            instrument, long, tally, rejected, report, cov, scov, seen_subjects, warn=True
        )

    # ------------------------------------------------------------------ assembly

    @classmethod
    def _assemble(
        cls,
        instrument: Instrument,
        long: pd.DataFrame,
        tally: pd.DataFrame,
        rejected: pd.DataFrame,
        report: DataReport,
        cov: tuple[pd.DataFrame, str] | None,
        scov: tuple[pd.DataFrame, str] | None,
        seen_subjects: set[str],
        *,
        warn: bool,
    ) -> RatingData:
        ix = _index_ratings(long, instrument)
        subjects, sessions = ix.subjects, ix.sessions

        # Subjects named in the ratings with nothing usable.
        without = sorted(seen_subjects - set(subjects))
        if without:
            report.subjects_without_ratings = without
            if warn:
                warnings.warn(
                    f"{report.sources.get('ratings') or '<data frame>'}: {len(without)} "
                    f"subject(s) without any usable rating (all missing or rejected), left "
                    f"out: {', '.join(without[:10])}{' ...' if len(without) > 10 else ''}",
                    CaltarsWarning,
                    stacklevel=3,
                )

        covariates = session_covariates = None
        if cov is not None:
            covariates, report.covariates = _align_covariates(
                cov, pd.Index(subjects, name="subject", dtype="str"), "subject", warn
            )
            report.sources["covariates"] = report.covariates["source"]
        if scov is not None:
            idx = pd.MultiIndex.from_arrays(
                [sessions["subject"], sessions["session"]], names=["subject", "session"]
            )
            session_covariates, report.session_covariates = _align_covariates(
                scov, idx, "subject x session", warn
            )
            report.sources["session_covariates"] = report.session_covariates["source"]

        for a in (
            ix.subject_idx,
            ix.session_idx,
            ix.judge_idx,
            ix.item_idx,
            ix.scale_idx,
            ix.y,
            ix.item_scale_idx,
            ix.session_subject_idx,
        ):
            a.flags.writeable = False
        data = cls(
            instrument=instrument,
            ratings=ix.ratings,
            subjects=tuple(subjects),
            judges=tuple(ix.judges),
            items=instrument.items,
            scales=instrument.scale_codes,
            sessions=sessions,
            session_labels=tuple(sessions["label"]),
            subject_idx=ix.subject_idx.astype(np.int64, copy=False),
            session_idx=ix.session_idx.astype(np.int64, copy=False),
            judge_idx=ix.judge_idx.astype(np.int64, copy=False),
            item_idx=ix.item_idx.astype(np.int64, copy=False),
            scale_idx=ix.scale_idx.astype(np.int64, copy=False),
            y=ix.y.astype(np.int64, copy=False),
            item_scale_idx=ix.item_scale_idx,
            session_subject_idx=ix.session_subject_idx.astype(np.int64, copy=False),
            covariates=covariates,
            session_covariates=session_covariates,
            report=report,
            _tally=tally,
            _rejected=rejected,
        )
        data._summarise()
        return data

    def _summarise(self) -> None:
        """Fill the report's counts and crossing from the assembled data."""
        r = self.report
        t = self._tally
        r.ratings_read = int(t["cells"].sum())
        r.missing = int(t["missing"].sum())
        r.rejected = int(t["rejected"].sum())
        r.used = self.n_ratings
        rej = self._rejected
        r.rejected_reasons = {
            k: int(v) for k, v in rej["reason"].value_counts(sort=False).items() if v
        }
        listed = rej.head(MAX_REJECTED_LISTED)
        r.rejected_rows = [
            {"row": int(a), "column": str(b), "reason": str(c)}
            for a, b, c in zip(listed["row"], listed["column"], listed["text"], strict=True)
        ]
        r.n_subjects = self.n_subjects
        r.n_sessions = self.n_sessions
        r.n_judges = self.n_judges
        r.n_items = self.n_items
        observed = np.bincount(self.item_idx, minlength=self.n_items) > 0
        r.n_items_observed = int(observed.sum())
        r.items_unobserved = [i for i, o in zip(self.items, observed, strict=True) if not o]
        r.n_scales = self.n_scales
        per_judge = np.bincount(self.judge_idx, minlength=self.n_judges)
        r.ratings_per_judge = {j: int(n) for j, n in zip(self.judges, per_judge, strict=True)}
        r.sessions_per_subject = _spread(np.bincount(self.session_subject_idx))
        pairs = np.unique(self.session_idx * self.n_judges + self.judge_idx)
        p_sess, p_judge = pairs // self.n_judges, pairs % self.n_judges
        jps = np.bincount(p_sess, minlength=self.n_sessions)
        r.judges_per_session = _spread(jps)
        r.sessions_multiple_judges = int((jps >= 2).sum())
        spj = np.bincount(p_judge, minlength=self.n_judges)
        r.sessions_per_judge = {j: int(n) for j, n in zip(self.judges, spj, strict=True)}
        labels = np.asarray(self.session_labels, dtype=object)
        by_judge = np.argsort(p_judge, kind="stable")
        bounds = np.searchsorted(p_judge[by_judge], np.arange(self.n_judges + 1))
        crossing: dict[str, dict[str, Any]] = {}
        for k, j in enumerate(self.judges):
            s = p_sess[by_judge[bounds[k] : bounds[k + 1]]]
            crossing[j] = {
                "n_sessions": len(s),
                "sessions": [str(x) for x in labels[s[:MAX_CROSSING_LISTED]]],
                "truncated": bool(len(s) > MAX_CROSSING_LISTED),
            }
        r.crossing = crossing
        if self.n_judges == 1:
            r.add_note(f"one judge ({self.judges[0]}): judge effects are not identified")
        r.check()

    # ------------------------------------------------------------------ views

    def to_long(self) -> pd.DataFrame:
        """The used ratings in the canonical long layout.

        Returns
        -------
        DataFrame
            Columns ``subject, session, judge, item, rating`` (raw ratings),
            one row per used rating, sorted.
        """
        return self.ratings[list(LONG_COLUMNS)].copy()

    def wide(self) -> pd.DataFrame:
        """The used ratings pivoted to one row per subject x session x judge.

        Returns
        -------
        DataFrame
            Columns ``subject, session, judge`` and one nullable-integer
            column per instrument item (raw ratings; ``<NA>`` where not rated).
        """
        nj = self.n_judges
        key = self.session_idx * nj + self.judge_idx
        uk, inv = np.unique(key, return_inverse=True)
        mat = np.zeros((len(uk), self.n_items), dtype=np.int64)
        mask = np.ones((len(uk), self.n_items), dtype=bool)
        mat[inv, self.item_idx] = self.ratings["rating"].to_numpy()
        mask[inv, self.item_idx] = False
        sess = uk // nj
        out = pd.DataFrame(
            {
                "subject": self.sessions["subject"].to_numpy()[sess],
                "session": self.sessions["session"].to_numpy()[sess],
                "judge": np.asarray(self.judges, dtype=object)[uk % nj],
            }
        ).astype("str")
        for k, item in enumerate(self.items):
            out[item] = pd.arrays.IntegerArray(mat[:, k], mask[:, k])
        return out

    def scale_scores(
        self, level: Literal["session", "subject"] = "session", by_judge: bool = True
    ) -> pd.DataFrame:
        """Mean item score (after reverse keying) per scale.

        A judge's scale score for a session is the mean of the items of that
        scale it rated. Without ``by_judge`` the judges' scale scores are
        averaged (each judge weighs the same); at ``level="subject"`` the
        session scores are averaged (each session weighs the same).

        Returns
        -------
        DataFrame
            Id columns (``subject``, then ``session`` for the session level,
            then ``judge`` when ``by_judge``) and one float column per scale
            code (NaN where a scale was not rated), in the data's sort order.
        """
        _check_choice("level", level, ("session", "subject"))
        codes = pd.DataFrame(
            {
                "sess": self.session_idx,
                "judge": self.judge_idx,
                "scale": self.scale_idx,
                "score": self.ratings["score"].to_numpy(dtype=float),
            }
        )
        m = codes.groupby(["sess", "judge", "scale"], sort=True)["score"].mean().reset_index()
        subj_of_sess = self.session_subject_idx
        m["subj"] = subj_of_sess[m["sess"].to_numpy()]
        keys = ["subj"] + (["sess"] if level == "session" else []) + (["judge"] if by_judge else [])
        if level == "subject" and by_judge:
            m = m.groupby(["subj", "judge", "scale"], sort=True)["score"].mean().reset_index()
        elif level == "session" and not by_judge:
            m = m.groupby(["subj", "sess", "scale"], sort=True)["score"].mean().reset_index()
        elif level == "subject" and not by_judge:
            m = m.groupby(["subj", "sess", "scale"], sort=True)["score"].mean().reset_index()
            m = m.groupby(["subj", "scale"], sort=True)["score"].mean().reset_index()
        wide = m.pivot_table(index=keys, columns="scale", values="score", sort=True)
        wide = wide.reindex(columns=range(self.n_scales))
        idx = wide.index.to_frame(index=False)
        out = pd.DataFrame({"subject": np.asarray(self.subjects, dtype=object)[idx["subj"]]})
        if level == "session":
            out["session"] = self.sessions["session"].to_numpy()[idx["sess"]]
        if by_judge:
            out["judge"] = np.asarray(self.judges, dtype=object)[idx["judge"]]
        out = out.astype("str")
        for k, s in enumerate(self.scales):
            out[s] = wide[k].to_numpy(dtype=float)
        return out

    # ------------------------------------------------------------------ subsets

    def subset_subjects(self, subjects: Iterable[str]) -> RatingData:
        """A new RatingData with only the given subjects (e.g. to split a trial).

        The report is recomputed for the subset (it still adds up) and notes
        the subset; covariates are carried over for the kept subjects.
        """
        keep = [str(s) for s in subjects]
        unknown = [s for s in keep if s not in set(self.subjects)]
        if unknown:
            raise DataError(
                f"subset: subject(s) not in the data: {', '.join(map(repr, unknown[:5]))}"
                + (f" (+{len(unknown) - 5} more)" if len(unknown) > 5 else "")
            )
        if not keep:
            raise DataError("subset: no subjects given")
        keep_set = set(keep)
        mask = self.ratings["subject"].isin(keep_set).to_numpy()
        long = self.ratings.loc[
            mask, ["subject", "session", "judge", "item", "rating", "source_row"]
        ].reset_index(drop=True)
        tally = self._tally.loc[self._tally.index.isin(keep_set)]
        rejected = self._rejected.loc[self._rejected["subject"].isin(keep_set)].reset_index(
            drop=True
        )
        old = self.report
        report = DataReport(
            instrument=old.instrument,
            layout=old.layout,
            sources=dict(old.sources),
            rows_read=int(tally["rows"].sum()),
            ignored_columns=list(old.ignored_columns),
            design_notes=[*old.design_notes],
        )
        report.add_note(f"subset of {len(keep_set)} of {self.n_subjects} subjects")
        cov = scov = None
        if self.covariates is not None and old.covariates is not None:
            cov = (
                self.covariates.loc[self.covariates.index.isin(keep_set)],
                old.covariates["source"],
            )
        if self.session_covariates is not None and old.session_covariates is not None:
            sc = self.session_covariates
            scov = (
                sc.loc[sc.index.get_level_values("subject").isin(keep_set)],
                old.session_covariates["source"],
            )
        return type(self)._assemble(
            self.instrument, long, tally, rejected, report, cov, scov, keep_set, warn=False
        )


def _reading_notes(
    n_coded: int, codes: list[float] | None, frames: Mapping[str, pd.DataFrame | None]
) -> list[str]:
    """Notes on values read as missing: missing codes in the ratings, SPSS user-missing values.

    ``frames`` maps each table's source name to the table as read (:func:`read_table`
    leaves the count of SPSS user-missing values per column in ``attrs``).
    """
    notes = []
    if n_coded:
        shown = ", ".join(f"{c:g}" for c in sorted({float(c) for c in codes or ()}))
        notes.append(
            f"{next(iter(frames))}: {n_coded} rating(s) equal to a missing code ({shown}) "
            "counted as missing"
        )
    for fname, df in frames.items():
        found = (df.attrs.get(USER_MISSING_ATTR) or {}) if isinstance(df, pd.DataFrame) else {}
        notes.extend(
            f"{fname}: {n} value(s) in column '{col}' are SPSS user-missing codes, read as missing"
            for col, n in found.items()
            if n
        )
    return notes
