"""``caltars-bayes demo``: the whole analysis of a simulated founding-design trial."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from caltars_bayes.cli.common import (
    EXIT_NOT_CONVERGED,
    default_instrument,
    echo,
    fit_args,
    fit_options,
    refuse_existing,
    say_for,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser(
        "demo",
        help="the whole analysis of a simulated founding-design trial",
        description="Simulate a trial of the founding design (52 subjects x 4 sessions x 3 "
        "judges, CALTARS, the founding study's covariates), fit the joint model with the "
        "founding hypotheses, run the decision study and write the report into --out "
        "(trial/, fit/, dstudy/, report.html, report.md, report.tex, report_figures/).",
    )
    d.add_argument("--instrument", default=default_instrument())
    d.add_argument("--out", default="demo_output")
    d.add_argument("--subjects", type=int, default=52)
    d.add_argument("--sessions", type=int, default=4)
    d.add_argument("--judges", type=int, default=3)
    d.add_argument(
        "--hypotheses",
        default=None,
        help="hypotheses TOML (default: models/caltars-1989-hypotheses.toml when the "
        "instrument has its scales)",
    )
    d.add_argument("--no-hypotheses", action="store_true", help="test no hypotheses")
    fit_args(d)
    d.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from caltars_bayes.report.demo import run_demo

    t0 = time.perf_counter()
    out = Path(args.out)
    refuse_existing(out, force=args.force)
    demo = run_demo(
        out,
        instrument=args.instrument,
        subjects=args.subjects,
        sessions=args.sessions,
        judges=args.judges,
        seed=args.seed,
        hypotheses=False if args.no_hypotheses else (args.hypotheses or True),
        force=args.force,
        say=say_for(args),
        **fit_options(args),
    )
    echo("\n[6/6] summary")
    for line in demo.summary:
        echo(f"  {line}")
    echo(f"\nreport: {(out / 'report.html').resolve()}")
    echo(f"        {out}/report.md, {out}/report.tex (figures in {out}/report_figures/)")
    echo(f"fit:    {out}/fit/  trial: {out}/trial/  D-study: {out}/dstudy/")
    echo(f"done in {time.perf_counter() - t0:.0f} s")
    if args.strict and not demo.fit.converged:
        echo("error: --strict: the fit did not converge", err=True)
        return EXIT_NOT_CONVERGED
    return 0
