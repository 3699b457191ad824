"""DPO as pure logic: the sigmoid and IPO losses against values worked out by hand, the config's checks, the
preference rows' messages, and how a preference row becomes token ids."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from launch.collect import Preferences, preference_batch
from launch.datafiles import DataFileError, load_task_data
from launch.prompts import PromptFeed, PromptSampler
from learner.dpo import dpo_loss, sequence_logps
from shared.config import ConfigError, load_config
from shared.tasks import get_task


def _loss(kind: str, beta: float):
    # Two pairs. Pair 0: policy chosen -1.0 / rejected -2.0, reference -1.5 / -1.5, lengths 2 / 4.
    # Pair 1: policy equals the reference, lengths 1 / 1.
    t = torch.tensor
    return dpo_loss(
        t([-1.0, -3.0]), t([-2.0, -4.0]), t([-1.5, -3.0]), t([-1.5, -4.0]), t([2, 1]), t([4, 1]), beta, kind
    )


def test_sigmoid_loss_by_hand():
    terms = _loss("sigmoid", beta=0.5)
    # pair 0: log-ratios +0.5 and -0.5, margin 1.0: -log sigmoid(0.5 * 1.0) = log(1 + e^-0.5)
    # pair 1: margin 0: -log sigmoid(0) = log 2
    want = [math.log(1 + math.exp(-0.5)), math.log(2)]
    assert terms.loss_B.tolist() == pytest.approx(want)
    assert terms.chosen_reward_B.tolist() == pytest.approx([0.25, 0.0])  # beta * summed log-ratio
    assert terms.rejected_reward_B.tolist() == pytest.approx([-0.25, 0.0])


def test_ipo_loss_by_hand_uses_per_token_average_log_ratios():
    terms = _loss("ipo", beta=0.5)
    # pair 0: 0.5 / 2 - (-0.5) / 4 = 0.375; 1 / (2 beta) = 1: (0.375 - 1)^2
    # pair 1: margin 0: (0 - 1)^2
    assert terms.loss_B.tolist() == pytest.approx([0.390625, 1.0])
    assert terms.chosen_reward_B.tolist() == pytest.approx([0.25, 0.0])  # rewards stay summed, as TRL logs them


def test_gradient_flows_only_through_the_policy_and_pushes_chosen_up():
    chosen = torch.tensor([-1.0], requires_grad=True)
    rejected = torch.tensor([-1.0], requires_grad=True)
    ref = torch.tensor([-1.0], requires_grad=True)
    one = torch.tensor([1])
    for kind in ("sigmoid", "ipo"):
        chosen.grad = rejected.grad = ref.grad = None
        dpo_loss(chosen, rejected, ref, ref, one, one, 0.1, kind).loss_B.sum().backward()  # type: ignore[arg-type]
        assert chosen.grad is not None and rejected.grad is not None
        assert chosen.grad.item() < 0 < rejected.grad.item()  # descent raises chosen, lowers rejected
        assert ref.grad is None


def test_unknown_loss_and_masked_sums():
    with pytest.raises(ValueError, match="unknown DPO loss 'hinge'"):
        _loss("hinge", beta=0.1)
    logp_BC = torch.tensor([[-1.0, -2.0, -9.0], [-0.5, -9.0, -9.0]])
    mask_BC = torch.tensor([[True, True, False], [True, False, False]])
    assert sequence_logps(logp_BC, mask_BC).tolist() == [-3.0, -0.5]


def test_config_defaults_and_checks(tmp_path):
    algo = load_config().algo
    assert (algo.objective, algo.dpo_loss, algo.dpo_beta) == ("grpo", "sigmoid", 0.1)
    with pytest.raises(ConfigError, match="algo.objective=dpo trains on preference pairs: set task.train_file"):
        load_config(overrides=["algo.objective=dpo"])
    with pytest.raises(ConfigError, match="reference resets are GRPO's"):
        load_config(overrides=["algo.objective=dpo", "task.train_file=p.jsonl", "reference.reset_every=5"])
    with pytest.raises(ConfigError, match="algo.dpo_beta"):
        load_config(overrides=["algo.dpo_beta=0"])


def _pairs_file(path: Path, *rows: dict) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


GOOD = {"prompt": "12+30=", "chosen": "42", "rejected": "41"}


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"prompt": "1+1=", "chosen": "2"}, r"line 2: missing column 'rejected' \(every row needs prompt, chosen"),
        ({**GOOD, "rejected": ""}, r"line 2: column 'rejected' must be a non-empty string .* got an empty string"),
        ({**GOOD, "chosen": 42}, r"line 2: column 'chosen' must be a non-empty string .* got int 42"),
        ({**GOOD, "chosen": None}, r"line 2: column 'chosen' must be a non-empty string .* got NoneType None"),
        ({**GOOD, "chosen": [{"role": "assistant"}]}, r"line 2: column 'chosen' holds chat messages, but message 0"),
    ],
)
def test_bad_preference_row_names_file_line_and_column(tmp_path, bad, message):
    path = _pairs_file(tmp_path / "pairs.jsonl", GOOD, bad)
    config = load_config(overrides=["algo.objective=dpo", f"task.train_file={path}"])
    with pytest.raises(DataFileError, match=f"{path}, {message}"):
        load_task_data(config, get_task("arith"), lambda prompt: 4)


def test_no_preference_columns_at_all_is_one_message(tmp_path):
    path = _pairs_file(tmp_path / "pairs.jsonl", {"prompt": "1+1=", "answer": "2"})
    config = load_config(overrides=["algo.objective=dpo", f"task.train_file={path}"])
    with pytest.raises(DataFileError, match=r"no column 'chosen' \(needed: prompt, chosen, rejected\)"):
        load_task_data(config, get_task("arith"), lambda prompt: 4)


class _CharTokenizer:
    def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
        return {"input_ids": ([1] if add_special_tokens else []) + [ord(c) for c in text]}


class _Renderer:
    """Plain prompts only (the chat path is shared/chat.py's, tested there)."""

    tokenizer = _CharTokenizer()

    def render(self, prompt):
        from shared.records import Prompt

        return Prompt(prompt, tuple(self.tokenizer(prompt)["input_ids"]))


def test_preference_batch_tokenizes_completions_after_the_prompt_with_eos_and_the_length_cap(tmp_path):
    config = load_config(
        overrides=["rollout.prompts_per_step=2", "rollout.max_new_tokens=3", "algo.objective=dpo", "task.train_file=x"]
    )
    rows = [
        {"prompt": "1+1=", "chosen": "2", "rejected": [{"role": "assistant", "content": "3"}]},
        {"prompt": "9+9=", "chosen": "18", "rejected": "1999"},
    ]
    feed = PromptFeed(PromptSampler(rows, seed=0), max_staleness=0)
    batch = preference_batch(1, Preferences(config, feed, _Renderer(), eos_id=0))  # type: ignore[arg-type]
    by_prompt = {p.prompt_token_ids: p for p in batch.pairs}
    first, second = by_prompt[(1, *map(ord, "1+1="))], by_prompt[(1, *map(ord, "9+9="))]
    assert (first.chosen_token_ids, first.rejected_token_ids) == ((ord("2"), 0), (ord("3"), 0))
    assert (second.chosen_token_ids, second.rejected_token_ids) == ((ord("1"), ord("8"), 0), tuple(map(ord, "199")))


def test_pick_pair_takes_the_first_right_and_first_wrong_sample():
    from launch.tools.make_pairs import pick_pair

    def same(text: str, answer: str) -> bool:
        return text.strip() == answer

    assert pick_pair(["41", "42", "40", "42"], "42", same) == ("42", "41")
    assert pick_pair(["42", "42"], "42", same) is None  # always solved: no pair
    assert pick_pair(["1", "2"], "42", same) is None  # never solved: no pair


def test_comparison_table_lines_up_the_evaluated_steps():
    from launch.tools.dpo_vs_grpo import table

    curves = {
        "grpo": {0: {"pass@1": 0.2, "pass@8": 0.5}, 5: {"pass@1": 0.3, "pass@8": 0.6}},
        "dpo": {0: {"pass@1": 0.2, "pass@8": 0.5}},
    }
    assert table(curves, 8).splitlines() == [
        "| step | GRPO pass@1 | GRPO pass@8 | DPO pass@1 | DPO pass@8 |",
        "|---|---|---|---|---|",
        "| 0 | 0.200 | 0.500 | 0.200 | 0.500 |",
        "| 5 | 0.300 | 0.600 | - | - |",
    ]
