"""Training and held-out rows from the user's own data (`task.train_file`, `task.heldout_file`, `task.dataset`),
checked before any actor starts.

Where rows come from (the data-source layer):
- a file: JSONL (one JSON object per line; blank lines are ignored; also a `.json` file holding JSON Lines), a
  `.json` file holding one JSON array of objects, a `.csv` file with a header line (every value is a string; an
  empty cell is null), or Parquet (`.parquet`);
- `task.dataset` (`load_splits`, `split_rows` below; `datasets` is imported only when a run names one): a
  `save_to_disk` directory, a local directory of data files or a hub name, trained on its `task.train_split`
  and evaluated on `task.heldout_split`, or else on `task.heldout_size` rows carved out of the training split
  with the run's seed (or on `task.heldout_file`);
- `task.columns` renames columns of any of them before the checks (e.g. {question: prompt, solution: answer}).

Each row needs a `prompt`: a non-empty string, or a list of chat messages (`[{"role": "user", "content": ...}]`,
TRL's conversational format) rendered with the model's chat template (shared/chat.py). Every other column reaches
the reward functions as a keyword column of the same name (a row without a column another row has gets None there,
which a built-in reward reads as "does not apply"). Which columns are required: - the training rows: the columns the
configured built-in rewards read (`answer` for exact_match and math, `reference` for chrf/bleu/ter, `source` for
cycle_consistency; see learner/rewards/registry.py BUILTIN_COLUMNS), or under algo.objective=dpo `chosen` and
`rejected` (each a non-empty string or a list of messages whose last one is the answer); - the held-out rows:
`answer`, because evaluation (pass@1, pass@k, `prolora eval`) checks completions with the task's
`is_correct(completion, answer)`. `answer` must be a string where present (is_correct compares text). A prompt
whose token count plus `rollout.max_new_tokens` exceeds `model.max_model_len` cannot be generated;
`task.overlong_prompts` decides whether that is an error or the row is skipped (and counted).

Why here and not inside the task: the built-in tasks generate rows from a seed, a file or data set is read once;
both give the driver the same list of dicts. Errors name the source (the file, or the data set and split), the row
(the 1-based line of a JSONL file, the 1-based row of any other source), the column and what was expected. The
reading and checking are pure; the driver passes in the token counter of its prompt renderer (shared/chat.py).
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from shared.chat import check_messages, is_conversational
from shared.config import Config, RewardSpec
from shared.errors import UserError
from shared.tasks import Task

RESERVED_COLUMNS = (
    "prompts",
    "completions",
    "reward_context",
    "completion_token_count",
    "max_tokens",
    "completion_ids",
    "trainer_state",
    "log_extra",
    "log_metric",
)
"""Names the reward call itself uses or the driver fills in; a data column may not take them."""
PREFERENCE_COLUMNS = ("chosen", "rejected")
"""The completions of a DPO training row (algo.objective=dpo), besides its `prompt`."""
SHOWN_ROWS = 5
"""Row numbers a skip message lists before it says 'and N more'."""


class DataFileError(UserError):
    """A data file that cannot be used; the message names the file, the row and the column."""


@dataclass(frozen=True)
class NumberedRows:
    """Rows of one source with the number a user finds each under (1-based): the line of a JSONL file, the row of
    any other file or of a data set split."""

    source: str
    """What messages name: the file path, or 'DATASET, split NAME'."""
    rows: list[dict[str, Any]]
    numbers: list[int]
    unit: str = "line"
    """What a number counts: 'line' (JSONL) or 'row'."""

    def at(self, number: int) -> str:
        """Where row `number` is, as messages name it: 'SOURCE, line N' or 'SOURCE, row N'."""
        return f"{self.source}, {self.unit} {number}"

    def subset(self, indices: Sequence[int]) -> NumberedRows:
        """The rows at `indices` (0-based positions), keeping their numbers."""
        return replace(self, rows=[self.rows[i] for i in indices], numbers=[self.numbers[i] for i in indices])


@dataclass(frozen=True)
class TaskData:
    """The rows a run trains and evaluates on, and the rows left out for being too long."""

    train: list[dict[str, Any]]
    heldout: list[dict[str, Any]]
    skipped: dict[str, list[int]] = field(default_factory=dict)
    """Source (file path, data set split) -> numbers of the rows skipped under task.overlong_prompts=skip."""

    def skipped_summary(self) -> str | None:
        """One line per file with skipped rows, or None when nothing was skipped."""
        lines = [
            f"{path}: skipped {len(numbers)} prompts longer than the context (rows {_shown(numbers)})"
            for path, numbers in self.skipped.items()
            if numbers
        ]
        return "\n".join(lines) or None


def read_rows(path: Path) -> NumberedRows:
    """Every row of a JSONL, JSON, CSV or Parquet file; a line or row that is not an object is an error naming it."""
    if not path.is_file():
        raise DataFileError(f"data file not found: {path}")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return _numbered(str(path), pq.read_table(path).to_pylist())
    if path.suffix == ".csv":
        return _read_csv(path)
    text = path.read_text()
    if path.suffix == ".json" and text.lstrip().startswith("["):
        return _read_json_array(path, text)
    return _read_jsonl(path, text)


def _read_jsonl(path: Path, text: str) -> NumberedRows:
    hint = " (a .json file holds one JSON array of objects, or one object per line)" if path.suffix == ".json" else ""
    rows, numbers = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataFileError(f"{path}, line {number}: not valid JSON ({err.msg}){hint}") from None
        if not isinstance(row, dict):
            raise DataFileError(f"{path}, line {number}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
        numbers.append(number)
    return NumberedRows(str(path), rows, numbers)


def _read_json_array(path: Path, text: str) -> NumberedRows:
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataFileError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise DataFileError(f"{path}, row {number}: expected a JSON object, got {type(row).__name__}")
    return _numbered(str(path), rows)


def _read_csv(path: Path) -> NumberedRows:
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    for number, row in enumerate(rows, start=1):
        if None in row:  # DictReader files surplus fields under the key None
            raise DataFileError(f"{path}, row {number}: more fields than the header line names")
    return _numbered(str(path), [{k: (v if v != "" else None) for k, v in row.items()} for row in rows])


def _numbered(source: str, rows: list[dict[str, Any]]) -> NumberedRows:
    return NumberedRows(source, rows, list(range(1, len(rows) + 1)), "row")


def read_dataset(config: Config) -> tuple[NumberedRows, NumberedRows | None]:
    """task.dataset's training split and its held-out split (None when task.heldout_file is used instead); with
    neither, task.heldout_size rows carved out of the training split with run.seed."""

    t = config.task
    dataset = t.dataset or ""
    splits = load_splits(dataset)

    def split(name: str, key: str) -> NumberedRows:
        rows = split_rows(dataset, splits, name, key)
        return _numbered(f"{dataset}, split {name!r}", rows)

    train = split(t.train_split, "task.train_split")
    if t.heldout_split:
        return train, split(t.heldout_split, "task.heldout_split")
    if t.heldout_file:
        return train, None
    return carve(train, t.heldout_size, config.run.seed)


def carve(data: NumberedRows, size: int, seed: int) -> tuple[NumberedRows, NumberedRows]:
    """(the rest, `size` held-out rows drawn with `seed`), each in the source's order."""
    if size >= len(data.rows):
        raise DataFileError(
            f"{data.source}: task.heldout_size ({size}) leaves none of its {len(data.rows)} rows to train on; "
            f"lower it or set task.heldout_split"
        )
    order = list(range(len(data.rows)))
    random.Random(seed).shuffle(order)
    heldout = data.subset(sorted(order[:size]))
    return data.subset(sorted(order[size:])), replace(heldout, source=f"{data.source} (held out)")


