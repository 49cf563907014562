"""Simulation-based calibration (SBC) of the joint model (Talts et al. 2018).

If the model is implemented right, then for parameters drawn from the prior,
data simulated from them and a posterior fitted to those data, the rank of
the true value among ``L`` (roughly independent) posterior draws is uniform
on ``0..L``. Each simulation is one task (:mod:`caltars_bayes.studies.tasks`):

1. build the model for a fixed design (complete crossing of ``subjects x
   sessions x judges``, every item) and draw *every* parameter and the
   ratings together from the prior (``pm.sample_prior_predictive``, the
   model's own random functions, seed derived from the run seed and the
   simulation id; cutpoints sorted, see :func:`draw_from_prior`);
2. fit those ratings (NUTS by default; seed also derived);
3. for each quantity, thin the pooled posterior draws to ``L`` evenly spaced
   draws and count how many lie below the true value: the rank.

Quantities: the population SDs, the factor correlations (upper triangle),
judge SDs, discriminations and severities, the loadings, the cutpoints and
``theta`` of the first items and subjects, and the derived latent-route
reliability (session level, one judge, absolute agreement) per scale.

Uniformity is tested per quantity by arviz-stats' POT-C test of the ranks
made continuous PIT values; a quantity *fails* when its p-value is below
``0.05 / number of quantities`` (Bonferroni). The figure is arviz-plots'
PIT ECDF-difference plot, one panel per quantity, with a simultaneous 95%
band (:mod:`caltars_bayes.studies.sbc_uniformity`).

Thinning: ranks need roughly independent draws. ``L`` should not exceed the
bulk ESS; the ranks table keeps each quantity's ESS, and the tests table the
share of simulations with ESS < L (autocorrelated draws make the rank
histogram U-shaped even for a correct model).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import xarray as xr

from caltars_bayes._core.dims import SAMPLE_DIMS
from caltars_bayes._core.errors import CaltarsError
from caltars_bayes._core.figures import close_figures, figure_files
from caltars_bayes._core.io import atomic_write_file
from caltars_bayes.analysis.reliability import reliability_draws
from caltars_bayes.data.ratings import RatingData
from caltars_bayes.model.build import AllianceModel
from caltars_bayes.model.simulate import simulate_trial
from caltars_bayes.spec.instrument import Instrument
from caltars_bayes.studies.sbc_uniformity import plot_ecdf_differences, uniformity_tests
from caltars_bayes.studies.tasks import (
    Task,
    TaskRun,
    collect_results,
    fit_in_task,
    prepare_output,
    run_tasks,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: Variables ranked by default (those the model has; ``reliability`` is derived).
DEFAULT_VARIABLES = (
    "sd_alliance",
    "sd_session",
    "factor_corr",
    "sd_severity",
    "sd_log_discrimination",
    "discrimination",
    "severity",
    "loading",
    "cutpoints",
    "theta",
    "reliability",
)
#: Labels kept along long dims (the first few): every element would be hundreds of tests.
KEEP_FIRST = {"subject": 2, "session": 2, "item": 2}
OUTPUT_FILES = ("sbc.json", "ranks.csv", "sbc_tests.csv", "sbc_ecdf.png", "sbc_ecdf.svg")


@dataclass(frozen=True)
class SBCConfig:
    """What an SBC run simulates and fits.

    Attributes
    ----------
    instrument : the instrument (its model options and priors are the model checked).
    sims : number of simulations.
    subjects, sessions, judges : the fixed design.
    draws, tune, chains : NUTS settings per fit (``draws`` for approximate methods).
    method : ``"nuts"`` or an approximate method of :func:`fit_model`.
    n_ranks : ``L``, posterior draws each rank is computed from (ranks 0..L).
    variables : variables to rank (:data:`DEFAULT_VARIABLES`).
    seed : the run's seed (task seeds derive from it and the simulation id).
    backend : nutpie backend (None: environment variable, else jax when installed).
    """

    instrument: Instrument
    sims: int = 200
    subjects: int = 10
    sessions: int = 2
    judges: int = 2
    draws: int = 500
    tune: int = 500
    chains: int = 2
    method: str = "nuts"
    n_ranks: int = 99
    variables: tuple[str, ...] = DEFAULT_VARIABLES
    seed: int = 1
    backend: str | None = None

    def __post_init__(self) -> None:
        if self.sims < 1 or self.subjects < 3 or self.sessions < 1 or self.judges < 1:
            raise CaltarsError("SBC needs sims >= 1, subjects >= 3, sessions >= 1, judges >= 1")
        total = self.draws * (1 if self.method != "nuts" else self.chains)
        if not 1 <= self.n_ranks <= total:
            raise CaltarsError(
                f"n_ranks (L = {self.n_ranks}) must be between 1 and the posterior draws ({total})"
            )

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["instrument"] = self.instrument.name
        d["instrument_hash"] = self.instrument.hash()
        d["variables"] = list(self.variables)
        return d

    def fingerprint(self) -> str:
        d = self.to_dict()
        d.pop("sims")  # more simulations extend a run; they do not change the others
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def tasks(self) -> list[Task]:
        return [Task.make(f"sim{i:05d}", {"sim": i}, self.seed) for i in range(1, self.sims + 1)]


# --------------------------------------------------------------------------- one simulation


def design_data(config: SBCConfig) -> RatingData:
    """The fixed design as rating data (complete crossing; the ratings are placeholders)."""
    trial = simulate_trial(
        config.instrument,
        n_subjects=config.subjects,
        n_sessions=config.sessions,
        n_judges=config.judges,
        seed=0,
    )
    return trial.to_rating_data()


def with_ratings(data: RatingData, y: np.ndarray, source: str) -> RatingData:
    """``data``'s design with new 0-based categories ``y`` (one per rating, in data order)."""
    inst = data.instrument
    y = np.asarray(y, dtype=int)
    if y.shape != (data.n_ratings,) or y.min() < 0 or y.max() >= inst.n_categories:
        raise CaltarsError(f"{source}: simulated ratings out of range or of the wrong length")
    score = inst.response_min + y
    rev = data.ratings["item"].isin(inst.reverse_keyed).to_numpy()
    raw = np.where(rev, inst.response_min + inst.response_max - score, score)
    frame = data.ratings[["subject", "session", "judge", "item"]].copy()
    frame["rating"] = raw
    return RatingData.from_frame(frame, inst, layout="long", source=source)


