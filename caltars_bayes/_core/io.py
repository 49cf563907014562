"""Atomic writes of result files and folders.

A result is first written into a hidden temporary folder beside its target and
renamed into place only when every file is complete, so an interrupted run
never leaves a half-written result. An existing result is never replaced
unless ``force=True``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from caltars_bayes._core.errors import FitIOError

Writer = Callable[[Path], Any]


def atomic_write_dir(
    out: Path, files: Mapping[str, Writer], force: bool = False, merge: bool = False
) -> list[Path]:
    """Write several files into folder ``out`` atomically.

    Parameters
    ----------
    out : target folder.
    files : file name -> function writing that file to the path it is given.
    force : replace an existing folder (or existing files when ``merge``).
    merge : add the files to an existing folder instead of creating a new one;
        each file is still written atomically and an existing file needs ``force``.

    Returns
    -------
    The paths written.
    """
    out = Path(out)
    if merge and out.is_dir():
        clash = [n for n in files if (out / n).exists()]
        if clash and not force:
            raise FitIOError(f"{out / clash[0]}: already exists; use --force to overwrite")
        return [atomic_write_file(out / n, w, force=True) for n, w in files.items()]
    if out.exists() and not force:
        raise FitIOError(f"{out}: already exists; use --force to overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        for name, writer in files.items():
            writer(tmp / name)
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return [out / n for n in files]


def atomic_write_file(path: Path, writer: Writer, force: bool = False) -> Path:
    """Write one file atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    if path.exists() and not force:
        raise FitIOError(f"{path}: already exists; use --force to overwrite")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        writer(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def json_writer(obj: Any) -> Writer:
    """A writer for :func:`atomic_write_dir` that dumps ``obj`` as indented JSON."""

    def write(p: Path) -> None:
        p.write_text(json.dumps(obj, indent=2, default=_json_default) + "\n")

    return write


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
