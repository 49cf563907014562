"""Fitting the model, and the :class:`Fit` result: the reloadable core of an analysis.

A fit is the posterior with what made it: the data, the model plan, the
convergence verdict and a typed :class:`~caltars_bayes.inference.record.FitRecord`.
:meth:`Fit.save` writes that core, and :func:`load_fit` reads it back::

    posterior.nc        the DataTree (posterior, sample_stats) as netCDF (h5netcdf)
    meta.json           the FitRecord (sampler settings, timings, versions, hashes) and the plan
    spec.json           the instrument spec (with model options and priors) used
    ratings.csv         the ratings used (and covariates.csv, session_covariates.csv)
    data_report.json    the data report
    diagnostics.json    the convergence verdict

Tables, figures and hypothesis verdicts are derived from a fit and written
beside the core by :func:`caltars_bayes.report.outputs.save_fit_directory`.
No pickle: everything is netCDF, JSON or CSV. Loading checks the hashes, so a
fit directory whose data or spec were edited is refused.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import xarray as xr

from caltars_bayes._core.errors import FitIOError
from caltars_bayes._core.io import atomic_write_dir, json_writer
from caltars_bayes.data.ratings import RatingData
from caltars_bayes.inference.approx import approximate_diagnostics, run_approx
from caltars_bayes.inference.arviz_tree import LogLikBy, fit_datatree, saved_groups
from caltars_bayes.inference.diagnostics import Diagnostics, check_convergence
from caltars_bayes.inference.display import fit_html
from caltars_bayes.inference.extend import Extension, default_max_draws
from caltars_bayes.inference.mcmcstats import ConvergenceCache
from caltars_bayes.inference.record import (
    FORMAT_VERSION,
    FitRecord,
    PriorSource,
    package_version,
)
from caltars_bayes.inference.sampling import default_tune, run_nuts, sampler_defaults
from caltars_bayes.inference.start import starting_values
from caltars_bayes.inference.tables import judges, posterior_summary, scores
from caltars_bayes.model.build import AllianceModel
from caltars_bayes.model.plan import ModelPlan
from caltars_bayes.spec.instrument import AUTO, Instrument, instrument_from_dict

#: the files of a fit's reloadable core that every fit directory has
CORE_FILES = (
    "posterior.nc",
    "meta.json",
    "spec.json",
    "ratings.csv",
    "data_report.json",
    "diagnostics.json",
)
#: where the chains may start (``fit_model(start=...)``)
STARTS = (AUTO, "default", "data")


def data_hash(data: RatingData) -> str:
    """A hash of the ratings and covariates used (order-independent of file layout)."""
    h = hashlib.sha256()
    cols = ["subject", "session", "judge", "item", "rating"]
    h.update(data.ratings[cols].to_csv(index=False).encode())
    for tab in (data.covariates, data.session_covariates):
        if tab is not None:
            h.update(tab.to_csv().encode())
    return h.hexdigest()[:16]


@dataclass
class Fit:
    """A fitted model: the posterior DataTree with what made it.

    Attributes
    ----------
    datatree : :class:`xarray.DataTree` with ``posterior`` and ``sample_stats``.
    data : the :class:`~caltars_bayes.data.ratings.RatingData` that was fitted.
    plan : the :class:`~caltars_bayes.model.plan.ModelPlan` (options resolved for the design).
    diagnostics : the convergence verdict, checked on every fit.
    record : how the fit was made (:class:`~caltars_bayes.inference.record.FitRecord`).
    directory : the fit directory it was saved to or loaded from (None before saving).
    convergence_cache : R-hat and ESS of posterior elements computed so far (by
        the verdict, then by :meth:`summary`), so each is computed once; not
        saved. It serves only the arrays it was computed from.
    """

    datatree: xr.DataTree
    data: RatingData
    plan: ModelPlan
    diagnostics: Diagnostics
    record: FitRecord
    directory: Path | None = field(default=None, compare=False)
    convergence_cache: ConvergenceCache = field(
        default_factory=ConvergenceCache, repr=False, compare=False
    )

    @property
    def instrument(self) -> Instrument:
        return self.data.instrument

    @property
    def posterior(self) -> xr.Dataset:
        return self.datatree["posterior"].to_dataset()

    @property
    def sample_stats(self) -> xr.Dataset | None:
        if "sample_stats" in self.datatree.children:
            return self.datatree["sample_stats"].to_dataset()
        return None

    @property
    def converged(self) -> bool:
        return self.diagnostics.converged

    # ----------------------------------------------------------------- tables

    def summary(self, var_names: list[str] | None = None) -> pd.DataFrame:
        """Every parameter: mean, sd, median, 95% HDI, R-hat, bulk and tail ESS.

        Returns
        -------
        DataFrame with columns ``parameter, mean, sd, median, hdi_low, hdi_high,
        r_hat, ess_bulk, ess_tail``; ``attrs["diagnostics"]`` holds the verdict.
        """
        return posterior_summary(self, var_names)

    def scores(self, level: str = "both") -> pd.DataFrame:
        """Posterior alliance per subject x scale and per session x scale.

        Returns
        -------
        DataFrame with columns ``level, subject, session, scale, mean, sd,
        hdi_low, hdi_high`` (``session`` empty at subject level).
        """
        return scores(self, level)

    def judges(self) -> pd.DataFrame:
        """Judge severity per scale and discrimination, with 95% HDIs."""
        return judges(self)

    # ----------------------------------------------------------------- I/O

    def core_files(self, groups: Sequence[str] | None = None) -> dict[str, Callable[[Path], Any]]:
        """Writers of the reloadable core (:data:`CORE_FILES` and the covariate
        tables), for :func:`~caltars_bayes._core.io.atomic_write_dir`; ``groups``
        as in :meth:`save`."""
        dt = self.datatree.copy()
        for name, ds in saved_groups(self, groups or ()).items():
            dt[name] = xr.DataTree(ds)
        dt.attrs = {
            **{k: v for k, v in dt.attrs.items() if isinstance(v, str | int | float)},
            "caltars_bayes_version": package_version(),
            "caltars_bayes_format": self.record.format,
            "spec_hash": self.record.spec_hash,
            "data_hash": self.record.data_hash,
        }
        for node in dt.subtree:
            node.attrs = {k: v for k, v in node.attrs.items() if isinstance(v, str | int | float)}
        data = self.data
        files: dict[str, Callable[[Path], Any]] = {
            "posterior.nc": lambda p: dt.to_netcdf(p, engine="h5netcdf"),
            "meta.json": json_writer({**self.record.to_dict(), "plan": self.plan.to_dict()}),
            "spec.json": json_writer(self.instrument.spec_dict()),
            "ratings.csv": lambda p: data.ratings[
                ["subject", "session", "judge", "item", "rating"]
            ].to_csv(p, index=False),
            "data_report.json": json_writer(data.report.to_dict()),
            "diagnostics.json": json_writer(self.diagnostics.to_dict()),
        }
        if data.covariates is not None:
            covariates = data.covariates
            files["covariates.csv"] = lambda p: covariates.to_csv(p)
        if data.session_covariates is not None:
            session_covariates = data.session_covariates
            files["session_covariates.csv"] = lambda p: session_covariates.to_csv(p)
        return files

    def save(
        self, out: str | Path, force: bool = False, groups: Sequence[str] | None = None
    ) -> Path:
        """Write the reloadable core atomically (an existing directory needs ``force``).

        ``groups``: ArviZ groups of :meth:`to_datatree` to write into
        ``posterior.nc`` too, e.g. ``("observed_data", "log_likelihood")``
        (see :func:`caltars_bayes.inference.arviz_tree.saved_groups`); by
        default only ``posterior`` and ``sample_stats``. :func:`load_fit`
        keeps every group the file holds. Tables, figures and verdicts are
        not written here: see :func:`caltars_bayes.report.outputs.save_fit_directory`.
        """
        out = Path(out)
        atomic_write_dir(out, self.core_files(groups), force=force)
        self.directory = out
        return out

    def to_datatree(
        self,
        log_likelihood: LogLikBy | None = "session",
        posterior_predictive: int | None = None,
        prior: int | None = None,
        seed: int = 0,
        session_coords: bool = True,
    ) -> xr.DataTree:
        """The fit as a DataTree that ``arviz_stats`` and ``arviz_plots`` use unchanged.

        Adds ``observed_data``, ``constant_data``, ``log_likelihood`` (per
        ``"session"`` with its deviations integrated out, per ``"rating"``, or
        None), ``posterior_predictive`` (``n`` draws per chain) and, with
        ``prior=n``, ``prior``, ``prior_predictive`` and ``log_prior`` to the
        posterior and sample_stats. The ``session`` dim has the coordinates
        ``session_number`` and its subject (``session_subject`` in the
        posterior, whose ``subject`` dim takes that name; ``subject`` elsewhere)
        unless ``session_coords=False``; see
        :func:`caltars_bayes.inference.arviz_tree.fit_datatree`.
        """
        return fit_datatree(self, log_likelihood, posterior_predictive, prior, seed, session_coords)

    # ----------------------------------------------------------------- display

    def __repr__(self) -> str:
        return (
            f"Fit({self.instrument.name}; {self.data.n_ratings} ratings; "
            f"{self.record.sampler} {self.diagnostics.n_chains}x{self.diagnostics.n_draws}; "
            f"{self.diagnostics.verdict})"
        )

    def _repr_html_(self) -> str:
        """Notebook display: the verdict, the design and the scale-level tables."""
        return fit_html(self)


def fit_model(
    data: RatingData,
    *,
    draws: int = 1000,
    tune: int | None = None,
    chains: int = 4,
    sampler: str = "nutpie",
    random_seed: int = 1,
    start: str = AUTO,
    nuts: dict[str, Any] | None = None,
    progressbar: bool = True,
    cores: int | None = None,
    model: AllianceModel | None = None,
    method: str = "nuts",
    approx: dict[str, Any] | None = None,
    max_draws: int | None = None,
) -> Fit:
    """Fit the joint measurement model to ``data`` with NUTS (or approximately).

    Parameters
    ----------
    data : validated ratings.
    draws, tune, chains : MCMC settings per chain (``tune`` None: ``sampling.default_tune``).
    sampler : ``"nutpie"`` (default), ``"pymc"``, ``"numpyro"`` or ``"blackjax"``.
    random_seed : seed; the same seed and sampler give the same draws.
    start : where the chains start: ``"default"`` (the prior's centre),
        ``"data"`` (data-based values, :mod:`caltars_bayes.inference.start`) or
        ``"auto"`` (data for large designs, ``plan.large_design``; else default).
    nuts : sampler options in the sampler's own names, e.g.
        ``{"target_accept": 0.95, "max_treedepth": 12}``. Unless given, designs
        with many session deviations (``plan.short_trajectory_cap``) run nutpie
        with :data:`~caltars_bayes.inference.sampling.LARGE_DESIGN_NUTPIE` and
        numpyro or blackjax with :data:`~caltars_bayes.inference.sampling.LARGE_DESIGN_JAX`.
    model : an already built :class:`AllianceModel` (to reuse a compiled graph,
        or one with informative priors; the fit records where they came from).
    method : ``"nuts"`` (default), or an APPROXIMATE method for quick looks:
        ``"pathfinder"``, ``"advi"`` or ``"fullrank_advi"`` (see
        :mod:`caltars_bayes.inference.approx`). An approximate fit has ``draws``
        draws in one chain (``tune``, ``chains``, ``sampler`` and ``nuts`` are not
        used), ``diagnostics.approximate`` True, ``converged`` always False, and
        its tables say so; ``record.approximation`` holds the Pareto k-hat.
    approx : options of the approximate method (``caltars_bayes.inference.approx.DEFAULTS``).
    max_draws : draws per chain a nutpie fit missing the verdict on R-hat or ESS
        alone may extend to (:mod:`caltars_bayes.inference.extend`; default 4 x
        ``draws`` for at least 4 x 400 draws in all, else ``draws``: off). The
        record (``record.extension``) and the banner say so, e.g. "extended to
        3,000 draws per chain (1,000 asked for) to reach ESS 400".

    Returns
    -------
    Fit
    """
    t0 = time.perf_counter()
    method = method.lower()
    if start not in STARTS:
        raise ValueError(f"start must be 'auto', 'default' or 'data', got {start!r}")
    am = model or AllianceModel(data, sampler=sampler if method == "nuts" else None)
    pm_model = am.model
    t_build = time.perf_counter() - t0
    nuts = dict(nuts or {})
    tune = default_tune(data.n_ratings) if tune is None else tune
    target_accept = float(nuts.pop("target_accept", am.options.target_accept))
    extension = _extension(sampler, draws, chains, max_draws) if method == "nuts" else None
    cache = ConvergenceCache()  # the verdict's R-hat and ESS, kept for the summary table
    if method != "nuts":
        dt, timings, info = run_approx(
            pm_model,
            method=method,
            draws=draws,
            random_seed=random_seed,
            options=approx,
            progressbar=progressbar,
        )
        dt = _tidy(dt)
        diag = approximate_diagnostics(dt["posterior"].to_dataset(), info)
        settings: dict[str, Any] = {"sampler": method, "method": method, "tune": 0, "chains": 1}
        settings.update(nuts={}, start=None, approximation=info or None)
    else:
        if start == AUTO:
            start = "data" if am.plan.large_design else "default"
        initvals = None
        if start == "data":
            initvals = starting_values(data, am.plan, am.instrument.n_categories)
        dt, timings = run_nuts(
            pm_model, initvals=initvals, draws=draws, tune=tune, chains=chains, sampler=sampler,
            random_seed=random_seed, target_accept=target_accept, nuts=nuts,
            progressbar=progressbar, cores=cores, short_cap=am.plan.short_trajectory_cap,
            max_draws=draws if extension is None else extension.cap,
            extend=None if extension is None else _extension_check(extension, cache),
        )  # fmt: skip
        compile_source = str(dt.attrs.get("compile_source", ""))
        dt, diag = _verdict(dt, extension, progressbar, cache)
        defaults = sampler_defaults(sampler, am.plan.short_trajectory_cap)
        settings = {"sampler": sampler, "method": "NUTS", "tune": tune, "chains": chains}
        # the options the sampler ran with that the caller did not give
        not_given = {k: v for k, v in defaults.items() if k not in nuts}
        settings.update(
            nuts=nuts, start=start, sampler_defaults=not_given, compile_source=compile_source
        )
    for note in am.plan.notes:
        if note not in data.report.design_notes:
            data.report.add_note(note)
    informative = am.informative
    record = FitRecord(
        **settings,
        draws=diag.n_draws if method == "nuts" else draws,
        **_extension_fields(extension, diag),
        random_seed=random_seed,
        target_accept=target_accept,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        timings={"build_s": t_build, **timings, "total_s": time.perf_counter() - t0},
        spec_hash=data.instrument.hash(),
        data_hash=data_hash(data),
        prior_from=(
            PriorSource(informative.source, informative.weight)
            if informative.source is not None
            else None
        ),
    )
    return Fit(dt, data, am.plan, diag, record, convergence_cache=cache)


def _extension(sampler: str, draws: int, chains: int, max_draws: int | None) -> Extension | None:
    """The extension rule of a NUTS fit (None: not extended; nutpie only)."""
    cap = default_max_draws(draws, chains) if max_draws is None else max(max_draws, draws)
    return Extension(draws, cap) if sampler == "nutpie" and cap > draws else None


def _verdict(
    dt: xr.DataTree, extension: Extension | None, progressbar: bool, cache: ConvergenceCache
) -> tuple[xr.DataTree, Diagnostics]:
    """The fit's groups and verdict, with the extension's line when it was extended;
    the element statistics computed go to ``cache`` (for the summary table)."""
    dt = _tidy(dt)
    diag = check_convergence(dt["posterior"].to_dataset(), _group(dt, "sample_stats"), cache=cache)
    if extension is not None and extension.extended:
        diag.extension = extension.message(diag)
        if progressbar:
            print(diag.extension, file=sys.stderr)
    return dt, diag


def _extension_fields(extension: Extension | None, diag: Diagnostics) -> dict[str, Any]:
    """``max_draws`` and ``extension`` of the fit's record."""
    if extension is None:
        return {"max_draws": None, "extension": None}
    return {
        "max_draws": extension.cap,
        "extension": extension.to_record(diag) if extension.extended else None,
    }


def _extension_check(
    extension: Extension, cache: ConvergenceCache
) -> Callable[[xr.DataTree], int | None]:
    """What :func:`run_nuts` asks at each checkpoint: the verdict on the draws so
    far, and the next checkpoint (None: stop). Its R-hat and ESS go to ``cache``:
    the fit's own verdict on the last checkpoint's draws (the same arrays) then
    computes none of them again."""

    def check(dt: xr.DataTree) -> int | None:
        dt = _tidy(dt)
        post, stats = dt["posterior"].to_dataset(), _group(dt, "sample_stats")
        return extension.next_draws(check_convergence(post, stats, cache=cache))

    return check


def _group(dt: xr.DataTree, name: str) -> xr.Dataset | None:
    return dt[name].to_dataset() if name in dt.children else None


def _tidy(dt: xr.DataTree) -> xr.DataTree:
    """Keep the groups a fit needs (posterior, sample_stats), in float64/int/bool."""
    keep = {}
    for g in ("posterior", "sample_stats"):
        if g in dt.children:
            ds = dt[g].to_dataset()
            drop = [v for v in ds.data_vars if ds[v].dtype == object or ds[v].dtype.kind in "USO"]
            ds = ds.drop_vars(drop)
            # netCDF keeps only scalar attributes: drop the rest now so that a
            # saved and reloaded fit is identical to the fit in memory
            ds.attrs = {k: v for k, v in ds.attrs.items() if isinstance(v, str | int | float)}
            keep[g] = ds
    return xr.DataTree.from_dict(keep)


def load_fit(path: str | Path) -> Fit:
    """Load a fit directory written by :meth:`Fit.save`, checking it is intact.

    Raises :class:`~caltars_bayes._core.errors.FitIOError` when files are missing,
    corrupted, or do not match each other (spec or data edited after fitting).
    """
    p = Path(path)
    if not p.is_dir():
        raise FitIOError(f"{p}: not a fit directory (not found)")
    for name in CORE_FILES:
        if name != "data_report.json" and not (p / name).is_file():
            raise FitIOError(f"{p}: not a complete fit directory ({name} is missing)")
    try:
        meta = json.loads((p / "meta.json").read_text())
        spec = json.loads((p / "spec.json").read_text())
        diag = Diagnostics.from_dict(json.loads((p / "diagnostics.json").read_text()))
        report = json.loads((p / "data_report.json").read_text())
    except (json.JSONDecodeError, TypeError, OSError) as exc:
        raise FitIOError(f"{p}: corrupted fit directory ({exc})") from None
    if meta.get("format") != FORMAT_VERSION or not isinstance(meta.get("plan"), dict):
        raise FitIOError(f"{p}/meta.json: unknown fit format {meta.get('format')!r}")
    plan = ModelPlan(**meta.pop("plan"))
    record = FitRecord.from_dict(meta, f"{p}/meta.json")
    instrument = instrument_from_dict(spec)
    if instrument.hash() != record.spec_hash:
        raise FitIOError(f"{p}/spec.json: spec does not match the fit (hash mismatch)")
    ratings = pd.read_csv(p / "ratings.csv", dtype=str)
    cov = _read_optional(p / "covariates.csv", index=["subject"])
    scov = _read_optional(p / "session_covariates.csv", index=["subject", "session"])
    data = RatingData.from_frame(
        ratings,
        instrument,
        layout="long",
        covariates=cov,
        session_covariates=scov,
        source=str(p / "ratings.csv"),
    )
    if data_hash(data) != record.data_hash:
        raise FitIOError(f"{p}/ratings.csv: data do not match the fit (hash mismatch)")
    _restore_report(data, report)
    try:
        dt = xr.open_datatree(p / "posterior.nc", engine="h5netcdf").load()
    except Exception as exc:  # h5py/netCDF errors have many types
        raise FitIOError(f"{p}/posterior.nc: cannot be read ({type(exc).__name__})") from None
    hashes = (dt.attrs.get("data_hash"), dt.attrs.get("spec_hash"))
    if hashes != (record.data_hash, record.spec_hash):
        raise FitIOError(f"{p}/posterior.nc: belongs to a different fit (hash mismatch)")
    return Fit(dt, data, plan, diag, record, directory=p)


def _read_optional(path: Path, index: list[str]) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    return pd.read_csv(path, dtype={c: str for c in index})


def _restore_report(data: RatingData, saved: dict[str, Any]) -> None:
    """Put the original data report back (the reloaded one counts only used rows)."""
    rep = data.report
    for k, v in saved.items():
        if hasattr(rep, k):
            setattr(rep, k, v)