class _DrawsView:
    """The part of a Fit that :func:`caltars_bayes.analysis.reliability.reliability_draws` reads."""

    def __init__(self, posterior: xr.Dataset, data: RatingData, diagnostics: Any) -> None:
        self.posterior, self.data, self.diagnostics = posterior, data, diagnostics


def _reliability(posterior: xr.Dataset, data: RatingData, diagnostics: Any) -> xr.DataArray:
    """Latent-route session-level single-judge agreement per scale, per draw."""
    view: Any = _DrawsView(posterior, data, diagnostics)
    rd = reliability_draws(view, k_judges=1, routes=("latent",))
    return rd["agreement"].sel(level="session", judges=1, route="latent", drop=True)


def quantity_arrays(
    ds: xr.Dataset, variables: tuple[str, ...], keep_labels: dict[str, list[Any]]
) -> dict[str, xr.DataArray]:
    """The ranked quantities of a Dataset with ``chain, draw`` dims: name -> (chain, draw, q).

    Each variable is cut to the kept labels of long dims, the factor
    correlation to its upper triangle, and its other dims stacked into one
    dim ``q`` labelled ``"var[a, b]"``.
    """
    out = {}
    for v in variables:
        if v not in ds:
            continue
        da = ds[v]
        for dim, labels in keep_labels.items():
            if dim in da.dims:
                da = da.sel({dim: labels})
        other = [d for d in da.dims if d not in SAMPLE_DIMS]
        if v == "factor_corr":
            k = da.sizes["scale"]
            pairs = [(i, j) for i in range(k) for j in range(i + 1, k)]
            if not pairs:
                continue
            vals = np.stack([da.isel(scale=i, scale2=j).values for i, j in pairs], axis=-1)
            labels = [f"{v}[{da.scale.values[i]}, {da.scale2.values[j]}]" for i, j in pairs]
        elif other:
            st = da.stack(q=other)
            vals = st.transpose(*SAMPLE_DIMS, "q").values
            idx = st.indexes["q"]
            tuples = idx if isinstance(idx, pd.MultiIndex) else [(x,) for x in idx]
            labels = [f"{v}[{', '.join(map(str, t))}]" for t in tuples]
        else:
            vals = da.transpose(*SAMPLE_DIMS).values[..., None]
            labels = [v]
        out[v] = xr.DataArray(vals, dims=(*SAMPLE_DIMS, "q"), coords={"q": labels})
    return out


