"""A run at a real vocabulary size: a tiny random Qwen2 whose embedding and output head have Qwen2.5's 151,936 rows
(padded past its tokenizer's length, as hub models are), trained for 2 steps through `prolora train` on
conversational data. The engine samples over the whole vocabulary and the learner's chunked logprobs must agree with
the engine's there: the served-adapter probe passes, and the sampling logprobs the rollouts record match."""

from __future__ import annotations

import json
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
import yaml

from tests.real_models import build_model, write_chat_data

QWEN_VOCAB = 151_936


@pytest.mark.slow
def test_a_run_at_qwens_vocabulary_size(tmp_path):
    model_dir = build_model("qwen2", tmp_path / "qwen2-151936", vocab_size=QWEN_VOCAB)
    assert json.loads((model_dir / "config.json").read_text())["vocab_size"] == QWEN_VOCAB
    data = write_chat_data(tmp_path / "chat.jsonl")
    config = {
        "run": {"steps": 2, "run_dir": str(tmp_path / "run"), "checkpoint_every": 0},
        "model": {"path": str(model_dir), "max_model_len": 128},
        "task": {"train_file": str(data), "heldout_file": str(data)},
        "rollout": {"prompts_per_step": 4, "group_size": 4, "max_new_tokens": 8, "probe_every": 1},
        "train": {"micro_batch_tokens": 256},
        "eval": {"size": 4, "n_samples": 2, "k": 1},
        "rewards": {"functions": [{"name": "exact_match"}, {"name": "repetition", "weight": 0.1}]},
        "log": {"save_adapter_every": 0},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = subprocess.run(
        [sys.executable, "-m", "launch.cli", "train", str(path)], capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "step" in r and not r.get("eval") and not r.get("reward_swap")]
    assert [r["step"] for r in steps] == [1, 2]
    assert all(r["probe_max_diff"] is not None and r["probe_max_diff"] <= 0.05 for r in steps[1:]), steps
    rollouts = pq.read_table(tmp_path / "run" / "rollouts").to_pylist()
    assert rollouts and all(len(r["sampling_logprobs"]) == len(r["completion_token_ids"]) for r in rollouts)
