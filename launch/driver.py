"""The driver loop of a local (or cluster) GRPO run.

One step: collect a batch (sample prompts, generate groups on the rollout workers, score them on the reward actors,
shape rewards, drop groups without signal under dynamic sampling, compute advantages: launch/collect.py), update
the learner, hot-load the new adapter into every rollout worker, maybe reset the KL reference (ProRL), record
per-prompt pass rates, log. The loop itself stays on one screen; everything it calls lives in small functions
below or in other modules. Before each batch is made the reward set may change: `RewardSwap`
(learner/rewards/swap.py) installs an edited `rewards.yaml`.

Steps are numbered from 1. Step s trains on top of adapter version s-1 (version 0 is the base model with no
adapter) and produces version s. Held-out evaluation runs before step 1 (recorded as step 0), every `eval.every`
steps, and after the last step. A checkpoint is written every `run.checkpoint_every` steps, at the end, and before
any early stop (SIGINT/SIGTERM, too many non-finite updates, a fleet that cannot recover); `train(config,
resume=True)` continues from the last good one. A learner that dies stops the run without a checkpoint (its
state is gone); the message names the last one to resume from.

Synchronously (rollout.max_staleness = 0) step s's completions come from version s-1. With max_staleness = k > 0 a
background producer makes the batches of steps s+1..s+k while step s trains (launch/pipeline.py), with the newest
version published when each batch starts, so a batch may come from any version in [s-1-k, s-1];
`staleness_mean`/`staleness_max` in metrics.jsonl say how old it was, and a batch outside the bound is refused.
What that delays, by up to k steps: a prompt retired after step t is skipped from batch t+k+1 on
(launch/prompts.py:PromptFeed); a reward swap is polled by the producer before it makes a batch, so the swap record's
step is the first step scored by the new set, though that batch may be scored up to k steps before it is trained.
A ProRL reference reset is not delayed: the reference enters only through the KL term, computed at training time.
A checkpoint after step s pairs the learner's state after s with the data order from before batch s+1, so batches
made ahead but not trained are drawn again on resume (generated then by version s). Whatever stops the loop (a
signal, an error in either thread) stops the producer too; a producer failure is raised in the loop at the step
it failed on, after the batches made before it are trained.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import ray
from ray.exceptions import RayActorError

from launch.actors import Actors, start_actors, start_ray
from launch.checkpoint import (
    CheckpointError,
    DriverState,
    Interrupted,
    LearnerDied,
    RunStopped,
    StopSignals,
    check_identity,
    identity,
    learner_died_message,
    load_latest_checkpoint,
    next_nonfinite_streak,
    save_checkpoint,
)
from launch.collect import Collected, collect_batch
from launch.datafiles import TaskData, load_task_data, token_counter
from launch.evaluate import EvalResult, evaluate
from launch.pipeline import Prefetcher, check_staleness
from launch.progress import Progress
from launch.prompts import PassRateHistory, PromptFeed, PromptSampler
from launch.rundir import RunDir, resolve_model_path
from learner.advantages import zero_std_fraction
from learner.reference import ResetCause, ResetTriggers
from learner.rewards.swap import RewardSwap, check_reward_specs
from rollout.fleet import Published
from rollout.probe import StaleAdapterError, probe_prompts
from shared.config import Config
from shared.records import AdapterPayload, TrainStats
from shared.restarts import TooManyRestarts
from shared.tasks import Task, get_task


@dataclass(frozen=True)
class RunResult:
    run_dir: Path
    first_eval: EvalResult
    last_eval: EvalResult


@dataclass
class Curriculum:
    """Driver-side state that outlives a step: prompt order, pass-rate history, reference-reset triggers."""

    feed: PromptFeed
    history: PassRateHistory
    resets: ResetTriggers

    def state(self, step: int) -> dict:
        """After step `step`: the data order from before the first batch not trained (see PromptFeed)."""
        return {
            **self.feed.state(step),
            "pass_rates": self.history.rates,
            "reset_pass_at_1": self.resets.pass_at_1,
        }

    def load_state(self, state: dict) -> None:
        self.feed.load_state(state)
        self.history.rates = state["pass_rates"]
        self.resets.pass_at_1 = state["reset_pass_at_1"]


def train(config: Config, resume: bool = False) -> RunResult:
    """Run GRPO steps up to `config.run.steps`; with `resume`, continue `config.run.run_dir` from its last good
    checkpoint. Returns the first and last held-out evaluations."""
    task, model_path, data = _check_inputs(config)
    run = RunDir.reopen(config) if resume else RunDir.create(config)
    _note_skipped_rows(data, run.path)
    rewards = RewardSwap.open(run.path, config)
    start_ray(config)
    actors = start_actors(config, model_path, rewards.specs)
    curriculum = Curriculum(
        PromptFeed(PromptSampler(data.train, config.run.seed), config.rollout.max_staleness),
        PassRateHistory(config.task.retire_after),
        ResetTriggers(config.reference),
    )
    heldout = data.heldout
    with stop_if_learner_dies(actors.learner, run.path):  # a resume's load_state is a learner call too
        state = _restore(run, actors, curriculum, config) if resume else DriverState()
        if state.first_eval is None:
            state.first_eval = state.last_eval = asdict(_evaluate(actors, task, heldout, config, run, step=0))
            curriculum.resets.observe_eval(state.first_eval["pass_at_1"])
    progress = Progress(config.run.steps, EvalResult(**state.last_eval), config.log.progress_every, state.step)
    produce = partial(_produce, config=config, actors=actors, feed=curriculum.feed, rewards=rewards, run=run)
    batches = Prefetcher(produce, state.step + 1, config.run.steps, config.rollout.max_staleness)
    with StopSignals() as stop, batches, stop_if_learner_dies(actors.learner, run.path):
        for step in range(state.step + 1, config.run.steps + 1):
            with _stop_on_fleet_failure(run, actors, curriculum, state, config):
                record = run_step(step, config, actors, curriculum, run, batches)
            state.step = step
            state.nonfinite_streak = next_nonfinite_streak(
                state.nonfinite_streak, record["optimizer_steps"], record["skipped_nonfinite"]
            )
            progress.update(record)
            if step == config.run.steps or _due(step, config.eval.every):
                with _stop_on_fleet_failure(run, actors, curriculum, state, config):
                    state.last_eval = asdict(_evaluate(actors, task, heldout, config, run, step))
                curriculum.resets.observe_eval(state.last_eval["pass_at_1"])
                progress.eval(EvalResult(**state.last_eval), step)
            problem = _stop_reason(stop, state, config, run.path)
            if problem or step == config.run.steps or _due(step, config.run.checkpoint_every):
                _checkpoint(run, actors, curriculum, state, config)
            if problem:
                raise problem
        progress.close()
        run.save_adapter(ray.get(actors.learner.export_adapter.remote()), "final")
    run.close()
    return RunResult(run.path, EvalResult(**state.first_eval), EvalResult(**state.last_eval))


def _check_inputs(config: Config) -> tuple[Task, str, TaskData]:
    """Everything that can be checked before an actor starts: task, rewards, model path, the user's data files."""
    task = get_task(config.task.name)
    check_reward_specs(config.rewards.functions, config)
    model_path = resolve_model_path(config.model.path)
    uses_files = config.task.train_file or config.task.heldout_file
    return task, model_path, load_task_data(config, task, token_counter(model_path) if uses_files else None)