def sbc_ranks(
    truth: np.ndarray, draws: np.ndarray, n_ranks: int, rng: np.random.Generator
) -> np.ndarray:
    """Rank of each true value among ``n_ranks`` evenly thinned posterior draws.

    Parameters
    ----------
    truth : (q,) true values.
    draws : (n, q) posterior draws, pooled over chains (chain-major).
    n_ranks : ``L``: draws kept (evenly spaced over the ``n``).
    rng : breaks ties at random (ties only occur for discrete or constant values).

    Returns
    -------
    (q,) integer ranks in ``0..L``: draws below the truth (plus a random share of ties).
    """
    n = draws.shape[0]
    keep = np.unique(np.linspace(0, n - 1, n_ranks).round().astype(int))
    if keep.size != n_ranks:
        raise ValueError(f"cannot thin {n} draws to {n_ranks} distinct draws")
    d = draws[keep]
    below = (d < truth[None, :]).sum(0)
    ties = (d == truth[None, :]).sum(0)
    return below + rng.integers(0, ties + 1)


def draw_from_prior(am: Any, seed: int, rating_seed: int) -> tuple[xr.Dataset, np.ndarray]:
    """One draw of every parameter from the model's prior, and ratings simulated from it.

    PyMC's forward sampler ignores the ``ordered`` transform: its prior draws
    of ``cutpoints`` are iid normals in any order, while the model's prior
    density is that of the iid normals restricted to increasing order, i.e.
    of the *sorted* iid normals. The cutpoints are therefore sorted, and the
    ratings are simulated afterwards, from the sorted draw, with the model's
    own likelihood (``sample_posterior_predictive`` given the prior draw).

    Returns
    -------
    (Dataset with dims ``chain, draw`` (1 x 1) and every parameter, 0-based
    ratings in the data's order).
    """
    import pymc as pm

    fast = {"mode": "FAST_COMPILE"}  # one draw: a light compile is much faster
    with am.model:
        prior_dt = pm.sample_prior_predictive(draws=1, random_seed=seed, compile_kwargs=fast)
    prior = prior_dt["prior"].to_dataset()
    if "cutpoints" in prior:
        cut = prior["cutpoints"]
        prior["cutpoints"] = cut.copy(data=np.sort(cut.values, axis=cut.get_axis_num("cutpoint")))
    with am.model:
        pp = pm.sample_posterior_predictive(
            xr.DataTree.from_dict({"posterior": prior}),
            var_names=["rating"],
            random_seed=rating_seed,
            progressbar=False,
            compile_kwargs=fast,
        )
    y = np.asarray(pp["posterior_predictive"]["rating"].values).reshape(-1)
    return prior, y


