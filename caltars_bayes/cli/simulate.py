"""``caltars-bayes simulate``: a trial with known parameters."""

from __future__ import annotations

import argparse

from caltars_bayes.cli.common import default_instrument, load_instrument_arg


def add_parser(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("simulate", help="simulate a trial with known parameters")
    s.add_argument("--instrument", default=default_instrument())
    s.add_argument("--subjects", type=int, default=52)
    s.add_argument("--sessions", type=int, default=4)
    s.add_argument("--judges", type=int, default=3)
    s.add_argument("--judges-per-session", type=int, default=None)
    s.add_argument("--min-sessions", type=int, default=None)
    s.add_argument("--missing-rate", type=float, default=0.0)
    s.add_argument("--no-covariates", action="store_true")
    s.add_argument("--seed", type=int, default=1)
    s.add_argument("--out", required=True)
    s.add_argument("--force", action="store_true")
    s.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from caltars_bayes.model.simulate import (
        FOUNDING_SESSION_COVARIATES,
        FOUNDING_SUBJECT_COVARIATES,
        simulate_trial,
    )

    inst = load_instrument_arg(args)
    trial = simulate_trial(
        inst,
        n_subjects=args.subjects,
        n_sessions=args.sessions,
        n_judges=args.judges,
        judges_per_session=args.judges_per_session,
        min_sessions=args.min_sessions,
        missing_rate=args.missing_rate,
        subject_covariates=None if args.no_covariates else FOUNDING_SUBJECT_COVARIATES,
        session_covariates=None if args.no_covariates else FOUNDING_SESSION_COVARIATES,
        seed=args.seed,
    )
    paths = trial.write(args.out, force=args.force)
    print(
        f"simulated {len(trial.ratings)} ratings: {args.subjects} subjects, "
        f"{len(trial.truth.session)} sessions, {args.judges} judges ({inst.name})"
    )
    for p in paths:
        print(f"  wrote {p}")
    return 0
