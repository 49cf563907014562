"""``caltars-bayes calibrate``: freeze a fit into a calibration for scoring new trials."""

from __future__ import annotations

import argparse
from pathlib import Path

from caltars_bayes.cli.common import echo, progress_args, refuse_existing, say_for


def add_parser(sub: argparse._SubParsersAction) -> None:
    ca = sub.add_parser(
        "calibrate",
        help="freeze a fit into a calibration for scoring new trials",
        description="Keep the instrument (loadings, cutpoints), the judges and the population "
        "parameters of a fit as posterior draws in a calibration directory (calibration.nc, "
        "calibration.json, spec.json, diagnostics.json). See docs/calibration.md.",
    )
    ca.add_argument("fitdir", help="fit directory written by `caltars-bayes fit`")
    ca.add_argument("--out", required=True, help="calibration directory to write")
    ca.add_argument("--draws", type=int, default=1000, help="posterior draws to keep (1000)")
    ca.add_argument("--force", action="store_true", help="overwrite an existing output")
    progress_args(ca)
    ca.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from caltars_bayes.inference.fit import load_fit
    from caltars_bayes.scoring.calibration import calibrate

    out = Path(args.out)
    refuse_existing(out, force=args.force)
    say = say_for(args)
    say(f"loading the fit {args.fitdir}")
    fit = load_fit(args.fitdir)
    say(f"keeping {args.draws} of its draws")
    cal = calibrate(fit, n_draws=args.draws)
    cal.save(out, force=args.force)
    echo(cal.diagnostics.banner())
    echo(f"calibration of {cal.instrument.name}: {cal.n_draws} draws, judges {cal.judges}")
    echo(f"wrote {out}/")
    return 0
