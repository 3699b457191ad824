"""Built-in tasks: where prompts, reference answers and the held-out split come from.

A task is a small frozen record of plain functions, looked up by name with `get_task`. Rows are dicts with at
least a "prompt" and an "answer" string. The prompt is a list of chat messages (arithmetic: one user message,
rendered with the model's chat template) or a string (translation: sent as-is), as any data row's prompt
(shared/chat.py); the model is expected to generate the answer followed by EOS. Other keys of a row (a
translation's `reference` and `source`) reach the reward functions as columns.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from shared.errors import UserError
from shared.records import Group
from shared.tasks import arithmetic, translation

Rows = list[dict[str, Any]]


@dataclass(frozen=True)
class Task:
    name: str
    train_rows: Callable[[int, int], Rows]
    """train_rows(n, seed): n distinct training rows, deterministic in (n, seed)."""
    heldout_rows: Callable[[int, int], Rows]
    """heldout_rows(n, seed): n distinct held-out rows, disjoint from every training row."""
    warmup_rows: Callable[[int, int], Rows]
    """warmup_rows(n, seed): rows for the supervised warm start of the built-in base model (training problems;
    a translation task adds the reverse direction; arithmetic's answers are imperfect on purpose, see its
    module)."""
    is_correct: Callable[[str, str], bool]
    """is_correct(completion, answer): whether a completion's text solves the row."""
    max_new_tokens: int
    """Default completion budget: enough for the longest answer plus EOS."""
    back_translation_prompt: Callable[[str], str] | None = None
    """back_translation_prompt(completion): the prompt asking the model to translate a completion back into the
    source language (translation tasks; `cycle_consistency` needs it)."""


_TASKS = {
    "arith": Task(
        name="arith",
        train_rows=arithmetic.train_rows,
        heldout_rows=arithmetic.heldout_rows,
        warmup_rows=arithmetic.warmup_rows,
        is_correct=arithmetic.is_correct,
        max_new_tokens=arithmetic.MAX_NEW_TOKENS,
    ),
    "translate": Task(
        name="translate",
        train_rows=translation.train_rows,
        heldout_rows=translation.heldout_rows,
        warmup_rows=translation.warmup_rows,
        is_correct=translation.is_correct,
        max_new_tokens=translation.MAX_NEW_TOKENS,
        back_translation_prompt=translation.back_translation_prompt,
    ),
}


def back_translation(name: str, template: str | None) -> Callable[[str], str] | None:
    """The run's back-translation prompt (task.back_translation_prompt): `template` with the completion in place of
    `{text}`, else task `name`'s own reverse prompt (None when it has none)."""
    if template is None:
        return get_task(name).back_translation_prompt
    return lambda text: template.replace("{text}", text.strip())


def get_task(name: str) -> Task:
    """The built-in task called `name`."""
    if name not in _TASKS:
        raise UserError(f"unknown task {name!r}; built-in tasks: {sorted(_TASKS)}")
    return _TASKS[name]


def correct_counts(task: Task, groups: Sequence[Group], rows: Rows) -> list[int]:
    """Per prompt, how many of its group's completions `task.is_correct` accepts against the row's `answer`."""
    return [sum(task.is_correct(c.text, r["answer"]) for c in g.completions) for g, r in zip(groups, rows, strict=True)]
