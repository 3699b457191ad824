"""The GRPO loss, as pure functions of tensors.

Nothing here touches Ray, vLLM, peft or the disk, so every function can be checked against an independent
computation (tests/unit/test_grpo.py). `grpo_loss` takes its config section (`AlgoConfig`) directly; each variant
is a mode of it:

- the clipped surrogate with separate low/high clip ranges (DAPO's clip-higher);
- a truncated importance-sampling weight that corrects for the sampler (vLLM) and learner disagreeing on the
  log-probs of the same tokens;
- Schulman's k1/k2/k3 KL estimators, an entropy bonus, and three ways to aggregate token losses.

Advantages come from learner/advantages.py. Shapes: B sequences, T completion tokens, V vocabulary.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import get_args

import torch

from shared.config import AlgoConfig, KLEstimator, LossAgg
from shared.records import TrainStats


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
    raise ValueError(f"unknown KL estimator {estimator!r}; use one of {get_args(KLEstimator)}")


@torch.no_grad()
def truncated_is_weights(old_logp_BT: torch.Tensor, sampling_logp_BT: torch.Tensor, cap: float) -> torch.Tensor:
    """(B, T) min(pi_old / pi_sampler, cap), without gradient.

    The tokens come from the sampler, whose log-probs differ from the learner's for the same weights (kernels,
    precision). Reweighting by the ratio corrects that bias; the cap bounds the variance (truncated IS).
    """
    return torch.exp(old_logp_BT - sampling_logp_BT).clamp(max=cap)


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


def loss_normaliser(count_B: torch.Tensor, mode: LossAgg) -> torch.Tensor:
    """The divisor `aggregate` uses for sequences with `count_B` loss tokens each: the token count (token_mean) or
    the number of sequences with at least one token (the sequence means). A learner that splits a minibatch into
    micro-batches computes it once over the whole minibatch, so the summed micro-batch losses equal the unsplit one.
    """
    if mode == "token_mean":
        return count_B.sum().clamp(min=1)
    return (count_B > 0).sum().clamp(min=1)


def aggregate(
    loss_BT: torch.Tensor,
    mask_BT: torch.Tensor,
    mode: LossAgg,
    max_len: int | None = None,
    normaliser: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """Scalar loss from per-token losses over the mask.

    token_mean (DAPO): every token in the batch weighs the same, so long answers are not diluted.
    seq_mean_token_mean (GRPO): mean over each sequence's tokens, then over sequences.
    seq_mean_token_sum_norm (Dr. GRPO): each sequence's sum / max_len, a constant: no length bias.
    The sequence means skip rows with no tokens (padding rows). `normaliser` replaces the divisor computed from
    this mask (`loss_normaliser`) when these rows are one micro-batch of a larger minibatch.
    """
    if mode not in get_args(LossAgg):
        raise ValueError(f"unknown loss_agg {mode!r}; use one of {get_args(LossAgg)}")
    m_BT = mask_BT.to(loss_BT.dtype)
    count_B = m_BT.sum(dim=1)
    divisor = loss_normaliser(count_B, mode) if normaliser is None else normaliser
    if mode == "token_mean":
        return (loss_BT * m_BT).sum() / divisor
    sum_B = (loss_BT * m_BT).sum(dim=1)
    if mode == "seq_mean_token_mean":
        per_seq_B = sum_B / count_B.clamp(min=1)
    else:
        if max_len is None:
            raise ValueError("loss_agg 'seq_mean_token_sum_norm' needs max_len (the generation length limit)")
        per_seq_B = sum_B / max_len
    return per_seq_B.sum() / divisor


@dataclass(frozen=True)
class LossStats:
    """Masked token means of one loss evaluation, as python floats for logging, and the token count they are over
    (`merge_stats` weighs micro-batches by it)."""

    kl: float
    entropy: float
    clip_frac: float
    clip_frac_low: float
    clip_frac_high: float
    is_ratio_mean: float
    is_ratio_max: float
    mismatch_kl: float
    tokens: float = 0.0


def merge_stats(parts: list[LossStats]) -> LossStats:
    """The stats of a minibatch's micro-batches as the minibatch's own: token-weighted means (equal to the unsplit
    ones) and the largest IS ratio."""
    total = sum(p.tokens for p in parts)
    if not total:
        return parts[0]  # no token anywhere: every mean is over nothing

    def mean(name: str) -> float:
        return sum(p.tokens * getattr(p, name) for p in parts if p.tokens) / total

    names = ("kl", "entropy", "clip_frac", "clip_frac_low", "clip_frac_high", "is_ratio_mean", "mismatch_kl")
    return LossStats(
        **{name: mean(name) for name in names}, is_ratio_max=max(p.is_ratio_max for p in parts), tokens=total
    )


def grpo_loss(
    logp_BT: torch.Tensor,
    old_logp_BT: torch.Tensor,
    ref_logp_BT: torch.Tensor | None,
    sampling_logp_BT: torch.Tensor,
    advantages_B: torch.Tensor,
    mask_BT: torch.Tensor,
    algo: AlgoConfig,
    max_len: int,
    entropy_BT: torch.Tensor | None = None,
    normaliser: torch.Tensor | float | None = None,
) -> tuple[torch.Tensor, LossStats]:
    """Clipped GRPO surrogate + KL penalty - entropy bonus, aggregated over the mask.

    logp: learner now (has grad); old_logp: learner before this step's updates; ref_logp: the reference policy
    (adapter off; None when the KL is not measured, which needs kl_coef 0 and gives a NaN kl stat); sampling_logp:
    what the sampler reported for the same tokens; max_len: the generation length limit (rollout.max_new_tokens),
    the constant of seq_mean_token_sum_norm. Per token:
    -min(ratio * A, clip(ratio, 1 - clip_low, 1 + clip_high) * A) with ratio = exp(logp - old_logp), times the
    detached truncated IS weight when is_cap is set, + kl_coef * KL, - entropy_coef * entropy. `normaliser`: the
    minibatch's divisor when these rows are one of its micro-batches (see `aggregate`).
    """
    s = algo
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
    loss = aggregate(loss_BT, mask_BT, s.loss_agg, max_len, normaliser)
    return loss, _loss_stats(ratio_BT, adv_BT, kl_BT, is_w_BT, old_logp_BT, sampling_logp_BT, mask_BT, s, entropy_BT)


@torch.no_grad()
def _loss_stats(
    ratio_BT: torch.Tensor,
    adv_BT: torch.Tensor,
    kl_BT: torch.Tensor,
    is_w_BT: torch.Tensor,
    old_logp_BT: torch.Tensor,
    sampling_logp_BT: torch.Tensor,
    mask_BT: torch.Tensor,
    s: AlgoConfig,
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
    vals = torch.stack([mean(kl_BT), ent, low + high, low, high, mean(is_w_BT), is_max, mismatch, m_BT.sum()])
    return LossStats(*vals.tolist())


def summarise_steps(stats: list[tuple[float, LossStats]], grad_norms: list[float], skipped: int) -> TrainStats:
    """One step's TrainStats from its optimizer steps' (loss, LossStats) and gradient norms (NaNs when none ran)."""
    if not stats:
        nan = math.nan
        return TrainStats(nan, nan, nan, nan, nan, nan, nan, nan, nan, nan, 0, skipped)

    def mean(name: str) -> float:
        return sum(getattr(s, name) for _, s in stats) / len(stats)

    return TrainStats(
        loss=sum(loss for loss, _ in stats) / len(stats),
        kl=None if math.isnan(kl := mean("kl")) else kl,  # NaN: not measured (algo.log_kl off)
        entropy=mean("entropy"),
        clip_frac=mean("clip_frac"),
        clip_frac_low=mean("clip_frac_low"),
        clip_frac_high=mean("clip_frac_high"),
        grad_norm=sum(grad_norms) / len(grad_norms),
        is_ratio_mean=mean("is_ratio_mean"),
        is_ratio_max=max(s.is_ratio_max for _, s in stats),
        mismatch_kl=mean("mismatch_kl"),
        optimizer_steps=len(stats),
        skipped_nonfinite=skipped,
    )
