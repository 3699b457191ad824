"""Records that cross actor boundaries.

Everything the driver sends to or receives from a rollout worker, the learner or a reward actor is one of these
frozen dataclasses. Ray pickles them; nothing crosses as a bag of string keys. Sequences are tuples so a record
cannot be changed after it is made.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.errors import UserError

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
"""A peft LoRA adapter directory: what `save_pretrained` writes and peft and vLLM both load."""


@dataclass(frozen=True)
class SamplingSpec:
    """How a rollout worker samples one group per prompt."""

    n: int
    """Completions per prompt (the GRPO group size)."""
    max_tokens: int
    """Maximum completion length in tokens."""
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    """Per-request seed; the worker derives one seed per prompt from it so results do not depend on batching."""
    min_tokens: int = 0
    """EOS is suppressed until a completion has this many tokens (0: off; fixed-length benchmarks)."""
    stop: tuple[str, ...] = ()
    """Strings that end a completion (rollout.stop), besides the model's EOS ids, which a worker always stops at."""


@dataclass(frozen=True)
class Prompt:
    """A prompt as the engine gets it: the rendered text and its token ids (shared/chat.py renders them)."""

    text: str
    token_ids: tuple[int, ...]
    messages: tuple[dict[str, Any], ...] | None = None
    """The chat messages it was rendered from (system prompt included); None for a plain string prompt."""


@dataclass(frozen=True)
class Completion:
    """One sampled completion and how it was produced."""

    text: str
    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    """Sampling logprob of every generated token under the engine's policy (same length as token_ids)."""
    finish_reason: str
    """"stop" (EOS or stop string) or "length" (hit max_tokens)."""
    adapter_version: int
    """Adapter version that generated it; 0 is the base model without an adapter."""


@dataclass(frozen=True)
class Group:
    """The n completions of one prompt."""

    prompt: str
    """The prompt text the model read (the chat template's output for messages)."""
    prompt_token_ids: tuple[int, ...]
    completions: tuple[Completion, ...]
    messages: tuple[dict[str, Any], ...] | None = None
    """The chat messages the prompt was rendered from; None for a plain string prompt."""


@dataclass(frozen=True)
class GenerateTiming:
    """Where a rollout worker's `generate` calls spent their time, summed over the calls so far (`prolora bench`
    subtracts two readings to get one round's)."""

    calls: int = 0
    engine_s: float = 0.0
    """Wall time inside vLLM's `LLM.generate`: scheduling, the model, sampling, detokenizing."""
    engine_cpu_s: float = 0.0
    """CPU time the worker's process used meanwhile (all its threads): the work itself, which other processes
    competing for the cores do not inflate as they do wall time."""
    convert_s: float = 0.0
    """Turning the engine's outputs into Group/Completion records."""
    tokens: int = 0
    """Completion tokens returned."""

    def add(self, engine_s: float, engine_cpu_s: float, convert_s: float, tokens: int) -> GenerateTiming:
        return GenerateTiming(
            self.calls + 1,
            self.engine_s + engine_s,
            self.engine_cpu_s + engine_cpu_s,
            self.convert_s + convert_s,
            self.tokens + tokens,
        )

    def since(self, earlier: GenerateTiming) -> GenerateTiming:
        """The calls made after `earlier` was read."""
        return GenerateTiming(
            self.calls - earlier.calls,
            self.engine_s - earlier.engine_s,
            self.engine_cpu_s - earlier.engine_cpu_s,
            self.convert_s - earlier.convert_s,
            self.tokens - earlier.tokens,
        )


@dataclass(frozen=True)
class AdapterPayload:
    """A peft LoRA adapter held in memory, so it can travel through Ray's object store (no shared filesystem).

    `files` maps a file name of a peft adapter directory (adapter_config.json, adapter_model.safetensors) to its
    bytes; writing them into an empty directory gives a directory peft and vLLM both load.
    """

    version: int
    files: tuple[tuple[str, bytes], ...]
    probe: ProbeSet | None = None
    """Token sequences scored by the learner under exactly this version; an engine loading it scores them too."""

    @classmethod
    def read(cls, path: Path, version: int, probe: ProbeSet | None = None) -> AdapterPayload:
        """The adapter directory at `path` as a payload with version id `version`."""
        missing = [f for f in ADAPTER_FILES if not (path / f).is_file()]
        if missing:
            raise UserError(f"{path} is not a peft adapter directory (missing {', '.join(missing)})")
        return cls(version, tuple((f, (path / f).read_bytes()) for f in ADAPTER_FILES), probe)

    def write(self, path: Path) -> None:
        """Write the adapter files into directory `path` (created if needed)."""
        path.mkdir(parents=True, exist_ok=True)
        for name, data in self.files:
            (path / name).write_bytes(data)


