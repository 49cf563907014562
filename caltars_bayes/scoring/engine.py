"""Scoring new subjects with a calibration: per-draw Laplace fits, importance-corrected.

Target. Scores are drawn from the *cut* posterior of the new trial's unknowns
``u`` (subjects' ``theta`` and ``zeta``, new judges' severity and log
discrimination) given the calibration's parameters ``phi``::

    p(u | y_new, calibration) = integral of p(u | y_new, phi) p(phi | y_calibration) dphi

The calibration is not updated by the new ratings (that is what a joint refit
or ``fit --prior-from`` does), so a subject's score does not depend on who
else is scored in the same batch (except through new judges they share).

Method, for each calibration draw ``phi_s`` (vectorised over draws and subjects):

1. *Mode.* Newton's method on the log posterior of ``u`` given ``phi_s``. Given
   ``phi_s`` every rating's linear predictor ``mu`` is linear in ``theta`` and
   ``zeta`` and the cumulative-logit log likelihood is concave in ``mu``, so
   without new judges the problem is concave and Newton converges in a few
   steps (with step halving as a safeguard). New judges' parameters are set
   to the mode of their Laplace-approximated *marginal* posterior (an outer
   Newton iteration, see :meth:`_Engine.fit`; their discrimination enters
   multiplicatively and uses the Gauss-Newton curvature), the subjects to
   their conditional mode given them.
   The linear systems are solved by eliminating, in turn, the session
   deviations (their precision matrix is diagonal), then each subject's
   ``theta`` (a K x K block), leaving a small system for the new judges (the
   Schur complement), so the cost is linear in subjects and sessions.
2. *Draw.* One draw from the Gaussian with that mode and precision (the
   negative Hessian), by the same block factorisation: new judges from their
   marginal, then ``theta`` given them, then ``zeta`` given both.
3. *Importance correction.* Each subject's draw gets the log weight
   ``log p(x, y | phi_s) - log p(x~, y | phi_s) + |z|^2 / 2`` where ``x~`` is
   the Gaussian's (conditional) mean and ``z`` the standard normals that made
   the draw: the ratio of the exact density to its quadratic approximation.
   Weights are Pareto-smoothed over the calibration draws (PSIS) per subject;
   a Pareto k-hat above 0.7 with a relative effective sample size below 0.5
   marks the subject's scores as unreliable (``converged`` False). With one
   rating or a handful the posterior can be skewed (e.g. every rating at the
   top of the scale); the weights correct that.

New judges (not in the calibration) get the calibrated judge population as
prior, per draw: severity ~ Normal(0, sd_severity) per scale and log
discrimination ~ Normal(0, sd_log_discrimination). They are estimated jointly
with the subjects they rate (their draws are not importance weighted). Rater
drift: see :func:`caltars_bayes.scoring.drift.judge_drift`. The method and its
checks are written up in ``docs/calibration.md``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from caltars_bayes._core.progress import Progress
from caltars_bayes.model.density import cumulative_logit_derivatives, cumulative_logit_logp
from caltars_bayes.scoring.calibration import Calibration
from caltars_bayes.scoring.design import _Design, _Params, _params, _rsum, _ssum

#: Largest (draws x ratings) array built at once: draws are processed in chunks.
CHUNK_ELEMENTS = 2_000_000
MAX_NEWTON = 60
NEWTON_TOL = 1e-7
SKIP_SEARCH_DECREMENT = 1e-6
MAX_OUTER = 40
#: Largest change of a new judge's parameter in one outer Newton step (logits).
MAX_JUDGE_STEP = 1.0
#: Outer iterations stop when no new-judge parameter moves more than this (logits).
OUTER_TOL = 1e-3
#: Outer steps smaller than this are taken without checking the Laplace marginal.
SMALL_JUDGE_STEP = 0.05

#: A subject's importance weights fail when their Pareto k-hat exceeds
#: PARETO_K_MAX *and* they matter (relative effective sample size below
#: MIN_RELATIVE_ESS). k-hat alone is unreliable for nearly constant weights
#: (log-weight SD of a few hundredths, as whenever the Laplace draw is close).
PARETO_K_MAX = 0.7
MIN_RELATIVE_ESS = 0.5


# --------------------------------------------------------------------------- the engine


@dataclass
class _State:
    theta: np.ndarray  # (S, P, K)
    zeta: np.ndarray  # (S, N, K)
    sev: np.ndarray  # (S, Jn, K) new judges
    ld: np.ndarray  # (S, Jn)

    def copy(self) -> _State:
        return _State(self.theta.copy(), self.zeta.copy(), self.sev.copy(), self.ld.copy())


class _Engine:
    """Newton fits and Laplace draws for one chunk of calibration draws."""

    def __init__(self, d: _Design, p: _Params) -> None:
        self.d, self.p = d, p
        s = p.lam.shape[0]
        self.S = s
        self.lam_r = p.lam[:, d.r_item]
        self.tau_lo = p.cut[:, d.r_row, d.r_y]
        self.tau_hi = p.cut[:, d.r_row, d.r_y + 1]
        self.isnew = d.r_new >= 0
        kn = np.maximum(d.r_known, 0)
        self.disc_r = p.disc[:, kn]
        self.sev_r = p.sev[:, d.r_k, kn]
        self.trend_r = p.trend[:, d.r_k] * d.ses_time[d.r_ses][None, :]
        sd = p.sd_ses
        self.session_level = bool(np.any(sd > 0))
        self.pz = np.where(sd > 0, 1.0 / np.where(sd > 0, sd, 1.0) ** 2, 0.0)  # (S, K)
        self.n_sev = d.n_new * d.n_scales if (d.n_new and p.has_sev) else 0
        self.n_ld = d.n_new if (d.n_new and p.has_disc) else 0
        self.V = self.n_sev + self.n_ld

    # ---- the linear predictor and the objective

    def _mu(self, st: _State) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        d = self.d
        eta = st.theta[:, d.r_subj, d.r_k] + st.zeta[:, d.r_ses, d.r_k] + self.trend_r
        alpha, delta = self.disc_r, self.sev_r
        if d.n_new:
            rn = np.maximum(d.r_new, 0)
            if self.p.has_disc:
                alpha = np.where(self.isnew, np.exp(st.ld[:, rn]), alpha)
            if self.p.has_sev:
                delta = np.where(self.isnew, st.sev[:, rn, d.r_k], delta)
            else:
                delta = np.where(self.isnew, 0.0, delta)
            if not self.p.has_disc:
                alpha = np.where(self.isnew, 1.0, alpha)
        c = alpha * self.lam_r
        e = c * eta
        return e - delta, c, e

    def objective(self, st: _State) -> tuple[np.ndarray, np.ndarray]:
        """Log posterior (up to a constant): per (draw, subject), and the new judges' prior."""
        d, p = self.d, self.p
        mu, _, _ = self._mu(st)
        ll = _rsum(cumulative_logit_logp(mu, self.tau_lo, self.tau_hi), d.m_subj)
        quad = np.einsum("spk,skl,spl->sp", st.theta, p.prec, st.theta)
        zq = _ssum((st.zeta**2 * self.pz[:, None, :]).sum(-1), d.m_ses_subj)
        obj = ll - 0.5 * quad - 0.5 * zq
        vprior = np.zeros(self.S)
        if self.n_sev:
            vprior -= 0.5 * (st.sev**2).sum((1, 2)) / p.sd_sev**2
        if self.n_ld:
            vprior -= 0.5 * (st.ld**2).sum(1) / p.sd_ld**2
        return obj, vprior

    # ---- the Newton system

    def system(self, st: _State, with_v: bool = True) -> dict[str, np.ndarray]:
        """Gradient and (Gauss-Newton) precision, with the session deviations eliminated.

        ``with_v=False``: the new judges' parameters are held at their values
        (the subjects-only problem, concave in theta and zeta).
        """
        d, p = self.d, self.p
        S, N, K, Jn = self.S, d.n_sessions, d.n_scales, d.n_new
        mu, c, e = self._mu(st)
        g, h = cumulative_logit_derivatives(mu, self.tau_lo, self.tau_hi)
        w = -h
        L = _rsum(w * c * c, d.m_cell).reshape(S, N, K)
        gl = _rsum(g * c, d.m_cell).reshape(S, N, K)
        sd2 = (p.sd_ses**2)[:, None, :]
        inv_d = sd2 / (1.0 + sd2 * L)  # 1 / (1/sd^2 + L); 0 without a session level
        r = L * inv_d
        g_zeta = gl - st.zeta * self.pz[:, None, :]
        g_theta = _ssum(gl, d.m_ses_subj) - np.einsum("skl,spl->spk", p.prec, st.theta)
        a = p.prec[:, None, :, :] + _diag(_ssum(L * (1.0 - r), d.m_ses_subj))
        g_theta_r = g_theta - _ssum(r * g_zeta, d.m_ses_subj)
        out = {
            "L": L,
            "inv_d": inv_d,
            "g_zeta": g_zeta,
            "g_theta": g_theta,
            "A": a,
            "g_theta_r": g_theta_r,
        }
        if not (self.V and with_v):
            return out
        # new judges: the couplings F (session cell x judge) and their direct curvature
        wc = np.where(self.isnew, w * c, 0.0)
        fd = -_rsum(wc, d.m_cj).reshape(S, N, K, Jn)
        fl = _rsum(wc * e, d.m_cj).reshape(S, N, K, Jn)
        hdd = _rsum(np.where(self.isnew, w, 0.0), d.m_kj).reshape(S, Jn, K)
        hdl = -_rsum(np.where(self.isnew, w * e, 0.0), d.m_kj).reshape(S, Jn, K)
        hll = _rsum(np.where(self.isnew, w * e * e, 0.0), d.m_j)
        gsev = -_rsum(np.where(self.isnew, g, 0.0), d.m_kj).reshape(S, Jn, K)
        gsev = gsev - st.sev / p.sd_sev[:, None, None] ** 2
        gld = _rsum(np.where(self.isnew, g * e, 0.0), d.m_j) - st.ld / p.sd_ld[:, None] ** 2
        # eliminate zeta
        ed = _ssum(fd * (1.0 - r)[..., None], d.m_ses_subj)
        el = _ssum(fl * (1.0 - r)[..., None], d.m_ses_subj)
        eye_j = np.eye(Jn)
        dd = np.einsum(
            "sjk,ji,kl->sjkil", hdd + 1.0 / p.sd_sev[:, None, None] ** 2, eye_j, np.eye(K)
        )
        dd = dd - np.einsum("snkj,snki,snk,kl->sjkil", fd, fd, inv_d, np.eye(K), optimize=True)
        dl = np.einsum("sjk,ji->sjki", hdl, eye_j) - np.einsum(
            "snkj,snki,snk->sjki", fd, fl, inv_d, optimize=True
        )
        ll = np.einsum("sj,ji->sji", hll + 1.0 / p.sd_ld[:, None] ** 2, eye_j) - np.einsum(
            "snkj,snki,snk->sji", fl, fl, inv_d, optimize=True
        )
        out["gv0"] = self._pack(gsev, gld)
        gz = g_zeta * inv_d
        gsev = gsev - np.einsum("snkj,snk->sjk", fd, gz)
        gld = gld - np.einsum("snkj,snk->sj", fl, gz)
        lj = _rsum(wc * c, d.m_cj).reshape(S, N, K, Jn) if self.n_ld else None
        out.update(fd=fd, fl=fl, ed=ed, el=el, dd=dd, dl=dl, ll=ll, gsev=gsev, gld=gld, lj=lj)
        return out

    def _pack(self, sev: np.ndarray, ld: np.ndarray) -> np.ndarray:
        parts = []
        if self.n_sev:
            parts.append(sev.reshape(self.S, -1))
        if self.n_ld:
            parts.append(ld)
        return np.concatenate(parts, axis=1)

    def _unpack(self, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        jn, k = self.d.n_new, self.d.n_scales
        sev = v[:, : self.n_sev].reshape(self.S, jn, k) if self.n_sev else np.zeros((self.S, jn, k))
        ld = v[:, self.n_sev :] if self.n_ld else np.zeros((self.S, jn))
        return sev, ld

    def _e_times(self, ed, el, dsev, dld) -> np.ndarray | float:
        """E dv: (S, P|N, K) from the compact couplings and a new-judge step (0 if none)."""
        out: np.ndarray | float = 0.0
        if self.n_sev:
            out = out + np.einsum("spkj,sjk->spk", ed, dsev)
        if self.n_ld:
            out = out + np.einsum("spkj,sj->spk", el, dld)
        return out

    def reduce(self, sysm: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Eliminate theta: A^-1, and for new judges the Schur complement and its gradient.

        With ``E`` the theta x new-judge coupling (after eliminating zeta; compact
        ``ed[p, k, j]`` for the judge's severity on scale k, ``el[p, k, j]`` for its
        log discrimination), the new judges' precision is ``H_vv - sum_p E' A^-1 E``.
        """
        ainv = np.linalg.inv(sysm["A"])
        y = np.einsum("spkl,spl->spk", ainv, sysm["g_theta_r"])
        out = {"Ainv": ainv, "y": y}
        if "ed" not in sysm:
            return out
        ed, el = sysm["ed"], sysm["el"]
        ael = np.einsum("spkl,splj->spkj", ainv, el)
        dd = sysm["dd"] - np.einsum("spkj,spkl,spli->sjkil", ed, ainv, ed, optimize=True)
        dl = sysm["dl"] - np.einsum("spkj,spki->sjki", ed, ael)
        ll = sysm["ll"] - np.einsum("spkj,spki->sji", el, ael)
        gsev = sysm["gsev"] - np.einsum("spkj,spk->sjk", ed, y)
        gld = sysm["gld"] - np.einsum("spkj,spk->sj", el, y)
        if self.n_ld:
            # gradient of -log|H_uu| / 2 in the log discriminations (the Laplace
            # marginal's volume term): H_uu's rating terms are w c^2 with
            # c = discrimination x loading, so d log|H_uu| / d log discrimination_j
            # = 2 sum over judge j's ratings of w c^2 Var(eta | v) (w held fixed)
            d = self.d
            var_th = np.diagonal(ainv, axis1=2, axis2=3)[:, d.ses_subj, :]
            r = sysm["L"] * sysm["inv_d"]
            var_eta = (1.0 - r) ** 2 * var_th + sysm["inv_d"]
            gld = gld - np.einsum("snkj,snk->sj", sysm["lj"], var_eta)
        S, jn, k = self.S, self.d.n_new, self.d.n_scales
        blocks = []
        if self.n_sev:
            row = [dd.reshape(S, jn * k, jn * k)]
            if self.n_ld:
                row.append(dl.reshape(S, jn * k, jn))
            blocks.append(np.concatenate(row, axis=2))
        if self.n_ld:
            row = []
            if self.n_sev:
                row.append(np.swapaxes(dl.reshape(S, jn * k, jn), 1, 2))
            row.append(ll)
            blocks.append(np.concatenate(row, axis=2))
        sv = np.concatenate(blocks, axis=1)
        sv = 0.5 * (sv + np.swapaxes(sv, 1, 2))
        out.update(Sv=sv, gv=self._pack(gsev, gld))
        return out

    def _couplings(self, sysm, red, dv: np.ndarray) -> tuple:
        """For a new-judge increment dv: (dsev, dld, A^-1 E dv, F dv)."""
        dsev, dld = self._unpack(dv)
        e_dv = self._e_times(sysm["ed"], sysm["el"], dsev, dld)
        a_e_dv = np.einsum("spkl,spl->spk", red["Ainv"], e_dv)
        f_dv = self._e_times(sysm["fd"], sysm["fl"], dsev, dld)
        return dsev, dld, a_e_dv, f_dv

    def step(self, st: _State, sysm, red) -> _State:
        """The Newton step (as a state of increments; new judges only when in ``sysm``)."""
        d = self.d
        if "Sv" in red:
            dv = np.linalg.solve(red["Sv"], red["gv"][..., None])[..., 0]
            dsev, dld, a_e_dv, f_dv = self._couplings(sysm, red, dv)
        else:
            dsev, dld = np.zeros_like(st.sev), np.zeros_like(st.ld)
            a_e_dv = f_dv = 0.0
        dtheta = red["y"] - a_e_dv
        dzeta = sysm["inv_d"] * (sysm["g_zeta"] - sysm["L"] * dtheta[:, d.ses_subj, :] - f_dv)
        return _State(dtheta, dzeta, dsev, dld)

    # ---- fit and draw

    def _inner(self, st: _State) -> tuple[_State, np.ndarray]:
        """Newton over theta and zeta with the new judges held fixed (a concave problem).

        Step halving per draw and subject; returns the mode and a converged flag per draw.
        """
        d = self.d
        S, P = self.S, d.n_subjects
        obj, _ = self.objective(st)
        stale = False
        done = np.zeros(S, dtype=bool)
        for _ in range(MAX_NEWTON):
            sysm = self.system(st, with_v=False)
            dx = self.step(st, sysm, self.reduce(sysm))
            size = np.maximum(
                np.abs(dx.theta).max((1, 2), initial=0.0), np.abs(dx.zeta).max((1, 2), initial=0.0)
            )
            done = size < NEWTON_TOL
            if done.all():
                break
            # Newton decrement (twice the predicted gain): once it is tiny everywhere
            # the full step is taken without checking the objective
            dec = (dx.theta * sysm["g_theta"]).sum(-1).max() + (dx.zeta * sysm["g_zeta"]).max()
            if dec < SKIP_SEARCH_DECREMENT:
                st = _State(st.theta + dx.theta, st.zeta + dx.zeta, st.sev, st.ld)
                stale = True
                continue
            if stale:
                obj, _ = self.objective(st)
                stale = False
            alpha = np.ones((S, P))
            pending = np.ones((S, P), dtype=bool)
            for _half in range(30):
                trial = _State(
                    st.theta + alpha[..., None] * dx.theta,
                    st.zeta + alpha[:, d.ses_subj, None] * dx.zeta,
                    st.sev,
                    st.ld,
                )
                obj_t, _ = self.objective(trial)
                ok = obj_t >= obj - 1e-9 * (1 + np.abs(obj))
                acc = pending & ok
                st.theta = np.where(acc[..., None], trial.theta, st.theta)
                st.zeta = np.where(acc[:, d.ses_subj, None], trial.zeta, st.zeta)
                obj = np.where(acc, obj_t, obj)
                pending &= ~ok
                if not pending.any():
                    break
                alpha = np.where(pending, alpha * 0.5, alpha)
        return st, done

    def marginal(self, st: _State) -> np.ndarray:
        """Laplace approximation of the new judges' log marginal posterior, per draw.

        ``log p(y, u, v) - log|H_uu| / 2`` at the subjects' conditional mode ``u``
        (up to a constant), ``H_uu`` the subjects' precision: its determinant is
        the product of the session deviations' precisions and each subject's
        reduced theta block.
        """
        obj, vprior = self.objective(st)
        sysm = self.system(st, with_v=False)
        inv_d = sysm["inv_d"]
        log_d = np.where(inv_d > 0, -np.log(np.where(inv_d > 0, inv_d, 1.0)), 0.0).sum((1, 2))
        log_a = np.linalg.slogdet(sysm["A"])[1].sum(1)
        return obj.sum(1) + vprior - 0.5 * (log_d + log_a)

    def fit(self) -> tuple[_State, np.ndarray]:
        """The subjects' mode and the new judges' Laplace-marginal mode; converged flag per draw.

        Without new judges this is the concave subjects-only problem. With them,
        an outer Newton iteration on the new judges' parameters ``v`` maximises
        the Laplace approximation of their marginal posterior (the joint mode
        of subjects and judges is biased: shrinking every subject's alliance and
        inflating a judge's discrimination raises the joint density), each step
        re-solving the subjects' problem at the new ``v``, with step halving.
        """
        d = self.d
        S = self.S
        st = _State(
            np.zeros((S, d.n_subjects, d.n_scales)),
            np.zeros((S, d.n_sessions, d.n_scales)),
            np.zeros((S, d.n_new, d.n_scales)),
            np.zeros((S, d.n_new)),
        )
        st, done = self._inner(st)
        if not self.V:
            return st, done
        ell = self.marginal(st)
        outer_done = np.zeros(S, dtype=bool)
        for _ in range(MAX_OUTER):
            sysm = self.system(st, with_v=True)
            red = self.reduce(sysm)
            dv = np.linalg.solve(red["Sv"], red["gv"][..., None])[..., 0]
            big = np.abs(dv).max(1)
            dv = dv * np.minimum(1.0, MAX_JUDGE_STEP / np.maximum(big, 1e-300))[:, None]
            outer_done = np.abs(dv).max(1) < OUTER_TOL
            if outer_done.all():
                break
            alpha = np.where(outer_done, 0.0, 1.0)
            # small steps skip the check of the Laplace marginal: its gradient here
            # keeps only the leading (volume) term of d log|H_uu| / dv, so the two
            # disagree in the third decimal near the mode; the check guards large steps
            take = ~outer_done & (np.abs(dv).max(1) <= SMALL_JUDGE_STEP)
            pending = ~outer_done & ~take
            if pending.any() and np.isnan(ell).any():
                ell = self.marginal(st)
            for _half in range(20):
                step = alpha[:, None] * dv
                dsev, dld, a_e_dv, f_dv = self._couplings(sysm, red, step)
                # warm start: the subjects' mode moves linearly with v
                moving = (pending | take)[:, None, None]
                a_e_dv = np.where(moving, a_e_dv, 0.0)
                f_dv = np.where(moving, f_dv, 0.0)
                dtheta = -a_e_dv
                dzeta = -sysm["inv_d"] * (sysm["L"] * dtheta[:, d.ses_subj, :] + f_dv)
                trial = _State(st.theta + dtheta, st.zeta + dzeta, st.sev + dsev, st.ld + dld)
                trial, done_t = self._inner(trial)
                ell_t = self.marginal(trial) if pending.any() else np.full(S, np.nan)
                ok = take | (pending & (ell_t >= ell - 1e-9 * (1 + np.abs(ell))))
                st = _State(
                    np.where(ok[:, None, None], trial.theta, st.theta),
                    np.where(ok[:, None, None], trial.zeta, st.zeta),
                    np.where(ok[:, None, None], trial.sev, st.sev),
                    np.where(ok[:, None], trial.ld, st.ld),
                )
                ell = np.where(ok, ell_t, ell)
                done = np.where(ok, done_t, done)
                pending &= ~ok
                take[:] = False
                if not pending.any():
                    break
                alpha = np.where(pending, alpha * 0.5, alpha)
            else:
                outer_done |= pending  # no increase found: at the mode to within rounding
        return st, done & outer_done

    def draw(self, mode: _State, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """One Laplace draw per calibration draw, and each subject's log importance weight."""
        d = self.d
        S, P, N, K = self.S, d.n_subjects, d.n_sessions, d.n_scales
        sysm = self.system(mode)
        red = self.reduce(sysm)
        if self.V:
            chol_v = np.linalg.cholesky(red["Sv"])
            zv = rng.standard_normal((S, self.V))
            dv = np.linalg.solve(np.swapaxes(chol_v, 1, 2), zv[..., None])[..., 0]
            dsev, dld, a_e_dv, f_dv = self._couplings(sysm, red, dv)
        else:
            dsev, dld = np.zeros_like(mode.sev), np.zeros_like(mode.ld)
            a_e_dv = f_dv = 0.0
        chol_a = np.linalg.cholesky(sysm["A"])
        zt = rng.standard_normal((S, P, K))
        noise_t = np.linalg.solve(np.swapaxes(chol_a, 2, 3), zt[..., None])[..., 0]
        zz = rng.standard_normal((S, N, K))
        inv_d, L = sysm["inv_d"], sysm["L"]
        # conditional mean given the new judges, then the draw
        mean_theta = mode.theta - a_e_dv
        mean_zeta = mode.zeta - inv_d * (L * (mean_theta - mode.theta)[:, d.ses_subj, :] + f_dv)
        theta = mean_theta + noise_t
        zeta = mean_zeta - inv_d * L * noise_t[:, d.ses_subj, :] + np.sqrt(inv_d) * zz
        sev, ld = mode.sev + dsev, mode.ld + dld
        drawn = _State(theta, zeta, sev, ld)
        obj_x, _ = self.objective(drawn)
        obj_m, _ = self.objective(_State(mean_theta, mean_zeta, sev, ld))
        zsq = (zt**2).sum(-1) + _ssum(np.where(inv_d > 0, zz**2, 0.0).sum(-1), d.m_ses_subj)
        log_w = obj_x - obj_m + 0.5 * zsq
        eta = theta[:, d.ses_subj, :] + zeta + self.p.trend[:, None, :] * d.ses_time[None, :, None]
        out = {"theta": theta, "eta": eta, "zeta": zeta, "log_w": log_w, "sev": sev, "ld": ld}
        if self.V:
            out.update(
                v_mode=self._pack(mode.sev, mode.ld), v_prec=red["Sv"], v_prior=self.prior_prec()
            )
        return out

    def prior_prec(self) -> np.ndarray:
        """The new judges' prior precisions, (S, V) in the packed order."""
        p, jn, k = self.p, self.d.n_new, self.d.n_scales
        sev = np.broadcast_to((1.0 / p.sd_sev**2)[:, None, None], (self.S, jn, k))
        ld = np.broadcast_to((1.0 / p.sd_ld**2)[:, None], (self.S, jn))
        return self._pack(sev, ld)


def _diag(x: np.ndarray) -> np.ndarray:
    """(..., K) -> (..., K, K) diagonal matrices."""
    return x[..., :, None] * np.eye(x.shape[-1])


# --------------------------------------------------------------------------- all draws, weights


def laplace_draws(
    design: _Design, cal: Calibration, seed: int = 0, progress: Progress | None = None
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Steps 1 and 2 of the method for every calibration draw, in chunks of draws.

    ``progress`` counts the calibration draws done (one advance per chunk).

    Returns
    -------
    draws, converged : :meth:`_Engine.draw`'s arrays concatenated over the
    chunks (draw first), and the Newton converged flag per calibration draw.
    """
    n_total = cal.n_draws
    n_r = max(len(design.r_y), 1)
    chunk = int(max(1, min(n_total, CHUNK_ELEMENTS // n_r)))
    rng = np.random.default_rng(seed)
    parts: list[dict[str, np.ndarray]] = []
    newton_ok = []
    for start in range(0, n_total, chunk):
        sel = slice(start, min(start + chunk, n_total))
        eng = _Engine(design, _params(cal, sel))
        mode, done = eng.fit()
        parts.append(eng.draw(mode, rng))
        newton_ok.append(done)
        if progress is not None:
            progress.advance(sel.stop - sel.start)
    cat = {k: np.concatenate([p[k] for p in parts], axis=0) for k in parts[0]}
    return cat, np.concatenate(newton_ok)


def psis_weights(
    log_w: np.ndarray, importance: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Step 3: each subject's log importance weights, Pareto-smoothed over the draws.

    Parameters
    ----------
    log_w : (draws, subjects) raw log weights (:meth:`_Engine.draw`).
    importance : False gives equal weights (the Gaussian draws as they are).

    Returns
    -------
    smoothed, khat, rel_ess : (subjects, draws) normalised log weights, the
    Pareto k-hat per subject (0 where the weights do not vary) and the
    relative effective sample size per subject.
    """
    from arviz_stats.base import array_stats

    n_total, n_p = log_w.shape
    khat = np.zeros(n_p)
    smoothed = np.full((n_p, n_total), -np.log(n_total))
    if importance:
        finite = np.isfinite(log_w)
        floor = np.where(finite, log_w, np.inf).min(axis=0) - 50.0
        log_w = np.where(finite, log_w, floor)
        vary = np.ptp(log_w, axis=0) > 1e-10
        if vary.any():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                lw, k = array_stats.psislw(-log_w[:, vary].T, axis=-1)
            smoothed[vary] = lw
            khat[vary] = k
    rel_ess = 1.0 / np.exp(2.0 * smoothed).sum(axis=1) / n_total
    return smoothed, khat, rel_ess
