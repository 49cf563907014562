"""``caltars-bayes score``: new subjects and sessions scored with a calibration."""

from __future__ import annotations

import argparse
from pathlib import Path

from caltars_bayes.cli.common import (
    data_args,
    echo,
    load_data_arg,
    load_instrument_arg,
    progress_args,
    refuse_existing,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    sc = sub.add_parser(
        "score",
        help="score new subjects and sessions with a calibration",
        description="Posterior alliance per subject x scale and per session x scale of a new "
        "trial, from a calibration (or a fit directory), propagating the calibration's "
        "uncertainty. Writes scores.csv (the format of a fit's scores.csv), new_judges.csv "
        "(judges not in the calibration, with rater-drift flags), data_report.json and "
        "score_report.json into --out. See docs/calibration.md.",
    )
    data_args(sc)
    sc.set_defaults(instrument=None)
    sc.add_argument(
        "--calibration", required=True, help="calibration directory, or a fit directory"
    )
    sc.add_argument("--out", required=True, help="output directory")
    sc.add_argument("--draws", type=int, default=1000, help="draws when calibrating a fit dir")
    sc.add_argument("--seed", type=int, default=0)
    sc.add_argument(
        "--no-importance", action="store_true", help="plain Laplace draws, no importance weights"
    )
    sc.add_argument(
        "--check-all-judges",
        action="store_true",
        help="treat every judge as new (re-estimate calibrated judges to check them for drift)",
    )
    sc.add_argument("--force", action="store_true", help="overwrite an existing output")
    progress_args(sc)
    sc.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from caltars_bayes.scoring.calibration import load_calibration
    from caltars_bayes.scoring.drift import drift_summary
    from caltars_bayes.scoring.trial import score_trial

    out = Path(args.out)
    refuse_existing(out, force=args.force)
    cal = load_calibration(args.calibration, n_draws=args.draws)
    # without --instrument: the calibration's own instrument
    inst = cal.instrument if args.instrument is None else load_instrument_arg(args)
    data = load_data_arg(args, inst)
    res = score_trial(
        data,
        cal,
        seed=args.seed,
        importance=not args.no_importance,
        new_judges="all" if args.check_all_judges else "unknown",
        progress=not args.quiet,
    )
    res.save(out, force=args.force)
    echo(res.banner)
    echo(
        f"scored {data.n_subjects} subjects, {data.n_sessions} sessions ({data.n_ratings} "
        f"ratings) with {cal.n_draws} calibration draws; {res.report['method']}"
    )
    for note in res.report["notes"]:
        echo(f"note: {note}")
    for line in drift_summary(res.new_judges):
        echo(line)
    echo(f"wrote {out}/ (scores.csv, new_judges.csv, data_report.json, score_report.json)")
    return 0