def own_sources(config: Config) -> tuple[NumberedRows | None, NumberedRows | None]:
    """The user's training and held-out rows as read, before any check (None: the task's built-in rows)."""
    t = config.task
    heldout = read_rows(Path(t.heldout_file)) if t.heldout_file else None
    if t.dataset:
        train, from_dataset = read_dataset(config)
        return train, from_dataset or heldout
    return (read_rows(Path(t.train_file)) if t.train_file else None), heldout


def uses_own_rows(config: Config) -> bool:
    """Whether any rows come from the user (and need the model's tokenizer to check their length)."""
    return bool(config.task.train_file or config.task.heldout_file or config.task.dataset)


def rename_columns(data: NumberedRows, columns: Mapping[str, str]) -> NumberedRows:
    """The rows with task.columns (old name -> new name) applied. A source that already has the new name instead
    (say a held-out file written with `prompt`) is left as it is; one with neither name, or with both, is an error
    listing its columns."""
    have = _columns(data.rows)
    for old, new in columns.items():
        if old not in have and new not in have:
            raise DataFileError(
                f"{data.source}: task.columns renames {old!r} to {new!r}, but there is neither column; columns: "
                f"{', '.join(have)}"
            )
        if old in have and new in have and new not in columns:
            raise DataFileError(
                f"{data.source}: task.columns renames {old!r} to {new!r}, which is already a column (rename or drop "
                f"that one too)"
            )
    if not any(old in have for old in columns):
        return data
    return replace(data, rows=[{columns.get(k, k): v for k, v in row.items()} for row in data.rows])


