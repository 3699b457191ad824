"""The reward layer: a TRL-shaped reward protocol, built-in rewards, a name registry and the reward worker.

A reward is `fn(prompts, completions, **columns) -> list[float | None]` (sync or async); config names one by a
built-in name (`BUILTIN_REWARDS`) or a `module.path:function` path. `RewardWorker` is the reward actor's body;
rewards that need other actors (rollout workers, a reward model) get them through a `RewardContext`.
"""

from learner.rewards.builtin import format_reward, overlong_reward, repetition_reward
from learner.rewards.context import RewardContext, RewardContextError
from learner.rewards.protocol import RewardFn, RewardValues
from learner.rewards.registry import BUILTIN_COLUMNS, BUILTIN_REWARDS, UnknownRewardError, resolve_reward
from learner.rewards.worker import FAILURE_POLICIES, RewardFailure, RewardWorker, score_rows

__all__ = [
    "BUILTIN_COLUMNS",
    "BUILTIN_REWARDS",
    "FAILURE_POLICIES",
    "RewardContext",
    "RewardContextError",
    "RewardFailure",
    "RewardFn",
    "RewardValues",
    "RewardWorker",
    "UnknownRewardError",
    "format_reward",
    "overlong_reward",
    "repetition_reward",
    "resolve_reward",
    "score_rows",
]
