"""The reward set tried on one row of the data before any actor starts.

A reward written for another data format (TRL's `accuracy_reward` indexes `completion[0]["content"]`, a plain-text
reward calls `.strip()` on a completion) fails on every batch. Found at step 1, that costs an engine start-up; with
`rewards.failure_policy=zero` it is never found at all. So the driver calls every reward once, in its own process, on
the first training row in exactly the form a run passes (shared/chat.py renders the prompt; the completion is the
row's `answer`, else a few words), and a reward that raises stops the run in seconds with its own error.

Rewards that need the run's actors (`reward_context`: cycle_consistency, reward_model) cannot run yet and are left
out; a reward's value is not judged, only that it takes the data's format and returns one number or None.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from learner.rewards.context import wants_context
from learner.rewards.pool import reward_batch
from learner.rewards.registry import resolve_spec
from learner.rewards.worker import RewardFailure, RewardWorker
from shared.chat import PromptRenderer
from shared.config import Config, RewardSpec
from shared.errors import UserError
from shared.records import Completion, Group

SAMPLE_COMPLETION = "The answer is 42."
"""The completion tried when the row has no string `answer`."""


class RewardFormatError(UserError):
    """A reward raised on the first row of the data in the form a run passes it."""


def check_rewards_on_row(specs: Sequence[RewardSpec], row: dict[str, Any], renderer: PromptRenderer, config: Config):
    """Call every reward that needs no actors once on `row`; raise RewardFormatError naming the reward, the
    format it was given and its error."""
    runnable = [spec for spec in specs if not wants_context(resolve_spec(spec))]
    if not runnable:
        return
    prompt = renderer.render(row["prompt"])
    text = row["answer"] if isinstance(row.get("answer"), str) else SAMPLE_COMPLETION
    ids = tuple(renderer.tokenizer(text, add_special_tokens=False)["input_ids"])
    completion = Completion(text, ids, (0.0,) * len(ids), "stop", 0)
    group = Group(prompt.text, prompt.token_ids, (completion,), prompt.messages)
    batch = reward_batch([row], [group], config.rollout.max_new_tokens, step=1, max_steps=config.run.steps)
    worker = RewardWorker(runnable, "fail_run", config.rewards.timeout_s)
    try:
        worker.score(batch)
    except RewardFailure as err:
        shape = (
            'prompts as lists of messages and completions as [{"role": "assistant", "content": text}]'
            if prompt.messages is not None
            else "prompts and completions as strings"
        )
        raise RewardFormatError(
            f"{err}\n(tried before the run started, on the first training row, with {shape}, as TRL passes them for "
            f"this data; completion tried: {text!r})"
        ) from err.__cause__
