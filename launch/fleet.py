"""Talking to actor fleets: the rollout workers (spread prompts, hot-load adapters, survive a dead worker) and
the reward actors (split a batch of completions across them, survive a dead actor).

Both kinds are started with Ray's `max_restarts`: when an actor's process dies (killed, or its engine crashes) Ray
starts it again with the same constructor arguments. That rebuilds a rollout worker's engine but not its adapters,
and a reward actor with the reward set of the run's start, not the one in force after a reward swap. So each fleet
keeps what its actors must hold (the adapter payloads in use; the reward set in force), re-sends it to a restarted
actor and resubmits the lost request, so the step completes; `restarts` counts how often that happened, and past
the configured limit `TooManyRestarts` stops the run (the driver writes a checkpoint first).

The learner's new versions are offered (`offer`, no waiting) and loaded by whoever generates next (`sync`): the
rollout producer before each batch, the driver before an evaluation. With asynchronous rollouts
(rollout.max_staleness = k) the producer thread generates while the driver's main thread trains and evaluates, so
the fleet is used from two threads: a lock guards its bookkeeping (and serialises loads),
a new version becomes the default only once every worker holds it, and a worker death seen by both threads is
recovered (and counted) once. Each worker keeps the k+1 newest versions, every one a batch in flight may name.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, GetTimeoutError, RayActorError

from launch.probe import check_probe
from learner.rewards.worker import RewardSetMismatch
from rollout.worker import AdapterNotLoaded
from shared.config import RewardSpec
from shared.records import Group, HotLoad, RewardBatch, RewardScores, SamplingSpec

log = logging.getLogger(__name__)
_DEAD = (RayActorError, ActorDiedError, ActorUnavailableError)
RESTART_TIMEOUT_S = 600


class TooManyRestarts(RuntimeError):
    """Actors of one fleet died more often than its limit (`rollout.max_restarts`, `rewards.max_restarts`) allows."""


@dataclass(frozen=True)
class Published:
    """One adapter version hot-loaded into every worker."""

    sync_ms: float
    """The hot-load itself: the slowest worker's load time (files written, adapter registered with the engine)."""
    publish_ms: float
    """Wall time of the whole publish: a worker busy generating answers after that request, then loads and probes."""
    probe_max_diff: float | None
    """Largest |engine - learner| probe token logprob over the workers; None when the version carried no probe."""


class RolloutFleet:
    """The rollout workers of a run, with the adapter versions they must serve."""

    def __init__(
        self, workers: list, max_restarts: int = 3, keep_versions: int = 1, probe_tolerance: float = 0.05
    ) -> None:
        self.workers = workers
        self.max_restarts = max_restarts
        self.keep_versions = keep_versions
        self.probe_tolerance = probe_tolerance
        self.restarts = 0
        self.version = 0  # newest adapter version every worker holds; 0 = the base model
        self._payloads: list = []  # ObjectRefs of the adapter versions in use, oldest first
        self._offered = None  # ObjectRef of the newest version offered and not loaded yet
        self._lock = threading.RLock()

    def generate(self, prompts: list[str], sampling: SamplingSpec, version: int | None = None) -> list[Group]:
        """Deal prompts round-robin across workers and return the groups in prompt order.

        Requests always name the adapter version (default: the newest published), so a worker that was restarted
        and lost its adapters fails loudly (AdapterNotLoaded) instead of silently serving the base model.
        """
        version = self.version if version is None else version
        n = len(self.workers)
        shards = {i: prompts[i::n] for i in range(n) if prompts[i::n]}
        groups: list[Group] = [None] * len(prompts)  # type: ignore[list-item]
        pending = {i: self.workers[i].generate.remote(s, sampling, version) for i, s in shards.items()}
        while pending:
            i, ref = pending.popitem()
            try:
                groups[i::n] = ray.get(ref)
            except (*_DEAD, AdapterNotLoaded) as err:
                self._recover(i, err)
                pending[i] = self.workers[i].generate.remote(shards[i], sampling, version)
        return groups

    def offer(self, payload_ref) -> None:
        """Make the adapter behind `payload_ref` the next version to serve, without waiting: the next `sync()` loads
        it. An offered version that a newer offer replaces before any sync is never loaded (no batch can name it)."""
        with self._lock:
            self._offered = payload_ref

    def sync(self) -> Published | None:
        """`publish` the newest offered version if it is not loaded yet; None when there is nothing new.

        Called by whoever is about to generate (the rollout producer before each batch, the driver before an
        evaluation), so a hot-load never waits behind a generation request from the same fleet's producer.
        """
        with self._lock:
            offered, self._offered = self._offered, None
            return None if offered is None else self.publish(offered)

    def publish(self, payload_ref) -> Published:
        """Hot-load the adapter behind `payload_ref` into every worker and check its probe, if it carries one.

        Each worker keeps the newest `keep_versions` versions. A worker busy with a generation request loads
        after it, so with asynchronous rollouts `publish_ms` includes that wait. Raises StaleAdapterError if a worker's
        engine disagrees with the learner on the probe tokens; the version then never becomes the default.
        """
        payload = ray.get(payload_ref)
        with self._lock:
            self._payloads = (self._payloads + [payload_ref])[-self.keep_versions :]
        t0 = time.perf_counter()
        reports: list[HotLoad] = []
        for i, ref in enumerate([w.load_adapter.remote(payload_ref, self.keep_versions) for w in self.workers]):
            try:
                reports.append(ray.get(ref))
            except _DEAD as err:
                self._recover(i, err)
                reports.append(ray.get(self.workers[i].load_adapter.remote(payload_ref, self.keep_versions)))
        publish_ms = (time.perf_counter() - t0) * 1e3
        probe_diff = None if payload.probe is None else check_probe(payload.probe, reports, self.probe_tolerance)
        self.version = payload.version  # only now may a request name it: every worker holds it
        return Published(max(r.load_ms for r in reports), publish_ms, probe_diff)

    def _recover(self, i: int, err: Exception) -> None:
        with self._lock:
            if self._holds_payloads(i):
                return  # another thread saw the same death and already recovered this worker
            self._reload(i, err)

    def _holds_payloads(self, i: int) -> bool:
        """Whether worker i answers and holds every version in use (it was already recovered)."""
        try:
            loaded = set(ray.get(self.workers[i].loaded_versions.remote(), timeout=RESTART_TIMEOUT_S))
        except (*_DEAD, GetTimeoutError):
            return False
        return bool(self._payloads) and {ray.get(p).version for p in self._payloads} <= loaded

    def _reload(self, i: int, err: Exception) -> None:
        self.restarts += 1
        if self.restarts > self.max_restarts:
            raise TooManyRestarts(
                f"rollout workers died {self.restarts} times (limit rollout.max_restarts={self.max_restarts}); "
                f"last error: {err}"
            ) from err
        log.warning("rollout worker %d died (%s); reloading its adapters and retrying", i, type(err).__name__)
        for payload in self._payloads:
            _call_when_back(self.workers[i].load_adapter, (payload, self.keep_versions), f"rollout worker {i}", err)


