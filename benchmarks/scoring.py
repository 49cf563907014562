"""Benchmark and proof of scoring new trials with a calibration (``docs/calibration.md``).

Two sections, selectable with ``--only``:

``timing``
    Seconds to score, after the calibration is loaded, with a 1000-draw
    calibration of CALTARS (30 items, 5 scales): one new subject (4 sessions x
    1 calibrated judge), the same rated by a new judge, and a batch of 500 new
    subjects (4 sessions x 1 judge). Targets: < 5 s and < 120 s. The timing
    uses an oracle calibration (the simulation's true parameters in every
    draw): the arrays and the work are those of a fitted calibration.
``proof``
    Calibrate on a simulated trial A by NUTS, score trial B drawn from the same
    parameters (the same simulation, other subjects, rated by the same judges):
    correlation of posterior means with the truth, coverage of 90% intervals,
    agreement with a joint NUTS refit of A + B (posterior-SD units), and the
    rater-drift verdicts for a severe and an ordinary new judge.

Results go to ``benchmarks/scoring_results.md`` (and ``.json``).

    python benchmarks/scoring.py                   # both sections
    python benchmarks/scoring.py --only timing
    python benchmarks/scoring.py --quick           # a smaller proof (minutes)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent


def _instrument():
    from caltars_bayes.spec.instrument import load_instrument, models_dir

    return load_instrument(models_dir() / "caltars.toml")


def section_timing(seed: int) -> dict[str, Any]:
    from caltars_bayes.data.ratings import RatingData
    from caltars_bayes.model.simulate import simulate_trial
    from caltars_bayes.scoring.calibration import oracle_calibration
    from caltars_bayes.scoring.trial import score_trial

    inst = _instrument()
    calib = simulate_trial(inst, n_subjects=52, n_sessions=4, n_judges=3, seed=seed)
    cal = oracle_calibration(calib, n_draws=1000)
    new = simulate_trial(inst, n_subjects=500, n_sessions=4, n_judges=3, seed=seed + 1)
    r = new.ratings
    one_judge = r[r["judge"] == "J1"]
    out: dict[str, Any] = {"n_draws": cal.n_draws}
    cases = {
        "1 subject x 4 sessions x 1 calibrated judge": one_judge[one_judge["subject"] == "P001"],
        "1 subject x 4 sessions x 1 new judge": one_judge[one_judge["subject"] == "P001"].assign(
            judge="NEW"
        ),
        "500 subjects x 4 sessions x 1 calibrated judge": one_judge,
    }
    for name, frame in cases.items():
        data = RatingData.from_frame(frame, inst, layout="long")
        t0 = time.perf_counter()
        res = score_trial(data, cal, seed=1)
        secs = time.perf_counter() - t0
        out[name] = {
            "ratings": data.n_ratings,
            "seconds": secs,
            "pareto_k_max": res.report["pareto_k_max"],
            "flagged_subjects": len(res.report["subjects_flagged"]),
        }
        print(f"{name}: {secs:.1f} s", flush=True)
    return out


def _truth(trial, a_subjects: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """True theta and eta in the calibration's frame (origin: trial A's average subject)."""
    th = trial.truth["theta"].to_dataframe("true").reset_index()[["subject", "scale", "true"]]
    eta = trial.truth["eta"].to_dataframe("true").reset_index()
    eta[["subject", "session"]] = eta["session"].str.split("|", expand=True)
    shift = th[th["subject"].isin(a_subjects)].groupby("scale")["true"].mean()
    th["true"] -= th["scale"].map(shift)
    eta["true"] -= eta["scale"].map(shift)
    return th, eta[["subject", "session", "scale", "true"]]


def section_proof(seed: int, quick: bool) -> dict[str, Any]:
    from caltars_bayes.data.ratings import RatingData
    from caltars_bayes.inference.fit import fit_model
    from caltars_bayes.model.simulate import simulate_ratings, simulate_trial
    from caltars_bayes.scoring.calibration import calibrate
    from caltars_bayes.scoring.trial import score_trial

    inst = _instrument()
    n_a, n_b = (30, 15) if quick else (52, 30)
    sessions = 2 if quick else 4
    mcmc = {"draws": 300, "tune": 300, "chains": 2} if quick else {"draws": 1000, "tune": 1000,
                                                                      "chains": 4}  # fmt: skip
    trial = simulate_trial(inst, n_subjects=n_a + n_b, n_sessions=sessions, n_judges=3, seed=seed)
    data = trial.to_rating_data()
    width = len(str(n_a + n_b))
    labels = [f"P{i:0{max(2, width)}d}" for i in range(1, n_a + n_b + 1)]
    a_subj, b_subj = labels[:n_a], labels[n_a:]
    data_a, data_b = data.subset_subjects(a_subj), data.subset_subjects(b_subj)
    t0 = time.perf_counter()
    fit_a = fit_model(data_a, random_seed=seed, progressbar=False, **mcmc)
    fit_a_s = time.perf_counter() - t0
    cal = calibrate(fit_a)
    t0 = time.perf_counter()
    res = score_trial(data_b, cal, seed=1)
    score_s = time.perf_counter() - t0
    th, eta = _truth(trial, a_subj)
    ninety = res.intervals(0.9)
    sub = ninety[ninety["level"] == "subject"].merge(th, on=["subject", "scale"])
    ses = ninety[ninety["level"] == "session"].merge(eta, on=["subject", "session", "scale"])

    def cover(m: pd.DataFrame) -> float:
        return float(((m["true"] >= m["hdi_low"]) & (m["true"] <= m["hdi_high"])).mean())

    out: dict[str, Any] = {
        "design": f"A {n_a} x {sessions} x 3, B {n_b} x {sessions} x 3 (CALTARS), seed {seed}",
        "mcmc": mcmc,
        "fit_A": {"seconds": fit_a_s, "verdict": fit_a.diagnostics.banner()},
        "score_seconds": score_s,
        "subject": {"r": float(np.corrcoef(sub["mean"], sub["true"])[0, 1]), "cover90": cover(sub),
                    "n": len(sub)},
        "session": {"r": float(np.corrcoef(ses["mean"], ses["true"])[0, 1]), "cover90": cover(ses),
                    "n": len(ses)},
        "pareto_k_max": res.report["pareto_k_max"],
    }  # fmt: skip
    print(json.dumps(out, indent=1), flush=True)
    t0 = time.perf_counter()
    joint = fit_model(data, random_seed=seed + 1, progressbar=False, **mcmc)
    joint_s = time.perf_counter() - t0
    post = joint.posterior["theta"].stack(s=("chain", "draw")).transpose("s", "subject", "scale")
    b_theta = (post - post.sel(subject=a_subj).mean("subject")).sel(subject=b_subj)
    ref = pd.DataFrame(
        {
            "subject": np.repeat(b_subj, b_theta.sizes["scale"]),
            "scale": np.tile(b_theta["scale"].values, len(b_subj)),
            "joint_mean": b_theta.mean("s").values.ravel(),
            "joint_sd": b_theta.std("s", ddof=1).values.ravel(),
        }
    )
    cmp = res.scores[res.scores["level"] == "subject"].merge(ref, on=["subject", "scale"])
    z = (cmp["mean"] - cmp["joint_mean"]).abs() / cmp["joint_sd"]
    out["joint"] = {
        "seconds": joint_s,
        "verdict": joint.diagnostics.banner(),
        "mean_abs_z": float(z.mean()),
        "max_abs_z": float(z.max()),
        "sd_ratio_median": float((cmp["sd"] / cmp["joint_sd"]).median()),
        "r_means": float(np.corrcoef(cmp["mean"], cmp["joint_mean"])[0, 1]),
    }
    r = trial.ratings
    parts = [
        r[r["subject"].isin(b_subj) & (r["judge"] == "J1")],
        simulate_ratings(trial, {"SEVERE": (2.0, 1.0), "ORDINARY": (0.1, 1.05)}, b_subj, seed=8),
    ]
    drift_data = RatingData.from_frame(pd.concat(parts), inst, layout="long")
    nj = score_trial(drift_data, cal, seed=2).new_judges
    out["drift"] = nj.groupby("judge")["drift"].first().astype(bool).to_dict()
    print(json.dumps(out, indent=1), flush=True)
    return out


def render(res: dict[str, Any]) -> str:
    lines = [
        "# Scoring with a calibration: benchmark and proof",
        "",
        f"Generated by `benchmarks/scoring.py` on {res['stamp']}. Machine: {res['machine']} "
        "(shared with other jobs: timings are noisy, measured once).",
        "",
    ]
    if "timing" in res:
        t = res["timing"]
        lines += [
            f"## Timing (calibration with {t['n_draws']} draws, loaded)",
            "",
            "| case | ratings | seconds | target | max Pareto k |",
            "|---|---|---|---|---|",
        ]
        for name, v in t.items():
            if not isinstance(v, dict):
                continue
            target = "< 120 s" if name.startswith("500") else "< 5 s"
            lines.append(
                f"| {name} | {v['ratings']} | {v['seconds']:.1f} | {target} | "
                f"{v['pareto_k_max']:.2f} |"
            )
        lines.append("")
    if "proof" in res:
        p = res["proof"]
        lines += [
            "## Proof: calibrate on A, score B",
            "",
            f"Design: {p['design']}; NUTS {p['mcmc']}. Fit of A: {p['fit_A']['verdict']}.",
            "",
            "| level | n | r(mean, truth) | 90% coverage |",
            "|---|---|---|---|",
            f"| subject x scale | {p['subject']['n']} | {p['subject']['r']:.3f} | "
            f"{p['subject']['cover90']:.3f} |",
            f"| session x scale | {p['session']['n']} | {p['session']['r']:.3f} | "
            f"{p['session']['cover90']:.3f} |",
            "",
        ]
        if "joint" in p:
            j = p["joint"]
            lines += [
                f"Joint refit of A + B ({j['verdict']}): subject scores of B differ by "
                f"{j['mean_abs_z']:.2f} posterior SD on average (max {j['max_abs_z']:.2f}); "
                f"SD ratio (calibrated / joint) median {j['sd_ratio_median']:.2f}; "
                f"r of means {j['r_means']:.3f}.",
                "",
                f"Rater drift (True = flagged): {p['drift']}.",
                "",
            ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", default=str(HERE / "scoring_results.md"))
    ap.add_argument("--only", help="timing or proof")
    ap.add_argument("--quick", action="store_true", help="a smaller proof")
    ap.add_argument("--seed", type=int, default=3)
    args = ap.parse_args(argv)
    sections = args.only.split(",") if args.only else ["timing", "proof"]
    out = Path(args.out)
    js = out.with_suffix(".json")
    res: dict[str, Any] = json.loads(js.read_text()) if js.is_file() else {}
    res["stamp"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    res["machine"] = f"{os.cpu_count()} cores, {platform.machine()}, {platform.system()}"
    if "timing" in sections:
        res["timing"] = section_timing(args.seed)
    if "proof" in sections:
        res["proof"] = section_proof(args.seed, args.quick)
    js.write_text(json.dumps(res, indent=2, default=float) + "\n")
    out.write_text(render(res) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
