"""Unit tests of the reward layer: built-ins against their reference libraries, the registry, and the worker's
timeouts and failure policies."""

from __future__ import annotations

import logging
import math
import sys
import textwrap

import pytest
from sacrebleu.metrics import BLEU, CHRF, TER

from learner.rewards import (
    BUILTIN_REWARDS,
    RewardFailure,
    RewardWorker,
    UnknownRewardError,
    format_reward,
    overlong_reward,
    repetition_reward,
    resolve_reward,
    score_rows,
)
from learner.rewards.builtin import soft_overlong_penalty
from shared.config import RewardSpec
from shared.records import RewardBatch

USER_MODULE = "prolora_test_user_rewards"
USER_CODE = textwrap.dedent(
    """
    import asyncio
    import time

    def trl_length(completions, **kwargs):
        return [float(len(c)) for c in completions]

    async def async_match(prompts, completions, answer, **kwargs):
        await asyncio.sleep(0)
        return [float(c == a) for c, a in zip(completions, answer)]

    def raising(prompts, completions, **kwargs):
        raise RuntimeError("boom in user reward")

    def hanging(prompts, completions, **kwargs):
        time.sleep(1.0)
        return [1.0] * len(completions)

    async def async_hanging(prompts, completions, **kwargs):
        await asyncio.sleep(5.0)
        return [1.0] * len(completions)

    def wrong_length(prompts, completions, **kwargs):
        return [1.0]

    def not_a_number(prompts, completions, **kwargs):
        return ["high"] * len(completions)

    def nan(prompts, completions, **kwargs):
        return [float("nan")] * len(completions)

    def not_applicable(prompts, completions, **kwargs):
        return [None] * len(completions)

    NOT_CALLABLE = 3
    """
)

PAIRS = [
    ("The cat sat on the mat.", "The cat is sitting on the mat."),
    ("Hello world", "Hello world"),
    ("completely different words here", "The quick brown fox jumps over the lazy dog."),
    ("", "A reference that is not empty."),
]


@pytest.fixture
def user_module(tmp_path, monkeypatch) -> str:
    (tmp_path / f"{USER_MODULE}.py").write_text(USER_CODE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, USER_MODULE, raising=False)
    return USER_MODULE


def _batch(completions: list[str], **columns: list) -> RewardBatch:
    return RewardBatch(
        prompts=tuple(f"prompt {i}" for i in range(len(completions))),
        completions=tuple(completions),
        columns={key: tuple(values) for key, values in columns.items()},
    )


def _worker(names_weights: dict[str, float], policy: str = "fail_run", timeout_s: float = 5.0) -> RewardWorker:
    specs = [RewardSpec(name=name, weight=weight) for name, weight in names_weights.items()]
    return RewardWorker(specs, failure_policy=policy, timeout_s=timeout_s)


# Built-ins.


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("chrf", lambda h, r: CHRF(word_order=2).sentence_score(h, r).score / 100),
        ("bleu", lambda h, r: BLEU(effective_order=True).sentence_score(h, r).score / 100),
        ("ter", lambda h, r: max(0.0, 1 - TER().sentence_score(h, r).score / 100)),
    ],
)
def test_sacrebleu_rewards_equal_sacrebleu_sentence_scores(name, expected):
    hyps = [h for h, _ in PAIRS] + ["The cat sat on the mat."]
    refs = [r for _, r in PAIRS] + [["A cat sat on a mat.", "The cat sat on the mat."]]
    got = resolve_reward(name)(prompts=[""] * len(hyps), completions=hyps, reference=refs)
    want = [expected(h, [r] if isinstance(r, str) else r) for h, r in zip(hyps, refs, strict=True)]
    assert got == pytest.approx(want)
    assert got[1] == pytest.approx(1.0)  # identical strings score the maximum


def test_reference_rewards_skip_missing_reference_and_name_a_missing_column():
    assert resolve_reward("chrf")(prompts=["p"], completions=["x"], reference=[None]) == [None]
    with pytest.raises(ValueError, match="'chrf' needs a 'reference' column.*answer"):
        resolve_reward("chrf")(prompts=["p"], completions=["x"], answer=["x"])


@pytest.mark.parametrize(
    ("answer", "completion", "expected"),
    [
        ("1/2", "0.5", 1.0),
        ("1/2", "\\frac{1}{2}", 1.0),
        ("0.5", "The answer is \\boxed{\\frac{1}{2}}", 1.0),
        ("\\frac{1}{2}", "so the result is $1/2$", 1.0),
        ("\\boxed{1/2}", "\\boxed{0.5}", 1.0),
        (42, "The answer is \\boxed{42}", 1.0),
        ("x+1", "\\boxed{1 + x}", 1.0),
        ("1/2", "\\boxed{0.6}", 0.0),
        ("42", "", 0.0),
        (None, "42", None),
    ],
)
def test_math_accepts_equivalent_forms(answer, completion, expected):
    assert BUILTIN_REWARDS["math"](prompts=["p"], completions=[completion], answer=[answer]) == [expected]


