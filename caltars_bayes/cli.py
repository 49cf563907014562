"""The ``caltars-bayes`` command line: a thin layer over the Python API.

Exit codes: 0 success; 2 bad input (one-line error, no traceback unless
``--debug``); 3 ``--strict`` and the fit did not converge; 1 ``plan``/``sbc``:
some tasks failed (rerun to retry them).
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
EXIT_TASKS_FAILED = 1


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
    fit = _fit_save(args, data, out)
    if args.strict and not fit.converged:
        print("error: --strict: the fit did not converge", file=sys.stderr)
        return EXIT_NOT_CONVERGED
    return 0


def _fit_save(args: argparse.Namespace, data, out: Path):
    """Fit, save the fit directory and print the verdict; return the Fit."""
    from caltars_bayes.fit import fit_model

    if out.exists() and not args.force:
        raise CaltarsError(f"{out}: already exists; use --force to overwrite")
    hypotheses = _load_hypotheses(getattr(args, "hypotheses", None), data)
    borrowed, model = _borrowed_model(args, data)
    nuts = {}
    if args.target_accept is not None:
        nuts["target_accept"] = args.target_accept
    if getattr(args, "integration_time", None) is not None:
        if args.sampler != "nutpie":
            raise CaltarsError("--integration-time: applies to the nutpie sampler only")
        nuts["target_integration_time"] = args.integration_time or None  # 0: plain NUTS
    if getattr(args, "max_treedepth", None) is not None:
        from caltars_bayes.sampling import TREE_DEPTH_OPTION

        nuts[TREE_DEPTH_OPTION[args.sampler]] = args.max_treedepth
    if getattr(args, "start", "auto") != "auto":
        nuts["start"] = args.start
    method = getattr(args, "method", "nuts")
    how = (
        f"with {args.sampler}: {args.chains} chains x ({args.tune} tune + {args.draws} draws)"
        if method == "nuts"
        else f"APPROXIMATELY with {method} (not MCMC; a quick look): {args.draws} draws"
    )
    print(
        f"fitting {data.n_ratings} ratings ({data.n_subjects} subjects, {data.n_sessions} sessions,"
        f" {data.n_judges} judges) {how}",
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
        method=method,
        model=model,
    )
    fit.hypotheses = hypotheses
    if borrowed is not None:
        fit.meta["prior_from"] = {"fit": str(args.prior_from), "weight": borrowed.weight}
    fit.save(out, force=args.force)
    if borrowed is not None:
        _write_borrowed(fit, borrowed, out)
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
    return fit


def _borrowed_model(args: argparse.Namespace, data):
    """With ``--prior-from``: the borrowed priors and a model using them (else None, None)."""
    if not getattr(args, "prior_from", None):
        return None, None
    from caltars_bayes.borrow import derive_priors
    from caltars_bayes.fit import load_fit
    from caltars_bayes.model import AllianceModel

    borrowed = derive_priors(load_fit(args.prior_from), data, weight=args.prior_weight)
    print(
        f"borrowing {len(borrowed.table)} prior elements from {args.prior_from} "
        f"(weight {borrowed.weight:g}; {borrowed.source['verdict']})"
    )
    for note in borrowed.notes:
        print(f"note: {note}")
    sampler = getattr(args, "sampler", None)
    return borrowed, AllianceModel(data, informative=borrowed.informative, sampler=sampler)


def _write_borrowed(fit, borrowed, out: Path) -> None:
    """Add prior_from.json and prior_conflict.csv to the fit directory; print the verdict."""
    from caltars_bayes.borrow import PRIOR_CONFLICT_FILE, PRIOR_FROM_FILE, prior_conflict
    from caltars_bayes.io import atomic_write_dir, json_writer

    conflict = prior_conflict(fit, borrowed)
    doc = {**borrowed.to_dict(), "conflict_summary": conflict.attrs["summary"]}
    doc["source"] = {"path": fit.meta["prior_from"]["fit"], **doc["source"]}
    files = {
        PRIOR_FROM_FILE: json_writer(doc),
        PRIOR_CONFLICT_FILE: lambda p: conflict.to_csv(p, index=False),
    }
    atomic_write_dir(out, files, force=True, merge=True)
    print(conflict.attrs["summary"])


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of 1 or more, got {text!r}")
    return value


def _fit_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--draws", type=int, default=1000)
    p.add_argument("--tune", type=int, default=1000)
    p.add_argument("--chains", type=int, default=4)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--sampler", choices=["nutpie", "pymc", "numpyro", "blackjax"], default="nutpie")
    p.add_argument("--target-accept", type=float, default=None)
    p.add_argument(
        "--integration-time",
        type=_non_negative,
        default=None,
        help="nutpie: cap on a trajectory's length in the sampler's scaled units "
        "(default 3.2; 2.7 for large designs; 0 for plain NUTS). See docs/model.md",
    )
    p.add_argument(
        "--max-treedepth",
        type=_positive_int,
        default=None,
        help="most doublings of a NUTS trajectory (2^N - 1 leapfrog steps); default the "
        "sampler's (10), 6 for numpyro and blackjax on large designs. See docs/model.md",
    )
    p.add_argument(
        "--start",
        choices=["auto", "default", "data"],
        default="auto",
        help="where the chains start: the prior's centre (default) or values from "
        "simple summaries of the ratings (data; shortens tuning for large designs); "
        "auto: data for large designs, else default",
    )
    p.add_argument(
        "--method",
        choices=["nuts", "advi", "pathfinder", "fullrank_advi"],
        default="nuts",
        help="nuts (default), or an APPROXIMATE method for a quick look at any size: "
        "advi (mean-field; the better one for this model), pathfinder, or fullrank_advi "
        "(small models); every output is labelled approximate and never counts as converged",
    )
    p.add_argument("--strict", action="store_true", help="exit 3 if the fit did not converge")
    p.add_argument("--force", action="store_true", help="overwrite an existing output")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def cmd_fit(args: argparse.Namespace) -> int:
    inst = _load_instrument(args)
    data = _load_data(args, inst)
    return _fit_and_save(args, data, Path(args.out))


def _founding_hypotheses(args: argparse.Namespace, instrument) -> str | None:
    """The demo's hypotheses file: --hypotheses, else the founding study's when its scales fit."""
    from caltars_bayes.hypotheses import load_hypotheses
    from caltars_bayes.spec import models_dir

    if args.no_hypotheses:
        return None
    if args.hypotheses:
        return args.hypotheses
    path = models_dir() / "caltars-1989-hypotheses.toml"
    missing = sorted(
        {h.scale for h in load_hypotheses(path).hypotheses} - set(instrument.scale_codes)
    )
    if missing:
        print(
            f"note: the founding hypotheses name scales not in {instrument.name} "
            f"({', '.join(missing)}): no hypotheses tested (give --hypotheses F)"
        )
        return None
    return str(path)


def _saved_table(fitdir: Path, name: str):
    """A table that ``Fit.save`` wrote into ``fitdir`` (None when absent)."""
    import pandas as pd

    path = fitdir / name
    return pd.read_csv(path) if path.is_file() else None


def cmd_demo(args: argparse.Namespace) -> int:
    import time

    from caltars_bayes.reliability import dstudy
    from caltars_bayes.report import build_report, render
    from caltars_bayes.simulate import (
        FOUNDING_SESSION_COVARIATES,
        FOUNDING_SUBJECT_COVARIATES,
        simulate_trial,
    )
    from caltars_bayes.spec import load_instrument

    t0 = time.perf_counter()

    def step(n: int, text: str) -> None:
        print(f"\n[{n}/6] {text}  ({time.perf_counter() - t0:.0f} s)", flush=True)

    out = Path(args.out)
    if out.exists() and not args.force:
        raise CaltarsError(f"{out}: already exists; use --force to overwrite")
    inst = load_instrument(args.instrument)
    args.hypotheses = _founding_hypotheses(args, inst)
    step(
        1,
        f"simulating a trial of the founding design: {args.subjects} subjects x "
        f"{args.sessions} sessions x {args.judges} judges, {inst.name} ({len(inst.items)} items),"
        " with the founding study's covariates",
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
    step(2, "data report")
    print(data.report.format())
    step(
        3,
        "fitting the joint model with covariates"
        + (f" and the hypotheses in {args.hypotheses}" if args.hypotheses else ""),
    )
    fit = _fit_save(args, data, out / "fit")
    step(4, "decision study (1-8 judges x 1-12 sessions, target .80 with P >= .90)")
    study = dstudy(fit)
    study.save(out / "dstudy", force=args.force)
    print(study.smallest.drop(columns="converged").to_string(index=False))
    step(5, "writing the report (HTML, markdown, LaTeX)")
    report = build_report(
        fit,
        dstudy=study,
        reliability_table=_saved_table(out / "fit", "reliability.csv"),
        progress=lambda name: print(f"  {name} ({time.perf_counter() - t0:.0f} s)", flush=True),
    )
    try:
        render(report, out / "report", ["html", "md", "latex"], force=args.force)
    finally:
        report.close()
    step(6, "summary")
    for line in report.summary:
        print(f"  {line}")
    print(f"\nreport: {(out / 'report.html').resolve()}")
    print(f"        {out}/report.md, {out}/report.tex (figures in {out}/report_figures/)")
    print(f"fit:    {out}/fit/  trial: {out}/trial/  D-study: {out}/dstudy/")
    print(f"done in {time.perf_counter() - t0:.0f} s")
    if args.strict and not fit.converged:
        print("error: --strict: the fit did not converge", file=sys.stderr)
        return EXIT_NOT_CONVERGED
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from caltars_bayes.borrow import read_prior_from
    from caltars_bayes.fit import load_fit
    from caltars_bayes.report import FORMATS, SUFFIX, build_report, figure_dir

    fitdir = Path(args.fitdir)
    fmt = args.format
    if fmt is None:
        by_suffix = {v: k for k, v in SUFFIX.items()}
        fmt = by_suffix.get(Path(args.out).suffix.lower(), "html") if args.out else "html"
    if fmt not in FORMATS:
        raise CaltarsError(f"--format {fmt!r}: use one of {', '.join(FORMATS)}")
    out = Path(args.out) if args.out else fitdir / f"report{SUFFIX[fmt]}"
    for p in (out, figure_dir(out)):
        if p.exists() and not args.force:
            raise CaltarsError(f"{p}: already exists; use --force to overwrite")
    fit = load_fit(fitdir)
    prior_from, prior_conflict = read_prior_from(fitdir)  # written by fit --prior-from
    hypotheses = None
    if args.hypotheses:
        hypotheses = _load_hypotheses(args.hypotheses, fit.data)
    comparison = None
    if args.compare:
        import pandas as pd

        if not Path(args.compare).is_file():
            raise CaltarsError(f"{args.compare}: model-comparison table not found")
        try:
            comparison = pd.read_csv(args.compare)
        except (ValueError, UnicodeDecodeError) as exc:
            raise CaltarsError(f"{args.compare}: not a CSV table ({exc})") from None
        need = {"name", "elpd", "se", "elpd_diff", "dse", "weight"}
        if not need <= set(comparison.columns):
            missing = ", ".join(sorted(need - set(comparison.columns)))
            raise CaltarsError(f"{args.compare}: not a model-comparison table (no {missing})")
    print(f"building the report of {fitdir} ({fit.diagnostics.verdict})", flush=True)
    report = build_report(
        fit,
        hypotheses=hypotheses,
        dstudy=False if args.no_dstudy else None,
        comparison=comparison,
        ppc=not args.no_ppc,
        reliability_table=_saved_table(fitdir, "reliability.csv"),
        prior_from=prior_from,
        prior_conflict=prior_conflict,
        progress=lambda name: print(f"  {name}", flush=True),
    )
    try:
        path = report.write(out, fmt, force=args.force)
    finally:
        report.close()
    for line in report.summary:
        print(line)
    print(f"wrote {path}" + (f" (figures in {figure_dir(out)}/)" if report.figures else ""))
    return 0


def _probability(text: str, what: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = float("nan")
    if not 0.0 < v < 1.0:
        raise CaltarsError(f"{what} {text!r}: must be a number strictly between 0 and 1")
    return v


def cmd_dstudy(args: argparse.Namespace) -> int:
    from caltars_bayes.fit import load_fit
    from caltars_bayes.reliability import dstudy, parse_counts

    judges = parse_counts(args.judges, "--judges")
    sessions = parse_counts(args.sessions, "--sessions")
    items = parse_counts(args.items, "--items") if args.items else None
    target = _probability(args.target, "--target")
    prob = _probability(args.prob, "--prob")
    out = Path(args.out) if args.out else Path(args.fitdir) / "dstudy"
    if out.exists() and not args.force:
        raise CaltarsError(f"{out}: already exists; use --force to overwrite")
    fit = load_fit(args.fitdir)
    study = dstudy(
        fit,
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


def _scheduler(args: argparse.Namespace):
    return None if args.scheduler == "local" else args.scheduler


def cmd_plan(args: argparse.Namespace) -> int:
    from caltars_bayes.planning import load_plan, run_plan

    plan = load_plan(args.plan)
    print(repr(plan), flush=True)
    res = run_plan(
        plan,
        args.out,
        scheduler=_scheduler(args),
        workers=args.workers,
        force=args.force,
        progress=not args.quiet,
    )
    print(str(res.run))
    print(res.power.attrs.get("diagnostics", ""))
    cols = [c for c in res.power.columns if not c.endswith(("_low", "_high"))]
    print(res.power[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"wrote {args.out}/ (power.csv, power.png, power.svg, results.csv, tasks/)")
    return EXIT_TASKS_FAILED if res.run.failed else 0


def cmd_sbc(args: argparse.Namespace) -> int:
    from caltars_bayes.sbc import run_sbc
    from caltars_bayes.spec import load_instrument

    inst = load_instrument(args.instrument)
    res = run_sbc(
        inst,
        args.sims,
        subjects=args.subjects,
        sessions=args.sessions,
        judges=args.judges,
        draws=args.draws,
        tune=args.tune,
        chains=args.chains,
        method=args.method,
        n_ranks=args.ranks,
        seed=args.seed,
        out=args.out,
        scheduler=_scheduler(args),
        workers=args.workers,
        force=args.force,
        progress=not args.quiet,
    )
    print(str(res.run))
    print(res.summary())
    print(f"wrote {args.out}/ (sbc_tests.csv, ranks.csv, sbc_ecdf.png, sbc_ecdf.svg, tasks/)")
    return EXIT_TASKS_FAILED if res.run.failed else 0


def _dask_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--scheduler",
        default="local",
        help="local (a Dask LocalCluster on this machine, default), serial (this process, "
        "no Dask) or a Dask scheduler address, e.g. tcp://HOST:8786",
    )
    p.add_argument("--workers", type=int, default=None, help="LocalCluster size (default: cores)")
    p.add_argument("--force", action="store_true", help="start over where other results are")
    p.add_argument("--quiet", action="store_true", help="no progress lines")


def _figure_writers(files: dict, name: str, fig) -> None:
    files[f"{name}.png"] = lambda p: fig.savefig(p, format="png", dpi=150)
    files[f"{name}.svg"] = lambda p: fig.savefig(p, format="svg")


def cmd_compare(args: argparse.Namespace) -> int:
    import matplotlib.pyplot as plt

    from caltars_bayes.compare import compare_fits, plot_compare
    from caltars_bayes.fit import load_fit
    from caltars_bayes.io import atomic_write_dir

    out = Path(args.out)
    if out.exists() and not args.force:
        raise CaltarsError(f"{out}: already exists; use --force to overwrite")
    if len(args.fitdirs) < 2:
        raise CaltarsError("compare: give at least two fit directories")
    fits = {}
    for d in args.fitdirs:
        name = Path(d).resolve().name
        if name in fits:
            raise CaltarsError(f"{d}: two fit directories are named {name!r}; rename one")
        fits[name] = load_fit(d)
    print(f"comparing {', '.join(fits)} (leave one {args.by} out)", flush=True)
    fallback = "none" if args.no_kfold else args.fallback
    table = compare_fits(fits, by=args.by, fallback=fallback, n_folds=args.folds)
    fig = plot_compare(table)
    files = {"compare.csv": lambda p: table.to_csv(p, index=False)}
    _figure_writers(files, "compare", fig)
    try:
        atomic_write_dir(out, files, force=args.force)
    finally:
        plt.close(fig)
    cols = ["name", "elpd", "elpd_diff", "dse", "weight", "n_high_k", "method", "converged"]
    print(table[cols].to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    print(f"wrote {out}/ (compare.csv, compare.png, compare.svg)")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    import matplotlib.pyplot as plt

    from caltars_bayes.fit import load_fit
    from caltars_bayes.io import atomic_write_dir
    from caltars_bayes.ppc import ppc
    from caltars_bayes.structure import (
        classical_structure,
        factor_correlations,
        plot_factor_correlations,
        standardised_loadings,
    )

    out = Path(args.out) if args.out else Path(args.fitdir) / "check"
    if out.exists() and not args.force:
        raise CaltarsError(f"{out}: already exists; use --force to overwrite")
    fit = load_fit(args.fitdir)
    check = ppc(fit, n_draws=args.draws, seed=args.seed)
    figs = [plot_factor_correlations(fit), check.plot()]
    files = {
        "loadings.csv": lambda p: standardised_loadings(fit).to_csv(p, index=False),
        "classical_structure.csv": lambda p: classical_structure(fit.data).to_csv(p, index=False),
        "factor_correlations.csv": lambda p: factor_correlations(fit).to_csv(p, index=False),
        "ppc.csv": lambda p: check.table.to_csv(p, index=False),
        "ppc_verdict.csv": lambda p: check.verdict.to_csv(p, index=False),
    }
    _figure_writers(files, "factor_correlations", figs[0])
    _figure_writers(files, "ppc", figs[1])
    try:
        atomic_write_dir(out, files, force=args.force)
    finally:
        for f in figs:
            plt.close(f)
    print(fit.diagnostics.banner())
    print(check.verdict.drop(columns="converged").to_string(index=False))
    print(f"posterior predictive checks: {check.summary}")
    print(f"wrote {out}/")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from caltars_bayes.calibration import calibrate
    from caltars_bayes.fit import load_fit

    out = Path(args.out)
    if out.exists() and not args.force:
        raise CaltarsError(f"{out}: already exists; use --force to overwrite")
    cal = calibrate(load_fit(args.fitdir), n_draws=args.draws)
    cal.save(out, force=args.force)
    print(cal.diagnostics.banner())
    print(f"calibration of {cal.instrument.name}: {cal.n_draws} draws, judges {cal.judges}")
    print(f"wrote {out}/")
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from caltars_bayes.calibration import load_calibration, score_trial
    from caltars_bayes.scoring import drift_summary

    out = Path(args.out)
    if out.exists() and not args.force:
        raise CaltarsError(f"{out}: already exists; use --force to overwrite")
    cal = load_calibration(args.calibration, n_draws=args.draws)
    if args.instrument is None:  # the calibration's own instrument
        inst = cal.instrument
    else:
        inst = _load_instrument(args)
    data = _load_data(args, inst)
    res = score_trial(
        data,
        cal,
        seed=args.seed,
        importance=not args.no_importance,
        new_judges="all" if args.check_all_judges else "unknown",
    )
    res.save(out, force=args.force)
    print(res.banner)
    print(
        f"scored {data.n_subjects} subjects, {data.n_sessions} sessions ({data.n_ratings} "
        f"ratings) with {cal.n_draws} calibration draws; {res.report['method']}"
    )
    for note in res.report["notes"]:
        print(f"note: {note}")
    for line in drift_summary(res.new_judges):
        print(line)
    print(f"wrote {out}/ (scores.csv, new_judges.csv, data_report.json, score_report.json)")
    return 0


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
    f.add_argument(
        "--prior-from",
        metavar="FITDIR",
        help="borrow informative priors (instrument and population parameters) from an earlier "
        "fit; writes prior_from.json and prior_conflict.csv (see docs/calibration.md)",
    )
    f.add_argument(
        "--prior-weight",
        type=float,
        default=1.0,
        help="power-prior weight of --prior-from in [0, 1] (1: full; smaller discounts it)",
    )
    _fit_args(f)
    f.set_defaults(func=cmd_fit)

    d = sub.add_parser(
        "demo",
        help="the whole analysis of a simulated founding-design trial",
        description="Simulate a trial of the founding design (52 subjects x 4 sessions x 3 "
        "judges, CALTARS, the founding study's covariates), fit the joint model with the "
        "founding hypotheses, run the decision study and write the report into --out "
        "(trial/, fit/, dstudy/, report.html, report.md, report.tex, report_figures/).",
    )
    d.add_argument("--instrument", default=_default_instrument())
    d.add_argument("--out", default="demo_output")
    d.add_argument("--subjects", type=int, default=52)
    d.add_argument("--sessions", type=int, default=4)
    d.add_argument("--judges", type=int, default=3)
    d.add_argument(
        "--hypotheses",
        default=None,
        help="hypotheses TOML (default: models/caltars-1989-hypotheses.toml when the "
        "instrument has its scales)",
    )
    d.add_argument("--no-hypotheses", action="store_true", help="test no hypotheses")
    _fit_args(d)
    d.set_defaults(func=cmd_demo)

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
        choices=["html", "md", "latex"],
        default=None,
        help="html (default; one self-contained file), md or latex (booktabs tables)",
    )
    r.add_argument("--out", default=None, help="report file (default FITDIR/report.html|md|tex)")
    r.add_argument("--hypotheses", help="hypotheses TOML (default: those saved with the fit)")
    r.add_argument(
        "--compare", help="model-comparison table (CSV from caltars_bayes.compare) to include"
    )
    r.add_argument("--no-dstudy", action="store_true", help="leave out the decision study")
    r.add_argument("--no-ppc", action="store_true", help="leave out posterior predictive checks")
    r.add_argument("--force", action="store_true", help="overwrite an existing report")
    r.set_defaults(func=cmd_report)

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
    ds.set_defaults(func=cmd_dstudy)

    cp = sub.add_parser(
        "compare",
        help="compare fits of alternative structures by cross-validation (PSIS-LOO)",
        description="Compare fit directories of the same ratings (e.g. `fit --structure NAME`) "
        "by expected log predictive density, leaving out one session (default) or one rating "
        "at a time. Writes compare.csv (best first: name, elpd, se, elpd_diff, dse, stacking "
        "weight, p_loo, Pareto-k summary, method, converged), compare.png and compare.svg. "
        "When some Pareto k > 0.7 it warns and, by default, moment matches the high-k units "
        "(Paananen et al. 2021; no refit); units still above 0.7 make it re-estimate every model "
        "by K-fold cross-validation (K refits each). See docs/structure.md.",
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
    cp.add_argument("--force", action="store_true", help="overwrite an existing output")
    cp.set_defaults(func=cmd_compare)

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
    ck.set_defaults(func=cmd_check)

    pl = sub.add_parser(
        "plan",
        help="plan a trial by simulation: power of candidate designs (Dask)",
        description="Simulate and fit every replication of the plan's designs x effects "
        "(each one a Dask task), apply the decision rules and write power.csv, power.png, "
        "power.svg and results.csv into --out. Results are written per replication as they "
        "finish (tasks/): rerunning the same command resumes. Exit 1 if some replications "
        "failed (rerun to retry them). See docs/planning.md and models/plan-example.toml.",
    )
    pl.add_argument("plan", help="plan TOML, e.g. models/plan-example.toml")
    pl.add_argument("--out", required=True, help="results folder")
    _dask_args(pl)
    pl.set_defaults(func=cmd_plan)

    sb = sub.add_parser(
        "sbc",
        help="simulation-based calibration of the model (Dask)",
        description="Draw parameters from the prior, simulate ratings of a small design, fit "
        "them and rank the truth among the posterior draws (Talts et al. 2018), one Dask task "
        "per simulation; test the ranks for uniformity and plot ECDF differences. Resumable "
        "like plan. Exit 1 if some simulations failed.",
    )
    sb.add_argument("--instrument", default=_default_instrument())
    sb.add_argument("--sims", type=int, default=200)
    sb.add_argument("--subjects", type=int, default=10)
    sb.add_argument("--sessions", type=int, default=2)
    sb.add_argument("--judges", type=int, default=2)
    sb.add_argument("--draws", type=int, default=500, help="draws per chain")
    sb.add_argument("--tune", type=int, default=500)
    sb.add_argument("--chains", type=int, default=2)
    sb.add_argument(
        "--method", choices=["nuts", "advi", "pathfinder", "fullrank_advi"], default="nuts"
    )
    sb.add_argument("--ranks", type=int, default=99, help="L: thinned draws per rank (<= ESS)")
    sb.add_argument("--seed", type=int, default=1)
    sb.add_argument("--out", default="sbc_results")
    _dask_args(sb)
    sb.set_defaults(func=cmd_sbc)

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
    ca.set_defaults(func=cmd_calibrate)

    sc = sub.add_parser(
        "score",
        help="score new subjects and sessions with a calibration",
        description="Posterior alliance per subject x scale and per session x scale of a new "
        "trial, from a calibration (or a fit directory), propagating the calibration's "
        "uncertainty. Writes scores.csv (the format of a fit's scores.csv), new_judges.csv "
        "(judges not in the calibration, with rater-drift flags), data_report.json and "
        "score_report.json into --out. See docs/calibration.md.",
    )
    _data_args(sc)
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
    sc.set_defaults(func=cmd_score)
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
