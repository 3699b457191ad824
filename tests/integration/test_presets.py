"""Each packaged preset runs two steps through the real `prolora train <preset>` (real Ray, vLLM and peft).

Sizes are cut to the minimum, and every run shares the session's quick model. That model cannot add yet, so
exact_match alone would give all-equal rewards; the built-in `overlong` reward with a 5-token budget penalises the
5-token completions, which gives groups reward variance and the learner a gradient.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.slow  # whole training runs (or a Ray cluster) per test

PRESETS = ["grpo", "dr_grpo", "dapo", "prorl"]
PROMPTS, GROUP = 2, 4
METRICS = {
    "kl",
    "entropy",
    "clip_frac_low",
    "clip_frac_high",
    "zero_std_frac",
    "is_ratio_mean",
    "is_ratio_max",
    "mismatch_kl",
    "ref_reset",
    "ref_reset_cause",
    "sample_rounds",
    "train_groups",
    "dropped_frac",
    "overlong_penalty_mean",
    "truncated_frac",
}
EXTRA = {"prorl": ["reference.reset_every=1"]}


def _train(preset: str, model, run_dir) -> subprocess.CompletedProcess:
    overrides = [
        f"model.path={model}",
        "eval.size=4",
        "eval.k=2",
        "eval.n_samples=2",
        f"rollout.prompts_per_step={PROMPTS}",
        f"rollout.group_size={GROUP}",
        "rollout.max_new_tokens=5",
        "task.train_size=64",
        "log.save_adapter_every=0",
        "train.lr=0.02",
        "algo.max_refill_rounds=1",
        "rewards.functions=[{name: exact_match}, {name: overlong}]",
        *EXTRA.get(preset, []),
    ]
    args = ["train", preset, "--steps", "2", "--run-dir", str(run_dir)]
    for o in overrides:
        args += ["--set", o]
    return subprocess.run([sys.executable, "-m", "launch.cli", *args], capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_trains_through_the_cli(preset, tiny_model, tmp_path):
    run_dir = tmp_path / preset
    proc = _train(preset, tiny_model, run_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"name: {preset}" in (run_dir / "config.yaml").read_text()  # the bare name found the packaged file

    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if not r.get("eval")]
    assert [r["step"] for r in steps] == [1, 2]
    for r in steps:
        assert METRICS <= r.keys()
        for key in METRICS - {"ref_reset", "ref_reset_cause"}:
            assert r[key] is not None and math.isfinite(r[key]), key
        assert 0.0 <= r["clip_frac_low"] <= 1 and 0.0 <= r["clip_frac_high"] <= 1
        assert r["is_ratio_max"] <= 2.0 + 1e-6  # every preset caps the sampler-mismatch weight at 2

    # Every generated group is in the rollouts file and in the pass-rate history, trained or not.
    generated = Counter(pq.read_table(run_dir / "rollouts").column("step").to_pylist())
    history = [json.loads(line) for line in (run_dir / "prompt_history.jsonl").read_text().splitlines()]
    visits = Counter(v["step"] for v in history)
    for r in steps:
        groups = generated[r["step"]] // GROUP
        assert visits[r["step"]] == groups
        assert r["train_groups"] == round(groups * (1 - r["dropped_frac"]))
        assert all(v["samples"] == GROUP and 0 <= v["passes"] <= GROUP for v in history)

    dynamic = preset in ("dapo", "prorl")
    for r in steps:
        if dynamic:
            assert 1 <= r["sample_rounds"] <= 2 and r["train_groups"] <= PROMPTS
        else:
            assert r["sample_rounds"] == 1 and r["dropped_frac"] == 0 and r["train_groups"] == PROMPTS

    if preset == "prorl":
        # Reset after every step: step 2 measures its policy against the snapshot taken right after step 1.
        assert [(r["ref_reset"], r["ref_reset_cause"]) for r in steps] == [(True, "schedule")] * 2
        assert steps[1]["kl"] == pytest.approx(0.0, abs=1e-7)
        assert (run_dir / "adapters" / "reference" / "VERSION").read_text().strip() == "2"
    else:
        assert [(r["ref_reset"], r["ref_reset_cause"]) for r in steps] == [(False, None)] * 2
        if steps[0]["grad_norm"] > 0:
            assert steps[1]["kl"] > 0  # the reference stays the base model
        assert not (run_dir / "adapters" / "reference").exists()
    if preset == "dapo":
        assert all(r["overlong_penalty_mean"] <= 0 for r in steps)


def test_korean_english_preset_runs_on_a_tiny_lfm2(real_models, tmp_path):
    """The seed's experiment (translate_ko_en.yaml: LFM2 by default, chrF++ and BLEU, ProRL resets, one GPU) runs two
    steps through the CLI on CPU with a tiny random LFM2 in place of LFM2-1.2B; only sizes and devices are
    overridden, the data files are the preset's own."""
    run_dir = tmp_path / "ko_en"
    overrides = [
        f"model.path={real_models['lfm2']}",
        "model.dtype=float32",
        "model.max_model_len=256",  # the tiny byte-level tokenizer spends about 3 tokens per Hangul syllable
        "rollout.num_gpus=0",
        "train.num_gpus=0",
        "rollout.kv_cache_gib=1",
        f"rollout.prompts_per_step={PROMPTS}",
        f"rollout.group_size={GROUP}",
        "rollout.max_new_tokens=8",
        "algo.max_refill_rounds=1",
        "reference.reset_every=1",
        "eval.size=4",
        "eval.k=2",
        "eval.n_samples=2",
        "log.save_adapter_every=0",
        # The optional third reward: the back-translation goes through the chat template with the preset's prompt.
        "rewards.functions=[{name: chrf, weight: 0.6}, {name: bleu, weight: 0.2}, "
        "{name: cycle_consistency, weight: 0.2}]",
    ]
    args = ["train", "translate_ko_en", "--steps", "2", "--run-dir", str(run_dir)]
    for o in overrides:
        args += ["--set", o]
    repo = Path(__file__).resolve().parents[2]  # the preset names its data files relative to the repository root
    proc = subprocess.run(
        [sys.executable, "-m", "launch.cli", *args], capture_output=True, text=True, timeout=900, cwd=repo
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    first_eval = next(r for r in records if r.get("eval"))
    assert {"chrf", "bleu"} <= first_eval.keys() and first_eval["engine_base_gap"] < 0.01
    steps = [r for r in records if not r.get("eval")]
    assert [r["step"] for r in steps] == [1, 2]
    for r in steps:
        assert all(0 <= r[f"reward/{name}"] <= 1 for name in ("chrf", "bleu", "cycle_consistency"))
        assert (r["ref_reset"], r["ref_reset_cause"]) == (True, "schedule")
    assert steps[1]["probe_max_diff"] is not None and steps[1]["probe_max_diff"] < 0.05  # LFM2's probe passes

    rows = pq.read_table(run_dir / "rollouts").to_pylist()
    assert all(
        row["prompt"].startswith("<|startoftext|><|im_start|>user\nTranslate the following Korean") for row in rows
    )
    assert all(row["prompt"].endswith("<|im_end|>\n<|im_start|>assistant\n") for row in rows)
