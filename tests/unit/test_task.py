"""The built-in task's splits and the built-in base model's tokenizer and directory layout."""

from __future__ import annotations

import json
import re

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from launch.basemodel import build_base_model, build_tokenizer, ensure_base_model
from shared.chat import PromptRenderer, eos_token_ids, prompt_key
from shared.errors import UserError
from shared.tasks import get_task
from shared.tasks.arithmetic import CARRY_SLIP, COPY_EVERY, is_heldout, operands, sloppy_sum


def test_splits_are_deterministic_and_disjoint() -> None:
    task = get_task("arith")
    assert task.train_rows(500, 3) == task.train_rows(500, 3)
    assert task.heldout_rows(100, 3) == task.heldout_rows(100, 3)
    assert task.train_rows(100, 3) != task.train_rows(100, 4)
    train = {prompt_key(r["prompt"]) for seed in range(3) for r in task.train_rows(2000, seed)}
    heldout = {prompt_key(r["prompt"]) for seed in range(3) for r in task.heldout_rows(200, seed)}
    assert not train & heldout
    assert len(task.train_rows(2000, 0)) == len({prompt_key(r["prompt"]) for r in task.train_rows(2000, 0)})


def test_rows_are_correct_sums_and_split_by_unordered_pair() -> None:
    task = get_task("arith")
    for row in task.train_rows(200, 0) + task.heldout_rows(50, 0):
        assert row["prompt"] == [{"role": "user", "content": row["prompt"][0]["content"]}]  # TRL's chat format
        a, b = operands(row["prompt"])
        assert a + b == int(row["answer"])
        assert is_heldout(a, b) == is_heldout(b, a)
    assert task.is_correct(" 579 \n", "579")
    assert not task.is_correct("57", "579")
    with pytest.raises(UserError, match="built-in tasks"):
        get_task("nope")


def test_warmup_rows_are_training_problems_with_a_dropped_tens_carry_and_copy_problems() -> None:
    task = get_task("arith")
    rows = task.warmup_rows(2000, 5)
    assert rows == task.warmup_rows(2000, 5)
    train = task.train_rows(2000, 5)
    assert sloppy_sum(456, 378) == 734 and sloppy_sum(123, 456) == 579 and sloppy_sum(450, 560) == 910
    slipped = carried = 0
    for i, (row, problem) in enumerate(zip(rows, train, strict=True)):
        a, b = operands(row["prompt"])
        if i % COPY_EVERY == 0:  # a 3-digit number plus 000, answered with the number
            assert 0 in (a, b) and 100 <= a + b <= 999 and row["answer"] == str(a + b)
            assert re.fullmatch(r"(\d{3}\+000|000\+\d{3})=", row["prompt"][0]["content"])
            continue
        assert row["prompt"] == problem["prompt"]
        assert int(row["answer"]) in {a + b, sloppy_sum(a, b)}
        if sloppy_sum(a, b) != a + b:
            carried += 1
            slipped += int(row["answer"]) != a + b
    assert 0.3 < carried / len(rows) < 0.5
    assert abs(slipped / carried - CARRY_SLIP) < 0.05


def test_tokenizer_is_byte_level_bpe_with_chatml_and_no_pad_or_bos() -> None:
    tokenizer = build_tokenizer()
    text = "123+456=Hello, world! ~{}\n añ"
    ids = tokenizer(text).input_ids
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert tokens[:4] == ["1", "2", "3", "+"]  # one token per digit, nothing added in front
    assert tokenizer.decode(ids) == text
    assert tokenizer.bos_token is None and tokenizer.pad_token is None and tokenizer.eos_token == "<|im_end|>"
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tokenizer.decode([*ids, end], skip_special_tokens=True) == text
    assert tokenizer("<|im_start|>user")["input_ids"][0] == tokenizer.convert_tokens_to_ids("<|im_start|>")
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "1+2="}], add_generation_prompt=True, tokenize=False
    )
    assert rendered == "<|im_start|>user\n1+2=<|im_end|>\n<|im_start|>assistant\n"


def test_quick_build_is_a_chatml_instruct_model_with_two_eos_ids(tmp_path) -> None:
    out = build_base_model(tmp_path / "model", "arith", sft_steps=2, seed=0)
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (out / name).is_file(), name
    loaded = AutoTokenizer.from_pretrained(out)
    im_end, endoftext = (loaded.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>"))
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == [im_end, endoftext]
    assert eos_token_ids(str(out), loaded) == (im_end, endoftext)  # what a rollout worker stops at
    assert loaded.pad_token is None and loaded.chat_template
    prompt = get_task("arith").heldout_rows(1, 0)[0]["prompt"]
    rendered = PromptRenderer(loaded).render(prompt)  # the built-in task's prompts take the chat path
    content = prompt[0]["content"]
    assert rendered.text == f"<|im_start|>user\n{content}<|im_end|>\n<|im_start|>assistant\n"
    assert list(rendered.token_ids) == build_tokenizer()(rendered.text).input_ids
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


def test_a_start_stuck_on_the_warm_start_plateau_is_replaced_by_the_next_seeds(tmp_path, monkeypatch, capsys) -> None:
    import launch.basemodel as basemodel

    # 25 steps are far too few to leave the plateau, so every start is stuck when the check first runs.
    monkeypatch.setitem(basemodel.SFT_PLATEAU_STEPS, "arith", 25)
    monkeypatch.setattr(basemodel, "SFT_ATTEMPTS", 2)
    with pytest.raises(RuntimeError, match=r"2 starts \(seeds 5 to 6\) all stayed on the warm start's loss plateau"):
        build_base_model(tmp_path / "model", "arith", sft_steps=400, seed=5)
    out = capsys.readouterr().out
    assert out.count("dropping this start") == 2
    assert "seed 5" in out and "seed 6" in out
    assert not (tmp_path / "model").exists()  # nothing half-built is saved
