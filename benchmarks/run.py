"""Benchmark the joint model on simulated trials (``make bench``).

Four sections, each selectable with ``--only`` (comma-separated):

``founding``
    The founding design (52 subjects x 4 sessions x 3 judges, all 30 CALTARS
    items, subject and session covariates), 4 chains x (1000 tune + 1000
    draws): build and compile seconds, sampling seconds, leapfrog steps per
    draw, min bulk ESS over every reported quantity, ESS per second,
    divergences, peak memory.
``scaling``
    The same at 1x, 3x and 10x the subjects, with the package's defaults (from
    400 sessions and 2,000 sessions x scales, 3x and 10x here, the settings for
    large designs: the joint subject/session form, data-based starts,
    trajectories capped at 2.7; the table says which applied): ratings,
    milliseconds per gradient (measured: the numba-compiled log density and
    gradient, one core) and per 1,000 ratings, leapfrog steps per draw, seconds
    per effective draw, peak memory.
    Cost per rating is flat when the per-1,000-ratings column is.
``single``
    One CALTARS scale of the anchor benchmark's trial (``single_scale.py``):
    the brms-equivalent model and this package's model, with nutpie, beside
    the quoted brms / hand-written PyMC numbers.
``approx``
    Pathfinder and ADVI against NUTS on the founding design: error of the
    posterior means in posterior-SD units and the ratio of 95% HDI widths
    (:func:`caltars_bayes.inference.approx.compare_posteriors`).
Every case runs in its own process (clean peak memory). Raw results are kept
in a JSON file beside the markdown (``results.json``), so rerunning one
section keeps the others; the markdown is regenerated from all of them.

    python benchmarks/run.py                          # everything (make bench)
    python benchmarks/run.py --only scaling,approx    # rerun two sections
    python benchmarks/run.py --tiny --out F.md        # a seconds-long smoke run (CI)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SECTIONS = ("founding", "scaling", "single", "approx")

#: name, subjects, sessions, judges, chains, tune, draws, sampler, covariates
#: (tune None: the package's default for the design, ``sampling.default_tune``)
DEFAULT_CASES = [
    ("founding 52x4x3 + covariates, nutpie (numba)", 52, 4, 3, 4, None, 1000, "nutpie", True),
]
TINY_CASES = [("tiny 6x2x2", 6, 2, 2, 2, 20, 20, "nutpie", True)]
#: subject multiples of the founding case for the scaling table
SCALING = (1, 3, 10)
TINY_SCALING = (1, 2)
#: the smoke run's thresholds for large designs (``model.LARGE_DESIGN_SESSIONS``
#: and ``model.LARGE_DESIGN_SESSION_SCALES``): its 2x row (24 sessions x 5
#: scales) then runs with the settings for large designs
TINY_LARGE_DESIGN = {"sessions": 20, "session_scales": 100}
#: the single-scale benchmark: subjects, chains, tune, draws
SINGLE = (52, 4, 1000, 1000)
TINY_SINGLE = (4, 2, 20, 20)
#: approximate methods compared with NUTS, and their options
APPROX_METHODS = ("advi", "pathfinder")
#: the smoke run compares one method (the code path is the same for each)
TINY_APPROX_METHODS = ("advi",)
TINY_APPROX_OPTIONS = {"pathfinder": {"paths": 2, "maxiter": 60}, "advi": {"iterations": 800}}

#: the issue's targets (2-core machine)
TARGET_FOUNDING_S = 60.0
TARGET_FIRST_S = 120.0  # issue 3's first target; 60 s is issue 9's
TARGET_10X_S = 600.0
TARGET_10X_MB = 4096.0
TARGET_ESS = 400.0


# --------------------------------------------------------------------------- children


def _simulate(subjects: int, sessions: int, judges: int, covariates: bool, seed: int):
    from caltars_bayes import (
        FOUNDING_SESSION_COVARIATES,
        FOUNDING_SUBJECT_COVARIATES,
        load_instrument,
        simulate_trial,
    )
    from caltars_bayes.spec.instrument import models_dir

    inst = load_instrument(models_dir() / "caltars.toml")
    trial = simulate_trial(
        inst,
        n_subjects=subjects,
        n_sessions=sessions,
        n_judges=judges,
        subject_covariates=FOUNDING_SUBJECT_COVARIATES if covariates else None,
        session_covariates=FOUNDING_SESSION_COVARIATES if covariates else None,
        seed=seed,
    )
    return trial.to_rating_data()


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_gradient(model, seconds: float = 2.0) -> tuple[float, str]:
    """Milliseconds per evaluation of the log density and its gradient, and the backend.

    One core; the backend is nutpie's (``CALTARS_BAYES_NUTPIE_BACKEND``, numba
    by default), so the number is the sampler's cost per leapfrog step.
    """
    import numpy as np
    import pytensor.tensor as pt
    from pymc.pytensorf import compile as pm_compile
    from pymc.pytensorf import join_nonshared_inputs

    start = model.initial_point()
    value_vars = list(model.value_vars)
    logp = model.logp(jacobian=True)
    grad = pt.concatenate([pt.grad(logp, v).ravel() for v in value_vars])
    outs, x = join_nonshared_inputs(start, [logp, grad], value_vars)
    backend = os.environ.get("CALTARS_BAYES_NUTPIE_BACKEND", "numba")
    fn = pm_compile([x], outs, mode="JAX" if backend == "jax" else "NUMBA")
    x0 = np.concatenate([np.ravel(start[v.name]) for v in value_vars])
    fn(x0)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or n < 5:
        fn(x0)
        n += 1
    return 1000 * (time.perf_counter() - t0) / n, backend


def run_case(
    subjects: int,
    sessions: int,
    judges: int,
    chains: int,
    tune: int | None,
    draws: int,
    sampler: str,
    seed: int,
    covariates: bool = False,
    measure_gradient: bool = False,
    summary_out: str | None = None,
    gradient_seconds: float = 2.0,
    options: dict[str, Any] | None = None,
    nuts: dict[str, Any] | None = None,
    large_design: dict[str, int] | None = None,
) -> dict:
    """Simulate, fit and measure one case (runs inside a child process).

    ``options`` replace the instrument's model options; ``nuts`` go to the sampler;
    ``large_design`` replaces the thresholds ``model.plan.LARGE_DESIGN_SESSIONS`` and
    ``model.plan.LARGE_DESIGN_SESSION_SCALES`` (smoke runs).
    """
    t0 = time.perf_counter()
    from dataclasses import replace

    from caltars_bayes import AllianceModel, fit_model
    from caltars_bayes.model import plan as model_module

    if large_design is not None:
        model_module.LARGE_DESIGN_SESSIONS = large_design["sessions"]
        model_module.LARGE_DESIGN_SESSION_SCALES = large_design["session_scales"]

    t_import = time.perf_counter() - t0
    data = _simulate(subjects, sessions, judges, covariates, seed)
    model_options = replace(data.instrument.model, **(options or {}))
    fit = fit_model(
        data,
        model=AllianceModel(data, options=model_options, sampler=sampler),
        nuts=dict(nuts or {}),
        draws=draws,
        tune=tune,
        chains=chains,
        sampler=sampler,
        random_seed=seed,
        progressbar=False,
    )
    peak_mb = _peak_mb()  # before anything else is compiled
    tune = fit.record.tune  # the package's default when None was given
    d = fit.diagnostics
    t = fit.record.timings
    ss = fit.sample_stats
    steps = float(ss["n_steps"].mean()) if ss is not None and "n_steps" in ss else float("nan")
    # sample_stats keep only the draws; nutpie's tuning steps are counted apart
    # (other samplers: assumed as many per iteration as when sampling)
    tune_steps = t.get("tune_steps", steps * tune * chains)
    grads = steps * draws * chains + tune_steps
    out = {
        "ratings": data.n_ratings,
        "subjects": subjects,
        "tune": tune,
        "stored_values": int(sum(v.size for v in fit.posterior.isel(chain=0, draw=0).values())),
        "import_s": t_import,
        "build_s": t["build_s"],
        "compile_s": t["compile_s"],
        "sampling_s": t["sampling_s"],
        # deterministics computed after sampling (large models; 0 when nutpie stored them)
        "deterministics_s": t.get("deterministics_s", 0.0),
        "total_s": t["total_s"],
        "steps_per_draw": steps,
        "tune_steps_per_iteration": tune_steps / max(tune * chains, 1),
        "ms_per_gradient_core": 1000
        * t["sampling_s"]
        * min(chains, os.cpu_count() or 1)
        / max(grads, 1),
        "min_ess_bulk": d.min_ess_bulk,
        "min_ess_tail": d.min_ess_tail,
        "ess_per_s": d.min_ess_bulk / t["sampling_s"],
        "s_per_effective_draw": t["sampling_s"] / d.min_ess_bulk,
        "max_rhat": d.max_rhat,
        "divergences": d.divergences,
        "converged": d.converged,
        "verdict": d.banner(),  # why not converged, when it is not
        "max_treedepth_hits": d.treedepth_hits,
        "joint_subject_sessions": fit.plan.joint_subject_sessions,
        "large_design": fit.plan.large_design,
        "short_trajectory_cap": fit.plan.short_trajectory_cap,
        "nuts": fit.record.nuts,
        "start": fit.record.start,
        # the cap nutpie ran with (given or the package's default; None: plain NUTS)
        "integration_time": fit.record.trajectory_cap(),
        "peak_memory_mb": peak_mb,
    }
    if summary_out:
        fit.summary().to_csv(summary_out, index=False)
    if measure_gradient:
        out["ms_per_gradient"], out["gradient_backend"] = time_gradient(
            AllianceModel(data, options=model_options).model, gradient_seconds
        )
    return out


def run_single(subjects: int, chains: int, tune: int, draws: int) -> dict:
    """The single-scale benchmark: brms-equivalent model and this package's, on scale 1."""
    sys.path.insert(0, str(HERE))
    from single_scale import fit_brms_equivalent, fit_caltars_single, simulate_bench_trial

    df = simulate_bench_trial(subjects)
    scale1 = df[df["scale"] == 1].reset_index(drop=True)
    return {
        "brms_equivalent": fit_brms_equivalent(scale1, chains=chains, tune=tune, draws=draws),
        "caltars_single": fit_caltars_single(df, chains=chains, tune=tune, draws=draws),
    }