def _note_skipped_rows(data: TaskData, run_dir: Path) -> None:
    """task.overlong_prompts=skip: say how many rows were left out, and keep the row numbers in data.json."""
    summary = data.skipped_summary()
    if summary:
        print(f"[prolora] {summary}", flush=True)
        (run_dir / "data.json").write_text(json.dumps({"skipped_overlong_rows": data.skipped}, indent=1) + "\n")


@contextmanager
def stop_if_learner_dies(learner, run_dir: Path) -> Iterator[None]:
    """Turn the learner actor's death into a clean stop that names the last checkpoint; none is written now,
    since the learner's state died with it. Other actors' deaths pass through (their fleets recover them)."""
    try:
        yield
    except RayActorError as err:
        if _alive(learner):
            raise
        raise LearnerDied(learner_died_message(run_dir, _last_checkpoint_step(run_dir), err)) from err


def _alive(actor) -> bool:
    try:
        ray.get(actor.current_version.remote())
    except RayActorError:
        return False
    return True


def _last_checkpoint_step(run_dir: Path) -> int | None:
    try:
        return load_latest_checkpoint(run_dir, warn=lambda _: None).step
    except CheckpointError:
        return None


def _checkpoint(run: RunDir, actors: Actors, curriculum: Curriculum, state: DriverState, config: Config) -> None:
    state.worker_restarts = actors.fleet.restarts
    state.reward_restarts = actors.rewarders.restarts
    state.extra["curriculum"] = curriculum.state(state.step)
    blob = ray.get(actors.learner.state.remote())
    save_checkpoint(run.path, state.step, blob, state.to_json(), identity(config))


