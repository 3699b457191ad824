"""The driver loop of a local (or cluster) GRPO run.

`train` starts everything and loops over `run_step`, which reads as the algorithm: take the step's batch
(`collect_batch` in launch/collect.py: hot-load the newest adapter, sample prompts, generate groups on the rollout
workers, score them on the reward actors, shape rewards, drop groups without signal under dynamic sampling,
compute advantages), update the learner, offer the new adapter to the rollout workers (publish), maybe reset the KL
reference (ProRL), record per-prompt pass rates, log a `StepRecord`. Before each batch is made the reward set may
change: `RewardSwap` (learner/rewards/swap.py) installs an edited `rewards.yaml`.

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

With algo.objective=dpo the loop is the same but each step is `run_dpo_step`: its batch is preference pairs
(launch/collect.py:preference_batch), so nothing is generated for training, batches are never made ahead, the
reference stays the base model and no prompt is retired; evaluations and checkpoints are as above.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path

import ray
from ray.exceptions import RayActorError

from launch.actors import Actors, engine_numerics, gpu_total_bytes, start_actors, start_ray
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
from launch.collect import Collected, Preferences, Rollouts, Timing, collect_batch, preference_batch, step_record
from launch.datafiles import TaskData, load_task_data, uses_own_rows
from launch.evaluate import EvalResult, evaluate
from launch.pipeline import Prefetcher, check_staleness
from launch.progress import Progress, driver_output_to
from launch.prompts import PassRateHistory, PromptFeed, PromptSampler
from launch.rundir import RunDir, resolve_model_path
from learner.group import LearnerGroup
from learner.reference import ResetCause, ResetTriggers
from learner.rewards.pool import check_rewards_on_row
from learner.rewards.swap import RewardSwap, check_reward_specs
from rollout.limits import check_engine_limits
from rollout.probe import PROBE_PROMPTS, StaleAdapterError, probe_for, probe_prompts
from shared.chat import PromptRenderer, eos_token_ids, prompt_key
from shared.config import Config
from shared.errors import UserError
from shared.hacking import HackingSignals, HackingWatch, describe
from shared.memplan import MemoryPlan, ModelShape, check_plan, plan_for_config
from shared.metrics import read_metrics
from shared.records import Payload, TrainStats
from shared.restarts import TooManyRestarts
from shared.step_record import DpoStepRecord, StepRecord
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


@dataclass(frozen=True)
class Run:
    """What the loop works with, made once by `train`: config, task, actors, curriculum, run directory, and the
    reward-hacking watch (the step and eval records so far)."""

    config: Config
    task: Task
    heldout: list[dict]
    renderer: PromptRenderer
    """Renders prompts for the engines (shared/chat.py); one tokenizer, loaded once."""
    actors: Actors
    curriculum: Curriculum
    dir: RunDir
    rewards: RewardSwap
    watch: HackingWatch
    model_path: str

    def rollouts(self) -> Rollouts:
        a = self.actors
        return Rollouts(
            self.config, a.fleet, a.rewarders, self.curriculum.feed, self.rewards, self.dir.metrics, self.renderer
        )

    def preferences(self) -> Preferences:
        eos = eos_token_ids(self.model_path, self.renderer.tokenizer, self.config.model.trust_remote_code)
        if not eos:
            raise UserError(f"{self.model_path}: no EOS token id (generation_config.json or tokenizer); DPO needs one")
        return Preferences(self.config, self.curriculum.feed, self.renderer, eos[0])


def train(config: Config, resume: bool = False) -> RunResult:
    """Run GRPO (or DPO, algo.objective) steps up to `config.run.steps`; with `resume`, continue
    `config.run.run_dir` from its last good checkpoint. Returns the first and last held-out evaluations."""
    inputs = _check_inputs(config)
    run_dir = RunDir.reopen(config) if resume else RunDir.create(config)
    with driver_output_to(run_dir.path, config.log.verbose):  # library logs to RUN_DIR/logs/
        return _train(config, resume, inputs, run_dir)


def _train(config: Config, resume: bool, inputs: Inputs, run_dir: RunDir) -> RunResult:
    run = _start(config, inputs, run_dir)
    try:
        return _loop(run, resume)
    finally:  # frees the learner group's placement group: a later run in this process (bench, tests) needs its CPUs
        run.actors.learner.kill()


def _loop(run: Run, resume: bool) -> RunResult:
    config = run.config
    with stop_if_learner_dies(run.actors.learner, run.dir.path):  # a resume's load_state is a learner call too
        gap = engine_numerics(
            run.actors, [run.renderer.render(r["prompt"]) for r in run.heldout[:PROBE_PROMPTS]], run.config
        )
        state = _restore(run) if resume else DriverState()
        if state.first_eval is None:
            _record_eval(run, state, step=0, **_devices(run.actors), engine_base_gap=gap)
    progress = Progress(config.run.steps, _evals(state)[1], config.log.progress_every, state.step)
    # Makes each step's batch: in this thread, or up to max_staleness steps ahead in another.
    produce, step_fn, ahead = _objective(run)
    batches = Prefetcher(produce, state.step + 1, config.run.steps, ahead)
    with StopSignals() as stop, batches, stop_if_learner_dies(run.actors.learner, run.dir.path):
        for step in range(state.step + 1, config.run.steps + 1):
            with _stop_on_fleet_failure(run, state):
                record = step_fn(step, run, batches)
            state.step = step
            state.nonfinite_streak = next_nonfinite_streak(
                state.nonfinite_streak, record.train.optimizer_steps, record.train.skipped_nonfinite
            )
            progress.update(record.to_json())
            if step == config.run.steps or _due(step, config.eval.every):
                with _stop_on_fleet_failure(run, state):
                    progress.eval(_record_eval(run, state, step), step)
            problem = _stop_reason(stop, state, config, run.dir.path, record.hacking)
            if problem or step == config.run.steps or _due(step, config.run.checkpoint_every):
                _checkpoint(run, state)
            if problem:
                raise problem
        progress.close()
        run.dir.save_adapter(ray.get(run.actors.learner.export_adapter()), "final")
    run.dir.close()
    return RunResult(run.dir.path, *_evals(state))


def run_step(step: int, run: Run, batches: Prefetcher[Collected]) -> StepRecord:
    """One GRPO step: take the batch (sample -> generate -> score -> advantages, launch/collect.py), update the
    learner, publish the new adapter, track prompts, log. Returns the record it wrote to metrics.jsonl."""
    config, learner = run.config, run.actors.learner
    t0 = time.perf_counter()
    collected = batches.get(step)
    t1 = time.perf_counter()
    versions = [c.adapter_version for g in collected.groups for c in g.completions]
    staleness = check_staleness(step, versions, config.rollout.max_staleness)
    run.actors.fleet.sleep()  # rollout.sleep_level: the engines free the GPU while the learner trains
    stats = learner.train_step(collected.batch)
    probe = (
        probe_prompts(collected.groups, config.model.max_model_len) if _due(step, config.rollout.probe_every) else ()
    )
    payload = learner.export_adapter(*probe)
    train_s = time.perf_counter() - t1
    run.actors.fleet.offer(payload)  # hot-loaded by collect_batch before the next batch (or by an evaluation)
    _track_prompts(step, collected, run)
    # The new version is offered and this step's retirements are in the feed: the producer may start the batch of
    # step+1+k now, while the rest of this step (files, the reference reset, metrics) is done.
    batches.step_done(step)
    adapter = ray.get(payload)
    run.dir.save_adapter(adapter, "latest", keep_copy=_due(step, config.log.save_adapter_every))
    reset_cause = _reset_reference_if_due(step, stats, adapter, run)
    timing = Timing(t0, t1, train_s)
    record = step_record(step, collected, stats, reset_cause, timing, staleness, run.actors)
    record = replace(record, hacking=run.watch.after_step(record.to_json()))
    run.dir.metrics.write(record.to_json())
    if config.log.rollouts:
        run.dir.write_rollouts(step, collected.groups, collected.scores, collected.advantages_PG)
    return record


def run_dpo_step(step: int, run: Run, batches: Prefetcher) -> DpoStepRecord:
    """One DPO step (algo.objective=dpo): take the step's preference pairs, update the learner, publish the new
    adapter (evaluations hot-load it), log. Returns the record it wrote to metrics.jsonl."""
    config, learner = run.config, run.actors.learner
    t0 = time.perf_counter()
    batch = batches.get(step)
    t1 = time.perf_counter()
    run.actors.fleet.sleep()  # rollout.sleep_level: the engines free the GPU while the learner trains
    stats = learner.train_pairs(batch)
    prompts = [p.prompt_token_ids for p in batch.pairs]
    probe = probe_for(prompts, config.model.max_model_len) if _due(step, config.rollout.probe_every) else ()
    payload = learner.export_adapter(*probe)
    run.actors.fleet.offer(payload)  # hot-loaded by the next evaluation
    batches.step_done(step)
    adapter = ray.get(payload)
    train_s = time.perf_counter() - t1
    run.dir.save_adapter(adapter, "latest", keep_copy=_due(step, config.log.save_adapter_every))
    record = DpoStepRecord(step, len(batch.pairs), train_s, time.perf_counter() - t0, stats)
    run.dir.metrics.write(record.to_json())
    return record


StepFn = Callable[[int, Run, Prefetcher], StepRecord | DpoStepRecord]


def _objective(run: Run) -> tuple[Callable[[int], object], StepFn, int]:
    """How the run makes its batches, the step that trains on one, and how many steps ahead batches are made:
    GRPO collects rollouts (asynchronously up to rollout.max_staleness), DPO draws preference pairs."""
    if run.config.algo.objective == "dpo":
        return partial(preference_batch, preferences=run.preferences()), run_dpo_step, 0
    return partial(collect_batch, rollouts=run.rollouts()), run_step, run.config.rollout.max_staleness


def _start(config: Config, inputs: Inputs, run_dir: RunDir) -> Run:
    """Start Ray and the actors for a run whose inputs are checked and whose directory is open."""
    task, model_path, data, renderer = inputs
    _note_skipped_rows(data, run_dir.path)
    # A rewards.yaml edited mid-run is tried on the first training row, as the config's set was before the start.
    tryout = partial(check_rewards_on_row, row=data.train[0], renderer=renderer, config=config)
    rewards = RewardSwap.open(run_dir.path, config, tryout)
    start_ray(config, run_dir.path)
    check_memory(config, model_path)
    # Prompts a reward builds (cycle_consistency's back-translation) go to the engine as the run's own prompts do.
    render = renderer.render_user_turn if renderer.uses_chat(data.train[0]["prompt"]) else None
    actors = start_actors(config, model_path, rewards.specs, render)
    curriculum = Curriculum(
        PromptFeed(PromptSampler(data.train, config.run.seed), config.rollout.max_staleness),
        PassRateHistory(config.task.retire_after),
        ResetTriggers(config.reference),
    )
    watch = HackingWatch(config.hacking)
    return Run(config, task, data.heldout, renderer, actors, curriculum, run_dir, rewards, watch, model_path)


def check_memory(config: Config, model_path: str) -> MemoryPlan | None:
    """Print the learner GPU's memory plan and refuse one that does not fit (UserError naming the settings); on
    the CPU, nothing. Returns the plan."""
    plan = memory_plan(config, model_path)
    if plan is not None:
        print(f"[prolora] {plan.describe()}", flush=True)
        check_plan(plan, sleeping=bool(config.rollout.sleep_level))
    return plan


def memory_plan(config: Config, model_path: str) -> MemoryPlan | None:
    """The memory plan of the learner's GPU (shared/memplan.py) with the engines that may share it; None when the
    learner trains on the CPU, or for a model whose config lacks a LLaMA-style decoder's sizes."""
    if not config.train.num_gpus:
        return None
    from transformers import AutoConfig

    hf_config = AutoConfig.from_pretrained(model_path, trust_remote_code=config.model.trust_remote_code)
    try:
        shape = ModelShape.from_hf_config(hf_config)
    except AttributeError as err:
        print(f"[prolora] no memory plan for model type {hf_config.model_type!r}: {err}", flush=True)
        return None
    return plan_for_config(config, shape, gpu_total_bytes(config.train.num_gpus))


