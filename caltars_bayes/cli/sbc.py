"""``caltars-bayes sbc``: simulation-based calibration of the model (Dask)."""

from __future__ import annotations

import argparse

from caltars_bayes.cli.common import (
    EXIT_TASKS_FAILED,
    dask_args,
    default_instrument,
    echo,
    scheduler,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    sb = sub.add_parser(
        "sbc",
        help="simulation-based calibration of the model (Dask)",
        description="Draw parameters from the prior, simulate ratings of a small design, fit "
        "them and rank the truth among the posterior draws (Talts et al. 2018), one Dask task "
        "per simulation; test the ranks for uniformity and plot ECDF differences. Resumable "
        "like plan. Exit 1 if some simulations failed.",
    )
    sb.add_argument("--instrument", default=default_instrument())
    sb.add_argument("--sims", type=int, default=200)
    sb.add_argument("--subjects", type=int, default=10)
    sb.add_argument("--sessions", type=int, default=2)
    sb.add_argument("--judges", type=int, default=2)
    sb.add_argument("--draws", type=int, default=500, help="draws per chain")
    sb.add_argument("--tune", type=int, default=500)
    sb.add_argument("--chains", type=int, default=2)
    sb.add_argument(
        "--method", choices=["nuts", "advi", "pathfinder", "fullrank_advi"], default="nuts"
    )
    sb.add_argument("--ranks", type=int, default=99, help="L: thinned draws per rank (<= ESS)")
    sb.add_argument("--seed", type=int, default=1)
    sb.add_argument("--out", default="sbc_results")
    dask_args(sb)
    sb.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from caltars_bayes.spec.instrument import load_instrument
    from caltars_bayes.studies.sbc import run_sbc

    res = run_sbc(
        load_instrument(args.instrument),
        args.sims,
        subjects=args.subjects,
        sessions=args.sessions,
        judges=args.judges,
        draws=args.draws,
        tune=args.tune,
        chains=args.chains,
        method=args.method,
        n_ranks=args.ranks,
        seed=args.seed,
        out=args.out,
        scheduler=scheduler(args),
        workers=args.workers,
        force=args.force,
        progress=not args.quiet,
    )
    echo(str(res.run))
    echo(res.summary())
    echo(f"wrote {args.out}/ (sbc_tests.csv, ranks.csv, sbc_ecdf.png, sbc_ecdf.svg, tasks/)")
    return EXIT_TASKS_FAILED if res.run.failed else 0
