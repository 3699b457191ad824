"""The built-in translation task: a small synthetic language pair the project generates itself.

Nothing can be downloaded here, so the pair is made up: a vocabulary of invented words in two alphabets, drawn
from a fixed seed, and word-order rules that differ between the languages, so a model has to learn a dictionary
and a reordering, not just copy. The source language is SVO with adjectives before nouns; the target language is
SOV with adjectives after nouns and an object suffix:

    source  [adj] noun verb [adj] noun        "lu kamo tesi ran mipe"
    target  noun [adj] noun+"n" [adj] verb    "vozu dy gyfan ba hewo"

Rows: `prompt` ("S:<source>\\nT:", a plain string: the translate preset sets task.prompt_format=plain), `answer`
and `reference` (the target sentence: the exact expected completion, and what chrF/BLEU/TER compare against) and
`source` (for `cycle_consistency`). Every sentence belongs to exactly one split, decided by a hash of the source
sentence, and rows are drawn without repeats from a seeded `random.Random`, so splits are disjoint and the same
(n, seed) gives the same rows everywhere. The warm start also sees the reverse direction ("T:<target>\\nS:" ->
source) on training sentences, so the model can translate its own output back (what `cycle_consistency` relies on).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from functools import cache

VOCAB_SEED = 0
"""Seed of the invented vocabulary; changing it makes a different language pair."""
N_NOUNS, N_VERBS, N_ADJECTIVES = 16, 8, 8
HELDOUT_PER_MILLE = 100
"""Share of all sentences (per mille) reserved for the held-out split."""
ADJECTIVE_PROB = 0.5
"""Chance that a noun phrase carries an adjective."""
OBJECT_SUFFIX = "n"
"""Target-language marker appended to the object noun."""
MAX_NEW_TOKENS = 32
"""Longest target sentence (5 words of at most 5 letters plus the suffix, and 4 spaces) is 30 characters, plus
EOS; one spare token."""

_SOURCE_LETTERS = ("ptkmnlsr", "aeiou")
_TARGET_LETTERS = ("bdgvzfhw", "aeiouy")


@dataclass(frozen=True)
class Lexicon:
    """Word lists of the two languages; entry i of a source list translates to entry i of the target list."""

    source_nouns: tuple[str, ...]
    source_verbs: tuple[str, ...]
    source_adjectives: tuple[str, ...]
    target_nouns: tuple[str, ...]
    target_verbs: tuple[str, ...]
    target_adjectives: tuple[str, ...]


def _words(rng: random.Random, letters: tuple[str, str], count: int, taken: set[str]) -> tuple[str, ...]:
    consonants, vowels = letters
    words: list[str] = []
    while len(words) < count:
        syllables = rng.choice((1, 2, 2))
        word = "".join(rng.choice(consonants) + rng.choice(vowels) for _ in range(syllables))
        if rng.random() < 0.3:
            word += rng.choice(consonants)  # a closed final syllable: words of 2 to 5 letters
        if word not in taken:
            taken.add(word)
            words.append(word)
    return tuple(words)


@cache
def lexicon(seed: int = VOCAB_SEED) -> Lexicon:
    """The vocabulary of the language pair, deterministic in `seed`."""
    rng = random.Random(f"translate-vocab-{seed}")
    taken: set[str] = set()
    source = [_words(rng, _SOURCE_LETTERS, n, taken) for n in (N_NOUNS, N_VERBS, N_ADJECTIVES)]
    target = [_words(rng, _TARGET_LETTERS, n, taken) for n in (N_NOUNS, N_VERBS, N_ADJECTIVES)]
    return Lexicon(*source, *target)


# A sentence is (subject noun, subject adjective or -1, verb, object noun, object adjective or -1).
Sentence = tuple[int, int, int, int, int]


def source_sentence(s: Sentence, lex: Lexicon) -> str:
    subj, subj_adj, verb, obj, obj_adj = s
    words = [lex.source_adjectives[subj_adj]] if subj_adj >= 0 else []
    words += [lex.source_nouns[subj], lex.source_verbs[verb]]
    words += [lex.source_adjectives[obj_adj]] if obj_adj >= 0 else []
    words.append(lex.source_nouns[obj])
    return " ".join(words)


def target_sentence(s: Sentence, lex: Lexicon) -> str:
    subj, subj_adj, verb, obj, obj_adj = s
    words = [lex.target_nouns[subj]] + ([lex.target_adjectives[subj_adj]] if subj_adj >= 0 else [])
    words += [lex.target_nouns[obj] + OBJECT_SUFFIX] + ([lex.target_adjectives[obj_adj]] if obj_adj >= 0 else [])
    words.append(lex.target_verbs[verb])
    return " ".join(words)


def format_prompt(source: str) -> str:
    """The forward prompt, a plain string the engine gets as it is (task.prompt_format=plain)."""
    return f"S:{source}\nT:"


def back_translation_prompt(target: str) -> str:
    """The reverse prompt: translate a target-language sentence (for example a completion) back to the source."""
    return f"T:{target.strip()}\nS:"


def is_heldout(source: str) -> bool:
    """Whether the sentence belongs to the held-out split (in both directions)."""
    digest = hashlib.blake2b(source.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % 1000 < HELDOUT_PER_MILLE


def _random_sentence(rng: random.Random) -> Sentence:
    def adjective() -> int:
        return rng.randrange(N_ADJECTIVES) if rng.random() < ADJECTIVE_PROB else -1

    return (rng.randrange(N_NOUNS), adjective(), rng.randrange(N_VERBS), rng.randrange(N_NOUNS), adjective())


def _pairs(n: int, seed: int, *, heldout: bool) -> list[tuple[str, str]]:
    split = "heldout" if heldout else "train"
    share = HELDOUT_PER_MILLE if heldout else 1000 - HELDOUT_PER_MILLE
    limit = (N_NOUNS * (N_ADJECTIVES + 1)) ** 2 * N_VERBS * share // 1000 // 2  # keeps rejection sampling fast
    if n > limit:
        raise ValueError(f"asked for {n} {split} rows; the translation task allows at most {limit}")
    lex = lexicon()
    rng = random.Random(f"translate-{split}-{seed}")  # str seeds hash deterministically (not via PYTHONHASHSEED)
    seen: set[str] = set()
    pairs: list[tuple[str, str]] = []
    while len(pairs) < n:
        sentence = _random_sentence(rng)
        source = source_sentence(sentence, lex)
        if source in seen or is_heldout(source) != heldout:
            continue
        seen.add(source)
        pairs.append((source, target_sentence(sentence, lex)))
    return pairs


def _row(source: str, target: str) -> dict[str, str]:
    return {"prompt": format_prompt(source), "answer": target, "reference": target, "source": source}


def train_rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    """n distinct training rows (source -> target), deterministic in (n, seed)."""
    return [_row(s, t) for s, t in _pairs(n, seed, heldout=False)]


def heldout_rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    """n distinct held-out rows, disjoint from every train_rows(...) call whatever its seed."""
    return [_row(s, t) for s, t in _pairs(n, seed, heldout=True)]


def warmup_rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    """Rows for the base model's warm start: training sentences, alternately forward and reversed."""
    rows = []
    for i, (source, target) in enumerate(_pairs(n, seed, heldout=False)):
        if i % 2:
            rows.append({"prompt": back_translation_prompt(target), "answer": source})
        else:
            rows.append({"prompt": format_prompt(source), "answer": target})
    return rows


def is_correct(completion: str, answer: str) -> bool:
    """The whole sentence is right (exact match after stripping surrounding whitespace)."""
    return completion.strip() == answer.strip()
