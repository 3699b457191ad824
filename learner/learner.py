"""The learner: a transformers causal LM with a peft LoRA adapter, its optimiser and the GRPO update.

Runs as a Ray actor (the launcher applies `ray.remote`). The reference policy for the KL term is the same model
with the trained adapter disabled, so there is never a second copy of the weights. A ProRL reference reset copies
the trained adapter ("default") into a second adapter named "reference" on the same base model; from then on the
reference logprobs are computed with that adapter active. After every update the trained adapter is exported in
peft format as an in-memory `AdapterPayload`, which travels to the rollout workers through Ray's object store.

Logprobs are computed on logits divided by the rollout temperature, so they describe the distribution vLLM sampled
from (the engine reports processed logprobs, after temperature), and only at completion positions, a chunk of
positions at a time (learner/logprobs.py). Every pass over a batch goes in micro-batches of at most
`train.micro_batch_tokens` tokens; the loss's micro-batches accumulate gradients into one optimizer step per
minibatch, so memory follows the micro-batch, not the batch. The model sits on the actor's GPU when it has one
(`train.device`), with a low-precision base under CUDA autocast and float32 LoRA weights and optimizer state.

With `lora.mode: full` there is no adapter: the chosen modules' weights train directly (learner/subnetwork.py owns
them and their reference copy), and the export is a `WeightsPayload` of just those tensors; with `lora.use_dora` the
export is the DoRA-merged weights of the targeted modules. Engines load either in place (rollout/weights.py).

With `train.num_learners` > 1, every rank is one of these actors in a torch.distributed group (learner/distributed.py)
driven as one by learner/group.py: each computes its share of a minibatch and the gradients are summed before the step.
With `train.shard_base` the frozen base is sharded across them (FSDP2) and every rank makes the same passes.
"""

from __future__ import annotations

import io
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import torch
from peft import get_peft_model_state_dict, set_peft_model_state_dict

from learner.distributed import DataParallel, rendezvous_address, resident_base
from learner.greedy import greedy_probe
from learner.logprobs import Packed, completion_logprobs, micro_batches, pack, stack_rows
from learner.loss import LossStats, grpo_loss, loss_normaliser, merge_stats, summarise_steps
from learner.preference import train_pairs
from learner.quantized import base_bytes, load_base
from learner.subnetwork import FullRank, dora_merged, weights_payload, with_adapter
from shared.config import AlgoConfig, LoraConfig, Quantization, TrainConfig
from shared.devices import pick_device
from shared.records import (
    AdapterPayload,
    DpoStats,
    Payload,
    PreferenceBatch,
    ProbeSet,
    TrainBatch,
    TrainSample,
    TrainStats,
)

POLICY, REFERENCE = "default", "reference"
"""peft adapter names: the trained adapter and the reference snapshot."""
S = TypeVar("S")


