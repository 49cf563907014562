"""One prepared run for a GPU machine: 100x the founding design with JAX.

Simulates 100 times the founding study's subjects (5,200 subjects x 4
sessions x 3 judges x 30 CALTARS items, about 1.9 million ratings, with the
founding subject and session covariates), fits the full joint model with
numpyro's NUTS (chains vectorised on one device; the default) or nutpie's on
JAX (one thread per chain; JAX's gradient), with the package's large-design
defaults (joint subject/session form, data-based starting values), and records wall time, ESS
per second (min bulk ESS over every reported quantity), divergences, peak
device memory (``jax`` device memory stats) and peak host memory. Writes
``<out>.json`` and ``<out>.md`` with the date, the card and the versions.
Target (performance issue): <= 10 minutes on one H100.

Needs the ``jax`` extra and, for the GPU, a CUDA build of jaxlib
(``pip install "jax[cuda12]"``); nothing is downloaded while it runs. On the
lent GPU machine, run it through ``benchmarks/gpu_device.sh`` (wheels from
``benchmarks/gpu_wheels.sh``).

    python benchmarks/gpu_100x.py                       # 5,200 subjects, 4 x (1000 + 1000)
    python benchmarks/gpu_100x.py --subjects 6 --sessions 2 --judges 2 \\
        --chains 2 --tune 20 --draws 20 --out /tmp/gpu_tiny   # a CPU smoke run (tests)

Without a GPU it refuses sizes above ``--max-cpu-subjects`` (default 60), so a
run on the wrong machine fails at once instead of after hours.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TARGET_S = 600.0


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for p in ("caltars-bayes", "pymc", "pytensor", "jax", "jaxlib", "numpyro", "blackjax"):
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            pass
    return out


def device_memory() -> dict[str, float | None]:
    """Peak and current bytes in use on the first JAX device (None where not reported)."""
    import jax

    try:
        stats = jax.devices()[0].memory_stats() or {}
    except Exception:  # CPU backends may not implement memory stats
        stats = {}
    mb = 1024 * 1024
    peak = stats.get("peak_bytes_in_use")
    limit = stats.get("bytes_limit")
    return {
        "peak_mb": None if peak is None else peak / mb,
        "limit_mb": None if limit is None else limit / mb,
    }


def gradient_ms(am, repeats: int = 20) -> dict[str, float]:
    """Milliseconds per JAX log-density gradient of the joint model on the default device.

    ``ms`` for one chain, ``ms_4`` for four chains vectorised (what numpyro's
    ``chain_method="vectorized"`` evaluates per leapfrog step). Printed before
    fitting so that a run stopped by a time limit still says what a gradient costs.
    """
    import jax
    from pymc.sampling.jax import get_jaxified_logp

    model = am.model
    logp = get_jaxified_logp(model)
    grad = jax.jit(jax.value_and_grad(lambda x: logp(x)))
    grad4 = jax.jit(jax.vmap(jax.value_and_grad(lambda x: logp(x))))
    ip = model.initial_point()
    x = [jax.numpy.asarray(ip[v.name]) for v in model.value_vars]
    x4 = [jax.numpy.stack([a] * 4) for a in x]
    t0 = time.perf_counter()
    jax.block_until_ready(grad(x))
    jax.block_until_ready(grad4(x4))
    compile_s = time.perf_counter() - t0
    out = {"compile_s": compile_s}
    for key, f, arg in (("ms", grad, x), ("ms_4", grad4, x4)):
        t0 = time.perf_counter()
        for _ in range(repeats):
            r = f(arg)
        jax.block_until_ready(r)
        out[key] = 1000 * (time.perf_counter() - t0) / repeats
    return out


def _print_gradient(t_start: float, layout: str, g: dict[str, float], dev: Any) -> None:
    print(
        f"[{time.perf_counter() - t_start:.0f} s] one log-density gradient, {layout} layout, "
        f"on {dev}: {g['ms']:.2f} ms (4 chains vectorised: {g['ms_4']:.2f} ms; "
        f"compile {g['compile_s']:.1f} s)",
        flush=True,
    )


def run(
    subjects: int,
    sessions: int,
    judges: int,
    chains: int,
    tune: int,
    draws: int,
    sampler: str,
    seed: int,
    max_cpu_subjects: int,
    max_treedepth: int | None = None,
    covariates: bool = True,
    time_gradient: bool = True,
    gradient_only: bool = False,
    layout: str = "dense",
    compare_layouts: bool = False,
    progress: bool = False,
    start: str = "auto",
    gradient_backend: str = "jax",
) -> dict[str, Any]:
    """Simulate, fit and measure (see the module docstring); returns the result record."""
    t_start = time.perf_counter()
    import jax

    dev = jax.devices()[0]
    if dev.platform == "cpu" and subjects > max_cpu_subjects:
        raise SystemExit(
            f"error: no GPU found by JAX (devices: {jax.devices()}); refusing {subjects} "
            f"subjects on CPU (--max-cpu-subjects {max_cpu_subjects}). Install a CUDA jaxlib."
        )
    from caltars_bayes import (
        FOUNDING_SESSION_COVARIATES,
        FOUNDING_SUBJECT_COVARIATES,
        AllianceModel,
        fit_model,
        load_instrument,
        simulate_trial,
    )
    from caltars_bayes.inference.record import TREE_DEPTH_OPTION
    from caltars_bayes.spec.instrument import models_dir

    t0 = time.perf_counter()
    inst = load_instrument(models_dir() / "caltars.toml")
    trial = simulate_trial(
        inst,
        n_subjects=subjects,
        n_sessions=sessions,
        n_judges=judges,
        subject_covariates=FOUNDING_SUBJECT_COVARIATES if covariates else None,
        session_covariates=FOUNDING_SESSION_COVARIATES if covariates else None,
        seed=seed,
    )
    data = trial.to_rating_data()
    simulate_s = time.perf_counter() - t0
    from dataclasses import replace

    def build(lay: str) -> AllianceModel:
        am = AllianceModel(data, options=replace(inst.model, likelihood_layout=lay))
        am.model  # noqa: B018 (build now, so the timing below is the gradient's alone)
        return am

    grad_ms: dict[str, Any] = {}
    others = [x for x in ("vector", "dense") if x != layout] if compare_layouts else []
    for lay in others:  # the other layout first: its model is freed before fitting
        if time_gradient or gradient_only:
            grad_ms[lay] = gradient_ms(build(lay))
            _print_gradient(t_start, lay, grad_ms[lay], dev)
    t0 = time.perf_counter()
    am = build(layout)  # built once: timed here, then fitted
    build_s = time.perf_counter() - t0
    print(f"[{time.perf_counter() - t_start:.0f} s] built the {layout} model in {build_s:.1f} s")
    if time_gradient or gradient_only:
        grad_ms[layout] = gradient_ms(am)
        _print_gradient(t_start, layout, grad_ms[layout], dev)
    if gradient_only:
        return {"ratings": data.n_ratings, "device": str(dev), "gradient": grad_ms}
    print(
        f"[{time.perf_counter() - t_start:.0f} s] simulated {data.n_ratings} ratings "
        f"in {simulate_s:.1f} s on {dev}; fitting",
        flush=True,
    )
    if sampler == "nutpie":  # nutpie's Rust NUTS calling the JAX gradient on the device
        nuts: dict[str, Any] = {"backend": "jax", "gradient_backend": gradient_backend}
        chain_method = "threads (one per chain)"
    else:
        nuts = {"chain_method": "vectorized"}
        chain_method = "vectorized"
    if max_treedepth is not None:
        nuts[TREE_DEPTH_OPTION[sampler]] = max_treedepth
    t1 = time.perf_counter()
    fit = fit_model(
        data,
        model=am,
        draws=draws,
        tune=tune,
        chains=chains,
        sampler=sampler,
        random_seed=seed,
        start=start,  # auto: the package's rule (data-based for large designs)
        nuts=nuts,
        progressbar=progress,
    )
    fit_s = time.perf_counter() - t1
    d, t = fit.diagnostics, fit.record.timings
    diag_s = t["total_s"] - t["build_s"] - t["sampling_s"]
    print(
        f"[{time.perf_counter() - t_start:.0f} s] fitted: sampling {t['sampling_s']:.1f} s "
        f"(JAX compile included), diagnostics {diag_s:.1f} s",
        flush=True,
    )
    ss = fit.sample_stats
    steps = float("nan")
    for name in ("n_steps", "tree_size"):
        if ss is not None and name in ss:
            steps = float(ss[name].mean())
            break
    mem = device_memory()
    wall = time.perf_counter() - t_start
    return {
        "date": f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "device": {
            "platform": dev.platform,
            "card": getattr(dev, "device_kind", str(dev)),
            "count": jax.device_count(),
        },
        "host": f"{platform.node()} ({platform.system()} {platform.machine()})",
        "versions": _versions(),
        "design": {
            "subjects": subjects,
            "sessions": sessions,
            "judges": judges,
            "items": len(inst.items),
            "ratings": data.n_ratings,
            "covariates": covariates,
        },
        "settings": {
            "likelihood_layout": am.plan.likelihood_layout,
            "max_treedepth": fit.record.tree_depth_cap(),  # given, or the package's default
            "sampler": sampler,
            "chains": chains,
            "tune": tune,
            "draws": draws,
            "chain_method": chain_method,
            "start": fit.record.start,
            "joint_subject_sessions": fit.plan.joint_subject_sessions,
            "large_design": fit.plan.large_design,
            # nutpie's trajectory cap (given or the package's default)
            "integration_time": fit.record.trajectory_cap(),
            "gradient_backend": gradient_backend if sampler == "nutpie" else "jax",
            "seed": seed,
        },
        "simulate_s": simulate_s,
        "fit_s": fit_s,
        "build_s": t["build_s"],
        "sampling_s": t["sampling_s"],
        "compile_s": t.get("compile_s"),  # nutpie: compiling the model, before sampling
        "gradient": grad_ms,
        "diagnostics_s": diag_s,
        "subsampled": d.subsampled,
        "wall_s": wall,
        "steps_per_draw": steps,
        "tune_steps_per_iteration": (
            t["tune_steps"] / (tune * chains) if t.get("tune_steps") and tune else None
        ),
        "min_ess_bulk": d.min_ess_bulk,
        "min_ess_tail": d.min_ess_tail,
        "ess_per_s": d.min_ess_bulk / t["sampling_s"],
        "ess_per_wall_s": d.min_ess_bulk / wall,
        "max_rhat": d.max_rhat,
        "divergences": d.divergences,
        "converged": d.converged,
        "verdict": d.banner(),
        "peak_device_memory_mb": mem["peak_mb"],
        "device_memory_limit_mb": mem["limit_mb"],
        "peak_host_memory_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "target_s": TARGET_S,
        "target_met": bool(wall <= TARGET_S),
    }


def markdown(r: dict[str, Any]) -> str:
    """The result record as a short markdown report."""
    dz, st = r["design"], r["settings"]
    peak = r["peak_device_memory_mb"]
    peak_txt = "not reported by this device" if peak is None else f"{peak:.0f} MB"
    return "\n".join(
        [
            "# GPU benchmark: 100x the founding design",
            "",
            f"Run {r['date']} on {r['device']['card']} ({r['device']['platform']}, "
            f"{r['device']['count']} device(s)); host {r['host']}.",
            "Versions: " + ", ".join(f"{k} {v}" for k, v in r["versions"].items()) + ".",
            "",
            f"Design: {dz['subjects']} subjects x {dz['sessions']} sessions x {dz['judges']} "
            f"judges x {dz['items']} items = {dz['ratings']} ratings, "
            f"{'founding covariates' if dz['covariates'] else 'no covariates'}. "
            f"{st['sampler']}, {st['chains']} chains ({st['chain_method']}) x ({st['tune']} tune "
            f"+ {st['draws']} draws), seed {st['seed']}, {st['start']} starting values; "
            f"{st['likelihood_layout']} likelihood layout; "
            f"{'joint' if st.get('joint_subject_sessions') else 'default'} subject/session form"
            + (
                f"; trajectories capped at {st['integration_time']}"
                if st.get("integration_time")
                else ""
            )
            + (f"; max tree depth {st['max_treedepth']}." if st.get("max_treedepth") else "."),
            "",
            "One log-density gradient (1 chain / 4 chains vectorised): "
            + (
                "; ".join(
                    f"{lay} layout {g['ms']:.2f} / {g['ms_4']:.2f} ms"
                    for lay, g in (r["gradient"] or {}).items()
                )
                or "not timed"
            )
            + ".",
            "",
            "| wall s | simulate s | fit s | sampling s (incl. JAX compile) | steps/draw "
            "| min bulk ESS | ESS/s | max R-hat | divergences | converged | peak device memory "
            "| peak host MB | <= 10 min |",
            "|" + "---|" * 13,
            f"| {r['wall_s']:.1f} | {r['simulate_s']:.1f} | {r['fit_s']:.1f} "
            f"| {r['sampling_s']:.1f} | {r['steps_per_draw']:.1f} | {r['min_ess_bulk']:.0f} "
            f"| {r['ess_per_s']:.2f} | {r['max_rhat']:.3f} | {r['divergences']} "
            f"| {r['converged']} | {peak_txt} | {r['peak_host_memory_mb']:.0f} "
            f"| {'met' if r['target_met'] else 'NOT met'} |",
            "",
            r["verdict"],
            "",
        ]
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, with the sampler-dependent defaults filled in."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--subjects", type=int, default=5200)
    ap.add_argument("--sessions", type=int, default=4)
    ap.add_argument("--judges", type=int, default=3)
    ap.add_argument("--chains", type=int, default=4)
    ap.add_argument("--tune", type=int, default=1000)
    ap.add_argument("--draws", type=int, default=1000)
    ap.add_argument(
        "--sampler",
        choices=["numpyro", "blackjax", "nutpie"],
        default="numpyro",
        help="numpyro (default)/blackjax: chains vectorised on the device (on an H100 one "
        "100x gradient took 0.77 ms, four chains vectorised 2.15 ms); nutpie: its JAX "
        "backend, one thread per chain, a host round trip per gradient (3.4-4.3 ms each "
        "at 100x on an H100). In the joint form numpyro and nutpie took the same 31 "
        "leapfrog steps per draw at 2x on the CPU (gpu_results.md)",
    )
    ap.add_argument(
        "--start",
        choices=["auto", "default", "data"],
        default="auto",
        help="starting values: the model's defaults or data-based (caltars_bayes.inference.start); "
        "auto (the package's rule): data-based for large designs such as 100x",
    )
    ap.add_argument(
        "--gradient-backend",
        choices=["jax", "pytensor"],
        default="jax",
        help="nutpie: differentiate with JAX or translate PyTensor's gradient graph",
    )
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--max-treedepth",
        type=int,
        default=None,
        help="default: the package's (for large designs such as 100x: 6 for numpyro, i.e. "
        "at most 63 leapfrog steps, caltars_bayes.inference.sampling.LARGE_DESIGN_JAX; nutpie caps "
        "trajectories by integration time instead)",
    )
    ap.add_argument("--max-cpu-subjects", type=int, default=60)
    ap.add_argument("--no-covariates", action="store_true", help="ratings only")
    ap.add_argument(
        "--no-gradient-timing", action="store_true", help="skip timing one gradient first"
    )
    ap.add_argument(
        "--gradient-only", action="store_true", help="time one gradient, print it, stop"
    )
    ap.add_argument(
        "--likelihood-layout",
        choices=["dense", "vector"],
        default="dense",
        help="model option likelihood_layout; dense avoids scatter-adds (GPUs)",
    )
    ap.add_argument(
        "--compare-layouts", action="store_true", help="also time the other layout's gradient"
    )
    ap.add_argument(
        "--progress",
        action="store_true",
        help="show the sampler's progress (a run stopped by a time limit then shows its pace)",
    )
    ap.add_argument("--out", default=str(HERE / "gpu_results"), help="writes OUT.json and OUT.md")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    r = run(
        a.subjects,
        a.sessions,
        a.judges,
        a.chains,
        a.tune,
        a.draws,
        a.sampler,
        a.seed,
        a.max_cpu_subjects,
        a.max_treedepth,
        not a.no_covariates,
        not a.no_gradient_timing,
        a.gradient_only,
        a.likelihood_layout,
        a.compare_layouts,
        a.progress,
        a.start,
        a.gradient_backend,
    )
    if a.gradient_only:
        print(json.dumps(r, indent=1))
        return 0
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(r, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(r))
    print(markdown(r))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