def run_simulation(task: Task, config: SBCConfig) -> pd.DataFrame:
    """One SBC simulation (a Dask task): prior draw, simulated ratings, fit, ranks.

    Returns
    -------
    DataFrame, one row per quantity: ``sim``, ``variable``, ``quantity``,
    ``rank`` (0..``n_ranks``), ``n_ranks``, ``truth`` (prior draw),
    ``post_mean``, ``post_sd``, ``ess_bulk`` (of the quantity's draws),
    ``converged``, ``divergences``, ``max_rhat`` (the fit's verdict),
    ``min_categories`` (fewest response categories any item used in the
    simulated ratings).
    """
    from arviz_stats import ess

    data0 = design_data(config)
    am = AllianceModel(data0)
    prior, y = draw_from_prior(am, task.seeds[0], task.seeds[3])
    data = with_ratings(data0, y, f"<SBC simulation {task.params['sim']}>")
    fit = fit_in_task(data, config, task.seeds[1])
    post = fit.posterior
    keep = {dim: list(post[dim].values[:n]) for dim, n in KEEP_FIRST.items() if dim in post.coords}
    variables = tuple(v for v in config.variables if v != "reliability")
    q_true = quantity_arrays(prior, variables, keep)
    q_post = quantity_arrays(post, variables, keep)
    if "reliability" in config.variables:
        q_true["reliability"] = quantity_arrays(
            xr.Dataset({"reliability": _reliability(prior, data, fit.diagnostics)}),
            ("reliability",),
            {},
        )["reliability"]
        q_post["reliability"] = quantity_arrays(
            xr.Dataset({"reliability": _reliability(post, data, fit.diagnostics)}),
            ("reliability",),
            {},
        )["reliability"]
    rng = np.random.default_rng(task.seeds[2])
    cats = pd.Series(data.y).groupby(np.asarray(data.item_idx)).nunique()
    frames = []
    for v, da_post in q_post.items():
        truth = q_true[v].values.reshape(-1, da_post.sizes["q"])[0]
        draws = da_post.transpose(*SAMPLE_DIMS, "q").values.reshape(-1, da_post.sizes["q"])
        e = ess(da_post, sample_dims=list(SAMPLE_DIMS), method="bulk")
        frames.append(
            pd.DataFrame(
                {
                    "sim": task.params["sim"],
                    "variable": v,
                    "quantity": da_post["q"].values,
                    "rank": sbc_ranks(truth, draws, config.n_ranks, rng),
                    "n_ranks": config.n_ranks,
                    "truth": truth,
                    "post_mean": draws.mean(0),
                    "post_sd": draws.std(0, ddof=1),
                    "ess_bulk": np.asarray(e.values, dtype=float),
                }
            )
        )
    out = pd.concat(frames, ignore_index=True)
    d = fit.diagnostics
    out["converged"] = d.converged
    out["divergences"] = d.divergences
    out["max_rhat"] = d.max_rhat
    out["min_categories"] = int(cats.min())
    return out


# --------------------------------------------------------------------------- running


@dataclass
class SBCResult:
    """An SBC run's results.

    Attributes
    ----------
    config : what was simulated and fitted.
    ranks : one row per simulation x quantity (:func:`run_simulation`'s columns).
    tests : :func:`uniformity_tests` (``attrs["diagnostics"]``: fits converged).
    run : what the task runner did.
    out : the results folder.
    """

    config: SBCConfig
    ranks: pd.DataFrame
    tests: pd.DataFrame
    run: TaskRun
    out: Path

    @property
    def failures(self) -> pd.DataFrame:
        """The quantities that fail calibration."""
        return self.tests[self.tests["fails"]] if len(self.tests) else self.tests

    def plot(self, variables: list[str] | None = None) -> Figure:
        """PIT ECDF-difference plots, one panel per quantity (:func:`plot_ecdf_differences`)."""
        return plot_ecdf_differences(self.ranks, self.config.n_ranks, variables)

    def summary(self) -> str:
        """A few lines: simulations, fits converged, quantities failing."""
        r, t = self.ranks, self.tests
        sims = r.drop_duplicates("sim") if len(r) else r
        n_conv = int(sims["converged"].astype(bool).sum()) if len(sims) else 0
        lines = [
            f"SBC of {self.config.instrument.name}: {len(sims)} simulation(s) of "
            f"{self.config.subjects} subjects x {self.config.sessions} sessions x "
            f"{self.config.judges} judges, {self.config.method}, L = {self.config.n_ranks}",
            f"fits converged: {n_conv} of {len(sims)}; divergences in "
            f"{int((sims['divergences'] > 0).sum()) if len(sims) else 0} fit(s)",
        ]
        if len(t):
            bad = t[t["fails"]]
            lines.append(
                f"{len(bad)} of {len(t)} quantities fail uniformity (Bonferroni, family-wise 5%)"
                + (": " + ", ".join(bad["quantity"].head(10)) if len(bad) else "")
            )
        return "\n".join(lines)


