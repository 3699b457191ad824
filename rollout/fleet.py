"""The rollout workers, driven from the driver: spread prompts, hot-load adapters, survive a dead worker.

A worker restarted by Ray (shared/restarts.py) has its engine rebuilt but not its adapters, so the fleet keeps the
adapter payloads in use, re-sends them to a restarted worker and resubmits the lost request; `restarts` counts how
often that happened, and past `rollout.max_restarts` `TooManyRestarts` stops the run.

The learner's new versions are offered (`offer`, no waiting) and loaded by whoever generates next (`sync`): the
rollout producer before each batch, the driver before an evaluation. With asynchronous rollouts
(rollout.max_staleness = k) the producer thread generates while the driver's main thread trains and evaluates, so
the fleet is used from two threads: a lock guards its bookkeeping (and serialises loads),
a new version becomes the default only once every worker holds it, and a worker death seen by both threads is
recovered (and counted) once. Each worker keeps the k+1 newest versions, every one a batch in flight may name.

With vLLM sleep mode (rollout.sleep_level = 1, one GPU shared with the learner) the driver puts the engines to sleep
before the learner trains (`sleep`); whatever uses them next (generate, publish) wakes them first (`wake`), and
the wake decodes the served version's probe again: a level-1 wake has been reported to leave an engine answering
without its adapter, which only such a check sees.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import ray
from ray import ObjectRef
from ray.exceptions import GetTimeoutError

from rollout.probe import base_gap, check_probe
from rollout.worker import AdapterNotLoaded, RolloutWorker
from shared.handles import Actor
from shared.records import Group, HotLoad, Payload, ProbeSet, Prompt, SamplingSpec
from shared.restarts import DEAD_ACTOR_ERRORS, RESTART_TIMEOUT_S, call_when_back, check_restart_limit

log = logging.getLogger(__name__)


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
        self,
        workers: list[Actor[RolloutWorker]],
        max_restarts: int = 3,
        keep_versions: int = 1,
        probe_tolerance: float = 0.05,
        sleep_level: int = 0,
    ) -> None:
        self.workers = workers
        self.sleep_level = sleep_level
        self.asleep = False
        self.max_restarts = max_restarts
        self.keep_versions = keep_versions
        self.probe_tolerance = probe_tolerance
        self.base_gap = 0.0  # the engines' base-model logprob gap to the learner (measure_base_gap), which probes allow
        self.restarts = 0
        self.version = 0  # newest adapter version every worker holds; 0 = the base model
        self._payloads: list[ObjectRef[Payload]] = []  # the adapter versions in use, oldest first
        self._offered: ObjectRef[Payload] | None = None  # the newest version offered and not loaded yet
        self._lock = threading.RLock()

    def generate(
        self, prompts: Sequence[str | Prompt], sampling: SamplingSpec, version: int | None = None
    ) -> list[Group]:
        """Deal prompts round-robin across workers and return the groups in prompt order.

        Requests always name the adapter version (default: the newest published), so a worker that was restarted
        and lost its adapters fails loudly (AdapterNotLoaded) instead of silently serving the base model.
        """
        self.wake()
        version = self.version if version is None else version
        n = len(self.workers)
        shards = {i: prompts[i::n] for i in range(n) if prompts[i::n]}
        groups: list[Group] = [None] * len(prompts)  # type: ignore[list-item]
        pending = {i: self.workers[i].generate.remote(s, sampling, version) for i, s in shards.items()}
        while pending:
            i, ref = pending.popitem()
            try:
                groups[i::n] = ray.get(ref)
            except (*DEAD_ACTOR_ERRORS, AdapterNotLoaded) as err:
                self._recover(i, err)
                pending[i] = self.workers[i].generate.remote(shards[i], sampling, version)
        return groups

    def offer(self, payload_ref: ObjectRef[Payload]) -> None:
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

    def publish(self, payload_ref: ObjectRef[Payload]) -> Published:
        """Hot-load the adapter behind `payload_ref` into every worker and check its probe, if it carries one.

        Each worker keeps the newest `keep_versions` versions. A worker busy with a generation request loads
        after it, so with asynchronous rollouts `publish_ms` includes that wait. Raises StaleAdapterError if a worker's
        engine disagrees with the learner on the probe tokens; the version then never becomes the default.
        """
        self.wake()
        payload = ray.get(payload_ref)
        with self._lock:
            self._payloads = (self._payloads + [payload_ref])[-self.keep_versions :]
        t0 = time.perf_counter()
        reports: list[HotLoad] = []
        for i, ref in enumerate([w.load_adapter.remote(payload_ref, self.keep_versions) for w in self.workers]):
            try:
                reports.append(ray.get(ref))
            except DEAD_ACTOR_ERRORS as err:
                self._recover(i, err)
                reports.append(ray.get(self.workers[i].load_adapter.remote(payload_ref, self.keep_versions)))
        publish_ms = (time.perf_counter() - t0) * 1e3
        probe = payload.probe
        probe_diff = None if probe is None else check_probe(probe, reports, self.probe_tolerance, self.base_gap)
        self.version = payload.version  # only now may a request name it: every worker holds it
        return Published(max(r.load_ms for r in reports), publish_ms, probe_diff)

    def sleep(self) -> None:
        """With rollout.sleep_level > 0, put every engine to sleep (the learner is about to train on their GPU);
        otherwise nothing. A worker that died comes back awake, and the next request recovers it."""
        if not self.sleep_level:
            return
        with self._lock:
            for ref in [w.sleep.remote() for w in self.workers]:
                try:
                    ray.get(ref)
                except DEAD_ACTOR_ERRORS:
                    pass
            self.asleep = True

    def wake(self) -> float | None:
        """Wake every engine if they sleep, and check the probe of the version they serve again. Returns the probe's
        largest |engine - learner| logprob difference (None: nothing was asleep, or the version has no probe);
        raises StaleAdapterError when a woken engine no longer serves the adapter."""
        with self._lock:
            if not self.asleep:
                return None
            served = self._payloads[-1] if self._payloads and self.version else None
            reports: list[HotLoad | None] = []
            for i, ref in enumerate([w.wake_up.remote(served) for w in self.workers]):
                try:
                    reports.append(ray.get(ref))
                except DEAD_ACTOR_ERRORS as err:
                    self._recover(i, err)
                    reports.append(ray.get(self.workers[i].wake_up.remote(served)))
            self.asleep = False
            probe = None if served is None else ray.get(served).probe
            if probe is None:
                return None
            # A worker that answered without decoding the probe fails the check (its report has no probe tokens).
            woken = [r or HotLoad(self.version, 0.0) for r in reports]
            diff = check_probe(probe, woken, self.probe_tolerance, self.base_gap)
            log.info("engines woke up; probe of adapter version %d max diff %.4f", self.version, diff)
            return diff

    def measure_base_gap(self, probe_ref: ObjectRef[ProbeSet]) -> float:
        """Every engine decodes the learner's base-model probe with no adapter; the largest logprob difference is
        the engines' numerics on this model, which every later probe allows on top of its tolerance."""
        probe = ray.get(probe_ref)
        self.base_gap = base_gap(probe, ray.get([w.probe_base.remote(probe) for w in self.workers]))
        return self.base_gap

    def _recover(self, i: int, err: Exception) -> None:
        with self._lock:
            if self._holds_payloads(i):
                return  # another thread saw the same death and already recovered this worker
            self._reload(i, err)

    def _holds_payloads(self, i: int) -> bool:
        """Whether worker i answers and holds every version in use (it was already recovered)."""
        try:
            loaded = set(ray.get(self.workers[i].loaded_versions.remote(), timeout=RESTART_TIMEOUT_S))
        except (*DEAD_ACTOR_ERRORS, GetTimeoutError):
            return False
        return bool(self._payloads) and {ray.get(p).version for p in self._payloads} <= loaded

    def _reload(self, i: int, err: Exception) -> None:
        self.restarts += 1
        check_restart_limit(self.restarts, self.max_restarts, "rollout workers", "rollout.max_restarts", err)
        log.warning("rollout worker %d died (%s); reloading its adapters and retrying", i, type(err).__name__)
        for payload in self._payloads:
            call_when_back(self.workers[i].load_adapter, (payload, self.keep_versions), f"rollout worker {i}", err)
