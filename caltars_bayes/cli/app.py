"""The ``caltars-bayes`` command line: one small module per command.

Each command module has ``add_parser(sub)`` and ``run(args)``; ``run`` parses
what argparse cannot, calls one library function and prints. The library is
imported inside ``run``, so ``caltars-bayes --help`` imports no PyMC.

The long-running commands take ``--quiet`` (no progress on the terminal) and
``--log FILE`` (every progress line and every printed line appended to FILE
with a timestamp, also with ``--quiet``): :func:`main` runs the command inside
:func:`caltars_bayes._core.progress.log_to`, so every progress of the library
writes there, and the command's own lines go there through
:func:`caltars_bayes.cli.common.echo`.

Exit codes: 0 success; 2 bad input (one-line error, no traceback unless
``--debug``); 3 ``--strict`` and the fit did not converge; 1 ``plan``/``sbc``:
some tasks failed (rerun to retry them).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from types import ModuleType

from caltars_bayes._core.errors import CaltarsError, CaltarsWarning
from caltars_bayes._core.progress import log_to, write_log
from caltars_bayes.cli import (
    calibrate,
    check,
    compare,
    demo,
    dstudy,
    export,
    fit,
    plan,
    report,
    sbc,
    score,
    simulate,
    validate,
)
from caltars_bayes.cli.common import EXIT_BAD_INPUT, echo

#: the commands, in the order ``--help`` lists them
COMMANDS: tuple[ModuleType, ...] = (
    validate,
    simulate,
    fit,
    demo,
    report,
    dstudy,
    compare,
    check,
    plan,
    sbc,
    calibrate,
    score,
    export,
)


def build_parser() -> argparse.ArgumentParser:
    """The parser with every command's subparser."""
    p = argparse.ArgumentParser(
        prog="caltars-bayes",
        description="Bayesian measurement models for observer-rated psychotherapy process scales.",
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = p.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return its exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    with log_to(getattr(args, "log", None)) as log:
        if log is not None:
            words = sys.argv[1:] if argv is None else list(argv)
            write_log(" ".join(["caltars-bayes", *words]))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("default", CaltarsWarning)
                warnings.showwarning = _show_warning  # restored when the block exits
                return int(args.func(args) or 0)
        except (CaltarsError, ImportError) as exc:
            if args.debug:
                raise
            echo(f"error: {exc}", err=True)
            return EXIT_BAD_INPUT
        except KeyboardInterrupt:
            echo("interrupted", err=True)
            return 130


def _version() -> str:
    """The installed package's version (importlib.metadata: imports no library code)."""
    try:
        return version("caltars-bayes")
    except PackageNotFoundError:  # pragma: no cover - a bare checkout, not installed
        return "0+unknown"


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # type: ignore[no-untyped-def]
    echo(f"warning: {message}", err=True)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
