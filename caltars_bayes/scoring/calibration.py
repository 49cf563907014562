"""A fitted trial frozen into a *calibration* (scoring new trials with it: :mod:`.trial`).

A calibration keeps what a later trial needs from a fit's posterior, as
posterior draws (thinned to ``n_draws``, default 1000) with named dims:

* the instrument: ``loading`` (item), ``cutpoints`` (item or scale, cutpoint);
* the calibrated judges: ``severity`` (scale, judge), ``discrimination`` (judge);
* the populations: ``sd_alliance`` (scale), ``factor_corr`` (scale, scale2),
  ``sd_session`` (scale), ``session_trend`` (scale), ``sd_severity``,
  ``sd_log_discrimination``.

A calibration directory holds ``calibration.nc`` (the draws, netCDF),
``calibration.json`` (format, hashes, the model plan, the source fit's design
and the centring of session times), ``spec.json`` (the instrument) and
``diagnostics.json`` (the source fit's convergence verdict, carried into every
table scored with it). No pickle. Loading checks the spec hash and a hash of the
draws, so an edited calibration is refused.

Scoring (:func:`caltars_bayes.scoring.trial.score`,
:func:`caltars_bayes.scoring.trial.score_trial`) gives new subjects and sessions
posterior alliance scores on the calibration's scale; the method is in
:mod:`caltars_bayes.scoring.engine` and ``docs/calibration.md``.

Origin of the scores: in the fitted model ``theta`` is centred over the
calibration sample's subjects, so 0 on every scale is the calibration
sample's average subject, and the cutpoints are thresholds for that subject.
A new subject's prior is the population ``MVN(0, Sigma)``: its score says how
far it lies from the calibration sample's average subject.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from caltars_bayes._core.errors import DataError, FitIOError
from caltars_bayes._core.io import atomic_write_dir, json_writer
from caltars_bayes.inference.diagnostics import Diagnostics
from caltars_bayes.inference.fit import Fit, load_fit
from caltars_bayes.model.plan import ModelPlan, plan_model
from caltars_bayes.spec.instrument import Instrument, instrument_from_dict

if TYPE_CHECKING:
    from caltars_bayes.data.ratings import RatingData
    from caltars_bayes.model.simulate import Trial

CALIBRATION_FORMAT = 1
#: Default number of posterior draws kept in a calibration.
DEFAULT_DRAWS = 1000
#: Posterior variables a calibration keeps (those present in the fit).
CALIBRATION_VARS = (
    "loading",
    "cutpoints",
    "sd_alliance",
    "factor_corr",
    "sd_session",
    "session_trend",
    "severity",
    "discrimination",
    "sd_severity",
    "sd_log_discrimination",
    "sd_interaction",
)
_FILES = ("calibration.nc", "calibration.json", "spec.json", "diagnostics.json")


def draws_hash(ds: xr.Dataset) -> str:
    """A hash of the draws' values, names, dims and coordinates (not of the file bytes)."""
    h = hashlib.sha256()
    for name in sorted(map(str, ds.data_vars)):
        da = ds[name]
        h.update(name.encode())
        h.update(json.dumps(list(da.dims)).encode())
        h.update(np.ascontiguousarray(da.values, dtype=np.float64).tobytes())
    for name in sorted(map(str, ds.coords)):
        h.update(name.encode())
        h.update(json.dumps([str(v) for v in np.asarray(ds[name].values).ravel()]).encode())
    return h.hexdigest()[:16]


