"""Where a run's own rows come from (launch/datafiles.py): `task.dataset` as a save_to_disk
directory or a directory of data files, its splits, `task.columns` renames, JSON and CSV files; and the one-line
message for a bad split, a missing column or a conflicting config."""

from __future__ import annotations

import json
import re
from pathlib import Path

import datasets
import pytest

from launch.datafiles import DataFileError, load_task_data, read_rows
from shared.config import ConfigError, load_config
from shared.errors import UserError
from shared.tasks import get_task


def _qa(n: int, offset: int = 0) -> list[dict[str, str]]:
    return [{"question": f"{i}+{offset}=", "solution": str(i + offset), "level": "easy"} for i in range(n)]


def _load(*overrides: str):
    return load_task_data(load_config(overrides=list(overrides)), get_task("arith"), len)


@pytest.fixture
def saved(tmp_path) -> Path:
    """A save_to_disk DatasetDict with train and validation splits whose columns need renaming."""
    path = tmp_path / "saved"
    splits = {"train": datasets.Dataset.from_list(_qa(8)), "validation": datasets.Dataset.from_list(_qa(5, 100))}
    datasets.DatasetDict(splits).save_to_disk(str(path))
    return path


def test_save_to_disk_splits_with_renamed_columns(saved):
    data = _load(
        f"task.dataset={saved}",
        "task.heldout_split=validation",
        "task.columns={question: prompt, solution: answer}",
        "eval.size=3",
    )
    assert data.train[0] == {"prompt": "0+0=", "answer": "0", "level": "easy"} and len(data.train) == 8
    assert [r["prompt"] for r in data.heldout] == ["0+100=", "1+100=", "2+100="]
    assert data.skipped == {f"{saved}, split 'train'": [], f"{saved}, split 'validation'": []}


def test_directory_of_json_files_holds_out_rows_drawn_with_the_seed(tmp_path):
    folder = tmp_path / "files"
    folder.mkdir()
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _qa(20)))
    (folder / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _qa(4, 50)))
    common = (f"task.dataset={folder}", "task.columns={question: prompt, solution: answer}", "task.heldout_size=5")
    data = _load(*common)
    train, heldout = {r["prompt"] for r in data.train}, {r["prompt"] for r in data.heldout}
    assert len(train) == 15 and len(heldout) == 5 and not train & heldout
    assert train | heldout == {f"{i}+0=" for i in range(20)}
    assert [r["prompt"] for r in _load(*common).heldout] == [r["prompt"] for r in data.heldout]
    assert {r["prompt"] for r in _load(*common, "run.seed=1").heldout} != heldout
    split = _load(*common, "task.heldout_split=test")
    assert len(split.train) == 20 and [r["answer"] for r in split.heldout] == ["50", "51", "52", "53"]


def test_a_single_saved_dataset_is_the_train_split(tmp_path):
    rows = [{"prompt": f"{i}+1=", "answer": str(i + 1)} for i in range(6)]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "one"))
    data = _load(f"task.dataset={tmp_path / 'one'}", "task.heldout_size=2")
    assert len(data.train) == 4 and len(data.heldout) == 2


def test_bad_split_is_one_line_listing_the_splits(saved):
    with pytest.raises(UserError) as err:
        _load(f"task.dataset={saved}", "task.train_split=tran")
    assert str(err.value) == f"task.train_split='tran': data set {saved} has no such split; it has: train, validation"
    with pytest.raises(UserError, match="task.heldout_split='test': .* it has: train, validation"):
        _load(f"task.dataset={saved}", "task.heldout_split=test")


def test_missing_or_misnamed_column_is_one_line_listing_the_columns(saved):
    with pytest.raises(DataFileError) as err:
        _load(f"task.dataset={saved}", "task.heldout_split=validation")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{saved}, split 'train': no column 'prompt' (needed: prompt, answer);")
    assert "columns: question, solution, level" in message
    with pytest.raises(DataFileError, match="split 'train': no column 'answer' .*columns: prompt, solution"):
        _load(f"task.dataset={saved}", "task.heldout_split=validation", "task.columns={question: prompt}")
    with pytest.raises(DataFileError, match="renames 'query' to 'prompt', but there is neither column; columns: quest"):
        _load(f"task.dataset={saved}", "task.heldout_split=validation", "task.columns={query: prompt}")
    with pytest.raises(DataFileError, match="renames 'question' to 'level', which is already a column"):
        _load(f"task.dataset={saved}", "task.heldout_split=validation", "task.columns={question: level}")


def test_rows_of_a_split_are_checked_like_a_files(saved):
    with pytest.raises(DataFileError, match=r"split 'validation', row 1: column 'answer' must be a string, got int"):
        bad = saved.parent / "ints"
        datasets.DatasetDict(
            {
                "train": datasets.Dataset.from_list([{"prompt": "1+1=", "answer": "2"}] * 3),
                "validation": datasets.Dataset.from_list([{"prompt": "1+1=", "answer": 2}]),
            }
        ).save_to_disk(str(bad))
        _load(f"task.dataset={bad}", "task.heldout_split=validation")


def test_unusable_data_sets(tmp_path):
    with pytest.raises(UserError, match="task.dataset='/nowhere/ds': no such directory"):
        _load("task.dataset=/nowhere/ds")
    rows = [{"prompt": f"{i}+1=", "answer": str(i + 1)} for i in range(3)]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "small"))
    with pytest.raises(DataFileError, match=r"task.heldout_size \(200\) leaves none of its 3 rows to train on"):
        _load(f"task.dataset={tmp_path / 'small'}")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["task.dataset=d", "task.train_file=t.jsonl"], "task.dataset and task.train_file both name"),
        (["task.heldout_split=test"], "choose splits of task.dataset, which is not set"),
        (["task.dataset=d", "task.heldout_split=t", "task.heldout_file=h.jsonl"], "both name the held-out rows"),
        (["task.dataset=d", "task.heldout_split=train"], "task.heldout_split is the training split ('train')"),
        (["task.columns={a: prompt, b: prompt}"], "renames two columns to the same name"),
    ],
)
def test_config_refuses_conflicting_sources(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(overrides=overrides)


def test_json_array_and_csv_files(tmp_path):
    array = tmp_path / "rows.json"
    array.write_text(json.dumps([{"prompt": "1+1=", "answer": "2"}, {"prompt": "2+2=", "answer": "4"}], indent=1))
    assert read_rows(array).rows[1] == {"prompt": "2+2=", "answer": "4"} and read_rows(array).numbers == [1, 2]
    lines = tmp_path / "lines.json"
    lines.write_text('{"prompt": "1+1=", "answer": "2"}\n')
    assert read_rows(lines).rows == [{"prompt": "1+1=", "answer": "2"}]
    table = tmp_path / "rows.csv"
    table.write_text('question,solution,note\n"1+1=",2,\n"a, b",3,x\n')
    data = _load(f"task.train_file={table}", "task.columns={question: prompt, solution: answer}")
    assert data.train == [
        {"prompt": "1+1=", "answer": "2", "note": None},
        {"prompt": "a, b", "answer": "3", "note": "x"},
    ]
    table.write_text("prompt,answer\n1+1=,2,extra\n")
    with pytest.raises(DataFileError, match=r"rows.csv, row 1: more fields than the header line names"):
        read_rows(table)
