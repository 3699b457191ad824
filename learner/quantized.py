"""A quantized frozen base for the learner (QLoRA-style), and the base the engines serve beside it.

`model.quantization: nf4` loads the learner's base with bitsandbytes 4-bit NF4 (QLoRA's data type, blocks of 64
weights sharing an absmax); `int8` with torchao's int8 weight-only quantization (one scale per output row). Both
quantize every linear layer but the output head; LoRA adapters train on top in float32 and are never merged into
the quantized weights. Both are weight-only: a layer computes x @ dequantize(W_q).T, so a model whose linear
weights are the dequantized values computes the same function.

What an engine loads is `shared.served_base`'s choice: the learner's quantized weights themselves for int8 (vLLM
loads torchao checkpoints, on the GPU and on the CPU) and their dequantized values for nf4 (vLLM 0.32 has no
bitsandbytes support). `ensure_served_base` writes either once per (model, kind, dtype, format) on the node that
calls it, and the served-adapter probe compares the learner and the engine on the same function, as for an
unquantized base.

bitsandbytes 8-bit (LLM.int8) is not offered: it also quantizes the activations, which no engine reproduces.
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM

from shared.config import Quantization
from shared.served_base import Holds

WEIGHT_FILES = (".safetensors", ".bin", ".pt", ".pth")
"""Files of a model directory that `ensure_served_base` does not copy (the weights, which it writes itself)."""


def quantization_config(kind: Quantization, dtype: torch.dtype, head: str = "lm_head") -> Any:
    """The transformers quantization config that loads a base as `kind` (not "none"), the output head unquantized."""
    if kind == "nf4":
        from transformers import BitsAndBytesConfig

        return BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype, llm_int8_skip_modules=[head]
        )
    if kind == "int8":
        from torchao.quantization import Int8WeightOnlyConfig
        from transformers import TorchAoConfig

        return TorchAoConfig(quant_type=Int8WeightOnlyConfig(), modules_to_not_convert=[head])
    raise ValueError(f"no quantization config for model.quantization={kind}")


def load_base(
    model_path: str,
    kind: Quantization,
    dtype: torch.dtype,
    trust_remote_code: bool = False,
    device: torch.device | None = None,
) -> Any:
    """The causal LM at `model_path` on `device` (default: the CPU), its linear layers quantized as `kind` ("none":
    as saved, in `dtype`). A quantized model is placed while it loads (bitsandbytes refuses to be moved after)."""
    device = device or torch.device("cpu")
    if kind == "none":
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype, trust_remote_code=trust_remote_code)
        return model.to(device)  # type: ignore[arg-type]  # transformers types `to` through a wrapper
    model = AutoModelForCausalLM.from_pretrained(
        model_path,
        dtype=dtype,
        trust_remote_code=trust_remote_code,
        quantization_config=quantization_config(kind, dtype),
        device_map={"": device},
    )
    _one_numerics(model)
    _own_copies(model)
    return_freed_memory()
    return model


@torch.no_grad()
def _own_copies(model: torch.nn.Module) -> None:
    """Copy the weights left unquantized (embeddings, norms, the head) out of the checkpoint file they were read
    from. transformers maps the file into memory, and a tensor read from it keeps the whole mapping, which quantizing
    read end to end, resident: the float weights would stay in memory beside their quantized codes."""
    for tensor in [*model.parameters(), *model.buffers()]:
        if not _is_quantized(tensor) and tensor.device.type == "cpu":
            tensor.data = tensor.data.clone()


def _one_numerics(model: torch.nn.Module) -> None:
    """Keep bitsandbytes' 4-bit layers on x @ dequantize(W).T in every pass. On a CPU with AVX-512 bf16 it otherwise
    repacks a layer's weights, at its first gradient-free call in eval mode, for a fused kernel whose results differ
    from that product: the probe's and the reference's passes would compute another function than training does."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            setattr(module, "support_avx512bf16_for_cpu", False)  # noqa: B010  # an attribute of bnb's Linear4bit


