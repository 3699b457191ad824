"""Where an RL run moves the model: the LoRA update of each adapted module measured against its base weight.

Pure functions of tensors (no Ray, no files), so `prolora inspect`, `prolora report` and tests share one computation.
For a module with base weight W (out x in) and LoRA factors A (r x in), B (out x r) at scale s, the update is
Δ = s·B·A, computed as `(B @ A) * s` in float32, the order peft's `merge_and_unload` uses, so a bfloat16 merge here
rounds exactly as peft's float32 merge cast to bfloat16 does. Per module:

- `relative_norm`: ||Δ||_F / ||W||_F, the update's size against the weight it modifies;
- `effective_rank`: Roy & Vetterli's effective rank, exp of the Shannon entropy of the singular values normalised to
  sum to one (between 1 and r for a non-zero update; 0 for an all-zero one). It says over how many directions the
  update spreads, which a rank-r adapter caps at r;
- `bf16_changed`: the fraction of W's entries that a bfloat16 merge changes, bf16(W + Δ) != bf16(W). Updates below
  half a bfloat16 step of an entry vanish in a bf16 model;

A run that trains weights in place (lora.mode=full, or DoRA's merged W') saves each module's trained weight W'
itself (`DenseWeight`): there Δ = W' - W, its singular values come from the SVD of the out x in difference, and the
merge is bf16(W') itself.

Between two checkpoints of the same base, `unchanged`: the fraction of entries equal in both bfloat16 merges, the
update-sparsity measure of "Reinforcement Learning Finetunes Small Subnetworks in Large Language Models" (Mukherjee
et al., 2025). The base model itself is a checkpoint with no factors.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

_LAYER = re.compile(r"(?:^|\.)(?:layers|h|blocks|layer)\.(\d+)\.")


@dataclass(frozen=True)
class LoraFactors:
    """One module's LoRA factors: A_RI (rank x in), B_OR (out x rank) and the scale s in Δ = s·B·A."""

    A_RI: torch.Tensor
    B_OR: torch.Tensor
    scale: float


@dataclass(frozen=True)
class DenseWeight:
    """One module's trained weight W'_OI itself (a weight-push run's checkpoint); its update is W' - W."""

    W_OI: torch.Tensor


Update = LoraFactors | DenseWeight
"""How a checkpoint holds one module's update."""


@dataclass(frozen=True)
class ModuleUpdate:
    """One module's update in one checkpoint (see the module docstring for the measures)."""

    name: str
    """The module's path in the base model, e.g. model.layers.3.self_attn.q_proj (its weight is name + '.weight')."""
    layer: int | None
    """Decoder layer index, None for a module outside the layer stack."""
    module: str
    """The path inside its layer, e.g. self_attn.q_proj."""
    entries: int
    rank: int
    """The adapter's rank r; for a dense update, min(out, in)."""
    delta_norm: float
    weight_norm: float
    relative_norm: float
    effective_rank: float
    bf16_changed: float


@dataclass(frozen=True)
class Checkpoint:
    """A named adapter (or saved weights) over the base model: module name -> its update (a module it lacks is
    unchanged)."""

    name: str
    factors: Mapping[str, Update]


@dataclass(frozen=True)
class Unchanged:
    """Entries equal in the bfloat16 merges of two checkpoints, over the modules either of them adapts."""

    before: str
    after: str
    per_module: dict[str, float]
    """Module name -> fraction of its entries unchanged."""
    unchanged_entries: int
    entries: int

    @property
    def fraction(self) -> float:
        return self.unchanged_entries / self.entries if self.entries else 1.0


@dataclass(frozen=True)
class UpdateMap:
    checkpoints: dict[str, list[ModuleUpdate]]
    """Checkpoint name -> one row per adapted module, in module order."""
    unchanged: list[Unchanged]
    """Between consecutive checkpoints, in the order given."""


def lora_scale(alpha: float, rank: int, use_rslora: bool = False) -> float:
    """peft's scaling: alpha / r, or alpha / sqrt(r) with rsLoRA."""
    return alpha / math.sqrt(rank) if use_rslora else alpha / rank


