"""The GRPO math, as pure functions of tensors.

Nothing here touches Ray, vLLM, peft or the disk, so every function can be checked against an independent
computation (tests/unit/test_grpo.py). Each algorithm variant is a function or a mode chosen by config:

- advantages: group-mean baseline (GRPO) or leave-one-out (RLOO), optionally divided by the group std,
  optionally renormalised over the batch (REINFORCE++ style);
- the clipped surrogate with separate low/high clip ranges (DAPO's clip-higher);
- a truncated importance-sampling weight that corrects for the sampler (vLLM) and learner disagreeing on the
  log-probs of the same tokens;
- Schulman's k1/k2/k3 KL estimators, DAPO's soft overlong penalty, and three ways to aggregate token losses;
- DAPO's dynamic sampling: which groups carry signal, which enter the batch, how many prompts a refill round asks for.

Shapes: P prompts, G group members, B sequences (B = P * G when flattened), T completion tokens, V vocabulary.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

Baseline = Literal["group_mean", "rloo"]
KLEstimator = Literal["k1", "k2", "k3"]
LossAgg = Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"]

_KL_ESTIMATORS = ("k1", "k2", "k3")
_LOSS_AGGS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm")


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
    if baseline not in ("group_mean", "rloo"):
        raise ValueError(f"unknown baseline {baseline!r}; use 'group_mean' or 'rloo'")
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


def kl_estimate(logp_BT: torch.Tensor, ref_logp_BT: torch.Tensor, estimator: KLEstimator) -> torch.Tensor:
    """(B, T) per-token estimate of KL(pi || ref) from tokens sampled from pi (Schulman, "Approximating KL").

    With log_r = ref - logp: k1 = -log_r (unbiased, high variance, can be negative), k2 = log_r^2 / 2 (biased,
    low variance), k3 = exp(log_r) - 1 - log_r (unbiased and always >= 0).
    """
    log_r_BT = ref_logp_BT - logp_BT
    if estimator == "k1":
        return -log_r_BT
    if estimator == "k2":
        return 0.5 * log_r_BT**2
    if estimator == "k3":
        return torch.exp(log_r_BT) - 1 - log_r_BT
    raise ValueError(f"unknown KL estimator {estimator!r}; use one of {_KL_ESTIMATORS}")


@torch.no_grad()
def truncated_is_weights(
    old_logp_BT: torch.Tensor, sampling_logp_BT: torch.Tensor, cap: float
) -> torch.Tensor:
    """(B, T) min(pi_old / pi_sampler, cap), without gradient.

    The tokens come from the sampler, whose log-probs differ from the learner's for the same weights (kernels,
    precision). Reweighting by the ratio corrects that bias; the cap bounds the variance (truncated IS).
    """
    return torch.exp(old_logp_BT - sampling_logp_BT).clamp(max=cap)


def overlong_penalty(lengths_B: torch.Tensor, *, max_len: int, cache_len: int) -> torch.Tensor:
    """(B,) DAPO soft overlong punishment, added to the reward.

    0 up to max_len - cache_len tokens, then linear down to -1 at max_len, and -1 beyond.
    """
    if not 0 < cache_len <= max_len:
        raise ValueError(f"need 0 < cache_len <= max_len, got cache_len={cache_len}, max_len={max_len}")
    excess_B = lengths_B.double() - (max_len - cache_len)
    return (-excess_B / cache_len).clamp(min=-1.0, max=0.0).float()


def _rowwise(fn: Callable[..., torch.Tensor], logits_BTV: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor:
    """Apply fn in float32, one sequence at a time for low-precision logits.

    bf16 log-softmax is too coarse for ratios near 1, but upcasting the whole (B, T, V) block doubles the
    largest tensor of the step; one row at a time bounds the extra memory to (T, V).
    """
    if logits_BTV.dtype in (torch.float32, torch.float64):
        return fn(logits_BTV, *rest)
    rows = [fn(logits_BTV[b].float(), *(x[b] for x in rest)) for b in range(logits_BTV.shape[0])]
    return torch.stack(rows)


def _entropy(logits: torch.Tensor) -> torch.Tensor:
    p = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (p * logits).sum(dim=-1)


def _logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    picked = logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def token_entropy(logits_BTV: torch.Tensor) -> torch.Tensor:
    """(B, T) entropy of softmax(logits), in float32 (or float64 if given)."""
    return _rowwise(_entropy, logits_BTV)


def token_logprobs(logits_BTV: torch.Tensor, tokens_BT: torch.Tensor) -> torch.Tensor:
    """(B, T) log softmax(logits) at tokens, as logit - logsumexp: no (B, T, V) log-softmax is made."""
    return _rowwise(_logprobs, logits_BTV, tokens_BT)


def aggregate(
    loss_BT: torch.Tensor, mask_BT: torch.Tensor, mode: LossAgg, max_len: int | None = None
) -> torch.Tensor:
    """Scalar loss from per-token losses over the mask.

    token_mean (DAPO): every token in the batch weighs the same, so long answers are not diluted.
    seq_mean_token_mean (GRPO): mean over each sequence's tokens, then over sequences.
    seq_mean_token_sum_norm (Dr. GRPO): each sequence's sum / max_len, a constant: no length bias.
    The sequence means skip rows with no tokens (padding rows).
    """
    m_BT = mask_BT.to(loss_BT.dtype)
    if mode == "token_mean":
        return (loss_BT * m_BT).sum() / m_BT.sum().clamp(min=1)
    if mode not in _LOSS_AGGS:
        raise ValueError(f"unknown loss_agg {mode!r}; use one of {_LOSS_AGGS}")
    sum_B = (loss_BT * m_BT).sum(dim=1)
    count_B = m_BT.sum(dim=1)
    if mode == "seq_mean_token_mean":
        per_seq_B = sum_B / count_B.clamp(min=1)
    else:
        if max_len is None:
            raise ValueError("loss_agg 'seq_mean_token_sum_norm' needs max_len (the generation length limit)")
        per_seq_B = sum_B / max_len
    n_seqs = (count_B > 0).sum().clamp(min=1)
    return per_seq_B.sum() / n_seqs


@dataclass(frozen=True)
class LossSettings:
    """How grpo_loss combines its terms."""

    clip_low: float = 0.2
    """Ratio lower clip: 1 - clip_low."""
    clip_high: float = 0.2
    """Ratio upper clip: 1 + clip_high (DAPO's clip-higher uses 0.28)."""
    kl_coef: float = 0.0
    """Weight of the KL-to-reference term in the loss (0: KL only logged)."""
    kl_estimator: KLEstimator = "k3"
    """Which Schulman estimator of KL(pi || ref)."""
    loss_agg: LossAgg = "seq_mean_token_mean"
    """How token losses become a scalar; see aggregate()."""
    max_len: int | None = None
    """Generation length limit; required by seq_mean_token_sum_norm."""
    is_cap: float | None = 2.0
    """Cap of the sampler-mismatch importance weight; None turns the correction off."""
    entropy_coef: float = 0.0
    """Weight of the entropy bonus (subtracted from the loss)."""

    def __post_init__(self) -> None:
        if self.kl_estimator not in _KL_ESTIMATORS:
            raise ValueError(f"kl_estimator must be one of {_KL_ESTIMATORS}, got {self.kl_estimator!r}")
        if self.loss_agg not in _LOSS_AGGS:
            raise ValueError(f"loss_agg must be one of {_LOSS_AGGS}, got {self.loss_agg!r}")
        if self.loss_agg == "seq_mean_token_sum_norm" and self.max_len is None:
            raise ValueError("loss_agg 'seq_mean_token_sum_norm' needs max_len")


@dataclass(frozen=True)
class LossStats:
    """Masked token means of one loss evaluation, as python floats for logging."""

    kl: float
    entropy: float
    clip_frac: float
    clip_frac_low: float
    clip_frac_high: float
    is_ratio_mean: float
    is_ratio_max: float
    mismatch_kl: float


def grpo_loss(
    logp_BT: torch.Tensor,
    old_logp_BT: torch.Tensor,
    ref_logp_BT: torch.Tensor | None,
    sampling_logp_BT: torch.Tensor,
    advantages_B: torch.Tensor,
    mask_BT: torch.Tensor,
    settings: LossSettings,
    entropy_BT: torch.Tensor | None = None,
) -> tuple[torch.Tensor, LossStats]:
    """Clipped GRPO surrogate + KL penalty - entropy bonus, aggregated over the mask.

    logp: learner now (has grad); old_logp: learner before this step's updates; ref_logp: the reference policy
    (adapter off; None when the KL is not measured, which needs kl_coef 0 and gives a NaN kl stat); sampling_logp:
    what the sampler reported for the same tokens. Per token:
    -min(ratio * A, clip(ratio, 1 - clip_low, 1 + clip_high) * A) with ratio = exp(logp - old_logp), times the
    detached truncated IS weight when is_cap is set, + kl_coef * KL, - entropy_coef * entropy.
    """
    s = settings
    mask_BT = mask_BT.bool()
    # Only the current policy is trained; the other log-probs are fixed targets even if they carry a graph.
    old_logp_BT, sampling_logp_BT = old_logp_BT.detach(), sampling_logp_BT.detach()
    adv_BT = advantages_B.to(logp_BT.dtype)[:, None].expand_as(logp_BT)
    ratio_BT = torch.exp(logp_BT - old_logp_BT)
    clipped_BT = ratio_BT.clamp(1 - s.clip_low, 1 + s.clip_high)
    loss_BT = -torch.minimum(ratio_BT * adv_BT, clipped_BT * adv_BT)
    if s.is_cap is not None:
        is_w_BT = truncated_is_weights(old_logp_BT, sampling_logp_BT, s.is_cap)
        loss_BT = loss_BT * is_w_BT
    else:
        is_w_BT = torch.ones_like(logp_BT)

    if ref_logp_BT is None:
        if s.kl_coef != 0.0:
            raise ValueError("kl_coef > 0 needs the reference logprobs")
        kl_BT = torch.full_like(logp_BT, math.nan)  # not measured: the kl stat is NaN
    else:
        kl_BT = kl_estimate(logp_BT, ref_logp_BT.detach(), s.kl_estimator)
    if s.kl_coef != 0.0:
        loss_BT = loss_BT + s.kl_coef * kl_BT
    if entropy_BT is not None and s.entropy_coef != 0.0:
        loss_BT = loss_BT - s.entropy_coef * entropy_BT
    loss = aggregate(loss_BT, mask_BT, s.loss_agg, s.max_len)
    return loss, _loss_stats(
        ratio_BT, adv_BT, kl_BT, is_w_BT, old_logp_BT, sampling_logp_BT, mask_BT, s, entropy_BT
    )


@torch.no_grad()
def _loss_stats(
    ratio_BT: torch.Tensor,
    adv_BT: torch.Tensor,
    kl_BT: torch.Tensor,
    is_w_BT: torch.Tensor,
    old_logp_BT: torch.Tensor,
    sampling_logp_BT: torch.Tensor,
    mask_BT: torch.Tensor,
    s: LossSettings,
    entropy_BT: torch.Tensor | None,
) -> LossStats:
    """Masked token means in float32; gathered into one tensor so a GPU run syncs once, not eight times."""
    m_BT = mask_BT.float()
    n = m_BT.sum().clamp(min=1)

    def mean(x_BT: torch.Tensor) -> torch.Tensor:
        return (x_BT.to(m_BT.dtype) * m_BT).sum() / n

    low = mean((adv_BT < 0) & (ratio_BT < 1 - s.clip_low))
    high = mean((adv_BT > 0) & (ratio_BT > 1 + s.clip_high))
    ent = mean(entropy_BT) if entropy_BT is not None else torch.zeros((), device=m_BT.device)
    # Samples came from the sampler, so KL(sampler || old) has log_r = old - sampling: k3 with these roles.
    mismatch = mean(kl_estimate(sampling_logp_BT, old_logp_BT, "k3"))
    is_max = (is_w_BT * m_BT).max()  # weights are > 0, so masked-out zeros never win
    vals = torch.stack([mean(kl_BT), ent, low + high, low, high, mean(is_w_BT), is_max, mismatch])
    return LossStats(*vals.tolist())


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (Chen et al. 2021): 1 - C(n-c, k) / C(n, k).

    Computed as 1 - prod_{i=n-c+1}^{n} (1 - k / i), which avoids huge binomials.
    """
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))