def test_exact_match_strips_whitespace_only():
    got = BUILTIN_REWARDS["exact_match"](
        prompts=["p"] * 5, completions=[" 42\n", "42.", "", "x", "7"], answer=[42, "42", "", None, " 7 "]
    )
    assert got == [1.0, 0.0, 1.0, None, 1.0]


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("<think>why</think>\n<answer>42</answer>", 1.0),
        ("  <think>line one\nline two</think><answer>\n42\n</answer>\n", 1.0),
        ("", 0.0),
        ("<answer>42</answer>", 0.0),
        ("<think>why</think>", 0.0),
        ("<think>why</think><answer>42</answer> and more", 0.0),
        ("preamble <think>why</think><answer>42</answer>", 0.0),
    ],
)
def test_format_default_is_think_then_answer(completion, expected):
    assert BUILTIN_REWARDS["format"](prompts=["p"], completions=[completion]) == [expected]


def test_format_reward_takes_a_custom_pattern():
    fn = format_reward(r"Answer: \d+")
    assert fn(prompts=["p"] * 3, completions=["Answer: 12", "Answer: twelve", ""]) == [1.0, 0.0, 0.0]


def test_repetition_penalty_edge_cases():
    texts = ["", "a b", "a b c", "a b c d e", "a b c a b c a b c"]
    got = BUILTIN_REWARDS["repetition"](prompts=[""] * len(texts), completions=texts)
    assert got == pytest.approx([0.0, 0.0, 0.0, 0.0, 3 / 7 - 1])
    assert repetition_reward(n=1)(prompts=[""], completions=["a a a a"]) == [pytest.approx(-0.75)]
    with pytest.raises(ValueError, match="n >= 1"):
        repetition_reward(n=0)


def test_overlong_is_dapo_soft_punishment():
    assert [soft_overlong_penalty(n, 20, 4) for n in (0, 16, 17, 18, 20, 21)] == pytest.approx(
        [0.0, 0.0, -0.25, -0.5, -1.0, -1.0]
    )
    got = BUILTIN_REWARDS["overlong"](
        prompts=[""] * 4,
        completions=[""] * 4,
        completion_token_count=[4, 7, 8, None],
        max_tokens=[8, 8, 8, 8],
    )
    assert got == pytest.approx([0.0, -0.5, -1.0, None])
    assert overlong_reward(10, 5)(prompts=[""], completions=[""], completion_token_count=[8]) == [-0.6]
    with pytest.raises(ValueError, match="cache_len"):
        overlong_reward(4, 8)


# Registry.


def test_unknown_name_lists_the_builtins():
    with pytest.raises(UnknownRewardError) as info:
        resolve_reward("exactmatch")
    for name in BUILTIN_REWARDS:
        assert name in str(info.value)
    assert "module.path:function" in str(info.value)


def test_bad_module_paths_say_what_is_missing(user_module):
    with pytest.raises(UnknownRewardError, match="module 'no_such_pkg.rewards' not found"):
        resolve_reward("no_such_pkg.rewards:fn")
    with pytest.raises(UnknownRewardError, match=f"'{user_module}' has no attribute 'nope'"):
        resolve_reward(f"{user_module}:nope")
    with pytest.raises(UnknownRewardError, match="not a callable"):
        resolve_reward(f"{user_module}:NOT_CALLABLE")


def test_unknown_name_fails_at_worker_start():
    with pytest.raises(UnknownRewardError):
        _worker({"exact_match": 1.0, "nope": 1.0})


# Worker.


def test_trl_style_sync_and_async_user_rewards_run_unchanged(user_module):
    worker = _worker({f"{user_module}:trl_length": 0.5, f"{user_module}:async_match": 2.0, "exact_match": 1.0})
    scores = worker.score(_batch(["42", "7"], answer=["42", "8"]))
    assert scores.components == {
        f"{user_module}:trl_length": (2.0, 1.0),
        f"{user_module}:async_match": (1.0, 0.0),
        "exact_match": (1.0, 0.0),
    }
    assert scores.total == pytest.approx((0.5 * 2 + 2.0 + 1.0, 0.5 * 1))
    assert set(scores.failures.values()) == {0}


def test_total_is_zero_where_no_reward_applies(user_module):
    scores = _worker({f"{user_module}:not_applicable": 1.0, "exact_match": 1.0}).score(
        _batch(["a", "b"], answer=[None, "b"])
    )
    assert scores.total == (0.0, 1.0)


