"""The learner's algorithm options on a real peft model (the tiny built-in model, in-process: no Ray, no vLLM).

ProRL reference resets: right after a reset the KL to the reference is zero for the current adapter; later the
reference stays where it was (checked against transformers + peft loading the exported adapters independently);
the optimizer state is fresh only when asked. Also: truncated completions masked out of the loss move nothing,
the entropy bonus raises the entropy, a batch with no samples moves nothing, and several passes and minibatches
reuse old logprobs computed once.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load
from transformers import AutoTokenizer

from learner.learner import Learner
from learner.loss import kl_estimate
from shared.config import load_config
from shared.records import AdapterPayload, TrainBatch, TrainSample

PROBLEMS = [("123+456=", ["579", "578", "589", "5790"]), ("907+15=", ["922", "912", "92", "1022"])]


def _learner(model: Path, *overrides: str) -> Learner:
    c = load_config(overrides=["train.lr=0.05", "algo.is_cap=null", "train.num_threads=1", *overrides])
    return Learner(str(model), lora=c.lora, train=c.train, algo=c.algo, temperature=1.0, max_new_tokens=6)


def _batch(model: Path, advantages=(1.0, -1.0, -0.5, 0.5), truncated: bool = False) -> TrainBatch:
    tok = AutoTokenizer.from_pretrained(model)
    samples = []
    for prompt, answers in PROBLEMS:
        prompt_ids = tuple(tok(prompt)["input_ids"])
        for answer, adv in zip(answers, advantages, strict=True):
            ids = tuple(tok(answer, add_special_tokens=False)["input_ids"]) + (tok.eos_token_id,)
            samples.append(TrainSample(prompt_ids, ids, (0.0,) * len(ids), adv, 0, truncated=truncated))
    return TrainBatch(tuple(samples), step=1)


def _weights(payload: AdapterPayload) -> dict[str, torch.Tensor]:
    return load(dict(payload.files)["adapter_model.safetensors"])


def _peft_token_logprobs(model: Path, payload: AdapterPayload, batch: TrainBatch) -> list[torch.Tensor]:
    """Completion-token logprobs under base + adapter, loaded by plain transformers + peft."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    with tempfile.TemporaryDirectory() as tmp:
        for name, data in payload.files:
            (Path(tmp) / name).write_bytes(data)
        peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model), tmp)
    rows = []
    with torch.no_grad():
        for s in batch.samples:
            ids = torch.tensor([s.prompt_token_ids + s.completion_token_ids])
            logp = torch.log_softmax(peft_model(input_ids=ids).logits[0, :-1].float(), -1)
            per_token = logp.gather(-1, ids[0, 1:, None])[:, 0]
            rows.append(per_token[len(s.prompt_token_ids) - 1 :])
    return rows


def test_reset_makes_kl_zero_and_keeps_the_snapshot(tiny_model):
    learner, batch = _learner(tiny_model), _batch(tiny_model)
    assert learner.train_step(batch).kl == 0.0  # the first reference is the base model = the fresh adapter
    assert learner.train_step(batch).kl > 1e-3
    learner.reset_reference()
    snapshot = learner.export_adapter()
    assert learner.train_step(batch).kl == pytest.approx(0.0, abs=1e-7)  # measured before this step's update

    # The reference did not follow the update: the KL now is the KL to the snapshot, computed independently.
    current = learner.export_adapter()
    now = _peft_token_logprobs(tiny_model, current, batch)
    ref = _peft_token_logprobs(tiny_model, snapshot, batch)
    want = torch.cat([kl_estimate(a, b, "k3") for a, b in zip(now, ref, strict=True)]).mean().item()
    assert want > 1e-3
    assert learner.train_step(batch).kl == pytest.approx(want, rel=1e-3, abs=1e-6)

    # Only the policy adapter trains and is exported; the snapshot is frozen.
    trainable = {n for n, p in learner.model.named_parameters() if p.requires_grad}
    assert trainable and all(".default." in n for n in trainable)
    assert any(".reference." in n for n, _ in learner.model.named_parameters())
    assert not any("reference" in k for k in _weights(current))
    assert {name for name, _ in current.files} == {"adapter_config.json", "adapter_model.safetensors"}
    optimised = {id(p) for g in learner.optimizer.param_groups for p in g["params"]}
    assert optimised == {id(p) for p in learner.model.parameters() if p.requires_grad}