def run_approx_case(
    subjects: int,
    sessions: int,
    judges: int,
    chains: int,
    tune: int,
    draws: int,
    seed: int,
    methods: list[str],
    options: dict[str, dict[str, Any]],
    reference: dict[str, Any] | None,
) -> dict:
    """Approximate fits against NUTS on the same simulated trial (inside a child process).

    ``reference`` (from the founding case of the same run) holds the NUTS
    summary CSV path and total seconds; without it NUTS is run here.
    """
    import pandas as pd

    from caltars_bayes import fit_model
    from caltars_bayes.inference.approx import compare_posteriors

    data = _simulate(subjects, sessions, judges, True, seed)
    if reference and Path(reference["summary"]).is_file():
        ref = pd.read_csv(reference["summary"])
        nuts_s = float(reference["total_s"])
    else:
        t0 = time.perf_counter()
        fit = fit_model(
            data, draws=draws, tune=tune, chains=chains, random_seed=seed, progressbar=False
        )
        nuts_s = time.perf_counter() - t0
        ref = fit.summary()
    out: dict[str, Any] = {"ratings": data.n_ratings, "nuts_total_s": nuts_s, "methods": {}}
    for method in methods:
        t0 = time.perf_counter()
        fit = fit_model(
            data,
            draws=1000,
            method=method,
            random_seed=seed,
            approx=options.get(method),
            progressbar=False,
        )
        total = time.perf_counter() - t0
        cmp = compare_posteriors(ref, fit.summary())
        info = fit.record.approximation
        out["methods"][method] = {
            "total_s": total,
            "compile_s": fit.record.timings["compile_s"],
            "pareto_k": info["pareto_k"],
            "info": {
                k: v
                for k, v in info.items()
                if k
                in (
                    "iterations",
                    "paths",
                    "stopped_early",
                    "gradient_evaluations",
                    "distinct_draws",
                )
            },
            "verdict": fit.diagnostics.verdict,
            "converged": fit.diagnostics.converged,
            "comparison": cmp.to_dict(orient="records"),
        }
    return out