class Learner:
    """Holds the policy (base model + LoRA), the optimiser, and the adapter version counter."""

    def __init__(
        self,
        model_path: str,
        *,
        lora: LoraConfig,
        train: TrainConfig,
        algo: AlgoConfig,
        temperature: float,
        max_new_tokens: int,
        dtype: str = "float32",
        seed: int = 0,
        trust_remote_code: bool = False,
        quantization: Quantization = "none",
    ) -> None:
        if train.num_threads:
            torch.set_num_threads(train.num_threads)
        torch.manual_seed(seed)
        self._generator = torch.Generator().manual_seed(seed)
        self._device = pick_device(train.device)
        # A sharded base moves to the device a layer shard at a time (join_group); a quantized one is placed on load.
        where = torch.device("cpu") if train.shard_base else self._device
        base = load_base(model_path, quantization, getattr(torch, dtype), trust_remote_code, where)
        self._base = base
        self._lora = lora
        # lora.mode=full: the chosen weights train directly, no adapter (learner/subnetwork.py).
        self._full = FullRank(base, lora) if lora.mode == "full" else None
        # The peft model; with lora.mode=full the bare base model (only the branches for peft use peft's API).
        self.model: Any = base if self._full else with_adapter(base, lora)
        if train.gradient_checkpointing:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        # On CUDA a low-precision base runs under autocast; on the CPU peft casts activations to the LoRA dtype.
        low = base.dtype in (torch.bfloat16, torch.float16)
        self._autocast = base.dtype if low and self._device.type == "cuda" else None
        self._train = train
        self._temperature = temperature
        self._algo = algo
        self._max_new_tokens = max_new_tokens
        self.optimizer = self._new_optimizer()
        self.version = 0
        self._dp: DataParallel | None = None
        self._base_probes: dict[tuple[tuple[tuple[int, ...], ...], int], ProbeSet] = {}
        self._train_s = 0.0
        trains = f"{self._full.parameter_count()} weights of {len(self._full.names)} tensors" if self._full else "LoRA"
        print(
            f"[learner] device {self._device}, base {base.dtype} ({quantization}), trains {trains}, micro-batches of "
            f"{train.micro_batch_tokens} tokens, gradient checkpointing {train.gradient_checkpointing}",
            flush=True,
        )

    def memory(self) -> dict[str, int]:
        """Measured bytes of the frozen base weights (all, and the linear layers'), quantized or not."""
        return base_bytes(self._base)

    def device(self) -> str:
        """Where the learner trains: "cpu" or "cuda" (or "cuda:N"), for the run's first metrics record."""
        return str(self._device)

    # ------------------------------------------------------------------------------ data-parallel group
    def rendezvous(self) -> tuple[str, int]:
        """Rank 0 of a learner group: the address and free port the group meets at."""
        return rendezvous_address()

    def join_group(self, address: str, port: int, rank: int, world: int) -> None:
        """Join a data-parallel group of `world` learners (learner/distributed.py); blocks until all have joined.
        With train.shard_base, then shard the frozen base across the group."""
        self._dp = DataParallel(address, port, rank, world, self._device)
        if self._train.shard_base:
            self._dp.shard(self._base, set(self._trainable()), self._device)
        (local, total), pid = resident_base(self._base), os.getpid()
        print(f"[learner] rank {rank} of {world} (pid {pid}) holds {local:,} of {total:,} base parameters", flush=True)

    def resident_parameters(self) -> dict[str, int]:
        """The base's parameters (no LoRA) this rank holds (`local`; 1/N of the layers' when sharded) and in all."""
        return dict(zip(("local", "total"), resident_base(self._base), strict=True))

    def timings(self) -> dict[str, float]:
        """Seconds in `train_step` and, of those, in gradient all-reduces, since the last call; resets both."""
        out = {"train_s": self._train_s, "comm_s": self._dp.comm_s if self._dp else 0.0}
        self._train_s = 0.0
        if self._dp:
            self._dp.comm_s = 0.0
        return out

    def _new_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self._trainable(), lr=self._train.lr, weight_decay=self._train.weight_decay)

    # ------------------------------------------------------------------------------------------ update
    def train_step(self, batch: TrainBatch) -> TrainStats:
        """One GRPO update on a rollout batch: `epochs` passes of `minibatches` optimiser steps each.

        A batch with no samples (every completion was left out: its reward failed under
        `rewards.failure_policy=skip_sample`, or it had no tokens) makes no update, and its stats say so
        (`optimizer_steps` 0, no `skipped_nonfinite`); the version still advances, so versions keep counting steps.
        """
        start = time.perf_counter()
        try:
            return self._train_step(batch.samples)
        finally:
            self._train_s += time.perf_counter() - start

    def _train_step(self, samples: tuple[TrainSample, ...]) -> TrainStats:
        if not samples:
            self.version += 1
            return summarise_steps([], [], skipped=0)
        if self._device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self._device)
        n_mb = min(self._train.minibatches, len(samples))
        single_pass = self._train.epochs == 1 and n_mb == 1
        # Old logprobs are computed once per batch; with a single optimiser step they equal the current ones.
        old_logp = None if single_pass else self._batch_logprobs(samples)
        ref_logp = None
        if self._algo.kl_coef or self._algo.log_kl:
            with self._reference_policy():
                ref_logp = self._batch_logprobs(samples)
        stats: list[tuple[float, LossStats]] = []
        grad_norms: list[float] = []
        self.model.train()  # LoRA dropout (lora.dropout) acts only in the loss's forward; every other pass is eval
        try:
            accumulate = partial(self._accumulate_samples, samples, old_logp, ref_logp)
            skipped = self._update(len(samples), n_mb, accumulate, stats, grad_norms)
        finally:
            self.model.eval()
        self.version += 1
        return replace(summarise_steps(stats, grad_norms, skipped), peak_memory_gib=self._release_cuda_memory())

    def _release_cuda_memory(self) -> float | None:
        """The step's peak CUDA memory in GiB (None on the CPU); then the allocator's cache goes back to the GPU,
        which an engine waking from sleep on the same GPU (rollout.sleep_level) needs."""
        if self._device.type != "cuda":
            return None
        peak = torch.cuda.max_memory_allocated(self._device) / 1024**3
        torch.cuda.empty_cache()
        return peak

    def _update(
        self,
        n_rows: int,
        n_mb: int,
        accumulate: Callable[[torch.Tensor], tuple[torch.Tensor, S]],
        stats: list[tuple[float, S]],
        grad_norms: list[float],
    ) -> int:
        """The optimiser steps of one batch of `n_rows` rows (GRPO samples or DPO pairs): `accumulate(idx)` runs the
        backward of the minibatch `idx`; appends to `stats` and `grad_norms`, returns how many steps were skipped."""
        skipped = 0
        for _ in range(self._train.epochs):
            order = torch.randperm(n_rows, generator=self._generator) if n_mb > 1 else torch.arange(n_rows)
            for idx in order.chunk(n_mb):
                self.optimizer.zero_grad(set_to_none=True)
                loss, loss_stats = accumulate(idx)
                grad_norm = torch.nn.utils.clip_grad_norm_(self._trainable(), self._train.max_grad_norm)
                if not (torch.isfinite(loss) and torch.isfinite(grad_norm)):
                    skipped += 1  # a NaN/inf update would poison the adapter: drop it, keep going
                    continue
                self.optimizer.step()
                stats.append((loss.item(), loss_stats))
                grad_norms.append(grad_norm.item())
        return skipped

    def _accumulate_samples(
        self,
        samples: tuple[TrainSample, ...],
        old_logp: list[torch.Tensor] | None,
        ref_logp: list[torch.Tensor] | None,
        idx: torch.Tensor,
    ) -> tuple[torch.Tensor, LossStats]:
        return self._accumulate([samples[i] for i in idx.tolist()], old_logp, ref_logp, idx)

    def _accumulate(
        self,
        rows: list[TrainSample],
        old_logp: list[torch.Tensor] | None,
        ref_logp: list[torch.Tensor] | None,
        idx: torch.Tensor,
    ) -> tuple[torch.Tensor, LossStats]:
        """Backward of one minibatch's loss, a micro-batch at a time; returns the minibatch loss and stats.

        Every micro-batch's loss is divided by the minibatch's normaliser, so the accumulated gradient is the
        gradient of the unsplit loss. In a learner group each rank runs its share of the rows and the gradients are
        summed across the group (learner/distributed.py).
        """
        loss_mask = [self._in_loss(r) for r in rows]
        count_B = torch.tensor(
            [len(r.completion_token_ids) if keep else 0 for r, keep in zip(rows, loss_mask, strict=True)]
        )
        normaliser = loss_normaliser(count_B, self._algo.loss_agg).item()
        total = torch.zeros((), device=self._device)
        parts: list[LossStats] = []
        for sel in self._plan(_lengths(rows)):
            if not sel:
                self._idle_pass()
                continue
            loss, loss_stats = self._loss(
                [rows[j] for j in sel], [loss_mask[j] for j in sel], old_logp, ref_logp, idx[sel], normaliser
            )
            loss.backward()
            total += loss.detach()
            parts.append(loss_stats)
        if self._dp:
            total = self._dp.sum_gradients(self._trainable(), total)
            parts = self._dp.gather_stats(parts)
        return total, merge_stats(parts)

    def _plan(self, lengths: list[int]) -> list[list[int]]:
        """The micro-batches (row indices) this learner runs: all rows, or its share (learner/distributed.py)."""
        budget = self._train.micro_batch_tokens
        return self._dp.plan(lengths, budget) if self._dp else micro_batches(lengths, budget)

    def _idle_pass(self) -> None:
        """A one-token pass that changes nothing, by which a rank with fewer rows joins a sharded base's passes."""
        logp_BC, _ = self._completion_logprobs(self._pack([TrainSample((0,), (0,), (0.0,), 0.0, 0)]), 1.0)
        if torch.is_grad_enabled():
            (logp_BC.sum() * 0.0).backward()

    def _in_loss(self, row: TrainSample) -> bool:
        return not (self._algo.mask_truncated and row.truncated)  # DAPO overlong filtering

    def _loss(
        self,
        rows: list[TrainSample],
        loss_mask: list[bool],
        old_logp: list[torch.Tensor] | None,
        ref_logp: list[torch.Tensor] | None,
        idx: torch.Tensor,
        normaliser: float,
    ) -> tuple[torch.Tensor, LossStats]:
        packed = self._pack(rows)
        # The entropy needs a graph only when it is in the loss (the bonus); otherwise it is just logged.
        logp_BC, entropy_BC = self._completion_logprobs(packed, self._temperature, bool(self._algo.entropy_coef))
        mask_BC = packed.mask_BC & torch.tensor(loss_mask, device=self._device)[:, None]
        width = logp_BC.shape[1]
        old_BC = logp_BC.detach() if old_logp is None else stack_rows(old_logp, idx, width).to(self._device)
        ref_BC = None if ref_logp is None else stack_rows(ref_logp, idx, width).to(self._device)
        sampling_BC = stack_rows([torch.tensor(r.sampling_logprobs) for r in rows], torch.arange(len(rows)), width)
        advantages_B = torch.tensor([r.advantage for r in rows], dtype=logp_BC.dtype, device=self._device)
        return grpo_loss(
            logp_BC,
            old_BC,
            ref_BC,
            sampling_BC.to(self._device),
            advantages_B,
            mask_BC,
            self._algo,
            self._max_new_tokens,
            entropy_BC,
            normaliser,
        )

    def train_pairs(self, batch: PreferenceBatch) -> DpoStats:
        """One DPO update (algo.objective=dpo): learner/preference.py."""
        return train_pairs(self, batch)

    # --------------------------------------------------------------------------------------- reference
    def reset_reference(self, reset_optimizer: bool = False) -> None:
        """ProRL reset: the reference becomes a snapshot of the current adapter; optionally a fresh optimizer.

        The snapshot is a second peft adapter on the same base model, created on the first reset and overwritten on
        later ones. Its weights never train: peft freezes an adapter that is not the active one.
        """
        if self._full:
            self._full.reset_reference()
            self.optimizer = self._new_optimizer() if reset_optimizer else self.optimizer
            return
        if REFERENCE not in self.model.peft_config:
            self.model.add_adapter(REFERENCE, self.model.peft_config[POLICY])
        weights = get_peft_model_state_dict(self.model, adapter_name=POLICY)
        set_peft_model_state_dict(self.model, weights, adapter_name=REFERENCE)
        self.model.set_adapter(POLICY)  # trainable flags: policy on, reference off
        if reset_optimizer:
            self.optimizer = self._new_optimizer()

    @contextmanager
    def _reference_policy(self) -> Iterator[None]:
        """Within this block the model computes the reference policy: the base model until the first reset, the
        reference snapshot after it."""
        if self._full:
            with self._full.reference():
                yield
            return
        if REFERENCE not in self.model.peft_config:
            with self.model.disable_adapter():
                yield
            return
        self.model.set_adapter(REFERENCE, inference_mode=True)
        try:
            yield
        finally:
            self.model.set_adapter(POLICY)

    # ---------------------------------------------------------------------------------------- logprobs
    def _pack(self, rows: Sequence[TrainSample]) -> Packed:
        return pack([r.prompt_token_ids for r in rows], [r.completion_token_ids for r in rows], self._device)

    def _completion_logprobs(
        self, packed: Packed, temperature: float, entropy_grad: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return completion_logprobs(
            self._base,
            packed,
            temperature=temperature,
            chunk=self._train.logits_chunk_tokens,
            entropy_grad=entropy_grad,
            autocast_dtype=self._autocast,
        )

    def _logprobs_no_grad(self, samples: Sequence[TrainSample], temperature: float | None = None) -> list[torch.Tensor]:
        """Per-sample completion-token logprobs (on the CPU) under whichever policy the model computes now."""
        plan = micro_batches(_lengths(samples), self._train.micro_batch_tokens)
        return [logp for _, logp in sorted(self._planned_logprobs(samples, plan, temperature).items())]

    @torch.no_grad()
    def _planned_logprobs(
        self, samples: Sequence[TrainSample], plan: list[list[int]], temperature: float | None = None
    ) -> dict[int, torch.Tensor]:
        """Completion-token logprobs (on the CPU) of the rows the micro-batches of `plan` name, by row index."""
        temperature = self._temperature if temperature is None else temperature
        out: dict[int, torch.Tensor] = {}
        for micro in plan:
            if not micro:
                self._idle_pass()
                continue
            rows = [samples[i] for i in micro]
            logp_BC, _ = self._completion_logprobs(self._pack(rows), temperature)
            for i, r, logp_C in zip(micro, rows, logp_BC.cpu(), strict=True):
                out[i] = logp_C[: len(r.completion_token_ids)]
        return out

    def _batch_logprobs(self, samples: Sequence[TrainSample]) -> list[torch.Tensor]:
        """`_logprobs_no_grad` of a training batch; in a group each rank computes its share, then all have all."""
        if self._dp is None:
            return self._logprobs_no_grad(samples)
        return self._dp.gather_rows(self._planned_logprobs(samples, self._plan(_lengths(samples))), len(samples))

    def completion_logprobs(
        self, prompt_token_ids: list[list[int]], completion_token_ids: list[list[int]], temperature: float = 1.0
    ) -> list[list[float]]:
        """Logprob of every completion token under the current adapter: the learner's side of the engine/learner
        agreement the importance-sampling correction relies on (tests compare it with the engine's logprobs)."""
        rows = [
            TrainSample(tuple(p), tuple(c), (0.0,) * len(c), 0.0, self.version)
            for p, c in zip(prompt_token_ids, completion_token_ids, strict=True)
        ]
        return [row.tolist() for row in self._logprobs_no_grad(rows, temperature)]

    # ----------------------------------------------------------------------------------------- adapter
    def export_adapter(self, probe_prompt_ids: list[list[int]] | None = None, probe_tokens: int = 4) -> Payload:
        """The current adapter in peft format, as bytes (adapter_config.json + adapter_model.safetensors).

        With `probe_prompt_ids`, the payload also carries this adapter's greedy continuation of each prompt
        (`probe_tokens` long, EOS ignored) and its logprobs: the served-adapter probe's expectation, pinned to this
        version whatever the learner does next. With lora.mode=full or lora.use_dora it is a WeightsPayload of the
        trained (or DoRA-merged) tensors instead, which engines load in place.
        """
        probe = self._probe(probe_prompt_ids, probe_tokens)
        if self._full or self._lora.use_dora:
            tensors = self._full.tensors() if self._full else dora_merged(self._base, POLICY)
            return weights_payload(self.version, tensors, probe)
        with tempfile.TemporaryDirectory(prefix="prolora-export-") as tmp:
            self.model.save_pretrained(tmp, selected_adapters=[POLICY])
            files = AdapterPayload.read(Path(tmp), self.version).files
        return AdapterPayload(version=self.version, files=files, probe=probe)

    def _probe(self, prompt_ids: list[list[int]] | None, n_tokens: int) -> ProbeSet | None:
        """The served-adapter probe's expectation for the current adapter (None without prompts), with what an
        engine serving no adapter would decode, to name that case."""
        if not prompt_ids:
            return None
        probe = greedy_probe(self._base, prompt_ids, n_tokens, self._device, self._autocast)
        if self._full:
            return probe
        base = self.base_probe(prompt_ids, n_tokens)
        return replace(probe, base_token_ids=base.token_ids, base_logprobs=base.logprobs)

    def base_probe(self, prompt_ids: list[list[int]], n_tokens: int = 4) -> ProbeSet:
        """The greedy continuation of each prompt under the base model (adapter off) and its logprobs: compared at
        start with an engine serving no adapter, it measures the engine's numerics on this model. The base is frozen,
        so each prompt set is decoded once per learner, not on every export (with a sharded base every rank gets
        the same calls, so their caches agree and their passes stay in lockstep)."""
        key = (tuple(map(tuple, prompt_ids)), n_tokens)
        if key not in self._base_probes:
            with self._full.base() if self._full else self.model.disable_adapter():
                self._base_probes[key] = greedy_probe(self._base, prompt_ids, n_tokens, self._device, self._autocast)
        return self._base_probes[key]

    def current_version(self) -> int:
        return self.version

    # -------------------------------------------------------------------------------------- checkpoint
    def state(self) -> bytes:
        """Everything a resumed run needs to continue exactly: adapter, reference snapshot, optimiser, RNG states,
        version."""
        buffer = io.BytesIO()
        has_reference = not self._full and REFERENCE in self.model.peft_config
        adapter = self._full.state() if self._full else get_peft_model_state_dict(self.model, adapter_name=POLICY)
        torch.save(
            {
                "adapter": adapter,
                "reference": get_peft_model_state_dict(self.model, adapter_name=REFERENCE) if has_reference else None,
                "optimizer": self.optimizer.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "generator": self._generator.get_state(),
                "version": self.version,
            },
            buffer,
        )
        return buffer.getvalue()

    def load_state(self, blob: bytes) -> int:
        """Restore a state written by `state()`; returns the adapter version."""
        state = torch.load(io.BytesIO(blob), weights_only=False, map_location=self._device)
        if self._full:
            self._full.load_state(state["adapter"])
        else:
            set_peft_model_state_dict(self.model, state["adapter"], adapter_name=POLICY)
        if state["reference"] is not None:
            if REFERENCE not in self.model.peft_config:
                self.model.add_adapter(REFERENCE, self.model.peft_config[POLICY])
            set_peft_model_state_dict(self.model, state["reference"], adapter_name=REFERENCE)
            self.model.set_adapter(POLICY)
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"].cpu())
        self._generator.set_state(state["generator"].cpu())
        self.version = state["version"]
        return self.version

    def _trainable(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]


def _lengths(rows: Sequence[TrainSample]) -> list[int]:
    return [len(r.prompt_token_ids) + len(r.completion_token_ids) for r in rows]
