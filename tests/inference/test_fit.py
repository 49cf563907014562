"""Flow tests of fitting, tables, saving and loading, on a tiny design.

One short fit is shared by the module (a session-scoped fixture in conftest);
these tests check plumbing and contents, not statistical recovery (see
``test_recovery.py``).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from caltars_bayes._core.errors import FitIOError
from caltars_bayes.inference.fit import CORE_FILES, data_hash, load_fit
from caltars_bayes.inference.sampling import require_sampler


def test_fit_holds_named_datatree_and_diagnostics(tiny_fit):
    fit = tiny_fit
    post = fit.posterior
    assert set(post["theta"].dims) == {"chain", "draw", "subject", "scale"}
    assert set(post["severity"].dims) == {"chain", "draw", "scale", "judge"}
    assert list(post["cutpoints"].dims[-1:]) == ["cutpoint"]
    assert post.sizes["chain"] == 2
    assert "diverging" in fit.sample_stats
    d = fit.diagnostics
    assert d.n_chains == 2 and d.n_draws == post.sizes["draw"]
    # 60 draws per chain cannot reach ESS 400: the verdict must say so
    assert not d.converged
    assert any("ESS" in p for p in d.problems)
    assert "NOT CONVERGED" in repr(fit)
    assert "NOT CONVERGED" in fit._repr_html_()
    # nutpie's tuning steps are recorded (sample_stats keep only the draws): each of the
    # chains x tune iterations takes at least one leapfrog step, at most 2^10
    steps = fit.record.timings["tune_steps"]
    assert steps == int(steps) and 2 * 60 <= steps <= 2 * 60 * 1024


def test_summary_scores_judges_tables(tiny_fit):
    s = tiny_fit.summary()
    for col in (
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
    ):
        assert col in s.columns
    assert (s["hdi_low"] <= s["median"]).all() and (s["median"] <= s["hdi_high"]).all()
    assert "loading[PC1]" not in set(s["parameter"])  # calpas codes are CALPASnn
    assert any(p.startswith("loading[CALPAS01") for p in s["parameter"])
    assert not any(p.startswith("theta_raw") for p in s["parameter"])
    assert not s["converged"].any()
    assert "NOT CONVERGED" in s.attrs["diagnostics"]

    sc = tiny_fit.scores()
    data = tiny_fit.data
    assert set(sc["level"]) == {"subject", "session"}
    assert (sc["level"] == "subject").sum() == data.n_subjects * data.n_scales
    assert (sc["level"] == "session").sum() == data.n_sessions * data.n_scales
    sub = sc[sc["level"] == "subject"].set_index(["subject", "scale"])["mean"]
    th = tiny_fit.posterior["theta"].mean(("chain", "draw")).to_series()
    np.testing.assert_allclose(sub.loc[th.index], th)

    j = tiny_fit.judges()
    assert set(j["parameter"]) == {"severity", "discrimination"}
    assert (j["parameter"] == "severity").sum() == data.n_judges * data.n_scales


def test_judges_table_counts_ratings(tiny_fit):
    j = tiny_fit.judges()
    disc = j[j["parameter"] == "discrimination"].set_index("judge")["n_ratings"]
    counts = tiny_fit.data.ratings.groupby("judge").size()
    assert disc.to_dict() == counts.to_dict()


def test_session_scores_add_theta_and_zeta(tiny_fit):
    from caltars_bayes.inference.tables import session_alliance

    eta = session_alliance(tiny_fit)
    post = tiny_fit.posterior
    lab = tiny_fit.data.session_labels[0]
    subj = tiny_fit.data.sessions.set_index("label").loc[lab, "subject"]
    expect = post["theta"].sel(subject=subj) + post["zeta"].sel(session=lab)
    np.testing.assert_allclose(eta.sel(session=lab), expect.transpose(*eta.sel(session=lab).dims))


def test_save_load_round_trip_is_exact(tiny_fit, tmp_path):
    out = tiny_fit.save(tmp_path / "fit")
    # the reloadable core only: tables and figures are save_fit_directory's
    assert {p.name for p in out.iterdir()} == {*CORE_FILES, "covariates.csv"}
    assert tiny_fit.directory == out
    back = load_fit(out)
    assert back.directory == out
    assert back.record == tiny_fit.record and back.plan == tiny_fit.plan
    xr.testing.assert_identical(
        back.posterior.reset_coords(drop=True), tiny_fit.posterior.reset_coords(drop=True)
    )
    assert back.diagnostics == tiny_fit.diagnostics
    assert back.instrument.hash() == tiny_fit.instrument.hash()
    assert data_hash(back.data) == data_hash(tiny_fit.data)
    pd.testing.assert_frame_equal(back.summary(), tiny_fit.summary())
    meta = json.loads((out / "meta.json").read_text())
    assert meta["sampler"] == "nutpie" and meta["caltars_bayes_version"]
    assert meta["plan"] == tiny_fit.plan.to_dict()
    # no pickle anywhere
    assert not any(p.suffix in (".pkl", ".pickle") for p in out.iterdir())


def test_existing_directory_needs_force(tiny_fit, tmp_path):
    out = tiny_fit.save(tmp_path / "fit")
    (out / "marker").write_text("x")
    with pytest.raises(FitIOError, match="--force"):
        tiny_fit.save(out)
    assert (out / "marker").exists()  # untouched
    tiny_fit.save(out, force=True)
    assert not (out / "marker").exists()
    # no temporary folders left behind
    assert [p.name for p in tmp_path.iterdir()] == ["fit"]


def test_load_refuses_edited_or_broken_directories(tiny_fit, tmp_path):
    good = tiny_fit.save(tmp_path / "good")

    edited = tmp_path / "edited"
    shutil.copytree(good, edited)
    r = pd.read_csv(edited / "ratings.csv", dtype=str)
    r.loc[0, "rating"] = "1" if r.loc[0, "rating"] != "1" else "2"
    r.to_csv(edited / "ratings.csv", index=False)
    with pytest.raises(FitIOError, match=r"ratings.csv: data do not match"):
        load_fit(edited)

    spec = tmp_path / "spec"
    shutil.copytree(good, spec)
    d = json.loads((spec / "spec.json").read_text())
    d["priors"]["lkj_eta"] = 7.0
    (spec / "spec.json").write_text(json.dumps(d))
    with pytest.raises(FitIOError, match="spec does not match"):
        load_fit(spec)

    broken = tmp_path / "broken"
    shutil.copytree(good, broken)
    (broken / "posterior.nc").write_bytes(b"not a netcdf file")
    with pytest.raises(FitIOError, match=r"posterior\.nc: cannot be read"):
        load_fit(broken)

    missing = tmp_path / "missing"
    shutil.copytree(good, missing)
    (missing / "meta.json").unlink()
    with pytest.raises(FitIOError, match=r"meta\.json is missing"):
        load_fit(missing)

    with pytest.raises(FitIOError, match="not found"):
        load_fit(tmp_path / "nope")

    # a record with a misspelt field is refused, not ignored
    typo = tmp_path / "typo"
    shutil.copytree(good, typo)
    doc = json.loads((typo / "meta.json").read_text())
    doc["samplr"] = doc.pop("sampler")
    (typo / "meta.json").write_text(json.dumps(doc))
    with pytest.raises(FitIOError, match=r"unknown field.*'samplr'"):
        load_fit(typo)


def test_unknown_sampler_and_missing_package_messages(monkeypatch):
    with pytest.raises(ValueError, match="unknown sampler"):
        require_sampler("stan")
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "numpyro" else real(name, *a)
    )
    with pytest.raises(ImportError, match=r"caltars-bayes\[jax\]"):
        require_sampler("numpyro")
