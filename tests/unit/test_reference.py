"""The ProRL reset triggers (learner/reference.py) against hand-worked histories."""

from __future__ import annotations

import math

import pytest

from learner.reference import ResetTriggers, reset_cause, stale_evals
from shared.config import ReferenceConfig


@pytest.mark.parametrize(
    ("history", "want"),
    [
        ([], 0),
        ([0.3], 0),
        ([0.3, 0.4], 0),  # the latest is a new best
        ([0.3, 0.4, 0.2], 1),
        ([0.3, 0.3, 0.3], 2),  # a tie is not an improvement
        ([0.5, 0.2, 0.5, 0.1], 3),  # counted from the first time the best was reached
    ],
)
def test_stale_evals(history, want):
    assert stale_evals(history) == want


def test_reset_cause_each_trigger_and_priority():
    off = ReferenceConfig()
    assert reset_cause(100, kl=9.0, stale=9, config=off) is None

    schedule = ReferenceConfig(reset_every=50)
    assert [reset_cause(s, 0.0, 0, schedule) for s in (49, 50, 51, 100)] == [None, "schedule", None, "schedule"]

    kl = ReferenceConfig(reset_kl_above=0.1)
    assert reset_cause(3, 0.1, 0, kl) is None  # strictly above
    assert reset_cause(3, 0.11, 0, kl) == "kl"
    assert reset_cause(3, math.nan, 0, kl) is None  # a step with no finite KL never triggers

    plateau = ReferenceConfig(reset_plateau_evals=2)
    assert [reset_cause(3, 0.0, s, plateau) for s in (0, 1, 2, 5)] == [None, None, "plateau", "plateau"]

    every = ReferenceConfig(reset_every=10, reset_kl_above=0.1, reset_plateau_evals=1)
    assert reset_cause(10, 1.0, 3, every) == "schedule"
    assert reset_cause(11, 1.0, 3, every) == "kl"
    assert reset_cause(11, 0.0, 3, every) == "plateau"


def test_triggers_reset_the_plateau_baseline():
    triggers = ResetTriggers(ReferenceConfig(reset_plateau_evals=2))
    for p in (0.2, 0.5, 0.4):
        triggers.observe_eval(p)
    assert triggers.after_step(1, 0.0) is None  # one eval since the best
    triggers.observe_eval(0.45)
    assert triggers.after_step(2, 0.0) == "plateau"
    # The latest eval (0.45) is the new baseline; the old best 0.5 no longer counts.
    assert triggers.pass_at_1 == [0.45]
    assert triggers.after_step(3, 0.0) is None
    triggers.observe_eval(0.46)
    triggers.observe_eval(0.46)
    assert triggers.after_step(4, 0.0) is None
    triggers.observe_eval(0.40)
    assert triggers.after_step(5, 0.0) == "plateau"


def test_a_step_without_a_kl_fires_no_kl_reset():
    """A batch with nothing to train on measures no KL (None): the kl trigger stays quiet, the schedule does not."""
    assert reset_cause(3, None, 0, ReferenceConfig(reset_kl_above=0.1)) is None
    assert reset_cause(4, None, 0, ReferenceConfig(reset_every=2, reset_kl_above=0.1)) == "schedule"
