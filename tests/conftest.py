"""Shared fixtures: a tiny model built by the project's own code, and one local Ray instance per test session.

The tiny model is built with only a few warm-start steps: these tests check plumbing and numerics, not learning,
so they need a model vLLM and peft load, not a good one. It is cached under the pytest cache directory.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `gpu` run only where torch sees a CUDA device; elsewhere they are reported as skipped."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_model(pytestconfig) -> Path:
    from launch.basemodel import ensure_base_model

    cache = Path(pytestconfig.cache.mkdir("prolora-models"))
    return ensure_base_model("arith", cache, sft_steps=40)


@pytest.fixture(scope="session")
def tiny_translate_model(pytestconfig) -> Path:
    """A tiny model warm-started briefly on the toy translation task (both directions)."""
    from launch.basemodel import ensure_base_model

    cache = Path(pytestconfig.cache.mkdir("prolora-models"))
    return ensure_base_model("translate", cache, sft_steps=60)


@pytest.fixture(scope="session")
def ray_session():
    import ray

    ray.init(num_cpus=6, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def real_models(tmp_path_factory) -> dict[str, Path]:
    """Tiny random Qwen2, Qwen3, Llama and LFM2 models saved as hub models are (tests/real_models.py), by name."""
    from tests.real_models import ARCHITECTURES, build_model

    root = tmp_path_factory.mktemp("real-models")
    return {arch: build_model(arch, root / arch) for arch in ARCHITECTURES}


@pytest.fixture(scope="session")
def qwen2_path(tmp_path_factory) -> Path:
    """A tiny random Qwen2 without a tokenizer (1,000-token vocabulary, untied head, head_dim 32), for learner tests
    that feed token ids directly."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=1000,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=128,
        tie_word_embeddings=False,
    )
    path = tmp_path_factory.mktemp("qwen2")
    Qwen2ForCausalLM(config).save_pretrained(path)
    return path
