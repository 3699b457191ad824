"""Start Ray and the actors of a run (rollout workers, the learner, reward actors, an optional reward model), and
what each asks the cluster for.

This is the only place that applies `ray.remote` with resources; the actor classes themselves are plain Python.
`run_demands` is the one table of per-actor resource asks: `start_actors` applies it, and `check_fits` compares it
with a cluster's nodes, both before `prolora submit` creates a job and when a driver joins an existing cluster.
Why check at all: Ray keeps an actor whose ask no node can meet pending forever (with a warning in a log nobody
reads), so a run that asks for a GPU on a CPU-only cluster would hang instead of failing.

On a CPU-only machine nothing asks for a GPU. vLLM runs its engine core in-process inside the actor
(VLLM_ENABLE_V1_MULTIPROCESSING=0): the actor is already its own process, and on CPU the engine starts several
times faster that way.
"""

from __future__ import annotations

import functools
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

import ray
from ray.exceptions import GetTimeoutError
from ray.util.placement_group import placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from launch.basemodel import default_cache_dir
from launch.progress import ray_quiet_options
from learner.group import LearnerGroup
from learner.learner import Learner
from learner.quantized import ensure_served_base
from learner.rewards.bertscore import BertScorer
from learner.rewards.context import RewardContext
from learner.rewards.pool import RewardPool
from learner.rewards.reward_model import RewardModelScorer
from learner.rewards.worker import RewardWorker
from rollout.fleet import RolloutFleet
from rollout.probe import PROBE_TOKENS, PROBE_TOLERANCE
from rollout.worker import RolloutWorker
from shared.config import Config, Quantization, RewardSpec
from shared.errors import UserError
from shared.handles import Actor, as_actor
from shared.memplan import engines_beside_learner
from shared.records import Prompt
from shared.served_base import served_base
from shared.tasks import back_translation


@dataclass(frozen=True)
class Demand:
    """One actor's resource ask (Ray logical resources)."""

    role: str
    """rollout, learner, reward, reward_model or bertscore."""
    cpus: float
    gpus: float
    config_keys: str
    """The config fields that set this ask, for the error message."""


def run_demands(config: Config) -> list[Demand]:
    """Every actor a run starts, with its ask."""
    rollout = Demand("rollout", 1.0, config.rollout.num_gpus, "rollout.num_workers, rollout.num_gpus")
    learner = Demand("learner", 1.0, config.train.num_gpus, "train.num_learners, train.num_gpus")
    reward = Demand("reward", 1.0, 0.0, "rewards.num_actors")
    demands = [rollout] * config.rollout.num_workers + [learner] * config.train.num_learners
    demands += [reward] * config.rewards.num_actors
    if config.rewards.reward_model.path:
        rm_keys = "rewards.reward_model.path, rewards.reward_model.num_gpus"
        demands.append(Demand("reward_model", 1.0, config.rewards.reward_model.num_gpus, rm_keys))
    if config.rewards.bertscore.model:
        bs_keys = "rewards.bertscore.model, rewards.bertscore.num_gpus"
        demands.append(Demand("bertscore", 1.0, config.rewards.bertscore.num_gpus, bs_keys))
    return demands


def unmet_demands(demands: list[Demand], nodes: list[dict[str, float]]) -> list[str]:
    """Why `demands` cannot all be placed on `nodes` (each a node's total resources); empty when they can.

    Checks cluster totals per resource and that every single actor fits on some node. It does not solve the full
    packing problem (Ray's scheduler does), so it catches every impossible ask but can miss a tight one.
    """
    problems = []
    for resource, attr in (("CPU", "cpus"), ("GPU", "gpus")):
        need = sum(getattr(d, attr) for d in demands)
        have = sum(n.get(resource, 0.0) for n in nodes)
        if need > have + 1e-9:
            parts = Counter((d.role, getattr(d, attr), d.config_keys) for d in demands if getattr(d, attr))
            detail = ", ".join(f"{count} {role} x {amount:g} ({keys})" for (role, amount, keys), count in parts.items())
            problems.append(f"{resource}: the run needs {need:g} ({detail}) but the cluster has {have:g}")
    largest = max((n.get("GPU", 0.0) for n in nodes), default=0.0)
    for d in {d for d in demands if d.gpus > largest + 1e-9}:
        problems.append(
            f"GPU: one {d.role} actor asks for {d.gpus:g} GPU ({d.config_keys}) but the largest node has {largest:g}"
        )
    return problems


