"""Reward names: the built-ins by name, and user code by `module.path:function`.

A user reward is any callable that follows the protocol in `protocol.py` (TRL reward functions do), importable
from the Python path of the process that scores (the reward actor's, under Ray).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from types import MappingProxyType

from learner.rewards import builtin
from learner.rewards.bertscore import bertscore
from learner.rewards.cycle import cycle_consistency
from learner.rewards.protocol import AnyRewardFn
from learner.rewards.reward_model import reward_model
from learner.rewards.rouge import rouge1, rouge2, rougeL
from shared.config import RewardSpec
from shared.errors import UserError

BUILTIN_REWARDS: Mapping[str, AnyRewardFn] = MappingProxyType(
    {
        "exact_match": builtin.exact_match,
        "math": builtin.math_answer,
        "format": builtin.think_answer_format,
        "chrf": builtin.chrf,
        "bleu": builtin.bleu,
        "ter": builtin.ter,
        "overlong": builtin.overlong,
        "repetition": builtin.repetition,
        "cycle_consistency": cycle_consistency,
        "reward_model": reward_model,
        "rouge1": rouge1,
        "rouge2": rouge2,
        "rougeL": rougeL,
        "bertscore": bertscore,
    }
)
"""Built-in rewards by the name a config uses."""

BUILTIN_COLUMNS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "exact_match": ("answer",),
        "math": ("answer",),
        "format": (),
        "chrf": ("reference",),
        "bleu": ("reference",),
        "ter": ("reference",),
        "overlong": ("completion_token_count", "max_tokens"),
        "repetition": (),
        "cycle_consistency": ("source",),
        "reward_model": (),
        "rouge1": ("reference",),
        "rouge2": ("reference",),
        "rougeL": ("reference",),
        "bertscore": ("reference",),
    }
)
"""Data set columns each built-in reads besides prompts and completions (a None value in one means "does not
apply"). In a run, `completion_token_count` and `max_tokens` are filled in by the driver."""


class UnknownRewardError(UserError, ValueError):
    """A reward name that is neither a built-in nor an importable `module:function`."""


class RewardSetError(UserError, ValueError):
    """A reward set (from the config or rewards.yaml) that this run cannot use."""


def check_reward_names(specs: Sequence[RewardSpec]) -> None:
    """A reward set names at least one reward, each once (its name is its metric and rollout column)."""
    names = [spec.name for spec in specs]
    if not names:
        raise RewardSetError("the reward set is empty; rewards.functions needs at least one reward")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise RewardSetError(f"each reward may appear once in rewards.functions; repeated: {', '.join(repeated)}")


def resolve_reward(name: str) -> AnyRewardFn:
    """Return the reward function for a built-in name or a `module.path:function` path."""
    if name in BUILTIN_REWARDS:
        return BUILTIN_REWARDS[name]
    if ":" not in name:
        raise UnknownRewardError(
            f"unknown reward {name!r}; built-ins are: {', '.join(BUILTIN_REWARDS)}; "
            "user code is named as 'module.path:function'"
        )
    return _import_reward(name)


def resolve_spec(spec: RewardSpec) -> AnyRewardFn:
    """The reward a spec names: `resolve_reward(spec.name)`, or, with `spec.kwargs`, what that factory returns
    when called with them (e.g. TRL's `get_soft_overlong_punishment(max_completion_len, soft_punish_cache)`)."""
    target = resolve_reward(spec.name)
    if spec.kwargs is None:
        return target
    try:
        reward = target(**spec.kwargs)
    except TypeError as err:
        raise UnknownRewardError(f"reward {spec.name!r} called with kwargs {spec.kwargs}: {err}") from err
    if not callable(reward):
        raise UnknownRewardError(
            f"reward {spec.name!r} with kwargs returned a {type(reward).__name__}, not a reward function; kwargs are "
            "for factories that build one"
        )
    return reward


def _import_reward(path: str) -> AnyRewardFn:

    module_name, _, attr_path = path.partition(":")
    if not module_name or not attr_path:
        raise UnknownRewardError(f"reward path {path!r} must look like 'module.path:function'")
    try:
        target = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        # Only the named module being absent is a naming problem; a missing import inside it is the user's bug
        # and propagates as it is.
        if err.name is None or not (module_name == err.name or module_name.startswith(err.name + ".")):
            raise
        raise UnknownRewardError(
            f"reward {path!r}: module {module_name!r} not found (no module named {err.name!r}); "
            "is it on the Python path (PYTHONPATH, or the Ray runtime_env) of the reward actor?"
        ) from err
    owner = module_name
    for attr in attr_path.split("."):
        if not hasattr(target, attr):
            raise UnknownRewardError(f"reward {path!r}: {owner!r} has no attribute {attr!r}")
        target = getattr(target, attr)
        owner = f"{owner}.{attr}"
    if not callable(target):
        raise UnknownRewardError(f"reward {path!r} is a {type(target).__name__}, not a callable")
    return target
