"""The built-in reward functions, each following the protocol in `protocol.py`.

Rewards that compare against a reference read it from a data set column: `answer` for `exact_match` and
`math`, `reference` (a string or a list of strings) for `chrf`, `bleu` and `ter`. A missing column is an error
naming the column; a None value in it means the reward does not apply to that completion (it returns None).
The `*_reward` factories build variants with other settings for use from user code. Every built-in takes
completions in both formats TRL uses: strings, or (conversational data) `[{"role": "assistant", "content": ...}]`.
"""

from __future__ import annotations

import re
from typing import Any

from math_verify import parse, verify
from sacrebleu.metrics import BLEU, CHRF, TER

from learner.rewards.protocol import RewardFn, RewardValues
from shared.chat import message_text


def texts(completions: list[Any]) -> list[str]:
    """The text of every completion, given as strings or as TRL conversational message lists."""
    return [message_text(c) for c in completions]


def require_column(columns: dict[str, Any], name: str, reward: str) -> list[Any]:
    """The column `name` as a list; a ValueError naming the reward and the batch's columns if it is missing."""
    if name not in columns:
        have = ", ".join(sorted(columns)) or "none"
        raise ValueError(f"reward {reward!r} needs a {name!r} column; this batch has columns: {have}")
    return list(columns[name])


def exact_match(prompts: list[str], completions: list[str], **columns: Any) -> RewardValues:
    """1.0 when the completion, stripped of surrounding whitespace, equals `str(answer).strip()`, else 0.0."""
    answers = require_column(columns, "answer", "exact_match")
    return [
        None if answer is None else float(completion.strip() == str(answer).strip())
        for completion, answer in zip(texts(completions), answers, strict=True)
    ]


def math_answer(prompts: list[str], completions: list[str], **columns: Any) -> RewardValues:
    """1.0 when math-verify finds the completion's answer equal to the `answer` column, else 0.0.

    The completion's answer may be boxed (`\\boxed{...}`), in `$...$` or plain; equal values in other forms
    count (1/2, 0.5 and \\frac{1}{2} all match). None where the gold answer itself cannot be parsed.
    """
    answers = require_column(columns, "answer", "math")
    return [_math_equal(completion, answer) for completion, answer in zip(texts(completions), answers, strict=True)]


def _math_equal(completion: str, answer: Any) -> float | None:
    # math-verify's own timeouts use signal.alarm, which only works in the main thread; the reward worker runs
    # sync rewards in a thread and enforces its own timeout, so both are turned off here.
    if answer is None:
        return None
    gold = parse(str(answer), parsing_timeout=None)
    if not gold:  # a bare expression such as x+1 only parses as LaTeX
        gold = parse(f"${answer}$", parsing_timeout=None)
    if not gold:
        return None
    predicted = parse(completion, parsing_timeout=None)
    return float(verify(gold, predicted, timeout_seconds=None))


THINK_ANSWER_PATTERN = r"<think>.*?</think>\s*<answer>.*?</answer>"
"""A `<think>...</think>` block followed by an `<answer>...</answer>` block, and nothing else."""


def format_reward(pattern: str) -> RewardFn:
    """Build a reward that is 1.0 when the whole stripped completion matches `pattern`, else 0.0.

    The match is `re.fullmatch` with DOTALL, so `.` spans lines.
    """
    regex = re.compile(pattern, re.DOTALL)

    def format_match(prompts: list[str], completions: list[str], **columns: Any) -> RewardValues:
        return [float(regex.fullmatch(completion.strip()) is not None) for completion in texts(completions)]

    return format_match


think_answer_format = format_reward(THINK_ANSWER_PATTERN)
"""The `format` built-in: 1.0 for `<think>...</think>` then `<answer>...</answer>` (THINK_ANSWER_PATTERN)."""


def references_column(columns: dict[str, Any], reward: str) -> list[list[str] | None]:
    """The `reference` column as one list of reference strings per completion (None where it does not apply)."""
    refs: list[list[str] | None] = []
    for value in require_column(columns, "reference", reward):
        if isinstance(value, str):
            refs.append([value])
        elif isinstance(value, (list, tuple)):
            refs.append([str(v) for v in value] or None)
        elif value is None:
            refs.append(None)
        else:
            raise TypeError(f"reward {reward!r}: a reference must be a str or a list of str, got {value!r}")
    return refs


