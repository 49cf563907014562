"""``caltars-bayes export``: a fit's table as CSV, Excel or SPSS, long or wide."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    ex = sub.add_parser(
        "export",
        help="write a table of a fit as CSV, Excel (.xlsx) or SPSS (.sav), long or wide",
        description="Write one table of a fit directory (scores, judges, reliability, "
        "associations or loadings) as CSV, Excel or SPSS. --wide gives one row per subject "
        "(scores; --level session: per session) or per judge, with one column per scale for "
        "the posterior mean and each bound of the 95%% HDI (PC_mean, PC_hdi_low, PC_hdi_high). "
        "SPSS names are made valid and every variable is labelled with its original name. "
        "Never overwrites without --force.",
    )
    ex.add_argument("fitdir", help="fit directory written by `caltars-bayes fit`")
    ex.add_argument(
        "--table",
        required=True,
        help="scores, judges, reliability, associations (fits with covariates) or loadings",
    )
    ex.add_argument("--format", default=None, help="csv, xlsx or sav (default: from --out)")
    ex.add_argument("--out", required=True, help="the file to write")
    ex.add_argument(
        "--wide", action="store_true", help="one row per subject, session or judge (scores, judges)"
    )
    ex.add_argument(
        "--level",
        default=None,
        help="scores: subject (wide default) or session rows; loadings: session (default) or "
        "subject level alliance",
    )
    ex.add_argument("--force", action="store_true", help="overwrite an existing file")
    ex.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from caltars_bayes.report.export import export_table

    path = export_table(
        args.fitdir,
        args.table,
        args.out,
        format=args.format,
        wide=args.wide,
        level=args.level,
        force=args.force,
    )
    print(f"wrote {path}")
    return 0
