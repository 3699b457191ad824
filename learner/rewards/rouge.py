"""ROUGE-1, ROUGE-2 and ROUGE-L rewards (F1 by default) that work on Korean, against the `reference` column.

Why not `rouge-score` as it comes: its default tokenizer lowercases and keeps only `[a-z0-9]` runs, so a Korean
(or Chinese, Japanese, Russian...) sentence becomes no tokens and every pair scores 0. The metric itself is a few
lines (clipped n-gram overlap; longest common subsequence for ROUGE-L), written here so that the tokenizer is ours.
A test checks the scores against `rouge-score` given the same tokens.

Tokenizers (`rewards.rouge.tokenizer`):

- `auto` (default): text is case-folded, punctuation and symbols become spaces, then it is split on whitespace;
  inside each word, every character of a script written without spaces between morphemes (Hangul, CJK ideographs,
  kana, Thai, Lao, Khmer, Myanmar) is a token of its own, and runs of other letters and digits stay whole words.
  Latin, Cyrillic or Greek text therefore gets plain word ROUGE. Why characters for Hangul: a Korean word (eojeol)
  carries its particles and endings (`서울은`, `서울에서`, `서울의` are three different words with one stem), so
  word tokens rarely match even when the content agrees; syllables do, and ROUGE-1/2 over syllables is the usual
  dependency-free substitute for a morphological analyser. ROUGE-2 and ROUGE-L then see syllable order.
- `whitespace`: the same normalisation, then whitespace words only (the Latin-script convention).
- `character`: the same normalisation, then every non-space character is a token.
- `model`: the tokens of a transformers tokenizer (`rewards.rouge.tokenizer_path`, default `model.path`) on the
  raw text; subword ROUGE, language-neutral but tied to one vocabulary.

With several references a completion gets its best score over them. The tokenizer in force is printed once per
process and reward (`[prolora] rouge1: tokenizer auto ...`), so a log says how a score was computed.
"""

from __future__ import annotations

import functools
import re
import sys
import unicodedata
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from learner.rewards.builtin import references_column
from learner.rewards.context import RewardContext
from learner.rewards.protocol import RewardFn, RewardValues
from shared.config import RougeConfig

Tokenizer = Callable[[str], list[str]]

CHARACTER_SCRIPTS = re.compile(
    "[\u1100-\u11ff\u3130-\u318f\uac00-\ud7a3"  # Hangul jamo, compatibility jamo, syllables
    "\u3040-\u30ff\u31f0-\u31ff"  # kana
    "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"  # CJK ideographs
    "\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff]"  # Thai, Lao, Myanmar, Khmer
)
"""Characters of scripts written without spaces between morphemes: one token each under `auto`."""


def normalise(text: str) -> str:
    """Case-fold and turn punctuation and symbols into spaces (Unicode categories P* and S*)."""
    return "".join(" " if unicodedata.category(ch)[0] in "PS" else ch for ch in text.casefold())


def whitespace_tokens(text: str) -> list[str]:
    return normalise(text).split()


def character_tokens(text: str) -> list[str]:
    return [ch for ch in normalise(text) if not ch.isspace()]


def auto_tokens(text: str) -> list[str]:
    """Whitespace words, with characters of CHARACTER_SCRIPTS split off one by one (see the module docstring)."""
    tokens: list[str] = []
    for word in normalise(text).split():
        run = ""
        for ch in word:
            if CHARACTER_SCRIPTS.match(ch):
                tokens += [run, ch] if run else [ch]
                run = ""
            else:
                run += ch
        if run:
            tokens.append(run)
    return tokens


@functools.lru_cache(maxsize=4)
def model_tokens(path: str) -> Tokenizer:
    """The token strings of the transformers tokenizer at `path` (no special tokens)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    return lambda text: tokenizer.tokenize(text)


def tokenizer_for(settings: RougeConfig, model_path: str | None) -> tuple[Tokenizer, str]:
    """The tokenizer `settings` name, and a description of it for the log."""
    if settings.tokenizer == "model":
        path = settings.tokenizer_path or model_path
        if not path:
            raise ValueError("rewards.rouge.tokenizer=model needs rewards.rouge.tokenizer_path (or model.path)")
        return model_tokens(path), f"model tokenizer of {path}"
    named: dict[str, tuple[Tokenizer, str]] = {
        "auto": (auto_tokens, "auto (words; Hangul/CJK/kana/Thai characters one token each)"),
        "whitespace": (whitespace_tokens, "whitespace words"),
        "character": (character_tokens, "characters"),
    }
    return named[settings.tokenizer]


def ngrams(tokens: Sequence[str], n: int) -> Counter[tuple[str, ...]]:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence (dynamic programming, one row at a time)."""
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def _measure(overlap: int, candidate_total: int, reference_total: int, measure: str) -> float:
    precision = overlap / candidate_total if candidate_total else 0.0
    recall = overlap / reference_total if reference_total else 0.0
    if measure == "precision":
        return precision
    if measure == "recall":
        return recall
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def rouge_score(kind: str, candidate: list[str], reference: list[str], measure: str = "f1") -> float:
    """ROUGE-N (`rouge1`, `rouge2`, ...) or ROUGE-L (`rougeL`) of two token lists: F1, precision or recall."""
    if kind == "rougeL":
        return _measure(lcs_length(candidate, reference), len(candidate), len(reference), measure)
    n = int(kind.removeprefix("rouge"))
    cand, ref = ngrams(candidate, n), ngrams(reference, n)
    return _measure(sum((cand & ref).values()), sum(cand.values()), sum(ref.values()), measure)


_announced: set[tuple[str, str]] = set()


def _announce(kind: str, description: str) -> None:
    if (kind, description) not in _announced:
        _announced.add((kind, description))
        print(f"[prolora] {kind}: tokenizer {description}", file=sys.stderr, flush=True)


def rouge_reward(kind: str, settings: RougeConfig | None = None) -> RewardFn:
    """Build the `kind` ROUGE reward (`rouge1`, `rouge2`, `rougeL`). Settings come from `settings` when given,
    else from the run's RewardContext (`rewards.rouge`), else the defaults (auto tokenizer, F1)."""
    if not re.fullmatch(r"rouge([1-9]|L)", kind):
        raise ValueError(f"ROUGE kind must be rouge1..rouge9 or rougeL, got {kind!r}")

    def rouge(
        prompts: list[str], completions: list[str], *, reward_context: RewardContext | None = None, **columns: Any
    ) -> RewardValues:
        chosen = settings or (reward_context.rouge if reward_context else None) or RougeConfig()
        model_path = reward_context.model_path if reward_context else None
        tokenize, description = tokenizer_for(chosen, model_path)
        _announce(kind, description)
        refs = references_column(columns, kind)
        return [
            None
            if options is None
            else max(rouge_score(kind, tokenize(c), tokenize(r), chosen.measure) for r in options)
            for c, options in zip(completions, refs, strict=True)
        ]

    rouge.__name__ = kind
    return rouge


rouge1 = rouge_reward("rouge1")
rouge2 = rouge_reward("rouge2")
rougeL = rouge_reward("rougeL")  # noqa: N816 - the metric's usual name
