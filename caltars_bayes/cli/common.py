"""Arguments and steps that several commands share.

The library is imported inside the functions that need it, never at module
level, so that ``caltars-bayes --help`` and ``validate`` import no PyMC.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from caltars_bayes._core.errors import CaltarsError
from caltars_bayes._core.progress import Say, write_log

EXIT_BAD_INPUT = 2
EXIT_NOT_CONVERGED = 3
EXIT_TASKS_FAILED = 1

#: the instrument spec used unless --instrument says otherwise (in models/)
DEFAULT_INSTRUMENT = "caltars.toml"


def default_instrument() -> str:
    """``models/caltars.toml`` (the spec layer is light: no PyMC is imported)."""
    from caltars_bayes.spec.instrument import models_dir

    return str(models_dir() / DEFAULT_INSTRUMENT)


def refuse_existing(*paths: Path, force: bool) -> None:
    """Stop before any work when an output exists and ``--force`` was not given."""
    for p in paths:
        if p.exists() and not force:
            raise CaltarsError(f"{p}: already exists; use --force to overwrite")


def column_mapping(pairs: Sequence[str] | None) -> dict[str, str] | None:
    """``--map YOUR_COLUMN=canonical_name`` pairs as a dict."""
    if not pairs:
        return None
    out = {}
    for p in pairs:
        if "=" not in p:
            raise CaltarsError(f"--map {p!r}: use YOUR_COLUMN=canonical_name, e.g. patient=subject")
        k, v = p.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def load_instrument_arg(args: argparse.Namespace) -> Any:
    """The instrument of ``--instrument`` (with ``--model`` and ``--structure``)."""
    from caltars_bayes.spec.instrument import load_instrument

    inst = load_instrument(args.instrument, model=getattr(args, "model", None))
    structure = getattr(args, "structure", None)
    if structure:
        inst = inst.with_structure(structure)
    return inst


def load_data_arg(args: argparse.Namespace, instrument: Any) -> Any:
    """The ratings (and covariates) named by :func:`data_args`."""
    from caltars_bayes.data.ratings import RatingData

    return RatingData.from_files(
        args.ratings,
        instrument,
        covariates=args.covariates,
        session_covariates=args.session_covariates,
        layout=args.layout,
        columns=column_mapping(args.map),
        sheet=args.sheet,
        on_invalid="drop" if args.drop_invalid else "error",
        missing_codes=missing_codes(args.missing_codes),
    )


def missing_codes(text: str | None) -> list[float] | None:
    """``--missing-codes 9,99`` as numbers (None when not given)."""
    if not text:
        return None
    out = []
    for part in text.split(","):
        try:
            out.append(float(part))
        except ValueError:
            raise CaltarsError(
                f"--missing-codes {text!r}: use numbers separated by commas, e.g. 9,99"
            ) from None
    return out


def data_args(p: argparse.ArgumentParser) -> None:
    """The ratings file and how to read it."""
    p.add_argument("ratings", help="ratings file (CSV, TSV, Excel, SPSS .sav, parquet)")
    p.add_argument("--instrument", default=default_instrument(), help="instrument spec TOML")
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
    p.add_argument(
        "--missing-codes",
        metavar="CODES",
        help="rating values meaning 'not rated', e.g. 9,99: read as missing (counted as "
        "missing in the data report); each must lie outside the response range",
    )


def non_negative(text: str) -> float:
    """argparse type: a number >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of 1 or more, got {text!r}")
    return value


def probability(text: str, what: str) -> float:
    """A number strictly between 0 and 1 (``what`` names the option in the error)."""
    try:
        v = float(text)
    except ValueError:
        v = float("nan")
    if not 0.0 < v < 1.0:
        raise CaltarsError(f"{what} {text!r}: must be a number strictly between 0 and 1")
    return v


def fit_args(p: argparse.ArgumentParser) -> None:
    """Sampler settings of ``fit`` and ``demo``."""
    p.add_argument("--draws", type=int, default=1000)
    p.add_argument(
        "--tune",
        type=int,
        default=None,
        help="warmup iterations per chain (default 1000; 500 for data sets of 50,000 "
        "ratings or more). See docs/model.md, 'Warmup length'",
    )
    p.add_argument("--chains", type=int, default=4)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--sampler", choices=["nutpie", "pymc", "numpyro", "blackjax"], default="nutpie")
    p.add_argument("--target-accept", type=float, default=None)
    p.add_argument(
        "--integration-time",
        type=non_negative,
        default=None,
        help="nutpie: cap on a trajectory's length in the sampler's scaled units "
        "(default 3.2; 2.7 for large designs; 0 for plain NUTS). See docs/model.md",
    )
    p.add_argument(
        "--max-treedepth",
        type=positive_int,
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
    progress_args(p)


def fit_options(args: argparse.Namespace) -> dict[str, Any]:
    """:func:`~caltars_bayes.inference.fit.fit_model` keywords from :func:`fit_args`."""
    from caltars_bayes.inference.record import TREE_DEPTH_OPTION

    nuts: dict[str, Any] = {}
    if args.target_accept is not None:
        nuts["target_accept"] = args.target_accept
    if args.integration_time is not None:
        if args.sampler != "nutpie":
            raise CaltarsError("--integration-time: applies to the nutpie sampler only")
        nuts["target_integration_time"] = args.integration_time or None  # 0: plain NUTS
    if args.max_treedepth is not None:
        nuts[TREE_DEPTH_OPTION[args.sampler]] = args.max_treedepth
    return {
        "draws": args.draws,
        "tune": args.tune,
        "chains": args.chains,
        "sampler": args.sampler,
        "random_seed": args.seed,
        "start": args.start,
        "nuts": nuts,
        "progressbar": not args.quiet,
        "method": args.method,
    }


def dask_args(p: argparse.ArgumentParser) -> None:
    """Where ``plan`` and ``sbc`` run their tasks."""
    p.add_argument(
        "--scheduler",
        default="local",
        help="local (a Dask LocalCluster on this machine, default), serial (this process, "
        "no Dask) or a Dask scheduler address, e.g. tcp://HOST:8786",
    )
    p.add_argument("--workers", type=int, default=None, help="LocalCluster size (default: cores)")
    p.add_argument("--force", action="store_true", help="start over where other results are")
    progress_args(p)


def scheduler(args: argparse.Namespace) -> str | None:
    """``--scheduler``: None for a local cluster, else as given."""
    return None if args.scheduler == "local" else args.scheduler


def progress_args(p: argparse.ArgumentParser) -> None:
    """``--quiet`` and ``--log FILE`` of the commands that can run long."""
    p.add_argument(
        "--quiet",
        action="store_true",
        help="no progress on the terminal (no bars, no progress lines); results and errors "
        "are still printed, and a --log file still gets every line",
    )
    p.add_argument(
        "--log",
        metavar="FILE",
        help="append every progress line (sampling, refits, tasks, scoring; at least one every "
        "10 s) and every line the command prints to FILE, each after a timestamp; "
        "also with --quiet",
    )


def echo(text: object = "", *, err: bool = False) -> None:
    """Print a line at once (stdout, or stderr with ``err``) and append it to the --log file."""
    print(text, file=sys.stderr if err else sys.stdout, flush=True)
    write_log(str(text))


def say(text: str) -> None:
    """Print a progress line at once (the library's ``say=`` callback); see :func:`echo`."""
    echo(text)


def say_for(args: argparse.Namespace) -> Say:
    """The library's ``say=`` callback for a command: :func:`say`, or with ``--quiet``
    only the --log file."""
    return write_log if getattr(args, "quiet", False) else say