def adapter_factors(
    weights: Mapping[str, torch.Tensor], alpha: float, use_rslora: bool = False
) -> dict[str, LoraFactors]:
    """Module path -> factors from a saved peft adapter's tensors (`base_model.model.<module>.lora_A.weight` and
    `.lora_B.weight`); each module's rank is its A's row count."""
    factors = {}
    for key, A_RI in weights.items():
        if not key.endswith(".lora_A.weight"):
            continue
        module = key.removesuffix(".lora_A.weight").removeprefix("base_model.model.")
        B_OR = weights.get(key.replace(".lora_A.", ".lora_B."))
        if B_OR is None:
            raise ValueError(f"{key} has no matching lora_B weight")
        factors[module] = LoraFactors(A_RI, B_OR, lora_scale(alpha, A_RI.shape[0], use_rslora))
    return factors


def split_module_name(name: str) -> tuple[int | None, str]:
    """(layer index, path inside the layer) of a module path; (None, name) outside a numbered layer stack."""
    match = _LAYER.search(name)
    if match is None:
        return None, name
    return int(match.group(1)), name[match.end() :]


def delta_weight(factors: LoraFactors) -> torch.Tensor:
    """Δ_OI = (B @ A) * s in float32."""
    return (factors.B_OR.float() @ factors.A_RI.float()) * factors.scale


def singular_values(factors: LoraFactors) -> torch.Tensor:
    """The non-zero part of Δ's spectrum from the r x r core: with B = Q_B R_B and Aᵀ = Q_A R_A, Δ = s Q_B (R_B R_Aᵀ)
    Q_Aᵀ, so Δ has the singular values of s R_B R_Aᵀ, without the SVD of an out x in matrix."""
    _, R_B = torch.linalg.qr(factors.B_OR.double())
    _, R_A = torch.linalg.qr(factors.A_RI.double().T)
    return torch.linalg.svdvals(factors.scale * R_B @ R_A.T)


def effective_rank(sigma: torch.Tensor) -> float:
    """exp(H(p)) with p = σ / Σσ (Roy & Vetterli, 2007); 0 when every σ is 0."""
    total = sigma.sum()
    if total <= 0:
        return 0.0
    p = sigma / total
    p = p[p > 0]
    return math.exp(float(-(p * p.log()).sum()))


def bf16_merge(W_OI: torch.Tensor, delta_OI: torch.Tensor | None) -> torch.Tensor:
    """bf16(W + Δ), the sum taken in float32 (bf16(W) when there is no update)."""
    if delta_OI is None:
        return W_OI.to(torch.bfloat16)
    return (W_OI.float() + delta_OI).to(torch.bfloat16)


def module_update(name: str, W_OI: torch.Tensor, factors: Update) -> ModuleUpdate:
    """The measures of one module's update against its base weight."""
    base_OI = bf16_merge(W_OI, None)
    return _measured(name, W_OI, _frobenius(W_OI), factors, _merged(name, W_OI, factors), base_OI)


def _merged(name: str, W_OI: torch.Tensor, update: Update) -> torch.Tensor:
    """The bfloat16 weight a checkpoint serves: bf16(W + s·B·A), or bf16(W') for a dense one."""
    new_OI = update.W_OI if isinstance(update, DenseWeight) else delta_weight(update)
    if new_OI.shape != W_OI.shape:
        raise ValueError(f"{name}: update {tuple(new_OI.shape)} does not match base weight {tuple(W_OI.shape)}")
    return new_OI.to(torch.bfloat16) if isinstance(update, DenseWeight) else bf16_merge(W_OI, new_OI)


def _frobenius(W_OI: torch.Tensor) -> float:
    return float(torch.linalg.norm(W_OI.double()))


