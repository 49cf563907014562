"""Scoring new trials with a calibration (a fitted trial frozen into posterior draws).

Modules
-------
calibration
    :class:`~caltars_bayes.scoring.calibration.Calibration`: ``calibrate``,
    ``load_calibration``, ``oracle_calibration``, the instrument check.
trial
    ``score_trial`` and ``score``: the entry points.
design
    The new ratings indexed against the calibration; calibration draws as arrays.
engine
    The method: per-draw Laplace fits of the new subjects (and new judges), and
    Pareto-smoothed importance weights.
drift
    Rater drift of the new judges.
result
    :class:`~caltars_bayes.scoring.result.ScoreResult` and the scores table.
"""