def require_columns(data: NumberedRows, needed: Sequence[str]) -> None:
    """A needed column that no row has is one error naming it and the columns there are (check_rows then goes
    row by row)."""
    have = _columns(data.rows)
    missing = [column for column in needed if column not in have]
    if data.rows and missing:
        raise DataFileError(
            f"{data.source}: no column {missing[0]!r} (needed: {', '.join(needed)}); columns: {', '.join(have)} "
            f"(task.columns renames columns, e.g. {{question: prompt}})"
        )


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(key for row in rows for key in row))


def check_rows(data: NumberedRows, required: Sequence[str], non_null: Sequence[str] = ()) -> list[dict[str, Any]]:
    """The rows with every column present (None where a row lacks an optional one); a UserError names the first
    row with a missing (or, for `non_null` columns, null) or mistyped column, or an empty prompt."""
    needed = list(dict.fromkeys(("prompt", *required, *non_null)))
    if not data.rows:
        raise DataFileError(f"{data.source}: no rows")
    columns = _columns(data.rows)
    reserved = [c for c in columns if c in RESERVED_COLUMNS]
    if reserved:
        raise DataFileError(f"{data.source}: column name {reserved[0]!r} is reserved ({', '.join(RESERVED_COLUMNS)})")
    for number, row in zip(data.numbers, data.rows, strict=True):
        at = data.at(number)
        missing = [column for column in needed if column not in row]
        if missing:
            raise DataFileError(f"{at}: missing column {missing[0]!r} (every row needs {', '.join(needed)})")
        _check_prompt(at, row["prompt"])
        for column in PREFERENCE_COLUMNS:
            if column in needed:
                _check_completion(at, column, row[column])
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


def _check_prompt(at: str, prompt: Any) -> None:
    """A prompt is a non-empty string or a list of chat messages (TRL's conversational format)."""
    if is_conversational(prompt):
        problem = check_messages(prompt)
        if problem:
            raise DataFileError(f"{at}: column 'prompt' holds chat messages, but {problem}")
        return
    if not isinstance(prompt, str):
        raise DataFileError(
            f"{at}: column 'prompt' must be a string or a list of messages "
            f'([{{"role": "user", "content": "..."}}]), got {type(prompt).__name__}'
        )
    if not prompt.strip():
        raise DataFileError(f"{at}: column 'prompt' is empty")


def _check_completion(at: str, column: str, value: Any) -> None:
    """A DPO completion is a non-empty string or a list of chat messages (its last message is the answer)."""
    if is_conversational(value):
        problem = check_messages(value)
        if problem:
            raise DataFileError(f"{at}: column {column!r} holds chat messages, but {problem}")
        return
    if not isinstance(value, str) or not value.strip():
        got = "an empty string" if isinstance(value, str) else f"{type(value).__name__} {value!r}"
        raise DataFileError(
            f"{at}: column {column!r} must be a non-empty string or a list of messages "
            f'([{{"role": "assistant", "content": "..."}}]), got {got}; a preference pair needs both completions'
        )


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
        raise DataFileError(f"{data.source}: every prompt is longer than the context ({budget} tokens)")
    return kept, skipped


