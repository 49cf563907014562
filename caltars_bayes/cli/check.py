"""``caltars-bayes check``: factor structure and posterior predictive checks of a fit."""

from __future__ import annotations

import argparse
from pathlib import Path

from caltars_bayes.cli.common import echo, progress_args, refuse_existing, say_for


def add_parser(sub: argparse._SubParsersAction) -> None:
    ck = sub.add_parser(
        "check",
        help="factor structure and posterior predictive checks of a fit",
        description="Write the standardised loadings beside the classical PCA/varimax "
        "(loadings.csv, classical_structure.csv), the factor correlations "
        "(factor_correlations.csv/.png/.svg) and posterior predictive checks (ppc.csv, "
        "ppc_verdict.csv, ppc.png, ppc.svg) of a fit into --out (default FITDIR/check).",
    )
    ck.add_argument("fitdir", help="fit directory written by `caltars-bayes fit`")
    ck.add_argument("--out", default=None, help="output folder (default FITDIR/check)")
    ck.add_argument("--draws", type=int, default=200, help="posterior draws replicated (200)")
    ck.add_argument("--seed", type=int, default=0)
    ck.add_argument("--force", action="store_true", help="overwrite an existing output")
    progress_args(ck)
    ck.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from caltars_bayes.inference.fit import load_fit
    from caltars_bayes.report.workflows import run_check

    out = Path(args.out) if args.out else Path(args.fitdir) / "check"
    refuse_existing(out, force=args.force)
    say = say_for(args)
    say(f"loading the fit {args.fitdir}")
    fit = load_fit(args.fitdir)
    say(f"checking the structure and replicating the ratings from {args.draws} draws")
    res = run_check(fit, out, draws=args.draws, seed=args.seed, force=args.force)
    echo(fit.diagnostics.banner())
    echo(res.ppc.verdict.drop(columns="converged").to_string(index=False))
    echo(f"posterior predictive checks: {res.ppc.summary}")
    echo(f"wrote {out}/")
    return 0
