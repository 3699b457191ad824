"""How a run that cannot go on tells the user so (the learner-death message), and the restart counts a checkpoint
keeps; without Ray."""

from __future__ import annotations

from pathlib import Path

from launch.checkpoint import DriverState, LearnerDied, RunStopped, learner_died_message, next_nonfinite_streak


def test_learner_death_names_the_last_checkpoint_and_the_resume_command():
    cause = RuntimeError("The actor died unexpectedly before finishing this task.\n\tclass_name: Learner")
    message = learner_died_message(Path("/runs/a"), 40, cause)
    assert "learner actor died" in message and "died unexpectedly" in message and "class_name" not in message
    assert "no checkpoint was written now" in message
    assert "the last checkpoint is of step 40; continue with: prolora train --resume /runs/a" in message
    assert issubclass(LearnerDied, RunStopped) and LearnerDied.exit_code != 0


def test_learner_death_before_any_checkpoint_says_to_start_again():
    message = learner_died_message(Path("/runs/a"), None, RuntimeError())
    assert "no checkpoint was written yet" in message and "--resume" not in message


def test_restart_counts_survive_a_checkpoint_and_old_checkpoints_still_load():
    state = DriverState(step=7, worker_restarts=1, reward_restarts=2)
    assert DriverState.from_json(state.to_json()).reward_restarts == 2
    old = {k: v for k, v in state.to_json().items() if k != "reward_restarts"}  # written before reward failover
    assert DriverState.from_json(old).reward_restarts == 0


def test_nonfinite_streak_counts_only_steps_whose_every_update_was_non_finite():
    streak = 0
    for optimizer_steps, skipped in [(0, 1), (0, 2), (0, 0), (0, 1)]:  # an empty batch (0, 0) neither counts nor resets
        streak = next_nonfinite_streak(streak, optimizer_steps, skipped)
    assert streak == 3
    assert next_nonfinite_streak(streak, 1, 1) == 0  # one update made resets it
