"""Checks every function of learner/loss.py against an independent computation.

References are written separately here, with numpy loops or values worked out by hand on tiny tensors, so
a shared mistake between the vectorised code and its test is unlikely. Gradient signs are checked where the
point of a variant is which tokens get pushed (clip-higher, the KL term).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from learner.advantages import (
    group_advantages,
    group_has_signal,
    overlong_penalty,
    refill_size,
    select_groups,
    zero_std_fraction,
)
from learner.loss import (
    aggregate,
    grpo_loss,
    kl_estimate,
    token_entropy,
    token_logprobs,
    truncated_is_weights,
)
from shared.config import AlgoConfig
from shared.metrics import pass_at_k

MAX_LEN = 16
"""Generation length limit passed to grpo_loss (only seq_mean_token_sum_norm reads it)."""

REWARDS_PG = np.array(
    [
        [1.0, 0.0, 0.0, 1.0],
        [0.5, 0.5, 0.5, 0.5],  # all equal: no signal
        [3.0, -1.0, 2.0, 0.0],
        [1.0, 2.0, 7.0, 4.0],
    ]
)
VALID_PG = np.array(
    [
        [True, True, True, True],
        [True, False, True, True],
        [True, True, False, True],
        [True, False, False, False],  # a lone valid member: no baseline, advantage 0
    ]
)


def _np_advantages(rewards, valid, baseline, scale_by_std, batch_norm, eps=1e-6):
    """Per-group loop over the valid members only."""
    adv = np.zeros_like(rewards)
    for p in range(rewards.shape[0]):
        idx = np.flatnonzero(valid[p])
        r = rewards[p, idx]
        if len(idx) < 2 or np.all(r == r[0]):
            continue
        if baseline == "group_mean":
            a = r - r.mean()
        else:
            a = np.array([r[i] - np.delete(r, i).mean() for i in range(len(r))])
        if scale_by_std:
            a = a / (np.std(r, ddof=1) + eps)
        adv[p, idx] = a
    if batch_norm:
        vals = adv[valid]
        zero_groups = np.array([len(set(rewards[p, valid[p]])) < 2 for p in range(rewards.shape[0])])
        adv = (adv - vals.mean()) / (np.std(vals, ddof=1) + eps)
        adv[~valid | zero_groups[:, None]] = 0.0
    return adv


@pytest.mark.parametrize("baseline", ["group_mean", "rloo"])
@pytest.mark.parametrize("scale_by_std", [True, False])
@pytest.mark.parametrize("batch_norm", [True, False])
@pytest.mark.parametrize("masked", [True, False])
def test_advantages_match_numpy(baseline, scale_by_std, batch_norm, masked):
    valid = VALID_PG if masked else np.ones_like(VALID_PG)
    got = group_advantages(
        torch.tensor(REWARDS_PG),
        baseline=baseline,
        scale_by_std=scale_by_std,
        batch_norm=batch_norm,
        valid_PG=torch.tensor(valid) if masked else None,
    )
    want = _np_advantages(REWARDS_PG, valid, baseline, scale_by_std, batch_norm)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-6, atol=1e-9)


def test_advantages_by_hand():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    np.testing.assert_allclose(group_advantages(rewards, scale_by_std=False).numpy(), [[0.5, -0.5, -0.5, 0.5]])
    # RLOO: 1 - mean(0, 0, 1) = 2/3 and 0 - mean(0, 1, 1) = -2/3.
    np.testing.assert_allclose(
        group_advantages(rewards, baseline="rloo", scale_by_std=False).numpy(),
        [[2 / 3, -2 / 3, -2 / 3, 2 / 3]],
        rtol=1e-6,
    )
    # Unbiased std of (1, 0, 0, 1) is sqrt(1/3).
    np.testing.assert_allclose(
        group_advantages(rewards, eps=0.0).numpy(), [[0.5, -0.5, -0.5, 0.5]] / np.sqrt(1 / 3), rtol=1e-6
    )


def test_advantages_zero_for_equal_groups_and_invalid_members():
    rewards = torch.tensor([[0.1, 0.1, 0.1], [1.0, float("nan"), 0.0]])
    valid = torch.tensor([[True, True, True], [True, False, True]])
    for baseline in ("group_mean", "rloo"):
        adv = group_advantages(rewards, baseline=baseline, valid_PG=valid, batch_norm=True)
        assert torch.isfinite(adv).all()
        assert (adv[0] == 0).all() and adv[1, 1] == 0
        assert adv[1, 0] > 0 > adv[1, 2]


def test_batch_norm_gives_zero_mean_unit_std_over_valid():
    adv = group_advantages(torch.tensor(REWARDS_PG), batch_norm=True, valid_PG=torch.tensor(VALID_PG))
    vals = adv[torch.tensor(VALID_PG)].numpy()
    assert abs(vals.mean()) < 1e-6
    assert abs(np.std(vals, ddof=1) - 1) < 1e-5


def test_zero_std_fraction():
    rewards = torch.tensor(REWARDS_PG)
    assert zero_std_fraction(rewards) == pytest.approx(1 / 4)
    # With the mask the lone-member group also carries no signal.
    assert zero_std_fraction(rewards, torch.tensor(VALID_PG)) == pytest.approx(2 / 4)


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_kl_estimate_matches_numpy(estimator):
    rng = np.random.default_rng(0)
    logp, ref = rng.normal(-2, 1, (3, 5)), rng.normal(-2, 1, (3, 5))
    log_r = ref - logp
    want = {"k1": -log_r, "k2": 0.5 * log_r**2, "k3": np.exp(log_r) - 1 - log_r}[estimator]
    got = kl_estimate(torch.tensor(logp), torch.tensor(ref), estimator)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12)
    if estimator == "k3":
        assert (got >= 0).all()


def test_kl_estimators_unbiased_under_pi():
    # Summing over every token weighted by pi gives the exact expectation: k1 and k3 equal KL(pi || ref).
    pi = np.array([0.5, 0.3, 0.15, 0.05])
    ref = np.array([0.25, 0.25, 0.25, 0.25])
    exact = float(np.sum(pi * np.log(pi / ref)))
    for estimator in ("k1", "k3"):
        k = kl_estimate(torch.tensor(np.log(pi)), torch.tensor(np.log(ref)), estimator).numpy()
        assert float(np.sum(pi * k)) == pytest.approx(exact, rel=1e-12)
    assert exact > 0
    with pytest.raises(ValueError, match="k4"):
        kl_estimate(torch.zeros(1), torch.zeros(1), "k4")


def test_truncated_is_weights_cap_and_no_grad():
    old = torch.tensor([[0.0, -1.0, -3.0]], requires_grad=True)
    sampling = torch.tensor([[0.0, -2.0, -1.0]])
    w = truncated_is_weights(old, sampling, cap=2.0)
    np.testing.assert_allclose(w.numpy(), [[1.0, 2.0, math.exp(-2.0)]], rtol=1e-6)  # e^1 capped at 2
    assert not w.requires_grad


def test_overlong_penalty_piecewise():
    lengths = torch.tensor([0, 60, 61, 70, 79, 80, 81, 500])
    got = overlong_penalty(lengths, max_len=80, cache_len=20)
    want = [0.0, 0.0, -1 / 20, -0.5, -19 / 20, -1.0, -1.0, -1.0]
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-6)
    with pytest.raises(ValueError):
        overlong_penalty(lengths, max_len=80, cache_len=0)


def _np_log_softmax(x):
    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def test_token_entropy_matches_numpy():
    logits = torch.randn(2, 3, 7, generator=torch.Generator().manual_seed(0)) * 3
    logp = _np_log_softmax(logits.numpy())
    want = -(np.exp(logp) * logp).sum(-1)
    np.testing.assert_allclose(token_entropy(logits).numpy(), want, rtol=1e-5)
    np.testing.assert_allclose(token_entropy(logits.bfloat16()).numpy(), want, rtol=0.05)
    # Uniform logits: entropy log V.
    assert token_entropy(torch.zeros(1, 1, 7)).item() == pytest.approx(math.log(7), rel=1e-6)


def test_token_logprobs_match_log_softmax():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 4, 11, generator=gen) * 4
    tokens = torch.randint(0, 11, (2, 4), generator=gen)
    want = torch.log_softmax(logits, -1).gather(-1, tokens[..., None]).squeeze(-1)
    np.testing.assert_allclose(token_logprobs(logits, tokens).numpy(), want.numpy(), rtol=1e-5, atol=1e-6)
    low = token_logprobs(logits.bfloat16(), tokens)
    assert low.dtype == torch.float32  # the bf16 path computes in float32, row by row
    want_bf = torch.log_softmax(logits.bfloat16().float(), -1).gather(-1, tokens[..., None]).squeeze(-1)
    np.testing.assert_allclose(low.numpy(), want_bf.numpy(), rtol=1e-5, atol=1e-6)


def test_token_logprobs_gradient_is_onehot_minus_softmax():
    logits = torch.randn(1, 1, 5, generator=torch.Generator().manual_seed(2), requires_grad=True)
    token_logprobs(logits, torch.tensor([[3]])).sum().backward()
    want = -torch.softmax(logits.detach(), -1)
    want[0, 0, 3] += 1
    np.testing.assert_allclose(logits.grad.numpy(), want.numpy(), rtol=1e-5, atol=1e-7)


LOSS_BT = torch.tensor([[1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 30.0, 40.0], [5.0, 5.0, 5.0, 5.0]])
MASK_BT = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]])  # ragged, last row padding


def test_aggregate_modes_by_hand():
    # Tokens: 1, 2, 3, 10 -> 16 / 4.
    assert aggregate(LOSS_BT, MASK_BT, "token_mean").item() == pytest.approx(4.0)
    # Row means 2 and 10; the empty row is skipped -> 6.
    assert aggregate(LOSS_BT, MASK_BT, "seq_mean_token_mean").item() == pytest.approx(6.0)
    # Row sums 6 and 10, each / 8 -> (0.75 + 1.25) / 2.
    assert aggregate(LOSS_BT, MASK_BT, "seq_mean_token_sum_norm", max_len=8).item() == pytest.approx(1.0)
    assert aggregate(LOSS_BT, MASK_BT.bool(), "token_mean").item() == pytest.approx(4.0)
    with pytest.raises(ValueError, match="max_len"):
        aggregate(LOSS_BT, MASK_BT, "seq_mean_token_sum_norm")
    with pytest.raises(ValueError, match="unknown"):
        aggregate(LOSS_BT, MASK_BT, "sum")


def _loss_inputs(logp, old, adv, ref=None, sampling=None):
    logp_BT = torch.tensor(logp, dtype=torch.float64, requires_grad=True)
    old_BT = torch.tensor(old, dtype=torch.float64)
    ref_BT = old_BT.clone() if ref is None else torch.tensor(ref, dtype=torch.float64)
    sampling_BT = old_BT.clone() if sampling is None else torch.tensor(sampling, dtype=torch.float64)
    return logp_BT, old_BT, ref_BT, sampling_BT, torch.tensor(adv, dtype=torch.float64)


def test_clip_higher_gradient_sign():
    # One token, A = +1, ratio 1.25: inside DAPO's 1.28 bound it is still pushed up, outside 1.2 it is frozen.
    logp, old, ref, sampling, adv = _loss_inputs([[math.log(1.25)]], [[0.0]], [1.0])
    mask = torch.ones(1, 1)
    loss, stats = grpo_loss(logp, old, ref, sampling, adv, mask, AlgoConfig(clip_high=0.28), MAX_LEN)
    (grad,) = torch.autograd.grad(loss, logp)
    assert grad.item() == pytest.approx(-1.25)  # d(-ratio * A)/dlogp; descent raises logp
    assert stats.clip_frac_high == 0.0

    loss, stats = grpo_loss(logp, old, ref, sampling, adv, mask, AlgoConfig(clip_high=0.2), MAX_LEN)
    (grad,) = torch.autograd.grad(loss, logp)
    assert grad.item() == 0.0
    assert loss.item() == pytest.approx(-1.2)
    assert stats.clip_frac_high == 1.0


def test_clip_fractions_by_hand():
    ratio_BT = np.array(
        [
            [1.5, 1.1],  # A > 0: 1.5 above 1.2 -> clipped high
            [0.5, 0.9],  # A < 0: 0.5 below 0.8 -> clipped low; 0.9 masked out
            [0.9, 1.0],  # A < 0: inside
            [0.5, 1.0],  # A > 0: below 0.8 but min() keeps the unclipped term -> not counted
            [1.5, 1.0],  # A < 0: above 1.2 but min() keeps the unclipped term -> not counted
            [3.0, 0.1],  # A > 0: 3.0 would count but is masked out
        ]
    )
    adv = [1.0, -1.0, -1.0, 1.0, -1.0, 1.0]
    mask = torch.tensor([[1, 1], [1, 0], [1, 1], [1, 1], [1, 1], [0, 1]])
    inputs = _loss_inputs(np.log(ratio_BT).tolist(), np.zeros_like(ratio_BT).tolist(), adv)
    _, stats = grpo_loss(*inputs, mask, AlgoConfig(), MAX_LEN)
    n_tokens = 10
    assert stats.clip_frac_high == pytest.approx(1 / n_tokens)
    assert stats.clip_frac_low == pytest.approx(1 / n_tokens)
    assert stats.clip_frac == pytest.approx(2 / n_tokens)


def test_negative_advantage_clipped_low_has_no_gradient():
    logp, old, ref, sampling, adv = _loss_inputs([[math.log(0.75), math.log(0.9)]], [[0.0, 0.0]], [-1.0])
    loss, _ = grpo_loss(logp, old, ref, sampling, adv, torch.ones(1, 2), AlgoConfig(loss_agg="token_mean"), MAX_LEN)
    (grad,) = torch.autograd.grad(loss, logp)
    assert grad[0, 0].item() == 0.0
    assert grad[0, 1].item() == pytest.approx(0.9 / 2)  # pushed down: positive gradient


def test_is_weight_scales_surrogate_and_caps():
    # ratio 1 so the surrogate per token is -A; IS weights e^0.5 and e^2 -> capped at 2.
    logp, old, ref, _, adv = _loss_inputs([[0.0, 0.0]], [[0.0, 0.0]], [1.0])
    sampling = torch.tensor([[-0.5, -2.0]], dtype=torch.float64)
    mask = torch.ones(1, 2)
    loss, stats = grpo_loss(logp, old, ref, sampling, adv, mask, AlgoConfig(is_cap=2.0), MAX_LEN)
    assert loss.item() == pytest.approx(-(math.exp(0.5) + 2.0) / 2)
    assert stats.is_ratio_mean == pytest.approx((math.exp(0.5) + 2.0) / 2)
    assert stats.is_ratio_max == pytest.approx(2.0)
    # mismatch k3 with log_r = old - sampling = (0.5, 2).
    want_mismatch = np.mean([math.exp(x) - 1 - x for x in (0.5, 2.0)])
    assert stats.mismatch_kl == pytest.approx(want_mismatch)

    loss, stats = grpo_loss(logp, old, ref, sampling, adv, mask, AlgoConfig(is_cap=None), MAX_LEN)
    assert loss.item() == pytest.approx(-1.0)
    assert stats.is_ratio_mean == 1.0 and stats.is_ratio_max == 1.0


def test_k3_kl_gradient_zero_at_reference():
    logp, old, ref, sampling, adv = _loss_inputs([[-1.0, -2.0]], [[-1.0, -2.0]], [0.0], ref=[[-1.0, -2.0]])
    mask = torch.ones(1, 2)
    loss, stats = grpo_loss(logp, old, ref, sampling, adv, mask, AlgoConfig(kl_coef=0.5), MAX_LEN)
    (grad,) = torch.autograd.grad(loss, logp)
    assert torch.all(grad == 0) and stats.kl == 0.0
    # k1 is linear in logp, so its gradient never vanishes.
    loss, _ = grpo_loss(logp, old, ref, sampling, adv, mask, AlgoConfig(kl_coef=0.5, kl_estimator="k1"), MAX_LEN)
    (grad,) = torch.autograd.grad(loss, logp)
    np.testing.assert_allclose(grad.numpy(), [[0.25, 0.25]])


def test_k3_kl_gradient_pulls_toward_reference():
    # logp above ref: gradient positive (descent lowers logp); d k3/dlogp = 1 - exp(ref - logp).
    logp, old, ref, sampling, adv = _loss_inputs([[-1.0]], [[-1.0]], [0.0], ref=[[-2.0]])
    loss, stats = grpo_loss(logp, old, ref, sampling, adv, torch.ones(1, 1), AlgoConfig(kl_coef=1.0), MAX_LEN)
    (grad,) = torch.autograd.grad(loss, logp)
    assert grad.item() == pytest.approx(1 - math.exp(-1.0))
    assert stats.kl == pytest.approx(math.exp(-1.0) - 1 + 1.0)


def test_full_loss_value_by_hand():
    # Two sequences, ragged mask, every term on.
    # Ratios: e^0.1 (A=+2, inside 1.2) and e^-0.5 (A=-1, clipped to 0.8).
    logp, old, ref, sampling, adv = _loss_inputs(
        [[0.1, 0.0], [-0.5, 0.0]], [[0.0, 0.0], [0.0, 0.0]], [2.0, -1.0], ref=[[0.0, 0.0], [0.0, 0.0]]
    )
    entropy = torch.tensor([[1.0, 9.0], [3.0, 9.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 0], [1, 0]])
    s = AlgoConfig(kl_coef=0.1, entropy_coef=0.01, loss_agg="token_mean", is_cap=None)
    loss, stats = grpo_loss(logp, old, ref, sampling, adv, mask, s, MAX_LEN, entropy_BT=entropy)

    k3 = [math.exp(-0.1) - 1 + 0.1, math.exp(0.5) - 1 - 0.5]
    tok0 = -math.exp(0.1) * 2 + 0.1 * k3[0] - 0.01 * 1.0
    tok1 = -min(math.exp(-0.5) * -1, 0.8 * -1) + 0.1 * k3[1] - 0.01 * 3.0
    assert loss.item() == pytest.approx((tok0 + tok1) / 2)
    assert stats.kl == pytest.approx(np.mean(k3))
    assert stats.entropy == pytest.approx(2.0)
    assert stats.clip_frac_low == pytest.approx(0.5) and stats.clip_frac_high == 0.0


def test_stats_without_entropy_and_kl_logged_when_off():
    logp, old, ref, sampling, adv = _loss_inputs([[0.0]], [[0.0]], [1.0], ref=[[-1.0]])
    _, stats = grpo_loss(logp, old, ref, sampling, adv, torch.ones(1, 1), AlgoConfig(kl_coef=0.0), MAX_LEN)
    assert stats.entropy == 0.0
    assert stats.kl == pytest.approx(math.exp(-1.0) - 1 + 1.0)
    assert stats.mismatch_kl == 0.0


def test_without_reference_the_loss_is_unchanged_and_kl_is_not_measured():
    logp, old, ref, sampling, adv = _loss_inputs([[0.1, -0.2]], [[0.0, 0.0]], [1.5], ref=[[-1.0, 0.3]])
    mask = torch.ones(1, 2)
    with_ref, stats = grpo_loss(logp, old, ref, sampling, adv, mask, AlgoConfig(), MAX_LEN)
    without, no_kl = grpo_loss(logp, old, None, sampling, adv, mask, AlgoConfig(), MAX_LEN)
    assert without.item() == with_ref.item() and math.isnan(no_kl.kl) and not math.isnan(stats.kl)
    with pytest.raises(ValueError, match="kl_coef > 0 needs the reference"):
        grpo_loss(logp, old, None, sampling, adv, mask, AlgoConfig(kl_coef=0.1), MAX_LEN)


def test_loss_settings_validate():
    with pytest.raises(ValueError, match="kl_estimator"):
        AlgoConfig(kl_estimator="k9")
    with pytest.raises(ValueError, match="max_len"):
        aggregate(torch.ones(1, 2), torch.ones(1, 2), "seq_mean_token_sum_norm")


def test_pass_at_k():
    for n, c, k in [(10, 3, 5), (20, 0, 4), (20, 20, 1), (100, 7, 10), (5, 2, 4), (16, 1, 1)]:
        want = 1.0 if n - c < k else 1 - math.comb(n - c, k) / math.comb(n, k)
        assert pass_at_k(n, c, k) == pytest.approx(want, rel=1e-12, abs=1e-15)
    assert pass_at_k(10, 3, 5) == pytest.approx(1 - 21 / 252)
    assert pass_at_k(8, 3, 1) == pytest.approx(3 / 8)  # pass@1 is the fraction correct
    assert pass_at_k(8, 0, 8) == 0.0
    assert pass_at_k(8, 5, 4) == 1.0  # only 3 wrong: any 4 contain a correct one
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)


def test_entropy_bonus_gradient_matches_closed_form():
    # loss = -c * mean_t H(softmax(z_t)); dH/dz_i = -p_i (log p_i + H), so dloss/dz_i = c/n * p_i (log p_i + H).
    logits = torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 2
    logits.requires_grad_(True)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    zeros = torch.zeros(2, 3, dtype=torch.float64)
    s = AlgoConfig(entropy_coef=0.3, loss_agg="token_mean", is_cap=None)
    loss, stats = grpo_loss(
        zeros, zeros, zeros, zeros, torch.zeros(2), mask, s, MAX_LEN, entropy_BT=token_entropy(logits)
    )
    (grad,) = torch.autograd.grad(loss, logits)

    z = logits.detach().numpy()
    logp = _np_log_softmax(z)
    p = np.exp(logp)
    h = -(p * logp).sum(-1, keepdims=True)
    want = 0.3 / 3 * p * (logp + h) * mask.numpy()[..., None]
    np.testing.assert_allclose(grad.numpy(), want, rtol=1e-10, atol=1e-12)
    assert loss.item() == pytest.approx(-0.3 * h[mask.numpy().astype(bool)].mean())
    assert stats.entropy == pytest.approx(h[mask.numpy().astype(bool)].mean())


def test_group_has_signal_and_zero_std_by_loop():
    rewards, valid = torch.tensor(REWARDS_PG), torch.tensor(VALID_PG)
    want = [len(set(REWARDS_PG[p][VALID_PG[p]])) > 1 for p in range(len(REWARDS_PG))]
    assert group_has_signal(rewards, valid).tolist() == want == [True, False, True, False]
    assert group_has_signal(rewards).tolist() == [True, False, True, True]
    assert zero_std_fraction(rewards, valid) == pytest.approx(1 - sum(want) / len(want))


@pytest.mark.parametrize("target", [0, 1, 2, 3, 10])
def test_select_groups_first_target_with_signal(target):
    signal = torch.tensor([False, True, True, False, True])
    got = select_groups(signal, target, dynamic=True).tolist()
    want, taken = [], 0
    for has in signal.tolist():
        take = has and taken < target
        taken += take
        want.append(take)
    assert got == want
    assert select_groups(signal, target, dynamic=False).tolist() == [True] * 5


def test_select_groups_without_any_signal_trains_the_first_groups():
    assert select_groups(torch.zeros(5, dtype=torch.bool), 3, dynamic=True).tolist() == [1, 1, 1, 0, 0]


def test_refill_size():
    assert refill_size(0, kept=16, generated=20, cap=16) == 0
    assert refill_size(4, kept=0, generated=16, cap=16) == 16  # nothing kept yet: a full round
    assert refill_size(4, kept=12, generated=16, cap=16) == 6  # keep rate 3/4: ceil(4 / 0.75)
    assert refill_size(8, kept=8, generated=16, cap=16) == 16  # ceil(8 / 0.5)
    assert refill_size(12, kept=4, generated=16, cap=16) == 16  # would be 48: capped
    assert refill_size(3, kept=13, generated=13, cap=16) == 3  # nothing dropped: just the shortfall
