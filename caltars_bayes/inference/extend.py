"""More draws where a fit falls short of the convergence verdict on precision alone.

A fit whose only misses are R-hat and ESS (no divergent transitions, no draw
at the maximum tree depth, E-BFMI above its threshold in every chain) is not
wrong, just short of draws: :func:`caltars_bayes.inference.fit.fit_model`
then lets its chains run on, up to a stated cap (``max_draws``, by default
:data:`EXTEND_FACTOR` times the draws asked for), and stops at the first
checkpoint where the verdict is met. The thresholds are those of
:mod:`caltars_bayes.inference.diagnostics`, unchanged.

Checkpoints: ESS grows about in proportion to the draws, so from ``n`` draws
per chain with smallest ESS ``e`` the next checkpoint is
``n x 400 / e x 1.1`` rounded up to a quarter of the draws asked for (at
least a quarter more, at most a half more; an R-hat miss alone adds a quarter). A fit whose
prediction exceeds the cap by more than :data:`GIVE_UP_FACTOR` is not extended
at all (e.g. 60 draws per chain with ESS 40 would need 600 against a cap of
240): the cap would not reach the verdict and the time would be spent for
nothing. Each checkpoint looks at the first ``n`` draws of every chain, which
are those a fit of ``n`` draws with the same seed gives, so the seed still
determines the result.

The fit's record holds what happened (``FitRecord.extension``) and its
diagnostics one line for every banner, e.g. "extended to 3,000 draws per
chain (1,000 asked for) to reach ESS 400".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from caltars_bayes.inference.diagnostics import EBFMI_MIN, ESS_MIN, RHAT_MAX, Diagnostics

#: default cap: a fit may extend to this many times the draws per chain asked for
EXTEND_FACTOR = 4
#: by default only fits asking for at least this many draws in all (chains x
#: draws; 4 x 1000 does) are extended: fewer than 4 x 400 is a quick look (tests,
#: SBC and planning replications at 2 x 500) whose cost the caller chose
MIN_TOTAL_DRAWS = 4 * int(ESS_MIN)
#: a fit is not extended when the draws it is predicted to need exceed the cap
#: by more than this factor
GIVE_UP_FACTOR = 1.5
#: margin over the predicted draws at each checkpoint (ESS estimates are noisy)
MARGIN = 1.1
#: at most this many quarters of the draws asked for between checkpoints: tail
#: ESS from few draws is noisy and often low, and a prediction from it
#: overshoots (a CALTARS pilot predicted from 1000 draws went to 2500 and ended
#: with tail ESS 1094); looking again costs only the check
MAX_STEPS = 2


def short_of_draws_only(d: Diagnostics) -> bool:
    """True when a fit misses the verdict on R-hat or ESS alone.

    Divergences, tree-depth hits or a low E-BFMI say the sampler did not
    explore the posterior faithfully; more draws do not mend that. A fit with
    one chain or under four draws cannot be checked at all.
    """
    if d.converged or d.approximate or d.n_chains < 2 or d.n_draws < 4:
        return False
    if d.divergences or d.treedepth_hits:
        return False
    if any(not e >= EBFMI_MIN for e in d.ebfmi):
        return False
    return d.max_rhat > RHAT_MAX or d.min_ess_bulk < ESS_MIN or d.min_ess_tail < ESS_MIN


def default_max_draws(draws: int, chains: int) -> int:
    """The cap when the caller gives none: :data:`EXTEND_FACTOR` x ``draws``
    for fits of at least :data:`MIN_TOTAL_DRAWS` draws in all, else ``draws``
    (no extension)."""
    return EXTEND_FACTOR * draws if draws * chains >= MIN_TOTAL_DRAWS else draws


def _fmt(n: int) -> str:
    return f"{n:,}"


@dataclass
class Extension:
    """The extension rule for one fit, and what it did.

    Attributes
    ----------
    requested : draws per chain asked for.
    cap : the most draws per chain the fit may take (``max_draws``).
    checks : one entry per checkpoint: ``draws``, ``max_rhat``,
        ``min_ess_bulk``, ``min_ess_tail``, ``divergences``.
    """

    requested: int
    cap: int
    checks: list[dict[str, Any]] = field(default_factory=list)

    @property
    def step(self) -> int:
        """Checkpoints are multiples of a quarter of the draws asked for."""
        return max(self.requested // 4, 1)

    def next_draws(self, d: Diagnostics) -> int | None:
        """The next checkpoint after a verdict ``d`` on ``d.n_draws`` draws, or
        None to stop (converged, missed for another reason, at the cap, or the
        cap predicted not to be enough)."""
        n = d.n_draws
        self.checks.append(
            {
                "draws": n,
                "max_rhat": d.max_rhat,
                "min_ess_bulk": d.min_ess_bulk,
                "min_ess_tail": d.min_ess_tail,
                "divergences": d.divergences,
            }
        )
        if n >= self.cap or not short_of_draws_only(d):
            return None
        worst = min(d.min_ess_bulk, d.min_ess_tail)
        ratio = ESS_MIN / worst if worst > 0 else math.inf
        need = n * max(ratio, 1.0)
        if need > GIVE_UP_FACTOR * self.cap:
            return None
        target = min(max(need * MARGIN, n + self.step), n + MAX_STEPS * self.step)
        return int(min(math.ceil(target / self.step) * self.step, self.cap))

    @property
    def extended(self) -> bool:
        return bool(self.checks) and self.checks[-1]["draws"] > self.requested

    def message(self, d: Diagnostics) -> str:
        """One line on what the extension did ('' when the fit was not extended)."""
        if not self.extended:
            return ""
        n = d.n_draws
        asked = f"{_fmt(n)} draws per chain ({_fmt(self.requested)} asked for)"
        first = self.checks[0]
        aims = []
        if first["max_rhat"] > RHAT_MAX:
            aims.append(f"R-hat <= {RHAT_MAX}")
        if min(first["min_ess_bulk"], first["min_ess_tail"]) < ESS_MIN:
            aims.append(f"ESS {ESS_MIN:.0f}")
        aim = " and ".join(aims)
        if d.converged:
            return f"extended to {asked} to reach {aim}"
        if n >= self.cap:
            return f"extended to {asked}, the cap, without reaching {aim}"
        return f"extended to {asked}, then stopped: {'; '.join(d.problems)}"

    def to_record(self, d: Diagnostics) -> dict[str, Any]:
        """What :attr:`FitRecord.extension` holds."""
        return {
            "requested_draws": self.requested,
            "max_draws": self.cap,
            "draws": d.n_draws,
            "message": self.message(d),
            "checks": list(self.checks),
        }
