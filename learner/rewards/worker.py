"""Scores batches of completions with the configured rewards: the body of a reward actor.

`RewardWorker` is plain Python; the launcher applies `ray.remote(...)` with its resources. Each reward is
called once per batch and all rewards run concurrently, each under `timeout_s`: `async def` rewards on an
asyncio loop, plain ones each in their own daemon thread. Python cannot kill a thread, so a sync reward that
times out keeps running (and holding what it holds) until it returns by itself; a caller that sees repeated
timeouts should restart the actor.

A reward fails when it raises, times out, or returns anything but one finite number or None per completion.
The failure policy then decides: `zero` scores that reward 0.0 on the whole batch, `skip_sample` sets it to
None and drops the batch's completions (total None), `fail_run` raises `RewardFailure`. Each failure is
counted in `RewardScores.failures`; its traceback is logged once per reward name and worker, so a reward that
always fails does not flood the log.

Rewards that declare a `reward_context` parameter (see `context.py`) get the worker's `RewardContext`; a reward
set whose context needs are not met is refused by `set_specs`, like an unknown name.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import logging
import math
import numbers
import threading
from collections.abc import Awaitable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

from learner.rewards.context import CONTEXT_PARAMETER, RewardContext, check_context, provided_fields, wants_context
from learner.rewards.protocol import AnyRewardFn, RewardState, RewardValues
from learner.rewards.registry import check_reward_names, resolve_spec
from shared.chat import is_conversational, message_text
from shared.config import RewardSpec
from shared.records import RewardBatch, RewardScores

logger = logging.getLogger(__name__)

FAILURE_POLICIES = ("zero", "skip_sample", "fail_run")


class RewardFailure(RuntimeError):
    """A reward failed under the `fail_run` policy; the message names the reward and the cause is chained."""


class RewardSetMismatch(RuntimeError):
    """`score` was asked for a reward set other than the one this actor holds: Ray restarted it with the set of
    the run's start after a reward swap. The caller re-sends the set in force and retries."""


class RewardReturnError(ValueError):
    """A reward returned something other than one finite number or None per completion."""