@dataclass(frozen=True)
class WeightsPayload:
    """Base-model weights that replace the engines' own in place: a full-rank subnetwork's trained tensors
    (lora.mode=full) or a DoRA adapter's merged weights W' of its targeted modules (lora.use_dora).

    `tensors` is a safetensors blob (`safetensors.torch.save`) keyed by the Hugging Face parameter names of the base
    model (e.g. model.layers.1.self_attn.k_proj.weight), each the complete current value of that tensor (not a
    difference from the last version), so loading the newest payload over the base weights alone gives the trained
    model. Only the chosen tensors travel; an engine keeps every other weight as it is.
    """

    version: int
    names: tuple[str, ...]
    """The tensors in `tensors`, sorted."""
    tensors: bytes
    probe: ProbeSet | None = None
    """As for AdapterPayload: the learner's greedy tokens and logprobs under exactly these weights."""

    FILE = "weights.safetensors"

    @classmethod
    def read(cls, path: Path, version: int) -> WeightsPayload:
        """The weights directory at `path` (as `write` leaves it) as a payload with version id `version`."""
        file = path / cls.FILE
        if not file.is_file():
            raise UserError(f"{path} holds no trained weights (missing {cls.FILE})")
        data = file.read_bytes()
        # A safetensors file opens with the 8-byte little-endian length of its JSON header, which names the tensors.
        header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
        return cls(version, tuple(sorted(n for n in header if n != "__metadata__")), data)

    def write(self, path: Path) -> None:
        """Write the tensors as `weights.safetensors` into directory `path` (created if needed)."""
        path.mkdir(parents=True, exist_ok=True)
        (path / self.FILE).write_bytes(self.tensors)


Payload = AdapterPayload | WeightsPayload
"""What a learner publishes after an update and every rollout worker loads."""


def is_adapter_dir(path: Path) -> bool:
    """Whether `path` holds a peft adapter (its config file at least)."""
    return (path / ADAPTER_FILES[0]).is_file()


def is_weights_dir(path: Path) -> bool:
    """Whether `path` holds a saved WeightsPayload (a weight-push run's trained tensors)."""
    return (path / WeightsPayload.FILE).is_file()


def is_saved_update(path: Path) -> bool:
    """Whether `path` holds what a run publishes: a peft adapter or a weights payload."""
    return is_adapter_dir(path) or is_weights_dir(path)


@dataclass(frozen=True)
class ProbeSet:
    """The served-adapter probe's expectation, pinned to one adapter version (rollout/probe.py): the learner's greedy
    continuation of each prompt under that version, with the (temperature-1) logprob of every token it chose."""

    prompt_token_ids: tuple[tuple[int, ...], ...]
    token_ids: tuple[tuple[int, ...], ...]
    logprobs: tuple[tuple[float, ...], ...]
    base_token_ids: tuple[tuple[int, ...], ...] | None = None
    """The learner's greedy continuation of the same prompts under the base model (adapter off), with
    `base_logprobs`: an engine that matches these and not the version's serves no adapter at all."""
    base_logprobs: tuple[tuple[float, ...], ...] | None = None


@dataclass(frozen=True)
class HotLoad:
    """What a rollout worker reports after loading an adapter version."""

    version: int
    load_ms: float
    """Wall time of the load itself (files written, adapter registered with the engine)."""
    probe_token_ids: tuple[tuple[int, ...], ...] | None = None
    """The engine's greedy continuation of each probe prompt under the loaded version (None: no probe sent)."""
    probe_logprobs: tuple[tuple[float, ...], ...] | None = None


@dataclass(frozen=True)
class TrainSample:
    """One completion as the learner trains on it."""

    prompt_token_ids: tuple[int, ...]
    completion_token_ids: tuple[int, ...]
    sampling_logprobs: tuple[float, ...]
    advantage: float
    adapter_version: int
    truncated: bool = False
    """True when the completion hit max_tokens without finishing."""


@dataclass(frozen=True)
class TrainBatch:
    """One rollout batch for one learner update (possibly several optimisation passes)."""

    samples: tuple[TrainSample, ...]
    step: int


