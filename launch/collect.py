"""From prompts to a training batch: sample -> generate -> score -> advantages.

`collect_batch(step, rollouts)` first makes the newest offered adapter the one every engine serves (the hot-load) and
installs an edited rewards.yaml, then runs rounds until the batch is full. One round samples prompts, renders them (chat
template or plain, shared/chat.py), generates a group per prompt on the rollout workers and scores every completion on
the reward actors. The DAPO soft overlong penalty, when on, is added to the reward before advantages. Without dynamic
sampling one round is the batch. With it (DAPO), groups whose rewards are all equal carry no gradient and are dropped,
and further rounds refill the batch (at most `algo.max_refill_rounds` of them; see `learner.advantages.select_groups`
for a batch still short after that).

Every generated group is kept in the result, trained or not, so the rollouts file and the pass-rate history see
everything the policy did; groups left out of the batch have advantage 0.

`step_record` turns a trained batch into the step's `StepRecord` (shared/step_record.py).

A DPO run (algo.objective=dpo) generates nothing for training: `preference_batch` draws preference rows from the same
prompt feed (so the data order checkpoints and resumes the same way) and tokenizes them as the engines would see them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from launch.actors import Actors
from launch.prompts import PromptFeed
from learner.advantages import (
    group_advantages,
    group_has_signal,
    overlong_penalty,
    refill_size,
    select_groups,
    zero_std_fraction,
)
from learner.reference import ResetCause
from learner.rewards.builtin import repetition_penalty
from learner.rewards.pool import RewardPool, merge_scores
from learner.rewards.swap import RewardSwap
from rollout.fleet import Published, RolloutFleet
from shared.chat import PromptRenderer, message_text
from shared.config import AlgoConfig, Config
from shared.metrics import MetricsWriter
from shared.records import (
    Group,
    PreferenceBatch,
    PreferencePair,
    RewardScores,
    SamplingSpec,
    TrainBatch,
    TrainSample,
    TrainStats,
)
from shared.step_record import StepRecord


@dataclass(frozen=True)
class Rollouts:
    """Where a step's batch comes from: the engines, the reward actors, the prompt feed and the reward set."""

    config: Config
    fleet: RolloutFleet
    rewarders: RewardPool
    feed: PromptFeed
    rewards: RewardSwap
    metrics: MetricsWriter
    """Where a reward swap is recorded."""
    renderer: PromptRenderer
    """Turns a row's prompt into the text and token ids the engine gets (chat template or plain)."""


@dataclass(frozen=True)
class Collected:
    """Everything one step generated (P groups over all rounds) and the batch the learner trains on."""

    rows: list[dict]
    groups: list[Group]
    scores: RewardScores
    """Raw reward scores, one per completion, in group order."""
    rewards_PG: torch.Tensor
    """Raw total rewards (0 where invalid)."""
    shaped_PG: torch.Tensor
    """Rewards the advantages use: raw + overlong penalty."""
    valid_PG: torch.Tensor
    advantages_PG: torch.Tensor
    """0 for groups not in the batch."""
    train_P: torch.Tensor
    """(P,) bool: the group is in the training batch."""
    batch: TrainBatch
    rounds: int
    gen_s: float
    published: Published | None
    """The hot-load made just before the batch was generated (None: no new version was offered)."""


