"""Reading and checking the user's data files (launch/datafiles.py): what is accepted, and the message for each bad
row (file, 1-based line or row, column, what was expected)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from launch.datafiles import (
    DataFileError,
    TaskData,
    check_rows,
    drop_overlong,
    load_task_data,
    read_rows,
    reward_columns,
)
from shared.config import RewardSpec, load_config
from shared.tasks import get_task


def _jsonl(path: Path, *lines: object) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def test_jsonl_rows_keep_their_line_numbers_and_optional_columns_become_none(tmp_path):
    path = _jsonl(
        tmp_path / "d.jsonl", {"prompt": "1+1=", "answer": "2"}, "", {"prompt": "2+2=", "answer": "4", "w": 3}
    )
    data = read_rows(path)
    assert data.numbers == [1, 3]
    rows = check_rows(data, ["answer"])
    assert rows == [{"prompt": "1+1=", "answer": "2", "w": None}, {"prompt": "2+2=", "answer": "4", "w": 3}]


@pytest.mark.parametrize(
    ("line", "required", "message"),
    [
        ("{not json", [], "line 2: not valid JSON"),
        ("[1, 2]", [], "line 2: expected a JSON object, got list"),
        ({"answer": "2"}, [], "line 2: missing column 'prompt'"),
        ({"prompt": "1+1="}, ["answer"], "line 2: missing column 'answer' (every row needs prompt, answer)"),
        ({"prompt": 12, "answer": "2"}, [], "line 2: column 'prompt' must be a string or a list of messages"),
        ({"prompt": "  ", "answer": "2"}, [], "line 2: column 'prompt' is empty"),
        ({"prompt": "1+1=", "answer": 2}, [], "line 2: column 'answer' must be a string, got int 2"),
        ({"prompt": "1+1=", "max_tokens": 2}, [], "column name 'max_tokens' is reserved"),
    ],
)
def test_bad_rows_name_file_line_and_column(tmp_path, line, required, message):
    path = _jsonl(tmp_path / "d.jsonl", {"prompt": "0+0=", "answer": "0"}, line)
    with pytest.raises(DataFileError) as err:
        check_rows(read_rows(path), required)
    assert str(err.value).startswith(str(path)) and message in str(err.value)


def test_missing_file_and_null_answer_where_evaluation_needs_one(tmp_path):
    with pytest.raises(DataFileError, match="data file not found: .*nope.jsonl"):
        read_rows(tmp_path / "nope.jsonl")
    path = _jsonl(tmp_path / "h.jsonl", {"prompt": "1+1=", "answer": None})
    with pytest.raises(DataFileError, match="line 1: column 'answer' is null; evaluation needs it"):
        check_rows(read_rows(path), [], ["answer"])


def test_parquet_rows_are_numbered_from_one(tmp_path):
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"prompt": ["1+1=", "2+2="], "reference": ["2", "4"]}), path)
    data = read_rows(path)
    assert data.numbers == [1, 2]
    with pytest.raises(DataFileError, match=r"d.parquet, row 1: missing column 'answer'"):
        check_rows(data, ["answer"])


def test_overlong_prompts_are_an_error_or_skipped_and_counted(tmp_path):
    path = _jsonl(tmp_path / "d.jsonl", *({"prompt": "x" * n} for n in (3, 9, 4, 12)))
    data = read_rows(path)
    rows = check_rows(data, [])
    with pytest.raises(DataFileError, match=r"line 2: the prompt has 9 tokens; .* at most 5 .*overlong_prompts=skip"):
        drop_overlong(data, rows, len, 5, "error")
    kept, skipped = drop_overlong(data, rows, len, 5, "skip")
    assert [r["prompt"] for r in kept] == ["xxx", "xxxx"] and skipped == [2, 4]
    with pytest.raises(DataFileError, match="every prompt is longer than the context"):
        drop_overlong(data, rows, len, 2, "skip")


def test_skip_summary_lists_the_first_rows():
    data = TaskData([], [], {"a.jsonl": list(range(1, 9)), "b.jsonl": []})
    assert (
        data.skipped_summary() == "a.jsonl: skipped 8 prompts longer than the context (rows 1, 2, 3, 4, 5 and 3 more)"
    )
    assert TaskData([], []).skipped_summary() is None


def test_required_columns_come_from_the_builtin_rewards():
    specs = [
        RewardSpec(name="exact_match"),
        RewardSpec(name="chrf"),
        RewardSpec(name="overlong"),
        RewardSpec(name="math"),
        RewardSpec(name="mod.path:fn"),
    ]
    assert reward_columns(specs) == ["answer", "reference"]


def test_task_data_from_files_or_builtin_rows(tmp_path):
    train = _jsonl(tmp_path / "t.jsonl", *({"prompt": f"{i}+1=", "answer": str(i + 1)} for i in range(5)))
    heldout = _jsonl(tmp_path / "h.jsonl", *({"prompt": f"{i}+2=", "answer": str(i + 2)} for i in range(5)))
    config = load_config(overrides=[f"task.train_file={train}", f"task.heldout_file={heldout}", "eval.size=3"])
    data = load_task_data(config, get_task("arith"), len)
    assert len(data.train) == 5 and [r["prompt"] for r in data.heldout] == ["0+2=", "1+2=", "2+2="]
    assert data.skipped == {str(train): [], str(heldout): []}

    builtin = load_task_data(load_config(overrides=["task.train_size=7", "eval.size=3"]), get_task("arith"), None)
    assert len(builtin.train) == 7 and len(builtin.heldout) == 3 and builtin.skipped == {}