def _sentence_scores(
    metric: BLEU | CHRF | TER, completions: list[str], reward: str, columns: dict[str, Any]
) -> list[float | None]:
    # A fresh metric per batch: sacrebleu metrics are cheap, and sharing none keeps threads independent.
    refs = references_column(columns, reward)
    pairs = zip(texts(completions), refs, strict=True)
    return [None if r is None else metric.sentence_score(c, r).score for c, r in pairs]


def chrf(prompts: list[str], completions: list[str], **columns: Any) -> RewardValues:
    """chrF++ (sacrebleu `CHRF(word_order=2)` sentence score) against the `reference` column, in 0..1."""
    scores = _sentence_scores(CHRF(word_order=2), completions, "chrf", columns)
    return [None if s is None else s / 100 for s in scores]


def bleu(prompts: list[str], completions: list[str], **columns: Any) -> RewardValues:
    """Sentence BLEU (sacrebleu, `effective_order=True`) against the `reference` column, scaled to 0..1."""
    scores = _sentence_scores(BLEU(effective_order=True), completions, "bleu", columns)
    return [None if s is None else s / 100 for s in scores]


def ter(prompts: list[str], completions: list[str], **columns: Any) -> RewardValues:
    """`max(0, 1 - TER/100)` with sacrebleu's sentence TER against the `reference` column.

    TER is an edit rate (0 is perfect, it can exceed 100), so it is flipped to higher-is-better and floored
    at 0.
    """
    scores = _sentence_scores(TER(), completions, "ter", columns)
    return [None if s is None else max(0.0, 1.0 - s / 100) for s in scores]


def soft_overlong_penalty(length: int, max_len: int, cache_len: int) -> float:
    """DAPO's soft overlong punishment: 0 up to `max_len - cache_len` tokens, then linear down to -1 at
    `max_len`, and -1 beyond it."""
    free = max_len - cache_len
    if length <= free:
        return 0.0
    if length <= max_len:
        return (free - length) / cache_len
    return -1.0


def overlong_reward(max_len: int, cache_len: int) -> RewardFn:
    """Build a soft overlong reward with fixed limits, on the `completion_token_count` column."""
    if not 0 < cache_len <= max_len:
        raise ValueError(f"overlong_reward needs 0 < cache_len <= max_len, got {cache_len=} {max_len=}")

    def overlong_fixed(prompts: list[str], completions: list[str], **columns: Any) -> RewardValues:
        counts = require_column(columns, "completion_token_count", "overlong")
        return [None if n is None else soft_overlong_penalty(n, max_len, cache_len) for n in counts]

    return overlong_fixed


def overlong(prompts: list[str], completions: list[str], **columns: Any) -> RewardValues:
    """Soft overlong penalty (see `soft_overlong_penalty`) from the `completion_token_count` and `max_tokens`
    columns, with cache_len = max(1, max_tokens // 4): the last quarter of the budget is penalised."""
    counts = require_column(columns, "completion_token_count", "overlong")
    limits = require_column(columns, "max_tokens", "overlong")
    return [
        None if n is None or m is None else soft_overlong_penalty(n, m, max(1, m // 4))
        for n, m in zip(counts, limits, strict=True)
    ]


def repetition_penalty(text: str, n: int) -> float:
    """`unique/total - 1` over the whitespace-token n-grams of `text`: 0 without repeats, near -1 with many.

    0.0 for texts with fewer than n tokens.
    """
    words = text.split()
    if len(words) < n:
        return 0.0
    ngrams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return len(set(ngrams)) / len(ngrams) - 1.0


def repetition_reward(n: int = 3) -> RewardFn:
    """Build an n-gram repetition penalty reward (see `repetition_penalty`)."""
    if n < 1:
        raise ValueError(f"repetition_reward needs n >= 1, got {n}")

    def repetition(prompts: list[str], completions: list[str], **columns: Any) -> RewardValues:
        return [repetition_penalty(completion, n) for completion in texts(completions)]

    return repetition


repetition = repetition_reward(3)
"""The `repetition` built-in: trigram repetition penalty, 0 to -1."""
