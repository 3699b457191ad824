"""Surviving actors that Ray restarts: which errors mean "dead", waiting until one answers again, the limit.

Rollout workers and reward actors are started with Ray's `max_restarts`: when an actor's process dies (killed, or
its engine crashes) Ray starts it again with the same constructor arguments. The fleets that drive them
(rollout/fleet.py, learner/rewards/pool.py) re-send what a restarted actor must hold, resubmit the lost request,
and count restarts against a limit; past it, `TooManyRestarts` stops the run (the driver writes a checkpoint first).
"""

from __future__ import annotations

import time
from typing import Any

import ray
from ray.actor import ActorMethod
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

DEAD_ACTOR_ERRORS = (RayActorError, ActorDiedError, ActorUnavailableError)
"""What a call to an actor whose process died raises."""
RESTART_TIMEOUT_S = 600
"""How long a fleet waits for a restarted actor to answer."""


class TooManyRestarts(RuntimeError):
    """Actors of one fleet died more often than its limit (`rollout.max_restarts`, `rewards.max_restarts`) allows."""


def call_when_back(method: ActorMethod, args: tuple[Any, ...], what: str, err: Exception) -> Any:
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


def check_restart_limit(restarts: int, limit: int, what: str, limit_key: str, err: Exception) -> None:
    """Raise TooManyRestarts once a fleet's actors have died more than `limit` times (config key `limit_key`)."""
    if restarts > limit:
        raise TooManyRestarts(f"{what} died {restarts} times (limit {limit_key}={limit}); last error: {err}") from err
