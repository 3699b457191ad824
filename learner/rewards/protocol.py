"""The one protocol every reward function follows.

It is the shape of TRL's GRPOTrainer reward functions, so a TRL reward runs here unchanged:

    def my_reward(prompts: list[str], completions: list[str], **columns) -> list[float | None]: ...

`columns` holds the data set's other columns, one list per column aligned with `completions` (for example
`answer=[...]` or `reference=[...]`); a function must accept `**kwargs` because the columns it does not use
are passed too. It returns one value per completion: a number, or None where the reward does not apply to
that completion (None is left out of the weighted total). It may be a plain function or an `async def`.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, Protocol, TypeAlias

RewardValues: TypeAlias = list[float | None]
"""One value per completion; None where the reward does not apply."""


class RewardFn(Protocol):
    """A reward function: scores a batch of completions, one value per completion (sync or async)."""

    def __call__(
        self, prompts: list[str], completions: list[str], **columns: Any
    ) -> RewardValues | Awaitable[RewardValues]: ...
