"""Whether a cluster can hold a run: the per-actor asks and the messages naming what is missing."""

from __future__ import annotations

import pytest

from launch.actors import check_fits, run_demands, unmet_demands
from shared.config import load_config
from shared.errors import UserError

CPU_NODE = {"CPU": 4.0, "memory": 1e10}


def test_demands_follow_the_config():
    config = load_config(
        overrides=["rollout.num_workers=3", "rollout.num_gpus=0.5", "train.num_gpus=1", "rewards.num_actors=2"]
    )
    demands = run_demands(config)
    assert [d.role for d in demands] == ["rollout"] * 3 + ["learner"] + ["reward"] * 2
    assert sum(d.cpus for d in demands) == 6
    assert sum(d.gpus for d in demands) == 2.5


def test_every_learner_rank_asks_for_its_own_cpu_and_gpus():
    config = load_config(overrides=["train.num_learners=3", "train.num_gpus=1"])
    learners = [d for d in run_demands(config) if d.role == "learner"]
    assert len(learners) == 3 and all(d.cpus == 1 and d.gpus == 1 for d in learners)
    problems = unmet_demands(run_demands(config), [{"CPU": 8.0, "GPU": 2.0}])
    assert problems == [
        "GPU: the run needs 3 (3 learner x 1 (train.num_learners, train.num_gpus)) but the cluster has 2"
    ]


def test_the_default_run_fits_a_small_cpu_cluster():
    assert unmet_demands(run_demands(load_config()), [CPU_NODE]) == []


def test_gpu_asks_on_a_cpu_cluster_name_the_settings():
    config = load_config(overrides=["rollout.num_workers=2", "rollout.num_gpus=1"])
    problems = unmet_demands(run_demands(config), [CPU_NODE])
    assert any(
        p.startswith("GPU: the run needs 2 (2 rollout x 1 (rollout.num_workers, rollout.num_gpus))") for p in problems
    ), problems
    with pytest.raises(UserError, match="cannot hold this run") as err:
        check_fits(config, [CPU_NODE], "http://head:8265")
    assert "{CPU 4, GPU 0}" in str(err.value)


def test_too_few_cpus():
    config = load_config(overrides=["rollout.num_workers=4", "rewards.num_actors=2"])
    problems = unmet_demands(run_demands(config), [{"CPU": 2.0}, {"CPU": 2.0}])
    assert problems == [
        "CPU: the run needs 7 (4 rollout x 1 (rollout.num_workers, rollout.num_gpus), 1 learner x 1 "
        "(train.num_learners, train.num_gpus), 2 reward x 1 (rewards.num_actors)) but the cluster has 4"
    ]


def test_an_actor_larger_than_any_node():
    # Enough GPUs in total, but the learner's 2 must sit on one node.
    config = load_config(overrides=["train.num_gpus=2"])
    problems = unmet_demands(run_demands(config), [{"CPU": 8.0, "GPU": 1.0}, {"CPU": 8.0, "GPU": 1.0}])
    assert problems == [
        "GPU: one learner actor asks for 2 GPU (train.num_learners, train.num_gpus) but the largest node has 1"
    ]


def test_gpus_per_rollout_worker_set_the_engines_tensor_parallel_size():
    from launch.actors import tensor_parallel_size
    from rollout.worker import engine_args

    sizes = {gpus: tensor_parallel_size(load_config(overrides=[f"rollout.num_gpus={gpus}"])) for gpus in (0, 0.5, 1, 4)}
    assert sizes == {0: 1, 0.5: 1, 1: 1, 4: 4}  # a share of one GPU (single-GPU case) or whole GPUs to shard over
    args = engine_args(
        "m",
        dtype="bfloat16",
        max_model_len=64,
        max_lora_rank=8,
        max_loras=2,
        gpu_memory_utilization=0.4,
        seed=0,
        tensor_parallel_size=4,
    )
    assert args["tensor_parallel_size"] == 4 and args["gpu_memory_utilization"] == 0.4
    with pytest.raises(UserError, match=r"rollout.num_gpus \(2.5\) above 1 is the engine's tensor-parallel size"):
        load_config(overrides=["rollout.num_gpus=2.5"])
