"""`cycle_consistency`: a reference-free translation reward (the DuPO idea).

The model translates its own completion back into the source language through the rollout workers (greedy, the
newest adapter, the task's back-translation prompt), and the back-translation is scored with chrF++ against the
original source (`source` column), scaled to 0..1. A translation that keeps the meaning can be translated back;
one that drops or garbles words cannot, whatever a reference says.
"""

from __future__ import annotations

from typing import Any

from sacrebleu.metrics import CHRF

from learner.rewards.builtin import require_column
from learner.rewards.context import CONTEXT_HINTS, RewardContext, RewardContextError, generate_greedy
from learner.rewards.protocol import RewardValues
from shared.chat import message_text


def back_translate(context: RewardContext, completions: list[str]) -> list[str]:
    """The rollout workers' greedy back-translations of `completions` (stripped)."""
    to_prompt = context.back_translation_prompt
    if to_prompt is None:  # check_context refuses such a reward set when it is installed
        raise RewardContextError(f"cycle_consistency: {CONTEXT_HINTS['back_translation_prompt']}")
    prompts = [to_prompt(c) for c in completions]
    return [text.strip() for text in generate_greedy(context, prompts)]


def cycle_consistency(
    prompts: list[str], completions: list[str], *, reward_context: RewardContext, **columns: Any
) -> RewardValues:
    """chrF++ (0..1) of the model's back-translation of each completion against its `source`; None where the
    source is None."""
    sources = require_column(columns, "source", "cycle_consistency")
    todo = [i for i, source in enumerate(sources) if source is not None]
    back = back_translate(reward_context, [message_text(completions[i]) for i in todo])
    metric = CHRF(word_order=2)
    values: RewardValues = [None] * len(completions)
    for i, text in zip(todo, back, strict=True):
        values[i] = metric.sentence_score(text, [str(sources[i]).strip()]).score / 100
    return values


cycle_consistency.context_requires = ("rollout_workers", "back_translation_prompt")  # type: ignore[attr-defined]
