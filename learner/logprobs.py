"""Completion-token logprobs and entropies from a causal LM, without full-vocabulary logits for the whole batch.

A real vocabulary (150k tokens) makes float32 logits 600 KB per position, so logits for every position of a batch
are what limits the learner's memory. Here the decoder's final hidden states are gathered at the positions that
predict completion tokens only, then projected through the LM head and reduced a chunk of positions at a time (a
selective log-softmax): at most `chunk` positions have logits at once. Under autograd each chunk is checkpointed,
so backward recomputes its logits instead of keeping (tokens, vocabulary) activations alive. Rows are grouped into
micro-batches by a token budget (`micro_batches`); a row is never split or packed with another.

Shapes: B rows, L tokens (prompt + completion, right-padded), C completion tokens, N = completion tokens of all
rows, D hidden size, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint


@dataclass(frozen=True)
class Packed:
    """Rows of prompt + completion tokens, right-padded, and where their completion tokens are."""

    tokens_BL: torch.Tensor
    """Token ids, padding 0 (masked out by attention_BL)."""
    attention_BL: torch.Tensor
    positions_N: torch.Tensor
    """Flat index into (B * L) of every position that predicts a completion token, row by row."""
    targets_N: torch.Tensor
    """The completion token each of those positions predicts."""
    mask_BC: torch.Tensor
    """(B, C) True where row b has a j-th completion token: the layout of every per-token tensor of the loss."""


def pack(prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], device: torch.device) -> Packed:
    """Right-pad prompt + completion rows; every completion needs at least one token and every prompt one."""
    length = max(len(p) + len(c) for p, c in zip(prompts, completions, strict=True))
    width = max(len(c) for c in completions)
    tokens_BL = torch.zeros((len(prompts), length), dtype=torch.long)
    attention_BL = torch.zeros((len(prompts), length), dtype=torch.long)
    mask_BC = torch.zeros((len(prompts), width), dtype=torch.bool)
    positions: list[int] = []
    targets: list[int] = []
    for b, (p, c) in enumerate(zip(prompts, completions, strict=True)):
        tokens_BL[b, : len(p) + len(c)] = torch.tensor([*p, *c])
        attention_BL[b, : len(p) + len(c)] = 1
        mask_BC[b, : len(c)] = True
        positions.extend(range(b * length + len(p) - 1, b * length + len(p) - 1 + len(c)))
        targets.extend(c)
    return Packed(
        tokens_BL.to(device),
        attention_BL.to(device),
        torch.tensor(positions, dtype=torch.long, device=device),
        torch.tensor(targets, dtype=torch.long, device=device),
        mask_BC.to(device),
    )


def micro_batches(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Indices of rows grouped so that rows x longest row <= `budget` tokens per group (a longer row goes alone).

    Rows are taken longest first, so rows of similar length share a group and little of the budget is padding.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    groups: list[list[int]] = []
    for i in order:
        if groups and (len(groups[-1]) + 1) * lengths[groups[-1][0]] <= budget:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def selective_logprobs(
    hidden_ND: torch.Tensor,
    head: Callable[[torch.Tensor], torch.Tensor],
    targets_N: torch.Tensor,
    *,
    temperature: float,
    chunk: int,
    entropy_grad: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N,) float32 log softmax(head(h) / temperature) at the targets, and the (N,) entropy of that distribution.

    The entropy carries a graph only with `entropy_grad` (an entropy bonus in the loss); otherwise it is logged only.
    """

    def one_chunk(h_KD: torch.Tensor, targets_K: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # (K, V) temporaries are what this function's memory is made of: scale in place, and the entropy's
        # sum(p * logits) as a batched dot product rather than an elementwise product.
        logits_KV = head(h_KD).float().div_(temperature)
        lse_K = torch.logsumexp(logits_KV, dim=-1)
        logp_K = logits_KV.gather(-1, targets_K[:, None])[:, 0] - lse_K
        with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
            expected_K = (torch.softmax(logits_KV, dim=-1)[:, None, :] @ logits_KV[:, :, None])[:, 0, 0]
            entropy_K = lse_K - expected_K
        return logp_K, entropy_K

    graph = torch.is_grad_enabled() and hidden_ND.requires_grad
    logps, entropies = [], []
    for start in range(0, hidden_ND.shape[0], chunk):
        args = (hidden_ND[start : start + chunk], targets_N[start : start + chunk])
        logp_K, entropy_K = checkpoint(one_chunk, *args, use_reentrant=False) if graph else one_chunk(*args)
        logps.append(logp_K)
        entropies.append(entropy_K)
    if not logps:
        empty = hidden_ND.new_zeros(0, dtype=torch.float32)
        return empty, empty
    return torch.cat(logps), torch.cat(entropies)


def hidden_states(causal_lm: torch.nn.Module, packed: Packed) -> torch.Tensor:
    """(N, D) final hidden states (after the last norm) at the positions that predict completion tokens.

    The decoder is called without the LM head: a causal LM's own forward would make logits for every position.
    """
    decoder: Callable[..., Any] = causal_lm.get_decoder()  # type: ignore[operator]
    out = decoder(input_ids=packed.tokens_BL, attention_mask=packed.attention_BL)
    hidden_BLD = out.last_hidden_state
    return hidden_BLD.reshape(-1, hidden_BLD.shape[-1]).index_select(0, packed.positions_N)


def lm_head(causal_lm: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The model's output projection as a function of hidden states, with its logit soft-capping if it has one."""
    head: Callable[[torch.Tensor], torch.Tensor] = causal_lm.get_output_embeddings()  # type: ignore[operator]
    cap = getattr(causal_lm.config, "final_logit_softcapping", None)
    if cap is None:
        return head
    return lambda h: torch.tanh(head(h) / cap) * cap


def completion_logprobs(
    causal_lm: torch.nn.Module,
    packed: Packed,
    *,
    temperature: float,
    chunk: int,
    entropy_grad: bool = False,
    autocast_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C) completion-token logprobs and entropies of one micro-batch, zero where mask_BC is False.

    `autocast_dtype`: run the forward under CUDA autocast in that dtype (a bfloat16 base with float32 LoRA weights).
    """
    device = packed.tokens_BL.device
    autocast = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else nullcontext()
    with autocast:
        hidden_ND = hidden_states(causal_lm, packed)
        logp_N, entropy_N = selective_logprobs(
            hidden_ND,
            lm_head(causal_lm),
            packed.targets_N,
            temperature=temperature,
            chunk=chunk,
            entropy_grad=entropy_grad,
        )
    zeros_BC = torch.zeros(packed.mask_BC.shape, dtype=torch.float32, device=device)
    return zeros_BC.masked_scatter(packed.mask_BC, logp_N), zeros_BC.masked_scatter(packed.mask_BC, entropy_N)


def stack_rows(per_sample: list[torch.Tensor], idx: torch.Tensor, width: int) -> torch.Tensor:
    """(len(idx), width): the precomputed per-sample rows of `idx`, cut or zero-padded to `width` columns."""
    out = torch.zeros((len(idx), width))
    for j, i in enumerate(idx.tolist()):
        row = per_sample[i][:width]
        out[j, : len(row)] = row
    return out
