"""ROUGE rewards: scores equal the `rouge-score` package's given the same tokens (English and Korean), the auto
tokenizer splits Hangul into syllables (where rouge-score's default tokenizer scores Korean 0), and hand-computed
cases."""

from __future__ import annotations

import pytest
from rouge_score import rouge_scorer

from learner.rewards import RewardContext, resolve_reward, score_rows
from learner.rewards.rouge import auto_tokens, character_tokens, rouge_reward, whitespace_tokens
from shared.config import RewardSpec, RougeConfig

PAIRS = [
    ("the cat sat on the mat", "the cat is on the mat"),
    ("a b c d e", "e d c b a"),
    ("The Quick, brown fox!", "quick brown foxes"),
    ("nothing in common", "totally different words"),
    ("서울은 한국의 수도이다", "한국의 수도는 서울이다"),
    ("철수가 밥을 먹었다", "철수는 밥을 먹는다"),
    ("맞춤법에 맞는 문장은 다음과 같다", "맞춤법에 맞는 문장은 다음과 같다"),
    ("GPU 메모리가 부족하다", "gpu 메모리 부족"),
]


class _Tokens:
    """rouge-score's tokenizer interface around one of ours."""

    def __init__(self, fn):
        self.tokenize = fn


@pytest.mark.parametrize("tokenize", [auto_tokens, whitespace_tokens, character_tokens])
@pytest.mark.parametrize("kind", ["rouge1", "rouge2", "rougeL"])
def test_scores_equal_rouge_score_on_the_same_tokens(kind, tokenize):
    name = {auto_tokens: "auto", whitespace_tokens: "whitespace", character_tokens: "character"}[tokenize]
    scorer = rouge_scorer.RougeScorer([kind], tokenizer=_Tokens(tokenize))
    for measure, attr in (("f1", "fmeasure"), ("precision", "precision"), ("recall", "recall")):
        reward = rouge_reward(kind, RougeConfig(tokenizer=name, measure=measure))
        got = reward([""] * len(PAIRS), [c for c, _ in PAIRS], reference=[r for _, r in PAIRS])
        expected = [getattr(scorer.score(r, c)[kind], attr) for c, r in PAIRS]  # rouge-score: (target, prediction)
        assert got == pytest.approx(expected, abs=1e-12), (kind, name, measure)


def test_auto_tokenizer_splits_hangul_into_syllables_and_keeps_latin_words():
    assert auto_tokens("서울은 크다") == ["서", "울", "은", "크", "다"]
    assert auto_tokens("GPU 메모리가, 부족하다!") == ["gpu", "메", "모", "리", "가", "부", "족", "하", "다"]
    assert auto_tokens("Hello, World") == whitespace_tokens("Hello, World") == ["hello", "world"]
    assert auto_tokens("abc서울def") == ["abc", "서", "울", "def"]


def test_korean_scores_are_not_zero_where_rouge_score_default_is():
    completion, reference = "서울은 한국의 수도이다", "한국의 수도는 서울이다"
    default = rouge_scorer.RougeScorer(["rouge1"]).score(reference, completion)["rouge1"].fmeasure
    assert default == 0.0  # the bug the auto tokenizer avoids
    (value,) = resolve_reward("rouge1")([""], [completion], reference=[reference])
    # Hand count: syllables 서울은한국의수도이다 vs 한국의수도는서울이다: 10 and 10 tokens, 9 shared (all but 은/는).
    assert value == pytest.approx(0.9)


def test_hand_computed_rouge2_and_rougel():
    # tokens: a b c d / a b d c ; bigrams ab bc cd / ab bd dc: 1 shared of 3 -> F1 1/3; LCS a b c (or a b d) = 3 of 4
    r2 = rouge_reward("rouge2", RougeConfig(tokenizer="whitespace"))
    rl = rouge_reward("rougeL", RougeConfig(tokenizer="whitespace"))
    assert r2([""], ["a b c d"], reference=["a b d c"]) == [pytest.approx(1 / 3)]
    assert rl([""], ["a b c d"], reference=["a b d c"]) == [pytest.approx(0.75)]


def test_best_reference_none_and_empty():
    reward = resolve_reward("rouge1")
    values = reward(["", "", ""], ["a b", "a b", ""], reference=[["x y", "a b"], None, "a"])
    assert values == [1.0, None, 0.0]


def test_settings_come_from_the_context_and_the_tokenizer_is_logged_once(capsys, monkeypatch):
    import learner.rewards.rouge

    monkeypatch.setattr(learner.rewards.rouge, "_announced", set())  # earlier tests announced theirs
    rows = [{"prompt": "", "completion": "ab cd", "reference": "ab"}] * 2
    specs = [RewardSpec(name="rouge1")]
    by_word = score_rows(specs, rows, context=RewardContext(rouge=RougeConfig(tokenizer="whitespace")))
    by_char = score_rows(specs, rows, context=RewardContext(rouge=RougeConfig(tokenizer="character")))
    assert by_word[0]["rouge1"] == pytest.approx(2 / 3)  # ab matches, cd does not: P 1/2, R 1
    assert by_char[0]["rouge1"] == pytest.approx(2 * (2 / 4) * 1 / (2 / 4 + 1))
    score_rows(specs, rows, context=RewardContext(rouge=RougeConfig(tokenizer="character")))
    err = capsys.readouterr().err
    assert err.count("rouge1: tokenizer characters") == 1 and err.count("rouge1: tokenizer whitespace words") == 1


def test_model_tokenizer(tmp_path):
    from tests.tiny_encoders import build_tokenizer

    build_tokenizer().save_pretrained(tmp_path)
    reward = rouge_reward("rouge1", RougeConfig(tokenizer="model", tokenizer_path=str(tmp_path)))
    (same,) = reward([""], ["the cat sat"], reference=["the cat sat"])
    (part,) = reward([""], ["the cat"], reference=["the cat sat"])
    assert same == 1.0 and 0 < part < 1
