"""``caltars-bayes dstudy``: reliability projected to other numbers of judges and sessions."""

from __future__ import annotations

import argparse
from pathlib import Path

from caltars_bayes.cli.common import probability, refuse_existing


def add_parser(sub: argparse._SubParsersAction) -> None:
    ds = sub.add_parser(
        "dstudy",
        help="decision study: reliability for other numbers of judges and sessions",
        description="Project reliability from a fit to 1..8 judges x 1..12 sessions (per "
        "posterior draw) and find the smallest design reaching a target. Writes dstudy.csv, "
        "dstudy.png and dstudy.svg into --out (default FITDIR/dstudy; never overwritten "
        "without --force).",
    )
    ds.add_argument("fitdir", help="fit directory written by `caltars-bayes fit`")
    ds.add_argument("--judges", default="1-8", help="judges to project, e.g. 1-8 or 1,2,4")
    ds.add_argument("--sessions", default="1-12", help="sessions per subject, e.g. 1-12")
    ds.add_argument("--items", default=None, help="items per scale (latent route only)")
    ds.add_argument("--target", default="0.8", help="reliability to reach (default 0.8)")
    ds.add_argument("--prob", default="0.9", help="required posterior probability (0.9)")
    ds.add_argument("--level", choices=["treatment", "session"], default="treatment")
    ds.add_argument("--coefficient", choices=["agreement", "consistency"], default="agreement")
    ds.add_argument("--route", choices=["latent", "observed"], default="latent")
    ds.add_argument("--out", default=None, help="output folder (default FITDIR/dstudy)")
    ds.add_argument("--force", action="store_true", help="overwrite an existing output")
    ds.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from caltars_bayes.analysis.reliability import dstudy, parse_counts
    from caltars_bayes.inference.fit import load_fit

    judges = parse_counts(args.judges, "--judges")
    sessions = parse_counts(args.sessions, "--sessions")
    items = parse_counts(args.items, "--items") if args.items else None
    target = probability(args.target, "--target")
    prob = probability(args.prob, "--prob")
    out = Path(args.out) if args.out else Path(args.fitdir) / "dstudy"
    refuse_existing(out, force=args.force)
    study = dstudy(
        load_fit(args.fitdir),
        judges,
        sessions,
        target,
        prob,
        args.level,
        coefficient=args.coefficient,
        route=args.route,
        items=items,
    )
    study.save(out, force=args.force)
    print(study.diagnostics)
    for note in study.notes:
        print(f"note: {note}")
    print(
        f"smallest design reaching {args.coefficient} {target:g} with P >= {prob:g} "
        f"({args.level} level, {args.route} route; fewest ratings per subject, then fewest judges):"
    )
    print(study.smallest.drop(columns="converged").to_string(index=False))
    print(f"wrote {out}/ (dstudy.csv, dstudy.png, dstudy.svg)")
    return 0
