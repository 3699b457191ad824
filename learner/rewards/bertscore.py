"""`bertscore`: BERTScore F1 of each completion against its references, computed in an actor of its own.

BERTScore (Zhang et al., 2020) embeds both texts with a contextual encoder, matches every token to its most similar
token of the other text by cosine similarity, and averages: precision over the completion's tokens, recall over the
reference's, F1 of the two. Tokens may be weighted by inverse document frequency. This follows the `bert-score`
package's computation (same tokenisation with special tokens, [CLS] and [SEP] weighted 0, idf = log((M+1)/(df+1))
over the M references of the call, best F1 over several references) without its baseline rescaling; a test checks
it against that package on a tiny model.

`BertScorer` is the actor body (plain Python; launch/actors.py applies `ray.remote` with its resources) so that the
encoder is loaded once per run, shared by every reward actor, and runs on a GPU when the actor is given one. Why not
the `bert-score` package itself: it reloads the model on every `score` call unless used through its class, pins its
own layer table and prints to stdout; the matching is a few tensor lines.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import ray

from learner.rewards.builtin import references_column
from learner.rewards.context import CONTEXT_HINTS, RewardContext, RewardContextError
from learner.rewards.protocol import RewardValues
from shared.devices import pick_device


class BertScorer:
    """Holds an encoder and its tokenizer; scores batches of (completion, references)."""

    def __init__(
        self,
        path: str,
        *,
        layer: int | None = None,
        idf: bool = False,
        max_length: int = 256,
        batch_size: int = 64,
        dtype: str = "float32",
    ) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        self._device = pick_device("auto")  # CUDA exactly when the actor was given a GPU (num_gpus > 0)
        self._tokenizer = AutoTokenizer.from_pretrained(path)
        self._model = AutoModel.from_pretrained(path, dtype=getattr(torch, dtype)).eval().to(self._device)
        layers = self._model.config.num_hidden_layers
        if layer is not None and not 1 <= layer <= layers:
            raise ValueError(f"rewards.bertscore.layer={layer}, but {path!r} has layers 1..{layers}")
        self._layer = layer or layers
        self._idf = idf
        # Never past what the encoder has positions for (a longer input fails in the embedding layer).
        limits = [
            max_length,
            self._tokenizer.model_max_length,
            getattr(self._model.config, "max_position_embeddings", 0),
        ]
        self._max_length = min(n for n in limits if n and n > 0)
        self._batch_size = batch_size
        self._special = {self._tokenizer.cls_token_id, self._tokenizer.sep_token_id} - {None}

    def score(self, completions: Sequence[str], references: Sequence[Sequence[str] | None]) -> list[float | None]:
        """BERTScore F1 of every completion against its best reference; None where it has no references."""
        pairs = [(i, r) for i, refs in enumerate(references) if refs for r in refs]
        texts = list(dict.fromkeys([*completions, *(r for _, r in pairs)]))
        ids, embeddings = self._embed(texts)
        index = {t: k for k, t in enumerate(texts)}
        weight = self._weights([ids[index[r]] for _, r in pairs])
        best: list[float | None] = [None] * len(completions)
        for i, ref in pairs:
            c, r = index[completions[i]], index[ref]
            f1 = _greedy_f1(embeddings[c], embeddings[r], [weight(t) for t in ids[c]], [weight(t) for t in ids[r]])
            previous = best[i]
            best[i] = f1 if previous is None else max(previous, f1)
        return best

    def _embed(self, texts: list[str]) -> tuple[list[list[int]], list[Any]]:
        """Token ids and unit-norm embeddings (T, D) of the chosen layer, per text."""
        import torch

        ids = [self._encode(t) for t in texts]
        embeddings = []
        pad = self._tokenizer.pad_token_id or 0
        with torch.no_grad():
            for start in range(0, len(ids), self._batch_size):
                chunk = ids[start : start + self._batch_size]
                width = max(len(x) for x in chunk)
                input_ids_BT = torch.tensor([x + [pad] * (width - len(x)) for x in chunk], device=self._device)
                mask_BT = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in chunk], device=self._device)
                out = self._model(input_ids=input_ids_BT, attention_mask=mask_BT, output_hidden_states=True)
                hidden_BTD = out.hidden_states[self._layer].float()
                unit_BTD = hidden_BTD / hidden_BTD.norm(dim=-1, keepdim=True)
                embeddings += [unit_BTD[b, : len(x)].cpu() for b, x in enumerate(chunk)]
        return ids, embeddings

    def _encode(self, text: str) -> list[int]:
        return self._tokenizer.encode(
            text.strip(), add_special_tokens=True, max_length=self._max_length, truncation=True
        )

    def _weights(self, reference_ids: list[list[int]]) -> Callable[[int], float]:
        """Token weight: 0 for [CLS]/[SEP]; idf over the call's references, or 1."""
        if self._idf:
            df = Counter(t for ids in reference_ids for t in set(ids))
            m = len(reference_ids)
            return lambda t: 0.0 if t in self._special else math.log((m + 1) / (df.get(t, 0) + 1))
        return lambda t: 0.0 if t in self._special else 1.0


def _greedy_f1(cand_TD: Any, ref_TD: Any, cand_w: list[float], ref_w: list[float]) -> float:
    """F1 of greedy cosine matching: each token's best similarity in the other text, weighted by its weight."""
    import torch

    sim_CR = cand_TD @ ref_TD.T
    wc, wr = torch.tensor(cand_w), torch.tensor(ref_w)
    if wc.sum() <= 0 or wr.sum() <= 0:  # an empty text: bert-score also scores it 0
        return 0.0
    precision = (sim_CR.max(dim=1).values * wc).sum() / wc.sum()
    recall = (sim_CR.max(dim=0).values * wr).sum() / wr.sum()
    total = precision + recall
    return float(2 * precision * recall / total) if total > 0 else 0.0


def bertscore(
    prompts: list[str], completions: list[str], *, reward_context: RewardContext, **columns: Any
) -> RewardValues:
    """BERTScore F1 (0..1 in practice) of each completion against the `reference` column, from the BERTScore actor."""
    scorer = reward_context.bertscore
    if scorer is None:  # check_context refuses such a reward set when it is installed
        raise RewardContextError(f"bertscore: {CONTEXT_HINTS['bertscore']}")
    references = references_column(columns, "bertscore")
    return ray.get(scorer.score.remote(list(completions), references))


bertscore.context_requires = ("bertscore",)  # type: ignore[attr-defined]
