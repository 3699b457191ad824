"""The one protocol every reward function follows.

It is the shape of TRL's GRPOTrainer reward functions, so a TRL reward runs here unchanged:

    def my_reward(prompts: list[str], completions: list[str], **columns) -> list[float | None]: ...

`columns` holds the data set's other columns, one list per column aligned with `completions` (for example
`answer=[...]` or `reference=[...]`), and the keyword arguments TRL passes: `completion_ids` (generated token ids),
`trainer_state` (a `RewardState`, with `.global_step` like TRL's TrainerState), `log_metric(name, value)` (a scalar
in metrics.jsonl as `reward_log/<name>`) and `log_extra(column, values)` (one value per completion, in the rollout
files). A function must accept `**kwargs` because the arguments it does not use are passed too. For conversational
data (prompts given as chat messages) `prompts` holds the message lists and each completion is
`[{"role": "assistant", "content": text}]`, as in TRL; for string prompts both are strings. It returns one value
per completion: a number, or None where the reward does not apply to that completion (None is left out of the
weighted total). It may be a plain function or an `async def`.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

if TYPE_CHECKING:
    from learner.rewards.context import RewardContext

RewardValues: TypeAlias = list[float | None]
"""One value per completion; None where the reward does not apply."""


class RewardFn(Protocol):
    """A reward function: scores a batch of completions, one value per completion (sync or async)."""

    def __call__(
        self, prompts: list[str], completions: list[str], **columns: Any
    ) -> RewardValues | Awaitable[RewardValues]: ...


class ContextRewardFn(Protocol):
    """A reward that also needs the run's actors: it declares a keyword-only `reward_context` (see context.py)."""

    def __call__(
        self, prompts: list[str], completions: list[str], *, reward_context: RewardContext, **columns: Any
    ) -> RewardValues | Awaitable[RewardValues]: ...


AnyRewardFn: TypeAlias = RewardFn | ContextRewardFn
"""What a reward name resolves to: a plain reward or one that takes a `reward_context`."""


@dataclass(frozen=True)
class RewardState:
    """The `trainer_state` a reward gets: where training is, with the field names of TRL's TrainerState."""

    global_step: int
    """The GRPO step being scored (0 outside a training run)."""
    max_steps: int
