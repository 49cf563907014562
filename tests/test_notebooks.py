"""The worked notebooks (jupytext percent format) run top to bottom with small settings.

Each notebook is converted with jupytext and executed with nbclient in a fresh
kernel, with ``CALTARS_BAYES_NOTEBOOK_DRAWS`` set so that it uses a tiny trial
and few draws. A failing cell fails the test with the cell's error.
"""

from __future__ import annotations

from pathlib import Path

import jupytext
import nbclient
import pytest

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("[0-9][0-9]_*.py"))
#: draws (and tuning steps) per chain in the notebooks' small-settings mode
SMALL_DRAWS = "30"


def test_notebooks_are_there():
    names = [p.stem for p in NOTEBOOKS]
    assert names == [
        "01_quickstart",
        "02_reliability_dstudy",
        "03_structure_compare",
        "04_construct_validity",
        "05_scoring",
        "06_planning",
    ]
    for p in NOTEBOOKS:
        text = p.read_text()
        assert "format_name: percent" in text and "CALTARS_BAYES_NOTEBOOK_DRAWS" in text


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path, monkeypatch):
    monkeypatch.setenv("CALTARS_BAYES_NOTEBOOK_DRAWS", SMALL_DRAWS)
    monkeypatch.setenv("CALTARS_BAYES_NUTPIE_BACKEND", "jax")  # compiles in seconds
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    nb = jupytext.read(path)
    client = nbclient.NotebookClient(
        nb,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()
    errors = [
        out
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if out.get("output_type") == "error"
    ]
    assert not errors
    # the notebook showed something: every code cell ran
    assert all(
        c.get("execution_count") for c in nb.cells if c.cell_type == "code" and c.source.strip()
    )
