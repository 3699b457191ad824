"""`reward_model`: a transformers sequence-classification model scoring completions, in its own actor.

`RewardModelScorer` is the actor body (plain Python; the launcher applies `ray.remote` with its resources) so a
large model is loaded once per run, not once per reward actor, and sits on a GPU when the actor is given one. The
model must have one output (`num_labels == 1`); a completion's score is that logit. What the model reads is
`rewards.reward_model.pair_format`:

- `prompt_completion` (a reward model): the text `prompt + completion`; for chat prompts (message lists), the
  conversation with the completion as the assistant's reply, rendered by the reward model's own chat template (as TRL
  feeds reward models; its special tokens come from the template, none are added), or, when its tokenizer has no
  template, the messages' contents joined by newlines followed by the completion;
- `reference_candidate` (a learned metric such as BLEURT): the tokenizer's text pair (reference, completion), i.e.
  `[CLS] reference [SEP] completion [SEP]` with segment ids for a BERT-style model, the way BLEURT-20's PyTorch
  ports are called (`model(**tokenizer(references, candidates))`);
- `candidate_reference`: the same pair the other way round, for metrics trained so.

Texts are tokenized by the model's own tokenizer (special tokens added, right-truncated to `max_length` tokens). A
pair format reads the `reference` column (a string or a list of strings: the best score over them; None: the
reward does not apply there).
"""

from __future__ import annotations

from typing import Any

import ray

from learner.rewards.builtin import references_column
from learner.rewards.context import CONTEXT_HINTS, RewardContext, RewardContextError
from learner.rewards.protocol import RewardValues
from shared.chat import message_text
from shared.devices import pick_device

PAIR_FORMATS = ("prompt_completion", "reference_candidate", "candidate_reference")


class RewardModelScorer:
    """Holds a sequence-classification model and its tokenizer; scores batches of texts or text pairs."""

    def __init__(
        self,
        path: str,
        *,
        max_length: int = 128,
        batch_size: int = 32,
        dtype: str = "float32",
        pair_format: str = "prompt_completion",
    ) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        if pair_format not in PAIR_FORMATS:
            raise ValueError(f"pair_format must be one of {PAIR_FORMATS}, got {pair_format!r}")
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
        self.pair_format = pair_format

    def score(
        self,
        prompts: list[str] | list[Any],
        completions: list[str],
        references: list[list[str] | None] | None = None,
    ) -> list[float | None]:
        """One score per completion: the model's single logit for its text or its best (reference, completion)
        pair; None where a pair format has no reference. A prompt is a string or a list of chat messages."""
        if self.pair_format == "prompt_completion":
            if any(not isinstance(p, str) for p in prompts) and self._tokenizer.chat_template:
                texts = [self._conversation(p, c) for p, c in zip(prompts, completions, strict=True)]
                return list(self._logits(texts, add_special_tokens=False))
            texts = [_joined(p) + c for p, c in zip(prompts, completions, strict=True)]
            return list(self._logits(texts))
        if references is None:
            raise ValueError(f"pair_format={self.pair_format!r} needs the references of the completions")
        pairs = [(i, r, c) for i, (c, refs) in enumerate(zip(completions, references, strict=True)) for r in refs or ()]
        if self.pair_format == "candidate_reference":
            pairs = [(i, c, r) for i, r, c in pairs]
        scores = self._logits([a for _, a, _ in pairs], [b for _, _, b in pairs])
        best: list[float | None] = [None] * len(completions)
        for (i, _, _), s in zip(pairs, scores, strict=True):
            previous = best[i]
            best[i] = s if previous is None else max(previous, s)
        return best

    def _conversation(self, prompt: str | list[Any], completion: str) -> str:
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [dict(m) for m in prompt]
        messages.append({"role": "assistant", "content": completion})
        return str(self._tokenizer.apply_chat_template(messages, tokenize=False))

    def _logits(
        self, first: list[str], second: list[str] | None = None, add_special_tokens: bool = True
    ) -> list[float]:
        import torch

        scores: list[float] = []
        with torch.no_grad():
            for start in range(0, len(first), self._batch_size):
                end = start + self._batch_size
                enc = self._tokenizer(
                    first[start:end],
                    second[start:end] if second is not None else None,
                    padding=True,
                    padding_side="right",
                    truncation=True,
                    max_length=self._max_length,
                    add_special_tokens=add_special_tokens,
                    return_tensors="pt",
                ).to(self._device)
                logits_B1 = self._model(**enc).logits
                scores.extend(logits_B1[:, 0].float().tolist())
        return scores

    def device(self) -> str:
        return str(self._device)


def reward_model(
    prompts: list[str], completions: list[str], *, reward_context: RewardContext, **columns: Any
) -> RewardValues:
    """The reward-model actor's score of every completion (raw logit, unbounded); see the module docstring for what
    the model reads. The `reference` column is sent when the batch has one (pair formats need it)."""
    scorer = reward_context.reward_model
    if scorer is None:  # check_context refuses such a reward set when it is installed
        raise RewardContextError(f"reward_model: {CONTEXT_HINTS['reward_model']}")
    references = references_column(columns, "reward_model") if "reference" in columns else None
    prompts_sent = [p if isinstance(p, str) else [dict(m) for m in p] for p in prompts]
    completion_texts = [message_text(c) for c in completions]
    return ray.get(scorer.score.remote(prompts_sent, completion_texts, references))


def _joined(prompt: str | list[Any]) -> str:
    return prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt) + "\n"


reward_model.context_requires = ("reward_model",)  # type: ignore[attr-defined]
