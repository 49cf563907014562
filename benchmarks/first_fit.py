"""Time to a first posterior: compile seconds on designs never fitted before.

Every case is a CALTARS trial (subject and session covariates) fitted with the
package's defaults except fewer draws (the point is the compile time; the
sampling seconds are shown beside it), each in its own process:

``cold``
    Empty caches (PyTensor's compile directory and numba's cache both in a
    fresh temporary directory): the founding design (52 x 4 x 3), then, in a
    second process with the caches the first one left, the same design and
    seed again (a warm machine, the same design: the draws must be the same)
    and a design of another size never fitted before (a warm machine, a new
    design).
``warm``
    This machine's own caches: a new design at 1x and at 3x the founding
    subjects (sizes offset by a random number so that they are new).
``compare``
    ``caltars-bayes compare`` of two structures of a 45-subject trial
    (2 sessions, 3 judges), the fits included.

    python benchmarks/first_fit.py --out benchmarks/first_fit.md
    python benchmarks/first_fit.py --only warm --tiny   # a quick look

Results (seconds, compile source, draws equality) go to the markdown file and
a JSON file beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SECTIONS = ("cold", "warm", "compare")


def _fit(subjects: int, sessions: int, judges: int, seed: int, draws: int) -> dict[str, Any]:
    """One fit in this process: its timings, compile source and a digest of its draws."""
    import numpy as np

    from caltars_bayes import (
        FOUNDING_SESSION_COVARIATES,
        FOUNDING_SUBJECT_COVARIATES,
        fit_model,
        load_instrument,
        simulate_trial,
    )
    from caltars_bayes.spec.instrument import models_dir

    inst = load_instrument(models_dir() / "caltars.toml")
    data = simulate_trial(
        inst,
        n_subjects=subjects,
        n_sessions=sessions,
        n_judges=judges,
        subject_covariates=FOUNDING_SUBJECT_COVARIATES,
        session_covariates=FOUNDING_SESSION_COVARIATES,
        seed=seed,
    ).to_rating_data()
    t0 = time.perf_counter()
    fit = fit_model(data, draws=draws, tune=draws, chains=2, random_seed=seed, progressbar=False)
    wall = time.perf_counter() - t0
    sd = fit.posterior["sd_alliance"].values
    return {
        "design": f"{subjects} x {sessions} x {judges}",
        "ratings": int(data.n_ratings),
        "compile_source": fit.record.compile_source,
        "compile_s": fit.record.timings.get("compile_s"),
        "sampling_s": fit.record.timings.get("sampling_s"),
        "wall_s": wall,
        "converged": bool(fit.diagnostics.converged),
        "draws_digest": [float(v) for v in np.round(sd.reshape(-1)[:6], 12)],
    }


def _child(cases: list[dict[str, Any]], env: dict[str, str] | None = None) -> list[dict]:
    """Fit ``cases`` one after another in a fresh process (with ``env`` added)."""
    run_env = {**os.environ, **(env or {})}
    res = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(cases)],
        capture_output=True,
        text=True,
        check=False,
        env=run_env,
    )
    if res.returncode != 0:
        print(res.stderr[-3000:], file=sys.stderr)
        raise RuntimeError("first-fit child failed")
    return json.loads(res.stdout.strip().splitlines()[-1])


def section_cold(draws: int, seed: int, tiny: bool) -> dict[str, Any]:
    """Empty caches, then the same caches in a second process."""
    base = (12, 2, 2) if tiny else (52, 4, 3)
    other = (base[0] + 7, base[1], base[2])
    with tempfile.TemporaryDirectory(prefix="caltars_cold_") as tmp:
        env = {"PYTENSOR_FLAGS": f"base_compiledir={tmp}", "NUMBA_CACHE_DIR": f"{tmp}/numba"}
        case = {"subjects": base[0], "sessions": base[1], "judges": base[2], "seed": seed}
        first = _child([{**case, "draws": draws}], env)
        new = {"subjects": other[0], "sessions": other[1], "judges": other[2], "seed": seed + 1}
        second = _child([{**case, "draws": draws}, {**new, "draws": draws}], env)
    same = first[0]["draws_digest"] == second[0]["draws_digest"]
    return {"empty": first[0], "same_design": second[0], "new_design": second[1], "same": same}


def section_warm(draws: int, seed: int, tiny: bool) -> dict[str, Any]:
    """New designs on this machine's caches (sizes offset so that they are new)."""
    offset = int(time.time()) % 7 + 1
    designs = [(10 + offset, 2, 2)] if tiny else [(52 + offset, 4, 3), (156 + offset, 4, 3)]
    cases = [
        {"subjects": s, "sessions": n, "judges": j, "seed": seed, "draws": draws}
        for s, n, j in designs
    ]
    return {"cases": _child(cases)}