def check_fits(config: Config, nodes: list[dict[str, float]], where: str) -> None:
    """Raise a UserError naming every resource `where` (a cluster address) lacks for this run."""
    problems = unmet_demands(run_demands(config), nodes)
    if problems:
        summary = "; ".join(_describe_node(n) for n in nodes) or "no alive nodes"
        raise UserError(
            f"the cluster at {where} cannot hold this run:\n  "
            + "\n  ".join(problems)
            + f"\ncluster nodes: {summary}\nlower the settings named above, or add nodes with those resources"
        )


def gpu_total_bytes(num_gpus: float) -> int:
    """Memory of the GPU an actor asking for `num_gpus` gets: a task with the same ask reads it."""
    have = ray.cluster_resources().get("GPU", 0.0)
    if have < num_gpus:
        raise UserError(
            f"train.num_gpus={num_gpus:g} but the Ray cluster has {have:g} GPUs (is this a GPU machine with CUDA "
            f"torch? `prolora doctor --gpu` checks): set train.num_gpus=0 and rollout.num_gpus=0 to run on the CPU"
        )
    return ray.get(_gpu_bytes.options(num_gpus=num_gpus, num_cpus=0).remote())


@ray.remote(max_calls=1)  # the worker process exits after it, so its CUDA context does not stay on the GPU
def _gpu_bytes() -> int:
    import torch

    return torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory


def _describe_node(node: dict[str, float]) -> str:
    return "{" + ", ".join(f"{k} {node.get(k, 0.0):g}" for k in ("CPU", "GPU")) + "}"


@dataclass
class Actors:
    fleet: RolloutFleet
    learner: LearnerGroup
    rewarders: RewardPool
    reward_model: Actor[RewardModelScorer] | None = None
    bertscore: Actor[BertScorer] | None = None


def start_actors(
    config: Config, model_path: str, reward_specs: Sequence[RewardSpec], render: Callable[[str], Prompt] | None = None
) -> Actors:
    """Every actor of a run; the reward actors get a RewardContext holding the rollout workers and model actors, and
    `render`, how prompts a reward builds reach the engine (see RewardContext.render)."""
    workers = start_rollout_workers(config, model_path)
    r = config.rollout
    if engines_beside_learner(r.num_workers, r.num_gpus, config.train.num_gpus):
        # vLLM sizes its KV cache from the GPU memory free while it profiles: the learner loads after that.
        ray.get([w.engine_info.remote() for w in workers])
    reward_model = start_reward_model(config)
    bertscore = start_bertscore(config)
    context = reward_context(config, workers, reward_model, bertscore, model_path, render)
    return Actors(
        fleet=RolloutFleet(
            workers,
            config.rollout.max_restarts,
            keep_versions=config.rollout.max_staleness + 1,
            probe_tolerance=config.rollout.probe_tolerance or PROBE_TOLERANCE[config.model.dtype],
            sleep_level=config.rollout.sleep_level,
        ),
        learner=start_learner(config, model_path),
        rewarders=RewardPool(
            start_reward_actors(config, reward_specs, context), reward_specs, config.rewards.max_restarts
        ),
        reward_model=reward_model,
        bertscore=bertscore,
    )


WORKER_NICENESS = 0
"""Niceness of the worker processes of a local Ray. Ray's default (15) makes every actor, i.e. all of a run's
engines and its learner, yield the CPU to any other process; on a machine shared with other work that cost the
rollout worker a third of the raw engine's throughput (`prolora bench`, rollout_vs_vllm)."""

SKIP_RESOURCE_CHECK_ENV = "PROLORA_SKIP_RESOURCE_CHECK"
"""Set to 1 to join a cluster that lacks the resources now (an autoscaling one that will add them)."""


def start_ray(config: Config, run_dir: Path | None = None) -> bool:
    """Join the configured cluster, or start a local Ray with enough CPU slots for every actor; with `run_dir`
    (and not log.verbose) a local Ray's actors print to <run_dir>/logs/actors.log, not the terminal.

    Inside a job started by `prolora submit`, Ray sets RAY_ADDRESS and the driver joins that cluster. Returns
    whether this call connected Ray (False when the caller's process already had it), so a tool knows whether the
    Ray session is its own to shut down.
    """
    if ray.is_initialized():
        return False
    address = config.run.ray_address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
        if os.environ.get(SKIP_RESOURCE_CHECK_ENV) != "1":
            check_fits(config, [n["Resources"] for n in ray.nodes() if n["Alive"]], address)
        return True
    slots = round(sum(d.cpus for d in run_demands(config)))
    ray.init(
        num_cpus=max(os.cpu_count() or 1, slots),
        include_dashboard=False,
        _system_config={"worker_niceness": WORKER_NICENESS},
        **(ray_quiet_options(run_dir) if run_dir and not config.log.verbose else {"log_to_driver": True}),
    )
    return True


