"""Built-in tasks: where prompts, reference answers and the held-out split come from.

A task is a small frozen record of plain functions, looked up by name with `get_task`. Rows are dicts
{"prompt": str, "answer": str}; the prompt is fed to the engine as-is (the tokenizer adds BOS) and the model is
expected to generate the answer followed by EOS.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from shared.errors import UserError
from shared.tasks import arithmetic

Rows = list[dict[str, str]]


@dataclass(frozen=True)
class Task:
    name: str
    train_rows: Callable[[int, int], Rows]
    """train_rows(n, seed): n distinct training rows, deterministic in (n, seed)."""
    heldout_rows: Callable[[int, int], Rows]
    """heldout_rows(n, seed): n distinct held-out rows, disjoint from every training row."""
    is_correct: Callable[[str, str], bool]
    """is_correct(completion, answer): whether a completion's text solves the row."""
    max_new_tokens: int
    """Default completion budget: enough for the longest answer plus EOS."""


_TASKS = {
    "arith": Task(
        name="arith",
        train_rows=arithmetic.train_rows,
        heldout_rows=arithmetic.heldout_rows,
        is_correct=arithmetic.is_correct,
        max_new_tokens=arithmetic.MAX_NEW_TOKENS,
    ),
}


def get_task(name: str) -> Task:
    """The built-in task called `name`."""
    if name not in _TASKS:
        raise UserError(f"unknown task {name!r}; built-in tasks: {sorted(_TASKS)}")
    return _TASKS[name]