def _measured(
    name: str,
    W_OI: torch.Tensor,
    weight_norm: float,
    factors: Update,
    merged_OI: torch.Tensor,
    base_OI: torch.Tensor,
) -> ModuleUpdate:
    # ||Δ||_F² is the sum of the squared singular values, so the spectrum gives both measures in float64 (for an
    # adapter from its r x r core, without forming Δ).
    if isinstance(factors, DenseWeight):
        sigma, rank = torch.linalg.svdvals(factors.W_OI.double() - W_OI.double()), min(W_OI.shape)
    else:
        sigma, rank = singular_values(factors), factors.A_RI.shape[0]
    delta_norm = float(sigma.square().sum().sqrt())
    layer, module = split_module_name(name)
    return ModuleUpdate(
        name=name,
        layer=layer,
        module=module,
        entries=W_OI.numel(),
        rank=rank,
        delta_norm=delta_norm,
        weight_norm=weight_norm,
        relative_norm=delta_norm / weight_norm if weight_norm else math.inf,
        effective_rank=effective_rank(sigma),
        bf16_changed=int(torch.count_nonzero(merged_OI != base_OI)) / W_OI.numel(),
    )


def unchanged_entries(W_OI: torch.Tensor, before: Update | None, after: Update | None) -> int:
    """How many entries of W are equal in the bfloat16 merges of two checkpoints (None: that one leaves W as is)."""
    merged_before = bf16_merge(W_OI, None) if before is None else _merged("", W_OI, before)
    merged_after = bf16_merge(W_OI, None) if after is None else _merged("", W_OI, after)
    return W_OI.numel() - int(torch.count_nonzero(merged_before != merged_after))


def map_checkpoints(base: Mapping[str, torch.Tensor], checkpoints: Sequence[Checkpoint]) -> UpdateMap:
    """Every checkpoint's per-module updates, and the unchanged fraction between consecutive ones.

    `base` maps a module's weight name (module path + '.weight') to the tensor; it is read once per module, so a
    lazily loading mapping keeps one base weight in memory at a time.
    """
    modules = sorted({m for c in checkpoints for m in c.factors}, key=_module_order)
    rows: dict[str, list[ModuleUpdate]] = {c.name: [] for c in checkpoints}
    pairs = list(zip(checkpoints, checkpoints[1:], strict=False))
    same: list[dict[str, float]] = [{} for _ in pairs]
    totals = [[0, 0] for _ in pairs]
    for name in modules:
        W_OI = base[f"{name}.weight"]
        base_OI, weight_norm = bf16_merge(W_OI, None), _frobenius(W_OI)
        previous_OI = None
        for i, checkpoint in enumerate(checkpoints):
            factors = checkpoint.factors.get(name)
            merged_OI = base_OI
            if factors is not None:
                merged_OI = _merged(name, W_OI, factors)
                rows[checkpoint.name].append(_measured(name, W_OI, weight_norm, factors, merged_OI, base_OI))
            if previous_OI is not None:  # each merge is made once and compared with the one before it
                count = W_OI.numel() - int(torch.count_nonzero(previous_OI != merged_OI))
                same[i - 1][name] = count / W_OI.numel()
                totals[i - 1][0] += count
                totals[i - 1][1] += W_OI.numel()
            previous_OI = merged_OI
    unchanged = [
        Unchanged(before.name, after.name, same[i], totals[i][0], totals[i][1])
        for i, (before, after) in enumerate(pairs)
    ]
    return UpdateMap(rows, unchanged)


def overall(rows: Sequence[ModuleUpdate]) -> dict[str, float]:
    """One checkpoint's measures over all its adapted modules: the norm ratio of the whole update
    (sqrt(Σ||Δ||²) / sqrt(Σ||W||²)), the entry-weighted bf16 changed fraction, and the mean effective rank."""
    entries = sum(r.entries for r in rows)
    weight = math.sqrt(sum(r.weight_norm**2 for r in rows))
    return {
        "relative_norm": math.sqrt(sum(r.delta_norm**2 for r in rows)) / weight if weight else 0.0,
        "bf16_changed": sum(r.bf16_changed * r.entries for r in rows) / entries if entries else 0.0,
        "effective_rank": sum(r.effective_rank for r in rows) / len(rows) if rows else 0.0,
        "entries": float(entries),
    }


def _module_order(name: str) -> tuple[int, str]:
    layer, module = split_module_name(name)
    return (-1 if layer is None else layer, module)
