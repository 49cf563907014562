"""The report formats and their file suffixes (no imports: the command line's parser reads them)."""

from __future__ import annotations

#: report formats, in the order the command line lists them
FORMATS = ("html", "md", "latex")
#: each format's file suffix
SUFFIX = {"html": ".html", "md": ".md", "latex": ".tex"}
