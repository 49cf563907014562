"""Fitting the model, the :class:`Fit` result, and saving/loading fits.

A fit directory holds::

    posterior.nc        the DataTree (posterior, sample_stats) as netCDF (h5netcdf)
    meta.json           package version, sampler settings, timings, model plan,
                        hashes of spec and data
    spec.json           the instrument spec (with model options and priors) used
    ratings.csv         the ratings used (and covariates.csv, session_covariates.csv)
    data_report.json    the data report
    diagnostics.json    the convergence verdict
    summary.csv, scores.csv, judges.csv   the main tables (judges.csv with each
                        judge's reliability, see caltars_bayes.reliability)
    reliability.csv     interrater and generalizability coefficients as posteriors,
                        with the classical ICCs beside them

No pickle: everything is netCDF, JSON or CSV. Loading checks the hashes, so a
fit directory whose data or spec were edited is refused.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import xarray as xr

from caltars_bayes.data import RatingData
from caltars_bayes.diagnostics import Diagnostics, check_convergence
from caltars_bayes.errors import FitIOError
from caltars_bayes.hypotheses import Hypotheses
from caltars_bayes.io import atomic_write_dir, json_writer
from caltars_bayes.model import AllianceModel, ModelPlan
from caltars_bayes.sampling import TREE_DEPTH_OPTION, run_nuts, sampler_defaults
from caltars_bayes.spec import AUTO, Instrument, instrument_from_dict

FORMAT_VERSION = 1
CI_PROB = 0.95


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("caltars-bayes")
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "0+unknown"


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
    data : the :class:`~caltars_bayes.data.RatingData` that was fitted.
    plan : the :class:`~caltars_bayes.model.ModelPlan` (options resolved for the design).
    diagnostics : the convergence verdict, checked on every fit.
    meta : sampler settings, timings, versions and hashes.
    """

    datatree: xr.DataTree
    data: RatingData
    plan: ModelPlan
    diagnostics: Diagnostics
    meta: dict[str, Any] = field(default_factory=dict)
    #: validity hypotheses to test and save with the fit (set by the caller)
    hypotheses: Hypotheses | None = None

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
        from caltars_bayes.tables import posterior_summary

        return posterior_summary(self, var_names)

    def scores(self, level: str = "both") -> pd.DataFrame:
        """Posterior alliance per subject x scale and per session x scale.

        Returns
        -------
        DataFrame with columns ``level, subject, session, scale, mean, sd,
        hdi_low, hdi_high`` (``session`` empty at subject level).
        """
        from caltars_bayes.tables import scores

        return scores(self, level)

    def judges(self) -> pd.DataFrame:
        """Judge severity per scale and discrimination, with 95% HDIs."""
        from caltars_bayes.tables import judges

        return judges(self)

    # ----------------------------------------------------------------- I/O

    def save(self, out: str | Path, force: bool = False) -> Path:
        """Write the fit directory atomically (an existing one needs ``force``)."""
        out = Path(out)
        dt = self.datatree.copy()
        dt.attrs = {
            **{k: v for k, v in dt.attrs.items() if isinstance(v, str | int | float)},
            "caltars_bayes_version": package_version(),
            "caltars_bayes_format": FORMAT_VERSION,
            "spec_hash": self.meta["spec_hash"],
            "data_hash": self.meta["data_hash"],
        }
        for node in dt.subtree:
            node.attrs = {k: v for k, v in node.attrs.items() if isinstance(v, str | int | float)}
        from caltars_bayes.reliability import judges_table, reliability

        files: dict[str, Any] = {
            "posterior.nc": lambda p: dt.to_netcdf(p, engine="h5netcdf"),
            "meta.json": json_writer(self.meta),
            "spec.json": json_writer(self.instrument.spec_dict()),
            "ratings.csv": lambda p: self.data.ratings[
                ["subject", "session", "judge", "item", "rating"]
            ].to_csv(p, index=False),
            "data_report.json": json_writer(self.data.report.to_dict()),
            "diagnostics.json": json_writer(self.diagnostics.to_dict()),
            "summary.csv": lambda p: self.summary().to_csv(p, index=False),
            "scores.csv": lambda p: self.scores().to_csv(p, index=False),
            "judges.csv": lambda p: judges_table(self).to_csv(p, index=False),
            "reliability.csv": lambda p: reliability(self).to_csv(p, index=False),
        }
        figures = []
        if self.plan.covariates or self.plan.session_covariates:
            figures = self._association_files(files)
        if self.data.covariates is not None:
            files["covariates.csv"] = lambda p: self.data.covariates.to_csv(p)
        if self.data.session_covariates is not None:
            files["session_covariates.csv"] = lambda p: self.data.session_covariates.to_csv(p)
        try:
            atomic_write_dir(out, files, force=force)
        finally:
            if figures:
                import matplotlib.pyplot as plt

                for fig in figures:
                    plt.close(fig)
        return out

    def _association_files(self, files: dict[str, Any]) -> list[Any]:
        """Add the association (and hypothesis) outputs to ``files``; return the figures."""
        from caltars_bayes.associations import (
            associations,
            imputed_covariates,
            plot_associations,
        )

        files["associations.csv"] = lambda p: associations(self).to_csv(p, index=False)
        files["imputed_covariates.csv"] = lambda p: imputed_covariates(self).to_csv(p, index=False)
        if self.hypotheses is not None:
            from caltars_bayes.hypotheses import test_hypotheses

            files["hypotheses.json"] = json_writer(self.hypotheses.to_dict())
            files["hypotheses.csv"] = lambda p: test_hypotheses(self, self.hypotheses).to_csv(
                p, index=False
            )
        fig = plot_associations(self, self.hypotheses)
        files["associations.png"] = lambda p: fig.savefig(p, format="png", dpi=150)
        files["associations.svg"] = lambda p: fig.savefig(p, format="svg")
        return [fig]

    # ----------------------------------------------------------------- display

    def __repr__(self) -> str:
        return (
            f"Fit({self.instrument.name}; {self.data.n_ratings} ratings; "
            f"{self.meta.get('sampler')} {self.diagnostics.n_chains}x{self.diagnostics.n_draws}; "
            f"{self.diagnostics.verdict})"
        )

    def _repr_html_(self) -> str:
        """Notebook display: the verdict, the design and the scale-level tables."""
        from caltars_bayes.report import fit_html

        return fit_html(self)


