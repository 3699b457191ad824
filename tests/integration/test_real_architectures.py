"""`prolora train` on the architectures users bring (Qwen2, Qwen3, Llama, LFM2) with conversational data.

Each model is a tiny random one saved as a hub model is (tests/real_models.py: byte-level BPE, ChatML template, two
EOS ids, no pad token). One 2-step run per architecture (an engine start is most of its cost) is checked for: the
served-adapter probe and the start-up base-model comparison, the rendered prompt and token ids the engine got (the
chat template's, one BOS for LFM2), completions ending at either EOS id with the right finish_reason, and TRL's own
reward functions plus a TRL-style conversational user reward running unchanged, with `completion_ids`,
`trainer_state`, `log_metric`, `log_extra`.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
import yaml
from transformers import AutoTokenizer

from tests.real_models import ARCHITECTURES, write_chat_data

MAX_NEW_TOKENS = 8
REWARDS = [
    {"name": "exact_match"},
    {"name": "trl.rewards:accuracy_reward"},
    {"name": "trl.rewards:think_format_reward"},
    {
        "name": "trl.rewards:get_soft_overlong_punishment",
        "kwargs": {"max_completion_len": MAX_NEW_TOKENS, "soft_punish_cache": 4},
    },
    {"name": "tests.real_models:reply_contains_answer"},
]
TEMPLATE_KWARGS = {"qwen3": {"enable_thinking": False}}


def _run(arch: str, model_dir, tmp_path) -> tuple[subprocess.CompletedProcess, object]:
    data = write_chat_data(tmp_path / "chat.jsonl")
    config = {
        "run": {"steps": 2, "run_dir": str(tmp_path / "run"), "checkpoint_every": 0},
        "model": {"path": str(model_dir), "max_model_len": 128},
        "task": {
            "train_file": str(data),
            "heldout_file": str(data),
            "chat_template_kwargs": TEMPLATE_KWARGS.get(arch, {}),
        },
        "rollout": {"prompts_per_step": 4, "group_size": 4, "max_new_tokens": MAX_NEW_TOKENS, "probe_every": 1},
        "eval": {"size": 4, "n_samples": 2, "k": 1},
        "rewards": {"functions": REWARDS},
        "log": {"save_adapter_every": 0},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = subprocess.run(
        [sys.executable, "-m", "launch.cli", "train", str(path)], capture_output=True, text=True, timeout=900
    )
    return proc, tmp_path / "run"


@pytest.fixture(scope="module", params=ARCHITECTURES)
def chat_run(request, real_models, tmp_path_factory):
    arch = request.param
    proc, run_dir = _run(arch, real_models[arch], tmp_path_factory.mktemp(arch))
    assert proc.returncode == 0, proc.stderr[-4000:]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rollouts = pq.read_table(run_dir / "rollouts").to_pylist()
    return arch, real_models[arch], proc, records, rollouts


def _steps(records: list[dict]) -> list[dict]:
    return [r for r in records if "step" in r and not r.get("eval") and not r.get("reward_swap")]


@pytest.mark.slow
def test_served_adapter_probe_passes(chat_run):
    _, _, _, records, _ = chat_run
    step = _steps(records)[1]
    assert step["probe_max_diff"] is not None and step["probe_max_diff"] <= 0.05, step
    # The start-up comparison on the base model: engine numerics are small for every architecture.
    assert next(r for r in records if r.get("eval"))["engine_base_gap"] < 0.01


@pytest.mark.slow
def test_trl_rewards_run_unchanged(chat_run):
    arch, _, proc, records, rollouts = chat_run
    steps = _steps(records)
    assert [r["step"] for r in steps] == [1, 2]
    for r in steps:
        assert r["reward_failures"] == 0
        assert r["reward_log/reply_chars"] >= 0
        for spec in REWARDS:
            assert r[f"reward/{spec['name']}"] is not None, spec
    assert all(json.loads(row["log_extra"])["reply_tokens"] == len(row["completion_token_ids"]) for row in rollouts)
    assert "prompts are plain strings" not in proc.stderr


@pytest.mark.slow
def test_engine_gets_the_chat_templates_text_and_ids(chat_run):
    arch, model_dir, _, _, rollouts = chat_run
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    kwargs = dict(add_generation_prompt=True, **TEMPLATE_KWARGS.get(arch, {}))
    for row in rollouts:
        messages = json.loads(row["messages"])
        assert row["prompt"] == tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)
        assert row["prompt_token_ids"] == tokenizer.apply_chat_template(messages, tokenize=True, **kwargs)["input_ids"]
    if arch == "lfm2":  # its template starts with BOS: exactly one, not a second from the tokenizer
        bos = tokenizer.bos_token_id
        assert all(row["prompt_token_ids"][0] == bos and row["prompt_token_ids"].count(bos) == 1 for row in rollouts)
    if arch == "qwen3":
        assert all(row["prompt"].endswith("<think>\n\n</think>\n\n") for row in rollouts)


@pytest.mark.slow
def test_generation_stops_at_either_eos_id(chat_run):
    _, model_dir, _, _, rollouts = chat_run
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    eos_ids = {tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")}
    ended_at = set()
    for row in rollouts:
        ids = row["completion_token_ids"]
        assert not eos_ids & set(ids[:-1]), ids  # nothing generated past an EOS
        if row["finish_reason"] == "stop":
            assert ids[-1] in eos_ids, ids
            ended_at.add(ids[-1])
        else:
            assert row["finish_reason"] == "length" and len(ids) == MAX_NEW_TOKENS and ids[-1] not in eos_ids
    assert ended_at == eos_ids
    assert {row["finish_reason"] for row in rollouts} == {"stop", "length"}
