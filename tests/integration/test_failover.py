"""A rollout worker that dies is restarted by Ray, gets its adapter back, and the lost request is retried."""

from __future__ import annotations

import ray

from launch.actors import start_learner, start_rollout_workers
from launch.fleet import RolloutFleet
from shared.config import load_config
from shared.records import SamplingSpec, TrainBatch, TrainSample

PROMPTS = ["12+34=", "500+500=", "7+8="]


def test_killed_worker_is_restarted_reloaded_and_request_retried(tiny_model, ray_session):
    config = load_config(overrides=["rollout.max_restarts=2", "train.lr=0.05"])
    workers = start_rollout_workers(config, str(tiny_model))
    learner = start_learner(config, str(tiny_model))
    fleet = RolloutFleet(workers, max_restarts=2)
    groups = fleet.generate(PROMPTS, SamplingSpec(n=2, max_tokens=6, seed=1))
    samples = tuple(
        TrainSample(g.prompt_token_ids, c.token_ids, c.logprobs, 1.0 if i else -1.0, 0)
        for g in groups
        for i, c in enumerate(g.completions)
    )
    ray.get(learner.train_step.remote(TrainBatch(samples, step=1)))
    fleet.publish(learner.export_adapter.remote())
    assert fleet.version == 1

    ray.kill(workers[0], no_restart=False)  # the engine process dies between two requests of a step
    groups = fleet.generate(PROMPTS, SamplingSpec(n=2, max_tokens=6, seed=2))

    assert fleet.restarts == 1
    assert all(c.adapter_version == 1 for g in groups for c in g.completions)
    assert ray.get(workers[0].loaded_versions.remote()) == [1]
    for actor in [*workers, learner]:
        ray.kill(actor)