def section_compare(seed: int, tiny: bool) -> dict[str, Any]:
    """``caltars-bayes compare`` of two structures at 45 subjects, fits included."""
    exe = str(Path(sys.executable).with_name("caltars-bayes"))
    inst = str(HERE.parent / "models" / "caltars.toml")
    n = 12 if tiny else 45
    draws = "100" if tiny else "1000"
    with tempfile.TemporaryDirectory(prefix="caltars_cmp_") as tmp:
        t = Path(tmp)
        times = {}
        start = time.perf_counter()
        subprocess.run(
            [exe, "simulate", "--instrument", inst, "--subjects", str(n), "--sessions",
             "2", "--judges", "3", "--seed", str(seed), "--out", str(t / "trial")],
            check=True, capture_output=True,
        )  # fmt: skip
        for name, extra in (("a", []), ("b", ["--structure", "general"])):
            t0 = time.perf_counter()
            subprocess.run(
                [exe, "fit", str(t / "trial" / "ratings.csv"), "--instrument", inst,
                 "--draws", draws, "--tune", draws, "--out", str(t / name), "--quiet", *extra],
                check=False, capture_output=True,
            )  # fmt: skip
            times[f"fit_{name}_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        done = subprocess.run(
            [exe, "compare", str(t / "a"), str(t / "b"), "--out", str(t / "cmp"), "--quiet"],
            check=False, capture_output=True, text=True,
        )  # fmt: skip
        times["compare_s"] = time.perf_counter() - t0
        times["total_s"] = time.perf_counter() - start
        times["ok"] = done.returncode in (0, 1)
        times["tail"] = done.stdout[-400:]
    return times


def _row(c: dict[str, Any], what: str) -> str:
    return (
        f"| {what} | {c['design']} | {c['ratings']:,} | {c['compile_source']} | "
        f"{c['compile_s']:.1f} | {c['sampling_s']:.1f} | {c['wall_s']:.1f} |"
    )


def _stamps(res: dict[str, Any]) -> str:
    """When each section ran (the run's stamp for sections measured before
    sections had their own)."""
    parts = [
        f"{name} {res[name].get('stamp', res['stamp'])}" for name in SECTIONS if res.get(name)
    ]
    return "; ".join(parts) or res["stamp"]


def render(res: dict[str, Any]) -> str:
    """The markdown section."""
    lines = [
        "## First fit",
        "",
        f"Measured {_stamps(res)} ({res['machine']}); draws per chain: {res['draws']} "
        "(2 chains). Compile = from the built model to a sampler ready to run.",
        "",
        "| case | design | ratings | compiled model | compile s | sampling s | fit s |",
        "|---|---|---|---|---|---|---|",
    ]
    cold = res.get("cold")
    if cold:
        lines += [
            _row(cold["empty"], "empty caches"),
            _row(cold["same_design"], "same design again (new process)"),
            _row(cold["new_design"], "new design (warm caches)"),
        ]
    for c in (res.get("warm") or {}).get("cases", []):
        lines.append(_row(c, "new design (this machine's caches)"))
    lines.append("")
    if cold:
        lines.append(
            "Same seed, empty caches vs loaded from the disk cache: draws "
            + ("**identical**." if cold["same"] else "**differ**.")
        )
    cmp = res.get("compare")
    if cmp:
        lines.append(
            f"`compare` of two structures at 45 subjects: fits {cmp['fit_a_s']:.0f} s and "
            f"{cmp['fit_b_s']:.0f} s, compare {cmp['compare_s']:.0f} s, total "
            f"{cmp['total_s']:.0f} s."
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", default=str(HERE / "first_fit.md"))
    ap.add_argument("--only", help=f"comma-separated sections: {','.join(SECTIONS)}")
    ap.add_argument("--draws", type=int, default=300)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps([_fit(**c) for c in json.loads(args.child)]))
        return 0
    only = args.only.split(",") if args.only else list(SECTIONS)
    out = Path(args.out)
    raw = out.with_suffix(".json")
    res: dict[str, Any] = json.loads(raw.read_text()) if raw.exists() else {}
    res.update(
        stamp=time.strftime("%Y-%m-%d %H:%M"),
        machine=f"{os.cpu_count()} cores",
        draws=args.draws,
    )
    runs = {
        "cold": lambda: section_cold(args.draws, args.seed, args.tiny),
        "warm": lambda: section_warm(args.draws, args.seed, args.tiny),
        "compare": lambda: section_compare(args.seed, args.tiny),
    }
    for name in SECTIONS:  # each section keeps its own stamp (--only runs some)
        if name in only:
            res[name] = {**runs[name](), "stamp": time.strftime("%Y-%m-%d %H:%M")}
    raw.write_text(json.dumps(res, indent=1))
    out.write_text(render(res))
    print(render(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