def collect_batch(step: int, rollouts: Rollouts) -> Collected:
    """The batch of `step`: hot-load the newest adapter, apply an edited reward set, then rounds of sample ->
    generate -> score until the batch is full (one round without dynamic sampling), then advantages.

    Runs in the rollout producer thread when asynchronous (launch/pipeline.py), so the hot-load never waits behind
    that thread's own generation. Every round generates with the version loaded here, so one batch never mixes
    versions even when a newer one is published while it is being made.
    """
    config, fleet, rewarders = rollouts.config, rollouts.fleet, rollouts.rewarders
    published = fleet.sync()
    rollouts.rewards.poll(step, rewarders, rollouts.metrics)
    sampler, version = rollouts.feed.begin(step), fleet.version
    algo, target = config.algo, config.rollout.prompts_per_step
    rows: list[dict] = []
    groups: list[Group] = []
    parts: list[RewardScores] = []
    gen_s, size, rounds = 0.0, target, 0
    while size:
        t0 = time.perf_counter()
        new_rows = sampler.next_batch(size)
        prompts = [rollouts.renderer.render(r["prompt"]) for r in new_rows]
        new_groups = fleet.generate(prompts, _sampling(config, step, rounds), version)
        gen_s += time.perf_counter() - t0
        parts.append(rewarders.score(new_rows, new_groups, config.rollout.max_new_tokens, step, config.run.steps))
        rows, groups, rounds = rows + new_rows, groups + new_groups, rounds + 1
        if not algo.dynamic_sampling or rounds > algo.max_refill_rounds:
            break
        kept = int(group_has_signal(*_shaped_rewards(merge_scores(parts), groups, config)[1:]).sum())
        size = refill_size(target - kept, kept, len(groups), cap=target)

    scores = merge_scores(parts)
    rewards_PG, shaped_PG, valid_PG = _shaped_rewards(scores, groups, config)
    train_P = select_groups(group_has_signal(shaped_PG, valid_PG), target, algo.dynamic_sampling)
    advantages_PG = _advantages(shaped_PG, valid_PG, train_P, algo)
    batch = _train_batch(step, groups, advantages_PG, valid_PG & train_P[:, None])
    return Collected(
        rows, groups, scores, rewards_PG, shaped_PG, valid_PG, advantages_PG, train_P, batch, rounds, gen_s, published
    )


def _advantages(
    shaped_PG: torch.Tensor, valid_PG: torch.Tensor, train_P: torch.Tensor, algo: AlgoConfig
) -> torch.Tensor:
    """(P, G) advantages of the groups in the batch; 0 for groups left out."""
    advantages_PG = torch.zeros_like(shaped_PG)
    advantages_PG[train_P] = group_advantages(
        shaped_PG[train_P],
        baseline=algo.advantage,
        scale_by_std=algo.scale_by_std,
        batch_norm=algo.batch_norm,
        valid_PG=valid_PG[train_P],
    )
    return advantages_PG


def _sampling(config: Config, step: int, round_: int) -> SamplingSpec:
    r = config.rollout
    # Rounds of one step need seeds of their own; round 0 keeps the seed a run without refills uses.
    seed = config.run.seed + step + 1_000_003 * round_
    return SamplingSpec(
        n=r.group_size,
        max_tokens=r.max_new_tokens,
        temperature=r.temperature,
        top_p=r.top_p,
        seed=seed,
        min_tokens=r.min_new_tokens,
        stop=tuple(r.stop),
    )


