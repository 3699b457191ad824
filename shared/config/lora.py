"""The `lora` section: what trains (which modules, in which layers) and how (LoRA, DoRA, or the weights themselves).

Two ways to serve what the learner trains. Plain LoRA travels as a peft adapter that every engine hot-loads. A DoRA
adapter (vLLM serves only plain LoRA) and a full-rank subnetwork (`mode: full`) travel as the trained modules' weights,
which every engine loads in place over its base weights (rollout/weights.py). An engine holds one such version at a
time, so those runs need synchronous rollouts (rollout.max_staleness = 0).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from shared.config.base import Section

TrainMode = Literal["lora", "full"]
"""lora: low-rank adapters on the chosen modules; full: the chosen modules' weights train directly (full rank)."""


class LoraConfig(Section):
    mode: TrainMode = "lora"
    """What trains on the chosen modules (target_modules in layers): `lora` trains rank-r adapters (served as a peft
    adapter, or with use_dora as merged weights); `full` trains the modules' weight matrices themselves, full rank and
    no adapter, and after every update pushes just those tensors into every engine in place. Pick a subnetwork from a
    pilot run with `prolora inspect RUN_DIR --pick-top 0.2`."""
    rank: int = Field(8, ge=1)
    """LoRA rank r (mode lora)."""
    alpha: float = 16.0
    """LoRA scaling numerator (scale = alpha / rank)."""
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: str | list[str] = "all-linear"
    """The modules that train: "all-linear" (every linear layer but the output head), or a list of module names (the
    last part, e.g. q_proj, or a longer suffix such as self_attn.q_proj, or a full path such as
    model.layers.3.mlp.down_proj)."""
    layers: list[int] | None = None
    """Decoder layer indices whose target modules train (e.g. [0, 2]); None: every layer. A module outside the layer
    stack never matches when this is set."""
    use_dora: bool = False
    """DoRA (weight-decomposed LoRA; mode lora). vLLM cannot serve DoRA adapters, so each update pushes the targeted
    modules' merged weights (peft's merge) into every engine in place; the served-weights probe checks them."""

    def pushes_weights(self) -> bool:
        """Whether updates reach the engines as weights loaded in place (not as a hot-loaded adapter)."""
        return self.mode == "full" or self.use_dora


def check_lora(lora: LoraConfig, max_staleness: int, sleep_level: int = 0) -> None:
    """Raise ValueError for combinations no run can serve."""
    if lora.mode == "full" and lora.use_dora:
        raise ValueError("lora.use_dora applies to lora.mode=lora; lora.mode=full trains the weights, no adapter")
    if lora.pushes_weights() and max_staleness > 0:
        what = "lora.mode=full" if lora.mode == "full" else "lora.use_dora=true"
        raise ValueError(
            f"{what} serves updates as weights loaded in place, and an engine holds one weight version at a time, "
            f"so rollout.max_staleness={max_staleness} (batches from older versions) cannot be served: set "
            f"rollout.max_staleness=0"
        )
    if lora.pushes_weights() and sleep_level:
        raise ValueError(
            f"rollout.sleep_level={sleep_level} with weights loaded in place (lora.mode=full or lora.use_dora) has not "
            "been checked: an engine's sleep offloads and restores the weights vLLM loaded at start, and whether it "
            "keeps weights rebuilt by an in-place load is untested. Set rollout.sleep_level=0"
        )
    if lora.layers is not None and (not lora.layers or min(lora.layers) < 0):
        raise ValueError(f"lora.layers must list layer indices >= 0 (got {lora.layers}); leave it unset for all")