@pytest.mark.parametrize("bad", ["raising", "hanging", "async_hanging", "wrong_length", "not_a_number", "nan"])
@pytest.mark.parametrize(("policy", "fill"), [("zero", 0.0), ("skip_sample", None)])
def test_failure_policies_zero_and_skip_sample(user_module, bad, policy, fill):
    name = f"{user_module}:{bad}"
    worker = _worker({name: 1.0, "exact_match": 2.0}, policy=policy, timeout_s=0.2)
    scores = worker.score(_batch(["a", "b"], answer=["a", "x"]))
    assert scores.components[name] == (fill, fill)
    assert scores.components["exact_match"] == (1.0, 0.0)
    assert scores.total == ((2.0, 0.0) if policy == "zero" else (None, None))
    assert scores.failures == {name: 1, "exact_match": 0}


@pytest.mark.parametrize(
    ("bad", "cause"),
    [("raising", "boom in user reward"), ("hanging", "timeout_s=0.2"), ("wrong_length", "1 values for 2")],
)
def test_fail_run_raises_reward_failure_naming_the_reward(user_module, bad, cause):
    worker = _worker({f"{user_module}:{bad}": 1.0}, policy="fail_run", timeout_s=0.2)
    with pytest.raises(RewardFailure, match=f"{user_module}:{bad}.*{cause}") as info:
        worker.score(_batch(["a", "b"]))
    assert info.value.__cause__ is not None


def test_failure_traceback_is_logged_once_per_reward(user_module, caplog):
    name = f"{user_module}:raising"
    worker = _worker({name: 1.0}, policy="zero")
    with caplog.at_level(logging.ERROR, logger="learner.rewards.worker"):
        first = worker.score(_batch(["a"]))
        second = worker.score(_batch(["b"]))
    assert first.failures == second.failures == {name: 1}
    logged = [r for r in caplog.records if name in r.getMessage()]
    assert len(logged) == 1
    assert logged[0].exc_info is not None and "boom in user reward" in caplog.text


def test_set_specs_swaps_rewards_and_keeps_the_old_set_on_error():
    worker = _worker({"exact_match": 1.0})
    with pytest.raises(UnknownRewardError):
        worker.set_specs([RewardSpec(name="nope")])
    assert set(worker.score(_batch(["a"], answer=["a"])).components) == {"exact_match"}
    worker.set_specs([RewardSpec(name="repetition", weight=2.0)])
    scores = worker.score(_batch(["a b c a b c"]))
    assert set(scores.components) == {"repetition"}
    assert scores.total[0] == pytest.approx(2.0 * (3 / 4 - 1))


def test_worker_rejects_bad_settings_and_batches():
    with pytest.raises(ValueError, match="failure_policy"):
        _worker({"exact_match": 1.0}, policy="ignore")
    with pytest.raises(ValueError, match="repeated: exact_match"):
        RewardWorker([RewardSpec(name="exact_match")] * 2, "zero", 1.0)
    with pytest.raises(ValueError, match="column 'answer' has 1 values for 2"):
        _worker({"exact_match": 1.0}).score(_batch(["a", "b"], answer=["a"]))


def test_empty_batch_scores_nothing():
    scores = _worker({"exact_match": 1.0}).score(_batch([]))
    assert scores.total == () and scores.components == {"exact_match": ()}


def test_score_rows_returns_components_and_total():
    rows = [
        {"prompt": "2+2?", "completion": "\\boxed{4}", "answer": "4"},
        {"prompt": "1/2?", "completion": "0.5", "answer": "1/2", "reference": "0.5"},
    ]
    specs = [RewardSpec(name="math", weight=1.0), RewardSpec(name="chrf", weight=0.5)]
    got = score_rows(specs, rows)
    assert got[0] == {"math": 1.0, "chrf": None, "total": 1.0}
    assert got[1]["math"] == 1.0 and got[1]["chrf"] == pytest.approx(1.0)
    assert math.isclose(got[1]["total"], 1.5)
    with pytest.raises(ValueError, match="row 0 lacks completion"):
        score_rows(specs, [{"prompt": "p"}])


def test_score_refuses_a_reward_set_other_than_the_one_in_force():
    from learner.rewards.worker import RewardSetMismatch

    worker = RewardWorker([RewardSpec(name="exact_match")], "fail_run", 5.0)
    batch = RewardBatch(("p",), ("4",), {"answer": ("4",)})
    assert worker.score(batch, [RewardSpec(name="exact_match")]).total == (1.0,)
    expected = r"holds rewards \['exact_match'\], the caller expects \['repetition'\]"
    with pytest.raises(RewardSetMismatch, match=expected):
        worker.score(batch, [RewardSpec(name="repetition")])
