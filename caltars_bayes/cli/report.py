"""``caltars-bayes report``: the report of a fit directory (HTML, markdown or LaTeX)."""

from __future__ import annotations

import argparse
from pathlib import Path

from caltars_bayes.cli.common import refuse_existing, say
from caltars_bayes.report.formats import FORMATS, SUFFIX


def add_parser(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser(
        "report",
        help="write the report of a fit (HTML, markdown or LaTeX)",
        description="Write a report of a fit directory: data and design, convergence (a "
        "banner when anything failed; trace and rank plots of flagged parameters), factor "
        "structure, reliability beside the classical ICCs, judges, associations and "
        "hypotheses, decision study, model comparison, posterior predictive checks and a "
        "methods paragraph. From FITDIR it uses hypotheses.json (the hypotheses the fit was "
        "made with), reliability.csv and, for a fit made with --prior-from, prior_from.json "
        "and prior_conflict.csv (the borrowed priors and prior-data conflict); --compare adds "
        "a model comparison. Figures are "
        "written beside the report (REPORT_figures/, PNG and SVG).",
    )
    r.add_argument("fitdir", help="fit directory written by `caltars-bayes fit`")
    r.add_argument(
        "--format",
        choices=list(FORMATS),
        default=None,
        help="html (default; one self-contained file), md or latex (booktabs tables)",
    )
    r.add_argument("--out", default=None, help="report file (default FITDIR/report.html|md|tex)")
    r.add_argument("--hypotheses", help="hypotheses TOML (default: those saved with the fit)")
    r.add_argument(
        "--compare", help="model-comparison table (compare.csv of `caltars-bayes compare`)"
    )
    r.add_argument("--no-dstudy", action="store_true", help="leave out the decision study")
    r.add_argument("--no-ppc", action="store_true", help="leave out posterior predictive checks")
    r.add_argument("--force", action="store_true", help="overwrite an existing report")
    r.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from caltars_bayes.report.document import figure_dir
    from caltars_bayes.report.workflows import report_fit_directory

    fitdir = Path(args.fitdir)
    fmt = args.format
    if fmt is None:
        by_suffix = {v: k for k, v in SUFFIX.items()}
        fmt = by_suffix.get(Path(args.out).suffix.lower(), "html") if args.out else "html"
    out = Path(args.out) if args.out else fitdir / f"report{SUFFIX[fmt]}"
    refuse_existing(out, figure_dir(out), force=args.force)
    report, path = report_fit_directory(
        fitdir,
        out,
        fmt,
        hypotheses=args.hypotheses,
        comparison=args.compare,
        dstudy=not args.no_dstudy,
        ppc=not args.no_ppc,
        force=args.force,
        say=say,
        progress=lambda name: print(f"  {name}", flush=True),
    )
    for line in report.summary:
        print(line)
    print(f"wrote {path}" + (f" (figures in {figure_dir(out)}/)" if report.figures else ""))
    return 0
