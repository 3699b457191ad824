"""What a reward may get beyond its batch: handles of the run's other actors.

Most rewards only read their batch. A few need the running system: `cycle_consistency` asks the rollout workers
to translate completions back, `reward_model` and `bertscore` ask their model actors for scores, the ROUGE rewards
read their settings. Such a reward declares a keyword-only parameter named `reward_context` (TRL-style rewards
without it never see one), and lists the
`RewardContext` fields it cannot work without in a `context_requires` attribute, so a reward set that cannot run
is refused when it is installed rather than failing on every batch:

    def my_reward(prompts, completions, *, reward_context: RewardContext, **columns): ...
    my_reward.context_requires = ("rollout_workers",)

The driver builds the context once, after starting the actors, and hands it to every reward actor.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import ray

from shared.config import RougeConfig
from shared.errors import UserError
from shared.handles import Actor
from shared.records import Prompt, SamplingSpec

if TYPE_CHECKING:
    from learner.rewards.bertscore import BertScorer
    from learner.rewards.reward_model import RewardModelScorer

CONTEXT_PARAMETER = "reward_context"


@dataclass(frozen=True)
class RewardContext:
    """Actor handles and task functions for rewards that need them (every field may be absent)."""

    rollout_workers: tuple[Actor[Any], ...] = ()
    """Rollout worker actor handles (`RolloutWorker`, which learner/ does not import); rewards call their `generate`
    (it serves the newest adapter)."""
    back_translation_prompt: Callable[[str], str] | None = None
    """The task's reverse prompt: the prompt asking the model to translate a completion back to the source."""
    render: Callable[[str], Prompt] | None = None
    """How a prompt a reward builds (the back-translation prompt) reaches the engine: rendered like the run's own
    prompts, e.g. through the chat template as one user message when those are chat messages; None: as plain text."""
    max_new_tokens: int = 32
    """Completion budget for generations a reward asks for."""
    reward_model: Actor[RewardModelScorer] | None = None
    """Handle of the reward-model actor (`RewardModelScorer`), when the run configures one."""
    bertscore: Actor[BertScorer] | None = None
    """Handle of the BERTScore actor (`BertScorer`), when the run configures one."""
    rouge: RougeConfig | None = None
    """Settings of the ROUGE rewards (`rewards.rouge`); None: their defaults."""
    model_path: str | None = None
    """The run's model directory (the ROUGE `model` tokenizer's default)."""


class RewardContextError(UserError, ValueError):
    """A reward needs part of the RewardContext that this run does not have."""


def wants_context(fn: Callable[..., Any]) -> bool:
    """Whether `fn` declares the `reward_context` parameter."""
    try:
        return CONTEXT_PARAMETER in inspect.signature(fn).parameters
    except (TypeError, ValueError):  # some builtins and C callables have no signature
        return False


def provided_fields(context: RewardContext | None) -> frozenset[str]:
    """The fields `context` holds (set and not empty)."""
    return frozenset(f.name for f in fields(context) if getattr(context, f.name)) if context else frozenset()


def check_context(name: str, fn: Callable[..., Any], provided: Collection[str]) -> None:
    """Raise RewardContextError when `fn` needs context fields beyond the `provided` ones."""
    required: Sequence[str] = getattr(fn, "context_requires", ())
    missing = [field for field in required if field not in provided]
    if missing:
        raise RewardContextError(
            f"reward {name!r} needs {', '.join(missing)} in its RewardContext; "
            + "; ".join(CONTEXT_HINTS.get(field, field) for field in missing)
        )


CONTEXT_HINTS = {
    "rollout_workers": "it runs only inside a training run (or `prolora score` with a model)",
    "back_translation_prompt": "set task.back_translation_prompt (a template with {text}) or use task.name=translate",
    "reward_model": "set rewards.reward_model.path to a sequence-classification model directory",
    "bertscore": "set rewards.bertscore.model to a transformers encoder directory",
}
"""What a user does to provide each context field (used in error messages)."""


def generate_greedy(context: RewardContext, prompts: list[str]) -> list[str]:
    """Greedy completions of `prompts` (rendered by `context.render`) from the rollout workers' newest adapter,
    dealt round-robin."""
    workers = context.rollout_workers
    rendered: list[str | Prompt] = [context.render(p) for p in prompts] if context.render else list(prompts)
    sampling = SamplingSpec(n=1, max_tokens=context.max_new_tokens, temperature=0.0)
    shards = [rendered[i :: len(workers)] for i in range(len(workers))]
    refs = [(i, w.generate.remote(s, sampling)) for i, (w, s) in enumerate(zip(workers, shards, strict=True)) if s]
    texts: list[str] = [""] * len(prompts)
    for i, ref in refs:
        texts[i :: len(workers)] = [g.completions[0].text for g in ray.get(ref)]
    return texts
