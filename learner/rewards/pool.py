"""The reward actors of a run, driven from the driver: split a batch of completions across them, survive a dead one;
and, before any actor starts, the reward set tried on one row of the data (`check_rewards_on_row`).

A reward actor restarted by Ray comes back with the reward set of the run's start, not the one in force after a
reward swap (learner/rewards/swap.py), so the pool keeps the set in force, re-sends it to a restarted actor and
resubmits the lost shard (shared/restarts.py); `restarts` counts how often that happened.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import ray

from learner.rewards.context import wants_context
from learner.rewards.registry import resolve_spec
from learner.rewards.worker import RewardFailure, RewardSetMismatch, RewardWorker
from shared.chat import PromptRenderer
from shared.config import Config, RewardSpec
from shared.errors import UserError
from shared.handles import Actor
from shared.records import Completion, Group, RewardBatch, RewardScores
from shared.restarts import DEAD_ACTOR_ERRORS, call_when_back, check_restart_limit

log = logging.getLogger(__name__)


class RewardPool:
    """The reward actors of a run and the reward set in force on them (see the module docstring for restarts)."""

    def __init__(self, actors: list[Actor[RewardWorker]], specs: Sequence[RewardSpec], max_restarts: int = 3) -> None:
        self.actors = actors
        self.specs = list(specs)
        self.max_restarts = max_restarts
        self.restarts = 0

    def set_specs(self, specs: Sequence[RewardSpec]) -> None:
        """Install a reward set on every actor; an actor's refusal (a RayTaskError) propagates, and the caller
        puts the previous set back with another `set_specs`."""
        self.specs = list(specs)
        for i, ref in enumerate([a.set_specs.remote(self.specs) for a in self.actors]):
            try:
                ray.get(ref)
            except DEAD_ACTOR_ERRORS as err:
                self._recover(i, err)  # the restarted actor gets self.specs there

    def score(
        self, rows: list[dict[str, Any]], groups: list[Group], max_tokens: int, step: int = 0, max_steps: int = 0
    ) -> RewardScores:
        """Score every completion, one shard per actor; a shard whose actor died is scored again after the
        restart. Each call names the set in force, so a call Ray queued for an actor that then restarted with the
        run's first set fails loudly (RewardSetMismatch) rather than scoring with the wrong rewards."""
        shards = _split_batch(reward_batch(rows, groups, max_tokens, step, max_steps), len(self.actors))
        results: list[RewardScores] = [None] * len(shards)  # type: ignore[list-item]
        pending = {i: self.actors[i].score.remote(shard, self.specs) for i, shard in enumerate(shards)}
        while pending:
            i, ref = pending.popitem()
            try:
                results[i] = ray.get(ref)
            except (*DEAD_ACTOR_ERRORS, RewardSetMismatch) as err:
                self._recover(i, err)
                pending[i] = self.actors[i].score.remote(shards[i], self.specs)
        return merge_scores(results)

    def _recover(self, i: int, err: Exception) -> None:
        self.restarts += 1
        check_restart_limit(self.restarts, self.max_restarts, "reward actors", "rewards.max_restarts", err)
        log.warning("reward actor %d died (%s); re-sending the reward set in force and retrying", i, type(err).__name__)
        call_when_back(self.actors[i].set_specs, (self.specs,), f"reward actor {i}", err)


def reward_batch(
    rows: list[dict[str, Any]], groups: list[Group], max_tokens: int, step: int = 0, max_steps: int = 0
) -> RewardBatch:
    """One RewardBatch of every completion; each data set column is repeated per completion, plus
    `completion_token_count` and `max_tokens` for length-aware rewards. A prompt rendered from chat messages is
    passed as those messages (TRL's conversational format), a plain one as its text."""
    flat_rows = [row for row, g in zip(rows, groups, strict=True) for _ in g.completions]
    flat = [(g, c) for g in groups for c in g.completions]
    columns = {k: tuple(r[k] for r in flat_rows) for k in rows[0] if k != "prompt"}
    columns["completion_token_count"] = tuple(len(c.token_ids) for _, c in flat)
    columns["max_tokens"] = (max_tokens,) * len(flat)
    return RewardBatch(
        prompts=tuple(g.prompt if g.messages is None else g.messages for g, _ in flat),
        completions=tuple(c.text for _, c in flat),
        columns=columns,
        completion_ids=tuple(c.token_ids for _, c in flat),
        step=step,
        max_steps=max_steps,
    )


def _split_batch(batch: RewardBatch, parts: int) -> list[RewardBatch]:
    n = len(batch.completions)
    bounds = [round(i * n / parts) for i in range(parts + 1)]
    ids = batch.completion_ids
    return [
        RewardBatch(
            batch.prompts[a:b],
            batch.completions[a:b],
            {k: v[a:b] for k, v in batch.columns.items()},
            None if ids is None else ids[a:b],
            batch.step,
            batch.max_steps,
        )
        for a, b in zip(bounds, bounds[1:], strict=False)
        if b > a
    ]


def merge_scores(parts: list[RewardScores]) -> RewardScores:
    """Concatenate the scores of consecutive batches (reward-actor shards, or generation rounds)."""
    names = list(parts[0].components)
    metrics = {m for p in parts for m in p.logged_metrics}
    logged = {c for p in parts for c in p.logged_columns}
    return RewardScores(
        total=tuple(t for p in parts for t in p.total),
        components={n: tuple(v for p in parts for v in p.components[n]) for n in names},
        failures={n: sum(p.failures.get(n, 0) for p in parts) for n in names},
        logged_metrics={m: _mean([p.logged_metrics[m] for p in parts if m in p.logged_metrics]) for m in metrics},
        logged_columns={
            c: tuple(v for p in parts for v in p.logged_columns.get(c, (None,) * len(p.total))) for c in logged
        },
    )


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


# The reward set tried on one row of the data before any actor starts. A reward written for another data format
# (TRL's `accuracy_reward` indexes `completion[0]["content"]`, a plain-text reward calls `.strip()`) fails on every
# batch; found at step 1 that costs an engine start-up, and under failure_policy=zero it is never found. So the
# driver calls every reward once on the first training row, in exactly the form a run passes it.

SAMPLE_COMPLETION = "The answer is 42."
"""The completion tried when the row has no string `answer`."""


class RewardFormatError(UserError):
    """A reward raised on the first row of the data in the form a run passes it."""


def check_rewards_on_row(
    specs: Sequence[RewardSpec], row: dict[str, Any], renderer: PromptRenderer, config: Config
) -> None:
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
