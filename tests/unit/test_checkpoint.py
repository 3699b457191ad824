"""Checkpoints are atomic and verified: a damaged one is refused and the previous one used."""

from __future__ import annotations

import json

import pytest

from launch.checkpoint import CheckpointError, check_identity, load_latest_checkpoint, save_checkpoint

IDENTITY = {"model.path": "m", "lora.rank": 8, "task.name": "arith"}


def _save(run_dir, step):
    return save_checkpoint(run_dir, step, f"learner-{step}".encode(), {"step": step}, IDENTITY, keep=3)


def test_newest_intact_checkpoint_is_loaded(tmp_path):
    _save(tmp_path, 2)
    _save(tmp_path, 4)
    checkpoint = load_latest_checkpoint(tmp_path)
    assert checkpoint.step == 4
    assert checkpoint.learner_state == b"learner-4"
    assert checkpoint.driver_state == {"step": 4}


def test_corrupted_checkpoint_is_refused_and_previous_used(tmp_path):
    _save(tmp_path, 2)
    newest = _save(tmp_path, 4)
    (newest / "learner.pt").write_bytes(b"flipped bits")
    warnings = []
    checkpoint = load_latest_checkpoint(tmp_path, warn=warnings.append)
    assert checkpoint.step == 2
    assert "step_000004" in warnings[0] and "learner.pt fails its checksum" in warnings[0]


def test_incomplete_checkpoint_is_refused(tmp_path):
    _save(tmp_path, 2)
    newest = _save(tmp_path, 4)
    (newest / "manifest.json").unlink()  # as if the process died before the manifest was written
    warnings = []
    assert load_latest_checkpoint(tmp_path, warn=warnings.append).step == 2
    assert "no manifest" in warnings[0]


def test_no_usable_checkpoint_is_an_error(tmp_path):
    bad = _save(tmp_path, 2)
    (bad / "driver.json").write_text(json.dumps({"step": 3}))
    with pytest.raises(CheckpointError, match="no usable checkpoint"):
        load_latest_checkpoint(tmp_path, warn=lambda _: None)


def test_only_newest_checkpoints_are_kept(tmp_path):
    for step in (1, 2, 3, 4):
        save_checkpoint(tmp_path, step, b"x", {}, IDENTITY, keep=2)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_000003", "step_000004"]


def test_changed_identity_names_the_fields():
    with pytest.raises(CheckpointError, match=r"lora.rank: 8 -> 16.*task.name: 'arith' -> 'translate'"):
        check_identity(IDENTITY, {**IDENTITY, "lora.rank": 16, "task.name": "translate"})
    check_identity(IDENTITY, dict(IDENTITY))


def test_a_quantized_base_is_part_of_the_identity():
    from launch.checkpoint import identity
    from shared.config import load_config

    assert "model.quantization" not in identity(load_config())  # older checkpoints still match
    with pytest.raises(CheckpointError, match="model.quantization: None -> .nf4."):
        check_identity(identity(load_config()), identity(load_config(overrides=["model.quantization=nf4"])))
