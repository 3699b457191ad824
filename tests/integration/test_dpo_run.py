"""DPO on the real learner (tiny built-in model, peft, in-process) and through the real `prolora train` (Ray, vLLM).

The learner: the first update starts from the reference (LoRA B = 0, so every log-ratio is 0 and the sigmoid loss is
log 2, IPO's 1/(2 beta)^2); only LoRA weights move; micro-batching gives the same update as one pass; a few steps
raise the chosen completion's implicit reward above the rejected one's. The command: a short DPO run on a preference
file writes step and eval records, adapters and a checkpoint, and resumes.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from learner.dpo import pair_micro_batches
from learner.learner import Learner
from shared.config import load_config
from shared.records import PreferenceBatch, PreferencePair

PAIRS = [("123+456=", "579", "479"), ("907+15=", "922", "822"), ("250+250=", "500", "400")]


def _learner(model: Path, *overrides: str) -> Learner:
    sets = ["train.lr=0.02", "train.num_threads=1", "algo.objective=dpo", "task.train_file=unused.jsonl", *overrides]
    c = load_config(overrides=sets)
    return Learner(str(model), lora=c.lora, train=c.train, algo=c.algo, temperature=0.7, max_new_tokens=6)


def _batch(model: Path) -> PreferenceBatch:
    tok = AutoTokenizer.from_pretrained(model)

    def ids(text: str) -> tuple[int, ...]:
        return (*tok(text, add_special_tokens=False)["input_ids"], tok.eos_token_id)

    pairs = [PreferencePair(tuple(tok(p)["input_ids"]), ids(c), ids(r)) for p, c, r in PAIRS]
    return PreferenceBatch(tuple(pairs), step=1)


def _params(learner: Learner) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in learner.model.named_parameters()}


@pytest.mark.parametrize("kind, first_loss", [("sigmoid", math.log(2)), ("ipo", (1 / (2 * 0.1)) ** 2)])
def test_first_update_starts_at_the_reference_and_moves_only_lora(tiny_model, kind, first_loss):
    learner = _learner(tiny_model, f"algo.dpo_loss={kind}")
    before = _params(learner)
    stats = learner.train_pairs(_batch(tiny_model))
    assert stats.loss == pytest.approx(first_loss, rel=1e-5)
    assert stats.chosen_reward == pytest.approx(0.0, abs=1e-5) and stats.optimizer_steps == 1
    assert learner.version == 1
    after = _params(learner)
    moved = {name for name in before if not torch.equal(before[name], after[name])}
    assert moved and all("lora_" in name for name in moved)
    assert all("lora_" in name for name, p in learner.model.named_parameters() if p.requires_grad)


def test_micro_batches_accumulate_the_unsplit_gradient(tiny_model):
    whole, split = _learner(tiny_model), _learner(tiny_model, "train.micro_batch_tokens=20")
    batch = _batch(tiny_model)
    assert len(pair_micro_batches(batch.pairs, split._train.micro_batch_tokens)) == 3  # one pair per micro-batch
    a, b = whole.train_pairs(batch), split.train_pairs(batch)
    assert a.loss == pytest.approx(b.loss, rel=1e-5) and a.grad_norm == pytest.approx(b.grad_norm, rel=1e-4)
    # The gradients are still there after the step (Adam's first step is about lr * sign(g), too coarse to compare).
    for (name, p), (_, q) in zip(whole.model.named_parameters(), split.model.named_parameters(), strict=True):
        if p.requires_grad:
            assert p.grad is not None and q.grad is not None
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-7, msg=name)


def test_steps_raise_the_preference_margin(tiny_model):
    learner = _learner(tiny_model, "algo.dpo_beta=0.5")
    batch = _batch(tiny_model)
    first = learner.train_pairs(batch)
    for _ in range(4):
        last = learner.train_pairs(batch)
    assert last.pref_margin > first.pref_margin + 0.1 and last.pref_accuracy == 1.0
    assert last.loss < first.loss


def _prolora(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launch.cli", *args], capture_output=True, text=True, timeout=timeout)


def test_short_dpo_run_through_prolora_train(tiny_model, tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": p, "chosen": c, "rejected": r}) + "\n" for p, c, r in PAIRS))
    run_dir = tmp_path / "r"
    sets = [
        f"model.path={tiny_model}",
        "algo.objective=dpo",
        f"task.train_file={pairs}",
        "rollout.prompts_per_step=2",
        "eval.size=8",
        "eval.n_samples=8",
        "run.checkpoint_every=1",
    ]
    args = [a for s in sets for a in ("--set", s)]
    proc = _prolora("train", "--steps", "2", "--run-dir", str(run_dir), *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if not r.get("eval")]
    evals = [r for r in records if r.get("eval")]
    assert [r["step"] for r in steps] == [1, 2]
    assert all(r["objective"] == "dpo" and r["pairs"] == 2 and r["optimizer_steps"] == 1 for r in steps)
    assert steps[0]["loss"] == pytest.approx(math.log(2), rel=1e-4)
    assert [r["step"] for r in evals] == [0, 2] and all("pass@8" in r for r in evals)
    assert (run_dir / "adapters" / "final" / "adapter_model.safetensors").is_file()
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir())[-1].endswith("2")

    more = _prolora("train", "--resume", str(run_dir), "--steps", "3", *args)
    assert more.returncode == 0, more.stderr[-3000:]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if not r.get("eval")] == [1, 2, 3]
