"""The korean_qa preset scores its sample file through the real `prolora score` (BERTScore in its Ray actor on a
tiny encoder the test builds): every row gets every component, the total is their weighted sum, the answer-shape
and exact-match rewards say what the rows were written to show, and ROUGE-1 and BERTScore equal independent
computations."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from rouge_score import rouge_scorer

from learner.rewards.bertscore import BertScorer
from learner.rewards.rouge import auto_tokens
from tests.tiny_encoders import build_encoder

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "launch" / "configs" / "korean_qa_sample.jsonl"
FORMAT, EM = "learner.rewards.korean_qa:answer_format", "learner.rewards.korean_qa:answer_exact_match"


@pytest.mark.slow  # a Ray instance and an actor start in the subprocess
def test_prolora_score_runs_the_korean_qa_recipe(tmp_path, tiny_model):
    encoder = build_encoder(tmp_path / "encoder")
    proc = subprocess.run(
        [sys.executable, "-m", "launch.cli", "score", "korean_qa", "--input", str(SAMPLE)]
        # the user rewards get completion_ids, so the run's tokenizer loads: the tests' small build of the default
        + ["--set", f"rewards.bertscore.model={encoder}", "--set", f"model.path={tiny_model}"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rouge1: tokenizer auto" in proc.stderr
    rows = [json.loads(line) for line in SAMPLE.read_text().splitlines()]
    out = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [o["line"] for o in out] == list(range(1, 51)) and len(rows) == 50

    weights = {
        f["name"]: f["weight"]
        for f in yaml.safe_load((ROOT / "launch/configs/korean_qa.yaml").read_text())["rewards"]["functions"]
    }
    for o in out:
        assert o["total"] == pytest.approx(sum(w * o[name] for name, w in weights.items()))

    good, bad = out[0::2], out[1::2]
    assert all(o[FORMAT] == 1.0 and o[EM] == 1.0 for o in good)
    assert [(o[FORMAT], o[EM]) for o in bad[0::4]] == [(1.0, 0.0)] * 7  # the wrong sentence, in the right shape
    assert [(o[FORMAT], o[EM]) for o in bad[1::4]] == [(0.0, 0.0)] * 6  # the bare sentence: no answer shape
    assert all(o[FORMAT] == 1.0 and o[EM] == 1.0 for o in bad[2::4] + bad[3::4])  # empty / padded reasons

    scorer = rouge_scorer.RougeScorer(["rouge1"], tokenizer=type("T", (), {"tokenize": staticmethod(auto_tokens)})())
    expected = [scorer.score(r["reference"], r["completion"])["rouge1"].fmeasure for r in rows]
    assert [o["rouge1"] for o in out] == pytest.approx(expected)
    assert min(expected) > 0.2  # Hangul syllables overlap; rouge-score's own tokenizer would give 0 here

    bert = BertScorer(str(encoder)).score([r["completion"] for r in rows], [[r["reference"]] for r in rows])
    assert [o["bertscore"] for o in out] == pytest.approx(bert, abs=1e-5)


def test_the_recipe_refuses_to_start_without_an_encoder():
    proc = subprocess.run(
        [sys.executable, "-m", "launch.cli", "score", "korean_qa", "--input", str(SAMPLE)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 2
    assert "rewards.bertscore.model" in proc.stderr