@dataclass
class Calibration:
    """The calibrated instrument, judge panel and populations, as posterior draws.

    Attributes
    ----------
    draws : :class:`xarray.Dataset` with dim ``draw`` first, then the named dims
        of each parameter (``item``, ``cutpoint``, ``scale``, ``scale2``, ``judge``).
    instrument : the instrument the calibration is of.
    plan : the source fit's :class:`~caltars_bayes.model.build.ModelPlan`.
    diagnostics : the source fit's convergence verdict.
    meta : source fit hashes and design, ``session_time_mean`` (the centring
        of session times in the trend), thinning.
    """

    draws: xr.Dataset
    instrument: Instrument
    plan: ModelPlan
    diagnostics: Diagnostics
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n_draws(self) -> int:
        return int(self.draws.sizes["draw"])

    @property
    def judges(self) -> list[str]:
        """The calibrated judges (empty when the calibration has no judge level)."""
        if "judge" in self.draws.coords:
            return [str(j) for j in self.draws["judge"].values]
        return []

    @property
    def scales(self) -> list[str]:
        return [str(s) for s in self.draws["scale"].values]

    @property
    def items(self) -> list[str]:
        return [str(i) for i in self.draws["item"].values]

    @property
    def converged(self) -> bool:
        return self.diagnostics.converged

    def __repr__(self) -> str:
        src = self.meta.get("source", {})
        return (
            f"Calibration({self.instrument.name}; {self.n_draws} draws; from "
            f"{src.get('n_subjects', '?')} subjects, {src.get('n_judges', '?')} judges; "
            f"{self.diagnostics.verdict})"
        )

    def save(self, out: str | Path, force: bool = False) -> Path:
        """Write the calibration directory atomically (an existing one needs ``force``)."""
        out = Path(out)
        ds = self.draws.copy()
        ds.attrs = {"caltars_bayes_calibration_format": CALIBRATION_FORMAT}
        meta = {
            **self.meta,
            "format": CALIBRATION_FORMAT,
            "spec_hash": self.instrument.hash(),
            "draws_hash": draws_hash(self.draws),
            "plan": self.plan.to_dict(),
        }
        files = {
            "calibration.nc": lambda p: ds.to_netcdf(p, engine="h5netcdf"),
            "calibration.json": json_writer(meta),
            "spec.json": json_writer(self.instrument.spec_dict()),
            "diagnostics.json": json_writer(self.diagnostics.to_dict()),
        }
        atomic_write_dir(out, files, force=force)
        return out


def calibrate(fit: Fit, n_draws: int | None = DEFAULT_DRAWS) -> Calibration:
    """Freeze a fit into a calibration (thinned posterior draws of the instrument).

    Parameters
    ----------
    fit : a fitted model.
    n_draws : draws to keep, taken evenly spaced from the stacked chains (all
        when ``None`` or when the fit has fewer).

    Returns
    -------
    Calibration
    """
    if fit.plan.bifactor:
        raise DataError(
            "calibrate: scoring with a bifactor calibration is not supported (fit the "
            "correlated-factor model to calibrate)"
        )
    post = fit.posterior
    keep = [v for v in CALIBRATION_VARS if v in post]
    stacked = post[keep].stack(sample=("chain", "draw"))
    total = int(stacked.sizes["sample"])
    n = total if n_draws is None or n_draws >= total else int(n_draws)
    if n < 1:
        raise DataError(f"calibrate: n_draws must be at least 1, got {n_draws}")
    idx = np.unique(np.round(np.linspace(0, total - 1, n)).astype(int))
    ds = stacked.isel(sample=idx)
    ds = ds.drop_vars(["sample", "chain", "draw"], errors="ignore").rename({"sample": "draw"})
    ds = ds.assign_coords(draw=np.arange(ds.sizes["draw"]))
    ds = ds.transpose("draw", ...)
    data = fit.data
    if "factor_corr" not in ds:  # one scale: the correlation matrix is 1
        k = len(data.scales)
        ds["factor_corr"] = xr.DataArray(
            np.broadcast_to(np.eye(k), (ds.sizes["draw"], k, k)).copy(),
            dims=("draw", "scale", "scale2"),
            coords={"scale": list(data.scales), "scale2": list(data.scales)},
        )
    ds = ds.astype(np.float64)
    ds.attrs = {}
    times = np.asarray(data.sessions["session_time"], dtype=float)
    meta = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "n_draws": int(ds.sizes["draw"]),
        "thinned_from": total,
        "session_time_mean": float(times.mean()),
        "source": {
            "data_hash": fit.record.data_hash,
            "spec_hash": fit.record.spec_hash,
            "created": fit.record.created,
            "sampler": fit.record.sampler,
            "method": fit.record.method,
            "n_subjects": data.n_subjects,
            "n_sessions": data.n_sessions,
            "n_judges": data.n_judges,
            "n_ratings": data.n_ratings,
        },
    }
    return Calibration(ds, data.instrument, fit.plan, fit.diagnostics, meta)


