"""Tests for caltars_bayes.data: readers, validation, labels, report, views."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from caltars_bayes._core.errors import CaltarsWarning, DataError
from caltars_bayes.data import readers as readers_mod
from caltars_bayes.data.columns import LONG_COLUMNS
from caltars_bayes.data.ratings import RatingData
from caltars_bayes.data.readers import read_table
from caltars_bayes.data.report import MAX_REJECTED_LISTED, DataReport
from caltars_bayes.spec.instrument import Instrument, load_instrument, models_dir, parse_instrument

CALTARS = load_instrument(models_dir() / "caltars.toml")

SELF_SPEC = """
[instrument]
name = "SELF"
rater = "self-report"
reverse_keyed = ["A2"]

[response]
min = 0
max = 4

[[scale]]
code = "A"
items = ["A1", "A2", "A3"]

[[scale]]
code = "B"
items = ["B1", "B2"]
"""


@pytest.fixture(scope="module")
def selfrep(tmp_path_factory: pytest.TempPathFactory) -> Instrument:
    p = tmp_path_factory.mktemp("spec") / "self.toml"
    p.write_text(SELF_SPEC)
    return load_instrument(p)


def make_long(
    inst: Instrument = CALTARS,
    n_subjects: int = 3,
    sessions: tuple[int, ...] | None = None,
    judges: tuple[str, ...] = ("A", "B"),
    items: tuple[str, ...] | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """A valid long table of text cells (as a CSV reads), sessions per subject varying."""
    rng = np.random.default_rng(seed)
    items = items or inst.items
    sessions = sessions or tuple(1 + (s % 3) for s in range(n_subjects))
    rows = []
    for s in range(n_subjects):
        for t in range(1, sessions[s] + 1):
            for j in judges:
                for it in items:
                    r = rng.integers(inst.response_min, inst.response_max + 1)
                    rows.append((str(s + 1), str(t), j, it, str(r)))
    return pd.DataFrame(rows, columns=["subject", "session", "judge", "item", "rating"])


def same_ratings(a: RatingData, b: RatingData, source_row: bool = False) -> None:
    cols = [c for c in a.ratings.columns if source_row or c != "source_row"]
    pd.testing.assert_frame_equal(a.ratings[cols], b.ratings[cols])
    assert a.subjects == b.subjects and a.judges == b.judges
    pd.testing.assert_frame_equal(a.sessions, b.sessions)
    np.testing.assert_array_equal(a.y, b.y)


def adds_up(rep: DataReport) -> None:
    assert rep.ratings_read == rep.used + rep.missing + rep.rejected
    rep.check()


# --------------------------------------------------------------------------- readers


def _write(df: pd.DataFrame, path: Path) -> None:
    ext = path.suffix
    if ext == ".csv":
        df.to_csv(path, index=False)
    elif ext in (".tsv", ".tab"):
        df.to_csv(path, index=False, sep="\t")
    elif ext == ".xlsx":
        df.to_excel(path, index=False)
    elif ext == ".sav":
        import pyreadstat

        out = df.copy()
        for c in out.columns:
            if str(out[c].dtype) == "Int64":
                out[c] = out[c].astype(float)
            elif not pd.api.types.is_numeric_dtype(out[c]):
                out[c] = out[c].astype(object)
        pyreadstat.write_sav(out, str(path))
    elif ext in (".parquet", ".pq"):
        df.to_parquet(path, index=False)
    else:  # pragma: no cover
        raise AssertionError(ext)


FORMATS = [".csv", ".tsv", ".tab", ".xlsx", ".sav", ".parquet", ".pq"]


@pytest.mark.parametrize("ext", FORMATS)
def test_reader_long_round_trip(tmp_path: Path, ext: str) -> None:
    rd = RatingData.from_frame(make_long(n_subjects=2), CALTARS)
    path = tmp_path / f"ratings{ext}"
    _write(rd.to_long(), path)
    back = RatingData.from_files(path, CALTARS)
    same_ratings(rd, back, source_row=True)
    assert back.report.sources["ratings"] == str(path)
    assert back.report.layout == "long"


@pytest.mark.parametrize("ext", [".csv", ".xlsx", ".sav", ".parquet"])
def test_reader_wide_round_trip(tmp_path: Path, ext: str) -> None:
    rd = RatingData.from_frame(make_long(n_subjects=2, judges=("1", "2")), CALTARS)
    path = tmp_path / f"wide{ext}"
    wide = rd.wide()
    # Numeric ids, as a spreadsheet stores them (Excel gives back 1 or 1.0).
    for c in ("subject", "session", "judge"):
        wide[c] = wide[c].astype(float)
    _write(wide, path)
    back = RatingData.from_files(path, CALTARS, layout="wide")
    same_ratings(rd, back)
    assert back.report.layout == "wide"
    assert back.subjects == ("1", "2") and back.judges == ("1", "2")
    assert back.report.ratings_read == len(wide) * 30
    adds_up(back.report)


def test_read_table_keeps_leading_zeros_and_bom(tmp_path: Path) -> None:
    p = tmp_path / "r.csv"
    p.write_text("\ufeffsubject,session,judge,item,rating\n007,1,A,PPC1,3\n", encoding="utf-8")
    df = read_table(p)
    assert list(df.columns) == ["subject", "session", "judge", "item", "rating"]
    assert df.loc[0, "subject"] == "007"
    rd = RatingData.from_files(p, CALTARS)
    assert rd.subjects == ("007",)


def test_read_semicolon_csv(tmp_path: Path) -> None:
    p = tmp_path / "r.csv"
    p.write_text("subject;session;judge;item;rating\n1;1;A;PPC1;3\n")
    assert RatingData.from_files(p, CALTARS).n_ratings == 1


def test_blank_lines_keep_row_numbers(tmp_path: Path) -> None:
    p = tmp_path / "ratings.csv"
    p.write_text("subject,session,judge,item,rating\n1,1,A,PPC1,3\n\n,,,,\n1,1,A,PPC2,9\n")
    with pytest.raises(DataError, match=r"ratings\.csv, row 5, column 'rating'"):
        RatingData.from_files(p, CALTARS)
    rd = RatingData.from_files(p, CALTARS, on_invalid="drop")
    assert rd.report.blank_rows_skipped == 2 and rd.report.rows_read == 2
    assert rd.report.rejected_rows[0]["row"] == 5
    adds_up(rd.report)


def test_excel_float_ids_become_integer_labels(tmp_path: Path) -> None:
    df = pd.DataFrame(
        {
            "subject": [1.0, 2.0],
            "session": [1.0, 1.0],
            "judge": [3.0, 3.0],
            "item": ["PPC1", "PPC1"],
            "rating": [4.0, 5.0],
        }
    )
    p = tmp_path / "r.xlsx"
    df.to_excel(p, index=False)
    rd = RatingData.from_files(p, CALTARS)
    assert rd.subjects == ("1", "2") and rd.judges == ("3",)
    assert rd.ratings["rating"].tolist() == [4, 5]


def test_excel_sheet(tmp_path: Path) -> None:
    p = tmp_path / "r.xlsx"
    with pd.ExcelWriter(p) as xw:
        pd.DataFrame({"a": [1]}).to_excel(xw, sheet_name="notes", index=False)
        make_long(n_subjects=1).to_excel(xw, sheet_name="ratings", index=False)
    assert RatingData.from_files(p, CALTARS, sheet="ratings").n_ratings == 60
    with pytest.raises(DataError, match=r"r\.xlsx: no sheet 'nope'"):
        read_table(p, sheet="nope")


def test_read_table_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="file not found"):
        read_table(tmp_path / "absent.csv")
    p = tmp_path / "x.json"
    p.write_text("{}")
    with pytest.raises(DataError, match=r"x\.json: unknown file type '\.json'"):
        read_table(p)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(DataError, match=r"empty\.csv: file is empty"):
        read_table(empty)
    header = tmp_path / "header.csv"
    header.write_text("subject,session,judge,item,rating\n")
    with pytest.raises(DataError, match=r"header\.csv: file is empty"):
        RatingData.from_files(header, CALTARS)
    broken = tmp_path / "broken.parquet"
    broken.write_text("not parquet")
    with pytest.raises(DataError, match=r"broken\.parquet: cannot read as parquet"):
        read_table(broken)


@pytest.mark.parametrize(
    ("ext", "module"), [(".xlsx", "openpyxl"), (".sav", "pyreadstat"), (".parquet", "pyarrow")]
)
def test_missing_reader_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ext: str, module: str
) -> None:
    p = tmp_path / f"r{ext}"
    p.write_bytes(b"x")
    real = readers_mod.importlib.util.find_spec

    def fake(name: str, package: str | None = None) -> object:
        return None if name == module else real(name, package)

    monkeypatch.setattr(readers_mod.importlib.util, "find_spec", fake)
    with pytest.raises(DataError, match=re.escape("pip install 'caltars-bayes[io]'")):
        read_table(p)


# --------------------------------------------------------------------------- layout, columns


def test_auto_layout_and_neither() -> None:
    long = make_long(n_subjects=1)
    assert RatingData.from_frame(long, CALTARS).report.layout == "long"
    wide = RatingData.from_frame(long, CALTARS).wide()
    assert RatingData.from_frame(wide, CALTARS).report.layout == "wide"
    with pytest.raises(DataError, match=r"ratings\.csv: cannot tell the layout.*'foo'"):
        RatingData.from_frame(
            pd.DataFrame({"foo": [1], "subject": [1]}), CALTARS, source="ratings.csv"
        )


def test_column_mapping_long() -> None:
    df = make_long(n_subjects=2).rename(
        columns={"subject": "patient", "judge": "rater", "rating": "score"}
    )
    cols = {"patient": "subject", "rater": "judge", "score": "rating"}
    rd = RatingData.from_frame(df, CALTARS, columns=cols)
    assert rd.n_subjects == 2 and rd.judges == ("A", "B")
    df.loc[1, "score"] = "8"
    with pytest.raises(DataError, match=r"^r\.csv, row 3, column 'score': rating 8 is outside"):
        RatingData.from_frame(df, CALTARS, columns=cols, source="r.csv")


def test_column_mapping_wide_items_and_case() -> None:
    rd = RatingData.from_frame(make_long(n_subjects=2), CALTARS)
    wide = rd.wide().rename(columns={"PPC1": "Q1", "subject": "Subject", "PPC2": "ppc2"})
    back = RatingData.from_frame(wide, CALTARS, columns={"Q1": "PPC1"})
    same_ratings(rd, back)


def test_column_mapping_errors() -> None:
    df = make_long(n_subjects=1)
    with pytest.raises(DataError, match=r"'Q1' -> 'XYZ9'.*neither"):
        RatingData.from_frame(df, CALTARS, columns={"Q1": "XYZ9"})
    with pytest.raises(DataError, match=r"names column\(s\) 'patient' that are not in the table"):
        RatingData.from_frame(df, CALTARS, columns={"patient": "subject"})
    df2 = df.assign(patient=df["subject"])
    with pytest.raises(DataError, match=r"columns 'subject' and 'patient' both give column"):
        RatingData.from_frame(df2, CALTARS, columns={"patient": "subject"})
    with pytest.raises(DataError, match="layout must be one of"):
        RatingData.from_frame(df, CALTARS, layout="tall")  # type: ignore[arg-type]


def test_wide_ignored_and_item_like_columns() -> None:
    wide = RatingData.from_frame(make_long(n_subjects=1), CALTARS).wide()
    wide["notes"] = "ok"
    wide["total"] = 3
    rd = RatingData.from_frame(wide, CALTARS, source="w.csv")
    assert rd.report.ignored_columns == ["notes", "total"]
    assert "ignored columns: notes, total" in str(rd.report)
    wide["PPC7"] = 3
    with pytest.raises(DataError, match=r"^w\.csv, column 'PPC7': .*not items of CALTARS"):
        RatingData.from_frame(wide, CALTARS, source="w.csv")


def test_wide_unobserved_item_columns_absent() -> None:
    rd = RatingData.from_frame(make_long(n_subjects=1), CALTARS)
    wide = rd.wide().drop(columns=["PTA6"])
    back = RatingData.from_frame(wide, CALTARS)
    assert back.items == CALTARS.items  # all items, observed or not
    assert back.report.items_unobserved == ["PTA6"]
    assert back.report.n_items_observed == 29


# --------------------------------------------------------------------------- validation


def test_missing_required_columns() -> None:
    df = make_long(n_subjects=1).drop(columns=["item"])
    df = df.rename(columns={"rating": "value"})
    with pytest.raises(DataError) as ei:
        RatingData.from_frame(df, CALTARS, layout="long", source="ratings.csv")
    msg = str(ei.value)
    assert msg.startswith("ratings.csv: missing required column(s) 'item', 'rating'")
    assert "columns present: 'subject', 'session', 'judge', 'value'" in msg
    assert "\n" not in msg


def test_observer_needs_judge() -> None:
    df = make_long(n_subjects=1).drop(columns=["judge"])
    with pytest.raises(DataError, match=r"missing required column\(s\) 'judge' \(CALTARS is rated"):
        RatingData.from_frame(df, CALTARS)


@pytest.mark.parametrize(
    ("value", "what"),
    [
        ("6", "rating 6 is outside the response range 1..5"),
        ("0", "rating 0 is outside the response range 1..5"),
        ("2.5", "rating 2.5 is not a whole number (response range 1..5)"),
        ("abc", "rating 'abc' is not a number (response range 1..5)"),
        ("inf", "rating inf is not a number"),
    ],
)
def test_bad_rating_message(value: str, what: str) -> None:
    df = make_long(n_subjects=1)
    df.loc[1, "rating"] = value
    with pytest.raises(DataError) as ei:
        RatingData.from_frame(df, CALTARS, source="ratings.csv")
    assert str(ei.value).startswith(f"ratings.csv, row 3, column 'rating': {what}")


def test_bad_rating_numeric_column_lists_more_rows() -> None:
    df = make_long(n_subjects=1)
    df["rating"] = df["rating"].astype(float)
    df.loc[[4, 9, 10], "rating"] = [7.0, 1.5, -2.0]
    with pytest.raises(DataError) as ei:
        RatingData.from_frame(df, CALTARS, source="ratings.csv")
    msg = str(ei.value)
    assert msg.startswith("ratings.csv, row 6, column 'rating': rating 7 is outside")
    assert "3 invalid ratings in all; also row(s) 11, 12" in msg


def test_whole_float_ratings_are_fine() -> None:
    df = make_long(n_subjects=1)
    df["rating"] = df["rating"] + ".0"
    assert RatingData.from_frame(df, CALTARS).n_ratings == len(df)


def test_unknown_items_long() -> None:
    df = make_long(n_subjects=1)
    for k, code in enumerate(["X1", "X2", "X3", "X4", "X5", "X6", "X7"]):
        df.loc[k + 2, "item"] = code
    with pytest.raises(DataError) as ei:
        RatingData.from_frame(df, CALTARS, source="ratings.csv")
    msg = str(ei.value)
    assert msg.startswith("ratings.csv, rows 4, 5, 6, 7, 8 (+2 more), column 'item'")
    assert "'X1', 'X2', 'X3', 'X4', 'X5' (+2 more)" in msg


def test_item_codes_case_insensitive_long() -> None:
    df = make_long(n_subjects=1)
    df["item"] = df["item"].str.lower()
    assert RatingData.from_frame(df, CALTARS).n_ratings == len(df)


def test_duplicates_long_and_wide() -> None:
    df = make_long(n_subjects=2)
    dup = pd.concat([df, df.iloc[[7]]], ignore_index=True)
    with pytest.raises(DataError) as ei:
        RatingData.from_frame(dup, CALTARS, source="ratings.csv")
    n = len(dup) + 1
    assert str(ei.value).startswith(f"ratings.csv, rows 9, {n}: duplicated rating: subject '1'")
    assert "item 'PNC2' is rated more than once" in str(ei.value)
    wide = RatingData.from_frame(df, CALTARS).wide()
    wdup = pd.concat([wide, wide.iloc[[0]]], ignore_index=True)
    with pytest.raises(DataError, match=rf"^w\.csv, rows 2, {len(wdup) + 1}: .*more than one row"):
        RatingData.from_frame(wdup, CALTARS, source="w.csv")
    rd = RatingData.from_frame(dup, CALTARS, on_invalid="drop")
    assert rd.report.rejected == 2 and rd.report.rejected_reasons == {"duplicate": 2}
    assert {e["row"] for e in rd.report.rejected_rows} == {9, n}
    assert f"as row {n}" in rd.report.rejected_rows[0]["reason"]
    adds_up(rd.report)


def test_missing_rating_not_a_duplicate() -> None:
    df = make_long(n_subjects=1)
    extra = df.iloc[[0]].assign(rating=np.nan)
    rd = RatingData.from_frame(pd.concat([df, extra], ignore_index=True), CALTARS)
    assert rd.report.missing == 1 and rd.report.rejected == 0


@pytest.mark.parametrize("col", ["subject", "session", "judge"])
def test_empty_ids(col: str) -> None:
    df = make_long(n_subjects=1)
    df.loc[3, col] = "  "
    df.loc[5, col] = np.nan
    with pytest.raises(
        DataError, match=rf"^ratings\.csv, rows 5, 7, column '{col}': empty {col} id"
    ):
        RatingData.from_frame(df, CALTARS, source="ratings.csv")
    rd = RatingData.from_frame(df, CALTARS, source="ratings.csv", on_invalid="drop")
    assert rd.report.rejected == 2 and rd.report.rejected_reasons == {f"empty {col} id": 2}
    adds_up(rd.report)


def test_wide_bad_cell_names_item_column() -> None:
    wide = RatingData.from_frame(make_long(n_subjects=2), CALTARS).wide()
    wide["PPC3"] = wide["PPC3"].astype("Float64")
    wide.loc[2, "PPC3"] = 3.5
    with pytest.raises(
        DataError, match=r"^w\.csv, row 4, column 'PPC3': rating 3\.5 is not a whole"
    ):
        RatingData.from_frame(wide, CALTARS, source="w.csv")
    rd = RatingData.from_frame(wide, CALTARS, source="w.csv", on_invalid="drop")
    assert rd.report.rejected_rows == [
        {
            "row": 4,
            "column": "PPC3",
            "reason": "rating 3.5 is not a whole number (response range 1..5)",
        }
    ]
    adds_up(rd.report)


def test_drop_counts_missing_and_rejected() -> None:
    df = make_long(n_subjects=3)
    n = len(df)
    df.loc[0, "rating"] = "9"
    df.loc[1, "rating"] = "x"
    df.loc[2, "item"] = "NOPE"
    df.loc[3, "rating"] = np.nan
    df.loc[4, "rating"] = " "
    df.loc[5, "subject"] = ""
    rd = RatingData.from_frame(df, CALTARS, on_invalid="drop")
    rep = rd.report
    assert (rep.rows_read, rep.ratings_read, rep.used, rep.missing, rep.rejected) == (
        n,
        n,
        n - 6,
        2,
        4,
    )
    assert rep.rejected_reasons == {"empty subject id": 1, "unknown item": 1, "invalid rating": 2}
    assert [e["row"] for e in rep.rejected_rows] == [2, 3, 4, 7]
    assert rep.rejected_rows[2] == {
        "row": 4,
        "column": "item",
        "reason": "item 'NOPE' is not an item of CALTARS",
    }
    assert not set(rd.ratings["source_row"]) & {2, 3, 4, 5, 6, 7}
    adds_up(rep)


def test_rejected_list_is_capped() -> None:
    df = make_long(n_subjects=6)
    df.loc[:299, "rating"] = "7"
    with pytest.warns(CaltarsWarning, match="2 subject"):
        rd = RatingData.from_frame(df, CALTARS, on_invalid="drop")
    assert rd.report.rejected == 300
    assert len(rd.report.rejected_rows) == MAX_REJECTED_LISTED
    adds_up(rd.report)


def test_nothing_usable() -> None:
    df = make_long(n_subjects=1).assign(rating="9")
    with pytest.raises(DataError, match=r"no usable ratings \(0 missing, 60 rejected\)"):
        RatingData.from_frame(df, CALTARS, on_invalid="drop")


def test_subject_with_only_missing_ratings_warns() -> None:
    df = make_long(n_subjects=3)
    df.loc[df["subject"] == "2", "rating"] = np.nan
    with pytest.warns(CaltarsWarning, match="1 subject.* without any usable rating.*: 2"):
        rd = RatingData.from_frame(df, CALTARS)
    assert rd.subjects == ("1", "3")
    assert rd.report.subjects_without_ratings == ["2"]
    adds_up(rd.report)


# --------------------------------------------------------------------------- labels, design


def test_labels_sorting_and_index_arrays() -> None:
    df = make_long(n_subjects=3, sessions=(2, 1, 3), judges=("J2", "J10"))
    df["session"] = df["session"].map({"1": "10", "2": "2", "3": "1"})
    df = df.sample(frac=1.0, random_state=1).reset_index(drop=True)
    rd = RatingData.from_frame(df, CALTARS)
    assert rd.judges == ("J10", "J2")  # not all numeric: lexical
    assert rd.sessions["session"].tolist() == ["2", "10", "10", "1", "2", "10"]
    assert rd.sessions["session_time"].tolist() == [2.0, 10.0, 10.0, 1.0, 2.0, 10.0]
    assert rd.session_labels == ("1|2", "1|10", "2|10", "3|1", "3|2", "3|10")
    r = rd.ratings
    for name, idx, labels in [
        ("subject", rd.subject_idx, rd.subjects),
        ("judge", rd.judge_idx, rd.judges),
        ("item", rd.item_idx, rd.items),
        ("scale", rd.scale_idx, rd.scales),
    ]:
        assert idx.dtype == np.int64
        assert (np.asarray(labels, dtype=object)[idx] == r[name].to_numpy(dtype=object)).all()
    lab = (r["subject"] + "|" + r["session"]).to_numpy(dtype=object)
    assert (np.asarray(rd.session_labels, dtype=object)[rd.session_idx] == lab).all()
    assert rd.session_idx.dtype == np.int64 and rd.y.dtype == np.int64
    assert rd.session_subject_idx.tolist() == [0, 0, 1, 2, 2, 2]
    np.testing.assert_array_equal(rd.session_subject_idx[rd.session_idx], rd.subject_idx)
    assert not rd.y.flags.writeable
    np.testing.assert_array_equal(rd.y, r["score"].to_numpy() - 1)
    np.testing.assert_array_equal(rd.item_scale_idx, np.repeat(np.arange(5), 6))
    np.testing.assert_array_equal(rd.scale_idx, rd.item_scale_idx[rd.item_idx])
    # sorted by subject, session (numeric), judge, item (instrument order)
    key = np.stack([rd.subject_idx, rd.session_idx, rd.judge_idx, rd.item_idx])
    assert (np.diff(np.ravel_multi_index(key, key.max(axis=1) + 1)) > 0).all()
    assert rd.n_ratings == len(df) and rd.n_sessions == 6 and rd.n_items == 30
    assert rd.n_scales == 5 and rd.n_judges == 2 and rd.n_subjects == 3


def test_non_numeric_sessions_rank_within_subject() -> None:
    df = make_long(n_subjects=2, sessions=(3, 2), items=("PPC1",))
    df["session"] = df["session"].map({"1": "intake", "2": "mid", "3": "end"})
    rd = RatingData.from_frame(df, CALTARS)
    assert rd.sessions["session"].tolist() == ["end", "intake", "mid", "intake", "mid"]
    assert rd.sessions["session_time"].tolist() == [1.0, 2.0, 3.0, 1.0, 2.0]


def test_unequal_sessions_and_sparse_crossing() -> None:
    df = make_long(n_subjects=4, sessions=(1, 2, 3, 6), judges=("A", "B", "C"), items=("PPC1",))
    # Judge A rates odd sessions, B even ones, C only subject 4.
    t = df["session"].astype(int)
    keep = ((df["judge"] == "A") & (t % 2 == 1)) | ((df["judge"] == "B") & (t % 2 == 0))
    keep |= (df["judge"] == "C") & (df["subject"] == "4")
    rd = RatingData.from_frame(df[keep].reset_index(drop=True), CALTARS)
    rep = rd.report
    assert rep.sessions_per_subject == {"min": 1.0, "median": 2.5, "max": 6.0}
    assert rep.n_sessions == 12
    assert rep.sessions_per_judge == {"A": 7, "B": 5, "C": 6}
    assert rep.crossing["C"]["sessions"] == [f"4|{k}" for k in range(1, 7)]
    assert rep.crossing["A"]["n_sessions"] == 7 and not rep.crossing["A"]["truncated"]
    assert rep.judges_per_session == {"min": 1.0, "median": 1.5, "max": 2.0}
    assert rep.sessions_multiple_judges == 6
    assert rep.ratings_per_judge == {"A": 7, "B": 5, "C": 6}
    adds_up(rep)


def test_self_report_and_no_session(selfrep: Instrument) -> None:
    df = pd.DataFrame({"id": ["p1", "p1", "p2"], "item": ["A1", "A2", "A2"], "rating": [0, 1, 4]})
    rd = RatingData.from_frame(df, selfrep, columns={"id": "subject"})
    assert rd.judges == ("self",)
    assert rd.sessions["session"].tolist() == ["1", "1"]
    notes = " ".join(rd.report.design_notes)
    assert "no session column" in notes and "self-report" in notes
    wide = pd.DataFrame({"subject": [1, 2], "A1": [0, 1], "B2": [4, None]})
    rw = RatingData.from_frame(wide, selfrep)
    assert rw.n_ratings == 3 and rw.report.missing == 1 and rw.judges == ("self",)


def test_reverse_keying(selfrep: Instrument) -> None:
    df = pd.DataFrame(
        {
            "subject": 1,
            "item": ["A1", "A2", "A3", "A2"],
            "rating": [0, 1, 4, 4],
            "session": [1, 1, 1, 2],
        }
    )
    rd = RatingData.from_frame(df, selfrep)
    r = rd.ratings
    assert r["rating"].tolist() == [0, 1, 4, 4]
    assert r["score"].tolist() == [0, 3, 4, 0]  # A2 reversed: 0 + 4 - rating
    assert rd.y.tolist() == [0, 3, 4, 0]
    ss = rd.scale_scores()
    assert ss.columns.tolist() == ["subject", "session", "judge", "A", "B"]
    assert ss["A"].tolist() == [pytest.approx(7 / 3), 0.0]
    assert ss["B"].isna().all()


def test_scale_scores_levels() -> None:
    rows = []
    # subject 1: session 1 judged by A (PPC 1,3) and B (PPC 5); session 2 by A (PPC 2)
    for t, j, it, r in [
        (1, "A", "PPC1", 1),
        (1, "A", "PPC2", 3),
        (1, "B", "PPC1", 5),
        (2, "A", "PPC1", 2),
        (1, "A", "PNC1", 4),
    ]:
        rows.append(("1", str(t), j, it, r))
    rd = RatingData.from_frame(pd.DataFrame(rows, columns=list(LONG_COLUMNS)), CALTARS)
    s = rd.scale_scores("session", by_judge=True)
    assert s[["session", "judge"]].values.tolist() == [["1", "A"], ["1", "B"], ["2", "A"]]
    assert s["PPC"].tolist() == [2.0, 5.0, 2.0]
    assert s["PNC"].tolist()[0] == 4.0 and np.isnan(s["PNC"].tolist()[1])
    assert rd.scale_scores("session", by_judge=False)["PPC"].tolist() == [3.5, 2.0]
    assert rd.scale_scores("subject", by_judge=True)["PPC"].tolist() == [2.0, 5.0]
    sub = rd.scale_scores("subject", by_judge=False)
    assert sub.columns.tolist() == ["subject", *CALTARS.scale_codes]
    assert sub["PPC"].tolist() == [2.75]


# --------------------------------------------------------------------------- views, subsets


def test_long_wide_long_round_trip() -> None:
    df = make_long(n_subjects=4, judges=("A", "B", "C"))
    df = df.drop(index=[3, 50, 51, 200]).reset_index(drop=True)  # ragged
    rd = RatingData.from_frame(df, CALTARS)
    w = rd.wide()
    assert w.columns.tolist() == ["subject", "session", "judge", *CALTARS.items]
    assert len(w) == rd.n_sessions * 3
    assert w["PPC4"].isna().sum() == 1
    back = RatingData.from_frame(w, CALTARS)
    same_ratings(rd, back)
    pd.testing.assert_frame_equal(back.to_long(), rd.to_long())
    again = RatingData.from_frame(rd.to_long(), CALTARS)
    same_ratings(rd, again)
    assert back.report.missing == 4 and back.report.ratings_read == len(w) * 30


def test_subset_subjects() -> None:
    df = make_long(n_subjects=5)
    df.loc[0, "rating"] = "8"  # subject 1
    df.loc[len(df) - 1, "rating"] = np.nan  # subject 5
    cov = pd.DataFrame({"subject": ["1", "2", "3", "4", "5"], "age": [20, 30, np.nan, 40, 50]})
    rd = RatingData.from_frame(df, CALTARS, on_invalid="drop", covariates=cov)
    sub = rd.subset_subjects(["5", "1"])
    assert sub.subjects == ("1", "5")
    assert set(sub.ratings["subject"]) == {"1", "5"}
    rep = sub.report
    assert rep.rejected == 1 and rep.missing == 1
    assert rep.used == sub.n_ratings
    assert rep.ratings_read == int((df["subject"].isin(["1", "5"])).sum())
    adds_up(rep)
    assert "subset of 2 of 5 subjects" in rep.design_notes
    assert sub.covariates is not None
    assert sub.covariates["age"].tolist() == [20.0, 50.0]
    assert rd.report.used == rd.n_ratings  # original untouched
    with pytest.raises(DataError, match="not in the data: '9'"):
        rd.subset_subjects(["1", "9"])


def test_report_dict_json_and_text(tmp_path: Path) -> None:
    df = make_long(n_subjects=2)
    df.loc[0, "rating"] = "0"
    rd = RatingData.from_frame(df, CALTARS, source="ratings.csv", on_invalid="drop")
    rep = rd.report
    rep.add_note("session level dropped: one session per subject")
    rep.add_note("session level dropped: one session per subject")
    d = rep.to_dict()
    json.dumps(d)
    assert d["rejected"] == 1 and d["rejected_rows"][0]["row"] == 2
    assert d["design_notes"] == ["session level dropped: one session per subject"]
    p = tmp_path / "report.json"
    rep.to_json(p)
    assert json.loads(p.read_text())["used"] == rep.used
    text = str(rep)
    assert text == rep.format()
    assert f"= used {rep.used} + missing 0 + rejected 1" in text
    assert "row 2, column 'rating': rating 0 is outside the response range 1..5" in text
    assert "session level dropped" in text
    assert "RatingData(CALTARS:" in repr(rd)


# --------------------------------------------------------------------------- covariates


def test_covariates_nan_kept_and_missing_subjects(tmp_path: Path) -> None:
    ratings = tmp_path / "ratings.csv"
    make_long(n_subjects=3).to_csv(ratings, index=False)
    cov = tmp_path / "cov.csv"
    cov.write_text("subject,age,female,score0\n1,30,1,\n2,,0,2.5\n")
    rd = RatingData.from_files(ratings, CALTARS, covariates=cov)
    c = rd.covariates
    assert c is not None
    assert c.index.name == "subject" and c.index.tolist() == ["1", "2", "3"]
    assert c.columns.tolist() == ["age", "female", "score0"]
    assert all(d == np.float64 for d in c.dtypes)
    assert np.isnan(c.loc["2", "age"]) and np.isnan(c.loc["1", "score0"])
    assert c.loc["3"].isna().all()
    sec = rd.report.covariates
    assert sec is not None
    assert sec["missing"] == {"age": 2, "female": 1, "score0": 2}
    assert sec["source"] == str(cov) and sec["unknown"] == []
    assert rd.report.sources["covariates"] == str(cov)
    assert "age (2 missing)" in str(rd.report)


def test_covariates_unknown_subjects_warn() -> None:
    cov = pd.DataFrame({"subject": [1, 2, 99, 100], "age": [1.0, 2.0, 3.0, 4.0]})
    with pytest.warns(CaltarsWarning, match=r"cov\.csv: covariate rows for 2 subject.*99, 100"):
        rd = RatingData.from_frame(
            make_long(n_subjects=2), CALTARS, covariates=cov, covariates_source="cov.csv"
        )
    assert rd.report.covariates is not None
    assert rd.report.covariates["unknown"] == ["99", "100"]
    assert rd.covariates is not None and rd.covariates.index.tolist() == ["1", "2"]


def test_covariate_errors() -> None:
    df = make_long(n_subjects=2)
    bad = pd.DataFrame({"subject": ["1", "2"], "age": ["30", "thirty"]})
    with pytest.raises(
        DataError, match=r"^cov\.csv, row 3, column 'age': non-numeric value 'thirty'"
    ):
        RatingData.from_frame(df, CALTARS, covariates=bad, covariates_source="cov.csv")
    dup = pd.DataFrame({"subject": ["1", "2", "1"], "age": [1, 2, 3]})
    with pytest.raises(DataError, match=r"^cov\.csv, rows 2, 4: subject '1' appears in more"):
        RatingData.from_frame(df, CALTARS, covariates=dup, covariates_source="cov.csv")
    nosub = pd.DataFrame({"id": ["1"], "age": [1]})
    with pytest.raises(DataError, match=r"cov\.csv: missing required column\(s\) 'subject'"):
        RatingData.from_frame(df, CALTARS, covariates=nosub, covariates_source="cov.csv")
    blank = pd.DataFrame({"subject": ["1", None], "age": [1, 2]})
    with pytest.raises(DataError, match=r"cov\.csv, row 3, column 'subject': empty subject id"):
        RatingData.from_frame(df, CALTARS, covariates=blank, covariates_source="cov.csv")
    only = pd.DataFrame({"subject": ["1"]})
    with pytest.warns(CaltarsWarning, match="no covariate columns besides subject; table ignored"):
        rd = RatingData.from_frame(df, CALTARS, covariates=only)
    assert rd.covariates is None and rd.report.covariates is None
    assert any("no covariate columns" in n for n in rd.report.design_notes)


def test_covariate_column_mapping() -> None:
    df = make_long(n_subjects=2).rename(columns={"subject": "patient"})
    cov = pd.DataFrame({"patient": ["1", "2"], "x": [0.5, 1.5]})
    rd = RatingData.from_frame(df, CALTARS, covariates=cov, columns={"patient": "subject"})
    assert rd.covariates is not None and rd.covariates["x"].tolist() == [0.5, 1.5]


def test_session_covariates() -> None:
    df = make_long(n_subjects=2, sessions=(2, 1))
    scov = pd.DataFrame(
        {
            "subject": ["1", "1", "2", "7"],
            "session": ["2", "1", "1", "1"],
            "week": [4, 0, np.nan, 1],
        }
    )
    with pytest.warns(CaltarsWarning, match=r"1 subject x session id.*7\|1"):
        rd = RatingData.from_frame(df, CALTARS, session_covariates=scov)
    sc = rd.session_covariates
    assert sc is not None
    assert sc.index.names == ["subject", "session"]
    assert list(sc.index) == [("1", "1"), ("1", "2"), ("2", "1")]
    assert sc["week"].tolist()[:2] == [0.0, 4.0] and np.isnan(sc["week"].iloc[2])
    assert rd.report.session_covariates is not None
    assert rd.report.session_covariates["missing"] == {"week": 1}
    dup = scov.iloc[[0, 0]]
    with pytest.raises(DataError, match=r"rows 2, 3: subject '1', session '2' appears"):
        RatingData.from_frame(df, CALTARS, session_covariates=dup)


def test_no_warning_for_clean_data() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        RatingData.from_frame(
            make_long(n_subjects=2),
            CALTARS,
            covariates=pd.DataFrame({"subject": ["1", "2"], "a": [1, 2]}),
        )


def test_calpas_range() -> None:
    calpas = load_instrument(models_dir() / "calpas.toml")
    df = make_long(calpas, n_subjects=1)
    assert RatingData.from_frame(df, calpas).ratings["rating"].max() <= 7
    df.loc[0, "rating"] = "8"
    with pytest.raises(DataError, match=r"outside the response range 1\.\.7"):
        RatingData.from_frame(df, calpas)


def test_validation_of_large_table_is_fast() -> None:
    import time

    n_sub = 400  # 400 x 3 sessions x 2 judges x 30 items = 72k ratings
    df = make_long(n_subjects=n_sub, sessions=(3,) * n_sub)
    t0 = time.perf_counter()
    rd = RatingData.from_frame(df, CALTARS)
    assert rd.n_ratings == len(df)
    assert time.perf_counter() - t0 < 5


# --------------------------------------------------------------------------- properties

SMALL = parse_instrument(
    {
        "instrument": {"name": "SMALL"},
        "response": {"min": 1, "max": 5},
        "scale": [{"code": "S", "items": ["I1", "I2", "I3"]}],
    }
)
BAD_VALUES = ["0", "6", "-1", "9", "2.5", "x", "1e9", "3.3"]


@st.composite
def malformed(draw: st.DrawFn) -> tuple[pd.DataFrame, set[int], set[int], set[int]]:
    """A valid long table with injected faults.

    Returns (table, bad rows, duplicate originals, rows with a missing rating).
    """
    n_sub = draw(st.integers(1, 3))
    n_sess = draw(st.integers(1, 2))
    n_judge = draw(st.integers(1, 2))
    rows: list[list[str | None]] = [
        [str(s), str(t), f"J{j}", it, str(draw(st.integers(1, 5)))]
        for s in range(1, n_sub + 1)
        for t in range(1, n_sess + 1)
        for j in range(n_judge)
        for it in SMALL.items
    ]
    n = len(rows)
    kinds = draw(
        st.lists(
            st.sampled_from(["rating", "item", "blank", "dup", "missing"]),
            min_size=1,
            max_size=min(6, n - 1),
        )
    )
    targets = draw(st.permutations(range(n)))[: len(kinds)]
    bad: set[int] = set()
    originals: set[int] = set()
    missing: set[int] = set()
    extra = []
    for kind, k in zip(kinds, targets, strict=True):
        row = k + 2
        if kind == "rating":
            rows[k][4] = draw(st.sampled_from(BAD_VALUES))
            bad.add(row)
        elif kind == "item":
            rows[k][3] = draw(st.sampled_from(["I4", "Q1", "", "S"]))
            bad.add(row)
        elif kind == "blank":
            rows[k][draw(st.integers(0, 2))] = draw(st.sampled_from(["", "  ", None]))
            bad.add(row)
        elif kind == "missing":
            rows[k][4] = draw(st.sampled_from(["", None, " "]))
            missing.add(row)
        else:
            extra.append(k)
    for k in extra:
        # a copy of a row left clean (its target), appended at the end
        rows.append(list(rows[k]))
        bad.add(len(rows) + 1)
        originals.add(k + 2)
    df = pd.DataFrame(rows, columns=list(LONG_COLUMNS), dtype=object)
    return df, bad, originals, missing


def _location_rows(msg: str) -> set[int]:
    m = re.match(r"^ratings\.csv, rows? ([\d, ]+)", msg)
    assert m, msg
    return {int(x) for x in m.group(1).replace(" ", "").strip(",").split(",") if x}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(malformed())
def test_property_malformed_error(case: tuple[pd.DataFrame, set[int], set[int], set[int]]) -> None:
    df, bad, _, _ = case
    if not bad:
        # missing ratings may leave a subject with none: a warning, not an error
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CaltarsWarning)
            rd = RatingData.from_frame(df, SMALL, source="ratings.csv")
        adds_up(rd.report)
        return
    with pytest.raises(DataError) as ei:
        RatingData.from_frame(df, SMALL, source="ratings.csv")
    msg = str(ei.value)
    assert "\n" not in msg
    assert _location_rows(msg) & bad, (msg, bad)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(malformed())
def test_property_malformed_drop(case: tuple[pd.DataFrame, set[int], set[int], set[int]]) -> None:
    df, bad, originals, missing = case
    all_rows = set(range(2, len(df) + 2))
    clean = all_rows - bad - originals - missing
    if not clean:
        with pytest.raises(DataError, match="no usable ratings"):
            RatingData.from_frame(df, SMALL, source="ratings.csv", on_invalid="drop")
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CaltarsWarning)
        rd = RatingData.from_frame(df, SMALL, source="ratings.csv", on_invalid="drop")
    rep = rd.report
    adds_up(rep)
    assert rep.rows_read == rep.ratings_read == len(df)
    used = set(rd.ratings["source_row"])
    assert not used & bad
    assert used == clean
    assert rep.missing == len(missing)
    assert {e["row"] for e in rep.rejected_rows} == bad | originals


# --------------------------------------------------------------------------- judge table


def _many_judges(n_judges: int = 40, seed: int = 3) -> pd.DataFrame:
    """A long table where each session is rated by 1-3 of many judges, unevenly, some blanks."""
    rng = np.random.default_rng(seed)
    judges = [f"J{k:02d}" for k in range(1, n_judges + 1)]
    weights = rng.gamma(2.0, size=n_judges)
    weights /= weights.sum()
    rows = []
    for s in range(1, 41):
        for t in range(1, 1 + int(rng.integers(1, 5))):
            for j in rng.choice(judges, size=int(rng.integers(1, 4)), replace=False, p=weights):
                for it in rng.choice(CALTARS.items, size=int(rng.integers(3, 12)), replace=False):
                    r = int(rng.integers(CALTARS.response_min, CALTARS.response_max + 1))
                    cell = "" if rng.random() < 0.05 else str(r)
                    rows.append((f"S{s}", str(t), str(j), str(it), cell))
    return pd.DataFrame(rows, columns=["subject", "session", "judge", "item", "rating"])


def test_judge_table_matches_direct_counts() -> None:
    from caltars_bayes.data.judges import judge_table

    df = _many_judges()
    rd = RatingData.from_frame(df, CALTARS)
    tab = judge_table(rd)
    # the direct count, on the input table: blank ratings are missing, not used
    used = df[df["rating"] != ""].copy()
    used["rating"] = used["rating"].astype(int)
    lo, hi = CALTARS.response_min, CALTARS.response_max
    rev = used["item"].isin(CALTARS.reverse_keyed)
    used["score"] = np.where(rev, lo + hi - used["rating"], used["rating"])
    used["sess"] = used["subject"] + "|" + used["session"]
    judges_per_sess = used.groupby("sess")["judge"].nunique()
    shared_sessions = set(judges_per_sess.index[judges_per_sess >= 2])
    g = used.groupby("judge")
    direct = pd.DataFrame(
        {
            "n_ratings": g.size(),
            "n_subjects": g["subject"].nunique(),
            "n_sessions": g["sess"].nunique(),
            "n_sessions_shared": g["sess"].agg(lambda s: len(set(s) & shared_sessions)),
            "n_items": g["item"].nunique(),
            "mean_score": g["score"].mean(),
        }
    ).reindex(list(rd.judges))
    assert tab["judge"].tolist() == list(rd.judges)
    assert rd.n_judges > 30 and len(tab) == rd.n_judges
    for col in ("n_ratings", "n_subjects", "n_sessions", "n_sessions_shared", "n_items"):
        assert tab[col].tolist() == direct[col].astype(int).tolist(), col
    np.testing.assert_allclose(tab["mean_score"], direct["mean_score"], rtol=1e-12)
    assert tab["n_ratings"].sum() == rd.report.used
    assert dict(zip(tab["judge"], tab["n_ratings"], strict=True)) == rd.report.ratings_per_judge
    assert dict(zip(tab["judge"], tab["n_sessions"], strict=True)) == rd.report.sessions_per_judge


def test_report_summarises_panels_over_30_judges() -> None:
    from caltars_bayes.data.report import MAX_JUDGES_LISTED

    rd = RatingData.from_frame(_many_judges(), CALTARS)
    rep = rd.report
    text = rep.format()
    counts = pd.Series(rep.ratings_per_judge)
    assert len(counts) > MAX_JUDGES_LISTED == 30
    # no line per judge, one summary instead
    assert not any(re.match(r"\s+J\d\d: \d+, \d+$", line) for line in text.splitlines())
    assert f"{len(counts)} judges (over 30: summarised" in text
    assert (
        f"ratings per judge: min {counts.min():g}, median {counts.median():g}, "
        f"max {counts.max():g}" in text
    )
    spj = rep.sessions_per_judge
    most = counts.sort_values(ascending=False, kind="stable").index[:5]
    least = counts.sort_values(kind="stable").index[:5]
    most_line = next(x for x in text.splitlines() if "5 most active" in x)
    least_line = next(x for x in text.splitlines() if "5 least active" in x)
    assert most_line.endswith("; ".join(f"{j} ({counts[j]}, {spj[j]})" for j in most))
    assert least_line.endswith("; ".join(f"{j} ({counts[j]}, {spj[j]})" for j in least))
    assert counts[most[0]] == counts.max() and counts[least[0]] == counts.min()


def test_report_lists_panels_of_30_judges_one_a_line() -> None:
    judges = tuple(f"J{k:02d}" for k in range(1, 31))
    rd = RatingData.from_frame(make_long(n_subjects=1, judges=judges, items=("PPC1",)), CALTARS)
    lines = rd.report.format().splitlines()
    assert "  judge: ratings, sessions rated" in lines
    assert "    J07: 1, 1" in lines and "summarised" not in rd.report.format()


def test_save_judge_table_csv_json_and_refusals(tmp_path: Path) -> None:
    from caltars_bayes._core.errors import CaltarsError
    from caltars_bayes.data.judges import judge_table, save_judge_table

    rd = RatingData.from_frame(_many_judges(), CALTARS)
    expected = judge_table(rd)
    save_judge_table(rd, tmp_path / "j.csv")
    back = pd.read_csv(tmp_path / "j.csv", dtype={"judge": str})
    pd.testing.assert_frame_equal(back, expected, check_dtype=False)
    save_judge_table(rd, tmp_path / "j.JSON")
    records = json.loads((tmp_path / "j.JSON").read_text())
    assert records[0] == {k: v for k, v in expected.iloc[0].items()} | {
        "mean_score": pytest.approx(expected["mean_score"].iloc[0])
    }
    assert len(records) == len(expected)
    with pytest.raises(CaltarsError, match=r"j\.csv: already exists; use --force"):
        save_judge_table(rd, tmp_path / "j.csv")
    (tmp_path / "j.csv").write_text("old")
    save_judge_table(expected, tmp_path / "j.csv", force=True)
    assert len(pd.read_csv(tmp_path / "j.csv")) == len(expected)
    with pytest.raises(CaltarsError, match=r"j\.xlsx: a judge table is written as \.csv or \.json"):
        save_judge_table(rd, tmp_path / "j.xlsx")
    assert not (tmp_path / "j.xlsx").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["j.JSON", "j.csv"]  # no temp files left


# --------------------------------------------------------------------------- missing codes, SPSS
# user-missing values, decimal commas (issue 27)


def _with_codes(layout: str) -> tuple[pd.DataFrame, int]:
    """A valid table with 9 and 99 written in some rating cells (as SPSS users code 'not rated')."""
    rd = RatingData.from_frame(make_long(n_subjects=2), CALTARS)
    df = rd.to_long() if layout == "long" else rd.wide()
    col = "rating" if layout == "long" else "PPC1"
    df[col] = df[col].astype(object)
    df.loc[[0, 3], col] = "9"
    df.loc[[1], col] = "99.0"
    return df, 3


@pytest.mark.parametrize("layout", ["long", "wide"])
def test_missing_codes_counted_as_missing(layout: str) -> None:
    df, n = _with_codes(layout)
    with pytest.raises(DataError, match="outside the response range"):
        RatingData.from_frame(df, CALTARS)  # without the codes, 9 is an invalid rating
    plain = RatingData.from_frame(df, CALTARS, on_invalid="drop")
    rd = RatingData.from_frame(df, CALTARS, missing_codes=[99, 9])
    adds_up(rd.report)
    assert rd.report.rejected == 0 and rd.report.missing == n
    assert rd.report.used == plain.report.used and plain.report.rejected == n
    assert any(
        "3 rating(s) equal to a missing code (9, 99) counted as missing" in x
        for x in rd.report.design_notes
    )
    assert not (rd.ratings["rating"] >= 9).any()


def test_missing_codes_must_lie_outside_the_range() -> None:
    df, _ = _with_codes("long")
    with pytest.raises(DataError, match=r"missing code 3: inside the response range 1\.\.5 of"):
        RatingData.from_frame(df, CALTARS, missing_codes=[9, 3])
    with pytest.raises(DataError, match="missing code 'x': not a number"):
        RatingData.from_frame(df, CALTARS, missing_codes=["x"])


def test_missing_codes_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from caltars_bayes.cli import main

    df, _ = _with_codes("long")
    p = tmp_path / "r.csv"
    df.to_csv(p, index=False)
    inst = str(models_dir() / "caltars.toml")
    assert main(["validate", str(p), "--instrument", inst, "--missing-codes", "9,99"]) == 0
    assert "missing 3 + rejected 0" in capsys.readouterr().out
    assert main(["validate", str(p), "--instrument", inst, "--missing-codes", "9;99"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--missing-codes '9;99'" in err


def test_spss_user_missing_values_read_as_missing(tmp_path: Path) -> None:
    import pyreadstat

    rd = RatingData.from_frame(make_long(n_subjects=2), CALTARS)
    long = rd.to_long()
    sav = long.astype({"subject": object, "session": object, "judge": object, "item": object})
    sav["rating"] = sav["rating"].astype(float)
    sav.loc[[0, 5], "rating"] = 9.0
    sav.loc[[7], "rating"] = 99.0
    sav.loc[[8], "rating"] = np.nan  # system-missing
    p = tmp_path / "r.sav"
    pyreadstat.write_sav(sav, str(p), missing_ranges={"rating": [9, 99]})
    cov = pd.DataFrame({"subject": ["1", "2"], "age": [34.0, -9.0], "dose": [-1.0, 2.5]})
    pc = tmp_path / "cov.sav"
    pyreadstat.write_sav(cov, str(pc), missing_ranges={"age": [{"lo": -99, "hi": -1}]})
    back = RatingData.from_files(p, CALTARS, covariates=pc)
    adds_up(back.report)
    assert back.report.missing == 4 and back.report.rejected == 0
    assert back.report.used == len(long) - 4
    assert any(
        "3 value(s) in column 'rating' are SPSS user-missing codes" in x
        for x in back.report.design_notes
    )
    assert back.covariates is not None
    assert np.isnan(back.covariates.loc["2", "age"]) and back.covariates.loc["1", "age"] == 34
    assert back.covariates.loc["1", "dose"] == -1.0  # -1 is a missing code of age only
    assert back.report.covariates is not None and back.report.covariates["missing"]["age"] == 1


def test_decimal_commas_in_covariates(tmp_path: Path) -> None:
    ratings = tmp_path / "r.csv"
    make_long(n_subjects=3).to_csv(ratings, index=False)
    cov = tmp_path / "cov.csv"
    cov.write_text("subject;x;n\n1;3,5;1\n2;-0,25;2\n3;;3\n")  # a semicolon CSV, as Excel writes
    rd = RatingData.from_files(ratings, CALTARS, covariates=cov)
    assert rd.covariates is not None
    np.testing.assert_array_equal(rd.covariates["x"].to_numpy(), [3.5, -0.25, np.nan])
    np.testing.assert_array_equal(rd.covariates["n"].to_numpy(), [1, 2, 3])
    assert any("column 'x' read with decimal commas" in x for x in rd.report.design_notes)
    # only commas followed by three digits: thousands or decimals? an error, not a guess
    cov.write_text("subject;x\n1;1,000\n2;2,500\n3;7\n")
    with pytest.raises(DataError, match=r"cov\.csv.*row 2.*'x'.*'1,000' could be a decimal comma"):
        RatingData.from_files(ratings, CALTARS, covariates=cov)
    # one value with other decimals settles it: decimal commas
    cov.write_text("subject;x\n1;1,000\n2;2,5\n3;7\n")
    rd = RatingData.from_files(ratings, CALTARS, covariates=cov)
    assert rd.covariates is not None and list(rd.covariates["x"]) == [1.0, 2.5, 7.0]
    # mixed decimal points and commas are not numbers
    cov.write_text("subject;x\n1;3.5\n2;2,5\n3;7\n")
    with pytest.raises(DataError, match="non-numeric value"):
        RatingData.from_files(ratings, CALTARS, covariates=cov)