@dataclass(frozen=True)
class TrainStats:
    """What one learner update measured. Means are over completion tokens unless noted."""

    loss: float
    """Mean loss over the optimiser steps."""
    kl: float | None
    """Mean k-estimate of KL(policy || reference) per token; None when not measured (algo.log_kl off, kl_coef 0)."""
    entropy: float
    """Mean token entropy of the policy."""
    clip_frac: float
    """Fraction of tokens whose ratio was clipped (either side)."""
    clip_frac_low: float
    """Fraction of tokens with a negative advantage clipped at 1 - clip_low."""
    clip_frac_high: float
    """Fraction of tokens with a positive advantage clipped at 1 + clip_high."""
    grad_norm: float
    """Gradient norm before clipping (mean over optimiser steps)."""
    is_ratio_mean: float
    """Mean truncated importance weight p_learner_old / p_sampler (1.0 when off)."""
    is_ratio_max: float
    """Largest truncated importance weight of the update."""
    mismatch_kl: float
    """Mean token KL between the sampler's and the learner's distributions (k3 on the sampled tokens)."""
    optimizer_steps: int
    """Optimiser steps taken (0: the batch had nothing to train on)."""
    skipped_nonfinite: int = 0
    """Optimiser steps skipped because the loss or gradient was not finite."""
    peak_memory_gib: float | None = None
    """The learner's peak CUDA memory during the update (torch.cuda.max_memory_allocated); None on the CPU."""


@dataclass(frozen=True)
class PreferencePair:
    """One DPO training pair: a rendered prompt and two completions of it, as token ids (each completion ends with the
    model's EOS, as a sampled one that stopped does)."""

    prompt_token_ids: tuple[int, ...]
    chosen_token_ids: tuple[int, ...]
    rejected_token_ids: tuple[int, ...]


@dataclass(frozen=True)
class PreferenceBatch:
    """The pairs of one DPO step (algo.objective=dpo)."""

    pairs: tuple[PreferencePair, ...]
    step: int


@dataclass(frozen=True)
class DpoStats:
    """What one DPO update measured; the implicit rewards are beta x (policy - reference) summed log-ratios, as TRL
    logs them. Means are over pairs."""

    loss: float
    """Mean loss over the optimiser steps."""
    pref_accuracy: float
    """Fraction of pairs whose chosen completion has the higher implicit reward."""
    pref_margin: float
    """Mean implicit reward of chosen minus rejected."""
    chosen_reward: float
    """Mean implicit reward of the chosen completions."""
    rejected_reward: float
    """Mean implicit reward of the rejected completions."""
    grad_norm: float
    """Gradient norm before clipping (mean over optimiser steps)."""
    optimizer_steps: int
    """Optimiser steps taken."""
    skipped_nonfinite: int = 0
    """Optimiser steps skipped because the loss or gradient was not finite."""


@dataclass(frozen=True)
class RewardBatch:
    """Completions to score, with the data set's other columns (one value per completion).

    A prompt is a string, or the chat messages it was rendered from (conversational data); the reward actor then
    hands rewards the completions as TRL does, `[{"role": "assistant", "content": text}]` each.
    """

    prompts: tuple[str | tuple[dict[str, Any], ...], ...]
    completions: tuple[str, ...]
    """Raw completion text."""
    columns: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    completion_ids: tuple[tuple[int, ...], ...] | None = None
    """Generated token ids of every completion (TRL's `completion_ids`); None: not known (scoring a file)."""
    step: int = 0
    """The GRPO step the completions are for (rewards see it as `trainer_state.global_step`)."""
    max_steps: int = 0


@dataclass(frozen=True)
class RewardScores:
    """Scores of a RewardBatch.

    `total[i]` is the weighted sum of the components that apply to completion i; None when the failure policy
    `skip_sample` dropped it. `components[name][i]` is the raw value of each reward (None where it does not apply
    or failed). `failures[name]` counts calls that raised or timed out.
    """

    total: tuple[float | None, ...]
    components: dict[str, tuple[float | None, ...]]
    failures: dict[str, int] = field(default_factory=dict)
    logged_metrics: dict[str, float] = field(default_factory=dict)
    """Scalars rewards reported with `log_metric(name, value)` (mean of a batch's calls)."""
    logged_columns: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    """Per-completion values rewards reported with `log_extra(column, values)` (None where a shard had none)."""