class RewardWorker:
    """Scores RewardBatches with a set of weighted rewards (see the module docstring for failures)."""

    def __init__(
        self,
        specs: Sequence[RewardSpec],
        failure_policy: str,
        timeout_s: float,
        context: RewardContext | None = None,
    ) -> None:
        if failure_policy not in FAILURE_POLICIES:
            raise ValueError(f"failure_policy must be one of {FAILURE_POLICIES}, got {failure_policy!r}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self._failure_policy = failure_policy
        self._timeout_s = timeout_s
        self._logged_failures: set[str] = set()
        self._context = context
        self.set_specs(specs)

    def set_specs(self, specs: Sequence[RewardSpec]) -> None:
        """Replace the reward set (between steps); every name is resolved before anything changes."""
        check_reward_names(specs)
        functions = {spec.name: resolve_spec(spec) for spec in specs}
        provided = provided_fields(self._context)
        for name, fn in functions.items():
            check_context(name, fn, provided)
        self._specs = tuple(specs)
        self._functions = functions

    def score(self, batch: RewardBatch, specs: Sequence[RewardSpec] | None = None) -> RewardScores:
        """Run every reward on the batch and combine them into weighted totals.

        `total[i]` sums weight * value over the rewards that are not None for completion i; it is 0.0 when
        none applies, and None for every completion when a reward failed under `skip_sample`. With `specs`, the
        set the caller expects, a different set in force raises `RewardSetMismatch` instead of silently scoring
        with it.
        """
        if specs is not None and tuple(specs) != self._specs:
            raise RewardSetMismatch(
                f"this reward actor holds rewards {[s.name for s in self._specs]}, the caller expects "
                f"{[s.name for s in specs]}"
            )
        columns = _checked_columns(batch)
        n = len(batch.completions)
        if n == 0:
            return RewardScores(total=(), components={s.name: () for s in self._specs})
        # Ray may call this from a thread that already runs an event loop; ours gets a thread of its own.
        log = RewardLog(n)
        with ThreadPoolExecutor(max_workers=1) as pool:
            outcomes = pool.submit(asyncio.run, self._run_all(batch, columns, log)).result()
        components: dict[str, tuple[float | None, ...]] = {}
        failures: dict[str, int] = {}
        for spec in self._specs:
            outcome = outcomes[spec.name]
            failed = isinstance(outcome, Exception)
            components[spec.name] = (
                self._on_failure(spec.name, outcome, n) if isinstance(outcome, Exception) else tuple(outcome)
            )
            failures[spec.name] = int(failed)
        skipped = self._failure_policy == "skip_sample" and any(failures.values())
        total = (None,) * n if skipped else _weighted_totals(self._specs, components, n)
        return RewardScores(total, components, failures, log.mean_metrics(), log.columns())

    async def _run_all(
        self, batch: RewardBatch, columns: dict[str, list[Any]], log: RewardLog
    ) -> dict[str, RewardValues | Exception]:
        names = [spec.name for spec in self._specs]
        outcomes = await asyncio.gather(*(self._run_one(name, batch, columns, log) for name in names))
        return dict(zip(names, outcomes, strict=True))

    async def _run_one(
        self, name: str, batch: RewardBatch, columns: dict[str, list[Any]], log: RewardLog
    ) -> RewardValues | Exception:
        fn = self._functions[name]
        # Fresh lists per reward: rewards run concurrently and user code may mutate its arguments.
        kwargs: dict[str, Any] = {**trl_arguments(batch, log), **{key: list(values) for key, values in columns.items()}}
        if wants_context(fn):
            kwargs[CONTEXT_PARAMETER] = self._context
        try:
            if _is_async(fn):
                raw = await asyncio.wait_for(cast(Awaitable[RewardValues], fn(**kwargs)), self._timeout_s)
            else:
                raw = await asyncio.wait_for(asyncio.wrap_future(_call_in_thread(fn, kwargs)), self._timeout_s)
            return _checked_values(name, raw, len(batch.completions))
        except asyncio.TimeoutError:
            return TimeoutError(f"reward {name!r} did not return within timeout_s={self._timeout_s}")
        except Exception as err:  # any error of user code is a reward failure, handled by the failure policy
            return err

    def _on_failure(self, name: str, error: Exception, n: int) -> tuple[float | None, ...]:
        if self._failure_policy == "fail_run":
            raise RewardFailure(f"reward {name!r} failed: {type(error).__name__}: {error}") from error
        if name not in self._logged_failures:
            self._logged_failures.add(name)
            logger.error(
                "reward %r failed (failure_policy=%s); later failures of it are counted, not logged",
                name,
                self._failure_policy,
                exc_info=error,
            )
        return (0.0 if self._failure_policy == "zero" else None,) * n


def _checked_columns(batch: RewardBatch) -> dict[str, list[Any]]:
    n = len(batch.completions)
    if len(batch.prompts) != n:
        raise ValueError(f"RewardBatch has {len(batch.prompts)} prompts but {n} completions")
    for key, values in batch.columns.items():
        if key in ("prompts", "completions", CONTEXT_PARAMETER, *TRL_ARGUMENTS):
            raise ValueError(f"RewardBatch column {key!r} clashes with the reward argument of the same name")
        if len(values) != n:
            raise ValueError(f"RewardBatch column {key!r} has {len(values)} values for {n} completions")
    return {key: list(values) for key, values in batch.columns.items()}


TRL_ARGUMENTS = ("completion_ids", "trainer_state", "log_extra", "log_metric")
"""Keyword arguments TRL's GRPOTrainer passes every reward besides prompts, completions and the data columns."""


class RewardLog:
    """What rewards report through `log_metric(name, value)` and `log_extra(column, values)` during one batch."""

    def __init__(self, n: int) -> None:
        self._n = n
        self._metrics: dict[str, list[float]] = {}
        self._columns: dict[str, list[Any]] = {}
        self._lock = threading.Lock()

    def log_metric(self, name: str, value: float) -> None:
        with self._lock:
            self._metrics.setdefault(name, []).append(float(value))

    def log_extra(self, column: str, values: list[Any]) -> None:
        if len(values) != self._n:
            raise ValueError(f"log_extra({column!r}, ...) got {len(values)} values for {self._n} completions")
        with self._lock:
            self._columns[column] = list(values)

    def mean_metrics(self) -> dict[str, float]:
        return {name: sum(v) / len(v) for name, v in self._metrics.items()}

    def columns(self) -> dict[str, tuple[Any, ...]]:
        return {name: tuple(values) for name, values in self._columns.items()}


def trl_arguments(batch: RewardBatch, log: RewardLog) -> dict[str, Any]:
    """`prompts`, `completions` and the extra keyword arguments exactly as TRL's GRPOTrainer passes them: for
    conversational prompts (message lists), each completion is `[{"role": "assistant", "content": text}]`; for
    string prompts, the text."""
    conversational = any(is_conversational(p) for p in batch.prompts)
    texts = list(batch.completions)
    arguments: dict[str, Any] = {
        "prompts": [p if isinstance(p, str) else [dict(m) for m in p] for p in batch.prompts],
        "completions": [[{"role": "assistant", "content": t}] for t in texts] if conversational else texts,
        "trainer_state": RewardState(global_step=batch.step, max_steps=batch.max_steps),
        "log_extra": log.log_extra,
        "log_metric": log.log_metric,
    }
    if batch.completion_ids is not None:
        arguments["completion_ids"] = [list(ids) for ids in batch.completion_ids]
    return arguments


def _is_async(fn: AnyRewardFn) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__)


