"""The served-adapter probe's verdicts (rollout/probe.py) and the engine limits read from a model config
(rollout/limits.py): pure logic on hand-made reports; the real engines are in tests/integration/test_probe_engine.py."""

from __future__ import annotations

import pytest
from transformers import Lfm2Config, Qwen3Config

from rollout.limits import head_size, limit_problems
from rollout.probe import StaleAdapterError, base_gap, check_probe
from shared.records import HotLoad, ProbeSet

PROMPTS = ((1, 2, 3), (4, 5))
TOKENS = ((7, 8, 9), (7, 7, 7))
ADAPTER = ((-1.0, -2.0, -0.5), (-0.3, -0.3, -0.3))
BASE_TOKENS = ((7, 8, 6), (5, 7, 7))
BASE = ((-1.5, -2.5, -0.9), (-0.8, -0.9, -1.0))
PROBE = ProbeSet(PROMPTS, TOKENS, ADAPTER, BASE_TOKENS, BASE)


def _report(logprobs, tokens=TOKENS, version: int = 3) -> HotLoad:
    return HotLoad(version, 1.0, tokens, tuple(map(tuple, logprobs)))


def _shift(rows, by: float):
    return [[x + by for x in row] for row in rows]


def test_a_served_adapter_passes_within_tolerance_plus_the_base_gap():
    assert check_probe(PROBE, [_report(ADAPTER)], 0.05) == 0.0
    assert check_probe(PROBE, [_report(_shift(ADAPTER, 0.04))], 0.05) == pytest.approx(0.04)
    with pytest.raises(StaleAdapterError):
        check_probe(PROBE, [_report(_shift(ADAPTER, 0.2))], 0.05)
    # The same offset passes once the start-up check measured it as the engine's numerics on the base model.
    assert check_probe(PROBE, [_report(_shift(ADAPTER, 0.2))], 0.05, base_gap=0.2) == pytest.approx(0.2)


def test_an_engine_serving_the_base_model_is_a_missing_adapter():
    with pytest.raises(StaleAdapterError, match="match the base model without any adapter .* adapter is missing"):
        check_probe(PROBE, [_report(ADAPTER), _report(_shift(BASE, 0.01), tokens=BASE_TOKENS)], 0.05)


def test_an_engine_matching_neither_is_a_stale_or_wrong_adapter():
    other = _shift(ADAPTER, -0.3)
    with pytest.raises(StaleAdapterError, match=r"rollout worker 0 .* neither that version nor the base .* stale"):
        check_probe(PROBE, [_report(other)], 0.05)


def test_a_probe_without_the_base_continuation_still_fails_as_stale():
    bare = ProbeSet(PROMPTS, TOKENS, ADAPTER)
    with pytest.raises(StaleAdapterError, match="matches neither that version, a stale"):
        check_probe(bare, [_report(_shift(BASE, 0.01), tokens=BASE_TOKENS)], 0.05)


def test_base_gap_is_the_largest_difference_over_workers():
    probe = ProbeSet(PROMPTS, TOKENS, BASE)
    assert base_gap(probe, [_report(BASE, version=0), _report(_shift(BASE, 0.125), version=0)]) == 0.125


def _lfm2(**kwargs) -> Lfm2Config:
    return Lfm2Config(hidden_size=64, num_attention_heads=2, num_key_value_heads=1, num_hidden_layers=2, **kwargs)


def test_head_size_outside_the_cpu_backends_list_is_named():
    config = Qwen3Config(hidden_size=64, num_attention_heads=4, head_dim=16)
    assert head_size(config) == 16
    (problem,) = limit_problems("my/model", config, [32, 64, 128])
    assert "model my/model has attention head size 16" in problem and "supports 32, 64, 128" in problem
    assert limit_problems("my/model", config, None) == []  # a GPU engine: the CPU list does not apply
    assert limit_problems("my/model", Qwen3Config(hidden_size=64, num_attention_heads=2, head_dim=32), [32]) == []


def test_an_untied_lfm2_is_refused_and_a_tied_one_passes():
    assert head_size(_lfm2()) == 32
    assert limit_problems("lfm", _lfm2(tie_word_embeddings=True), [32]) == []
    (problem,) = limit_problems("lfm", _lfm2(tie_word_embeddings=False), [32])
    assert "tie_word_embeddings=false" in problem and "ignores lm_head.weight" in problem
