"""Do pilot-size CALTARS designs converge at the package's defaults? (issue 28, item 6)

Simulates ``N`` CALTARS pilots (10-15 subjects x 2 sessions x 2 judges, every
judge rating every item of every session) at the simulator's realistic
parameters (:func:`caltars_bayes.model.simulate.simulate_trial`'s defaults),
fits each with :func:`caltars_bayes.inference.fit.fit_model` at its defaults
(only the seed varies) and prints, per pilot: divergences, the largest R-hat,
the smallest bulk and tail ESS with the parameter that set each, the verdict,
the draws per chain the fit ended with and the seconds; then how many met the
verdict (R-hat <= 1.01, bulk and tail ESS >= 400, no divergences, E-BFMI and
tree depth as in :mod:`caltars_bayes.inference.diagnostics`).

Usage::

    python benchmarks/pilots.py --n 20 --seed 1                   # 10-15 subjects
    python benchmarks/pilots.py --n 5 --seed 1 --subjects 12      # fixed size
    python benchmarks/pilots.py --n 5 --option parameterisation=centred --out pilots.jsonl

Pilots are fitted in order of their subject count, so that each design is
compiled once per process (nutpie compilations are reused for equal shapes).
``--out`` appends one JSON line per pilot.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from caltars_bayes.inference.diagnostics import reported_variables
from caltars_bayes.inference.fit import fit_model
from caltars_bayes.inference.mcmcstats import dataset_convergence
from caltars_bayes.model import plan as plan_module
from caltars_bayes.model.build import AllianceModel
from caltars_bayes.model.simulate import simulate_trial
from caltars_bayes.spec.instrument import load_instrument, models_dir


def _worst(stat: Any, pick: str) -> tuple[float, str]:
    """The extreme value of a Dataset of per-element statistics and its element's label."""
    best_v, best_label = (np.inf if pick == "min" else -np.inf), ""
    for name, da in stat.data_vars.items():
        vals = np.asarray(da.values, dtype=float)
        if not np.isfinite(vals).any():
            continue
        flat = int(np.nanargmin(vals) if pick == "min" else np.nanargmax(vals))
        v = float(vals.ravel()[flat])
        if (v < best_v) if pick == "min" else (v > best_v):
            idx = np.unravel_index(flat, vals.shape)
            parts = [str(da.coords[d].values[i]) for d, i in zip(da.dims, idx, strict=True)]
            best_v, best_label = v, f"{name}[{', '.join(parts)}]" if parts else str(name)
    return best_v, best_label


def spread_mask(post: Any) -> Any:
    """True where an element varies over draws (constant ones are not checked)."""
    return (post.max(("chain", "draw")) - post.min(("chain", "draw"))) > 1e-12


def convergence_by_variable(fit: Any) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """Where the extremes are (max R-hat, min bulk and tail ESS, with the element
    that set each), and per reported variable [max R-hat, min bulk, min tail]."""
    post = fit.posterior[reported_variables(fit.posterior)]
    mask = spread_mask(post)
    r, b, t, _ = (x.where(mask) if i < 3 else x for i, x in enumerate(dataset_convergence(post)))
    where = {
        "max_rhat_at": _worst(r, "max")[1],
        "min_ess_bulk_at": _worst(b, "min")[1],
        "min_ess_tail_at": _worst(t, "min")[1],
    }
    per_var = {}
    for v in post.data_vars:
        vals = [np.asarray(s[v].values, float) for s in (r, b, t)]
        if np.isfinite(vals[1]).any():
            per_var[str(v)] = [
                float(np.nanmax(vals[0])),
                float(np.nanmin(vals[1])),
                float(np.nanmin(vals[2])),
            ]
    return where, per_var


def one_pilot(inst: Any, n_subjects: int, seed: int, fit_kwargs: dict[str, Any]) -> dict[str, Any]:
    """Simulate and fit one pilot; the row the script prints."""
    trial = simulate_trial(inst, n_subjects=n_subjects, n_sessions=2, n_judges=2, seed=seed)
    data = trial.to_rating_data()
    t0 = time.perf_counter()
    am = AllianceModel(data)
    fit = fit_model(data, random_seed=seed, progressbar=False, model=am, **fit_kwargs)
    seconds = time.perf_counter() - t0
    d = fit.diagnostics
    where, per_var = convergence_by_variable(fit)
    ss = fit.sample_stats
    record = fit.record
    assert ss is not None
    row = {
        "seed": seed,
        "subjects": n_subjects,
        "ratings": data.n_ratings,
        "divergences": d.divergences,
        "max_rhat": d.max_rhat,
        "min_ess_bulk": d.min_ess_bulk,
        "min_ess_tail": d.min_ess_tail,
        **where,
        "ebfmi_min": min(d.ebfmi) if d.ebfmi else float("nan"),
        "converged": d.converged,
        "problems": d.problems,
        "draws_per_chain": d.n_draws,
        "extension": record.extension,
        "target_accept": record.target_accept,
        "steps_per_draw": float(ss["n_steps"].mean()),
        "step_size": float(ss["step_size"].mean()),
        "seconds": seconds,
        "compile_s": record.timings.get("compile_s"),
        "sampling_s": record.timings.get("sampling_s"),
        "plan": {
            k: getattr(fit.plan, k)
            for k in (
                "centred_subjects",
                "centred_sessions",
                "centred_judges",
                "judge_discrimination",
                "joint_subject_sessions",
            )
        },
        "by_variable": per_var,
    }
    return row


