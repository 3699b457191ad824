"""`prolora score` through the real command: values per row, and clear errors for bad rows (line and column)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from sacrebleu.metrics import CHRF


def _score(*args: str, pythonpath: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [pythonpath, env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "launch.cli", "score", *args], capture_output=True, text=True, timeout=120, env=env
    )


def _write(path, lines: list) -> str:
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return str(path)


def test_score_reads_parquet_and_numbers_its_rows(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"prompt": "1+1=", "completion": "2", "answer": "2"}, {"prompt": "2+2=", "completion": "5", "answer": "4"}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "in.parquet")
    proc = _score("--input", str(tmp_path / "in.parquet"), "--reward", "exact_match")
    assert proc.returncode == 0, proc.stderr
    out = [json.loads(line) for line in proc.stdout.splitlines()]
    assert out == [{"line": 1, "exact_match": 1.0, "total": 1.0}, {"line": 2, "exact_match": 0.0, "total": 0.0}]

    pq.write_table(pa.Table.from_pylist([{"prompt": "p", "answer": "4"}]), tmp_path / "bad.parquet")
    proc = _score("--input", str(tmp_path / "bad.parquet"), "--reward", "exact_match")
    assert proc.returncode == 2 and "bad.parquet, row 1: missing column 'completion'" in proc.stderr


def test_score_prints_components_and_total_per_row(tmp_path):
    rows = [
        {"prompt": "S:x\nT:", "completion": "vag vyge", "reference": "vag vyge", "answer": "vag vyge"},
        "",
        {"prompt": "2+2=", "completion": "the cat sat", "reference": ["a cat sat", "the cat is"], "answer": "4"},
        {"prompt": "p", "completion": "4", "reference": None, "answer": "4"},
    ]
    proc = _score("--input", _write(tmp_path / "in.jsonl", rows), "--reward", "chrf=0.5,exact_match")
    assert proc.returncode == 0, proc.stderr
    out = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [o["line"] for o in out] == [1, 3, 4]  # the blank line 2 is skipped, numbers stay the file's
    assert list(out[0]) == ["line", "chrf", "exact_match", "total"]
    chrf = CHRF(word_order=2).sentence_score("the cat sat", ["a cat sat", "the cat is"]).score / 100
    assert out[0] == {"line": 1, "chrf": 1.0, "exact_match": 1.0, "total": 1.5}
    assert out[1]["chrf"] == pytest.approx(chrf) and out[1]["exact_match"] == 0.0
    assert out[1]["total"] == pytest.approx(0.5 * chrf)
    assert out[2] == {"line": 4, "chrf": None, "exact_match": 1.0, "total": 1.0}


@pytest.mark.parametrize(
    ("lines", "reward", "message"),
    [
        (
            [{"prompt": "p", "completion": "x", "reference": "x"}, {"prompt": "p", "completion": "y"}],
            "chrf",
            "in.jsonl, line 2: missing column 'reference', needed by reward 'chrf'; this line has: prompt, completion",
        ),
        (["", {"prompt": "p", "answer": "x"}], "exact_match", "in.jsonl, line 2: missing column 'completion'"),
        (
            [{"prompt": "p", "completion": "x", "answer": "1"}, '{"prompt": "p",'],
            "exact_match",
            "in.jsonl, line 2: not valid JSON",
        ),
        ([[1, 2]], "exact_match", "in.jsonl, line 1: expected a JSON object, got list"),
        (
            [{"prompt": "p", "completion": 3, "answer": "3"}],
            "exact_match",
            "in.jsonl, line 1: column 'completion' must be a string or a list of chat messages",
        ),
        ([{"prompt": "p", "completion": "x"}], "exact_mach", "unknown reward 'exact_mach'"),
        ([{"prompt": "p", "completion": "x"}], "chrf=high", "--reward 'chrf=high': the weight"),
        ([{"prompt": "p", "completion": "x", "source": "s"}], "cycle_consistency", "task.name=translate"),
    ],
)
def test_bad_input_is_a_clear_error_naming_line_and_column(tmp_path, capsys, lines, reward, message):
    """The command's own entry point, in this process (the other tests run it as a subprocess): an error is one
    line on stderr, exit status 2, nothing on stdout; an unexpected exception would fail the test."""
    from launch.cli import main

    status = main(["score", "--input", _write(tmp_path / "in.jsonl", lines), "--reward", reward])
    out, err = capsys.readouterr()
    assert status == 2
    assert message in err and err.startswith("prolora: error: ") and err.count("\n") == 1
    assert out == ""


def test_user_rewards_get_completion_ids_from_the_run_tokenizer(tmp_path, real_models):
    from transformers import AutoTokenizer

    (tmp_path / "id_rewards.py").write_text(
        "def n_ids(prompts, completions, completion_ids, **kw):\n"
        "    assert completions[0][0]['role'] == 'assistant'\n"
        "    return [float(len(ids)) for ids in completion_ids]\n"
    )
    text = "The answer is 12345."
    row = {"prompt": [{"role": "user", "content": "hi"}], "completion": [{"role": "assistant", "content": text}]}
    proc = _score(
        "--input",
        _write(tmp_path / "in.jsonl", [row]),
        "--reward",
        "id_rewards:n_ids",
        "--set",
        f"model.tokenizer={real_models['qwen2']}",
        pythonpath=str(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr
    expected = AutoTokenizer.from_pretrained(real_models["qwen2"]).encode(text, add_special_tokens=False)
    assert len(expected) > len(text.split())  # digits one per token: ids, not words
    assert json.loads(proc.stdout)["id_rewards:n_ids"] == len(expected)


def test_failing_user_reward_follows_the_configured_policy(tmp_path, real_models):
    (tmp_path / "my_rewards.py").write_text("def boom(prompts, completions, **kw):\n    raise RuntimeError('bad')\n")
    args = (
        "--input",
        _write(tmp_path / "in.jsonl", [{"prompt": "p", "completion": "a b c a b c"}]),
        "--reward",
        "my_rewards:boom,repetition=2",
        "--set",
        f"model.tokenizer={real_models['qwen2']}",
    )
    proc = _score(*args, pythonpath=str(tmp_path))
    assert proc.returncode == 2 and "reward 'my_rewards:boom' failed: RuntimeError: bad" in proc.stderr
    assert "Traceback" not in proc.stderr

    proc = _score(*args, "--set", "rewards.failure_policy=zero", pythonpath=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {
        "line": 1,
        "my_rewards:boom": 0.0,
        "repetition": pytest.approx(3 / 4 - 1),
        "total": pytest.approx(2 * (3 / 4 - 1)),
    }
    assert "RuntimeError: bad" in proc.stderr  # the traceback is logged once
