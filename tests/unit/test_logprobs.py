"""learner/logprobs.py against full-vocabulary computations: the chunked selective log-softmax gives the same
logprobs, entropies and gradients as `log_softmax` on whole logits, and micro-batches respect their budget."""

from __future__ import annotations

import pytest
import torch

from learner.logprobs import micro_batches, pack, selective_logprobs

N, D, V = 37, 16, 1000


def _full(hidden_ND, head, targets_N, temperature):
    logp_NV = torch.log_softmax(head(hidden_ND).float() / temperature, dim=-1)
    entropy_N = -(logp_NV.exp() * logp_NV).sum(-1)
    return logp_NV.gather(-1, targets_N[:, None])[:, 0], entropy_N


@pytest.mark.parametrize("chunk", [1, 8, 64])
@pytest.mark.parametrize("entropy_grad", [False, True])
def test_chunked_logprobs_and_gradients_equal_the_full_ones(chunk, entropy_grad):
    torch.manual_seed(0)
    head = torch.nn.Linear(D, V, bias=False)
    hidden_ND = torch.randn(N, D, requires_grad=True)
    targets_N = torch.randint(0, V, (N,))
    weights_N = torch.randn(N)

    logp_N, entropy_N = selective_logprobs(
        hidden_ND, head, targets_N, temperature=0.7, chunk=chunk, entropy_grad=entropy_grad
    )
    assert entropy_N.requires_grad == entropy_grad
    (logp_N * weights_N + entropy_N * weights_N.flip(0)).sum().backward()
    got_h, got_w = hidden_ND.grad.clone(), head.weight.grad.clone()

    hidden_ND.grad, head.weight.grad = None, None
    want_logp_N, want_entropy_N = _full(hidden_ND, head, targets_N, 0.7)
    if not entropy_grad:
        want_entropy_N = want_entropy_N.detach()
    (want_logp_N * weights_N + want_entropy_N * weights_N.flip(0)).sum().backward()

    torch.testing.assert_close(logp_N, want_logp_N, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(entropy_N, want_entropy_N, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_h, hidden_ND.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_w, head.weight.grad, rtol=1e-5, atol=1e-6)


def test_no_grad_makes_no_graph():
    head = torch.nn.Linear(D, V, bias=False)
    with torch.no_grad():
        logp_N, entropy_N = selective_logprobs(
            torch.randn(5, D), head, torch.zeros(5, dtype=torch.long), temperature=1.0, chunk=2
        )
    assert not logp_N.requires_grad and not entropy_N.requires_grad


def test_micro_batches_hold_every_row_once_within_the_budget():
    lengths = [5, 17, 3, 9, 9, 30, 1, 12]
    groups = micro_batches(lengths, budget=20)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    for g in groups:
        longest = max(lengths[i] for i in g)
        assert len(g) == 1 or len(g) * longest <= 20  # a row longer than the budget goes alone
    assert [5] in groups
    assert micro_batches(lengths, budget=10_000) == [sorted(range(8), key=lambda i: -lengths[i])]


def test_pack_points_every_completion_token_at_the_position_that_predicts_it():
    packed = pack([[1, 2, 3], [4]], [[5, 6], [7, 8, 9]], torch.device("cpu"))
    flat = packed.tokens_BL.reshape(-1)
    # Position t predicts token t+1 of the same row.
    assert (flat[packed.positions_N + 1] == packed.targets_N).all()
    assert packed.targets_N.tolist() == [5, 6, 7, 8, 9]
    assert packed.mask_BC.tolist() == [[True, True, False], [True, True, True]]
    assert packed.attention_BL.sum(1).tolist() == [5, 4]
