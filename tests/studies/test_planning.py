"""Planning trials on Dask: plan files, seeds, decisions, power, resumability, fault tolerance.

The Dask mechanics (distributed = serial, killed worker, resume) use the
``classical`` analysis (no MCMC: milliseconds per replication) so that they
test the machinery, not the sampler; one small NUTS replication checks the
Bayesian path end to end.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from caltars_bayes._core.errors import CaltarsError, SpecError
from caltars_bayes.cli import main
from caltars_bayes.spec.instrument import models_dir
from caltars_bayes.studies.plan_spec import Design, plan_from_dict, sd_alliance_for
from caltars_bayes.studies.planning import (
    load_plan,
    run_plan,
    run_replication,
    simulate_replication,
)
from caltars_bayes.studies.power import power_table, wilson_interval
from caltars_bayes.studies.tasks import Task, collect_results, run_tasks, task_seeds

EXAMPLE = models_dir() / "plan-example.toml"


def tiny_doc(**analysis) -> dict:
    return {
        "plan": {"name": "tiny", "instrument": "calpas.toml", "replications": 3, "seed": 11},
        "design": {"subjects": [12, 16], "sessions": 2, "judges": 2, "items": 2},
        "effects": {"association": [0.0, 0.5]},
        "analysis": {"method": "classical", **analysis},
        "decisions": {
            "association": {"prob": 0.95},
            "reliability": {"threshold": 0.5, "prob": 0.9},
        },
    }


@pytest.fixture(scope="module")
def tiny_plan():
    return plan_from_dict(tiny_doc(), "<tiny plan>")


# --------------------------------------------------------------------------- plan files


def test_example_plan_loads():
    plan = load_plan(EXAMPLE)
    assert plan.method == "nuts" and plan.association is not None and plan.reliability
    assert len(plan.designs) == 4 and len(plan.effects) == 2
    assert {d.items for d in plan.designs} == {3}
    assert len(plan.tasks()) == 4 * 2 * plan.replications
    assert plan.association_scale == "PC"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["design"].update(subject=[10]), "[design]: unknown key(s) 'subject'"),
        (lambda d: d["design"].update(subjects=[2, 10]), "[design].subjects"),
        (lambda d: d["analysis"].update(method="mcmc"), "[analysis].method"),
        (lambda d: d["effects"].update(association=[1.5]), "[effects].association"),
        (lambda d: d["decisions"]["reliability"].update(level="week"), "reliability].level"),
        (lambda d: d["design"].update(items=[7]), "[design].items"),
        (lambda d: d.update(extra={}), "unknown key(s) 'extra'"),
        (lambda d: d["effects"].update(reliability=[0.999]), "[effects].reliability"),
        (lambda d: d["plan"].update(instrument="nope.toml"), "[plan].instrument"),
    ],
)
def test_bad_plans_name_file_and_key(edit, message, tmp_path):
    doc = tiny_doc()
    edit(doc)
    path = tmp_path / "bad.toml"
    path.write_text(_to_toml(doc))
    with pytest.raises(SpecError) as exc:
        load_plan(path)
    text = str(exc.value)
    assert str(path) in text and message in text
    assert "\n" not in text


def _to_toml(doc: dict) -> str:
    """Minimal TOML writer for the plan documents of these tests."""

    def value(v):
        if isinstance(v, str):
            return f'"{v}"'
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return repr(v)

    lines = []

    def table(prefix, d):
        scalars = {k: v for k, v in d.items() if not isinstance(v, dict)}
        if scalars or not d:
            lines.append(f"[{prefix}]")
            lines.extend(f"{k} = {value(v)}" for k, v in scalars.items())
        for k, v in d.items():
            if isinstance(v, dict):
                table(f"{prefix}.{k}", v)

    for k, v in doc.items():
        table(k, v)
    return "\n".join(lines) + "\n"


def test_plan_toml_round_trip_and_cli_bad_plan(tmp_path, capsys):
    path = tmp_path / "p.toml"
    path.write_text(_to_toml(tiny_doc()))
    assert load_plan(path).fingerprint() == plan_from_dict(tiny_doc(), "x").fingerprint()
    bad = tmp_path / "bad.toml"
    bad.write_text(_to_toml({**tiny_doc(), "design": {"subjects": 10}}))
    rc = main(["plan", str(bad), "--out", str(tmp_path / "o"), "--scheduler", "serial"])
    err = capsys.readouterr().err
    assert rc == 2 and "[design].sessions is required" in err and "Traceback" not in err


# --------------------------------------------------------------------------- seeds


def test_task_seeds_depend_only_on_seed_and_id(tiny_plan):
    a = task_seeds(11, "s12-n2-j2-i2_a+0.500-rnone_rep0002")
    assert a == task_seeds(11, "s12-n2-j2-i2_a+0.500-rnone_rep0002")
    assert a != task_seeds(12, "s12-n2-j2-i2_a+0.500-rnone_rep0002")
    assert a != task_seeds(11, "s12-n2-j2-i2_a+0.500-rnone_rep0003")
    # adding a design to the grid leaves the seeds of existing tasks unchanged
    bigger = dataclasses.replace(tiny_plan, designs=(*tiny_plan.designs, Design(40, 2, 2, 2)))
    old = {t.id: t.seeds for t in tiny_plan.tasks()}
    new = {t.id: t.seeds for t in bigger.tasks()}
    assert all(new[k] == v for k, v in old.items()) and len(new) == len(old) + 6
    seeds = [s for t in bigger.tasks() for s in t.seeds]
    assert len(set(seeds)) == len(seeds)


def test_task_ids_must_be_file_safe():
    with pytest.raises(ValueError, match="unsafe"):
        Task.make("a/b", {}, 1)


# --------------------------------------------------------------------------- pure functions


def test_wilson_interval_against_hand_values():
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    lo, hi = wilson_interval(0, 20)
    assert lo == pytest.approx(0.0, abs=1e-12) and hi == pytest.approx(0.1611, abs=1e-4)


def test_power_table_from_hand_built_results(tiny_plan):
    d = tiny_plan.designs[0]
    base = {"subjects": d.subjects, "sessions": 2, "judges": 2, "items": 2, "reliability": None}
    rows = []
    for rep, (sup, lo, hi, rsup) in enumerate(
        [(True, 0.1, 0.5, True), (False, -0.1, 0.5, True), (True, 0.2, 0.4, False)]
    ):
        rows.append(
            {
                **base,
                "association": 0.5,
                "replication": rep + 1,
                "converged": rep == 0,
                "association_supported": sup,
                "association_hdi_low": lo,
                "association_hdi_high": hi,
                "association_mean": 0.3,
                "reliability_supported": rsup,
                "reliability_median": 0.6 + rep / 10,
                "reliability_hdi_low": 0.5,
                "reliability_hdi_high": 0.9,
                "reliability_true": 0.7,
            }
        )
    power = power_table(pd.DataFrame(rows), tiny_plan)
    assert len(power) == len(tiny_plan.designs) * len(tiny_plan.effects)
    row = power[(power["subjects"] == d.subjects) & (power["association"] == 0.5)].iloc[0]
    assert row["done"] == 3 and row["replications"] == 3
    assert row["association_power"] == pytest.approx(2 / 3)
    lo, hi = wilson_interval(2, 3)
    assert row["association_power_low"] == pytest.approx(lo)
    assert row["association_width"] == pytest.approx(np.mean([0.4, 0.6, 0.2]))
    assert row["reliability_power"] == pytest.approx(2 / 3)
    assert row["reliability_reached"] == pytest.approx(0.7)
    assert row["converged_share"] == pytest.approx(1 / 3)
    empty = power[power["done"] == 0]
    assert len(empty) == len(power) - 1 and empty["association_power"].isna().all()


def test_reliability_effect_sets_the_true_coefficient():
    from caltars_bayes.analysis.reliability import true_reliability

    doc = tiny_doc()
    doc["effects"] = {"reliability": [0.75]}
    doc["decisions"] = {"reliability": {"threshold": 0.7, "level": "treatment", "judges": 1}}
    doc["simulation"] = {"sd_log_loading": 0.0}  # loadings exactly 1: the solve is exact
    plan = plan_from_dict(doc, "<rel>")
    design = plan.designs[0]
    sd = sd_alliance_for(plan, design, 0.75)
    assert 0 < sd < 50
    task = plan.tasks()[0]
    trial = simulate_replication(plan, task)
    assert float(trial.truth["sd_alliance"][0]) == pytest.approx(sd)
    tr = true_reliability(trial.truth, trial.instrument, k_judges=2, routes=("latent",))
    sel = tr[
        (tr["level"] == "treatment")
        & (tr["judges"] == 1)
        & (tr["coefficient"] == "agreement")
        & (tr["generalizes_over"] == "judges")
    ]
    np.testing.assert_allclose(sel["value"], 0.75, atol=1e-8)


def test_classical_decisions_have_the_right_error_rates():
    """Zero effect: one-sided false positives near 5%; r = .6 with 40 subjects: high power."""
    doc = tiny_doc()
    doc["plan"]["replications"] = 40
    doc["design"] = {"subjects": 40, "sessions": 2, "judges": 2, "items": 2}
    plan = plan_from_dict(doc, "<rates>")
    res = pd.concat([run_replication(t, plan) for t in plan.tasks()], ignore_index=True)
    zero = res[res["association"] == 0.0]["association_supported"].mean()
    strong = res[res["association"] == 0.5]["association_supported"].mean()
    assert zero <= 0.15  # binomial(40, .05): P(more than 6 hits) < 0.005
    assert strong >= 0.6
    # the decision is the rule applied to the reported probability
    assert (res["association_supported"] == (res["association_p_direction"] >= 0.95)).all()


# --------------------------------------------------------------------------- Dask mechanics


def _strip(df: pd.DataFrame) -> pd.DataFrame:
    return df.drop(columns=["seconds"]).reset_index(drop=True)


def test_distributed_equals_serial(tiny_plan, dask_client, tmp_path):
    serial = run_plan(tiny_plan, tmp_path / "serial", scheduler="serial", progress=False)
    dist = run_plan(tiny_plan, tmp_path / "dist", scheduler=dask_client, progress=False)
    assert len(serial.results) == len(tiny_plan.tasks())
    pd.testing.assert_frame_equal(_strip(serial.results), _strip(dist.results))
    a = (tmp_path / "serial" / "power.csv").read_text()
    assert a == (tmp_path / "dist" / "power.csv").read_text()
    for name in ("power.png", "power.svg", "results.csv", "plan.json"):
        assert (tmp_path / "dist" / name).is_file()


def kill_once_replication(task: Task, plan, marker: str, victim: str) -> pd.DataFrame:
    """run_replication, but the first attempt at ``victim`` kills its worker process."""
    if task.id == victim and not Path(marker).exists():
        Path(marker).write_text(f"killed worker {os.getpid()}\n")
        os._exit(1)
    with open(Path(marker).with_suffix(".log"), "a") as log:
        log.write(task.id + "\n")
    return run_replication(task, plan)


def test_killed_worker_loses_and_duplicates_nothing(tiny_plan, dask_client, tmp_path):
    tasks = tiny_plan.tasks()
    victim = tasks[2].id
    marker = tmp_path / "marker.txt"
    fn = functools.partial(kill_once_replication, plan=tiny_plan, marker=str(marker), victim=victim)
    address = dask_client.scheduler.address  # connect as to a remote scheduler
    assert address.startswith("tcp://")
    run = run_tasks(tasks, fn, tmp_path / "run", scheduler=address, progress=False)
    assert marker.read_text().startswith("killed worker")  # the fault was injected
    assert not run.failed
    got = collect_results(tasks, tmp_path / "run")
    assert sorted(got["task"]) == sorted(t.id for t in tasks)  # each exactly once
    files = sorted(p.name for p in (tmp_path / "run" / "tasks").iterdir())
    assert files == sorted(f"{t.id}.csv" for t in tasks)
    ref = run_plan(tiny_plan, tmp_path / "ref", scheduler="serial", progress=False)
    pd.testing.assert_frame_equal(_strip(got), _strip(ref.results))


def test_own_local_cluster_and_bad_scheduler(tiny_plan, tmp_path):
    tasks = tiny_plan.tasks()[:2]
    fn = functools.partial(run_replication, plan=tiny_plan)
    lines = []
    run = run_tasks(tasks, fn, tmp_path, scheduler=None, workers=1, progress=lines.append)
    assert sorted(run.done) == sorted(t.id for t in tasks)
    assert len(lines) == 2 and lines[-1].startswith("[2/2]")
    with pytest.raises(CaltarsError, match="--scheduler"):
        run_tasks(tiny_plan.tasks()[2:3], fn, tmp_path, scheduler="localhost:8786")


class Interrupt(KeyboardInterrupt):
    pass


def test_rerun_after_interruption_does_only_the_missing_tasks(tiny_plan, tmp_path):
    out = tmp_path / "plan"
    seen = []

    def stop_after_four(line: str) -> None:
        seen.append(line)
        if sum("done" in s for s in seen) == 4:
            raise Interrupt

    with pytest.raises(Interrupt):
        run_plan(tiny_plan, out, scheduler="serial", progress=stop_after_four)
    done = sorted(p.stem for p in (out / "tasks").glob("*.csv"))
    assert len(done) == 4
    again = run_plan(tiny_plan, out, scheduler="serial", progress=False)
    assert sorted(again.run.skipped) == done
    assert len(again.run.done) == len(tiny_plan.tasks()) - 4
    ref = run_plan(tiny_plan, tmp_path / "ref", scheduler="serial", progress=False)
    pd.testing.assert_frame_equal(_strip(again.results), _strip(ref.results))
    # a third run does nothing
    third = run_plan(tiny_plan, out, scheduler="serial", progress=False)
    assert third.run.done == [] and len(third.run.skipped) == len(tiny_plan.tasks())
    # more replications: only the new ones run, the old results are kept
    more = dataclasses.replace(tiny_plan, replications=4)
    fourth = run_plan(more, out, scheduler="serial", progress=False)
    assert sorted(fourth.run.done) == sorted(t.id for t in more.tasks() if "rep0004" in t.id)
    assert set(fourth.power["done"]) == {4}


def test_other_plan_in_same_folder_needs_force(tiny_plan, tmp_path):
    out = tmp_path / "plan"
    run_plan(tiny_plan, out, scheduler="serial", progress=False)
    other = dataclasses.replace(tiny_plan, seed=99)
    with pytest.raises(CaltarsError, match="different plan"):
        run_plan(other, out, scheduler="serial", progress=False)
    res = run_plan(other, out, scheduler="serial", progress=False, force=True)
    assert len(res.run.done) == len(other.tasks())  # started over
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("mine")
    with pytest.raises(CaltarsError, match="no plan results"):
        run_plan(tiny_plan, tmp_path / "junk", scheduler="serial", progress=False)


def test_failing_task_is_reported_and_retried(tiny_plan, tmp_path):
    def boom(task):
        raise RuntimeError("no luck")

    run = run_tasks(tiny_plan.tasks()[:2], boom, tmp_path, scheduler="serial", progress=False)
    assert set(run.failed.values()) == {"RuntimeError: no luck"}
    errs = sorted((tmp_path / "tasks").glob("*.error.txt"))
    assert len(errs) == 2 and "RuntimeError" in errs[0].read_text()
    ok = functools.partial(run_replication, plan=tiny_plan)
    run = run_tasks(tiny_plan.tasks()[:2], ok, tmp_path, scheduler="serial", progress=False)
    assert len(run.done) == 2 and not list((tmp_path / "tasks").glob("*.error.txt"))


def test_cli_plan_smoke_and_resume(tmp_path, capsys):
    path = tmp_path / "p.toml"
    path.write_text(_to_toml(tiny_doc()))
    out = tmp_path / "out"
    rc = main(["plan", str(path), "--out", str(out), "--scheduler", "serial"])
    text = capsys.readouterr()
    assert rc == 0, text.err
    assert "association_power" in text.out and "12 task(s) run" in text.out
    power = pd.read_csv(out / "power.csv")
    assert len(power) == 4 and set(power["done"]) == {3}
    rc = main(["plan", str(path), "--out", str(out), "--scheduler", "serial", "--quiet"])
    assert rc == 0 and "0 task(s) run, 12 already done" in capsys.readouterr().out


# --------------------------------------------------------------------------- NUTS end to end


@pytest.mark.slow
def test_nuts_replication_end_to_end_is_deterministic():
    doc = tiny_doc(draws=60, tune=60, chains=2)
    doc["analysis"]["method"] = "nuts"
    doc["design"] = {"subjects": 10, "sessions": 2, "judges": 2, "items": 2}
    doc["effects"] = {"association": [0.6]}
    plan = plan_from_dict(doc, "<nuts>")
    task = plan.tasks()[0]
    a = run_replication(task, plan)
    b = run_replication(task, plan)
    pd.testing.assert_frame_equal(a, b)  # same seeds, same numbers
    row = a.iloc[0]
    assert row["method"] == "nuts" and not row["converged"]  # 60 draws: never "converged"
    assert 0 <= row["association_p_direction"] <= 1
    assert row["association_supported"] == (row["association_p_direction"] >= 0.95)
    assert row["association_hdi_low"] < row["association_mean"] < row["association_hdi_high"]
    assert 0 < row["reliability_hdi_low"] < row["reliability_median"] < row["reliability_hdi_high"]
    assert 0 < row["reliability_true"] < 1
    assert row["reliability_supported"] == (row["reliability_p"] >= 0.9)
    power = power_table(a, plan)
    assert "NUTS fits converged" in power.attrs["diagnostics"]


def test_serial_run_reports_done_total_failed_and_eta(tmp_path, capsys):
    """Progress of a run: done/total, failed and ETA per task; nothing with progress=False."""
    tasks = [Task.make(f"t{i}", {"i": i}, seed=1) for i in range(3)]
    lines: list[str] = []
    run = run_tasks(tasks, _maybe_fail, tmp_path / "a", scheduler="serial", progress=lines.append)
    assert len(run.done) == 2 and list(run.failed) == ["t1"]
    assert [line[:5] for line in lines] == ["[1/3]", "[2/3]", "[3/3]"]
    assert "1 failed" in lines[1] and "ETA" in lines[0]
    assert lines[1].endswith("t1: failed: ValueError: boom")
    run_tasks(tasks, _maybe_fail, tmp_path / "b", scheduler="serial", label="plan")
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("[0/3] plan") and err[-1].startswith("[3/3] plan, 1 failed")
    run_tasks(tasks, _maybe_fail, tmp_path / "c", scheduler="serial", progress=False)
    assert capsys.readouterr().err == ""


def _maybe_fail(task):
    if task.params["i"] == 1:
        raise ValueError("boom")
    return pd.DataFrame({"i": [task.params["i"]]})
