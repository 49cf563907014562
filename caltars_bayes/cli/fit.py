"""``caltars-bayes fit``: fit the joint measurement model and write the fit directory."""

from __future__ import annotations

import argparse
from pathlib import Path

from caltars_bayes.cli.common import (
    EXIT_NOT_CONVERGED,
    data_args,
    echo,
    fit_args,
    fit_options,
    load_data_arg,
    load_instrument_arg,
    refuse_existing,
    say_for,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    f = sub.add_parser("fit", help="fit the joint measurement model")
    data_args(f)
    f.add_argument("--model", help="model spec TOML overriding the instrument's [model]/[priors]")
    f.add_argument("--structure", help="fit an alternative factor structure from the spec")
    f.add_argument("--out", required=True, help="fit directory to write")
    f.add_argument(
        "--hypotheses",
        help="validity hypotheses TOML (e.g. models/caltars-1989-hypotheses.toml): "
        "writes hypotheses.csv beside associations.csv",
    )
    f.add_argument(
        "--prior-from",
        metavar="FITDIR",
        help="borrow informative priors (instrument and population parameters) from an earlier "
        "fit; writes prior_from.json and prior_conflict.csv (see docs/calibration.md)",
    )
    f.add_argument(
        "--prior-weight",
        type=float,
        default=1.0,
        help="power-prior weight of --prior-from in [0, 1] (1: full; smaller discounts it)",
    )
    fit_args(f)
    f.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from caltars_bayes.report.workflows import fit_summary, fit_to_directory

    out = Path(args.out)
    refuse_existing(out, force=args.force)
    data = load_data_arg(args, load_instrument_arg(args))
    fit, results = fit_to_directory(
        data,
        out,
        hypotheses=args.hypotheses,
        prior_from=args.prior_from,
        prior_weight=args.prior_weight,
        force=args.force,
        say=say_for(args),
        **fit_options(args),
    )
    for line in fit_summary(fit, results):
        echo(line)
    echo(f"wrote {out}/")
    if args.strict and not fit.converged:
        echo("error: --strict: the fit did not converge", err=True)
        return EXIT_NOT_CONVERGED
    return 0