Inputs = tuple[Task, str, TaskData, PromptRenderer]
"""What `_check_inputs` returns: the task, the model path, the rows, and the renderer of their prompts."""


def _check_inputs(config: Config) -> Inputs:
    """Everything that can be checked before an actor starts: task, rewards, model path, the user's data (prompts
    rendered as the engine will get them), and the reward set tried on the first training row."""
    task = get_task(config.task.name)
    check_reward_specs(config.rewards.functions, config)
    model_path = resolve_model_path(config.model.path)
    renderer = PromptRenderer.from_config(config, model_path)
    data = load_task_data(config, task, renderer.count_tokens if uses_own_rows(config) else None)
    renderer.render(data.train[0]["prompt"])  # a template that cannot render fails here, and warns once
    if config.algo.objective == "grpo":  # DPO's rows are pairs that no reward scores
        check_rewards_on_row(config.rewards.functions, data.train[0], renderer, config)
    check_engine_limits(
        model_path, on_gpu=config.rollout.num_gpus > 0, trust_remote_code=config.model.trust_remote_code
    )
    return task, model_path, data, renderer


def _note_skipped_rows(data: TaskData, run_dir: Path) -> None:
    """task.overlong_prompts=skip: say how many rows were left out, and keep the row numbers in data.json."""
    summary = data.skipped_summary()
    if summary:
        print(f"[prolora] {summary}", flush=True)
        (run_dir / "data.json").write_text(json.dumps({"skipped_overlong_rows": data.skipped}, indent=1) + "\n")