def _parse_subjects(text: str, n: int, rng: np.random.Generator) -> list[int]:
    if "-" in text:
        lo, hi = (int(x) for x in text.split("-"))
        return [int(v) for v in rng.integers(lo, hi + 1, size=n)]
    return [int(text)] * n


def _option_value(text: str) -> Any:
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    try:
        return float(text) if "." in text else int(text)
    except ValueError:
        return text


def line(row: dict[str, Any]) -> str:
    ext = f" ext->{row['draws_per_chain']}" if row["extension"] else ""
    return (
        f"seed {row['seed']:>5} n={row['subjects']:>2}  div {row['divergences']:>3}  "
        f"R-hat {row['max_rhat']:.3f} ({row['max_rhat_at']})  "
        f"bulk {row['min_ess_bulk']:6.0f} ({row['min_ess_bulk_at']})  "
        f"tail {row['min_ess_tail']:6.0f} ({row['min_ess_tail_at']})  "
        f"{'OK ' if row['converged'] else 'MISS'}{ext}  {row['seconds']:.0f} s"
    )


def markdown(rows: list[dict[str, Any]], title: str) -> str:
    """The run as a markdown table, one row per pilot, and the count."""
    lines = [
        f"# {title}",
        "",
        "| seed | subjects | divergences | max R-hat (at) | min bulk ESS (at) | "
        "min tail ESS (at) | draws/chain | verdict | s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['seed']} | {r['subjects']} | {r['divergences']} | "
            f"{r['max_rhat']:.3f} ({r['max_rhat_at']}) | "
            f"{r['min_ess_bulk']:.0f} ({r['min_ess_bulk_at']}) | "
            f"{r['min_ess_tail']:.0f} ({r['min_ess_tail_at']}) | {r['draws_per_chain']} | "
            f"{'met' if r['converged'] else 'MISSED'} | {r['seconds']:.0f} |"
        )
    met = sum(r["converged"] for r in rows)
    lines += ["", f"**{met} of {len(rows)} pilots met the verdict.**", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=20, help="pilots (default 20)")
    ap.add_argument("--seed", type=int, default=1, help="seed of the run (pilot i: seed*1000+i)")
    ap.add_argument("--subjects", default="10-15", help="subjects per pilot: N or LO-HI")
    ap.add_argument("--instrument", default=str(models_dir() / "caltars.toml"))
    ap.add_argument(
        "--option", action="append", default=[], help="model option KEY=VALUE (experiments)"
    )
    ap.add_argument(
        "--plan", action="append", default=[], help="plan.py constant NAME=VALUE (experiments)"
    )
    ap.add_argument("--fit", default="{}", help="extra fit_model keywords as JSON (experiments)")
    ap.add_argument("--out", type=Path, help="append one JSON line per pilot")
    ap.add_argument("--md", type=Path, help="write the run as a markdown table here")
    args = ap.parse_args(argv)

    inst = load_instrument(args.instrument)
    if args.option:
        opts = dict(kv.split("=", 1) for kv in args.option)
        inst = replace(
            inst, model=replace(inst.model, **{k: _option_value(v) for k, v in opts.items()})
        )
    for kv in args.plan:
        name, value = kv.split("=", 1)
        setattr(plan_module, name, _option_value(value))
    fit_kwargs = json.loads(args.fit)
    rng = np.random.default_rng(args.seed)
    sizes = _parse_subjects(args.subjects, args.n, rng)
    pilots = sorted(
        ((sizes[i], args.seed * 1000 + i) for i in range(args.n)), key=lambda p: (p[0], p[1])
    )
    rows = []
    for n_subj, seed in pilots:
        row = one_pilot(inst, n_subj, seed, fit_kwargs)
        rows.append(row)
        print(line(row), flush=True)
        if args.out:
            with args.out.open("a") as fh:
                fh.write(json.dumps({**row, "options": args.option, "fit": fit_kwargs}) + "\n")
    if args.md:
        args.md.write_text(markdown(rows, f"CALTARS pilots: --n {args.n} --seed {args.seed}"))
    met = sum(r["converged"] for r in rows)
    secs = [r["seconds"] for r in rows]
    print(
        f"{met} of {len(rows)} pilots met the verdict; divergences in "
        f"{sum(r['divergences'] > 0 for r in rows)}; seconds per pilot: median "
        f"{np.median(secs):.0f}, max {max(secs):.0f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
