"""The one figure writer: every figure the package saves goes through here.

One resolution policy: vector SVG beside a raster PNG at :data:`PNG_DPI`
(enough for print at column width; the same dpi where a report embeds a PNG).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

#: raster resolution of every saved or embedded PNG
PNG_DPI = 150
#: the formats written for each figure
FIGURE_FORMATS = ("png", "svg")


def save_figure(fig: Any, path: str | Path, fmt: str | None = None) -> None:
    """Write ``fig`` to ``path`` as PNG (:data:`PNG_DPI`) or SVG, trimmed to its content."""
    fmt = fmt or Path(path).suffix.lstrip(".").lower()
    kwargs: dict[str, Any] = {"format": fmt, "bbox_inches": "tight"}
    if fmt == "png":
        kwargs["dpi"] = PNG_DPI
    fig.savefig(path, **kwargs)


def figure_bytes(fig: Any, fmt: str = "png") -> bytes:
    """The bytes :func:`save_figure` would write (for embedding in a report)."""
    buf = io.BytesIO()
    save_figure(fig, buf, fmt)  # type: ignore[arg-type]
    return buf.getvalue()


def figure_files(name: str, fig: Any) -> dict[str, Callable[[Path], None]]:
    """Writers of ``name.png`` and ``name.svg`` for ``atomic_write_dir``."""
    return {f"{name}.{fmt}": partial(save_figure, fig, fmt=fmt) for fmt in FIGURE_FORMATS}


def close_figures(figures: list[Any]) -> None:
    """Close matplotlib figures (after they are written)."""
    if figures:
        import matplotlib.pyplot as plt

        for fig in figures:
            plt.close(fig)
