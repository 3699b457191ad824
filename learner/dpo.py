"""The DPO and IPO losses, as pure functions of per-sequence log-probabilities.

DPO (Rafailov et al. 2023) trains on pairs (prompt, chosen, rejected) without rollouts or rewards. With
log-ratios r = log pi(y|x) - log ref(y|x), summed over the completion's tokens, the margin of a pair is
r_chosen - r_rejected, and
- sigmoid (DPO): loss = -log sigmoid(beta * margin);
- ipo (Azar et al. 2023, eq. 17): loss = (margin' - 1 / (2 beta))^2, where margin' uses each completion's log-ratio
  divided by its token count (the per-token average).
Both follow TRL 1.16's DPOTrainer (`loss_type` "sigmoid" and "ipo", no label smoothing): the same sums, the same
length normalisation for IPO, and the same implicit rewards for logging, beta * r (summed, for both losses).
The reference is the adapter-disabled base model (learner/learner.py), so it costs no second copy of the weights.
The learner's side (micro-batches of whole pairs, packing, the step's stats) is here too, as functions of records.
Shapes: B pairs, C completion tokens.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import get_args

import torch
import torch.nn.functional as F

from learner.logprobs import Packed, micro_batches, pack
from shared.config import DpoLoss
from shared.records import DpoStats, PreferencePair


def sequence_logps(logp_BC: torch.Tensor, mask_BC: torch.Tensor) -> torch.Tensor:
    """(B,) sum of each row's completion-token log-probabilities over its mask."""
    return (logp_BC * mask_BC.to(logp_BC.dtype)).sum(dim=1)


@dataclass(frozen=True)
class DpoTerms:
    """Per-pair loss (with grad) and the implicit rewards (detached) of a batch of pairs."""

    loss_B: torch.Tensor
    chosen_reward_B: torch.Tensor
    rejected_reward_B: torch.Tensor


def dpo_loss(
    chosen_B: torch.Tensor,
    rejected_B: torch.Tensor,
    ref_chosen_B: torch.Tensor,
    ref_rejected_B: torch.Tensor,
    chosen_len_B: torch.Tensor,
    rejected_len_B: torch.Tensor,
    beta: float,
    kind: DpoLoss,
) -> DpoTerms:
    """Per-pair DPO loss from summed sequence log-probs of the policy (with grad) and the reference; `*_len_B` are
    the completions' token counts (used by IPO's per-token average)."""
    chosen_ratio_B = chosen_B - ref_chosen_B.detach()
    rejected_ratio_B = rejected_B - ref_rejected_B.detach()
    if kind == "sigmoid":
        loss_B = -F.logsigmoid(beta * (chosen_ratio_B - rejected_ratio_B))
    elif kind == "ipo":
        margin_B = chosen_ratio_B / chosen_len_B.clamp(min=1) - rejected_ratio_B / rejected_len_B.clamp(min=1)
        loss_B = (margin_B - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"unknown DPO loss {kind!r}; use one of {get_args(DpoLoss)}")
    return DpoTerms(loss_B, beta * chosen_ratio_B.detach(), beta * rejected_ratio_B.detach())


def pair_micro_batches(pairs: Sequence[PreferencePair], budget: int) -> list[list[int]]:
    """Pairs per micro-batch: each pair is two rows (chosen, rejected), so a pair-row gets half the token budget."""
    lengths = [len(p.prompt_token_ids) + max(len(p.chosen_token_ids), len(p.rejected_token_ids)) for p in pairs]
    return micro_batches(lengths, max(1, budget // 2))


def pack_pairs(pairs: Sequence[PreferencePair], device: torch.device) -> Packed:
    """The chosen rows of `pairs`, then their rejected rows, each after its prompt."""
    prompts = [p.prompt_token_ids for p in pairs] * 2
    return pack(prompts, [p.chosen_token_ids for p in pairs] + [p.rejected_token_ids for p in pairs], device)


def completion_lengths(pairs: Sequence[PreferencePair]) -> torch.Tensor:
    """(2, B) token counts of the chosen and the rejected completions."""
    return torch.tensor([[len(p.chosen_token_ids) for p in pairs], [len(p.rejected_token_ids) for p in pairs]])


def dpo_stats(stats: list[tuple[float, torch.Tensor]], grad_norms: list[float], skipped: int) -> DpoStats:
    """One update's `DpoStats` from each optimiser step's (loss, (3,) means of accuracy, chosen and rejected
    implicit rewards) and gradient norm."""
    if not stats:
        nan = math.nan
        return DpoStats(nan, nan, nan, nan, nan, nan, optimizer_steps=0, skipped_nonfinite=skipped)
    accuracy, chosen, rejected = (sum(s[i].item() for _, s in stats) / len(stats) for i in range(3))
    return DpoStats(
        loss=sum(loss for loss, _ in stats) / len(stats),
        pref_accuracy=accuracy,
        pref_margin=chosen - rejected,
        chosen_reward=chosen,
        rejected_reward=rejected,
        grad_norm=sum(grad_norms) / len(grad_norms),
        optimizer_steps=len(stats),
        skipped_nonfinite=skipped,
    )
