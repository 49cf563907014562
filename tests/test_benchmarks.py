"""The benchmark scripts run on tiny designs, so they cannot rot."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=900, check=False
    )


def _table(text: str, heading: str) -> list[list[str]]:
    """Rows (cells) of the first markdown table after ``heading``."""
    lines = text.split(heading, 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start + 2 :]:  # skip the header and the rule
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


@pytest.mark.slow
@pytest.mark.long  # 138 s in CI (numba compiles of designs the joint form makes new)
def test_benchmark_script_tiny(tmp_path, monkeypatch):
    out = tmp_path / "results.md"
    res = _run(str(BENCH / "run.py"), "--tiny", "--out", str(out))
    assert res.returncode == 0, res.stderr[-2000:]
    text = out.read_text()
    # founding design
    assert "| tiny 6x2x2 | 720 |" in text
    row = next(line for line in text.splitlines() if line.startswith("| tiny"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert float(cells[6]) > 0  # sampling seconds measured
    # nutpie's tuning steps are counted (recorded by the fit), not assumed
    assert float(cells[8]) > 0
    assert int(cells[14]) >= 0  # divergences counted
    # scaling: 1x reuses the founding run, 2x doubles the ratings; gradient time measured
    scaling = _table(text, "## Scaling")
    assert [r[1] for r in scaling] == ["720", "1440"]
    assert all(float(r[3]) > 0 for r in scaling) and scaling[0][5] == "1.00"
    assert "| 10x subjects <= 10 min, <= 4 GB | not run; largest run 2x:" in text
    # the package's defaults per design, stated: the 2x row is a large design here
    # (the smoke run's threshold is 20 sessions): joint form, data start, t = 2.7
    assert [r[2] for r in scaling] == [
        "default form, default start, t = 3.2",
        "joint form, data start, t = 2.7",
    ]
    raw = json.loads(out.with_suffix(".json").read_text())["sections"]
    assert "large" not in raw
    big = raw["scaling"]["rows"][1]["result"]
    assert big["large_design"] is True and big["joint_subject_sessions"] is True
    assert big["short_trajectory_cap"] is True
    assert big["nuts"] == {} and big["integration_time"] == 2.7 and big["start"] == "data"
    assert big["divergences"] >= 0 and big["sampling_s"] > 0
    # single scale: both models fitted on the anchor trial's scale 1 (4 subjects x 72)
    single = _table(text, "## Single scale")
    ours = [r for r in single if "this run" in r[0]]
    assert len(ours) == 2 and all(r[1] == "288" for r in ours)
    # approximate mode: compared with NUTS (the founding run), labelled approximate
    approx = _table(text, "## Approximate mode")
    methods = [r[0] for r in approx if r[0]]
    assert methods == ["advi"]
    assert [r[4] for r in approx] == ["all", "theta", "sds and correlations"]
    assert all(float(r[6]) >= 0 for r in approx)  # errors in sd units computed
    raw = json.loads(out.with_suffix(".json").read_text())
    for m in raw["sections"]["approx"]["methods"].values():
        assert m["verdict"].startswith("APPROXIMATE") and m["converged"] is False
    assert "## Targets" in text and "founding design <= 60 s" in text

    # rerunning one section keeps the others (in-process, the section's fits replaced by
    # a copy of the first run's result with a new total time)
    spec = importlib.util.spec_from_file_location("bench_run", BENCH / "run.py")
    run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run)
    single = {k: v for k, v in raw["sections"]["single"].items() if k not in ("seed", "stamp")}
    single["caltars_single"] = {**single["caltars_single"], "total_s": 123.0}
    monkeypatch.setattr(run, "section_single", lambda tiny: single)
    assert run.main(["--tiny", "--only", "single", "--out", str(out)]) == 0
    raw2 = json.loads(out.with_suffix(".json").read_text())
    assert raw2["sections"]["founding"] == raw["sections"]["founding"]
    assert raw2["sections"]["approx"] == raw["sections"]["approx"]
    assert raw2["sections"]["single"]["caltars_single"]["total_s"] == 123.0
    text2 = out.read_text()
    assert (
        "| 123.0 |" in text2 and "## Approximate mode" in text2 and "| tiny 6x2x2 | 720 |" in text2
    )


def _load_run():
    spec = importlib.util.spec_from_file_location("bench_run_targets", BENCH / "run.py")
    run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run)
    return run


def test_benchmark_targets_table_states_each_verdict():
    """The Targets rows, from synthetic section results (no fitting)."""
    run = _load_run()

    def result(total, ms, ratings, div=0, converged=True, mb=900.0):
        return {
            "total_s": total, "divergences": div, "converged": converged, "min_ess_bulk": 800.0,
            "ms_per_gradient": ms, "ratings": ratings, "peak_memory_mb": mb,
            "large_design": True, "joint_subject_sessions": True, "start": "data",
            "integration_time": 2.7,
        }  # fmt: skip

    fnd = {"rows": [{"result": result(97.1, 0.39, 18720)}]}
    rows = "\n".join(run.md_targets({"founding": fnd}))
    assert "<= 120 s wall with every diagnostic passing | 97.1 s, converged True | **met**" in rows
    assert "<= 60 s wall incl. build and compile | 97.1 s | **not met** (1.6x" in rows
    # a diverging fit misses the 120 s target however fast it is
    bad = {"rows": [{"result": result(50.0, 0.39, 18720, div=3)}]}
    rows = "\n".join(run.md_targets({"founding": bad}))
    assert "| 50.0 s, converged True | **not met** |" in rows
    # scaling: a run that stopped at 3x says the 10x target was not measured
    sc = {"rows": [
        {"multiple": 1, "result": result(97.1, 0.39, 18720)},
        {"multiple": 3, "result": result(400.0, 1.08, 56160, mb=1900.0)},
    ]}  # fmt: skip
    rows = "\n".join(run.md_targets({"scaling": sc}))
    assert "| 10x subjects <= 10 min, <= 4 GB | not run; largest run 3x: 400 s, 1900 MB" in rows
    assert "**not measured**" in rows
    assert "0.92x the 1x cost for one gradient alone | **met**" in rows
    sc["rows"].append({"multiple": 10, "result": result(700.0, 4.5, 187200, mb=3000.0)})
    rows = "\n".join(run.md_targets({"scaling": sc}))
    head = "| 10x subjects <= 10 min, <= 4 GB, converged, package defaults | "
    assert head + "700 s, 3000 MB, joint form, data start, t = 2.7, min bulk ESS 800" in rows
    assert "0 divergences, converged True | **not met** |" in rows
    assert "1.15x the 1x cost for one gradient alone | **met**" in rows
    # in time and memory, but a fit that did not converge does not meet it
    sc["rows"][-1]["result"].update(total_s=550.0, converged=False)
    rows = "\n".join(run.md_targets({"scaling": sc}))
    assert "converged False | **not met** |" in rows
    sc["rows"][-1]["result"]["converged"] = True
    rows = "\n".join(run.md_targets({"scaling": sc}))
    assert "0 divergences, converged True | **met** |" in rows
    # inside the sampler the cost per rating may grow although one gradient's does not
    for row, core in zip(sc["rows"], (0.36, 1.0, 12.0), strict=True):
        row["result"]["ms_per_gradient_core"] = core
    rows = "\n".join(run.md_targets({"scaling": sc}))
    assert "1.15x the 1x cost for one gradient alone, 3.33x inside the sampler (est.)" in rows
    assert "(est.) | **not met**" in rows


def test_benchmark_refuses_unknown_section(tmp_path):
    res = _run(str(BENCH / "run.py"), "--tiny", "--only", "fastest", "--out", str(tmp_path / "r"))
    assert res.returncode == 2 and "unknown section" in res.stderr


@pytest.mark.long  # 31 s in CI (2026-12-07); a benchmark script's smoke test, as first_fit's
@pytest.mark.jax
def test_gpu_script_tiny_on_cpu(tmp_path):
    """gpu_100x.py through gpu_device.sh, the device call's script (no wheels here)."""
    import os

    out = tmp_path / "gpu_results"
    args = ["--subjects", "4", "--sessions", "2", "--judges", "2", "--chains", "2"]
    args += ["--tune", "10", "--draws", "10", "--max-treedepth", "4", "--no-covariates"]
    args += ["--start", "data", "--sampler", "nutpie"]  # numpyro is slower on the CPU
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path), "LIMIT": "600"}
    env["WHEELS"] = str(tmp_path / "no_wheels")
    res = subprocess.run(
        ["bash", str(BENCH / "gpu_device.sh"), *args],
        capture_output=True, text=True, timeout=900, check=False, env=env,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    card = (tmp_path / "card.txt").read_text()
    assert "jax devices:" in card and "pymc " in card and "nutpie " in card
    assert "fitted:" in (tmp_path / "log.txt").read_text()
    assert "exit status 0" in res.stdout
    r = json.loads(out.with_suffix(".json").read_text())
    assert r["design"]["ratings"] == 4 * 2 * 2 * 30
    assert r["device"]["platform"] == "cpu" and r["device"]["card"]
    assert r["wall_s"] > 0 and r["sampling_s"] > 0 and r["divergences"] >= 0
    assert r["settings"]["chain_method"].startswith("threads")  # nutpie
    assert r["settings"]["max_treedepth"] == 4
    assert r["settings"]["start"] == "data" and r["settings"]["gradient_backend"] == "jax"
    # 8 sessions: not a large design, so the default form and nutpie's default cap
    assert r["settings"]["joint_subject_sessions"] is False
    assert r["settings"]["large_design"] is False and r["settings"]["integration_time"] == 3.2
    assert r["min_ess_bulk"] > 0 and r["ess_per_s"] > 0
    g = r["gradient"]["dense"]  # one gradient timed before fitting, default layout
    assert g["ms"] > 0 and g["ms_4"] > 0 and g["compile_s"] > 0
    assert r["settings"]["likelihood_layout"] == "dense"
    md = out.with_suffix(".md").read_text()
    assert "dense layout" in md
    assert r["date"] in md and "NOT CONVERGED" in md  # 10 draws never converge


def test_gpu_script_defaults_to_numpyro_with_the_package_settings():
    spec = importlib.util.spec_from_file_location("gpu_100x", BENCH / "gpu_100x.py")
    gpu = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu)
    a = gpu.parse_args([])
    assert (a.sampler, a.subjects, a.chains, a.tune, a.draws) == ("numpyro", 5200, 4, 1000, 1000)
    assert a.max_treedepth is None and a.start == "auto"  # the package's large-design rule
    assert gpu.parse_args(["--max-treedepth", "8"]).max_treedepth == 8


