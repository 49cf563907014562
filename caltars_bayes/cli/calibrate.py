"""``caltars-bayes calibrate``: freeze a fit into a calibration for scoring new trials."""

from __future__ import annotations

import argparse
from pathlib import Path

from caltars_bayes.cli.common import refuse_existing


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
    ca.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from caltars_bayes.inference.fit import load_fit
    from caltars_bayes.scoring.calibration import calibrate

    out = Path(args.out)
    refuse_existing(out, force=args.force)
    cal = calibrate(load_fit(args.fitdir), n_draws=args.draws)
    cal.save(out, force=args.force)
    print(cal.diagnostics.banner())
    print(f"calibration of {cal.instrument.name}: {cal.n_draws} draws, judges {cal.judges}")
    print(f"wrote {out}/")
    return 0