def reward_columns(specs: Sequence[RewardSpec]) -> list[str]:
    """Data columns the configured built-in rewards read (user rewards declare nothing; the driver fills the
    length columns)."""
    from learner.rewards.registry import BUILTIN_COLUMNS

    needed = (c for spec in specs for c in BUILTIN_COLUMNS.get(spec.name, ()) if c not in RESERVED_COLUMNS)
    return list(dict.fromkeys(needed))


def checked_rows(
    config: Config,
    data: NumberedRows,
    count_tokens: Callable[[str], int],
    required: Sequence[str] = (),
    non_null: Sequence[str] = (),
) -> tuple[list[dict[str, Any]], list[int]]:
    """One source's rows, renamed by task.columns and checked, that fit the context, and the numbers of the rows
    skipped as too long."""
    data = rename_columns(data, config.task.columns)
    require_columns(data, list(dict.fromkeys(("prompt", *required, *non_null))))
    rows = check_rows(data, required, non_null)
    budget = config.model.max_model_len - config.rollout.max_new_tokens
    return drop_overlong(data, rows, count_tokens, budget, config.task.overlong_prompts)


def load_task_data(config: Config, task: Task, count_tokens: Callable[[str], int] | None) -> TaskData:
    """Training rows (all of the user's, else task.train_size built-in rows) and held-out rows (the first eval.size
    of the user's, else the built-in held-out split). `count_tokens` is needed only when `uses_own_rows`."""
    skipped: dict[str, list[int]] = {}

    def checked(data: NumberedRows, required: Sequence[str], non_null: Sequence[str] = ()) -> list[dict[str, Any]]:
        if count_tokens is None:
            raise ValueError(f"load_task_data needs count_tokens to read {data.source}")
        rows, skipped[data.source] = checked_rows(config, data, count_tokens, required, non_null)
        return rows

    t = config.task
    train_data, heldout_data = own_sources(config)
    dpo = config.algo.objective == "dpo"
    train_columns = PREFERENCE_COLUMNS if dpo else reward_columns(config.rewards.functions)
    train = checked(train_data, train_columns) if train_data else None
    heldout = checked(heldout_data, [], ["answer"])[: config.eval.size] if heldout_data else None
    return TaskData(
        train if train is not None else task.train_rows(t.train_size, config.run.seed),
        heldout if heldout is not None else task.heldout_rows(config.eval.size, config.run.seed),
        skipped,
    )


def _shown(numbers: list[int]) -> str:
    shown = ", ".join(map(str, numbers[:SHOWN_ROWS]))
    return shown + (f" and {len(numbers) - SHOWN_ROWS} more" if len(numbers) > SHOWN_ROWS else "")


class DatasetSourceError(UserError):
    """A data set or split that cannot be read; the message names it and lists what there is."""


def load_splits(name: str) -> dict[str, Any]:
    """Split name -> `datasets.Dataset`. A `save_to_disk` directory is read with `load_from_disk` (a single saved
    Dataset is the split 'train'); anything else goes to `load_dataset` (a local directory of files or a hub name)."""
    import datasets

    try:
        loaded = datasets.load_from_disk(name)
    except FileNotFoundError:  # not a save_to_disk directory: a directory of data files or a hub name
        loaded = _load_dataset(name)
    if isinstance(loaded, datasets.Dataset):
        return {"train": loaded}
    return dict(loaded)


def split_rows(name: str, splits: dict[str, Any], split: str, key: str) -> list[dict[str, Any]]:
    """Every row of `split` as a dict; `key` is the config field that named it (for the message)."""
    if split not in splits:
        raise DatasetSourceError(
            f"{key}={split!r}: data set {name} has no such split; it has: {', '.join(splits) or 'none'}"
        )
    return splits[split].to_list()


def _load_dataset(name: str) -> Any:
    import datasets

    if (Path(name).is_absolute() or name.startswith(".")) and not Path(name).exists():
        raise DatasetSourceError(f"task.dataset={name!r}: no such directory")
    try:
        return datasets.load_dataset(name)
    except (FileNotFoundError, ConnectionError, ValueError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DatasetSourceError(
            f"task.dataset={name!r}: cannot load it as a save_to_disk directory, a directory of data files or a "
            f"hub data set ({first_line})"
        ) from None