@pytest.mark.jax
def test_gpu_script_times_both_likelihood_layouts(tmp_path):
    pytest.importorskip("numpyro")
    args = ["--subjects", "3", "--sessions", "2", "--judges", "2", "--no-covariates"]
    res = _run(str(BENCH / "gpu_100x.py"), *args, "--gradient-only", "--compare-layouts")
    assert res.returncode == 0, res.stderr[-2000:]
    r = json.loads(res.stdout[res.stdout.index("{") :])
    assert r["ratings"] == 3 * 2 * 2 * 30 and set(r["gradient"]) == {"vector", "dense"}
    assert all(g["ms"] > 0 and g["ms_4"] > 0 for g in r["gradient"].values())
    assert "no fit" not in res.stdout and "fitted" not in res.stdout  # gradient only


def test_gpu_script_refuses_a_big_run_without_gpu(tmp_path):
    jax = pytest.importorskip("jax")
    if jax.devices()[0].platform != "cpu":
        pytest.skip("a GPU is present: the full run would start")
    res = _run(str(BENCH / "gpu_100x.py"), "--subjects", "5200", "--out", str(tmp_path / "g"))
    assert res.returncode != 0 and "no GPU" in res.stderr
    assert not (tmp_path / "g.json").exists()


def _shell_words(script: str, name: str) -> set[str]:
    """The words of a ``NAME="..."`` assignment in a shell script."""
    text = (BENCH / script).read_text()
    start = text.index(f'\n{name}="') + len(name) + 3
    return set(text[start : text.index('"', start)].split())


