"""`prolora report`, `prolora eval` and `prolora inspect` on a real short run made by the real `prolora train` (Ray,
vLLM, peft)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest


def _prolora(*args: str, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "launch.cli", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


LENGTH_REWARD = """
def length(prompts, completions, **kwargs):
    texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]  # the built-in task's are messages
    return [len(t) / 10 for t in texts]
"""


@pytest.fixture(scope="module")
def run_dir(tiny_model, tmp_path_factory):
    # The briefly warm-started test model rarely answers right, so exact_match alone leaves every group's rewards
    # equal and the adapter untouched; a small reward on the completion's length gives the update map an update.
    home = tmp_path_factory.mktemp("run")
    (home / "length_reward.py").write_text(LENGTH_REWARD)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(home), os.environ.get("PYTHONPATH", "")])}
    run_dir = home / "r"
    proc = _prolora(
        "train",
        "--steps",
        "3",
        "--run-dir",
        str(run_dir),
        "--set",
        f"model.path={tiny_model}",
        "--set",
        "eval.size=8",
        "--set",
        "eval.every=2",
        "--set",
        "rollout.prompts_per_step=4",
        "--set",
        "log.tensorboard=true",
        "--set",
        "log.save_adapter_every=1",
        "--set",
        "rewards.functions=[{name: exact_match}, {name: 'length_reward:length', weight: 0.1}]",
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Not a terminal: plain progress lines with the figures and an ETA.
    assert "[step 3/3] reward " in proc.stderr and " hotload_ms " in proc.stderr and " eta " in proc.stderr
    return run_dir


def test_report_from_a_real_run(run_dir):
    if importlib.util.find_spec("tensorboard"):  # log.tensorboard=true: event files beside metrics.jsonl
        assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    proc = _prolora("report", str(run_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = run_dir / "report"
    assert {p.stem for p in report.glob("*.png")} == {
        "reward",
        "heldout",
        "kl",
        "entropy",
        "response_length",
        "throughput",
        "hotload",
        "update_map_layers",
        "update_map_steps",
    }
    page = (report / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 9 and "model:" in page
    assert "Where the updates sit" in page and "step_000003" in page


def _pass_at_k(n: int, c: int, k: int) -> float:
    """Independent of shared.metrics: the estimator straight from its binomial definition."""
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def test_eval_of_a_real_adapter(run_dir):
    actors_log = run_dir / "logs" / "actors.log"
    logged_before = actors_log.stat().st_size
    proc = _prolora("eval", str(run_dir), "--k", "1,4", "--n", "6", "--prompts", "8")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "LLM engine" not in proc.stdout + proc.stderr  # the engine's start-up lines go to RUN_DIR/logs/
    assert "LLM engine" in actors_log.read_text()[logged_before:]
    table = json.loads((run_dir / "eval_heldout.json").read_text())
    assert table["k"] == [1, 4] and table["n"] == 6 and table["n_prompts"] == 8
    assert [row["model"] for row in table["rows"]] == ["base", "final"]
    assert table["rows"][1]["adapter"] == str((run_dir / "adapters" / "final").resolve())
    for row in table["rows"]:
        counts = row["correct_counts"]
        assert len(counts) == 8 and all(0 <= c <= 6 for c in counts)
        for k in (1, 4):
            expected = sum(_pass_at_k(6, c, k) for c in counts) / len(counts)
            assert row["pass_at_k"][str(k)] == pytest.approx(expected)
    printed = [line.split() for line in proc.stdout.splitlines()]
    assert ["model", "pass@1", "pass@4"] in printed
    final = table["rows"][1]["pass_at_k"]
    assert ["final", f"{final['1']:.3f}", f"{final['4']:.3f}"] in printed


def test_eval_refuses_n_below_k(run_dir):
    proc = _prolora("eval", str(run_dir), "--k", "1,8", "--n", "4")
    assert proc.returncode == 2 and "--n 4 is smaller than the largest k (8)" in proc.stderr


def test_inspect_of_a_real_run(run_dir, tiny_model, tmp_path):
    """The update map of the run's saved adapters against peft's own merge of each (independent of update_map.py)."""
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    proc = _prolora("inspect", str(run_dir), "--out", str(tmp_path), "--pick-top", "0.25")
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((tmp_path / "update_map.json").read_text())
    # save_adapter_every=1: step copies 1..3; final is version 3 again, so it is not measured twice.
    assert [(c["name"], c["version"]) for c in data["checkpoints"]] == [(f"step_00000{v}", v) for v in (1, 2, 3)]
    assert [(u["before"], u["after"]) for u in data["unchanged"]] == [
        ("base", "step_000001"),
        ("step_000001", "step_000002"),
        ("step_000002", "step_000003"),
    ]
    assert "layer" in proc.stdout and "q_proj" in proc.stdout and "step_000003" in proc.stdout

    base_weights = load_file(tiny_model / "model.safetensors")
    assert data["parameters"] == sum(t.numel() for t in base_weights.values())
    merged = {}
    for checkpoint in data["checkpoints"]:
        model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
        peft_model = PeftModel.from_pretrained(model, checkpoint["adapter"])
        merged[checkpoint["name"]] = peft_model.merge_and_unload().state_dict()
        modules = checkpoint["modules"]
        assert len(modules) == 4 * 7  # 4 layers, every linear layer of each (all-linear)
        for row in modules:
            key = f"{row['name']}.weight"
            W = base_weights[key]
            delta = (merged[checkpoint["name"]][key].double() - W.double()).numpy()
            # merged - W in float32 rounds the update to W's float32 grid: equal to a few parts in a million
            assert row["relative_norm"] == pytest.approx(np.linalg.norm(delta) / np.linalg.norm(W.numpy()), rel=1e-3)
            changed = merged[checkpoint["name"]][key].to(torch.bfloat16) != W.to(torch.bfloat16)
            assert row["bf16_changed"] == changed.double().mean().item()
            assert 0 < row["effective_rank"] <= 8 if row["relative_norm"] else row["effective_rank"] == 0
    # The length reward moved the adapter: the last one changes some entries and leaves others as they were.
    assert 0 < data["checkpoints"][-1]["overall"]["bf16_changed"] < 1
    assert all(row["relative_norm"] > 0 for row in data["checkpoints"][-1]["modules"])
    assert data["unchanged"][0]["fraction"] == pytest.approx(1 - data["checkpoints"][0]["overall"]["bf16_changed"])
    before, after = merged["step_000001"], merged["step_000002"]
    for name, fraction in data["unchanged"][1]["per_module"].items():
        key = f"{name}.weight"
        assert fraction == (before[key].to(torch.bfloat16) == after[key].to(torch.bfloat16)).double().mean().item()
    # --pick-top 0.25: the 7 of 28 modules with the largest relative update, as a config that trains them full rank.
    import yaml

    from shared.config import load_config

    last = sorted(data["checkpoints"][-1]["modules"], key=lambda r: -r["relative_norm"])
    fragment = yaml.safe_load((tmp_path / "subnetwork.yaml").read_text())
    config = load_config(overrides=[f"lora={json.dumps(fragment['lora'])}"])
    assert config.lora.mode == "full" and set(config.lora.target_modules) == {r["name"] for r in last[:7]}