CHILDREN = {"case": run_case, "single": run_single, "approx": run_approx_case}


def _child(kind: str, **kwargs: Any) -> dict:
    """Run one measurement in a fresh Python process; return its JSON result."""
    res = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps({"kind": kind, "kwargs": kwargs})],
        capture_output=True,
        text=True,
        check=False,
    )
    if res.returncode != 0:
        print(res.stderr[-3000:], file=sys.stderr)
        raise RuntimeError(f"benchmark child {kind} failed")
    return json.loads(res.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- sections


def _case_kwargs(spec: tuple, seed: int) -> dict[str, Any]:
    _, subjects, sessions, judges, chains, tune, draws, sampler, cov = spec
    return {
        "subjects": subjects,
        "sessions": sessions,
        "judges": judges,
        "chains": chains,
        "tune": tune,
        "draws": draws,
        "sampler": sampler,
        "seed": seed,
        "covariates": cov,
    }


def _measure_case(spec: tuple, seed: int, tiny: bool, **extra: Any) -> dict:
    """Fit one case in a child process, timing its gradient too; print and return it."""
    out = _child(
        "case",
        **_case_kwargs(spec, seed),
        measure_gradient=True,
        gradient_seconds=0.3 if tiny else 2.0,
        **extra,
    )
    print(json.dumps(out, indent=1), flush=True)
    return out


def section_founding(tiny: bool, seed: int, work: Path) -> dict:
    rows = []
    for spec in TINY_CASES if tiny else DEFAULT_CASES:
        print(f"running {spec[0]} ...", flush=True)
        summary = work / f"nuts_summary_{len(rows)}.csv"
        out = _measure_case(spec, seed, tiny, summary_out=str(summary))
        rows.append(
            {"name": spec[0], "spec": list(spec[1:]), "result": out, "summary": str(summary)}
        )
    return {"rows": rows}


def section_scaling(
    tiny: bool,
    seed: int,
    founding: dict | None,
    multiples: tuple[int, ...] | None = None,
    on_row: Any = None,
) -> dict:
    """1x, 3x, 10x subjects (or ``multiples``); 1x is the founding section's run when
    that is the same case (run in this invocation, or kept in the results file).
    ``on_row`` is called with the section so far after every row (to save it)."""
    base = (TINY_CASES if tiny else DEFAULT_CASES)[0]
    rows = []
    for mult in multiples or (TINY_SCALING if tiny else SCALING):
        spec = (f"{mult}x", base[1] * mult, *base[2:])
        same = founding and founding["rows"] and founding["rows"][0]["spec"] == list(spec[1:])
        if mult == 1 and same:
            out = founding["rows"][0]["result"]
            print("scaling 1x: the founding section's run", flush=True)
        else:
            print(f"running scaling {mult}x ({spec[1]} subjects) ...", flush=True)
            extra = {"large_design": TINY_LARGE_DESIGN} if tiny else {}
            out = _measure_case(spec, seed, tiny, **extra)
        rows.append({"multiple": mult, "spec": list(spec[1:]), "result": out})
        if on_row is not None:
            on_row({"rows": rows})
    return {"rows": rows}


def section_single(tiny: bool) -> dict:
    subjects, chains, tune, draws = TINY_SINGLE if tiny else SINGLE
    print(f"running single-scale benchmark ({subjects} subjects) ...", flush=True)
    out = _child("single", subjects=subjects, chains=chains, tune=tune, draws=draws)
    print(json.dumps(out, indent=1), flush=True)
    return {"subjects": subjects, "chains": chains, "tune": tune, "draws": draws, **out}


def section_approx(tiny: bool, seed: int, founding: dict | None) -> dict:
    spec = (TINY_CASES if tiny else DEFAULT_CASES)[0]
    kw = _case_kwargs(spec, seed)
    reference = None
    if founding and founding.get("rows") and founding["rows"][0]["spec"] == list(spec[1:]):
        row = founding["rows"][0]
        reference = {"summary": row["summary"], "total_s": row["result"]["total_s"]}
    print(f"running approximate methods on {spec[0]} ...", flush=True)
    out = _child(
        "approx",
        subjects=kw["subjects"],
        sessions=kw["sessions"],
        judges=kw["judges"],
        chains=kw["chains"],
        tune=kw["tune"],
        draws=kw["draws"],
        seed=seed,
        methods=list(TINY_APPROX_METHODS if tiny else APPROX_METHODS),
        options=TINY_APPROX_OPTIONS if tiny else {},
        reference=reference,
    )
    print(json.dumps(out, indent=1), flush=True)
    return {"case": spec[0], **out}


# --------------------------------------------------------------------------- report


def _versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for p in ("pymc", "pytensor", "nutpie", "numpy", "arviz", "jax", "numpyro"):
        try:
            out.append(f"{p} {version(p)}")
        except PackageNotFoundError:
            pass
    return ", ".join(out)


def _machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {cpu}, {platform.system()} {platform.machine()}"


def _stamp() -> dict[str, str]:
    return {
        "date": f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "machine": _machine(),
        "versions": _versions(),
    }


def _f(v: Any, fmt: str = ".1f") -> str:
    try:
        return format(float(v), fmt)
    except (TypeError, ValueError):
        return "n/a"


def _met(ok: bool) -> str:
    return "**met**" if ok else "**not met**"


def _tune_steps(o: dict) -> str:
    """Leapfrog steps per tuning iteration (older result files lack it)."""
    v = o.get("tune_steps_per_iteration")
    return "n/a" if v is None else f"{v:.1f}"


def _settings(o: dict) -> str:
    """Which parameterisation, start and trajectory cap a run had (n/a: older files)."""
    if "large_design" not in o:
        return "n/a"
    form = "joint form" if o["joint_subject_sessions"] else "default form"
    t = o["integration_time"]
    tune = f", tune {o['tune']}" if "tune" in o else ""
    return f"{form}, {o['start']} start, t = {'none' if t is None else t}{tune}"


def md_founding(sec: dict) -> list[str]:
    lines = [
        "| case | ratings | values/draw | chains x (tune+draws) | build s | compile s | sampling s "
        "| total s | tune steps/it | steps/draw | ms/grad (est.) | min bulk ESS | ESS/s "
        "| max R-hat | divergences | converged | peak MB |",
        "|" + "---|" * 17,
    ]
    for row in sec["rows"]:
        o = row["result"]
        _, _, _, chains, tune, draws, _, _ = row["spec"]
        tune = o.get("tune", tune)  # older files: the spec's
        lines.append(
            f"| {row['name']} | {o['ratings']} | {o['stored_values']} "
            f"| {chains} x ({tune}+{draws}) "
            f"| {o['build_s']:.1f} | {o['compile_s']:.1f} | {o['sampling_s']:.1f} "
            f"| {o['total_s']:.1f} | {_tune_steps(o)} | {o['steps_per_draw']:.1f} "
            f"| {o['ms_per_gradient_core']:.2f} "
            f"| {o['min_ess_bulk']:.0f} | {o['ess_per_s']:.1f} | {o['max_rhat']:.3f} "
            f"| {o['divergences']} | {o['converged']} | {o['peak_memory_mb']:.0f} |"
        )
    return lines


def md_scaling(sec: dict) -> list[str]:
    rows = sec["rows"]
    base = rows[0]["result"]
    base_per_k = base["ms_per_gradient"] / (base["ratings"] / 1000)
    lines = [
        f"`ms/grad (measured)`: one evaluation of the log density and its gradient, "
        f"{base.get('gradient_backend', 'numba')}-compiled, one core, at the initial point; "
        "`s per effective draw`: sampling seconds / min bulk ESS; `settings`: the "
        "package's defaults for the design (from `model.LARGE_DESIGN_SESSIONS` sessions the "
        "joint form and data start, from `model.LARGE_DESIGN_SESSION_SCALES` sessions x "
        'scales also t = 2.7; docs/model.md, "Large designs"; tune: warmup iterations per '
        'chain, 500 from 50,000 ratings, docs/model.md, "Warmup length").',
        "",
        "| subjects | ratings | settings | ms/grad (measured) | ms/grad per 1k ratings "
        "| relative to 1x | ms/grad in sampler (est.) | tune steps/it | steps/draw "
        "| sampling s | total s | min bulk ESS | s per effective draw | divergences "
        "| converged | peak MB |",
        "|" + "---|" * 16,
    ]
    for row in rows:
        o = row["result"]
        per_k = o["ms_per_gradient"] / (o["ratings"] / 1000)
        lines.append(
            f"| {o['subjects']} ({row['multiple']}x) | {o['ratings']} | {_settings(o)} "
            f"| {o['ms_per_gradient']:.2f} "
            f"| {per_k:.3f} | {per_k / base_per_k:.2f} | {o['ms_per_gradient_core']:.2f} "
            f"| {_tune_steps(o)} | {o['steps_per_draw']:.1f} | {o['sampling_s']:.1f} "
            f"| {o['total_s']:.1f} "
            f"| {o['min_ess_bulk']:.0f} | {o['s_per_effective_draw']:.3f} | {o['divergences']} "
            f"| {o['converged']} | {o['peak_memory_mb']:.0f} |"
        )
    return lines


def md_single(sec: dict) -> list[str]:
    sys.path.insert(0, str(HERE))
    from single_scale import BRMS_REFERENCE, PYMC_REFERENCE

    brms_total = BRMS_REFERENCE["total_s"]
    brms_ess = BRMS_REFERENCE["ess_per_s"]
    lines = [
        f"{sec['subjects']} subjects, one scale (6 items); {sec['chains']} chains x "
        f"({sec['tune']}+{sec['draws']}), nutpie. The brms and hand-written PyMC rows are quoted "
        "from `/work/shared/bench/results.md` (52 subjects, 3,744 ratings, 2 cores); the ratio "
        "columns divide by them.",
        "",
        "| model | ratings | compile s | sampling s | total s | steps/draw | min bulk ESS | ESS/s "
        "| max R-hat | divergences | brms total s / this | this ESS/s / brms |",
        "|" + "---|" * 12,
        f"| {BRMS_REFERENCE['tool']} (quoted) | 3744 | {BRMS_REFERENCE['compile_s']} "
        f"| {BRMS_REFERENCE['sampling_s']} | {brms_total} | n/a "
        f"| {BRMS_REFERENCE['min_ess_bulk']:.0f} "
        f"| {brms_ess} | 1.005 | {BRMS_REFERENCE['divergences']} | 1.00 | 1.00 |",
    ]
    for tool, ref in PYMC_REFERENCE.items():
        lines.append(
            f"| {tool}, hand-written (quoted) | 3744 | | | {ref['total_s']} | | | "
            f"{ref['ess_per_s']} | | {ref['divergences']} | {brms_total / ref['total_s']:.1f} "
            f"| {ref['ess_per_s'] / brms_ess:.1f} |"
        )
    labels = {
        "brms_equivalent": "brms-equivalent model, PyMC + nutpie (this run)",
        "caltars_single": "caltars_bayes joint model, one scale, nutpie (this run)",
    }
    for key, label in labels.items():
        o = sec[key]
        lines.append(
            f"| {label} | {o['ratings']} | {o['compile_s']:.1f} | {o['sampling_s']:.1f} "
            f"| {o['total_s']:.1f} | {o['steps_per_draw']:.1f} | {o['min_ess_bulk']:.0f} "
            f"| {o['ess_per_s']:.1f} | {o['max_rhat']:.3f} | {o['divergences']} "
            f"| {brms_total / o['total_s']:.1f} | {o['ess_per_s'] / brms_ess:.1f} |"
        )
    return lines


def md_approx(sec: dict) -> list[str]:
    lines = [
        f"{sec['case']} ({sec['ratings']} ratings); NUTS reference: {sec['nuts_total_s']:.1f} s "
        "total. Errors are over every reported quantity (summary rows), `theta` (subject "
        "scores) and the scale-level SDs and correlations (`sd_*`, `factor_corr`, "
        "`*association`): mean |approximate mean - NUTS mean| / NUTS sd (and its 90th "
        "percentile), and the ratio of 95% HDI widths, approximate / NUTS (median, 10th-90th "
        "percentile). Every approximate fit is labelled APPROXIMATE (`converged` False).",
        "",
        "| method | total s | speed-up vs NUTS | Pareto k-hat | group | quantities "
        "| mean abs error (sd units) | p90 error | width ratio median | width ratio p10-p90 |",
        "|" + "---|" * 10,
    ]
    for method, m in sec["methods"].items():
        for i, c in enumerate(m["comparison"]):
            head = (
                f"| {method} | {m['total_s']:.1f} | {sec['nuts_total_s'] / m['total_s']:.1f}x "
                f"| {m['pareto_k']:.2f} "
                if i == 0
                else "| | | | "
            )
            lines.append(
                head + f"| {c['group']} | {c['n']} | {_f(c['mean_abs_error_sd'], '.2f')} "
                f"| {_f(c['p90_abs_error_sd'], '.2f')} | {_f(c['width_ratio_median'], '.2f')} "
                f"| {_f(c['width_ratio_p10'], '.2f')}-{_f(c['width_ratio_p90'], '.2f')} |"
            )
    return lines


def md_targets(res: dict) -> list[str]:
    lines = ["| target | measured | verdict |", "|---|---|---|"]
    fnd = res.get("founding", {}).get("rows")
    if fnd:
        o = fnd[0]["result"]
        ok_first = o["total_s"] <= TARGET_FIRST_S and o["divergences"] == 0 and o["converged"]
        lines.append(
            f"| founding design <= {TARGET_FIRST_S:.0f} s wall with every diagnostic passing "
            f"| {o['total_s']:.1f} s, converged {o['converged']} | {_met(ok_first)} |"
        )
        lines.append(
            f"| founding design <= {TARGET_FOUNDING_S:.0f} s wall incl. build and compile "
            f"| {o['total_s']:.1f} s | {_met(o['total_s'] <= TARGET_FOUNDING_S)} "
            f"({o['total_s'] / TARGET_FOUNDING_S:.1f}x the target) |"
        )
        lines.append(
            f"| founding design: 0 divergences, min bulk ESS >= {TARGET_ESS:.0f} "
            f"| {o['divergences']} divergences, min bulk ESS {o['min_ess_bulk']:.0f} "
            f"| {_met(o['divergences'] == 0 and o['min_ess_bulk'] >= TARGET_ESS)} |"
        )
    sc = res.get("scaling", {}).get("rows")
    if sc:
        top = sc[-1]
        o = top["result"]
        if top["multiple"] >= 10:
            ok = (
                o["total_s"] <= TARGET_10X_S
                and o["peak_memory_mb"] <= TARGET_10X_MB
                and o["converged"]
                and o["divergences"] == 0
            )
            lines.append(
                f"| {top['multiple']}x subjects <= {TARGET_10X_S / 60:.0f} min, <= "
                f"{TARGET_10X_MB / 1024:.0f} GB, converged, package defaults "
                f"| {o['total_s']:.0f} s, {o['peak_memory_mb']:.0f} MB, {_settings(o)}, "
                f"min bulk ESS {o['min_ess_bulk']:.0f}, {o['divergences']} divergences, "
                f"converged {o['converged']} | {_met(ok)} |"
            )
        else:
            lines.append(
                f"| 10x subjects <= {TARGET_10X_S / 60:.0f} min, <= "
                f"{TARGET_10X_MB / 1024:.0f} GB | not run; largest run {top['multiple']}x: "
                f"{o['total_s']:.0f} s, {o['peak_memory_mb']:.0f} MB | **not measured** |"
            )
        b = sc[0]["result"]
        ratio = (o["ms_per_gradient"] / o["ratings"]) / (b["ms_per_gradient"] / b["ratings"])
        # the same inside the sampler (all chains at once), when the runs report it
        inside = None
        if o.get("ms_per_gradient_core") and b.get("ms_per_gradient_core"):
            inside = (o["ms_per_gradient_core"] / o["ratings"]) / (
                b["ms_per_gradient_core"] / b["ratings"]
            )
        ok = ratio <= 1.25 and (inside is None or inside <= 1.25)
        lines.append(
            f"| cost per rating flat from 1x to {top['multiple']}x (gradient ms per rating) "
            f"| {ratio:.2f}x the 1x cost for one gradient alone"
            + ("" if inside is None else f", {inside:.2f}x inside the sampler (est.)")
            + f" | {_met(ok)} (at most 1.25x the 1x cost) |"
        )
    sg = res.get("single")
    if sg:
        o = sg["caltars_single"]
        e = sg["brms_equivalent"]
        same = sg["subjects"] == 52 and (sg["chains"], sg["tune"], sg["draws"]) == (4, 1000, 1000)
        lines.append(
            "| single scale: ratio to brms (total time; ESS/s) "
            f"| package model {447.0 / o['total_s']:.1f}x faster, "
            f"{o['ess_per_s'] / 3.0:.1f}x ESS/s; brms-equivalent model "
            f"{447.0 / e['total_s']:.1f}x, {e['ess_per_s'] / 3.0:.1f}x "
            f"| {'stated' if same else 'not comparable: not the 52-subject, 4 x 2000 run'} |"
        )
    ap = res.get("approx")
    if ap:
        parts = []
        for method, m in ap["methods"].items():
            c = m["comparison"][0]
            parts.append(
                f"{method}: {_f(c['mean_abs_error_sd'], '.2f')} sd mean error, width ratio "
                f"{_f(c['width_ratio_median'], '.2f')}"
            )
        lines.append(f"| approximate mode: error vs NUTS stated | {'; '.join(parts)} | stated |")
    lines.append(
        "| GPU: 100x founding design <= 10 min on one H100 | not run here: "
        "`benchmarks/gpu_100x.py` (results in `benchmarks/gpu_results.md`) | see there |"
    )
    return lines


def render(res: dict, tiny: bool) -> str:
    now = _stamp()
    lines = [
        "# Benchmark results",
        "",
        f"Generated by `benchmarks/run.py`{' --tiny' if tiny else ''} on {now['date']}.",
        f"Machine: {now['machine']}. Versions: {now['versions']}.",
        "Simulated CALTARS trials (30 items, 5 scales, 1-5 ratings) with the founding subject and "
        "session covariates; `compile_s` includes graph rewriting and numba/JAX compilation "
        "(cold or warm cache as found); `ms/grad (est.)` is sampling seconds x cores / all "
        "leapfrog steps (tuning and sampling; `tune steps/it` are those per tuning iteration); "
        "ESS/s is min bulk ESS over every reported quantity per sampling second. Each section "
        "says when it was run (sections can be rerun alone with `--only`).",
        "",
        "## Targets",
        "",
        *md_targets(res),
    ]
    titles = {
        "founding": ("Founding design", md_founding),
        "scaling": ("Scaling: 1x, 3x, 10x subjects", md_scaling),
        "single": ("Single scale: the brms-equivalent benchmark", md_single),
        "approx": ("Approximate mode (APPROXIMATE, not MCMC) against NUTS", md_approx),
    }
    for key in SECTIONS:
        if key not in res:
            continue
        title, fn = titles[key]
        st = res[key]["stamp"]
        lines += [
            "",
            f"## {title}",
            "",
            f"Run {st['date']} on {st['machine']}; seed {res[key]['seed']}.",
            "",
            *fn(res[key]),
        ]
    first = HERE / "first_fit.md"  # written by benchmarks/first_fit.py
    if first.exists() and not tiny:
        lines += ["", first.read_text().rstrip(), "", "(From `benchmarks/first_fit.py`.)"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", default=str(HERE / "results.md"))
    ap.add_argument("--json", help="raw results (default: --out with .json)")
    ap.add_argument("--tiny", action="store_true", help="a seconds-long smoke run")
    ap.add_argument("--only", help=f"comma-separated sections: {','.join(SECTIONS)}")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--scaling",
        help=f"subject multiples for the scaling section (default {','.join(map(str, SCALING))})",
    )
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        job = json.loads(a.child)
        print(json.dumps(CHILDREN[job["kind"]](**job["kwargs"])))
        return 0
    only = [s.strip() for s in a.only.split(",")] if a.only else list(SECTIONS)
    bad = [s for s in only if s not in SECTIONS]
    if bad:
        ap.error(f"unknown section(s) {', '.join(bad)}; choose from {', '.join(SECTIONS)}")
    out = Path(a.out)
    raw = Path(a.json) if a.json else out.with_suffix(".json")
    res: dict[str, Any] = {}
    if raw.is_file():
        prev = json.loads(raw.read_text())
        if prev.get("tiny", False) == a.tiny:  # sections since removed are dropped
            res = {k: v for k, v in prev.get("sections", {}).items() if k in SECTIONS}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        try:
            for sec in only:
                if sec == "founding":
                    new = section_founding(a.tiny, a.seed, work)
                elif sec == "scaling":
                    fnd = res.get("founding")  # this run's, or the results file's
                    mults = tuple(int(m) for m in a.scaling.split(",")) if a.scaling else None

                    def partial(sec_so_far: dict) -> None:
                        stamp = {"seed": a.seed, "stamp": _stamp()}
                        _save({**res, "scaling": {**sec_so_far, **stamp}}, a.tiny, out, raw)

                    new = section_scaling(a.tiny, a.seed, fnd, mults, partial)
                elif sec == "single":
                    new = section_single(a.tiny)
                else:
                    fnd = res.get("founding") if "founding" in only else None
                    new = section_approx(a.tiny, a.seed, fnd)
                res[sec] = {**new, "seed": a.seed, "stamp": _stamp()}
                # saved after every section: a run stopped later keeps what it measured
                _save(res, a.tiny, out, raw)
        except RuntimeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    print(f"wrote {out} and {raw}")
    return 0


def _save(res: dict[str, Any], tiny: bool, out: Path, raw: Path) -> None:
    """Write the raw results and the markdown (each atomically: a temporary file, renamed)."""
    kept = json.loads(json.dumps(res))  # a copy: the approx section still needs the summary
    for row in kept.get("founding", {}).get("rows", []):
        row.pop("summary", None)  # a temporary file, gone after the run
    for path, text in (
        (raw, json.dumps({"tiny": tiny, "sections": kept}, indent=1) + "\n"),
        (out, render(kept, tiny)),
    ):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)


if __name__ == "__main__":
    sys.exit(main())
