"""Training and exporting what reaches the engines as weights: a full-rank subnetwork, or DoRA's merged weights.

`lora.mode: full` trains the weight matrices of the chosen modules (`lora.target_modules` in `lora.layers`) directly,
every other parameter frozen; there is no adapter. `FullRank` owns those tensors: which they are, a frozen copy of
them as the KL reference (the base values until a ProRL reset copies the current ones), and their values for the
checkpoint. `lora.use_dora` keeps peft's DoRA adapter in the learner, but vLLM cannot serve it, so `dora_merged`
computes each targeted module's merged weight W' with peft's own merge (the DoRA variant's `merge_safe`, which leaves
the model untouched). Either way the payload is a `WeightsPayload` holding only those tensors, under the base model's
Hugging Face parameter names, which every engine loads in place (rollout/weights.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model
from safetensors.torch import save
from transformers import PreTrainedModel

from learner.update_map import split_module_name
from shared.config import LoraConfig
from shared.errors import UserError
from shared.records import ProbeSet, WeightsPayload


def module_matches(name: str, target_modules: str | list[str], layers: list[int] | None) -> bool:
    """Whether the linear module at path `name` is chosen, with peft's reading of target_modules: a list matches a
    name exactly or as a dotted suffix, a string other than "all-linear" is a regex the whole name must match."""
    if layers is not None and split_module_name(name)[0] not in layers:
        return False
    if target_modules == "all-linear":
        return True
    if isinstance(target_modules, str):
        return re.fullmatch(target_modules, name) is not None
    return any(name == t or name.endswith("." + t) for t in target_modules)


def chosen_modules(model: torch.nn.Module, lora: LoraConfig) -> list[str]:
    """Paths of the linear modules that train (the output head never does), in model order."""
    head = model.get_output_embeddings() if isinstance(model, PreTrainedModel) else None
    names = [
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
        and module is not head
        and module_matches(name, lora.target_modules, lora.layers)
    ]
    if not names:
        raise UserError(
            f"lora.target_modules={lora.target_modules!r} with lora.layers={lora.layers} chooses no linear module of "
            f"this model; its linear modules are e.g. {_examples(model)}"
        )
    return names


class FullRank:
    """The chosen modules' weights of a model that trains them directly; everything else is frozen."""

    def __init__(self, model: torch.nn.Module, lora: LoraConfig) -> None:
        self.model = model
        self.names = tuple(f"{m}.weight" for m in chosen_modules(model, lora))
        params = dict(model.named_parameters())
        for p in model.parameters():
            p.requires_grad_(False)
        self.params = {n: params[n] for n in self.names}
        for p in self.params.values():
            p.requires_grad_(True)
        self._reference = {n: p.detach().clone() for n, p in self.params.items()}
        self._base = self._reference  # the base values: the same tensors until a reset gives the reference new ones

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.params.values())

    @torch.no_grad()
    def tensors(self) -> dict[str, torch.Tensor]:
        """The current values, on the CPU."""
        return {n: p.detach().to("cpu", copy=True).contiguous() for n, p in self.params.items()}

    def reference(self) -> AbstractContextManager[None]:
        """Within this block the model computes the reference policy (its weights swapped in, then back)."""
        return self._swapped(self._reference)

    def base(self) -> AbstractContextManager[None]:
        """Within this block the model computes the base model (the chosen weights' values before training)."""
        return self._swapped(self._base)

    @contextmanager
    @torch.no_grad()
    def _swapped(self, values: dict[str, torch.Tensor]) -> Iterator[None]:
        current = {n: p.detach().clone() for n, p in self.params.items()}
        try:
            for n, p in self.params.items():
                p.copy_(values[n])
            yield
        finally:
            for n, p in self.params.items():
                p.copy_(current[n])

    @torch.no_grad()
    def reset_reference(self) -> None:
        """ProRL reset: the reference becomes the current weights."""
        self._reference = {n: p.detach().clone() for n, p in self.params.items()}

    def state(self) -> dict[str, dict[str, torch.Tensor]]:
        return {"weights": self.tensors(), "reference": {n: t.cpu() for n, t in self._reference.items()}}

    @torch.no_grad()
    def load_state(self, state: dict[str, dict[str, torch.Tensor]]) -> None:
        if set(state["weights"]) != set(self.names):
            raise UserError(
                f"the checkpoint trained {sorted(state['weights'])[:4]}..., this run chooses {list(self.names)[:4]}"
                "...: lora.target_modules / lora.layers changed since it was written"
            )
        for n, p in self.params.items():
            p.copy_(state["weights"][n])
        self._reference = {n: state["reference"][n].to(p.device) for n, p in self.params.items()}


@torch.no_grad()
def dora_merged(model: torch.nn.Module, adapter: str) -> dict[str, torch.Tensor]:
    """W' of every DoRA-adapted module of `model` (a peft model's base model), by peft's DoRA merge, on the CPU and
    in the base weight's dtype, keyed by the base model's parameter name."""
    from peft.tuners.lora import LoraLayer

    merged = {}
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and adapter in module.lora_variant:
            weight: torch.Tensor = module.get_base_layer().weight  # type: ignore[assignment]  # a Linear's
            merged_OI = module.lora_variant[adapter].merge_safe(module, adapter, weight.data.clone())
            merged[f"{name}.weight"] = merged_OI.to(weight.dtype).cpu().contiguous()
    if not merged:
        raise RuntimeError("lora.use_dora is set but the model has no DoRA-adapted module")
    return merged


def weights_payload(version: int, tensors: dict[str, torch.Tensor], probe: ProbeSet | None) -> WeightsPayload:
    """A WeightsPayload of `tensors` (base-model parameter name -> value)."""
    names = tuple(sorted(tensors))
    return WeightsPayload(version, names, save({n: tensors[n] for n in names}), probe)


def _examples(model: torch.nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)][:6]


def with_adapter(base: torch.nn.Module, lora: LoraConfig) -> PeftModel:
    """`base` with a trainable LoRA (or DoRA) adapter named "default" (the learner's POLICY) on the chosen modules."""
    peft_config = PeftLoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,  # type: ignore[arg-type]  # peft annotates int; the scale alpha/r takes a float
        lora_dropout=lora.dropout,
        # With lora.layers, the chosen modules by full path (peft takes no layer list beside "all-linear" or a regex).
        target_modules=lora.target_modules if lora.layers is None else chosen_modules(base, lora),
        use_dora=lora.use_dora,
        task_type="CAUSAL_LM",
    )
    # autocast_adapter_dtype: LoRA weights (and so the optimizer state) stay float32 on a bfloat16 base.
    return get_peft_model(base, peft_config, autocast_adapter_dtype=True)