@contextmanager
def stop_if_learner_dies(learner: LearnerGroup, run_dir: Path) -> Iterator[None]:
    """Turn the death of a learner rank into a clean stop that names the last checkpoint; none is written now,
    since the learner's state died with it. Other actors' deaths pass through (their fleets recover them)."""
    try:
        yield
    except RayActorError as err:
        if learner.alive():
            raise
        raise LearnerDied(learner_died_message(run_dir, _last_checkpoint_step(run_dir), err)) from err


def _last_checkpoint_step(run_dir: Path) -> int | None:
    try:
        return load_latest_checkpoint(run_dir, warn=lambda _: None).step
    except CheckpointError:
        return None


def _checkpoint(run: Run, state: DriverState) -> None:
    state.worker_restarts = run.actors.fleet.restarts
    state.reward_restarts = run.actors.rewarders.restarts
    state.extra["curriculum"] = run.curriculum.state(state.step)
    blob = run.actors.learner.state()
    save_checkpoint(run.dir.path, state.step, blob, state.to_json(), identity(run.config))


def _restore(run: Run) -> DriverState:
    """Load the last good checkpoint into the learner, the engines and the curriculum; drop later records."""
    checkpoint = load_latest_checkpoint(run.dir.path)
    check_identity(checkpoint.identity, identity(run.config))
    actors = run.actors
    actors.learner.load_state(checkpoint.learner_state)
    actors.fleet.publish(actors.learner.export_adapter())
    state = DriverState.from_json(checkpoint.driver_state)
    run.curriculum.load_state(state.extra["curriculum"])
    actors.fleet.restarts = state.worker_restarts
    actors.rewarders.restarts = state.reward_restarts
    run.dir.truncate_after(state.step)
    run.watch.replay(read_metrics(run.dir.path / "metrics.jsonl"))
    print(f"[prolora] resumed {run.dir.path} from the checkpoint of step {state.step}", flush=True)
    return state


