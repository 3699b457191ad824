"""Threads per actor: engines and learner share the cores only when they compute at the same time (async)."""

import os

from launch.actors import threads_per_actor
from shared.config import load_config


def test_async_rollouts_split_the_cores_between_engine_and_learner():
    cores = os.cpu_count() or 1
    assert threads_per_actor(load_config(None, [])) == cores
    assert threads_per_actor(load_config(None, ["rollout.max_staleness=1"])) == max(1, cores // 2)
    assert threads_per_actor(load_config(None, ["rollout.max_staleness=1", "train.num_threads=3"])) == 3
