"""``caltars-bayes validate``: check a ratings file and print the data report."""

from __future__ import annotations

import argparse

from caltars_bayes.cli.common import data_args, load_data_arg, load_instrument_arg


def add_parser(sub: argparse._SubParsersAction) -> None:
    v = sub.add_parser("validate", help="check a ratings file and print the data report")
    data_args(v)
    v.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    data = load_data_arg(args, load_instrument_arg(args))
    print(data.report.format())
    return 0