def _restore(run: RunDir, actors: Actors, curriculum: Curriculum, config: Config) -> DriverState:
    """Load the last good checkpoint into the learner, the engines and the curriculum; drop later records."""
    checkpoint = load_latest_checkpoint(run.path)
    check_identity(checkpoint.identity, identity(config))
    ray.get(actors.learner.load_state.remote(checkpoint.learner_state))
    actors.fleet.publish(actors.learner.export_adapter.remote())
    state = DriverState.from_json(checkpoint.driver_state)
    curriculum.load_state(state.extra["curriculum"])
    actors.fleet.restarts = state.worker_restarts
    actors.rewarders.restarts = state.reward_restarts
    run.truncate_after(state.step)
    print(f"[prolora] resumed {run.path} from the checkpoint of step {state.step}", flush=True)
    return state


@contextmanager
def _stop_on_fleet_failure(
    run: RunDir, actors: Actors, curriculum: Curriculum, state: DriverState, config: Config
) -> Iterator[None]:
    """Turn a fleet that cannot recover (too many restarts, an engine not serving the adapter it loaded) into a clean
    stop with a checkpoint of the last good step."""
    try:
        yield
    except (TooManyRestarts, StaleAdapterError) as err:
        # The checkpoint must pair driver and learner states of the same step: skip it if the learner moved on.
        if ray.get(actors.learner.current_version.remote()) == state.step:
            _checkpoint(run, actors, curriculum, state, config)
        raise RunStopped(f"{err}\nlast checkpoint kept; continue with: prolora train --resume {run.path}") from err


def _stop_reason(stop: StopSignals, state: DriverState, config: Config, path: Path) -> RunStopped | None:
    how = f"continue with: prolora train --resume {path}"
    if stop.requested:
        return Interrupted(f"stopped by {stop.requested} after step {state.step}; checkpoint written; {how}")
    if state.nonfinite_streak >= config.train.max_nonfinite_steps:
        return RunStopped(
            f"{state.nonfinite_streak} steps in a row had a non-finite loss or gradient (updates skipped; limit "
            f"train.max_nonfinite_steps={config.train.max_nonfinite_steps}); checkpoint written at step "
            f"{state.step}. Lower train.lr or check the rewards, then {how}"
        )
    return None


@dataclass(frozen=True)
class Produced:
    """A step's batch and the hot-load made just before it was generated (None: no new version was offered)."""

    collected: Collected
    published: Published | None


def _produce(
    step: int, *, config: Config, actors: Actors, feed: PromptFeed, rewards: RewardSwap, run: RunDir
) -> Produced:
    """Load the newest offered adapter, then make the batch of `step` with it (in the producer thread when
    asynchronous, so the hot-load never waits behind this thread's own generation)."""
    published = actors.fleet.sync()
    rewards.poll(step, actors.rewarders, run.metrics)
    sampler = feed.begin(step)
    collected = collect_batch(step, config, actors.fleet, actors.rewarders, sampler, version=actors.fleet.version)
    return Produced(collected, published)


def run_step(
    step: int, config: Config, actors: Actors, curriculum: Curriculum, run: RunDir, batches: Prefetcher[Produced]
) -> dict:
    """One GRPO step; returns the metrics record it wrote."""
    t0 = time.perf_counter()
    produced = batches.get(step)
    collected, published = produced.collected, produced.published
    t1 = time.perf_counter()
    versions = [c.adapter_version for g in collected.groups for c in g.completions]
    staleness = check_staleness(step, versions, config.rollout.max_staleness)
    stats = ray.get(actors.learner.train_step.remote(collected.batch))
    probing = _due(step, config.rollout.probe_every)
    probe = probe_prompts(collected.groups, config.model.max_model_len) if probing else ()
    payload = actors.learner.export_adapter.remote(*probe)
    train_s = time.perf_counter() - t1
    actors.fleet.offer(payload)  # loaded by the producer before the next batch it makes (or by an evaluation)
    _track_prompts(step, collected, config, curriculum, run)
    # The new version is offered and this step's retirements are in the feed: the producer may start the batch of
    # step+1+k now, while the rest of this step (files, the reference reset, metrics) is done.
    batches.step_done(step)
    adapter = ray.get(payload)
    run.save_adapter(adapter, "latest", keep_copy=_due(step, config.log.save_adapter_every))
    reset_cause = _reset_reference_if_due(step, stats, adapter, config, actors, curriculum, run)
    record = _step_record(step, collected, stats, reset_cause, t0, train_s, published)
    record.update(wait_s=t1 - t0, staleness_mean=sum(staleness) / len(staleness), staleness_max=max(staleness))
    record["worker_restarts"] = actors.fleet.restarts
    record["reward_restarts"] = actors.rewarders.restarts
    run.metrics.write(record)
    if config.log.rollouts:
        run.write_rollouts(step, collected.groups, collected.scores, collected.advantages_PG)
    return record


