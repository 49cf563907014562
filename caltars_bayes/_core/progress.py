"""Where a workflow's progress lines go: a ``say`` callback (``print`` on the command line)."""

from __future__ import annotations

from collections.abc import Callable

#: a function that takes one line of progress text
Say = Callable[[str], None]


def silent(text: str) -> None:
    """The default ``say`` of library workflows: print nothing."""
