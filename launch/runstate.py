"""What the driver carries from step to step, how it is checkpointed, and how a run stops on a signal.

`DriverState` is the driver's half of a checkpoint (the learner's half is `Learner.state()`); it is plain JSON.
`identity(config)` lists the config fields a checkpoint depends on: resuming with any of them changed is refused.
"""

from __future__ import annotations

import signal
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from shared.config import Config


class RunStopped(RuntimeError):
    """The run stopped before its last step, after writing a checkpoint; the message says how to resume."""

    exit_code = 1


class Interrupted(RunStopped):
    exit_code = 130


class LearnerDied(RunStopped):
    """The learner actor died. Its state (adapter, optimizer) died with it, so no checkpoint is written: the run
    continues from the last one."""


def learner_died_message(run_dir: Path, last_checkpoint: int | None, cause: Exception) -> str:
    """What the user reads when the learner died: what happened, where the run can continue, and how."""
    if last_checkpoint is None:
        where = "no checkpoint was written yet, so the run cannot be resumed; start it again"
    else:
        where = f"the last checkpoint is of step {last_checkpoint}; continue with: prolora train --resume {run_dir}"
    return (
        f"the learner actor died ({type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}); "
        f"its state is lost, so no checkpoint was written now. {where}"
    )


def next_nonfinite_streak(streak: int, optimizer_steps: int, skipped_nonfinite: int) -> int:
    """`DriverState.nonfinite_streak` after a step: reset by any update made, one longer when every update was
    skipped as non-finite, unchanged by a step that had nothing to train on."""
    if optimizer_steps:
        return 0
    return streak + 1 if skipped_nonfinite else streak


@dataclass
class DriverState:
    step: int = 0
    """Last completed step."""
    first_eval: dict[str, Any] | None = None
    last_eval: dict[str, Any] | None = None
    nonfinite_streak: int = 0
    """Consecutive steps whose every optimiser step was skipped for a non-finite loss or gradient."""
    worker_restarts: int = 0
    reward_restarts: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    """State owned by other parts of the driver: the curriculum (data order position, retired prompts, per-prompt
    pass rates, reference-reset history), the reward set in force."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DriverState:
        return cls(**data)


def identity(config: Config) -> dict[str, Any]:
    """Config fields a checkpoint depends on (model, LoRA shape, task)."""
    return {
        "model.path": config.model.path,
        "model.dtype": config.model.dtype,
        "lora.rank": config.lora.rank,
        "lora.alpha": config.lora.alpha,
        "lora.target_modules": config.lora.target_modules,
        "task.name": config.task.name,
        "task.train_size": config.task.train_size,
        **({"task.train_file": config.task.train_file} if config.task.train_file else {}),
    }


class StopSignals:
    """While active, SIGINT and SIGTERM only set `requested`: the current step finishes, then the driver writes a
    checkpoint and stops. A second signal restores the default behaviour (so a stuck run can still be killed)."""

    def __init__(self) -> None:
        self.requested: str | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, _frame) -> None:
        self.requested = signal.Signals(signum).name
        print(f"\n[prolora] {self.requested}: finishing the current step, then writing a checkpoint", flush=True)
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def __enter__(self) -> StopSignals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