def threads_per_actor(config: Config) -> int:
    """OpenMP/torch threads for each engine and the learner: `train.num_threads`, else every core, or half of them
    with asynchronous rollouts. Then the engine and the learner compute at the same time, and with every core each
    their OpenMP threads spin against each other, which makes an asynchronous step slower than a synchronous one."""
    if config.train.num_threads:
        return config.train.num_threads
    cores = os.cpu_count() or 1
    return max(1, cores // 2) if config.rollout.max_staleness > 0 else cores


def _engine_env(config: Config) -> dict[str, str]:
    threads = str(threads_per_actor(config))
    env = {
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        "VLLM_CPU_KVCACHE_SPACE": str(config.rollout.kv_cache_gib),
        "OMP_NUM_THREADS": threads,
        "TOKENIZERS_PARALLELISM": "false",
    }
    if tensor_parallel_size(config) > 1:
        # The in-place weight push (rollout/weights.py) sends a function to every rank's process; vLLM's message
        # queue between an engine's own processes pickles functions only with this set.
        env["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"
    return env


class _Ask(TypedDict):
    num_cpus: float
    num_gpus: float


def _ask(config: Config, role: str) -> _Ask:
    demand: Demand = next(d for d in run_demands(config) if d.role == role)
    return {"num_cpus": demand.cpus, "num_gpus": demand.gpus}


def tensor_parallel_size(config: Config) -> int:
    """GPUs each engine is sharded over: rollout.num_gpus when it is a whole number above 1, else 1."""
    return int(config.rollout.num_gpus) if config.rollout.num_gpus > 1 else 1


def served_base_writer(config: Config, model_path: str) -> Callable[[], str] | None:
    """With model.quantization, what each rollout worker calls on its own node before its engine starts: it writes
    (once per node) and returns the model directory the engine serves (`shared.served_base`: int8's codes, nf4's
    dequantized values). None: the engines serve `model_path` as it is. Run by the worker, not the driver, so the
    directory exists on every node an engine runs on, also one a restarted worker moves to."""
    q = config.model
    if q.quantization == "none":
        return None
    return functools.partial(write_served_base, model_path, q.quantization, q.dtype, q.trust_remote_code)


def write_served_base(model_path: str, quantization: Quantization, dtype: str, trust_remote_code: bool) -> str:
    """The served base for an engine on this node, under this node's $PROLORA_CACHE/served."""
    cache = default_cache_dir().parent / "served"
    holds = served_base(quantization).holds
    return ensure_served_base(model_path, quantization, dtype, cache, trust_remote_code, holds)


def start_rollout_workers(config: Config, model_path: str) -> list[Actor[RolloutWorker]]:
    # SPREAD: engines on as many nodes as possible; a restarted one goes wherever there is room (and writes the
    # served base there, served_base_writer).
    cls = ray.remote(**_ask(config, "rollout"), max_restarts=config.rollout.max_restarts)(RolloutWorker)
    prepare = served_base_writer(config, model_path)
    return [
        as_actor(
            cls.options(runtime_env={"env_vars": _engine_env(config)}, scheduling_strategy="SPREAD").remote(
                model_path,
                dtype=config.model.dtype,
                max_model_len=config.model.max_model_len,
                max_lora_rank=config.lora.rank,
                max_loras=config.rollout.max_loras,
                kv_cache_gib=config.rollout.kv_cache_gib,
                gpu_memory_utilization=config.rollout.gpu_memory_utilization,
                tensor_parallel_size=tensor_parallel_size(config),
                seed=config.run.seed + i,
                engine_kwargs=dict(config.rollout.engine_kwargs),
                tokenizer=config.model.tokenizer,
                trust_remote_code=config.model.trust_remote_code,
                sleep_level=config.rollout.sleep_level,
                quantization=config.model.quantization,
                prepare_model=prepare,
            )
        )
        for i in range(config.rollout.num_workers)
    ]


LEARNER_GROUP_TIMEOUT_S = 600
"""How long the learner group's placement group may wait for its resources before the run gives up."""


def start_learner(config: Config, model_path: str) -> LearnerGroup:
    """The learner ranks (`train.num_learners`), packed into one placement group (on one node where they fit, for a
    fast all-reduce) and joined into one torch.distributed group."""
    n = config.train.num_learners
    demand = _ask(config, "learner")
    bundle = {"CPU": demand["num_cpus"], **({"GPU": demand["num_gpus"]} if demand["num_gpus"] else {})}
    group = placement_group([bundle] * n, strategy="PACK")
    try:
        ray.get(group.ready(), timeout=LEARNER_GROUP_TIMEOUT_S)
    except GetTimeoutError:
        raise UserError(
            f"the {n} learner ranks (train.num_learners) could not be placed within {LEARNER_GROUP_TIMEOUT_S} s: "
            f"each asks for {bundle}; lower train.num_learners or train.num_gpus, or add nodes"
        ) from None
    cls = ray.remote(**demand)(Learner)
    env = {**_engine_env(config), "OMP_NUM_THREADS": str(max(1, threads_per_actor(config) // n))}
    ranks = [
        as_actor(
            cls.options(
                runtime_env={"env_vars": env},
                scheduling_strategy=PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=i),
            ).remote(
                model_path,
                lora=config.lora,
                train=config.train,
                algo=config.algo,
                temperature=config.rollout.temperature,
                max_new_tokens=config.rollout.max_new_tokens,
                dtype=config.model.dtype,
                seed=config.run.seed,
                trust_remote_code=config.model.trust_remote_code,
                quantization=config.model.quantization,
            )
        )
        for i in range(n)
    ]
    return LearnerGroup(ranks, group, sharded=config.train.shard_base)


def start_reward_model(config: Config) -> Actor[RewardModelScorer] | None:
    """The reward-model actor, or None when `rewards.reward_model.path` is not set."""
    rm = config.rewards.reward_model
    if rm.path is None:
        return None
    cls = ray.remote(**_ask(config, "reward_model"))(RewardModelScorer)
    return as_actor(
        cls.options(runtime_env={"env_vars": _engine_env(config)}).remote(
            rm.path,
            max_length=rm.max_length,
            batch_size=rm.batch_size,
            dtype=config.model.dtype,
            pair_format=rm.pair_format,
        )
    )


def start_bertscore(config: Config) -> Actor[BertScorer] | None:
    """The BERTScore actor, or None when `rewards.bertscore.model` is not set."""
    bs = config.rewards.bertscore
    if bs.model is None:
        return None
    cls = ray.remote(**_ask(config, "bertscore"))(BertScorer)
    return as_actor(
        cls.options(runtime_env={"env_vars": _engine_env(config)}).remote(
            bs.model, layer=bs.layer, idf=bs.idf, max_length=bs.max_length, batch_size=bs.batch_size
        )
    )


def reward_context(
    config: Config,
    workers: Sequence[Actor[RolloutWorker]],
    reward_model: Actor[RewardModelScorer] | None = None,
    bertscore: Actor[BertScorer] | None = None,
    model_path: str | None = None,
    render: Callable[[str], Prompt] | None = None,
) -> RewardContext:
    return RewardContext(
        rollout_workers=tuple(workers),
        back_translation_prompt=back_translation(config.task.name, config.task.back_translation_prompt),
        render=render,
        max_new_tokens=config.rollout.max_new_tokens,
        reward_model=reward_model,
        bertscore=bertscore,
        rouge=config.rewards.rouge,
        model_path=model_path,
    )


def start_reward_actors(
    config: Config, specs: Sequence[RewardSpec], context: RewardContext | None = None
) -> list[Actor[RewardWorker]]:
    cls = ray.remote(**_ask(config, "reward"), max_restarts=config.rewards.max_restarts)(RewardWorker)
    return [
        as_actor(cls.remote(list(specs), config.rewards.failure_policy, config.rewards.timeout_s, context))
        for _ in range(config.rewards.num_actors)
    ]


def engine_numerics(actors: Actors, prompts: Sequence[Prompt], config: Config) -> float:
    """Engines and learner decode `prompts` greedily with no adapter: the largest logprob gap is the engines'
    numerics on this model, kept in the first eval record (`engine_base_gap`) and allowed by every later probe;
    printed when it exceeds the probe tolerance, where it limits what the probe can check (rollout/probe.py)."""
    ids = [list(p.token_ids) for p in prompts]
    n_tokens = max(1, min(PROBE_TOKENS, config.model.max_model_len - max(map(len, ids))))
    gap = actors.fleet.measure_base_gap(actors.learner.base_probe(ids, n_tokens))
    tolerance = actors.fleet.probe_tolerance
    if gap > tolerance:
        print(
            f"[prolora] engine numerics on {config.model.path}: with no adapter at all, engine and learner "
            f"logprobs differ by up to {gap:.2g} per token, more than rollout.probe_tolerance={tolerance}. The engine "
            f"does not compute this model as transformers does; the served-adapter probe allows the gap, so it cannot "
            f"see an adapter whose effect is smaller (`prolora train --verbose` shows the engine's own warnings)",
            flush=True,
        )
    return gap
