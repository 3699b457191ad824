"""`prolora inspect`, `prolora report` and `prolora eval` on a weight-push run directory (lora.mode=full), made by
the real `prolora train` (Ray, vLLM, peft): its saved checkpoints are the trained tensors themselves, so the update
is W' - W, checked here against the saved files and the base model directly."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.integration.test_report_eval_cli import LENGTH_REWARD, _prolora

pytestmark = pytest.mark.slow  # a training run, then an evaluation that starts its own engine

CHOSEN = ["model.layers.1.self_attn.q_proj", "model.layers.2.mlp.down_proj"]


@pytest.fixture(scope="module")
def full_run(tiny_model, tmp_path_factory):
    home = tmp_path_factory.mktemp("run")
    (home / "length_reward.py").write_text(LENGTH_REWARD)  # moves the weights even when no answer is right
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(home), os.environ.get("PYTHONPATH", "")])}
    run_dir = home / "r"
    sets = [
        f"model.path={tiny_model}",
        "lora.mode=full",
        f"lora.target_modules=[{', '.join(CHOSEN)}]",
        "rollout.max_staleness=0",
        "train.lr=0.001",
        "eval.size=8",
        "rollout.prompts_per_step=4",
        "log.save_adapter_every=1",
        "rewards.functions=[{name: exact_match}, {name: 'length_reward:length', weight: 0.1}]",
    ]
    proc = _prolora(
        "train", "--steps", "2", "--run-dir", str(run_dir), *(a for s in sets for a in ("--set", s)), env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


def test_inspect_measures_the_pushed_weights(full_run, tiny_model, tmp_path):
    proc = _prolora("inspect", str(full_run), "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((tmp_path / "update_map.json").read_text())
    assert [(c["name"], c["version"]) for c in data["checkpoints"]] == [("step_000001", 1), ("step_000002", 2)]
    base = load_file(tiny_model / "model.safetensors")
    for checkpoint in data["checkpoints"]:
        saved = load_file(full_run / "adapters" / checkpoint["name"] / "weights.safetensors")
        assert [row["name"] for row in checkpoint["modules"]] == CHOSEN
        for row in checkpoint["modules"]:
            W, W_new = base[f"{row['name']}.weight"].double(), saved[f"{row['name']}.weight"].double()
            delta = (W_new - W).numpy()
            assert row["relative_norm"] == pytest.approx(np.linalg.norm(delta) / np.linalg.norm(W.numpy()), rel=1e-6)
            changed = saved[f"{row['name']}.weight"].to(torch.bfloat16) != base[f"{row['name']}.weight"].bfloat16()
            assert row["bf16_changed"] == changed.double().mean().item()
            assert row["rank"] == min(W.shape) and 1 < row["effective_rank"] <= min(W.shape)
    assert data["checkpoints"][-1]["overall"]["relative_norm"] > 0
    # Between the two checkpoints: entries equal in both bf16 weights, over the chosen modules.
    first, second = (
        load_file(full_run / "adapters" / n / "weights.safetensors") for n in ("step_000001", "step_000002")
    )
    same = sum(int((first[k].bfloat16() == second[k].bfloat16()).sum()) for k in first)
    assert data["unchanged"][1]["fraction"] == pytest.approx(same / sum(t.numel() for t in first.values()))


def test_report_draws_the_update_heat_maps(full_run):
    proc = _prolora("report", str(full_run))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {"update_map_layers", "update_map_steps"} <= {p.stem for p in (full_run / "report").glob("*.png")}
    assert "not drawn" not in (full_run / "report" / "report.html").read_text()


def test_eval_pushes_the_saved_weights(full_run, tmp_path):
    out = tmp_path / "eval.json"
    proc = _prolora("eval", str(full_run), "--k", "1", "--n", "2", "--prompts", "4", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["model"] for r in rows] == ["base", "final"]
    assert rows[1]["adapter"].endswith("adapters/final")