def _call_in_thread(fn: AnyRewardFn, kwargs: dict[str, Any]) -> concurrent.futures.Future[Any]:
    # A daemon thread rather than an executor: a hung reward must not block the next batch or process exit.
    future: concurrent.futures.Future[Any] = concurrent.futures.Future()

    def run() -> None:
        future.set_running_or_notify_cancel()
        try:
            result = fn(**kwargs)
            if inspect.iscoroutine(result):  # a sync wrapper around an async def, e.g. a lambda
                result = asyncio.run(result)
            future.set_result(result)
        except Exception as err:  # handed to the awaiting side, which applies the failure policy
            future.set_exception(err)

    threading.Thread(target=run, name=f"reward-{getattr(fn, '__name__', 'fn')}", daemon=True).start()
    return future


def _checked_values(name: str, raw: Any, n: int) -> RewardValues:
    if not isinstance(raw, (list, tuple)):
        raise RewardReturnError(f"reward {name!r} returned a {type(raw).__name__}; expected a list of {n} values")
    if len(raw) != n:
        raise RewardReturnError(f"reward {name!r} returned {len(raw)} values for {n} completions")
    values: RewardValues = []
    for i, value in enumerate(raw):
        if value is not None and not (isinstance(value, numbers.Real) and math.isfinite(value)):
            raise RewardReturnError(
                f"reward {name!r} returned {value!r} at index {i}; expected a finite number or None"
            )
        values.append(None if value is None else float(value))
    return values


def _weighted_totals(
    specs: Sequence[RewardSpec], components: dict[str, tuple[float | None, ...]], n: int
) -> tuple[float, ...]:
    return tuple(
        sum((s.weight * value for s in specs if (value := components[s.name][i]) is not None), 0.0) for i in range(n)
    )


def score_rows(
    specs: Sequence[RewardSpec],
    rows: Sequence[dict[str, Any]],
    *,
    failure_policy: str = "fail_run",
    timeout_s: float = 30.0,
    context: RewardContext | None = None,
    completion_ids: Sequence[Sequence[int]] | None = None,
) -> list[dict[str, float | None]]:
    """Score rows of `{"prompt", "completion", other columns...}` (as read from a JSONL file). A prompt may be a
    list of messages and a completion a list holding one assistant message (TRL's conversational format).
    `completion_ids`, one list per row, is what rewards get as TRL's `completion_ids` (None: not known).

    Returns one dict per row: each reward's value under its name, and the weighted sum under "total". The
    other keys of the rows become columns; a row without a key that another row has gets None there.
    """
    for i, row in enumerate(rows):
        missing = {"prompt", "completion"} - row.keys()
        if missing:
            raise ValueError(f"row {i} lacks {', '.join(sorted(missing))}; each row needs prompt and completion")
    keys = dict.fromkeys(key for row in rows for key in row if key not in ("prompt", "completion"))
    batch = RewardBatch(
        prompts=tuple(tuple(r["prompt"]) if is_conversational(r["prompt"]) else r["prompt"] for r in rows),
        completions=tuple(message_text(row["completion"]) for row in rows),
        columns={key: tuple(row.get(key) for row in rows) for key in keys},
        completion_ids=None if completion_ids is None else tuple(tuple(ids) for ids in completion_ids),
    )
    scores = RewardWorker(specs, failure_policy, timeout_s, context).score(batch)
    return [
        {**{name: values[i] for name, values in scores.components.items()}, "total": scores.total[i]}
        for i in range(len(rows))
    ]
