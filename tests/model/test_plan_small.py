"""The plan of a pilot design against the founding design's (no sampling)."""

from __future__ import annotations

import pytest

from caltars_bayes.model.plan import (
    CENTRED_JUDGE_MIN_RATINGS,
    CENTRED_SESSION_MIN_RATINGS,
    CENTRED_SUBJECT_MIN_RATINGS,
    plan_model,
)
from caltars_bayes.model.simulate import simulate_trial


def _plan(inst, subjects, sessions, judges):
    trial = simulate_trial(inst, n_subjects=subjects, n_sessions=sessions, n_judges=judges, seed=4)
    return plan_model(trial.to_rating_data()).to_dict()


@pytest.mark.parametrize("subjects", [10, 15])
def test_a_pilot_is_non_centred_with_centred_judges(caltars, subjects):
    """10-15 subjects x 2 sessions x 2 judges on CALTARS: 2 x 2 x 6 = 24 ratings
    per subject and scale (< 40) and 2 x 6 = 12 per session (< 60): subject
    factors and session deviations non-centred, not the joint form (it
    diverged where an sd_alliance nears zero); each judge has 2 x subjects x 6
    ratings per scale (>= 60): centred; severity and discrimination kept."""
    assert 24 < CENTRED_SUBJECT_MIN_RATINGS and 12 < CENTRED_SESSION_MIN_RATINGS
    assert 2 * 10 * 6 >= CENTRED_JUDGE_MIN_RATINGS
    plan = _plan(caltars, subjects, 2, 2)
    assert not plan["centred_subjects"] and not plan["centred_sessions"]
    assert not plan["joint_subject_sessions"] and not plan["large_design"]
    assert plan["centred_judges"] and plan["judge_severity"] and plan["judge_discrimination"]
    assert plan["session_level"] and plan["notes"] == []


def test_the_founding_design_keeps_its_plan(caltars):
    """52 x 4 x 3: 72 ratings per subject and scale, centred subjects, non-centred
    sessions (18 per session), centred judges: the plan it had before issue 28."""
    plan = _plan(caltars, 52, 4, 3)
    before = {
        "session_level": True, "session_trend": False, "judge_severity": True,
        "judge_discrimination": True, "judge_subject_interaction": False, "cutpoints": "item",
        "centred_subjects": True, "centred_judges": True, "centred_sessions": False,
        "notes": [], "joint_subject_sessions": False, "large_design": False,
        "short_trajectory_cap": False, "likelihood_layout": "vector", "bifactor": False,
    }  # fmt: skip
    assert {k: v for k, v in plan.items() if k in before} == before
    assert plan != _plan(caltars, 12, 2, 2)  # the pilot differs: subjects non-centred
