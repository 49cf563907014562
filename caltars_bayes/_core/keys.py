"""The one check of a TOML table's keys: a misspelt key is an error, never ignored."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from caltars_bayes._core.errors import SpecError


def check_keys(table: Any, allowed: set[str], where: str) -> dict[str, Any]:
    """Return ``table`` as a dict when it is a table whose keys are all in ``allowed``.

    Raises :class:`SpecError` naming ``where`` (file and table) and every
    unknown key, with the allowed ones, otherwise.
    """
    if not isinstance(table, Mapping):
        raise SpecError(f"{where}: must be a table, got {type(table).__name__} {table!r}")
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise SpecError(
            f"{where}: unknown key(s) {', '.join(repr(k) for k in unknown)}; "
            f"allowed: {', '.join(sorted(allowed))}"
        )
    return dict(table)
