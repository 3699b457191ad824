"""The built-in task's splits and the built-in base model's tokenizer and directory layout."""

from __future__ import annotations

import json

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from launch.basemodel import BOS_ID, EOS_ID, build_base_model, build_tokenizer, ensure_base_model
from shared.errors import UserError
from shared.tasks import get_task
from shared.tasks.arithmetic import CARRY_SLIP, is_heldout, sloppy_sum


def test_splits_are_deterministic_and_disjoint() -> None:
    task = get_task("arith")
    assert task.train_rows(500, 3) == task.train_rows(500, 3)
    assert task.heldout_rows(100, 3) == task.heldout_rows(100, 3)
    assert task.train_rows(100, 3) != task.train_rows(100, 4)
    train = {r["prompt"] for seed in range(3) for r in task.train_rows(2000, seed)}
    heldout = {r["prompt"] for seed in range(3) for r in task.heldout_rows(200, seed)}
    assert not train & heldout
    assert len(task.train_rows(2000, 0)) == len({r["prompt"] for r in task.train_rows(2000, 0)})


def test_rows_are_correct_sums_and_split_by_unordered_pair() -> None:
    task = get_task("arith")
    for row in task.train_rows(200, 0) + task.heldout_rows(50, 0):
        a, b = row["prompt"].removesuffix("=").split("+")
        assert int(a) + int(b) == int(row["answer"])
        assert is_heldout(int(a), int(b)) == is_heldout(int(b), int(a))
    assert task.is_correct(" 579 \n", "579")
    assert not task.is_correct("57", "579")
    with pytest.raises(UserError, match="built-in tasks"):
        get_task("nope")


def test_warmup_rows_are_training_problems_with_a_dropped_tens_carry() -> None:
    task = get_task("arith")
    rows = task.warmup_rows(2000, 5)
    assert rows == task.warmup_rows(2000, 5)
    assert [r["prompt"] for r in rows] == [r["prompt"] for r in task.train_rows(2000, 5)]
    assert sloppy_sum(456, 378) == 734 and sloppy_sum(123, 456) == 579 and sloppy_sum(450, 560) == 910
    slipped = carried = 0
    for row in rows:
        a, b = (int(x) for x in row["prompt"].removesuffix("=").split("+"))
        assert int(row["answer"]) in {a + b, sloppy_sum(a, b)}
        if sloppy_sum(a, b) != a + b:
            carried += 1
            slipped += int(row["answer"]) != a + b
    assert 0.4 < carried / len(rows) < 0.6
    assert abs(slipped / carried - CARRY_SLIP) < 0.05


def test_tokenizer_is_character_level_and_adds_bos_only() -> None:
    tokenizer = build_tokenizer()
    text = "123+456=Hello, world! ~{}\n"
    ids = tokenizer(text).input_ids
    assert ids[0] == BOS_ID and EOS_ID not in ids
    assert len(ids) == len(text) + 1
    assert tokenizer.decode(ids, skip_special_tokens=True) == text
    assert tokenizer.decode([*ids, EOS_ID], skip_special_tokens=True) == text
    assert tokenizer.eos_token_id == EOS_ID and tokenizer.bos_token_id == BOS_ID


def test_quick_build_loads_with_transformers(tmp_path) -> None:
    out = build_base_model(tmp_path / "model", "arith", sft_steps=2, seed=0)
    for name in (
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    ):
        assert (out / name).is_file(), name
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == EOS_ID
    loaded = AutoTokenizer.from_pretrained(out)
    prompt = get_task("arith").heldout_rows(1, 0)[0]["prompt"]
    assert loaded(prompt).input_ids == build_tokenizer()(prompt).input_ids
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.architectures == ["LlamaForCausalLM"]
    assert model.config.vocab_size == len(loaded)


def test_ensure_base_model_builds_once(tmp_path, capsys) -> None:
    first = ensure_base_model("arith", tmp_path, sft_steps=1)
    assert (first / "config.json").is_file()
    capsys.readouterr()
    assert ensure_base_model("arith", tmp_path, sft_steps=1) == first
    assert "building" not in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temporary directory left behind
