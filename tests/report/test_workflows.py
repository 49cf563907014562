"""The workflows behind the commands are library functions: a notebook and the
command line write the same folders (``fit``, ``check``), and a fit directory
is written in one go with its tables returned for reuse."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd
import pytest
import xarray as xr

from caltars_bayes._core.errors import CaltarsError
from caltars_bayes.cli import main
from caltars_bayes.data.ratings import RatingData
from caltars_bayes.inference.fit import CORE_FILES, load_fit
from caltars_bayes.report.outputs import save_fit_directory, saved_hypotheses
from caltars_bayes.report.workflows import fit_to_directory, run_check
from caltars_bayes.spec.instrument import models_dir

CALPAS = str(models_dir() / "calpas.toml")
HYPOTHESES = """
[[hypothesis]]
scales = ["PC", "WSC"]
covariate = "x"
direction = "positive"
"""
#: fields of meta.json that differ between two runs of the same fit
VOLATILE = ("timings", "created")


def _same_folders(a: Path, b: Path) -> None:
    """Identical file names; identical tables, JSON (but timings) and posterior."""
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    for name in names:
        pa, pb = a / name, b / name
        if name.endswith(".csv"):
            pd.testing.assert_frame_equal(pd.read_csv(pa), pd.read_csv(pb))
        elif name.endswith(".json"):
            da, db = json.loads(pa.read_text()), json.loads(pb.read_text())
            for key in VOLATILE:
                da.pop(key, None), db.pop(key, None)
            assert da == db, name
        elif name.endswith(".nc"):
            xr.testing.assert_equal(  # the same draws (attrs hold creation times)
                xr.open_datatree(pa, engine="h5netcdf")["posterior"].to_dataset(),
                xr.open_datatree(pb, engine="h5netcdf")["posterior"].to_dataset(),
            )


@pytest.fixture(scope="module")
def trial_files(tiny_trial, tmp_path_factory):
    folder = tmp_path_factory.mktemp("trial")
    paths = {Path(p).name: Path(p) for p in tiny_trial.write(folder / "t")}
    hyp = folder / "hypotheses.toml"
    hyp.write_text(HYPOTHESES)
    return paths["ratings.csv"], paths["covariates.csv"], hyp


@pytest.mark.slow
def test_notebook_and_cli_write_the_same_fit_directory(trial_files, tmp_path, capsys):
    ratings, covariates, hyp = trial_files
    cli_out, lib_out = tmp_path / "cli", tmp_path / "lib"
    opts = ["--draws", "20", "--tune", "20", "--chains", "2", "--seed", "4", "--quiet"]
    args = ["fit", str(ratings), "--instrument", CALPAS, "--covariates", str(covariates),
            "--hypotheses", str(hyp), "--out", str(cli_out), *opts]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    data = RatingData.from_files(ratings, _calpas(), covariates=covariates)
    fit, results = fit_to_directory(
        data, lib_out, hypotheses=hyp, draws=20, tune=20, chains=2, random_seed=4,
        progressbar=False,
    )  # fmt: skip
    _same_folders(cli_out, lib_out)
    names = {p.name for p in lib_out.iterdir()}
    assert set(CORE_FILES) <= names
    assert {"summary.csv", "reliability.csv", "associations.csv", "hypotheses.csv",
            "hypotheses.json", "associations.png", "associations.svg"} <= names  # fmt: skip
    # the returned tables are what was written
    for name, table in results.tables().items():
        pd.testing.assert_frame_equal(pd.read_csv(lib_out / name), _csv(table))
    assert "hypotheses:" in printed and f"wrote {cli_out}/" in printed
    saved = saved_hypotheses(lib_out)
    assert saved is not None and results.hypotheses is not None
    assert saved.hypotheses == results.hypotheses.hypotheses
    assert fit.directory == lib_out and load_fit(lib_out).record == fit.record


def _csv(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` as it reads back from a CSV file."""
    return pd.read_csv(io.StringIO(table.to_csv(index=False)))


def _calpas():
    from caltars_bayes.spec.instrument import load_instrument

    return load_instrument(CALPAS)


def test_save_fit_directory_is_atomic_and_refuses_to_overwrite(tiny_fit, tmp_path):
    out = tmp_path / "fit"
    res = save_fit_directory(tiny_fit, out)
    names = {p.name for p in out.iterdir()}
    assert {*CORE_FILES, "summary.csv", "scores.csv", "judges.csv", "reliability.csv"} <= names
    # the tiny trial has a subject covariate: associations and their figure
    assert {"associations.csv", "imputed_covariates.csv", "associations.png"} <= names
    assert "hypotheses.csv" not in names and res.verdicts is None
    pd.testing.assert_frame_equal(pd.read_csv(out / "reliability.csv"), _csv(res.reliability))
    (out / "marker").write_text("x")
    with pytest.raises(CaltarsError, match="--force"):
        save_fit_directory(tiny_fit, out)
    assert (out / "marker").exists()
    save_fit_directory(tiny_fit, out, force=True)
    assert not (out / "marker").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fit"]  # no temporary folders


def test_notebook_and_cli_write_the_same_check_folder(tiny_fit, tmp_path, capsys):
    fitdir = tiny_fit.save(tmp_path / "fit")
    assert main(["check", str(fitdir), "--out", str(tmp_path / "cli"), "--draws", "20"]) == 0
    assert "posterior predictive checks" in capsys.readouterr().out
    res = run_check(load_fit(fitdir), tmp_path / "lib", draws=20)
    _same_folders(tmp_path / "cli", tmp_path / "lib")
    assert {p.name for p in (tmp_path / "lib").iterdir()} >= {
        "loadings.csv", "ppc.csv", "ppc.png", "factor_correlations.svg"
    }  # fmt: skip
    assert len(res.loadings) == len(tiny_fit.data.items)


def test_the_report_reuses_the_fit_directorys_tables(tiny_fit, tmp_path, monkeypatch):
    """build_report(results=...) computes no table that save_fit_directory returned,
    and says the same as a report that computes them."""
    from caltars_bayes.report import sections_results
    from caltars_bayes.report.build import build_report
    from caltars_bayes.spec.hypotheses import hypotheses_from_dict

    hyps = hypotheses_from_dict(
        {"hypothesis": [{"scale": "PC", "covariate": "x", "direction": "positive"}]}
    )
    res = save_fit_directory(tiny_fit, tmp_path / "fit", hypotheses=hyps)
    fresh = build_report(tiny_fit, hypotheses=hyps, dstudy=False, ppc=False)
    expected = fresh.markdown()
    fresh.close()

    def computed(*args, **kwargs):
        raise AssertionError("recomputed a table the fit directory already has")

    for name in ("reliability", "associations", "test_hypotheses"):
        monkeypatch.setattr(sections_results, name, computed)
    reused = build_report(tiny_fit, results=res, dstudy=False, ppc=False)
    assert reused.markdown() == expected
    reused.close()
    assert "1 hypotheses" in " ".join(reused.summary)
