"""Smoke tests of every CLI command, exit codes and one-line errors."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from caltars_bayes._core import progress
from caltars_bayes.cli import main
from caltars_bayes.spec.instrument import models_dir

CALPAS = str(models_dir() / "calpas.toml")


@pytest.fixture(scope="module")
def sim_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "sim"
    rc = main(
        [
            "simulate",
            "--instrument",
            CALPAS,
            "--subjects",
            "8",
            "--sessions",
            "2",
            "--judges",
            "2",
            "--seed",
            "4",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    return out


def test_simulate_writes_files(sim_dir):
    for f in ("ratings.csv", "covariates.csv", "session_covariates.csv", "truth.nc"):
        assert (sim_dir / f).is_file()
    r = pd.read_csv(sim_dir / "ratings.csv")
    assert list(r.columns) == ["subject", "session", "judge", "item", "rating"]
    assert len(r) == 8 * 2 * 2 * 24


def test_simulate_refuses_to_overwrite(sim_dir, capsys):
    rc = main(["simulate", "--instrument", CALPAS, "--subjects", "3", "--out", str(sim_dir)])
    assert rc == 2
    assert "--force" in capsys.readouterr().err


def test_validate_prints_report(sim_dir, capsys):
    rc = main(
        [
            "validate",
            str(sim_dir / "ratings.csv"),
            "--instrument",
            CALPAS,
            "--covariates",
            str(sim_dir / "covariates.csv"),
            "--session-covariates",
            str(sim_dir / "session_covariates.csv"),
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0
    assert "768" in out  # ratings used
    assert "judge" in out.lower()


def test_validate_bad_rating_is_one_line_exit_2(sim_dir, tmp_path, capsys):
    r = pd.read_csv(sim_dir / "ratings.csv")
    r.loc[4, "rating"] = 9
    bad = tmp_path / "bad.csv"
    r.to_csv(bad, index=False)
    rc = main(["validate", str(bad), "--instrument", CALPAS])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1
    assert "bad.csv" in err and "row 6" in err and "'rating'" in err
    # --drop-invalid rejects and counts the row instead
    rc = main(["validate", str(bad), "--instrument", CALPAS, "--drop-invalid"])
    assert rc == 0
    assert "rejected" in capsys.readouterr().out.lower()


def test_column_mapping_flag(sim_dir, tmp_path, capsys):
    r = pd.read_csv(sim_dir / "ratings.csv").rename(
        columns={"subject": "patient", "judge": "rater"}
    )
    p = tmp_path / "renamed.csv"
    r.to_csv(p, index=False)
    assert main(["validate", str(p), "--instrument", CALPAS]) == 2
    assert "patient" in capsys.readouterr().err  # the error lists columns that exist
    assert (
        main(
            [
                "validate",
                str(p),
                "--instrument",
                CALPAS,
                "--map",
                "patient=subject",
                "--map",
                "rater=judge",
            ]
        )
        == 0
    )


def test_fit_writes_outputs_and_strict_exit_code(sim_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "fit"
    args = [
        "fit",
        str(sim_dir / "ratings.csv"),
        "--instrument",
        CALPAS,
        "--out",
        str(out),
        "--draws",
        "30",
        "--tune",
        "30",
        "--chains",
        "2",
        "--quiet",
    ]
    rc = main([*args, "--strict"])
    assert rc == 3  # 30 draws cannot converge: --strict says so
    for f in (
        "posterior.nc",
        "diagnostics.json",
        "summary.csv",
        "scores.csv",
        "judges.csv",
        "data_report.json",
    ):
        assert (out / f).is_file()
    diag = json.loads((out / "diagnostics.json").read_text())
    assert diag["converged"] is False
    summary = pd.read_csv(out / "summary.csv")
    assert {
        "parameter",
        "mean",
        "sd",
        "median",
        "hdi_low",
        "hdi_high",
        "r_hat",
        "ess_bulk",
        "ess_tail",
        "converged",
    } <= set(summary.columns)
    printed = capsys.readouterr()
    assert "NOT CONVERGED" in printed.out
    assert "sampling:" not in printed.err + printed.out  # --quiet: no progress
    # rerun without --force is refused, with --force accepted
    assert main(args) == 2
    extra = ["--integration-time", "2.7", "--start", "data", "--max-treedepth", "9"]
    # with progress (stderr is not a terminal here: plain lines), a line every 0.05 s,
    # and a log
    monkeypatch.setattr(progress, "EVERY_S", 0.05)
    log = tmp_path / "fit.log"
    loud = [a for a in args if a != "--quiet"]
    assert main([*loud, "--force", *extra, "--log", str(log)]) == 0
    err = capsys.readouterr().err.splitlines()
    sampling = [line for line in err if line.startswith("sampling: 2 chains")]
    assert any("divergences" in line and "ETA" in line for line in sampling)
    assert sampling[-1].startswith("sampling: 2 chains, 120/120 draws,")
    assert "done in" in sampling[-1]
    logged = [line[20:] for line in log.read_text().splitlines()]  # after the timestamp
    assert logged[0].startswith("caltars-bayes fit ") and logged[-1] == f"wrote {out}/"
    assert set(sampling) <= set(logged) and any(x.startswith("fitting ") for x in logged)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["nuts"]["target_integration_time"] == 2.7
    assert meta["nuts"]["max_treedepth"] == 9  # the sampler's own name for it
    assert meta["start"] == "data"
    assert "target_integration_time" not in meta["sampler_defaults"]
    with pytest.raises(SystemExit) as bad:  # argparse: one line, exit 2
        main([*args, "--force", "--integration-time", "-1"])
    assert bad.value.code == 2
    assert "must be 0 or more" in capsys.readouterr().err
    with pytest.raises(SystemExit) as bad:
        main([*args, "--force", "--max-treedepth", "0"])
    assert bad.value.code == 2 and "1 or more" in capsys.readouterr().err


def test_console_script_no_traceback_unless_debug(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    exe = Path(sys.executable).parent / "caltars-bayes"
    env = {**os.environ}
    res = subprocess.run(
        [str(exe), "validate", str(empty)], capture_output=True, text=True, env=env, timeout=120
    )
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    assert res.stderr.startswith("error: ") and "empty.csv" in res.stderr
    res = subprocess.run(
        [str(exe), "--debug", "validate", str(empty)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert res.returncode != 0 and "Traceback" in res.stderr


def test_unknown_spec_key_is_clear(tmp_path, capsys):
    spec = tmp_path / "s.toml"
    spec.write_text(
        '[instrument]\nname = "X"\ncolour = "red"\n[[scale]]\ncode = "A"\nitems = ["A1"]\n'
    )
    data = tmp_path / "r.csv"
    data.write_text("subject,session,judge,item,rating\n1,1,1,A1,3\n")
    assert main(["validate", str(data), "--instrument", str(spec)]) == 2
    err = capsys.readouterr().err
    assert "s.toml" in err and "colour" in err


# The demo end to end (tiny settings) is tested in tests/report/test_report.py.


def test_fit_alternative_structure(sim_dir, tmp_path, monkeypatch):
    """Also: without --tune a fit tunes for the package's default for its size
    (thresholds lowered here so that the large-data default, made 20, applies)."""
    from caltars_bayes.inference import sampling

    monkeypatch.setattr(sampling, "LARGE_DATA_RATINGS", 1)
    monkeypatch.setattr(sampling, "LARGE_DATA_TUNE", 20)
    spec = tmp_path / "calpas_alt.toml"
    spec.write_text(Path(CALPAS).read_text())
    out = tmp_path / "fit_general"
    rc = main(
        [
            "fit",
            str(sim_dir / "ratings.csv"),
            "--instrument",
            str(spec),
            "--structure",
            "general",
            "--out",
            str(out),
            "--draws",
            "20",
            "--chains",
            "2",
            "--quiet",
        ]
    )
    assert rc == 0
    assert json.loads((out / "meta.json").read_text())["tune"] == 20
    scores = pd.read_csv(out / "scores.csv")
    assert set(scores["scale"]) == {"ALLIANCE"}
    assert (
        main(
            [
                "fit",
                str(sim_dir / "ratings.csv"),
                "--instrument",
                str(spec),
                "--structure",
                "nope",
                "--out",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )


def test_version_prints_the_package_version_and_imports_no_pymc(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out == f"caltars-bayes {version('caltars-bayes')}\n"
    code = (
        "import sys\n"
        "from caltars_bayes.cli import main\n"
        "try:\n"
        "    main(['--version'])\n"
        "except SystemExit as e:\n"
        "    assert e.code == 0\n"
        "heavy = [m for m in ('pymc', 'pytensor', 'numba', 'jax') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"caltars-bayes {version('caltars-bayes')}"


@pytest.fixture(scope="module")
def many_judges_csv(tmp_path_factory) -> Path:
    """A sparse panel of 40 judges, two per session (simulated)."""
    out = tmp_path_factory.mktemp("cli") / "sim40"
    args = ["simulate", "--instrument", CALPAS, "--subjects", "30", "--sessions", "3"]
    args += ["--judges", "40", "--judges-per-session", "2", "--seed", "7", "--no-covariates"]
    assert main([*args, "--out", str(out)]) == 0
    return out / "ratings.csv"


def test_validate_summarises_many_judges_and_writes_the_table(many_judges_csv, tmp_path, capsys):
    r = pd.read_csv(many_judges_csv, dtype={"judge": str, "subject": str, "session": str})
    counts = r.groupby("judge").size()
    assert len(counts) > 30
    out = tmp_path / "judges.csv"
    assert main(["validate", str(many_judges_csv), "--instrument", CALPAS, "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"{len(counts)} judges (over 30: summarised" in text
    assert (
        f"ratings per judge: min {counts.min():g}, median {counts.median():g}, "
        f"max {counts.max():g}" in text
    )
    assert "5 most active" in text and "5 least active" in text
    assert not any(
        line.startswith(f"    {j}: ") for j in counts.index for line in text.splitlines()
    )
    tab = pd.read_csv(out, dtype={"judge": str}).set_index("judge")
    g = r.groupby("judge")
    assert tab["n_ratings"].to_dict() == counts.to_dict()
    assert tab["n_subjects"].to_dict() == g["subject"].nunique().to_dict()
    sessions = r["subject"] + "|" + r["session"]
    assert tab["n_sessions"].to_dict() == sessions.groupby(r["judge"]).nunique().to_dict()
    # refused without --force (exit 2, one line), replaced with it; JSON by suffix
    assert main(["validate", str(many_judges_csv), "--instrument", CALPAS, "--out", str(out)]) == 2
    assert capsys.readouterr().err == f"error: {out}: already exists; use --force to overwrite\n"
    js = tmp_path / "judges.json"
    assert main(["validate", str(many_judges_csv), "--instrument", CALPAS, "--out", str(js)]) == 0
    assert [d["n_ratings"] for d in json.loads(js.read_text())] == tab["n_ratings"].tolist()
    capsys.readouterr()
    bad = tmp_path / "judges.txt"
    assert main(["validate", str(many_judges_csv), "--instrument", CALPAS, "--out", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and ".csv or .json" in err
    assert not bad.exists()


def test_validate_lists_small_panels_one_judge_a_line(sim_dir, capsys):
    assert main(["validate", str(sim_dir / "ratings.csv"), "--instrument", CALPAS]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "  judge: ratings, sessions rated" in lines
    assert sum(1 for x in lines if re.match(r"    J\d+: \d+, \d+$", x)) == 2


@pytest.mark.slow
def test_clean_fit_prints_no_blas_warning(tiny_trial, tmp_path):
    """A fit's stderr carries no PyTensor BLAS warning (nor any other warning)."""
    ratings = tmp_path / "ratings.csv"
    tiny_trial.to_rating_data().to_long().to_csv(ratings, index=False)
    exe = Path(sys.executable).parent / "caltars-bayes"
    args = [str(exe), "fit", str(ratings), "--instrument", CALPAS, "--out", str(tmp_path / "f")]
    args += ["--draws", "20", "--tune", "20", "--chains", "1", "--quiet"]
    env = {**os.environ, "CALTARS_BAYES_NUTPIE_BACKEND": "jax"}
    res = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "BLAS" not in res.stderr
    assert "warning" not in res.stderr.lower(), res.stderr
