"""The joint hierarchical measurement model, built as a PyMC model.

For the rating ``y`` that judge ``j`` gives item ``i`` (scale ``k = k(i)``) in
session ``s`` of subject ``p`` (``C`` ordered categories)::

    theta[p, :]  ~ MVN(0, diag(sd_alliance) Omega diag(sd_alliance))   treatment level
    zeta[s, k]   ~ Normal(0, sd_session[k])            session deviation from the subject
    eta[s, k]    = theta[p(s), k] + zeta[s, k] (+ session_trend[k] * time[s])
    mu           = discrimination[j] * loading[i] * eta[s, k] - severity[k, j] (+ interaction)
    P(y <= c)    = logistic(cutpoints[i, c] - mu)       graded response, cumulative logit

Bifactor option (``[model] bifactor = true`` or a ``[structures.NAME]`` with
``bifactor = true``): the scale factors are orthogonal (no ``factor_corr``) and
a general factor ``general[p] ~ Normal(0, 1)`` (centred over subjects) enters
every item with a positive ``general_loading[i]``::

    mu = discrimination[j] * (loading[i] * eta[s, k] + general_loading[i] * general[p]) - ...

It needs at least three specific factors with two items each; reverse-key
items (or scales) so that all items point the same way.

Identification (see ``docs/model.md``):

* scale of the latent factors: log loadings sum to zero within each scale
  (geometric mean loading 1, "effects coding"), so ``sd_alliance`` and
  ``sd_session`` are in logit units of the average item and judge; loadings are
  positive, so signs are fixed (reverse-keyed items are reversed before
  modelling), and every item loads on one factor, so there is no rotation;
* origin: each scale's origin is the sample's average subject (``theta`` is
  centred over subjects). Otherwise the common shift of all subjects against
  all cutpoints is identified only by the prior: a long correlated direction
  that costs NUTS many leapfrog steps and leaves cutpoints with low ESS;
* location: severities sum to zero over judges within each scale, so the item
  cutpoints carry the panel's average severity;
* judge discrimination: log discriminations sum to zero over judges (geometric
  mean 1), so loadings describe the average judge.

The pieces (priors, the cutpoint transform, the likelihood, the subject/session
and covariate blocks) are in :mod:`caltars_bayes.model.components`; which parts
the model has and how each is parameterised (centred or not, the joint form of
large designs) is decided by :func:`caltars_bayes.model.plan.plan_model`.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pymc as pm
import pytensor.tensor as pt

from caltars_bayes.data.ratings import RatingData
from caltars_bayes.model.components import (
    CentredOrdered,
    _cumulative_logit_random,
    _cumulative_logit_random_dense,
    _pin_origin,
    _subject_session_block,
    covariate_block,
    cumulative_logit_logp,
    cumulative_logit_logp_dense,
    lkj_cholesky,
    origin_sd,
    prior_rv,
    sum_to_zero_basis,
)
from caltars_bayes.model.informative import InformativePriors, add_borrowed_priors
from caltars_bayes.model.plan import covariate_tables, dense_cells, plan_model
from caltars_bayes.spec.instrument import Instrument, ModelOptions, Priors

# PyTensor looks for a BLAS library the first time a C op asks for its flags (the
# initial-point function even on the numba/JAX path) and warns in four lines when
# none is found; the fit does not need one. Only that one warning is silenced.
warnings.filterwarnings(
    "ignore",
    message=r"PyTensor could not link to a BLAS installation",
    category=UserWarning,
    module=r"pytensor\.link\.c\.cmodule",
)


@dataclass
class _Latent:
    """The latent alliance parts that later blocks of the model use."""

    sd_alliance: Any
    sd_session: Any
    omega: Any
    theta: Any
    eta: Any
    session_subject: Any


class AllianceModel:
    """The joint measurement model for one trial's ratings.

    Parameters
    ----------
    data : a validated :class:`~caltars_bayes.data.ratings.RatingData`.
    options, priors : override the instrument spec's ``[model]`` and ``[priors]``.
    informative : informative priors borrowed from an earlier trial
        (:class:`~caltars_bayes.model.informative.InformativePriors`, or a plain
        mapping of quantity name -> (mean, sd) arrays on its unconstrained
        scale), added to the default priors (see :mod:`caltars_bayes.analysis.borrow`).
    sampler : the sampler that will fit it, if known: resolves
        ``likelihood_layout = "auto"`` (dense for numpyro/blackjax).

    Examples
    --------
    >>> m = AllianceModel(data)            # doctest: +SKIP
    >>> fit = m.fit(draws=1000, tune=1000)  # doctest: +SKIP
    """

    def __init__(
        self,
        data: RatingData,
        options: ModelOptions | None = None,
        priors: Priors | None = None,
        informative: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
        sampler: str | None = None,
    ) -> None:
        self.data = data
        self.instrument: Instrument = data.instrument
        self.options = options or self.instrument.model
        self.priors = priors or self.instrument.priors
        self.plan = plan_model(data, self.options, sampler)
        self.informative = (
            informative
            if isinstance(informative, InformativePriors)
            else InformativePriors(dict(informative or {}))
        )
        self._model: pm.Model | None = None

    @property
    def model(self) -> pm.Model:
        """The PyMC model (built on first use)."""
        if self._model is None:
            self._model = self.build()
        return self._model

    def coords(self) -> dict[str, Any]:
        d = self.data
        n_cut = self.instrument.n_categories - 1
        return {
            "subject": list(d.subjects),
            "session": list(d.session_labels),
            "judge": list(d.judges),
            "item": list(d.items),
            "scale": list(d.scales),
            "scale2": list(d.scales),
            "cutpoint": list(range(n_cut)),
            "obs": np.arange(d.n_ratings),
        }

    def _covariate_matrix(
        self, names: list[str], scaling: dict[str, list[float]], level: str
    ) -> tuple[np.ndarray, list[str]]:
        """Standardised covariate values (NaN where missing) and their row labels."""
        subj, ses, _ = covariate_tables(self.data, self.options)
        table = subj if level == "subject" else ses
        assert table is not None
        x = np.column_stack(
            [(table[c].to_numpy(float) - scaling[c][0]) / scaling[c][1] for c in names]
        )
        labels = list(self.data.subjects) if level == "subject" else list(self.data.session_labels)
        return x, labels

    def build(self) -> pm.Model:
        """Build the PyMC model (no sampling).

        The parts are created in a fixed order (the sampler's parameter vector
        follows it, so the same seed gives the same draws): the latent alliance
        and session deviations, the covariate blocks, the session trend, the
        items, the judges and the general factor, the likelihood, and borrowed
        priors last.
        """
        with pm.Model(coords=self.coords()) as m:
            lat = self._latent_alliance()
            self._covariates(lat)
            eta = lat.eta
            if self.plan.session_trend:
                times = np.asarray(self.data.sessions["session_time"], dtype=float)
                trend = prior_rv("session_trend", self.priors.trend, dims="scale")
                centred = pm.Data("session_time", times - times.mean(), dims="session")
                eta = eta + trend * centred[:, None]
            parts = {"eta": eta, **self._items(), **self._judges(m)}
            if self.plan.likelihood_layout == "dense":
                self._dense_likelihood(parts, lat.session_subject)
            else:
                self._vector_likelihood(parts)
            if self.informative:
                add_borrowed_priors(m, self.informative, self.data)
        return m

    def _latent_alliance(self) -> _Latent:
        """Treatment-level alliance ``theta ~ MVN(0, diag(sd) Omega diag(sd))``,
        centred over subjects, plus session deviations ``zeta``: ``eta = theta + zeta``."""
        d, plan, pr = self.data, self.plan, self.priors
        n_k = d.n_scales
        sd_alliance = prior_rv("sd_alliance", pr.sd_alliance, dims="scale")
        if plan.bifactor:  # specific factors are orthogonal to each other
            chol = pt.eye(n_k)
        else:
            chol = lkj_cholesky("factor_corr", n_k, pr.lkj_eta)
        omega = chol @ chol.T
        if n_k > 1 and not plan.bifactor:
            pm.Deterministic("factor_corr", omega, dims=("scale", "scale2"))
        # Data enter as pm.Data, not constants: the compiled function is then the
        # same for any trial of the same plan, whatever its size (see
        # caltars_bayes.inference.flat_logp), and new data can be swapped in
        # with pm.set_data.
        session_subject = pm.Data(
            "session_subject_idx", np.asarray(d.session_subject_idx, np.int64), dims="session"
        )
        sd_session = zeta = None
        if plan.joint_subject_sessions:
            sd_session = prior_rv("sd_session", pr.sd_session, dims="scale")
            theta_raw, zeta = _subject_session_block(
                sd_alliance[:, None] * chol, sd_session, d, origin_sd(d), n_k, session_subject
            )
        elif plan.centred_subjects:
            chol_cov = sd_alliance[:, None] * chol
            theta_raw = pm.MvNormal(
                "theta_raw", mu=np.zeros(n_k), chol=chol_cov, dims=("subject", "scale")
            )
            _pin_origin(theta_raw, chol_cov, origin_sd(d), n_k)
        else:
            z_theta = pm.Normal("theta_z", 0.0, 1.0, dims=("subject", "scale"))
            theta_raw = (z_theta @ chol.T) * sd_alliance
        # The origin of each scale is the sample's average subject.
        theta = pm.Deterministic(
            "theta", theta_raw - theta_raw.mean(axis=0), dims=("subject", "scale")
        )
        eta = theta[session_subject]
        if plan.joint_subject_sessions:
            eta = eta + zeta
        elif plan.session_level:
            sd_session = prior_rv("sd_session", pr.sd_session, dims="scale")
            if plan.centred_sessions:
                zeta = pm.Normal("zeta", 0.0, sd_session, dims=("session", "scale"))
            else:
                zeta_z = pm.Normal("zeta_z", 0.0, 1.0, dims=("session", "scale"))
                zeta = pm.Deterministic("zeta", zeta_z * sd_session, dims=("session", "scale"))
            eta = eta + zeta
        return _Latent(sd_alliance, sd_session, omega, theta, eta, session_subject)

    def _covariates(self, lat: _Latent) -> None:
        """Covariates, jointly with the latent alliance (see :func:`covariate_block`)."""
        plan, pr, n_k = self.plan, self.priors, self.data.n_scales
        if plan.covariates:
            x, labels = self._covariate_matrix(plan.covariates, plan.covariate_scaling, "subject")
            covariate_block(
                "", x, lat.theta / lat.sd_alliance, lat.omega, labels, plan.covariates, pr, n_k
            )
        if plan.session_covariates:
            x, labels = self._covariate_matrix(
                plan.session_covariates, plan.session_covariate_scaling, "session"
            )
            # the stationary session-level alliance (trend excluded), standardised
            sd_alliance, sd_session = lat.sd_alliance, lat.sd_session
            var_eta = sd_alliance**2 + (sd_session**2 if plan.session_level else 0.0)
            sd_eta = pt.sqrt(var_eta)
            cov_eta = lat.omega * pt.outer(sd_alliance, sd_alliance)
            if plan.session_level:
                cov_eta = cov_eta + np.eye(n_k) * sd_session**2
            covariate_block(
                "session_",
                x,
                lat.eta / sd_eta,
                cov_eta / pt.outer(sd_eta, sd_eta),
                labels,
                plan.session_covariates,
                pr,
                n_k,
            )

    def _items(self) -> dict[str, Any]:
        """Item loadings (log loadings sum to zero within each scale) and cutpoints."""
        d, plan = self.data, self.plan
        n_k, n_cut = d.n_scales, self.instrument.n_categories - 1
        isc = np.asarray(d.item_scale_idx, dtype=np.int64)
        loading = pm.Deterministic("loading", pt.exp(self._log_loadings(isc)), dims="item")
        cut_rows = "item" if plan.cutpoints == "item" else "scale"
        n_rows = d.n_items if cut_rows == "item" else n_k
        init = np.tile(np.linspace(-1.5, 1.5, n_cut), (n_rows, 1))
        cutpoints = prior_rv(
            "cutpoints",
            self.priors.cutpoint,
            dims=(cut_rows, "cutpoint"),
            transform=CentredOrdered(n_cut),
            initval=init,
        )
        return {"loading": loading, "cutpoints": cutpoints}

    def _judges(self, m: pm.Model) -> dict[str, Any]:
        """The general factor (bifactor), judge discrimination and severity, and
        the judge x subject interaction; None for the parts the plan leaves out."""
        d, plan, pr = self.data, self.plan, self.priors
        general = g_load = disc = sev = g = pairs = pair_idx = None
        if plan.bifactor:
            # general factor: SD 1 on the logit scale of the average judge (its
            # scale is fixed, so item general loadings are free and positive)
            g_z = pm.Normal("general_z", 0.0, 1.0, dims="subject")
            general = pm.Deterministic("general", g_z - g_z.mean(), dims="subject")
            log_gl = prior_rv("log_general_loading", pr.log_general_loading, dims="item")
            g_load = pm.Deterministic("general_loading", pt.exp(log_gl), dims="item")
        if plan.judge_discrimination:
            sd_ld = prior_rv("sd_log_discrimination", pr.sd_log_discrimination)
            if plan.centred_judges:
                log_disc = pm.ZeroSumNormal("log_discrimination", sigma=sd_ld, dims="judge")
            else:
                ld_z = pm.ZeroSumNormal("log_discrimination_z", sigma=1.0, dims="judge")
                log_disc = pm.Deterministic("log_discrimination", ld_z * sd_ld, dims="judge")
            disc = pm.Deterministic("discrimination", pt.exp(log_disc), dims="judge")
        if plan.judge_severity:
            sd_sev = prior_rv("sd_severity", pr.sd_severity)
            if plan.centred_judges:
                sev = pm.ZeroSumNormal("severity", sigma=sd_sev, dims=("scale", "judge"))
            else:
                sev_z = pm.ZeroSumNormal("severity_z", sigma=1.0, dims=("scale", "judge"))
                sev = pm.Deterministic("severity", sev_z * sd_sev, dims=("scale", "judge"))
        if plan.judge_subject_interaction:
            pair_codes = d.judge_idx.astype(np.int64) * d.n_subjects + d.subject_idx
            pairs, pair_idx = np.unique(pair_codes, return_inverse=True)
            m.add_coord(
                "judge_subject",
                [f"{d.judges[c // d.n_subjects]}|{d.subjects[c % d.n_subjects]}" for c in pairs],
            )
            sd_int = prior_rv("sd_interaction", pr.sd_interaction)
            g_z = pm.Normal("interaction_z", 0.0, 1.0, dims=("judge_subject", "scale"))
            g = pm.Deterministic("interaction", g_z * sd_int, dims=("judge_subject", "scale"))
        return dict(
            general=general, general_loading=g_load, discrimination=disc, severity=sev,
            interaction=g, pairs=pairs, pair_idx=pair_idx,  # judge x subject codes, and per rating
        )  # fmt: skip

    def _log_loadings(self, isc: np.ndarray) -> pt.TensorVariable:
        """Log item loadings summing to zero within each scale.

        With the default Normal prior the free parameters are the coordinates of
        the log loadings in an orthonormal basis of the sum-to-zero subspace
        (``log_loading_contrast``, Helmert contrasts within each scale, one fewer
        than the scale's items): the same distribution as iid
        ``Normal(mu, sigma)`` log loadings centred per scale, without the
        per-scale mean that the likelihood cannot see. That mean, free in the
        centred form, is as wide as the prior while the loadings it shifts get
        narrower with every rating: NUTS then needs ever longer trajectories
        (roughly in proportion to the square root of the ratings). Other prior families keep the
        centred form (``log_loading_raw``).
        """
        d, prior = self.data, self.priors.log_loading
        if prior.dist != "Normal":
            n_k = d.n_scales
            counts = np.bincount(isc, minlength=n_k).astype(float)
            raw = prior_rv("log_loading_raw", prior, dims="item")
            avg = pt.dot(raw, np.eye(n_k)[isc] / counts[None, :])  # mean per scale
            return raw - avg[isc]
        basis, labels = sum_to_zero_basis(isc, d.n_scales, list(d.items))
        if not labels:  # every scale has one item: all loadings are 1
            return pt.zeros(d.n_items)
        pm.modelcontext(None).add_coord("item_contrast", labels)
        sigma = prior.params.get("sigma", 1.0)  # PyMC's default when a spec leaves it out
        z = pm.Normal("log_loading_contrast", 0.0, sigma, dims="item_contrast")
        return pt.dot(basis, z)

    def _vector_likelihood(self, p: dict[str, Any]) -> None:
        """Observed ratings as one vector (dim ``obs``), parameters gathered per rating."""
        d, plan = self.data, self.plan
        n_k = d.n_scales
        jj, kk = d.judge_idx, d.scale_idx
        item_idx = pm.Data("item_idx", np.asarray(d.item_idx, np.int64), dims="obs")
        eta_idx = pm.Data("eta_idx", np.asarray(d.session_idx * n_k + kk, np.int64), dims="obs")
        mu = p["loading"][item_idx] * p["eta"].ravel()[eta_idx]
        if p["general"] is not None:
            subject_idx = pm.Data("subject_idx", np.asarray(d.subject_idx, np.int64), dims="obs")
            mu = mu + p["general_loading"][item_idx] * p["general"][subject_idx]
        if p["discrimination"] is not None:
            judge_idx = pm.Data("judge_idx", np.asarray(jj, np.int64), dims="obs")
            mu = p["discrimination"][judge_idx] * mu
        if p["severity"] is not None:
            sev_idx = pm.Data(
                "severity_idx", np.asarray(kk * d.n_judges + jj, np.int64), dims="obs"
            )
            mu = mu - p["severity"].ravel()[sev_idx]
        if p["interaction"] is not None:
            pair = pm.Data(
                "interaction_idx", np.asarray(p["pair_idx"] * n_k + kk, np.int64), dims="obs"
            )
            mu = mu + p["interaction"].ravel()[pair]
        if plan.cutpoints == "item":
            row = item_idx
        else:
            row = pm.Data("scale_idx", np.asarray(kk, np.int64), dims="obs")
        y = pm.Data("y", np.asarray(d.y, np.int64), dims="obs")
        pm.CustomDist(
            "rating",
            mu,
            p["cutpoints"],
            row,
            logp=lambda value, mu_, cut_, row_: cumulative_logit_logp(value, mu_, cut_, row_),
            random=_cumulative_logit_random,
            signature="(),(r,c),()->()",
            observed=y,
            dims="obs",
        )

    def _dense_likelihood(self, p: dict[str, Any], session_subject: pt.TensorVariable) -> None:
        """Observed ratings as a session x judge x item array (complete designs).

        Item-level terms reach the scales through a scale x item 0/1 matrix and
        judge terms by broadcasting, so no parameter is gathered per rating.
        """
        d = self.data
        isc = np.asarray(d.item_scale_idx, dtype=np.int64)
        to_item = np.eye(d.n_scales)[isc].T  # scale x item
        mu = (p["loading"] * pt.dot(p["eta"], to_item))[:, None, :]  # session x 1 x item
        if p["general"] is not None:
            mu = mu + p["general_loading"] * p["general"][session_subject][:, None, None]
        if p["discrimination"] is not None:
            mu = p["discrimination"][None, :, None] * mu
        if p["severity"] is not None:
            mu = mu - pt.dot(p["severity"].T, to_item)[None]  # judge x item
        if p["interaction"] is not None:
            pair_codes = (
                np.arange(d.n_judges)[None, :] * d.n_subjects
                + np.asarray(d.session_subject_idx)[:, None]
            )
            pair_idx = np.searchsorted(p["pairs"], pair_codes)  # session x judge
            mu = mu + pt.dot(p["interaction"][pair_idx], to_item)
        mu = pt.broadcast_to(mu, (d.n_sessions, d.n_judges, d.n_items))
        cut = p["cutpoints"] if self.plan.cutpoints == "item" else p["cutpoints"][isc]
        y = pm.Data("y_dense", dense_cells(d), dims=("session", "judge", "item"))
        pm.CustomDist(
            "rating",
            mu,
            cut,
            logp=lambda value, mu_, cut_: cumulative_logit_logp_dense(value, mu_, cut_),
            random=_cumulative_logit_random_dense,
            signature="(),(c)->()",
            observed=y,
            dims=("session", "judge", "item"),
        )
