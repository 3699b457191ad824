"""TensorBoard and W&B sinks: off by default, skipped with a note when their package is missing, and TensorBoard
event files that TensorBoard itself reads back."""

from __future__ import annotations

import pytest

import launch.sinks as sinks
from shared.config import load_config
from shared.metrics import MetricsWriter, read_metrics


def test_scalars_split_train_and_eval():
    assert sinks.scalars({"step": 3, "reward_mean": 0.5, "ref_reset": True, "note": "x", "kl": None}) == (
        3,
        {"train/reward_mean": 0.5, "train/ref_reset": 1.0},
    )
    assert sinks.scalars({"eval": True, "step": 4, "pass@1": 0.25}) == (4, {"eval/pass@1": 0.25})


def test_off_by_default(tmp_path):
    assert sinks.open_sinks(load_config(), tmp_path) == []


def test_missing_package_is_a_note_not_an_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sinks, "_installed", lambda module: False)
    config = load_config(overrides=["log.tensorboard=true", "log.wandb=true"])
    assert sinks.open_sinks(config, tmp_path) == []
    err = capsys.readouterr().err
    assert "log.tensorboard is on but neither tensorboard nor tensorboardX is installed" in err
    assert "log.wandb is on but wandb is not installed" in err


def test_tensorboard_events_next_to_metrics(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    opened = sinks.open_sinks(load_config(overrides=["log.tensorboard=true"]), tmp_path)
    writer = MetricsWriter(tmp_path / "metrics.jsonl", opened)
    writer.write({"eval": True, "step": 0, "pass@1": 0.25})
    for step in (1, 2):
        writer.write({"step": step, "reward_mean": 0.1 * step, "sync_ms": float("nan")})
    writer.close()
    assert len(read_metrics(tmp_path / "metrics.jsonl")) == 3
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert set(events.Tags()["scalars"]) == {"eval/pass@1", "train/reward_mean"}  # NaN became null: not logged
    assert [(e.step, round(e.value, 6)) for e in events.Scalars("train/reward_mean")] == [(1, 0.1), (2, 0.2)]


def test_wandb_offline_run_in_the_run_directory(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    config = load_config(overrides=["log.wandb=true", "log.wandb_mode=offline", "run.name=wb"])
    opened = sinks.open_sinks(config, tmp_path / "wb-run")
    assert [type(s).__name__ for s in opened] == ["WandbSink"]
    writer = MetricsWriter(tmp_path / "metrics.jsonl", opened)
    writer.write({"eval": True, "step": 0, "pass@1": 0.25})
    writer.write({"step": 1, "reward_mean": 0.5})
    writer.close()
    runs = list((tmp_path / "wb-run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))
