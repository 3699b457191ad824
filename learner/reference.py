"""When to reset the KL reference policy (ProRL), as pure logic.

Over thousands of steps a fixed reference pulls the policy back towards where it started and the KL term comes
to dominate the loss; ProRL (Liu et al. 2025) periodically replaces the reference by the current policy. With LoRA
the reference is an adapter snapshot on the same base model (the learner holds it, see `Learner.reset_reference`);
this module only decides *when*:

- schedule: every `reset_every` steps;
- kl: the step's mean KL to the reference rose above `reset_kl_above`;
- plateau: held-out pass@1 has not beaten its best for `reset_plateau_evals` evaluations since the last reset.

A reset is decided after a step's update, so the reference becomes the adapter that step produced.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from shared.config import ReferenceConfig

ResetCause = Literal["schedule", "kl", "plateau"]


def stale_evals(pass_at_1: Sequence[float]) -> int:
    """Evaluations since the first best one: 0 when the latest is a new best; a tie is not an improvement."""
    if not pass_at_1:
        return 0
    best = max(pass_at_1)
    return len(pass_at_1) - 1 - list(pass_at_1).index(best)


def reset_cause(step: int, kl: float | None, stale: int, config: ReferenceConfig) -> ResetCause | None:
    """The trigger that fires after `step` (first of schedule, kl, plateau), or None. `kl` is None when the step
    measured none (a batch with nothing to train on)."""
    if config.reset_every and step % config.reset_every == 0:
        return "schedule"
    if config.reset_kl_above is not None and kl is not None and math.isfinite(kl) and kl > config.reset_kl_above:
        return "kl"
    if config.reset_plateau_evals and stale >= config.reset_plateau_evals:
        return "plateau"
    return None


@dataclass
class ResetTriggers:
    """The driver's view of the triggers: the held-out pass@1 seen since the last reset."""

    config: ReferenceConfig
    pass_at_1: list[float] = field(default_factory=list)

    def observe_eval(self, pass_at_1: float) -> None:
        self.pass_at_1.append(pass_at_1)

    def after_step(self, step: int, kl: float | None) -> ResetCause | None:
        """Whether to reset the reference now; a reset makes the latest evaluation the new baseline to beat."""
        cause = reset_cause(step, kl, stale_evals(self.pass_at_1), self.config)
        if cause is not None:
            self.pass_at_1 = self.pass_at_1[-1:]
        return cause
