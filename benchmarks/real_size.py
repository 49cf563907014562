"""Real-size designs at the package's defaults (issue 28, item 8).

Two shapes of real data sets, simulated with
:func:`caltars_bayes.model.simulate.simulate_trial` from the instrument specs
in ``benchmarks/specs/``:

``survey``
    A self-report survey: 2,800 respondents x 25 six-point items in 5 factors
    (``specs/survey25.toml``), one session, one "judge" (70,000 ratings).
``crossed``
    A sparse crossed design: 1,128 subjects, each rated once on one 5-point item
    (``specs/single_item.toml``) by 66 of 2,972 judges, 1.38% of those ratings
    deleted at random (about 73,400 ratings; a judge rates about 25 subjects).

Each shape is fitted in its own process by
:func:`caltars_bayes.report.workflows.fit_to_directory` (what ``caltars-bayes
fit`` does) at ``fit_model``'s defaults unless ``--draws``/``--chains`` are
given, and timed in parts: model build, compile, sampling, and everything
after sampling (the deterministics recomputed after nutpie, the convergence
verdict, and the fit directory: tables, figures, ``posterior.nc``). The
target: after sampling <= 15% of sampling.

    python benchmarks/real_size.py                          # both shapes, defaults
    python benchmarks/real_size.py --only survey --draws 200 --chains 2
    python benchmarks/real_size.py --tiny                   # a smoke test (1/10 size)
    python benchmarks/real_size.py --only survey --draws 200 --chains 2 --profile

``--profile`` runs cProfile over the fit directory's writing and prints the
functions that took the most time (cumulative and own), also saved as
``real_size_<shape>.prof`` beside the output. Results go to
``benchmarks/real_size.md`` and ``.json`` (``--out``); a ``--tiny`` run writes
to a temporary file unless ``--out`` is given.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SPECS = HERE / "specs"

#: the two shapes: spec file and simulate_trial keywords (full size)
SHAPES: dict[str, dict[str, Any]] = {
    "survey": {
        "spec": "survey25.toml",
        "design": {"n_subjects": 2800, "n_sessions": 1, "n_judges": 1},
        "what": "self-report survey: 2,800 x 25 six-point items, 5 factors, 1 session, 1 judge",
    },
    "crossed": {
        "spec": "single_item.toml",
        "design": {
            "n_subjects": 1128,
            "n_sessions": 1,
            "n_judges": 2972,
            "judges_per_session": 66,
            "missing_rate": 0.0138,
        },
        "what": "sparse crossed: 1,128 subjects x 1 item (5-point), 66 of 2,972 judges each",
    },
}


def _design(shape: str, tiny: bool) -> dict[str, Any]:
    """simulate_trial's design keywords (a tenth of the subjects and judges when tiny)."""
    d = dict(SHAPES[shape]["design"])
    if tiny:
        d["n_subjects"] = max(20, d["n_subjects"] // 10)
        if d["n_judges"] > 1:
            d["n_judges"] = max(20, d["n_judges"] // 10)
            d["judges_per_session"] = min(d["judges_per_session"], d["n_judges"] // 2)
    return d


def _load_average() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def run_shape(
    shape: str, tiny: bool, seed: int, fit_kwargs: dict[str, Any], profile: str | None
) -> dict[str, Any]:
    """Simulate one shape and write its fit directory in this process; its timings."""
    from caltars_bayes.model.simulate import simulate_trial
    from caltars_bayes.report import outputs, workflows
    from caltars_bayes.spec.instrument import load_instrument

    inst = load_instrument(SPECS / SHAPES[shape]["spec"])
    design = _design(shape, tiny)
    data = simulate_trial(inst, seed=seed, **design).to_rating_data()
    marks: dict[str, float] = {}

    def say(line: str) -> None:
        if line.startswith("writing the fit directory"):
            marks["fit_done"] = time.perf_counter()

    saver = outputs.save_fit_directory
    prof = None
    if profile:
        import cProfile

        prof = cProfile.Profile()

        def profiled(*a: Any, **k: Any) -> Any:
            assert prof is not None
            prof.enable()
            try:
                return saver(*a, **k)
            finally:
                prof.disable()

        workflows.save_fit_directory = profiled  # type: ignore[assignment]
    load_before = _load_average()
    with tempfile.TemporaryDirectory(prefix="caltars_real_") as tmp:
        t0 = time.perf_counter()
        fit, _ = workflows.fit_to_directory(
            data, Path(tmp) / "fit", say=say, random_seed=seed, progressbar=False, **fit_kwargs
        )
        t_end = time.perf_counter()
        size = sum(f.stat().st_size for f in (Path(tmp) / "fit").iterdir())
        files = sorted(f.name for f in (Path(tmp) / "fit").iterdir())
    workflows.save_fit_directory = saver  # type: ignore[assignment]
    tm = fit.record.timings
    det = float(tm.get("deterministics_s", 0.0))
    fit_s = marks["fit_done"] - t0
    # fit_model's own work after nutpie returned: the verdict, the record
    verdict_s = fit_s - float(tm["build_s"]) - float(tm["compile_s"]) - float(tm["sampling_s"])
    verdict_s -= det
    save_s = t_end - marks["fit_done"]
    d = fit.diagnostics
    row = {
        "shape": shape,
        "what": SHAPES[shape]["what"],
        "design": design,
        "ratings": int(data.n_ratings),
        "subjects": int(data.n_subjects),
        "judges": int(data.n_judges),
        "items": int(data.n_items),
        "chains": d.n_chains,
        "draws": d.n_draws,
        "tune": fit.record.tune,
        "build_s": float(tm["build_s"]),
        "compile_s": float(tm["compile_s"]),
        "compile_source": fit.record.compile_source,
        "sampling_s": float(tm["sampling_s"]),
        "deterministics_s": det,
        "verdict_s": verdict_s,
        "save_s": save_s,
        "after_s": det + verdict_s + save_s,
        "wall_s": t_end - t0,
        "converged": bool(d.converged),
        "verdict": d.verdict,
        "max_rhat": d.max_rhat,
        "min_ess_bulk": d.min_ess_bulk,
        "min_ess_tail": d.min_ess_tail,
        "divergences": d.divergences,
        "extension": fit.record.extension,
        "plan_notes": list(fit.plan.notes),
        "fit_dir_mb": size / 1e6,
        "files": files,
        "load_before": load_before,
        "load_after": _load_average(),
    }
    row["after_share"] = row["after_s"] / row["sampling_s"]
    if prof is not None and profile:
        _report_profile(prof, profile)
    return row


def _report_profile(prof: Any, path: str) -> None:
    """Save the profile and print its top functions (cumulative, then own time) to stderr."""
    import io
    import pstats

    for key in ("cumulative", "tottime"):
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats(key).print_stats(40)
        print(buf.getvalue(), file=sys.stderr)
    prof.dump_stats(path)


def _child(args: dict[str, Any]) -> dict[str, Any]:
    """One shape in a fresh process (its compile and memory its own)."""
    res = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(args)],
        capture_output=True,
        text=True,
        check=False,
    )
    if args.get("profile"):
        print(res.stderr, file=sys.stderr)
    if res.returncode != 0:
        print(res.stderr[-4000:], file=sys.stderr)
        raise RuntimeError(f"real-size child {args['shape']} failed")
    return json.loads(res.stdout.strip().splitlines()[-1])


def render(res: dict[str, Any]) -> str:
    """The markdown section."""
    lines = [
        "## Real-size designs",
        "",
        f"Measured {res['stamp']} ({res['machine']}; each row's time: "
        + ", ".join(f"{r['shape']} {r.get('stamp', '?')}" for r in res["rows"])
        + "). Seconds per part of "
        "`fit_to_directory` (what `caltars-bayes fit` does); *after* = deterministics "
        "recomputed after nutpie + the verdict + the fit directory (tables, figures, "
        "posterior.nc); target: after <= 15% of sampling. Load = 1/5/15-min load "
        "average before and after.",
        "",
        "| shape | ratings | chains x draws | compile s | sampling s | deterministics s | "
        "verdict s | fit directory s | after / sampling | wall s | verdict | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        lines.append(
            f"| {r['shape']} | {r['ratings']:,} | {r['chains']} x {r['draws']} | "
            f"{r['compile_s']:.1f} | {r['sampling_s']:.1f} | {r['deterministics_s']:.1f} | "
            f"{r['verdict_s']:.1f} | {r['save_s']:.1f} | {100 * r['after_share']:.0f}% | "
            f"{r['wall_s']:.0f} | {'met' if r['converged'] else 'MISSED'} "
            f"(R-hat {r['max_rhat']:.3f}, bulk {r['min_ess_bulk']:.0f}, tail "
            f"{r['min_ess_tail']:.0f}, div {r['divergences']}) | "
            f"{r['load_before']} / {r['load_after']} |"
        )
    lines.append("")
    for r in res["rows"]:
        lines.append(f"- **{r['shape']}**: {r['what']}; {'; '.join(r['plan_notes'])}.")
    return "\n".join(lines) + "\n"


def _merged(raw: Path, fit: Any, rows: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The shapes just run, in :data:`SHAPES` order, with the other shapes' rows of an
    earlier run at the same settings (so that ``--only`` updates one row)."""
    old = json.loads(raw.read_text()) if raw.exists() else {}
    kept = {r["shape"]: r for r in old.get("rows", [])} if old.get("fit") == fit else {}
    merged = {**kept, **rows}
    return [merged[s] for s in SHAPES if s in merged]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", help="markdown file (default benchmarks/real_size.md)")
    ap.add_argument("--only", help=f"comma-separated shapes: {','.join(SHAPES)}")
    ap.add_argument("--draws", type=int, help="draws (and tune) per chain; default fit_model's")
    ap.add_argument("--chains", type=int, help="chains; default fit_model's")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--tiny", action="store_true", help="1/10 of the subjects, 2 x 100 draws")
    ap.add_argument("--profile", action="store_true", help="cProfile the fit directory's writing")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        c = json.loads(args.child)
        print(json.dumps(run_shape(c["shape"], c["tiny"], c["seed"], c["fit"], c["profile"])))
        return 0
    fit_kwargs: dict[str, Any] = {}
    draws = 100 if args.tiny and args.draws is None else args.draws
    if draws is not None:
        fit_kwargs.update(draws=draws, tune=draws)
    chains = 2 if args.tiny and args.chains is None else args.chains
    if chains is not None:
        fit_kwargs["chains"] = chains
    if args.out:
        out = Path(args.out)
    elif args.tiny:
        out = Path(tempfile.mkdtemp(prefix="caltars_real_size_")) / "real_size.md"
    else:
        out = HERE / "real_size.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    shapes = args.only.split(",") if args.only else list(SHAPES)
    rows = {}
    for shape in shapes:
        prof = str(out.with_name(f"real_size_{shape}.prof")) if args.profile else None
        child = {"shape": shape, "tiny": args.tiny, "seed": args.seed, "fit": fit_kwargs}
        rows[shape] = {**_child({**child, "profile": prof}), "stamp": time.strftime("%H:%M")}
        print(json.dumps({k: v for k, v in rows[shape].items() if k != "files"}), flush=True)
    res = {
        "stamp": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{os.cpu_count()} cores",
        "fit": fit_kwargs or "defaults",
        "rows": _merged(out.with_suffix(".json"), fit_kwargs or "defaults", rows),
    }
    out.with_suffix(".json").write_text(json.dumps(res, indent=1))
    out.write_text(render(res))
    print(render(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
