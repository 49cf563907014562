"""The ``caltars-bayes`` command line (see :mod:`caltars_bayes.cli.app`)."""

from caltars_bayes.cli.app import main

__all__ = ["main"]