@pytest.mark.parametrize("reset_optimizer", [True, False])
def test_optimizer_state_is_fresh_only_when_asked(tiny_model, reset_optimizer):
    learner, batch = _learner(tiny_model), _batch(tiny_model)
    for _ in range(3):
        learner.train_step(batch)
    before = learner.optimizer
    learner.reset_reference(reset_optimizer=reset_optimizer)
    if reset_optimizer:
        assert learner.optimizer is not before and len(learner.optimizer.state) == 0
    else:
        assert learner.optimizer is before
    learner.train_step(batch)
    steps = {float(s["step"]) for s in learner.optimizer.state.values()}
    assert steps == ({1.0} if reset_optimizer else {4.0})


def test_masked_truncated_completions_move_nothing(tiny_model):
    masked = _learner(tiny_model, "algo.mask_truncated=true")
    before = _weights(masked.export_adapter())
    stats = masked.train_step(_batch(tiny_model, truncated=True))
    after = _weights(masked.export_adapter())
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert stats.entropy == 0.0  # no token left to measure

    unmasked = _learner(tiny_model)
    before = _weights(unmasked.export_adapter())
    unmasked.train_step(_batch(tiny_model, truncated=True))
    after = _weights(unmasked.export_adapter())
    assert not all(torch.equal(before[k], after[k]) for k in before)


def test_a_batch_with_nothing_to_train_on_moves_nothing_and_counts_a_version(tiny_model):
    learner = _learner(tiny_model)
    before = _weights(learner.export_adapter())
    stats = learner.train_step(TrainBatch((), step=1))  # e.g. every reward failed under failure_policy=skip_sample
    assert (stats.optimizer_steps, stats.skipped_nonfinite, learner.version) == (0, 0, 1)
    after = _weights(learner.export_adapter())
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert learner.train_step(_batch(tiny_model)).optimizer_steps == 1


def test_entropy_bonus_raises_entropy(tiny_model):
    batch = _batch(tiny_model, advantages=(0.0, 0.0, 0.0, 0.0))
    plain = _learner(tiny_model)
    start = _weights(plain.export_adapter())
    plain.train_step(batch)
    assert all(torch.equal(start[k], v) for k, v in _weights(plain.export_adapter()).items())  # no signal, no move

    bonus = _learner(tiny_model, "algo.entropy_coef=0.5", "train.lr=0.01")
    entropies = [bonus.train_step(batch).entropy for _ in range(3)]
    assert entropies[0] < entropies[1] < entropies[2]


@pytest.mark.parametrize(("epochs", "minibatches"), [(1, 1), (2, 1), (2, 4)])
def test_passes_and_minibatches_reuse_old_logprobs(tiny_model, epochs, minibatches, monkeypatch):
    learner = _learner(tiny_model, f"train.epochs={epochs}", f"train.minibatches={minibatches}")
    calls = []
    original = learner._logprobs_no_grad
    monkeypatch.setattr(learner, "_logprobs_no_grad", lambda samples: calls.append(len(samples)) or original(samples))
    batch = _batch(tiny_model)
    stats = learner.train_step(batch)
    assert stats.optimizer_steps == epochs * minibatches
    single = epochs == minibatches == 1
    # The reference always, and the old policy once per batch (not per pass) when there is more than one step.
    assert calls == [len(batch.samples)] * (1 if single else 2)
    # Later optimiser steps see ratios away from 1 only because old logprobs stayed fixed.
    assert (stats.clip_frac == 0.0) if single else (stats.clip_frac > 0.0)


def test_kl_is_measured_unless_turned_off_and_the_update_is_the_same(tiny_model):
    """algo.log_kl=false with kl_coef 0 skips the reference pass: kl is None and the adapter moves exactly as with
    the KL measured (the KL is not in the loss)."""
    measured, skipped = _learner(tiny_model), _learner(tiny_model, "algo.log_kl=false")
    batch = _batch(tiny_model)
    stats_on, stats_off = measured.train_step(batch), skipped.train_step(batch)
    assert stats_on.kl is not None and stats_off.kl is None
    on, off = _weights(measured.export_adapter()), _weights(skipped.export_adapter())
    assert on.keys() == off.keys() and all(torch.equal(on[k], off[k]) for k in on)
