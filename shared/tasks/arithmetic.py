"""The built-in verifiable task: fixed-width integer addition ("123+456=" -> "579").

Prompts are chat messages (TRL's conversational format): one user message holding the problem,
`[{"role": "user", "content": "123+456="}]`, rendered with the model's chat template (shared/chat.py).

Every problem belongs to exactly one split, decided by a hash of the unordered operand pair, so `a+b` and
`b+a` always land together and no held-out problem (or its mirror) is ever trained on, whatever seeds or sizes
are asked for. Rows are drawn without repeats from a seeded `random.Random`, so the same (n, seed) gives the
same rows on every machine and Python version.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any

DIGITS = 3
"""Operand width; operands are uniform over [10**(DIGITS-1), 10**DIGITS)."""
HELDOUT_PER_MILLE = 100
"""Share of all problems (per mille) reserved for the held-out split."""
MAX_NEW_TOKENS = 6
"""Longest answer is DIGITS + 1 characters plus EOS; one spare token."""
CARRY_SLIP = 0.6
"""Share of warm-start examples in which the teacher drops the carry out of the tens column (see warmup_rows)."""
COPY_EVERY = 4
"""Every COPY_EVERY-th warm-start row is a copy problem (a number plus 000; see warmup_rows)."""

_LOW, _HIGH = 10 ** (DIGITS - 1), 10**DIGITS - 1


def format_problem(a: int, b: int) -> str:
    """The problem as the user message states it."""
    return f"{a}+{b}="


def format_prompt(a: int, b: int) -> list[dict[str, str]]:
    """The prompt of a row: one user message with the problem (the chat template adds the rest)."""
    return [{"role": "user", "content": format_problem(a, b)}]


def operands(prompt: list[dict[str, str]]) -> tuple[int, int]:
    """(a, b) of a row's prompt, as format_prompt wrote it."""
    a, b = prompt[-1]["content"].removesuffix("=").split("+")
    return int(a), int(b)


def is_heldout(a: int, b: int) -> bool:
    """Whether the problem a+b (in either order) belongs to the held-out split."""
    lo, hi = min(a, b), max(a, b)
    digest = hashlib.blake2b(f"{lo}+{hi}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % 1000 < HELDOUT_PER_MILLE


Row = dict[str, Any]
"""{"prompt": [{"role": "user", "content": "123+456="}], "answer": "579"}"""


def _rows(n: int, seed: int, *, heldout: bool) -> list[Row]:
    split = "heldout" if heldout else "train"
    share = HELDOUT_PER_MILLE if heldout else 1000 - HELDOUT_PER_MILLE
    limit = (_HIGH - _LOW + 1) ** 2 * share // 1000 // 2  # keeps rejection sampling fast
    if n > limit:
        raise ValueError(f"asked for {n} {split} rows; the {DIGITS}-digit task allows at most {limit}")
    rng = random.Random(f"arith-{split}-{seed}")  # str seeds hash deterministically (not via PYTHONHASHSEED)
    seen: set[tuple[int, int]] = set()
    rows: list[Row] = []
    while len(rows) < n:
        a, b = rng.randint(_LOW, _HIGH), rng.randint(_LOW, _HIGH)
        if (a, b) in seen or is_heldout(a, b) != heldout:
            continue
        seen.add((a, b))
        rows.append({"prompt": format_prompt(a, b), "answer": str(a + b)})
    return rows


def train_rows(n: int, seed: int = 0) -> list[Row]:
    """n distinct training problems as {"prompt", "answer"} dicts, deterministic in (n, seed)."""
    return _rows(n, seed, heldout=False)


def heldout_rows(n: int, seed: int = 0) -> list[Row]:
    """n distinct held-out problems, disjoint from every train_rows(...) call whatever its seed."""
    return _rows(n, seed, heldout=True)


def sloppy_sum(a: int, b: int) -> int:
    """a + b with the carry out of the tens column dropped (the hundreds digit is one too low), if there is one."""
    tens_carry = (a % 100 + b % 100) >= 100
    return a + b - 100 if tens_carry else a + b


def warmup_rows(n: int, seed: int = 0) -> list[Row]:
    """Training problems answered by a sloppy teacher, for the supervised warm start of the built-in model, with
    every COPY_EVERY-th row a copy problem.

    In a CARRY_SLIP share of the examples the teacher forgets the carry out of the tens column. About half of
    all problems have such a carry, and on them a model that imitates the teacher puts most of its probability on
    the wrong hundreds digit but keeps real mass on the right one: greedy decoding is wrong, sampling is often
    right. That systematic, learnable mistake is what the verifiable reward lets RL fix. Why not simply stop the
    warm start early: a partially trained model makes scattered errors that sampling rarely fixes, and GRPO with
    the default settings moves its greedy accuracy little. With this teacher greedy accuracy starts well below
    pass@8, the gap RL can close (`prolora train` prints both before and after).
    The rows are the problems of train_rows(n, seed), some answers differing, except the copy problems: a 3-digit
    number plus `000` (either side), answered with the number. They teach where each digit of the prompt sits
    before the model has to add them, and shorten the loss plateau the warm start starts on (launch/basemodel.py).
    """
    rng = random.Random(f"arith-warmup-{seed}")
    rows = train_rows(n, seed)
    for row in rows:
        a, b = operands(row["prompt"])
        if rng.random() < CARRY_SLIP:
            row["answer"] = str(sloppy_sum(a, b))
    for i in range(0, n, COPY_EVERY):
        number = rng.randint(100, 999)
        problem = f"{number}+000=" if rng.random() < 0.5 else f"000+{number}="
        rows[i] = {"prompt": [{"role": "user", "content": problem}], "answer": str(number)}
    return rows


def is_correct(completion: str, answer: str) -> bool:
    """Exact match after stripping surrounding whitespace."""
    return completion.strip() == answer.strip()
