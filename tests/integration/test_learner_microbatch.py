"""The learner's memory-bounded path on a real peft model: a tiny random Qwen2 built here (head_dim 32, a
1,000-token vocabulary), in-process, float32.

Micro-batching by a token budget accumulates exactly the unsplit minibatch's gradient, loss and stats for every
loss_agg (KL in the loss, entropy bonus, truncation masking on), and the whole update (several minibatches and
passes) lands on the same adapter. The completion-only chunked logprobs equal log_softmax on the model's full
logits, with gradient checkpointing on too. A bfloat16 base keeps float32 LoRA weights and optimizer state.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from learner.learner import Learner
from shared.config import load_config
from shared.records import TrainSample

VOCAB = 1000  # the qwen2_path fixture's (tests/conftest.py)


def _samples(n: int = 8) -> tuple[TrainSample, ...]:
    g = torch.Generator().manual_seed(1)
    rows = []
    for i in range(n):
        p, c = int(torch.randint(2, 9, (1,), generator=g)), int(torch.randint(1, 11, (1,), generator=g))
        prompt = tuple(torch.randint(0, VOCAB, (p,), generator=g).tolist())
        completion = tuple(torch.randint(0, VOCAB, (c,), generator=g).tolist())
        sampling = tuple((-torch.rand(c, generator=g) * 8).tolist())
        rows.append(
            TrainSample(
                prompt, completion, sampling, advantage=float(i % 3) - 1.0, adapter_version=0, truncated=i % 4 == 3
            )
        )
    return tuple(rows)


def _learner(path: Path, *overrides: str, dtype: str = "float32") -> Learner:
    c = load_config(
        overrides=[
            "train.num_threads=1",
            "train.max_grad_norm=1000",
            "algo.kl_coef=0.1",
            "algo.entropy_coef=0.05",
            "algo.mask_truncated=true",
            "algo.is_cap=2.0",
            "lora.rank=4",
            *overrides,
        ]
    )
    learner = Learner(
        str(path), lora=c.lora, train=c.train, algo=c.algo, temperature=0.8, max_new_tokens=10, dtype=dtype
    )
    torch.manual_seed(2)
    with torch.no_grad():  # a LoRA B of zeros makes the policy the reference: move off it so the KL is not 0
        for name, p in learner.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return learner


def _grads(learner: Learner, samples, ref) -> tuple[float, object, dict[str, torch.Tensor]]:
    learner.model.zero_grad(set_to_none=True)
    learner.model.train()
    loss, stats = learner._accumulate(list(samples), None, ref, torch.arange(len(samples)))
    learner.model.eval()
    grads = {n: p.grad.clone() for n, p in learner.model.named_parameters() if p.requires_grad}
    return loss.item(), stats, grads


@pytest.mark.parametrize("loss_agg", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"])
def test_micro_batches_accumulate_the_unsplit_gradient(qwen2_path, loss_agg):
    samples = _samples()
    whole = _learner(qwen2_path, f"algo.loss_agg={loss_agg}", "train.micro_batch_tokens=100000")
    split = _learner(
        qwen2_path, f"algo.loss_agg={loss_agg}", "train.micro_batch_tokens=24", "train.logits_chunk_tokens=5"
    )
    with whole._reference_policy():
        ref = whole._logprobs_no_grad(samples)
    with split._reference_policy():
        ref_split = split._logprobs_no_grad(samples)
    for a, b in zip(ref, ref_split, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)

    loss_w, stats_w, grads_w = _grads(whole, samples, ref)
    loss_s, stats_s, grads_s = _grads(split, samples, ref)
    assert stats_s.tokens == stats_w.tokens == sum(len(s.completion_token_ids) for s in samples if not s.truncated)
    assert loss_s == pytest.approx(loss_w, rel=1e-5, abs=1e-6)
    for name in ("kl", "entropy", "clip_frac", "is_ratio_mean", "is_ratio_max", "mismatch_kl"):
        assert getattr(stats_s, name) == pytest.approx(getattr(stats_w, name), rel=1e-5, abs=1e-6), name
    assert stats_w.kl > 1e-4 and grads_w.keys() == grads_s.keys()
    assert max(g.abs().max() for g in grads_w.values()) > 1e-4
    for name, g in grads_w.items():
        torch.testing.assert_close(grads_s[name], g, rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.parametrize("loss_agg", ["token_mean", "seq_mean_token_sum_norm"])
def test_the_update_is_the_same_split_or_not(qwen2_path, loss_agg):
    """Several minibatches and two passes (old logprobs computed once, micro-batched): the same adapter."""
    common = (f"algo.loss_agg={loss_agg}", "train.minibatches=2", "train.epochs=2", "train.lr=0.01")
    whole = _learner(qwen2_path, *common, "train.micro_batch_tokens=100000")
    split = _learner(qwen2_path, *common, "train.micro_batch_tokens=24", "train.logits_chunk_tokens=3")
    from shared.records import TrainBatch

    stats_w, stats_s = whole.train_step(TrainBatch(_samples(), 1)), split.train_step(TrainBatch(_samples(), 1))
    assert stats_w.optimizer_steps == stats_s.optimizer_steps == 4
    assert stats_s.loss == pytest.approx(stats_w.loss, rel=1e-5, abs=1e-6)
    assert stats_s.clip_frac == pytest.approx(stats_w.clip_frac, abs=1e-6)
    moved = False
    trained_w = dict(whole.model.named_parameters())
    for name, p in split.model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p, trained_w[name], rtol=1e-5, atol=1e-5, msg=name)
    start = _learner(qwen2_path)
    for name, p in start.model.named_parameters():
        moved |= p.requires_grad and not torch.allclose(p, trained_w[name])
    assert moved


@pytest.mark.parametrize("checkpointing", [False, True])
def test_completion_logprobs_equal_log_softmax_of_full_logits(qwen2_path, checkpointing):
    samples = _samples(5)
    learner = _learner(
        qwen2_path,
        f"train.gradient_checkpointing={str(checkpointing).lower()}",
        "train.micro_batch_tokens=16",
        "train.logits_chunk_tokens=4",
    )
    got = learner.completion_logprobs(
        [s.prompt_token_ids for s in samples], [s.completion_token_ids for s in samples], temperature=0.8
    )
    with torch.no_grad():
        for s, row in zip(samples, got, strict=True):
            ids = torch.tensor([s.prompt_token_ids + s.completion_token_ids])
            logp_LV = torch.log_softmax(learner.model(input_ids=ids).logits[0, :-1].float() / 0.8, dim=-1)
            want = logp_LV.gather(-1, ids[0, 1:, None])[len(s.prompt_token_ids) - 1 :, 0]
            torch.testing.assert_close(torch.tensor(row), want, rtol=1e-5, atol=1e-5)
    if checkpointing:  # checkpointing changes memory, not the gradient
        plain = _learner(qwen2_path, "train.micro_batch_tokens=16")
        with plain._reference_policy():
            ref = plain._logprobs_no_grad(samples)
        _, _, want = _grads(plain, samples, ref)
        _, _, grads = _grads(learner, samples, ref)
        for name, g in want.items():
            torch.testing.assert_close(grads[name], g, rtol=1e-5, atol=1e-5, msg=name)


def test_a_bfloat16_base_trains_float32_lora(qwen2_path):
    from shared.records import TrainBatch

    learner = _learner(qwen2_path, dtype="bfloat16")
    assert learner.device() == "cpu"
    assert learner.model.get_base_model().get_output_embeddings().weight.dtype == torch.bfloat16
    trainable = [p for p in learner.model.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    stats = learner.train_step(TrainBatch(_samples(), 1))
    assert stats.optimizer_steps == 1
    assert all(s["exp_avg"].dtype == torch.float32 for s in learner.optimizer.state.values())


@pytest.mark.gpu
def test_the_learner_trains_on_the_gpu(qwen2_path):
    from shared.records import TrainBatch

    learner = _learner(qwen2_path, "train.device=auto", dtype="bfloat16")
    assert learner.device().startswith("cuda")
    assert all(p.is_cuda for p in learner.model.parameters())
    stats = learner.train_step(TrainBatch(_samples(), 1))
    assert stats.optimizer_steps == 1 and stats.skipped_nonfinite == 0
