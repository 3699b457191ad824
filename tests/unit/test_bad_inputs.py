"""Every bad input of issue 6 through `prolora train` itself (`launch.cli.main`): one message naming what is wrong,
exit status 2, no traceback, and no actor started (these run without Ray in well under a minute).

The model path is a directory holding only the built-in BPE tokenizer: enough for the path check and the
prompt-length check, which run before any actor would load the weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from launch.cli import main


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    from launch.basemodel import build_tokenizer, model_config

    path = tmp_path_factory.mktemp("tokenizer-only")  # and the model's config.json, which start-up checks read
    build_tokenizer().save_pretrained(path)
    model_config().save_pretrained(path)
    return path


@pytest.fixture(autouse=True)
def no_actors(monkeypatch):
    """A test that got past every check would start Ray here; make that a clear failure instead."""

    def refuse(*args):
        raise AssertionError("reached start_ray: the input was not refused")

    monkeypatch.setattr("launch.driver.start_ray", refuse)


def _train(capsys, tmp_path: Path, tokenizer_dir: Path, *overrides: str) -> str:
    args = ["train", "--run-dir", str(tmp_path / "run"), "--set", f"model.path={tokenizer_dir}"]
    code = main([*args, *(a for o in overrides for a in ("--set", o))])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("prolora: error: ") and "Traceback" not in err
    return err


def _jsonl(tmp_path: Path, *rows: object) -> Path:
    path = tmp_path / "train.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


GOOD = {"prompt": "1+2=", "answer": "3"}


@pytest.mark.parametrize(
    ("bad_row", "message"),
    [
        ({"prompt": "1+2="}, "line 2: missing column 'answer' (every row needs prompt, answer)"),
        ({"answer": "3"}, "line 2: missing column 'prompt'"),
        ({"prompt": ["1", "+"], "answer": "3"}, "line 2: column 'prompt' holds chat messages, but message 0 is a str"),
        ({"prompt": 12, "answer": "3"}, "line 2: column 'prompt' must be a string or a list of messages"),
        ({"prompt": "1+2=", "answer": 3}, "line 2: column 'answer' must be a string, got int 3"),
        ({"prompt": "", "answer": "3"}, "line 2: column 'prompt' is empty"),
        ('{"prompt": ', "line 2: not valid JSON"),
    ],
)
def test_bad_data_row_names_file_line_and_column(capsys, tmp_path, tokenizer_dir, bad_row, message):
    path = _jsonl(tmp_path, GOOD, bad_row)
    err = _train(capsys, tmp_path, tokenizer_dir, f"task.train_file={path}")
    assert f"{path}, {message}" in err
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_missing_data_file(capsys, tmp_path, tokenizer_dir):
    err = _train(capsys, tmp_path, tokenizer_dir, f"task.heldout_file={tmp_path / 'nope.jsonl'}")
    assert f"data file not found: {tmp_path / 'nope.jsonl'}" in err


def test_prompt_longer_than_the_context_is_an_error_by_default(capsys, tmp_path, tokenizer_dir):
    path = _jsonl(tmp_path, GOOD, {"prompt": "1" * 60 + "+2=", "answer": "3"})
    # plain: the string prompts go raw to this ChatML tokenizer's model, without auto's warning
    err = _train(capsys, tmp_path, tokenizer_dir, f"task.train_file={path}", "task.prompt_format=plain")
    assert f"{path}, line 2: the prompt has 63 tokens" in err and "at most 56" in err
    assert "task.overlong_prompts=skip" in err


def test_prompt_longer_than_the_context_is_skipped_and_counted(capsys, tmp_path, tokenizer_dir):
    long = {"prompt": "1" * 60 + "+2=", "answer": "3"}
    path = _jsonl(tmp_path, GOOD, long, GOOD, long)
    with pytest.raises(AssertionError, match="reached start_ray"):  # every check passed; the run would start
        main(
            [
                "train",
                "--run-dir",
                str(tmp_path / "run"),
                "--set",
                f"model.path={tokenizer_dir}",
                "--set",
                f"task.train_file={path}",
                "--set",
                "task.overlong_prompts=skip",
            ]
        )
    assert f"{path}: skipped 2 prompts longer than the context (rows 2, 4)" in capsys.readouterr().out
    assert json.loads((tmp_path / "run" / "data.json").read_text()) == {"skipped_overlong_rows": {str(path): [2, 4]}}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("task.trian_file=x.jsonl", "unknown key 'task.trian_file'; allowed here: name, train_size"),
        ("task.overlong_prompts=drop", "task.overlong_prompts: Input should be 'error' or 'skip'"),
        ("rewards.max_restarts=-1", "rewards.max_restarts: Input should be greater than or equal to 0"),
    ],
)
def test_unknown_config_key_or_bad_value(capsys, tmp_path, tokenizer_dir, override, message):
    assert message in _train(capsys, tmp_path, tokenizer_dir, override)


def test_unknown_reward_lists_the_available_ones(capsys, tmp_path, tokenizer_dir):
    err = _train(capsys, tmp_path, tokenizer_dir, "rewards.functions=[{name: exact_mach}]")
    assert "unknown reward 'exact_mach'; built-ins are: exact_match, math," in err


def test_model_path_that_does_not_exist(capsys, tmp_path, tokenizer_dir):
    err = _train(capsys, tmp_path, tokenizer_dir, f"model.path={tmp_path / 'no-model'}")
    assert f"model.path '{tmp_path / 'no-model'}' does not exist" in err


def test_run_directory_that_holds_another_run(capsys, tmp_path, tokenizer_dir):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("run: {name: other}\n")
    err = _train(capsys, tmp_path, tokenizer_dir)
    assert f"run directory {tmp_path / 'run'} already holds a run; choose another --run-dir" in err