def run_sbc(
    instrument: Instrument,
    sims: int = 200,
    *,
    subjects: int = 10,
    sessions: int = 2,
    judges: int = 2,
    draws: int = 500,
    tune: int = 500,
    chains: int = 2,
    method: str = "nuts",
    n_ranks: int = 99,
    variables: tuple[str, ...] = DEFAULT_VARIABLES,
    seed: int = 1,
    backend: str | None = None,
    out: str | Path = "sbc_results",
    scheduler: Any = None,
    workers: int | None = None,
    force: bool = False,
    progress: bool = True,
) -> SBCResult:
    """Run (or resume) an SBC and test the ranks for uniformity.

    Parameters
    ----------
    instrument : the instrument whose model (options, priors) is checked.
    sims : simulations. Raising it on a finished run adds simulations.
    subjects, sessions, judges : the design.
    draws, tune, chains, method, backend : the fits (one core each).
    n_ranks : ``L``, thinned posterior draws per rank (keep it <= bulk ESS).
    variables : quantities to rank (:data:`DEFAULT_VARIABLES`).
    seed : the run's seed.
    out : results folder (resumable; other settings there need ``force``).
    scheduler, workers : as :func:`caltars_bayes.studies.tasks.run_tasks`.

    Returns
    -------
    SBCResult. Files: ``sbc.json``, ``tasks/sim<k>.csv``, ``ranks.csv``,
    ``sbc_tests.csv``, ``sbc_ecdf.png`` and ``.svg``.
    """
    config = SBCConfig(
        instrument, sims, subjects, sessions, judges, draws, tune, chains, method, n_ranks,
        tuple(variables), seed, backend,
    )  # fmt: skip
    out = Path(out)
    record = {"fingerprint": config.fingerprint(), **config.to_dict()}
    prepare_output(out, "sbc.json", record, OUTPUT_FILES, "SBC configuration", force)
    tasks = config.tasks()
    run = run_tasks(
        tasks,
        functools.partial(run_simulation, config=config),
        out,
        scheduler=scheduler,
        workers=workers,
        progress=progress,
        label="sbc: simulation",
    )
    ranks = collect_results(tasks, out)
    tests = uniformity_tests(ranks, n_ranks) if len(ranks) else pd.DataFrame()
    if len(ranks):
        sims_df = ranks.drop_duplicates("sim")
        tests.attrs["diagnostics"] = (
            f"{int(sims_df['converged'].astype(bool).sum())} of {len(sims_df)} fits converged"
        )
    res = SBCResult(config, ranks, tests, run, out)
    atomic_write_file(out / "ranks.csv", lambda p: ranks.to_csv(p, index=False), force=True)
    atomic_write_file(out / "sbc_tests.csv", lambda p: tests.to_csv(p, index=False), force=True)
    if len(ranks):
        fig = res.plot()
        for name, writer in figure_files("sbc_ecdf", fig).items():
            atomic_write_file(out / name, writer, force=True)
        close_figures([fig])
    if run.failed:
        first = next(iter(run.failed.items()))
        print(
            f"warning: {len(run.failed)} simulation(s) failed (e.g. {first[0]}: {first[1]}); "
            "rerun to retry them",
            file=sys.stderr,
        )
    return res
