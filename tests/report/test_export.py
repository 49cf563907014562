"""Exporting a fit's tables as CSV, Excel and SPSS, long and wide (from the tiny fit)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from caltars_bayes.cli import main
from caltars_bayes.report import export as export_mod
from caltars_bayes.report.export import export_table, spss_names, table_frame
from caltars_bayes.report.outputs import save_fit_directory

pyreadstat = pytest.importorskip("pyreadstat")
pytest.importorskip("openpyxl")

_SPSS_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")


@pytest.fixture(scope="module")
def fitdir(tiny_fit, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("export") / "fit"
    save_fit_directory(tiny_fit, out)
    return out


def _scores(fitdir: Path, level: str) -> pd.DataFrame:
    s = pd.read_csv(fitdir / "scores.csv", dtype={"subject": str, "session": str})
    return s.loc[s["level"] == level]


def test_sav_wide_one_row_per_subject_same_numbers(fitdir: Path, tmp_path: Path, tiny_fit) -> None:
    out = tmp_path / "scores.sav"
    args = ["--table", "scores", "--format", "sav", "--wide", "--out", str(out)]
    code = main(["export", str(fitdir), *args])
    assert code == 0
    df, meta = pyreadstat.read_sav(str(out))
    scores = _scores(fitdir, "subject")
    assert list(df["subject"]) == list(tiny_fit.data.subjects)  # one row per subject, in order
    assert len(df) == tiny_fit.data.n_subjects
    for scale in tiny_fit.data.scales:
        ref = scores.loc[scores["scale"] == scale].set_index("subject")
        for stat in ("mean", "hdi_low", "hdi_high"):
            got = df.set_index("subject")[f"{scale}_{stat}"]
            np.testing.assert_allclose(got.to_numpy(), ref.loc[got.index, stat].to_numpy())
    # every variable is labelled, and the label names the column
    labels = dict(zip(meta.column_names, meta.column_labels, strict=True))
    assert all(labels.values())
    assert labels["PC_hdi_low"].startswith("PC_hdi_low: lower bound of the 95% HDI of PC")
    assert set(df["converged"]) == {0.0}  # the tiny fit does not converge
    assert meta.variable_value_labels["converged"] == {0.0: "no", 1.0: "yes"}


def test_wide_session_level_and_judges(fitdir: Path, tiny_fit) -> None:
    w = table_frame(fitdir, "scores", wide=True, level="session")
    assert len(w) == tiny_fit.data.n_sessions
    ref = _scores(fitdir, "session").set_index(["subject", "session", "scale"])
    row = w.iloc[3]
    assert row["TUI_mean"] == pytest.approx(
        ref.loc[(row["subject"], row["session"], "TUI"), "mean"]
    )
    j = table_frame(fitdir, "judges", wide=True)
    assert list(j["judge"]) == list(tiny_fit.data.judges)
    long = pd.read_csv(fitdir / "judges.csv").set_index(["judge", "parameter", "scale"])
    assert j.loc[1, "severity_PWC_hdi_high"] == pytest.approx(
        long.loc[(tiny_fit.data.judges[1], "severity", "PWC"), "hdi_high"]
    )
    assert "discrimination_mean" in j.columns  # a parameter without a scale


def test_xlsx_round_trip_and_fit_object(fitdir: Path, tmp_path: Path, tiny_fit) -> None:
    out = export_table(fitdir, "reliability", tmp_path / "rel.xlsx")
    back = pd.read_excel(out)
    ref = pd.read_csv(fitdir / "reliability.csv")
    pd.testing.assert_frame_equal(back, ref, check_dtype=False)
    variables = pd.read_excel(out, sheet_name="variables")
    assert list(variables["variable"]) == list(ref.columns)
    # from a Fit the table is computed: the same numbers as the directory's CSV
    out2 = export_table(tiny_fit, "scores", tmp_path / "scores.csv")
    a = pd.read_csv(out2, dtype={"session": str})
    b = pd.read_csv(fitdir / "scores.csv", dtype={"session": str})
    np.testing.assert_allclose(a["mean"], b["mean"])


def test_loadings(fitdir: Path, tmp_path: Path, tiny_fit) -> None:
    from caltars_bayes.analysis.structure import standardised_loadings

    out = export_table(fitdir, "loadings", tmp_path / "loadings.sav")
    df, meta = pyreadstat.read_sav(str(out))
    ref = standardised_loadings(tiny_fit)
    assert list(df["item"]) == list(ref["item"])
    np.testing.assert_allclose(df["median"], ref["median"], rtol=1e-6)
    assert all(meta.column_labels)


def test_spss_names() -> None:
    cols = ["a.b c", "1x", "TO", "x" * 80, "Mean", "mean", "", "ok_name"]
    names = spss_names(cols)
    assert names["a.b c"] == "a_b_c" and names["1x"] == "v_1x" and names["TO"] == "v_TO"
    assert names["ok_name"] == "ok_name" and len(names["x" * 80]) == 64
    assert all(_SPSS_NAME.match(n) for n in names.values())
    assert len({n.upper() for n in names.values()}) == len(cols)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--table", "nope", "--out", "x.csv"], "--table 'nope': unknown"),
        (["--table", "scores", "--format", "pdf", "--out", "x.pdf"], "--format 'pdf': unknown"),
        (["--table", "scores", "--out", "x.txt"], "cannot tell the format"),
        (["--table", "scores", "--format", "sav", "--out", "x.csv"], "cannot hold --format sav"),
        (["--table", "reliability", "--wide", "--out", "x.csv"], "no one-row-per-subject"),
        (["--table", "judges", "--level", "session", "--out", "x.csv"], "--level: applies"),
    ],
)
def test_bad_arguments_one_line_exit_2(
    fitdir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], args, message
) -> None:
    args = [a if not a.startswith("x.") else str(tmp_path / a) for a in args]
    assert main(["export", str(fitdir), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert not list(tmp_path.iterdir())


def test_no_overwrite_without_force_and_atomic(
    fitdir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    out = tmp_path / "s.csv"
    out.write_text("keep me")
    assert main(["export", str(fitdir), "--table", "scores", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err and out.read_text() == "keep me"

    def broken(*args) -> None:
        Path(args[-1]).write_text("half")
        raise OSError("disk full")

    monkeypatch.setattr(export_mod, "_write_csv", broken)
    with pytest.raises(OSError):
        export_table(fitdir, "scores", out, force=True)
    assert out.read_text() == "keep me" and [p.name for p in tmp_path.iterdir()] == ["s.csv"]
    monkeypatch.undo()
    assert main(["export", str(fitdir), "--table", "scores", "--out", str(out), "--force"]) == 0
    assert len(pd.read_csv(out)) == len(pd.read_csv(fitdir / "scores.csv"))


def test_associations_missing(fitdir: Path, tmp_path: Path, capsys) -> None:
    copy = tmp_path / "fit"
    shutil.copytree(fitdir, copy)
    (copy / "associations.csv").unlink()
    assert (
        main(["export", str(copy), "--table", "associations", "--out", str(tmp_path / "a.csv")])
        == 2
    )
    assert "no associations.csv (the fit has no covariates)" in capsys.readouterr().err
