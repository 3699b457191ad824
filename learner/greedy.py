"""Greedy decoding by plain forward passes: the learner's side of the served-adapter probe
(rollout/README.md, "The served-adapter probe").

No cache and no generation config, so nothing but the model's weights decides the tokens; every prompt gets exactly
`n_tokens` forward passes (EOS ignored), which keeps the ranks of a sharded base in lockstep when all of them decode.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

from learner.logprobs import Packed, hidden_states, lm_head
from shared.records import ProbeSet


@torch.no_grad()
def greedy_probe(
    causal_lm: torch.nn.Module,
    prompt_ids: list[list[int]],
    n_tokens: int,
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
) -> ProbeSet:
    """The greedy continuation of each prompt, `n_tokens` long, and the logprob of each chosen token."""
    tokens, logprobs = [], []
    for prompt in prompt_ids:
        ids, chosen, chosen_logp = list(prompt), [], []
        for _ in range(n_tokens):
            logp_V = next_token_logprobs(causal_lm, ids, device, autocast_dtype)
            token = int(logp_V.argmax())
            ids.append(token)
            chosen.append(token)
            chosen_logp.append(float(logp_V[token]))
        tokens.append(tuple(chosen))
        logprobs.append(tuple(chosen_logp))
    return ProbeSet(tuple(map(tuple, prompt_ids)), tuple(tokens), tuple(logprobs))


def next_token_logprobs(
    causal_lm: torch.nn.Module, ids: list[int], device: torch.device, autocast_dtype: torch.dtype | None = None
) -> torch.Tensor:
    """(V,) log-softmax of the next token after `ids`, on the CPU: only the last position goes through the LM head."""
    last = torch.tensor([len(ids) - 1], device=device)
    packed = Packed(torch.tensor([ids], device=device), torch.ones(1, len(ids), device=device), last, last, last)
    autocast = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else nullcontext()
    with autocast:
        logits_V = lm_head(causal_lm)(hidden_states(causal_lm, packed))[0].float()
    return torch.log_softmax(logits_V, dim=-1).cpu()
