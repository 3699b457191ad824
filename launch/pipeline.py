"""Asynchronous rollouts with bounded staleness: batches for later steps are made while the learner trains.

With `rollout.max_staleness = k`, a background producer makes the batch of step s (prompts, generation, scoring,
advantages) as soon as step s-1-k has completed, i.e. as soon as adapter version s-1-k is published, and generates
with the newest version published at that moment. The trainer takes batches strictly in step order. Step s trains
on top of version s-1, so every sample it sees is at most k versions old: `staleness = (s - 1) - adapter_version`
is in [0, k], and `check_staleness` refuses a batch that is not (a bug, never a tuning matter). At most k+1 batches
exist ahead of the step being trained; the gate, not a queue size, is what bounds memory and staleness.

k = 0 runs no thread: `get(s)` makes the batch in the caller, exactly as the synchronous loop always did.

Why a thread and not overlapping Ray futures: a batch is several dependent remote calls (dynamic sampling rounds,
scoring between them); a thread runs the unchanged synchronous `collect_batch`, and `ray.get` releases the GIL.
Whatever the producer raises is delivered to the trainer when it asks for that step, so a failure is never silent
and batches made before it are still trained; `close()` stops the producer and waits for its in-flight request.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")
JOIN_TIMEOUT_S = 120.0
"""How long `close()` waits for the producer's in-flight request before leaving the (daemon) thread behind."""


class StalenessError(RuntimeError):
    """A batch holds samples older than rollout.max_staleness allows: the pipeline's invariant is broken."""


def oldest_allowed_version(step: int, max_staleness: int) -> int:
    """The oldest adapter version step `step` may train on: it trains on top of version step-1."""
    return step - 1 - max_staleness


def check_staleness(step: int, versions: Iterable[int], max_staleness: int) -> list[int]:
    """Staleness of each sample of step `step` (learner version s-1 minus the version that generated it);
    raises StalenessError if one exceeds `max_staleness` or comes from the future."""
    staleness = [step - 1 - v for v in versions]
    bad = [s for s in staleness if not 0 <= s <= max_staleness]
    if bad:
        raise StalenessError(
            f"step {step} got samples with staleness {sorted(set(bad))}, outside [0, rollout.max_staleness="
            f"{max_staleness}]: the rollout pipeline broke its bound (a bug)"
        )
    return staleness


class Prefetcher(Generic[T]):
    """Makes `produce(step)` for steps first..last in order, at most `max_staleness` steps ahead of training.

    The trainer calls `get(s)` for s = first, first+1, ... and `step_done(s)` once step s is trained and its
    adapter published; the producer starts step p only when step p-1-k is done.
    """

    def __init__(self, produce: Callable[[int], T], first: int, last: int, max_staleness: int) -> None:
        self._produce = produce
        self._k = max_staleness
        self._completed = first - 1
        self._ready: dict[int, T] = {}
        self._failure: tuple[int, BaseException] | None = None
        self._closed = False
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        if max_staleness > 0 and first <= last:
            self._thread = threading.Thread(
                target=self._run, args=(first, last), name="prolora-rollout-producer", daemon=True
            )
            self._thread.start()

    def get(self, step: int) -> T:
        """The batch of `step` (the next untrained one), waiting for it; re-raises the producer's failure."""
        if step != self._completed + 1:
            raise ValueError(f"batches are taken in step order: expected step {self._completed + 1}, got {step}")
        if self._thread is None:
            return self._produce(step)
        with self._cond:
            while step not in self._ready and not self._failed_by(step):
                self._cond.wait()
            if step in self._ready:
                return self._ready.pop(step)
            _, err = self._failure  # type: ignore[misc]
        raise err

    def step_done(self, step: int) -> None:
        """Step `step` is trained and its adapter published: the producer may start step step+1+k."""
        with self._cond:
            self._completed = step
            self._cond.notify_all()

    def close(self) -> None:
        """Stop producing; wait (bounded) for the producer's in-flight batch to finish."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(JOIN_TIMEOUT_S)
            if self._thread.is_alive():
                log.warning("the rollout producer is still in a request after %.0f s; leaving it", JOIN_TIMEOUT_S)

    def __enter__(self) -> Prefetcher[T]:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _failed_by(self, step: int) -> bool:
        return self._failure is not None and self._failure[0] <= step

    def _run(self, first: int, last: int) -> None:
        for step in range(first, last + 1):
            with self._cond:
                while not self._closed and self._completed < oldest_allowed_version(step, self._k):
                    self._cond.wait()
                if self._closed:
                    return
            try:
                item = self._produce(step)
            except BaseException as err:  # noqa: BLE001 - handed to the trainer, which re-raises it
                with self._cond:
                    self._failure = (step, err)
                    self._cond.notify_all()
                return
            with self._cond:
                self._ready[step] = item
                self._cond.notify_all()
