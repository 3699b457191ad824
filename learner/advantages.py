"""Advantages and batch selection, as pure functions of (P, G) reward tensors.

What the driver does with a step's rewards before the learner sees them (launch/collect.py): the GRPO group-mean
or RLOO baseline, optionally divided by the group std and renormalised over the batch (REINFORCE++ style); DAPO's
soft overlong penalty; DAPO's dynamic sampling (which groups carry signal, which enter the batch, how many prompts a
refill round asks for). Nothing here touches Ray, vLLM, peft or the disk; tests/unit/test_grpo.py checks each
function against an independent computation.

Shapes: P prompts, G group members, B sequences.
"""

from __future__ import annotations

import math
from typing import get_args

import torch

from shared.config import Baseline


def _has_signal_P(rewards_PG: torch.Tensor, valid_PG: torch.Tensor) -> torch.Tensor:
    """(P,) bool: the group's valid rewards are not all equal (< 2 valid members: no signal)."""
    r_max_P = rewards_PG.masked_fill(~valid_PG, -math.inf).amax(dim=1)
    r_min_P = rewards_PG.masked_fill(~valid_PG, math.inf).amin(dim=1)
    return r_max_P > r_min_P


def group_has_signal(rewards_PG: torch.Tensor, valid_PG: torch.Tensor | None = None) -> torch.Tensor:
    """(P,) bool: whether a group's valid rewards differ, i.e. whether it gives any gradient."""
    valid_PG = torch.ones_like(rewards_PG, dtype=torch.bool) if valid_PG is None else valid_PG.bool()
    return _has_signal_P(rewards_PG.float(), valid_PG)


def group_advantages(
    rewards_PG: torch.Tensor,
    *,
    baseline: Baseline = "group_mean",
    scale_by_std: bool = True,
    batch_norm: bool = False,
    eps: float = 1e-6,
    valid_PG: torch.Tensor | None = None,
) -> torch.Tensor:
    """(P, G) rewards -> (P, G) advantages; invalid members and all-equal groups get exactly 0.

    group_mean: r - mean of the group. rloo: r - mean of the *other* valid members, which is n/(n-1) times
    the group-mean advantage. With scale_by_std both are divided by the group's unbiased std (n - 1
    denominator, as torch.std in TRL and DeepSeekMath) + eps. batch_norm then normalises all valid advantages
    of the batch to zero mean and unit (unbiased) std. Invalid members (e.g. a failed reward under
    skip_sample) enter no statistic.
    """
    if rewards_PG.dim() != 2:
        raise ValueError(f"rewards_PG must be (P, G), got shape {tuple(rewards_PG.shape)}")
    if baseline not in get_args(Baseline):
        raise ValueError(f"unknown baseline {baseline!r}; use one of {get_args(Baseline)}")
    r_PG = rewards_PG if rewards_PG.is_floating_point() else rewards_PG.float()
    valid_PG = torch.ones_like(r_PG, dtype=torch.bool) if valid_PG is None else valid_PG.bool()
    w_PG = valid_PG.to(r_PG.dtype)
    # Invalid rewards may be NaN; zero them so they cannot leak into sums through 0 * NaN.
    r_PG = torch.where(valid_PG, r_PG, torch.zeros_like(r_PG))

    n_P = w_PG.sum(dim=1)
    mean_P = r_PG.sum(dim=1) / n_P.clamp(min=1)
    dev_PG = (r_PG - mean_P[:, None]) * w_PG
    adv_PG = dev_PG
    if baseline == "rloo":
        adv_PG = dev_PG * (n_P / (n_P - 1).clamp(min=1))[:, None]
    if scale_by_std:
        std_P = ((dev_PG**2).sum(dim=1) / (n_P - 1).clamp(min=1)).sqrt()
        adv_PG = adv_PG / (std_P + eps)[:, None]

    # Zero all-equal groups exactly: rounding in the mean would leave tiny values, amplified by 1/eps.
    keep_PG = valid_PG & _has_signal_P(r_PG, valid_PG)[:, None]
    adv_PG = adv_PG * keep_PG
    if batch_norm and valid_PG.sum() > 1:
        vals = adv_PG[valid_PG]
        adv_PG = (adv_PG - vals.mean()) / (vals.std() + eps) * keep_PG
    return adv_PG


def zero_std_fraction(rewards_PG: torch.Tensor, valid_PG: torch.Tensor | None = None) -> float:
    """Fraction of groups whose valid rewards are all equal, so they give no gradient (< 2 valid counts)."""
    return 1.0 - group_has_signal(rewards_PG, valid_PG).float().mean().item()


def select_groups(has_signal_P: torch.Tensor, target: int, dynamic: bool) -> torch.Tensor:
    """(P,) bool: the groups that form the training batch, in generation order.

    Without dynamic sampling every group trains. With it (DAPO), the first `target` groups with signal train; when
    no group has signal the first `target` groups train anyway (zero advantages: only the KL and entropy terms
    move the adapter), so every step is still one update.
    """
    if not dynamic:
        return torch.ones_like(has_signal_P, dtype=torch.bool)
    pool_P = has_signal_P.bool() if has_signal_P.any() else torch.ones_like(has_signal_P, dtype=torch.bool)
    return pool_P & (pool_P.cumsum(dim=0) <= target)


def refill_size(shortfall: int, kept: int, generated: int, cap: int) -> int:
    """Prompts to sample in the next dynamic-sampling round.

    The shortfall divided by the fraction of groups kept so far, so one round is expected to fill the batch; at
    least the shortfall, at most `cap` (the batch size), and `cap` when nothing was kept yet.
    """
    if shortfall <= 0:
        return 0
    if kept == 0:
        return cap
    return min(cap, max(shortfall, math.ceil(shortfall * generated / kept)))


def overlong_penalty(lengths_B: torch.Tensor, *, max_len: int, cache_len: int) -> torch.Tensor:
    """(B,) DAPO soft overlong punishment, added to the reward.

    0 up to max_len - cache_len tokens, then linear down to -1 at max_len, and -1 beyond.
    """
    if not 0 < cache_len <= max_len:
        raise ValueError(f"need 0 < cache_len <= max_len, got cache_len={cache_len}, max_len={max_len}")
    excess_B = lengths_B.double() - (max_len - cache_len)
    return (-excess_B / cache_len).clamp(min=-1.0, max=0.0).float()
