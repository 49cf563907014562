"""The typed record of how a fit was made (saved as ``meta.json`` beside the posterior).

A :class:`FitRecord` replaces a free-form dict: every field is named and typed,
a misspelt field is an error, and a saved record with an unknown field is
refused on loading (:meth:`FitRecord.from_dict`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from caltars_bayes._core.errors import FitIOError

#: version of the fit-directory layout; a directory of another version is refused
FORMAT_VERSION = 1

#: each sampler's name for its maximum tree depth (``nuts={name: N}``: at most
#: 2^N - 1 leapfrog steps per iteration); nutpie's own is ``maxdepth``, to which
#: :func:`~caltars_bayes.inference.sampling.run_nuts` maps ``max_treedepth``
TREE_DEPTH_OPTION: dict[str, str] = {
    "nutpie": "max_treedepth",
    "pymc": "max_treedepth",
    "numpyro": "max_tree_depth",
    "blackjax": "max_num_doublings",
}

#: the packages whose versions a fit records
RECORDED_PACKAGES = ("pymc", "pytensor", "nutpie", "arviz", "numpy", "xarray", "numpyro", "jax")


def package_version(name: str = "caltars-bayes") -> str:
    """The installed version of ``name`` (``"0+unknown"`` from a bare checkout)."""
    try:
        return version(name)
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "0+unknown"


def installed_versions() -> dict[str, str]:
    """Versions of :data:`RECORDED_PACKAGES` that are installed."""
    out = {}
    for pkg in RECORDED_PACKAGES:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


@dataclass(frozen=True)
class PriorSource:
    """Where a fit's informative priors came from: the earlier fit and the power-prior weight."""

    fit: str
    weight: float


@dataclass
class FitRecord:
    """How a fit was made: sampler settings, timings, versions and hashes.

    Attributes
    ----------
    sampler : ``"nutpie"``, ``"pymc"``, ``"numpyro"`` or ``"blackjax"`` (or the
        approximate method's name).
    method : ``"NUTS"``, or the approximate method (``"advi"``, ``"pathfinder"``, ...).
    draws, tune, chains : per chain (an approximate fit: ``draws`` in one chain, no
        tuning); ``draws`` are those kept, more than asked for when the fit was extended.
    random_seed : the seed; the same seed and sampler give the same draws.
    target_accept : NUTS target acceptance.
    nuts : the sampler options the caller gave (the sampler's own names).
    sampler_defaults : the package's defaults the sampler ran with that the
        caller did not override (e.g. nutpie's integration-time cap).
    start : where the chains started, ``"default"`` or ``"data"`` (None: approximate).
    timings : seconds (``build_s, compile_s, sampling_s, total_s``, ...) and
        ``tune_steps`` where the sampler reports them.
    compile_source : how the sampler got its compiled model: ``"compiled"``
        (in this process), ``"disk cache"`` (compiled by an earlier process),
        ``"reused"`` (compiled earlier in this process, for other data),
        ``"nutpie"`` (nutpie's own compilation); ``""`` where none is recorded
        (approximate fits, other samplers, fits saved before this field).
    spec_hash, data_hash : hashes of the instrument spec and the ratings fitted.
    created : ISO time stamp (UTC).
    caltars_bayes_version, versions : the package's and its dependencies' versions.
    approximation : the approximate method's options, iterations and Pareto k-hat.
    prior_from : the earlier fit whose posterior gave informative priors.
    max_draws : the most draws per chain the fit could extend to (None: no
        extension, e.g. another sampler or a short fit).
    extension : when the fit was extended (:mod:`caltars_bayes.inference.extend`):
        ``requested_draws``, ``max_draws``, ``draws``, ``message`` and the
        ``checks`` (draws, max R-hat, min bulk and tail ESS, divergences at each
        checkpoint); None otherwise.
    """

    sampler: str
    method: str
    draws: int
    tune: int
    chains: int
    random_seed: int
    target_accept: float
    spec_hash: str
    data_hash: str
    nuts: dict[str, Any] = field(default_factory=dict)
    sampler_defaults: dict[str, Any] = field(default_factory=dict)
    start: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    created: str = ""
    caltars_bayes_version: str = field(default_factory=package_version)
    versions: dict[str, str] = field(default_factory=installed_versions)
    approximation: dict[str, Any] | None = None
    prior_from: PriorSource | None = None
    compile_source: str = ""
    max_draws: int | None = None
    extension: dict[str, Any] | None = None
    format: int = FORMAT_VERSION

    @property
    def approximate(self) -> bool:
        """True for ADVI/Pathfinder fits (never reported as converged)."""
        return self.method != "NUTS"

    def sampler_options(self) -> dict[str, Any]:
        """The sampler options the fit ran with: the package's defaults it did
        not override, then the caller's."""
        return {**self.sampler_defaults, **self.nuts}

    def trajectory_cap(self) -> float | None:
        """The integration-time cap nutpie ran with (the caller's or the
        package's default); None for plain NUTS or another sampler."""
        if self.sampler != "nutpie":
            return None
        return self.sampler_options().get("target_integration_time")

    def tree_depth_cap(self) -> int | None:
        """The maximum tree depth of a NUTS fit when it was set (by the caller or
        by the package's large-design default); None when the sampler's own applied."""
        given = self.sampler_options()
        for key in (TREE_DEPTH_OPTION.get(self.sampler, ""), "maxdepth"):
            if given.get(key) is not None:
                return int(given[key])
        return None

    def compile_text(self) -> str:
        """How the compiled model was obtained, e.g. ``"model loaded from cache in 3 s"``
        (``""`` when not recorded)."""
        if not self.compile_source or "compile_s" not in self.timings:
            return ""
        verb = {
            "compiled": "model compiled",
            "disk cache": "model loaded from cache",
            "reused": "compiled model reused",
            "nutpie": "model compiled by nutpie",
        }.get(self.compile_source, self.compile_source)
        s = self.timings["compile_s"]
        return f"{verb} in {s:.0f} s" if s >= 1 else f"{verb} in <1 s"

    def to_dict(self) -> dict[str, Any]:
        """The record as JSON-ready data (``meta.json``, with the plan added by the fit)."""
        doc = asdict(self)
        if self.approximation is None:
            del doc["approximation"]
        if self.prior_from is None:
            del doc["prior_from"]
        for key in ("max_draws", "extension"):
            if doc[key] is None:
                del doc[key]
        return doc

    @classmethod
    def from_dict(cls, doc: dict[str, Any], where: str) -> FitRecord:
        """Read a record saved by :meth:`to_dict`; unknown or missing fields are refused."""
        if doc.get("format") != FORMAT_VERSION:
            raise FitIOError(f"{where}: unknown fit format {doc.get('format')!r}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(doc) - known)
        if unknown:
            raise FitIOError(f"{where}: unknown field(s) {', '.join(map(repr, unknown))}")
        doc = dict(doc)
        if doc.get("prior_from") is not None:
            doc["prior_from"] = PriorSource(**doc["prior_from"])
        try:
            return cls(**doc)
        except TypeError as exc:
            raise FitIOError(f"{where}: incomplete fit record ({exc})") from None
