"""``caltars-bayes validate``: check a ratings file and print the data report.

Panels of more than 30 judges are summarised in the report; ``--out FILE``
writes the full per-judge table (:func:`caltars_bayes.data.judges.save_judge_table`).
"""

from __future__ import annotations

import argparse

from caltars_bayes.cli.common import data_args, load_data_arg, load_instrument_arg


def add_parser(sub: argparse._SubParsersAction) -> None:
    v = sub.add_parser("validate", help="check a ratings file and print the data report")
    data_args(v)
    v.add_argument(
        "--out",
        metavar="FILE",
        help="write the per-judge table (ratings, subjects, sessions, shared sessions, "
        "items, mean score) to FILE: .csv or .json",
    )
    v.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    v.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from caltars_bayes.data.judges import check_judge_table_path, save_judge_table

    if args.out:  # a bad suffix or an existing file stops before the data are read
        check_judge_table_path(args.out, force=args.force)
    data = load_data_arg(args, load_instrument_arg(args))
    print(data.report.format())
    if args.out:
        table = save_judge_table(data, args.out, force=args.force)
        print(f"judge table ({len(table)} judges): {args.out}")
    return 0
