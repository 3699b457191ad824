"""The built-in toy translation task: deterministic, disjoint splits; rows the built-in tokenizer reads back exactly;
the word-order rules; and the held-out metric."""

from __future__ import annotations

import pytest
from sacrebleu.metrics import BLEU, CHRF

from launch.basemodel import build_tokenizer
from shared.metrics import reference_metrics
from shared.tasks import get_task, translation


def test_splits_are_deterministic_and_depend_on_the_seed():
    task = get_task("translate")
    assert task.train_rows(50, 3) == task.train_rows(50, 3)
    assert task.heldout_rows(50, 3) == task.heldout_rows(50, 3)
    assert task.train_rows(50, 3) != task.train_rows(50, 4)
    assert translation.lexicon(0) == translation.lexicon(0) != translation.lexicon(1)


def test_train_heldout_and_warmup_are_disjoint_whatever_the_seeds():
    task = get_task("translate")
    train = {r["source"] for seed in (0, 1) for r in task.train_rows(3000, seed)}
    heldout = {r["source"] for seed in (0, 1) for r in task.heldout_rows(300, seed)}
    assert len(heldout) > 300 and not train & heldout
    warmup_sentences = {r["answer"] for r in task.warmup_rows(2000, 7)} | {
        r["prompt"][2:].removesuffix("\nT:") for r in task.warmup_rows(2000, 7)
    }
    assert not warmup_sentences & heldout
    assert len({r["source"] for r in task.train_rows(3000, 0)}) == 3000  # no repeats within a split


def test_rows_fit_the_tokenizer_and_the_completion_budget():
    task = get_task("translate")
    rows = task.train_rows(2000, 0) + task.heldout_rows(200, 0) + task.warmup_rows(2000, 0)
    tokenizer = build_tokenizer()
    texts = [r["prompt"] + r["answer"] for r in rows[::50]]
    assert all(tokenizer.decode(tokenizer(t).input_ids) == t for t in texts)
    assert max(len(tokenizer(r["answer"]).input_ids) for r in rows) < task.max_new_tokens  # + EOS fits
    for row in task.train_rows(20, 0):
        assert row["prompt"] == f"S:{row['source']}\nT:"
        assert row["answer"] == row["reference"]
        assert task.back_translation_prompt(" " + row["reference"] + " ") == f"T:{row['reference']}\nS:"


def test_target_follows_the_word_order_rules():
    lex = translation.lexicon()
    # subject "adj noun", verb, object "noun" -> target "noun adj noun+n verb"
    sentence = (2, 5, 3, 7, -1)
    source = translation.source_sentence(sentence, lex)
    target = translation.target_sentence(sentence, lex)
    assert source.split() == [lex.source_adjectives[5], lex.source_nouns[2], lex.source_verbs[3], lex.source_nouns[7]]
    assert target.split() == [
        lex.target_nouns[2],
        lex.target_adjectives[5],
        lex.target_nouns[7] + "n",
        lex.target_verbs[3],
    ]
    words = [*lex.source_nouns, *lex.source_verbs, *lex.source_adjectives]
    words += [*lex.target_nouns, *lex.target_verbs, *lex.target_adjectives]
    assert len(set(words)) == len(words)


def test_heldout_metrics_are_corpus_chrf_plus_plus_and_bleu_against_the_reference():
    rows = get_task("translate").heldout_rows(5, 0)
    hyps = [rows[0]["reference"], "", rows[2]["reference"][:5], "vag", rows[4]["reference"]]
    refs = [[r["reference"] for r in rows]]
    want = {
        "chrf": pytest.approx(CHRF(word_order=2).corpus_score(hyps, refs).score),
        "bleu": pytest.approx(BLEU().corpus_score(hyps, refs).score),
    }
    assert reference_metrics([f" {h}\n" for h in hyps], rows) == want
    assert reference_metrics([r["reference"] for r in rows], rows) == {"chrf": 100.0, "bleu": pytest.approx(100.0)}


def test_rows_without_a_reference_everywhere_get_no_reference_metrics():
    assert reference_metrics(["46"], get_task("arith").heldout_rows(1, 0)) == {}
    assert reference_metrics(["a", "b"], [{"reference": "a"}, {"reference": None}]) == {}