def _call_when_back(method, args: tuple, what: str, err: Exception):
    """ray.get(method.remote(*args)) on an actor Ray is restarting: calls fail with ActorUnavailableError until
    it is back."""
    deadline = time.monotonic() + RESTART_TIMEOUT_S
    while True:
        try:
            return ray.get(method.remote(*args))
        except ActorUnavailableError:
            if time.monotonic() > deadline:
                raise TooManyRestarts(f"{what} did not come back in {RESTART_TIMEOUT_S} s") from err
            time.sleep(0.5)


class RewardPool:
    """The reward actors of a run and the reward set in force on them (see the module docstring for restarts)."""

    def __init__(self, actors: list, specs: Sequence[RewardSpec], max_restarts: int = 3) -> None:
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
            except _DEAD as err:
                self._recover(i, err)  # the restarted actor gets self.specs there

    def score(self, rows: list[dict], groups: list[Group], max_tokens: int) -> RewardScores:
        """Score every completion, one shard per actor; a shard whose actor died is scored again after the
        restart. Each call names the set in force, so a call Ray queued for an actor that then restarted with the
        run's first set fails loudly (RewardSetMismatch) rather than scoring with the wrong rewards."""
        shards = _split_batch(reward_batch(rows, groups, max_tokens), len(self.actors))
        results: list[RewardScores] = [None] * len(shards)  # type: ignore[list-item]
        pending = {i: self.actors[i].score.remote(shard, self.specs) for i, shard in enumerate(shards)}
        while pending:
            i, ref = pending.popitem()
            try:
                results[i] = ray.get(ref)
            except (*_DEAD, RewardSetMismatch) as err:
                self._recover(i, err)
                pending[i] = self.actors[i].score.remote(shards[i], self.specs)
        return merge_scores(results)

    def _recover(self, i: int, err: Exception) -> None:
        self.restarts += 1
        if self.restarts > self.max_restarts:
            raise TooManyRestarts(
                f"reward actors died {self.restarts} times (limit rewards.max_restarts={self.max_restarts}); "
                f"last error: {err}"
            ) from err
        log.warning("reward actor %d died (%s); re-sending the reward set in force and retrying", i, type(err).__name__)
        _call_when_back(self.actors[i].set_specs, (self.specs,), f"reward actor {i}", err)


def reward_batch(rows: list[dict], groups: list[Group], max_tokens: int) -> RewardBatch:
    """One RewardBatch of every completion; each data set column is repeated per completion, plus
    `completion_token_count` and `max_tokens` for length-aware rewards."""
    flat_rows = [row for row, g in zip(rows, groups, strict=True) for _ in g.completions]
    flat = [(g.prompt, c) for g in groups for c in g.completions]
    columns = {k: tuple(r[k] for r in flat_rows) for k in rows[0] if k != "prompt"}
    columns["completion_token_count"] = tuple(len(c.token_ids) for _, c in flat)
    columns["max_tokens"] = (max_tokens,) * len(flat)
    return RewardBatch(tuple(p for p, _ in flat), tuple(c.text for _, c in flat), columns)


def _split_batch(batch: RewardBatch, parts: int) -> list[RewardBatch]:
    n = len(batch.completions)
    bounds = [round(i * n / parts) for i in range(parts + 1)]
    return [
        RewardBatch(batch.prompts[a:b], batch.completions[a:b], {k: v[a:b] for k, v in batch.columns.items()})
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
