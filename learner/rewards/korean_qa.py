"""The rewards of a Korean grammar-norm QA competition, as in the seed post on GRPO for it (see the `korean_qa`
preset, launch/configs/korean_qa.yaml, which weighs them with ROUGE-1 and BERTScore).

The competition asks for answers of one shape: `"{chosen or corrected sentence}"이/가 옳다. {reason}`, and scores
exact match of the sentence plus ROUGE-1, BERTScore and BLEURT of the answer. `answer_format` pays for the shape;
`answer_exact_match` compares the quoted sentence with the `answer` column, so an answer with the right sentence
but a reason in other words still gets full exact-match credit (exact match of the whole completion never would).
"""

from __future__ import annotations

import re
from typing import Any

from learner.rewards.builtin import format_reward, require_column
from learner.rewards.protocol import RewardValues

ANSWER_PATTERN = r'"(?P<sentence>[^"\n]+)"\s?(이|가) 옳다\.\s*(?P<reason>\S.*)'
"""A quoted sentence, the particle 이 or 가, `옳다.`, then a non-empty reason."""

answer_format = format_reward(ANSWER_PATTERN)
"""1.0 when the whole stripped completion has the competition's shape (ANSWER_PATTERN), else 0.0."""


def answer_exact_match(prompts: list[str], completions: list[str], **columns: Any) -> RewardValues:
    """1.0 when the completion has the answer shape and its quoted sentence equals `str(answer).strip()`; 0.0
    otherwise; None where the answer is None."""
    answers = require_column(columns, "answer", "answer_exact_match")
    regex = re.compile(ANSWER_PATTERN, re.DOTALL)
    values: RewardValues = []
    for completion, answer in zip(completions, answers, strict=True):
        match = regex.fullmatch(completion.strip())
        if answer is None:
            values.append(None)
        else:
            values.append(float(match is not None and match["sentence"].strip() == str(answer).strip()))
    return values


def subject_particle(sentence: str) -> str:
    """이 after a final consonant, 가 after a vowel (by the last Hangul syllable; 가 when there is none)."""
    syllables = [ch for ch in sentence if "\uac00" <= ch <= "\ud7a3"]
    return "이" if syllables and (ord(syllables[-1]) - 0xAC00) % 28 else "가"


def answer_text(sentence: str, reason: str) -> str:
    """The competition's answer shape for `sentence` and `reason`."""
    return f'"{sentence}"{subject_particle(sentence)} 옳다. {reason}'