def return_freed_memory() -> None:
    """Hand the float weights freed while quantizing back to the OS: glibc's allocator keeps freed pages for reuse,
    so the process would stay as large as the unquantized model. A no-op without glibc."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def quantized_modules(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """The modules (by path) whose weight is stored quantized; a peft-wrapped layer counts by its base layer."""
    out = {}
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if isinstance(weight, torch.Tensor) and _is_quantized(weight):
            out[name.removesuffix(".base_layer")] = module
    return out


def _is_quantized(weight: torch.Tensor) -> bool:
    return hasattr(weight, "quant_state") or (type(weight) not in (torch.Tensor, torch.nn.Parameter))


@torch.no_grad()
def dequantized(weight: torch.Tensor) -> torch.Tensor:
    """The values a quantized weight computes with, as a plain float32 tensor."""
    quant_state = getattr(weight, "quant_state", None)
    if quant_state is not None:  # bitsandbytes 4-bit
        import bitsandbytes.functional as bnb_functional

        return bnb_functional.dequantize_4bit(weight.data, quant_state).float()
    return weight.dequantize().float()  # torchao's quantized tensors


def stored_bytes(tensor: torch.Tensor) -> int:
    """Bytes a tensor holds in memory: for a quantized one, its codes plus its scales."""
    quant_state = getattr(tensor, "quant_state", None)
    if quant_state is not None:
        extras = [quant_state.absmax, quant_state.code]
        return tensor.data.nbytes + sum(t.nbytes for t in extras if isinstance(t, torch.Tensor))
    flatten = getattr(tensor, "__tensor_flatten__", None)
    if flatten is not None and type(tensor) not in (torch.Tensor, torch.nn.Parameter):
        names, _ = flatten()
        return sum(stored_bytes(getattr(tensor, n)) for n in names)
    return tensor.nbytes


def base_bytes(model: torch.nn.Module) -> dict[str, int]:
    """Measured bytes of a model's frozen weights: all of them, and those of its linear layers (the quantized ones
    when it is quantized). Trainable (adapter) weights are left out."""
    frozen = [(n, p) for n, p in model.named_parameters() if not p.requires_grad]
    linear = {f"{name}.weight" for name, m in model.named_modules() if hasattr(m, "in_features")}
    return {
        "base_bytes": sum(stored_bytes(p) for _, p in frozen),
        "linear_bytes": sum(stored_bytes(p) for n, p in frozen if n in linear),
    }


def ensure_served_base(
    model_path: str,
    kind: Quantization,
    dtype: str,
    cache_dir: Path,
    trust_remote_code: bool = False,
    holds: Holds = "dequantized",
) -> str:
    """A model directory in `cache_dir` with `model_path`'s files and, as `holds` says, the weights quantized as
    `kind` quantizes them ("quantized", saved as transformers saves a quantized model) or those weights replaced by
    their dequantized values in `dtype` ("dequantized"): what an engine serves. Written on first use, in a temporary
    directory renamed into place; a lock file makes concurrent callers on one machine wait for one writer."""
    if holds == "source" or kind == "none":
        return model_path
    suffix = "" if holds == "dequantized" else f"-{holds}"
    final = cache_dir / f"{Path(model_path).name}-{kind}-{dtype}{suffix}-{_source_hash(model_path)}"
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / f".{final.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also when the process dies
        if final.is_dir():
            return str(final)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=cache_dir))
        try:
            _write_served_base(model_path, kind, getattr(torch, dtype), tmp, trust_remote_code, holds)
            os.replace(tmp, final)
        except OSError:
            if not final.is_dir():  # another machine sharing this directory did not win the race
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return str(final)


def _write_served_base(
    model_path: str, kind: Quantization, dtype: torch.dtype, out_dir: Path, trust_remote_code: bool, holds: Holds
) -> None:
    quantized = load_base(model_path, kind, dtype, trust_remote_code)
    _copy_model_files(Path(model_path), out_dir)
    if holds == "quantized":
        quantized.save_pretrained(out_dir)  # the codes, scales and quantization config the learner loads
        return
    values = {name: dequantized(_weight(module)) for name, module in quantized_modules(quantized).items()}
    del quantized
    plain = load_base(model_path, "none", dtype, trust_remote_code)
    modules = dict(plain.named_modules())
    with torch.no_grad():
        for name, value in values.items():
            _weight(modules[name]).copy_(value.to(dtype))
    plain.save_pretrained(out_dir)


def _copy_model_files(source: Path, out_dir: Path) -> None:
    """The tokenizer and other files beside the weights (save_pretrained then writes the weights and config)."""
    if source.is_dir():
        for path in source.iterdir():
            if path.is_file() and not path.name.endswith(WEIGHT_FILES) and path.name != "model.safetensors.index.json":
                shutil.copy2(path, out_dir / path.name)


def _weight(module: torch.nn.Module) -> torch.Tensor:
    weight = module.weight
    assert isinstance(weight, torch.Tensor)
    return weight


def _source_hash(model_path: str) -> str:
    """Identifies the source weights: the path and its files' sizes and modification times."""
    digest = hashlib.sha256(str(Path(model_path).resolve()).encode())
    source = Path(model_path)
    if source.is_dir():
        for path in sorted(source.iterdir()):
            stat = path.stat()
            digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:10]
