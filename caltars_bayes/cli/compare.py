"""``caltars-bayes compare``: fits of alternative structures compared by cross-validation."""

from __future__ import annotations

import argparse
from pathlib import Path

from caltars_bayes._core.errors import CaltarsError
from caltars_bayes.cli.common import echo, progress_args, refuse_existing, scheduler


def add_parser(sub: argparse._SubParsersAction) -> None:
    cp = sub.add_parser(
        "compare",
        help="compare fits of alternative structures by cross-validation (PSIS-LOO)",
        description="Compare fit directories of the same ratings (e.g. `fit --structure NAME`) "
        "by expected log predictive density, leaving out one session (default) or one rating "
        "at a time. Writes compare.csv (best first: name, elpd, se, elpd_diff, dse, stacking "
        "weight, p_loo, Pareto-k summary, method, converged), compare.png and compare.svg. "
        "When some Pareto k > 0.7 it warns and, by default, moment matches the high-k units "
        "(Paananen et al. 2021; no refit); units still above 0.7 make it re-estimate every model "
        "by K-fold cross-validation (K refits each), the refits in parallel on a Dask LocalCluster "
        "where the machine has the cores for them (--workers, --scheduler). See docs/structure.md.",
    )
    cp.add_argument("fitdirs", nargs="+", help="two or more fit directories")
    cp.add_argument("--out", required=True, help="output folder")
    cp.add_argument("--by", choices=["session", "rating"], default="session")
    cp.add_argument("--folds", type=int, default=5, help="K of the K-fold fallback (default 5)")
    cp.add_argument(
        "--fallback",
        choices=["moment_match", "kfold", "none"],
        default="moment_match",
        help="when some Pareto k > 0.7: moment match the high-k units, then K-fold if k stays "
        "high (moment_match, default); K-fold at once (kfold); keep PSIS-LOO (none)",
    )
    cp.add_argument(
        "--no-kfold", action="store_true", help="the same as --fallback none (kept for scripts)"
    )
    cp.add_argument(
        "--scheduler",
        default="local",
        help="where the K-fold refits run: local (a Dask LocalCluster on this machine, default; "
        "this process where that would be one worker or Dask is not installed), serial (this "
        "process, no Dask) or a Dask scheduler address, e.g. tcp://HOST:8786",
    )
    cp.add_argument(
        "--workers",
        type=int,
        default=None,
        help="LocalCluster size (default: cores / chains of a refit, at most one per refit; "
        "1: this process)",
    )
    cp.add_argument("--force", action="store_true", help="overwrite an existing output")
    progress_args(cp)
    cp.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from caltars_bayes.inference.fit import load_fit
    from caltars_bayes.report.workflows import run_compare

    out = Path(args.out)
    refuse_existing(out, force=args.force)
    if len(args.fitdirs) < 2:
        raise CaltarsError("compare: give at least two fit directories")
    fits = {}
    for d in args.fitdirs:
        name = Path(d).resolve().name
        if name in fits:
            raise CaltarsError(f"{d}: two fit directories are named {name!r}; rename one")
        fits[name] = load_fit(d)
    echo(f"comparing {', '.join(fits)} (leave one {args.by} out)")
    fallback = "none" if args.no_kfold else args.fallback
    table = run_compare(
        fits,
        out,
        by=args.by,
        fallback=fallback,
        n_folds=args.folds,
        scheduler=scheduler(args),
        workers=args.workers,
        force=args.force,
        quiet=args.quiet,
    )
    cols = ["name", "elpd", "elpd_diff", "dse", "weight", "n_high_k", "method", "converged"]
    echo(table[cols].to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    echo(f"wrote {out}/ (compare.csv, compare.png, compare.svg)")
    return 0