@contextmanager
def _stop_on_fleet_failure(run: Run, state: DriverState) -> Iterator[None]:
    """Turn a fleet that cannot recover (too many restarts, an engine not serving the adapter it loaded) into a clean
    stop with a checkpoint of the last good step."""
    try:
        yield
    except (TooManyRestarts, StaleAdapterError) as err:
        # The checkpoint must pair driver and learner states of the same step: skip it if the learner moved on.
        if run.actors.learner.current_version() == state.step:
            _checkpoint(run, state)
        how = f"continue with: prolora train --resume {run.dir.path}"
        raise RunStopped(f"{err}\nlast checkpoint kept; {how}") from err


def _stop_reason(
    stop: StopSignals, state: DriverState, config: Config, path: Path, hacking: HackingSignals
) -> RunStopped | None:
    how = f"continue with: prolora train --resume {path}"
    if stop.requested:
        return Interrupted(f"stopped by {stop.requested} after step {state.step}; checkpoint written; {how}")
    if state.nonfinite_streak >= config.train.max_nonfinite_steps:
        return RunStopped(
            f"{state.nonfinite_streak} steps in a row had a non-finite loss or gradient (updates skipped; limit "
            f"train.max_nonfinite_steps={config.train.max_nonfinite_steps}); checkpoint written at step "
            f"{state.step}. Lower train.lr or check the rewards, then {how}"
        )
    if config.run.stop_on_hacking and hacking.fired:
        return RunStopped(
            f"reward hacking suspected after step {state.step} ({describe(hacking)}); run.stop_on_hacking is set, "
            f"checkpoint written. Look at the completions (prolora report {path}), fix the rewards, then {how}"
        )
    return None


