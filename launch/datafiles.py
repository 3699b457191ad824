"""Training and held-out rows from the user's own files (`task.train_file`, `task.heldout_file`), checked before any
actor starts.

A file is JSONL (one JSON object per line; blank lines are ignored) or Parquet (`.parquet`). Each row needs a
non-empty string `prompt`, fed to the engine as-is. Every other column reaches the reward functions as a keyword
column of the same name (a row without a column another row has gets None there, which a built-in reward reads as
"does not apply"). Which columns are required:
- the training file: the columns the configured built-in rewards read (`answer` for exact_match and math,
  `reference` for chrf/bleu/ter, `source` for cycle_consistency; see learner/rewards/registry.py BUILTIN_COLUMNS);
- the held-out file: `answer`, because evaluation (pass@1, pass@k, `prolora eval`) checks completions with the
  task's `is_correct(completion, answer)`.
`answer` must be a string where present (is_correct compares text). A prompt whose token count plus
`rollout.max_new_tokens` exceeds `model.max_model_len` cannot be generated; `task.overlong_prompts` decides whether
that is an error or the row is skipped (and counted).

Why here and not inside the task: the built-in tasks generate rows from a seed, a file is read once; both give the
driver the same list of dicts. Errors name the file, the row (the 1-based line of a JSONL file, the 1-based row of a
Parquet one), the column and what was expected. The reading and checking are pure; the driver passes in the token
counter built from the model's tokenizer.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.config import Config, RewardSpec
from shared.errors import UserError
from shared.tasks import Task

RESERVED_COLUMNS = ("prompts", "completions", "reward_context", "completion_token_count", "max_tokens")
"""Names the reward call itself uses or the driver fills in; a data column may not take them."""
SHOWN_ROWS = 5
"""Row numbers a skip message lists before it says 'and N more'."""


class DataFileError(UserError):
    """A data file that cannot be used; the message names the file, the row and the column."""


@dataclass(frozen=True)
class NumberedRows:
    """Rows of one file with the number a user finds each under (JSONL line, Parquet row; 1-based)."""

    path: Path
    rows: list[dict[str, Any]]
    numbers: list[int]

    @property
    def unit(self) -> str:
        """What a number counts: 'line' (JSONL) or 'row' (Parquet)."""
        return "row" if self.path.suffix == ".parquet" else "line"

    def at(self, number: int) -> str:
        """Where row `number` is, as messages name it: 'FILE, line N' or 'FILE, row N'."""
        return f"{self.path}, {self.unit} {number}"


@dataclass(frozen=True)
class TaskData:
    """The rows a run trains and evaluates on, and the rows left out for being too long."""

    train: list[dict[str, Any]]
    heldout: list[dict[str, Any]]
    skipped: dict[str, list[int]] = field(default_factory=dict)
    """File path -> numbers of the rows skipped under task.overlong_prompts=skip."""

    def skipped_summary(self) -> str | None:
        """One line per file with skipped rows, or None when nothing was skipped."""
        lines = [
            f"{path}: skipped {len(numbers)} prompts longer than the context (rows {_shown(numbers)})"
            for path, numbers in self.skipped.items()
            if numbers
        ]
        return "\n".join(lines) or None


def read_rows(path: Path) -> NumberedRows:
    """Every row of a JSONL or Parquet file; a line that is not a JSON object is an error naming it."""
    if not path.is_file():
        raise DataFileError(f"data file not found: {path}")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
        return NumberedRows(path, rows, list(range(1, len(rows) + 1)))
    rows, numbers = [], []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataFileError(f"{path}, line {number}: not valid JSON ({err.msg})") from None
        if not isinstance(row, dict):
            raise DataFileError(f"{path}, line {number}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
        numbers.append(number)
    return NumberedRows(path, rows, numbers)


def check_rows(data: NumberedRows, required: Sequence[str], non_null: Sequence[str] = ()) -> list[dict[str, Any]]:
    """The rows with every column present (None where a row lacks an optional one); a UserError names the first
    row with a missing (or, for `non_null` columns, null) or mistyped column, or an empty prompt."""
    needed = list(dict.fromkeys(("prompt", *required, *non_null)))
    if not data.rows:
        raise DataFileError(f"{data.path}: no rows")
    columns = list(dict.fromkeys(key for row in data.rows for key in row))
    reserved = [c for c in columns if c in RESERVED_COLUMNS]
    if reserved:
        raise DataFileError(f"{data.path}: column name {reserved[0]!r} is reserved ({', '.join(RESERVED_COLUMNS)})")
    for number, row in zip(data.numbers, data.rows, strict=True):
        at = data.at(number)
        missing = [column for column in needed if column not in row]
        if missing:
            raise DataFileError(f"{at}: missing column {missing[0]!r} (every row needs {', '.join(needed)})")
        if not isinstance(row["prompt"], str):
            raise DataFileError(f"{at}: column 'prompt' must be a string, got {type(row['prompt']).__name__}")
        if not row["prompt"].strip():
            raise DataFileError(f"{at}: column 'prompt' is empty")
        answer = row.get("answer")
        if answer is not None and not isinstance(answer, str):
            raise DataFileError(
                f"{at}: column 'answer' must be a string, got {type(answer).__name__} {answer!r} "
                f'(write it as "{answer}")'
            )
        nulls = [column for column in non_null if row[column] is None]
        if nulls:
            raise DataFileError(f"{at}: column {nulls[0]!r} is null; evaluation needs it in every row")
    return [{column: row.get(column) for column in columns} for row in data.rows]


def drop_overlong(
    data: NumberedRows, rows: list[dict[str, Any]], count_tokens: Callable[[str], int], budget: int, policy: str
) -> tuple[list[dict[str, Any]], list[int]]:
    """Rows whose prompt fits `budget` tokens, and the numbers of those that did not (policy 'skip'); with
    policy 'error' the first that does not fit is a UserError."""
    kept, skipped = [], []
    for number, row in zip(data.numbers, rows, strict=True):
        n = count_tokens(row["prompt"])
        if n <= budget:
            kept.append(row)
        elif policy == "error":
            raise DataFileError(
                f"{data.at(number)}: the prompt has {n} tokens; with rollout.max_new_tokens it must fit "
                f"model.max_model_len, so at most {budget} (shorten it, raise model.max_model_len, or set "
                f"task.overlong_prompts=skip)"
            )
        else:
            skipped.append(number)
    if not kept:
        raise DataFileError(f"{data.path}: every prompt is longer than the context ({budget} tokens)")
    return kept, skipped


def reward_columns(specs: Sequence[RewardSpec]) -> list[str]:
    """Data columns the configured built-in rewards read (user rewards declare nothing; the driver fills the
    length columns)."""
    from learner.rewards.registry import BUILTIN_COLUMNS

    needed = (c for spec in specs for c in BUILTIN_COLUMNS.get(spec.name, ()) if c not in RESERVED_COLUMNS)
    return list(dict.fromkeys(needed))


def rows_from_file(
    config: Config,
    path: str,
    count_tokens: Callable[[str], int],
    required: Sequence[str] = (),
    non_null: Sequence[str] = (),
) -> tuple[list[dict[str, Any]], list[int]]:
    """One file's checked rows that fit the context, and the numbers of the rows skipped as too long."""
    data = read_rows(Path(path))
    rows = check_rows(data, required, non_null)
    budget = config.model.max_model_len - config.rollout.max_new_tokens
    return drop_overlong(data, rows, count_tokens, budget, config.task.overlong_prompts)