def _sampler_options(meta: dict[str, Any]) -> dict[str, Any]:
    """The sampler options a fit ran with: the package's defaults it did not
    override, then the caller's (from a fit's ``meta``)."""
    return {**(meta.get("sampler_defaults") or {}), **(meta.get("nuts") or {})}


def trajectory_cap(meta: dict[str, Any]) -> float | None:
    """The integration-time cap nutpie ran with (the caller's or the package's
    default, from a fit's ``meta``); None for plain NUTS or another sampler."""
    if meta.get("sampler") != "nutpie":
        return None
    return _sampler_options(meta).get("target_integration_time")


def tree_depth_cap(meta: dict[str, Any]) -> int | None:
    """The maximum tree depth a NUTS fit ran with when it was set (by the caller
    or by the package's large-design default), from a fit's ``meta``; None when
    the sampler's own applied."""
    given = _sampler_options(meta)
    for key in (TREE_DEPTH_OPTION.get(meta.get("sampler", ""), ""), "maxdepth"):
        if given.get(key) is not None:
            return int(given[key])
    return None


def fit_model(
    data: RatingData,
    *,
    draws: int = 1000,
    tune: int = 1000,
    chains: int = 4,
    sampler: str = "nutpie",
    random_seed: int = 1,
    nuts: dict[str, Any] | None = None,
    progressbar: bool = True,
    cores: int | None = None,
    model: AllianceModel | None = None,
    method: str = "nuts",
    approx: dict[str, Any] | None = None,
) -> Fit:
    """Fit the joint measurement model to ``data`` with NUTS (or approximately).

    Parameters
    ----------
    data : validated ratings.
    draws, tune, chains : MCMC settings (per chain).
    sampler : ``"nutpie"`` (default), ``"pymc"``, ``"numpyro"`` or ``"blackjax"``.
    random_seed : seed; the same seed and sampler give the same draws.
    nuts : extra sampler options, e.g. ``{"target_accept": 0.95, "max_treedepth": 12}``;
        ``{"start": "data"}`` starts the chains from data-based values
        (:mod:`caltars_bayes.start`), ``"default"`` from the prior's centre;
        unless given, large designs (``plan.large_design``) start from the data,
        and those with many session deviations (``plan.short_trajectory_cap``) run
        nutpie with :data:`~caltars_bayes.sampling.LARGE_DESIGN_NUTPIE` and numpyro
        or blackjax with :data:`~caltars_bayes.sampling.LARGE_DESIGN_JAX`.
    model : an already built :class:`AllianceModel` (to reuse a compiled graph).
    method : ``"nuts"`` (default), or an APPROXIMATE method for quick looks:
        ``"pathfinder"``, ``"advi"`` or ``"fullrank_advi"`` (see
        :mod:`caltars_bayes.approx`). An approximate fit has ``draws`` draws in
        one chain (``tune``, ``chains``, ``sampler`` and ``nuts`` are not used),
        ``diagnostics.approximate`` True, ``converged`` always False, and its
        tables say so; ``meta["approximation"]`` holds the Pareto k-hat.
    approx : options of the approximate method (``caltars_bayes.approx.DEFAULTS``).

    Returns
    -------
    Fit
    """
    t0 = time.perf_counter()
    am = model or AllianceModel(data, sampler=sampler if method.lower() == "nuts" else None)
    pm_model = am.model
    t_build = time.perf_counter() - t0
    nuts = dict(nuts or {})
    target_accept = float(nuts.pop("target_accept", am.options.target_accept))
    method = method.lower()
    info: dict[str, Any] = {}
    start = "default"
    if method != "nuts":
        from caltars_bayes.approx import approximate_diagnostics, run_approx

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
        sampler, tune, chains, nuts = method, 0, 1, {}
    else:
        start = nuts.pop("start", AUTO)
        if start not in (AUTO, "default", "data"):
            raise ValueError(f"nuts start must be 'auto', 'default' or 'data', got {start!r}")
        if start == AUTO:
            start = "data" if am.plan.large_design else "default"
        initvals = None
        if start == "data":
            from caltars_bayes.start import starting_values

            initvals = starting_values(data, am.plan, am.instrument.n_categories)
        dt, timings = run_nuts(
            pm_model,
            initvals=initvals,
            draws=draws,
            tune=tune,
            chains=chains,
            sampler=sampler,
            random_seed=random_seed,
            target_accept=target_accept,
            nuts=nuts,
            progressbar=progressbar,
            cores=cores,
            short_cap=am.plan.short_trajectory_cap,
        )
        dt = _tidy(dt)
        diag = check_convergence(dt["posterior"].to_dataset(), _group(dt, "sample_stats"))
    for note in am.plan.notes:
        if note not in data.report.design_notes:
            data.report.add_note(note)
    meta = {
        "caltars_bayes_version": package_version(),
        "format": FORMAT_VERSION,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "sampler": sampler,
        "draws": draws,
        "tune": tune,
        "chains": chains,
        "random_seed": random_seed,
        "target_accept": target_accept,
        "nuts": nuts,
        "start": start if method == "nuts" else None,
        # the options the sampler ran with that the caller did not give
        "sampler_defaults": {
            k: v
            for k, v in sampler_defaults(sampler, am.plan.short_trajectory_cap).items()
            if k not in nuts
        }
        if method == "nuts"
        else {},
        "method": "NUTS" if method == "nuts" else method,
        **({"approximation": info} if info else {}),
        "timings": {"build_s": t_build, **timings, "total_s": time.perf_counter() - t0},
        "plan": am.plan.to_dict(),
        "spec_hash": data.instrument.hash(),
        "data_hash": data_hash(data),
        "versions": _versions(),
    }
    return Fit(dt, data, am.plan, diag, meta)


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


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("pymc", "pytensor", "nutpie", "arviz", "numpy", "xarray", "numpyro", "jax"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def load_fit(path: str | Path) -> Fit:
    """Load a fit directory written by :meth:`Fit.save`, checking it is intact.

    Raises :class:`~caltars_bayes.errors.FitIOError` when files are missing,
    corrupted, or do not match each other (spec or data edited after fitting).
    """
    p = Path(path)
    if not p.is_dir():
        raise FitIOError(f"{p}: not a fit directory (not found)")
    for name in ("posterior.nc", "meta.json", "spec.json", "ratings.csv", "diagnostics.json"):
        if not (p / name).is_file():
            raise FitIOError(f"{p}: not a complete fit directory ({name} is missing)")
    try:
        meta = json.loads((p / "meta.json").read_text())
        spec = json.loads((p / "spec.json").read_text())
        diag = Diagnostics.from_dict(json.loads((p / "diagnostics.json").read_text()))
        report = json.loads((p / "data_report.json").read_text())
    except (json.JSONDecodeError, TypeError, OSError) as exc:
        raise FitIOError(f"{p}: corrupted fit directory ({exc})") from None
    if meta.get("format") != FORMAT_VERSION:
        raise FitIOError(f"{p}/meta.json: unknown fit format {meta.get('format')!r}")
    instrument = instrument_from_dict(spec)
    if instrument.hash() != meta.get("spec_hash"):
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
    if data_hash(data) != meta.get("data_hash"):
        raise FitIOError(f"{p}/ratings.csv: data do not match the fit (hash mismatch)")
    _restore_report(data, report)
    try:
        dt = xr.open_datatree(p / "posterior.nc", engine="h5netcdf").load()
    except Exception as exc:  # h5py/netCDF errors have many types
        raise FitIOError(f"{p}/posterior.nc: cannot be read ({type(exc).__name__})") from None
    if (
        dt.attrs.get("data_hash") != meta["data_hash"]
        or dt.attrs.get("spec_hash") != meta["spec_hash"]
    ):
        raise FitIOError(f"{p}/posterior.nc: belongs to a different fit (hash mismatch)")
    plan = ModelPlan(**meta["plan"])
    hyps = None
    if (p / "hypotheses.json").is_file():
        from caltars_bayes.hypotheses import hypotheses_from_dict

        doc = json.loads((p / "hypotheses.json").read_text())
        hyps = hypotheses_from_dict(doc, str(p / "hypotheses.json"))
    return Fit(dt, data, plan, diag, meta, hyps)


def _read_optional(path: Path, index: list[str]) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    df = pd.read_csv(path, dtype={c: str for c in index})
    return df


def _restore_report(data: RatingData, saved: dict[str, Any]) -> None:
    """Put the original data report back (the reloaded one counts only used rows)."""
    rep = data.report
    for k, v in saved.items():
        if hasattr(rep, k):
            setattr(rep, k, v)
