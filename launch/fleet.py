"""Talking to actor fleets: spread prompts across rollout workers, hot-load an adapter into all of them, and
split a batch of completions across reward actors."""

from __future__ import annotations

import time

import ray

from shared.records import Group, RewardBatch, RewardScores, SamplingSpec


def generate(workers: list, prompts: list[str], sampling: SamplingSpec, version: int | None = None) -> list[Group]:
    """Deal prompts round-robin across workers and return the groups in prompt order."""
    n = len(workers)
    shards = [prompts[i::n] for i in range(n)]
    calls = [
        (i, w.generate.remote(s, sampling, version))
        for i, (w, s) in enumerate(zip(workers, shards, strict=True))
        if s
    ]
    groups: list[Group] = [None] * len(prompts)  # type: ignore[list-item]
    for i, ref in calls:
        groups[i::n] = ray.get(ref)
    return groups


def publish(workers: list, payload_ref, keep_versions: int = 1) -> float:
    """Hot-load the adapter behind `payload_ref` into every worker; returns the wall milliseconds for all."""
    t0 = time.perf_counter()
    ray.get([w.load_adapter.remote(payload_ref, keep_versions) for w in workers])
    return (time.perf_counter() - t0) * 1e3


def score(rewarders: list, rows: list[dict], groups: list[Group], max_tokens: int) -> RewardScores:
    """Score every completion on the reward actors; each data set column is repeated per completion, plus
    `completion_token_count` and `max_tokens` for length-aware rewards."""
    flat_rows = [row for row, g in zip(rows, groups, strict=True) for _ in g.completions]
    flat = [(g.prompt, c) for g in groups for c in g.completions]
    columns = {k: tuple(r[k] for r in flat_rows) for k in rows[0] if k != "prompt"}
    columns["completion_token_count"] = tuple(len(c.token_ids) for _, c in flat)
    columns["max_tokens"] = (max_tokens,) * len(flat)
    batch = RewardBatch(tuple(p for p, _ in flat), tuple(c.text for _, c in flat), columns)
    shards = _split_batch(batch, len(rewarders))
    return merge_scores(ray.get([r.score.remote(b) for r, b in zip(rewarders, shards, strict=False)]))


def _split_batch(batch: RewardBatch, parts: int) -> list[RewardBatch]:
    n = len(batch.completions)
    bounds = [round(i * n / parts) for i in range(parts + 1)]
    return [
        RewardBatch(
            batch.prompts[a:b], batch.completions[a:b], {k: v[a:b] for k, v in batch.columns.items()}
        )
        for a, b in zip(bounds, bounds[1:], strict=False)
        if b > a
    ]


def merge_scores(parts: list[RewardScores]) -> RewardScores:
    """Concatenate the scores of consecutive batches (reward-actor shards, or generation rounds)."""
    names = list(parts[0].components)
    return RewardScores(
        total=tuple(t for p in parts for t in p.total),
        components={n: tuple(v for p in parts for v in p.components[n]) for n in names},
        failures={n: sum(p.failures.get(n, 0) for p in parts) for n in names},
    )
