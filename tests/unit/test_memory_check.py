"""The memory plan a run prints at start (launch/driver.check_memory): nothing on the CPU, the plan of the learner's
GPU when it has one, and a refusal naming the settings when the plan does not fit. The GPU's size is what Ray's
task would read on a GPU machine, given here; the cluster query itself refuses a GPU ask on a machine without one."""

from __future__ import annotations

import pytest
from transformers import Qwen2Config

import launch.driver as driver
from launch.actors import gpu_total_bytes
from shared.config import load_config
from shared.errors import UserError
from shared.memplan import GIB

ONE_GPU = ["rollout.num_gpus=0.5", "train.num_gpus=0.5", "model.dtype=bfloat16", "lora.rank=32"]


@pytest.fixture
def qwen_1_5b(tmp_path):
    """A config.json with Qwen2.5-1.5B's sizes (the plan reads only the config)."""
    Qwen2Config(
        vocab_size=151936, hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
        intermediate_size=8960, tie_word_embeddings=True,
    ).save_pretrained(tmp_path)  # fmt: skip
    return str(tmp_path)


def _gpu(monkeypatch, gib: int) -> list[float]:
    asked: list[float] = []

    def gpu_total_bytes(num_gpus: float) -> int:
        asked.append(num_gpus)
        return gib * GIB

    monkeypatch.setattr(driver, "gpu_total_bytes", gpu_total_bytes)
    return asked


def test_a_cpu_run_prints_no_plan_and_asks_for_no_gpu(monkeypatch, capsys, qwen_1_5b):
    asked = _gpu(monkeypatch, 80)
    assert driver.check_memory(load_config(), qwen_1_5b) is None
    assert capsys.readouterr().out == "" and asked == []


def test_one_gpu_for_everything_prints_its_plan(monkeypatch, capsys, qwen_1_5b):
    asked = _gpu(monkeypatch, 80)
    plan = driver.check_memory(load_config(overrides=ONE_GPU), qwen_1_5b)
    out = capsys.readouterr().out
    assert plan is not None and plan.fits() and asked == [0.5]
    for row in ("engine weights (bfloat16)", "engine KV cache", "learner base weights", "LoRA weights", "activations"):
        assert row in out
    assert "of 80.00 GiB" in out


def test_a_plan_that_cannot_fit_stops_the_run_naming_the_knobs(monkeypatch, qwen_1_5b):
    _gpu(monkeypatch, 16)
    with pytest.raises(UserError) as err:
        driver.check_memory(load_config(overrides=[*ONE_GPU, "train.micro_batch_tokens=65536"]), qwen_1_5b)
    for knob in ("rollout.gpu_memory_utilization", "train.micro_batch_tokens", "gradient_checkpointing", "model.dtype"):
        assert knob in str(err.value)


def test_a_gpu_ask_on_a_cluster_without_gpus_is_refused(ray_session):
    with pytest.raises(UserError, match="train.num_gpus=0.5 but the Ray cluster has 0 GPUs"):
        gpu_total_bytes(0.5)
