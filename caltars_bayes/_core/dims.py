"""The fixed dimension names and reporting constants, used in every DataTree, table and plot.

``subject``, ``session`` (one entry per observed subject x session), ``judge``,
``item``, ``scale`` (``scale2`` for the second axis of a correlation matrix),
``cutpoint`` and ``covariate`` name the design; ``chain`` and ``draw`` index
posterior draws.
"""

from __future__ import annotations

#: the dims that index posterior draws; reduce over these to summarise
SAMPLE_DIMS: tuple[str, str] = ("chain", "draw")

#: the design's dims
SUBJECT, SESSION, JUDGE, ITEM, SCALE, COVARIATE, CUTPOINT = (
    "subject",
    "session",
    "judge",
    "item",
    "scale",
    "covariate",
    "cutpoint",
)

#: probability of every reported credible interval (highest-density)
CI_PROB = 0.95