def _evaluate(actors: Actors, task: Task, heldout: list[dict], config: Config, run: RunDir, step: int):
    actors.fleet.sync()  # evaluate the adapter just trained, not the one the last batch used
    result = evaluate(actors.fleet, task, heldout, config, seed=config.run.seed)
    run.metrics.write({"eval": True, "step": step, **result.as_record()})
    return result


def _reset_reference_if_due(
    step: int,
    stats: TrainStats,
    adapter: AdapterPayload,
    config: Config,
    actors: Actors,
    curriculum: Curriculum,
    run: RunDir,
) -> ResetCause | None:
    """ProRL: when a trigger fires, the reference becomes the adapter this step produced (saved to the run dir)."""
    cause = curriculum.resets.after_step(step, stats.kl)
    if cause is not None:
        ray.get(actors.learner.reset_reference.remote(config.reference.reset_optimizer))
        run.save_adapter(adapter, "reference")
    return cause


def _track_prompts(step: int, collected: Collected, config: Config, curriculum: Curriculum, run: RunDir) -> None:
    """Append every group's pass rate to prompt_history.jsonl and retire prompts solved K visits in a row."""
    passes_P = ((collected.rewards_PG >= config.task.pass_reward) & collected.valid_PG).sum(dim=1).tolist()
    samples_P = collected.valid_PG.sum(dim=1).tolist()
    visits = [
        curriculum.history.observe(step, row["prompt"], n, k)
        for row, n, k in zip(collected.rows, samples_P, passes_P, strict=True)
    ]
    run.write_prompt_visits(visits)
    curriculum.feed.retire_after(step, [v.prompt for v in visits if v.retired])


def _step_record(step, collected: Collected, stats: TrainStats, reset_cause, t0, train_s, published) -> dict:
    completions = [c for g in collected.groups for c in g.completions]
    valid = collected.rewards_PG[collected.valid_PG]
    penalty = (collected.shaped_PG - collected.rewards_PG)[collected.valid_PG]
    trained = int(collected.train_P.sum())
    record = {
        "step": step,
        "reward_mean": valid.mean().item() if valid.numel() else float("nan"),
        "reward_std": valid.std(unbiased=False).item() if valid.numel() else float("nan"),
        "adapter_version": completions[0].adapter_version,
        # The hot-load made just before this step's batch was generated (of its adapter_version); null when none.
        "sync_ms": published and published.sync_ms,
        "publish_ms": published and published.publish_ms,
        "probe_max_diff": published and published.probe_max_diff,
        "gen_tokens": sum(len(c.token_ids) for c in completions),
        "gen_s": collected.gen_s,
        "train_s": train_s,
        "step_s": time.perf_counter() - t0,
        "response_len_mean": sum(len(c.token_ids) for c in completions) / len(completions),
        "truncated_frac": sum(c.finish_reason == "length" for c in completions) / len(completions),
        "overlong_penalty_mean": penalty.mean().item() if penalty.numel() else 0.0,
        "zero_std_frac": zero_std_fraction(collected.shaped_PG, collected.valid_PG),
        "sample_rounds": collected.rounds,
        "train_groups": trained,
        "dropped_frac": 1.0 - trained / len(collected.groups),
        **asdict(stats),
        "ref_reset": reset_cause is not None,
        "ref_reset_cause": reset_cause,
    }
    for name, values in collected.scores.components.items():
        present = [v for v in values if v is not None]
        record[f"reward/{name}"] = sum(present) / len(present) if present else None
    record["reward_failures"] = sum(collected.scores.failures.values())
    return record


def _due(step: int, every: int) -> bool:
    return bool(every) and step % every == 0