def _closure(
    top: str, extras: tuple[str, ...] = (), skip: frozenset[str] = frozenset()
) -> set[str]:
    """Installed distributions ``top[extras]`` needs, transitively (normalised names),
    leaving out ``skip`` and what only they need."""
    from importlib.metadata import PackageNotFoundError, requires

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen: set[tuple[str, tuple[str, ...]]] = set()
    todo = [(top, extras)]
    while todo:
        name, ext = todo.pop()
        key = canonicalize_name(name)
        if (key, ext) in seen or key in skip:
            continue
        seen.add((key, ext))
        try:
            reqs = requires(name) or []
        except PackageNotFoundError:
            continue
        for line in reqs:
            req = Requirement(line)
            envs = [{"extra": e} for e in ext] or [{"extra": ""}]
            if req.marker is None or any(req.marker.evaluate(env) for env in envs):
                todo.append((req.name, tuple(sorted(req.extras))))
    return {k for k, _ in seen}


def test_gpu_wheels_and_the_image_cover_every_dependency():
    """What gpu_wheels.sh carries plus what the device image has is everything
    ``caltars-bayes[jax]`` needs (blackjax aside): a new dependency fails here, not
    on the device."""
    from packaging.utils import canonicalize_name

    carried = {canonicalize_name(n) for n in _shell_words("gpu_wheels.sh", "PKGS")}
    image = {canonicalize_name(n) for n in _shell_words("gpu_wheels.sh", "IMAGE_HAS")}
    assert {"pymc", "pytensor", "nutpie"} <= carried and "jax" in image
    needed = _closure("caltars-bayes", ("jax",), frozenset({"blackjax"})) - {"caltars-bayes"}
    # CUDA-specific and optional jax extras are the image's own
    missing = sorted(n for n in needed - carried - image if not n.startswith("jax-"))
    assert not missing, f"add to PKGS in benchmarks/gpu_wheels.sh (or IMAGE_HAS): {missing}"


