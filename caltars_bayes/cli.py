"""The ``caltars-bayes`` command line: a thin layer over the Python API.

Exit codes: 0 success; 2 bad input (one-line error, no traceback unless
``--debug``); 3 ``--strict`` and the fit did not converge.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from caltars_bayes.errors import CaltarsError, CaltarsWarning

EXIT_BAD_INPUT = 2
EXIT_NOT_CONVERGED = 3


def _default_instrument() -> str:
    from caltars_bayes.spec import models_dir

    return str(models_dir() / "caltars.toml")


def _mapping(pairs: Sequence[str] | None) -> dict[str, str] | None:
    if not pairs:
        return None
    out = {}
    for p in pairs:
        if "=" not in p:
            raise CaltarsError(f"--map {p!r}: use YOUR_COLUMN=canonical_name, e.g. patient=subject")
        k, v = p.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def _load_instrument(args: argparse.Namespace):
    from caltars_bayes.spec import load_instrument

    inst = load_instrument(args.instrument, model=getattr(args, "model", None))
    structure = getattr(args, "structure", None)
    if structure:
        inst = inst.with_structure(structure)
    return inst


def _load_data(args: argparse.Namespace, instrument):
    from caltars_bayes.data import RatingData

    return RatingData.from_files(
        args.ratings,
        instrument,
        covariates=args.covariates,
        session_covariates=args.session_covariates,
        layout=args.layout,
        columns=_mapping(args.map),
        sheet=args.sheet,
        on_invalid="drop" if args.drop_invalid else "error",
    )


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("ratings", help="ratings file (CSV, TSV, Excel, SPSS .sav, parquet)")
    p.add_argument("--instrument", default=_default_instrument(), help="instrument spec TOML")
    p.add_argument("--covariates", help="subject-level covariate table (subject + columns)")
    p.add_argument(
        "--session-covariates", help="session-level covariate table (subject, session + columns)"
    )
    p.add_argument("--layout", choices=["auto", "long", "wide"], default="auto")
    p.add_argument(
        "--map",
        action="append",
        metavar="COL=NAME",
        help="rename a column, e.g. --map patient=subject --map rater=judge (repeatable)",
    )
    p.add_argument("--sheet", help="Excel sheet name")
    p.add_argument(
        "--drop-invalid",
        action="store_true",
        help="reject invalid rating rows (counted in the data report) instead of stopping",
    )


# --------------------------------------------------------------------------- commands


def cmd_validate(args: argparse.Namespace) -> int:
    data = _load_data(args, _load_instrument(args))
    print(data.report.format())
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from caltars_bayes.simulate import (
        FOUNDING_SESSION_COVARIATES,
        FOUNDING_SUBJECT_COVARIATES,
        simulate_trial,
    )

    inst = _load_instrument(args)
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


def _load_hypotheses(path: str | None, data):
    """Read a hypotheses file and check it against the data before fitting."""
    if not path:
        return None
    from caltars_bayes.hypotheses import check_hypotheses, load_hypotheses
    from caltars_bayes.model import plan_model

    hyps = load_hypotheses(path)
    plan = plan_model(data)
    check_hypotheses(hyps, list(data.scales), plan.covariates + plan.session_covariates)
    return hyps


def _fit_and_save(args: argparse.Namespace, data, out: Path) -> int:
    from caltars_bayes.fit import fit_model

    if out.exists() and not args.force:
        raise CaltarsError(f"{out}: already exists; use --force to overwrite")
    hypotheses = _load_hypotheses(getattr(args, "hypotheses", None), data)
    nuts = {}
    if args.target_accept is not None:
        nuts["target_accept"] = args.target_accept
    print(
        f"fitting {data.n_ratings} ratings ({data.n_subjects} subjects, {data.n_sessions} sessions,"
        f" {data.n_judges} judges) with {args.sampler}: {args.chains} chains x "
        f"({args.tune} tune + {args.draws} draws)",
        flush=True,
    )
    fit = fit_model(
        data,
        draws=args.draws,
        tune=args.tune,
        chains=args.chains,
        sampler=args.sampler,
        random_seed=args.seed,
        nuts=nuts,
        progressbar=not args.quiet,
    )
    fit.hypotheses = hypotheses
    fit.save(out, force=args.force)
    t = fit.meta["timings"]
    print(
        f"done in {t['total_s']:.0f} s "
        f"(compile {t['compile_s']:.0f} s, sampling {t['sampling_s']:.0f} s)"
    )
    print(str(fit.diagnostics))
    for note in fit.plan.notes:
        print(f"note: {note}")
    if hypotheses is not None:
        from caltars_bayes.hypotheses import summarise_verdicts, test_hypotheses

        print(summarise_verdicts(test_hypotheses(fit, hypotheses)))
    print(f"wrote {out}/")
    if args.strict and not fit.converged:
        print("error: --strict: the fit did not converge", file=sys.stderr)
        return EXIT_NOT_CONVERGED
    return 0


def _fit_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--draws", type=int, default=1000)
    p.add_argument("--tune", type=int, default=1000)
    p.add_argument("--chains", type=int, default=4)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--sampler", choices=["nutpie", "pymc", "numpyro", "blackjax"], default="nutpie")
    p.add_argument("--target-accept", type=float, default=None)
    p.add_argument("--strict", action="store_true", help="exit 3 if the fit did not converge")
    p.add_argument("--force", action="store_true", help="overwrite an existing output")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def cmd_fit(args: argparse.Namespace) -> int:
    inst = _load_instrument(args)
    data = _load_data(args, inst)
    return _fit_and_save(args, data, Path(args.out))


def cmd_demo(args: argparse.Namespace) -> int:
    from caltars_bayes.simulate import (
        FOUNDING_SESSION_COVARIATES,
        FOUNDING_SUBJECT_COVARIATES,
        simulate_trial,
    )
    from caltars_bayes.spec import load_instrument

    out = Path(args.out)
    if out.exists() and not args.force:
        raise CaltarsError(f"{out}: already exists; use --force to overwrite")
    inst = load_instrument(args.instrument)
    print(
        f"[1/3] simulating a trial of the founding design: {args.subjects} subjects x "
        f"{args.sessions} sessions x {args.judges} judges, {inst.name} ({len(inst.items)} items)",
        flush=True,
    )
    trial = simulate_trial(
        inst,
        n_subjects=args.subjects,
        n_sessions=args.sessions,
        n_judges=args.judges,
        subject_covariates=FOUNDING_SUBJECT_COVARIATES,
        session_covariates=FOUNDING_SESSION_COVARIATES,
        seed=args.seed,
    )
    trial.write(out / "trial", force=args.force)
    data = trial.to_rating_data()
    print("[2/3] data report", flush=True)
    print(data.report.format())
    print("[3/3] fitting the joint model", flush=True)
    rc = _fit_and_save(args, data, out / "fit")
    print(f"\nresults: {out}/fit (summary.csv, scores.csv, judges.csv, diagnostics.json)")
    return rc


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="caltars-bayes",
        description="Bayesian measurement models for observer-rated psychotherapy process scales.",
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True)

    v = sub.add_parser("validate", help="check a ratings file and print the data report")
    _data_args(v)
    v.set_defaults(func=cmd_validate)

    s = sub.add_parser("simulate", help="simulate a trial with known parameters")
    s.add_argument("--instrument", default=_default_instrument())
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
    s.set_defaults(func=cmd_simulate)

    f = sub.add_parser("fit", help="fit the joint measurement model")
    _data_args(f)
    f.add_argument("--model", help="model spec TOML overriding the instrument's [model]/[priors]")
    f.add_argument("--structure", help="fit an alternative factor structure from the spec")
    f.add_argument("--out", required=True, help="fit directory to write")
    f.add_argument(
        "--hypotheses",
        help="validity hypotheses TOML (e.g. models/caltars-1989-hypotheses.toml): "
        "writes hypotheses.csv beside associations.csv",
    )
    _fit_args(f)
    f.set_defaults(func=cmd_fit)

    d = sub.add_parser("demo", help="simulate a founding-design trial and analyse it")
    d.add_argument("--instrument", default=_default_instrument())
    d.add_argument("--out", default="demo_output")
    d.add_argument("--subjects", type=int, default=52)
    d.add_argument("--sessions", type=int, default=4)
    d.add_argument("--judges", type=int, default=3)
    _fit_args(d)
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default", CaltarsWarning)
            warnings.showwarning = _show_warning  # restored when the block exits
            return int(args.func(args) or 0)
    except CaltarsError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except ImportError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {message}", file=sys.stderr)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
