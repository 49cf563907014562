"""The benchmark script runs on a tiny design, so it cannot rot."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_benchmark_script_tiny(tmp_path):
    out = tmp_path / "results.md"
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "run.py"
    res = subprocess.run(
        [sys.executable, str(script), "--tiny", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    text = out.read_text()
    assert "| tiny 6x2x2 | 720 |" in text
    row = next(line for line in text.splitlines() if line.startswith("| tiny"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert float(cells[6]) > 0  # sampling seconds measured
    assert int(cells[13]) >= 0  # divergences counted
