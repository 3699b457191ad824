"""`reward_model`: a transformers sequence-classification model scoring prompt + completion, in its own actor.

`RewardModelScorer` is the actor body (plain Python; the launcher applies `ray.remote` with its resources) so a
large model is loaded once per run, not once per reward actor, and can sit on a GPU of its own. The model must
have one output (`num_labels == 1`): the score of a completion is that logit for the text `prompt + completion`,
tokenized by the model's own tokenizer (special tokens added, right-truncated to `max_length` tokens).
"""

from __future__ import annotations

from typing import Any

import ray

from learner.rewards.context import CONTEXT_HINTS, RewardContext, RewardContextError
from learner.rewards.protocol import RewardValues
from shared.chat import message_text
from shared.devices import pick_device


class RewardModelScorer:
    """Holds a sequence-classification model and its tokenizer; scores batches of prompt + completion."""

    def __init__(self, path: str, *, max_length: int = 128, batch_size: int = 32, dtype: str = "float32") -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self._device = pick_device("auto")  # CUDA exactly when the actor was given a GPU (num_gpus > 0)
        self._tokenizer = AutoTokenizer.from_pretrained(path)
        if self._tokenizer.pad_token is None:  # instruct tokenizers often have none; padding needs one
            self._tokenizer.pad_token = self._tokenizer.eos_token
        model = AutoModelForSequenceClassification.from_pretrained(path, dtype=getattr(torch, dtype))
        self._model = model.to(self._device).eval()
        if self._model.config.num_labels != 1:
            raise ValueError(
                f"reward model {path!r} has num_labels={self._model.config.num_labels}; a reward model needs "
                "exactly one output (num_labels=1)"
            )
        if self._model.config.pad_token_id is None:  # the classifier pools the last non-pad token
            self._model.config.pad_token_id = self._tokenizer.pad_token_id
        self._max_length = max_length
        self._batch_size = batch_size

    def score(self, prompts: list[str], completions: list[str]) -> list[float]:
        """One score per completion: the model's single logit for `prompt + completion`."""
        import torch

        texts = [p + c for p, c in zip(prompts, completions, strict=True)]
        scores: list[float] = []
        with torch.no_grad():
            for start in range(0, len(texts), self._batch_size):
                enc = self._tokenizer(
                    texts[start : start + self._batch_size],
                    padding=True,
                    padding_side="right",
                    truncation=True,
                    max_length=self._max_length,
                    return_tensors="pt",
                )
                enc = enc.to(self._device)
                logits_B1 = self._model(input_ids=enc.input_ids, attention_mask=enc.attention_mask).logits
                scores.extend(logits_B1[:, 0].float().tolist())
        return scores

    def device(self) -> str:
        return str(self._device)


def reward_model(
    prompts: list[str], completions: list[str], *, reward_context: RewardContext, **columns: Any
) -> RewardValues:
    """The reward-model actor's score of every prompt + completion (raw logit, unbounded)."""
    scorer = reward_context.reward_model
    if scorer is None:  # check_context refuses such a reward set when it is installed
        raise RewardContextError(f"reward_model: {CONTEXT_HINTS['reward_model']}")
    # Conversational prompts reach the model as their messages' text (the rendered template is not kept here).
    prompt_texts = [p if isinstance(p, str) else "\n".join(m["content"] for m in p) for p in prompts]
    completion_texts = [message_text(c) for c in completions]
    return ray.get(scorer.score.remote(prompt_texts, completion_texts))


reward_model.context_requires = ("reward_model",)  # type: ignore[attr-defined]