def load_calibration(path: str | Path, n_draws: int | None = DEFAULT_DRAWS) -> Calibration:
    """Load a calibration directory, or calibrate on the fly from a fit directory.

    A fit directory (``posterior.nc`` and ``meta.json``) is loaded with
    :func:`caltars_bayes.inference.fit.load_fit` and calibrated with ``n_draws`` draws.
    Raises :class:`~caltars_bayes._core.errors.FitIOError` for a missing, incomplete,
    corrupted or edited directory.
    """
    p = Path(path)
    if not p.is_dir():
        raise FitIOError(f"{p}: not a calibration or fit directory (not found)")
    if not (p / "calibration.json").is_file() and (p / "posterior.nc").is_file():
        return calibrate(load_fit(p), n_draws=n_draws)
    for name in _FILES:
        if not (p / name).is_file():
            raise FitIOError(f"{p}: not a complete calibration directory ({name} is missing)")
    try:
        meta = json.loads((p / "calibration.json").read_text())
        spec = json.loads((p / "spec.json").read_text())
        diag = Diagnostics.from_dict(json.loads((p / "diagnostics.json").read_text()))
    except (json.JSONDecodeError, TypeError, OSError) as exc:
        raise FitIOError(f"{p}: corrupted calibration directory ({exc})") from None
    if meta.get("format") != CALIBRATION_FORMAT:
        raise FitIOError(f"{p}/calibration.json: unknown calibration format {meta.get('format')!r}")
    instrument = instrument_from_dict(spec)
    if instrument.hash() != meta.get("spec_hash"):
        raise FitIOError(f"{p}/spec.json: spec does not match the calibration (hash mismatch)")
    try:
        ds = xr.open_dataset(p / "calibration.nc", engine="h5netcdf").load()
    except Exception as exc:  # h5py/netCDF errors have many types
        raise FitIOError(f"{p}/calibration.nc: cannot be read ({type(exc).__name__})") from None
    ds.attrs = {}
    for c in ("item", "scale", "scale2", "judge"):
        if c in ds.coords:
            ds = ds.assign_coords({c: [str(v) for v in ds[c].values]})
    if draws_hash(ds) != meta.get("draws_hash"):
        raise FitIOError(f"{p}/calibration.nc: draws do not match calibration.json (hash mismatch)")
    plan = ModelPlan(**meta.pop("plan"))
    for k in ("format", "spec_hash", "draws_hash"):
        meta.pop(k, None)
    return Calibration(ds, instrument, plan, diag, meta)


def check_instrument(data: RatingData, calibration: Calibration) -> None:
    """Refuse ratings of another instrument (items, scales or response range differ)."""
    inst, cal = data.instrument, calibration.instrument
    src = data.report.sources.get("ratings") or "<ratings>"
    if tuple(inst.items) != tuple(calibration.items):
        raise DataError(
            f"{src}: instrument {inst.name!r} has other items than the calibration's "
            f"({cal.name!r}); score with the calibration's instrument"
        )
    if tuple(inst.scale_codes) != tuple(calibration.scales) or (inst.item_scale != cal.item_scale):
        raise DataError(f"{src}: the items are grouped into other scales than in the calibration")
    if (inst.response_min, inst.response_max) != (cal.response_min, cal.response_max):
        raise DataError(
            f"{src}: response range {inst.response_min}..{inst.response_max} differs from the "
            f"calibration's {cal.response_min}..{cal.response_max}"
        )
    if inst.reverse_keyed != cal.reverse_keyed:
        raise DataError(f"{src}: reverse-keyed items differ from the calibration's")


def oracle_calibration(trial: Trial, n_draws: int = 100) -> Calibration:
    """A calibration that knows a simulated trial's true parameters (every draw equal).

    For checking scoring against truth without the calibration's own
    uncertainty (tests, benchmarks). Its verdict says it is not a fit.
    """
    t = trial.truth
    data = trial.to_rating_data()
    plan = plan_model(data)
    n_k = t.sizes["scale"]

    def rep(da: xr.DataArray) -> xr.DataArray:
        return da.expand_dims(draw=np.arange(n_draws)).copy()

    names = ["loading", "cutpoints", "sd_alliance", "factor_corr"]
    if plan.session_level:
        names.append("sd_session")
    if plan.session_trend:
        names.append("session_trend")
    if plan.judge_severity:
        names += ["sd_severity"]
    if plan.judge_discrimination:
        names += ["discrimination", "sd_log_discrimination"]
    ds = xr.Dataset({n: rep(t[n]) for n in names})
    if plan.judge_severity:
        ds["severity"] = rep(t["severity"].transpose("scale", "judge"))
    ds = ds.drop_vars([c for c in ds.coords if c not in ("draw", *ds.dims)])
    if n_k == 1:
        ds["factor_corr"] = ds["factor_corr"] * 0 + 1.0
    ds = ds.astype(np.float64)
    diag = Diagnostics(
        converged=True, max_rhat=1.0, min_ess_bulk=np.inf, min_ess_tail=np.inf, divergences=0,
        treedepth_hits=0, ebfmi=[], n_chains=0, n_draws=n_draws,
        problems=["oracle: the true parameters, not a fit"],
    )  # fmt: skip
    times = np.asarray(data.sessions["session_time"], dtype=float)
    meta = {
        "n_draws": n_draws,
        "session_time_mean": float(times.mean()),
        "source": {"oracle": True, "n_subjects": data.n_subjects, "n_judges": data.n_judges},
    }
    return Calibration(ds, data.instrument, plan, diag, meta)