def _record_eval(run: Run, state: DriverState, step: int, **extra: str | float | None) -> EvalResult:
    """Evaluate the held-out split after `step`: written to metrics.jsonl (with `extra` fields: the first record
    names the learner's device), kept in the driver state, and seen by the reference's plateau trigger."""
    run.actors.fleet.sync()  # evaluate the adapter just trained, not the one the last batch used
    result = evaluate(run.actors.fleet, run.task, run.heldout, run.config, run.config.run.seed, run.renderer)
    record = {"eval": True, "step": step, **result.as_record(), **extra}
    run.dir.metrics.write(record)
    run.watch.observe_eval(record)
    state.last_eval = asdict(result)
    state.first_eval = state.first_eval or state.last_eval
    run.curriculum.resets.observe_eval(result.pass_at_1)
    return result


def _devices(actors: Actors) -> dict[str, str | int | None]:
    """Where the learner and the engines compute, the KV cache vLLM gave an engine and the quantization method its
    base is loaded with (None: plain weights): the first record's extras."""
    engine = ray.get(actors.fleet.workers[0].engine_info.remote())
    return {
        "learner_device": actors.learner.device(),
        "engine_device": engine["device"],
        "engine_kv_cache_tokens": engine["kv_cache_blocks"] * engine["block_size"],
        "engine_quantization": engine["quantization"],
    }


def _evals(state: DriverState) -> tuple[EvalResult, EvalResult]:
    """The run's first and latest held-out evaluations."""
    if state.first_eval is None or state.last_eval is None:
        raise RuntimeError("no held-out evaluation recorded yet")
    return EvalResult(**state.first_eval), EvalResult(**state.last_eval)


def _reset_reference_if_due(step: int, stats: TrainStats, adapter: Payload, run: Run) -> ResetCause | None:
    """ProRL: when a trigger fires, the reference becomes the adapter this step produced (saved to the run dir)."""
    cause = run.curriculum.resets.after_step(step, stats.kl)
    if cause is not None:
        run.actors.learner.reset_reference(run.config.reference.reset_optimizer)
        run.dir.save_adapter(adapter, "reference")
    return cause


def _track_prompts(step: int, collected: Collected, run: Run) -> None:
    """Append every group's pass rate to prompt_history.jsonl and retire prompts solved K visits in a row."""
    curriculum = run.curriculum
    passes_P = ((collected.rewards_PG >= run.config.task.pass_reward) & collected.valid_PG).sum(dim=1).tolist()
    samples_P = collected.valid_PG.sum(dim=1).tolist()
    visits = [
        curriculum.history.observe(step, prompt_key(row["prompt"]), n, k)
        for row, n, k in zip(collected.rows, samples_P, passes_P, strict=True)
    ]
    run.dir.write_prompt_visits(visits)
    curriculum.feed.retire_after(step, [v.prompt for v in visits if v.retired])


def _due(step: int, every: int) -> bool:
    return bool(every) and step % every == 0
