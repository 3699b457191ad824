"""DPO's side of the learner (algo.objective=dpo): one update on a batch of preference pairs.

Functions of a `Learner` (learner/learner.py) rather than its methods, so the GRPO learner reads on its own; they use
its model, optimiser loop (`_update`), reference policy and chunked log-probs. The losses are learner/dpo.py's.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING

import torch

from learner.dpo import completion_lengths, dpo_loss, dpo_stats, pack_pairs, pair_micro_batches, sequence_logps
from shared.records import DpoStats, PreferenceBatch, PreferencePair

if TYPE_CHECKING:
    from learner.learner import Learner


def train_pairs(learner: Learner, batch: PreferenceBatch) -> DpoStats:
    """One DPO update (algo.objective=dpo): `epochs` passes of `minibatches` optimiser steps over the pairs.

    The reference's sequence log-probs (adapter off, learner/dpo.py) are computed once per batch. Log-probs are at
    temperature 1, the model's own distribution, as in TRL's DPO. A micro-batch holds whole pairs (chosen and
    rejected rows together), `train.micro_batch_tokens` tokens at most.
    """
    pairs = batch.pairs
    with learner._reference_policy(), torch.no_grad():
        ref_2P = torch.zeros(2, len(pairs))
        for micro in _pair_micro(learner, pairs):
            ref_2P[:, micro] = torch.stack(_pair_logps(learner, [pairs[j] for j in micro])).float().cpu()
    stats: list[tuple[float, torch.Tensor]] = []
    grad_norms: list[float] = []
    learner.model.train()
    try:
        accumulate = partial(_accumulate_pairs, learner, pairs, ref_2P)
        skipped = learner._update(
            len(pairs), min(learner._train.minibatches, len(pairs)), accumulate, stats, grad_norms
        )
    finally:
        learner.model.eval()
    learner.version += 1
    return dpo_stats(stats, grad_norms, skipped)


def _accumulate_pairs(
    learner: Learner, pairs: tuple[PreferencePair, ...], ref_2P: torch.Tensor, idx: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Backward of one minibatch's mean DPO loss, a micro-batch of pairs at a time; returns the loss and the
    (3,) means of accuracy, chosen and rejected implicit rewards."""
    rows = [pairs[i] for i in idx.tolist()]
    ref_2B = ref_2P[:, idx].to(learner._device)
    total = torch.zeros((), device=learner._device)
    sums_3 = torch.zeros(3, device=learner._device)
    for micro in _pair_micro(learner, rows):
        chosen_B, rejected_B = _pair_logps(learner, [rows[j] for j in micro])
        len_2B = completion_lengths([rows[j] for j in micro]).to(learner._device)
        a = learner._algo
        ref_c, ref_r = ref_2B[0, micro], ref_2B[1, micro]
        terms = dpo_loss(chosen_B, rejected_B, ref_c, ref_r, len_2B[0], len_2B[1], a.dpo_beta, a.dpo_loss)
        loss = terms.loss_B.sum() / len(rows)
        loss.backward()
        total += loss.detach()
        c_B, r_B = terms.chosen_reward_B, terms.rejected_reward_B
        sums_3 += torch.stack([(c_B > r_B).float().sum(), c_B.sum(), r_B.sum()])
    return total, (sums_3 / len(rows)).cpu()


def _pair_micro(learner: Learner, pairs: Sequence[PreferencePair]) -> list[list[int]]:
    return pair_micro_batches(pairs, learner._train.micro_batch_tokens)


def _pair_logps(learner: Learner, pairs: Sequence[PreferencePair]) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,) summed completion log-probs of the chosen and of the rejected completions, under the current policy."""
    packed = pack_pairs(pairs, learner._device)
    logp_BC, _ = learner._completion_logprobs(packed, 1.0)
    chosen_B, rejected_B = sequence_logps(logp_BC, packed.mask_BC).chunk(2)
    return chosen_B, rejected_B
