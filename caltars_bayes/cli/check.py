"""``caltars-bayes check``: factor structure and posterior predictive checks of a fit."""

from __future__ import annotations

import argparse
from pathlib import Path

from caltars_bayes.cli.common import refuse_existing


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
    ck.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from caltars_bayes.inference.fit import load_fit
    from caltars_bayes.report.workflows import run_check

    out = Path(args.out) if args.out else Path(args.fitdir) / "check"
    refuse_existing(out, force=args.force)
    fit = load_fit(args.fitdir)
    res = run_check(fit, out, draws=args.draws, seed=args.seed, force=args.force)
    print(fit.diagnostics.banner())
    print(res.ppc.verdict.drop(columns="converged").to_string(index=False))
    print(f"posterior predictive checks: {res.ppc.summary}")
    print(f"wrote {out}/")
    return 0