@pytest.mark.long
def test_first_fit_script_tiny(tmp_path):
    out = tmp_path / "first_fit.md"
    res = _run(str(BENCH / "first_fit.py"), "--only", "warm", "--tiny", "--draws", "50",
               "--out", str(out))  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    rows = _table(out.read_text(), "## First fit")
    assert len(rows) == 1 and rows[0][0] == "new design (this machine's caches)"
    assert rows[0][3] in {"compiled", "disk cache", "reused"}
    assert float(rows[0][4]) > 0 and float(rows[0][5]) > 0


def test_real_size_only_updates_its_own_row(tmp_path):
    """``real_size.py --only SHAPE`` keeps the other shapes' rows of a run at the same settings."""
    spec = importlib.util.spec_from_file_location("real_size", BENCH / "real_size.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    raw = tmp_path / "real_size.json"
    old = [{"shape": "survey", "wall_s": 1.0}, {"shape": "crossed", "wall_s": 2.0}]
    raw.write_text(json.dumps({"fit": "defaults", "rows": old}))
    new = {"crossed": {"shape": "crossed", "wall_s": 3.0}}
    got = mod._merged(raw, "defaults", new)
    assert [(r["shape"], r["wall_s"]) for r in got] == [("survey", 1.0), ("crossed", 3.0)]
    # other settings: the old rows are not comparable and are dropped
    assert mod._merged(raw, {"draws": 100}, new) == [new["crossed"]]


def test_first_fit_sections_keep_their_own_stamps():
    """``first_fit.py --only SECTION`` re-measures one section; the heading says
    when each section ran, not only when the file was last written."""
    spec = importlib.util.spec_from_file_location("first_fit", BENCH / "first_fit.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    case = {"design": "12 x 2 x 2", "ratings": 96, "compile_source": "disk cache",
            "compile_s": 6.0, "sampling_s": 1.0, "wall_s": 7.5}  # fmt: skip
    compare = {"fit_a_s": 1.0, "fit_b_s": 2.0, "compare_s": 3.0, "total_s": 6.0}
    res = {"stamp": "2026-12-07 15:00", "machine": "2 cores", "draws": 200,
           "warm": {"cases": [case], "stamp": "2026-12-07 12:44"}, "compare": compare}  # fmt: skip
    text = mod.render(res)
    assert "warm 2026-12-07 12:44; compare 2026-12-07 15:00" in text