def load_task_data(config: Config, task: Task, count_tokens: Callable[[str], int] | None) -> TaskData:
    """Training rows (all of train_file, else task.train_size built-in rows) and held-out rows (the first eval.size
    of heldout_file, else the built-in held-out split). `count_tokens` is needed only when a file is set."""
    skipped: dict[str, list[int]] = {}

    def from_file(path: str, required: Sequence[str], non_null: Sequence[str] = ()) -> list[dict[str, Any]]:
        if count_tokens is None:
            raise ValueError(f"load_task_data needs count_tokens to read {path}")
        rows, skipped[path] = rows_from_file(config, path, count_tokens, required, non_null)
        return rows

    t = config.task
    train = from_file(t.train_file, reward_columns(config.rewards.functions)) if t.train_file else None
    heldout = from_file(t.heldout_file, [], ["answer"])[: config.eval.size] if t.heldout_file else None
    return TaskData(
        train if train is not None else task.train_rows(t.train_size, config.run.seed),
        heldout if heldout is not None else task.heldout_rows(config.eval.size, config.run.seed),
        skipped,
    )


def token_counter(model_path: str) -> Callable[[str], int]:
    """Prompt length in tokens as the engine counts it: the model's own tokenizer, special tokens (BOS) included."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    return lambda prompt: len(tokenizer(prompt)["input_ids"])


def _shown(numbers: list[int]) -> str:
    shown = ", ".join(map(str, numbers[:SHOWN_ROWS]))
    return shown + (f" and {len(numbers) - SHOWN_ROWS} more" if len(numbers) > SHOWN_ROWS else "")
