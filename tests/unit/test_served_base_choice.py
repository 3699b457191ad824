"""What an engine loads for a quantized learner base, and what a rollout worker then passes to vLLM on a GPU and on
the CPU: checked without a GPU, as the other engine arguments by device are (tests/unit/test_devices.py)."""

from __future__ import annotations

import pytest

from rollout.worker import engine_args
from shared.config import Quantization
from shared.served_base import ServedBase, served_base
from tests.unit.test_devices import CPU_WORKAROUNDS


def _args(on_gpu: bool, quantization: Quantization) -> dict:
    return engine_args(
        "/served/m",
        dtype="bfloat16",
        max_model_len=256,
        max_lora_rank=8,
        max_loras=2,
        gpu_memory_utilization=0.5,
        seed=0,
        on_gpu=on_gpu,
        quantization=quantization,
    )


def test_what_an_engine_loads_for_each_quantization():
    assert served_base("none") == ServedBase("source", None)
    assert served_base("int8") == ServedBase("quantized", "torchao")  # the learner's torchao codes
    assert served_base("nf4") == ServedBase("dequantized", None)  # vLLM 0.32 has no bitsandbytes method


@pytest.mark.parametrize("on_gpu", [True, False])
def test_an_int8_base_adds_vllms_torchao_method_on_either_device(on_gpu):
    plain = _args(on_gpu, "none")
    assert _args(on_gpu, "int8") == {**plain, "quantization": "torchao"}
    assert _args(on_gpu, "nf4") == plain  # a plain checkpoint of the dequantized values
    assert "load_format" not in _args(on_gpu, "int8")  # vLLM picks the torchao safetensors loader itself
    assert all(key in plain for key in CPU_WORKAROUNDS) != on_gpu  # the device still sets the rest


def test_the_quantization_argument_is_one_vllm_knows():
    pytest.importorskip("vllm")
    from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS

    assert served_base("int8").engine_quantization in QUANTIZATION_METHODS
    assert "bitsandbytes" not in QUANTIZATION_METHODS  # why nf4 is served dequantized
