"""The device and engine-argument choices for a GPU config, checked without a GPU: which torch device the learner
and the reward model pick, what a rollout worker would pass to vLLM on a GPU and on the CPU, and the config-time
check of rollout.engine_kwargs against the installed vLLM's EngineArgs."""

from __future__ import annotations

import pytest
import torch

from rollout.worker import MAX_NUM_SEQS, engine_args
from shared.config import ConfigError, load_config
from shared.devices import pick_device
from shared.errors import UserError

CPU_WORKAROUNDS = ("enforce_eager", "enable_prefix_caching", "max_num_seqs", "max_num_batched_tokens")


def test_auto_follows_the_gpu_the_actor_was_given():
    assert pick_device("auto", cuda_available=True) == torch.device("cuda")
    assert pick_device("auto", cuda_available=False) == torch.device("cpu")
    assert pick_device("cpu", cuda_available=True) == torch.device("cpu")
    assert pick_device("cuda", cuda_available=True) == torch.device("cuda")
    with pytest.raises(UserError, match="train.device=cuda"):
        pick_device("cuda", cuda_available=False)


def _args(on_gpu: bool, **kwargs) -> dict:
    c = load_config(overrides=["model.dtype=bfloat16", "model.max_model_len=4096", "lora.rank=32"])
    return engine_args(
        "/models/m",
        dtype=c.model.dtype,
        max_model_len=c.model.max_model_len,
        max_lora_rank=c.lora.rank,
        max_loras=c.rollout.max_loras,
        gpu_memory_utilization=0.8,
        seed=7,
        on_gpu=on_gpu,
        **kwargs,
    )


def test_a_gpu_engine_gets_vllm_defaults_and_the_cpu_its_workarounds():
    gpu = _args(on_gpu=True)
    assert not any(key in gpu for key in CPU_WORKAROUNDS)  # CUDA graphs, prefix caching, chunked prefill: vLLM's
    assert gpu == {
        "model": "/models/m",
        "tokenizer": None,
        "trust_remote_code": False,
        "tensor_parallel_size": 1,
        "dtype": "bfloat16",
        "seed": 7,
        "enable_lora": True,
        "max_lora_rank": 32,
        "max_loras": 2,
        "max_model_len": 4096,
        "gpu_memory_utilization": 0.8,
        "logprobs_mode": "processed_logprobs",
    }
    cpu = _args(on_gpu=False)
    assert cpu["enforce_eager"] is True and cpu["enable_prefix_caching"] is False
    assert cpu["max_num_batched_tokens"] == MAX_NUM_SEQS * 4096
    assert {k: v for k, v in cpu.items() if k not in CPU_WORKAROUNDS} == gpu


def test_engine_kwargs_come_last():
    args = _args(on_gpu=False, engine_kwargs={"enforce_eager": False, "kv_cache_dtype": "fp8"})
    assert args["enforce_eager"] is False and args["kv_cache_dtype"] == "fp8"
    assert _args(on_gpu=True, engine_kwargs={"enable_chunked_prefill": False})["enable_chunked_prefill"] is False


def test_engine_kwargs_are_checked_against_vllm_when_the_config_is_read():
    pytest.importorskip("vllm")
    ok = load_config(overrides=["rollout.engine_kwargs={kv_cache_dtype: fp8, enable_chunked_prefill: false}"])
    assert ok.rollout.engine_kwargs == {"kv_cache_dtype": "fp8", "enable_chunked_prefill": False}
    with pytest.raises(ConfigError, match="'kv_cache_dtyp' is not a vLLM engine argument"):
        load_config(overrides=["rollout.engine_kwargs={kv_cache_dtyp: fp8}"])
    with pytest.raises(ConfigError, match="kv_cache_dtype='fp9'.*fp8"):
        load_config(overrides=["rollout.engine_kwargs={kv_cache_dtype: fp9}"])
    with pytest.raises(ConfigError, match="max_num_batched_tokens='many'"):
        load_config(overrides=["rollout.engine_kwargs={max_num_batched_tokens: many}"])
    with pytest.raises(ConfigError, match="'max_lora_rank' is set by prolora: set lora.rank"):
        load_config(overrides=["rollout.engine_kwargs={max_lora_rank: 64}"])