def _shaped_rewards(
    scores: RewardScores, groups: list[Group], config: Config
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(P, G) raw rewards, shaped rewards (raw + DAPO overlong penalty when on) and the valid mask."""
    shape = (len(groups), config.rollout.group_size)
    valid_PG = torch.tensor([t is not None for t in scores.total]).view(shape)
    rewards_PG = torch.tensor([0.0 if t is None else t for t in scores.total]).view(shape)
    cache_len = config.algo.overlong_cache_len
    if cache_len is None:
        return rewards_PG, rewards_PG, valid_PG
    lengths_PG = torch.tensor([len(c.token_ids) for g in groups for c in g.completions]).view(shape)
    penalty_PG = overlong_penalty(lengths_PG, max_len=config.rollout.max_new_tokens, cache_len=cache_len)
    return rewards_PG, rewards_PG + penalty_PG, valid_PG


def _train_batch(step: int, groups: list[Group], advantages_PG: torch.Tensor, use_PG: torch.Tensor) -> TrainBatch:
    samples = [
        TrainSample(
            prompt_token_ids=g.prompt_token_ids,
            completion_token_ids=c.token_ids,
            sampling_logprobs=c.logprobs,
            advantage=float(advantages_PG[p, i]),
            adapter_version=c.adapter_version,
            truncated=c.finish_reason == "length",
        )
        for p, g in enumerate(groups)
        for i, c in enumerate(g.completions)
        if use_PG[p, i] and c.token_ids
    ]
    return TrainBatch(samples=tuple(samples), step=step)


@dataclass(frozen=True)
class Preferences:
    """Where a DPO step's pairs come from: the preference rows (through the prompt feed) and the renderer."""

    config: Config
    feed: PromptFeed
    renderer: PromptRenderer
    eos_id: int
    """The token a completion ends with: the first of the model's EOS ids, the one its generations stop at."""


def preference_batch(step: int, preferences: Preferences) -> PreferenceBatch:
    """The pairs of DPO step `step`: `rollout.prompts_per_step` rows, each prompt rendered as the engine gets it
    (chat template or plain) and each completion (a string, or messages whose last one is the answer) tokenized
    after it without special tokens, followed by EOS, and cut at rollout.max_new_tokens like a sampled one."""
    config, renderer = preferences.config, preferences.renderer
    rows = preferences.feed.begin(step).next_batch(config.rollout.prompts_per_step)
    limit = config.rollout.max_new_tokens

    def completion(value: object) -> tuple[int, ...]:
        ids = renderer.tokenizer(message_text(value), add_special_tokens=False)["input_ids"]
        return tuple([*ids, preferences.eos_id][:limit])

    pairs = [
        PreferencePair(renderer.render(r["prompt"]).token_ids, completion(r["chosen"]), completion(r["rejected"]))
        for r in rows
    ]
    return PreferenceBatch(tuple(pairs), step)


@dataclass(frozen=True)
class Timing:
    """When a step's phases ended, for its record."""

    start: float
    """perf_counter when the step began."""
    got_batch: float
    """perf_counter when its batch was in hand."""
    train_s: float


def step_record(
    step: int,
    collected: Collected,
    stats: TrainStats,
    reset_cause: ResetCause | None,
    timing: Timing,
    staleness: list[int],
    actors: Actors,
) -> StepRecord:
    completions = [c for g in collected.groups for c in g.completions]
    lengths = [len(c.token_ids) for c in completions]
    valid = collected.rewards_PG[collected.valid_PG]
    penalty = (collected.shaped_PG - collected.rewards_PG)[collected.valid_PG]
    trained = int(collected.train_P.sum())
    published = collected.published
    return StepRecord(
        step=step,
        reward_mean=valid.mean().item() if valid.numel() else math.nan,
        reward_std=valid.std(unbiased=False).item() if valid.numel() else math.nan,
        adapter_version=completions[0].adapter_version,
        sync_ms=published.sync_ms if published else None,
        publish_ms=published.publish_ms if published else None,
        probe_max_diff=published.probe_max_diff if published else None,
        gen_tokens=sum(lengths),
        gen_s=collected.gen_s,
        train_s=timing.train_s,
        step_s=time.perf_counter() - timing.start,
        wait_s=timing.got_batch - timing.start,
        response_len_mean=sum(lengths) / len(lengths),
        truncated_frac=sum(c.finish_reason == "length" for c in completions) / len(completions),
        repetition_frac=abs(sum(repetition_penalty(c.text, 3) for c in completions)) / len(completions),
        overlong_penalty_mean=penalty.mean().item() if penalty.numel() else 0.0,
        zero_std_frac=zero_std_fraction(collected.shaped_PG, collected.valid_PG),
        sample_rounds=collected.rounds,
        train_groups=trained,
        dropped_frac=1.0 - trained / len(collected.groups),
        staleness_mean=sum(staleness) / len(staleness),
        staleness_max=max(staleness),
        train=stats,
        ref_reset=reset_cause is not None,
        ref_reset_cause=reset_cause,
        reward_components={name: mean_present(values) for name, values in collected.scores.components.items()},
        reward_failures=sum(collected.scores.failures.values()),
        worker_restarts=actors.fleet.restarts,
        reward_restarts=actors.rewarders.restarts,
        reward_log=dict(collected.scores.logged_metrics),
    )


def mean_present(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None
