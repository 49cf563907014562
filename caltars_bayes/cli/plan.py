"""``caltars-bayes plan``: power of candidate designs by simulation (Dask)."""

from __future__ import annotations

import argparse

from caltars_bayes.cli.common import EXIT_TASKS_FAILED, dask_args, echo, scheduler


def add_parser(sub: argparse._SubParsersAction) -> None:
    pl = sub.add_parser(
        "plan",
        help="plan a trial by simulation: power of candidate designs (Dask)",
        description="Simulate and fit every replication of the plan's designs x effects "
        "(each one a Dask task), apply the decision rules and write power.csv, power.png, "
        "power.svg and results.csv into --out. Results are written per replication as they "
        "finish (tasks/): rerunning the same command resumes. Exit 1 if some replications "
        "failed (rerun to retry them). See docs/planning.md and models/plan-example.toml.",
    )
    pl.add_argument("plan", help="plan TOML, e.g. models/plan-example.toml")
    pl.add_argument("--out", required=True, help="results folder")
    dask_args(pl)
    pl.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from caltars_bayes.studies.planning import load_plan, run_plan

    plan = load_plan(args.plan)
    echo(repr(plan))
    res = run_plan(
        plan,
        args.out,
        scheduler=scheduler(args),
        workers=args.workers,
        force=args.force,
        progress=not args.quiet,
    )
    echo(str(res.run))
    echo(res.power.attrs.get("diagnostics", ""))
    cols = [c for c in res.power.columns if not c.endswith(("_low", "_high"))]
    echo(res.power[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    echo(f"wrote {args.out}/ (power.csv, power.png, power.svg, results.csv, tasks/)")
    return EXIT_TASKS_FAILED if res.run.failed else 0
