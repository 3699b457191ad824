"""The parts of `prolora submit` that need no cluster: the job's entrypoint and the address."""

from __future__ import annotations

import shlex

import pytest

from launch.cluster import WORKING_DIR_EXCLUDES, repository_root, resolve_address, train_command
from shared.errors import UserError


def test_entrypoint_is_train_with_the_same_file_and_overrides():
    root = repository_root()
    command = train_command(str(root / "configs" / "my run.yaml"), ["train.lr=1e-3", "run.name=a b"], root)
    assert shlex.split(command) == [
        "python",
        "-m",
        "launch.cli",
        "train",
        "configs/my run.yaml",
        "--set",
        "train.lr=1e-3",
        "--set",
        "run.name=a b",
    ]
    assert shlex.split(train_command(None, [], root)) == ["python", "-m", "launch.cli", "train"]
    assert shlex.split(train_command(root / "launch" / "configs" / "prorl.yaml", [], root, resume="/runs/a")) == [
        "python",
        "-m",
        "launch.cli",
        "train",
        "launch/configs/prorl.yaml",
        "--resume",
        "/runs/a",
    ]


def test_a_config_outside_the_repository_is_refused(tmp_path):
    with pytest.raises(UserError, match="outside the repository"):
        train_command(str(tmp_path / "run.yaml"), [], repository_root())


def test_address_from_argument_or_environment(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(UserError, match="no cluster address"):
        resolve_address(None)
    assert resolve_address("10.0.0.5:8265") == "http://10.0.0.5:8265"
    monkeypatch.setenv("RAY_ADDRESS", "http://head:8265/")
    assert resolve_address(None) == "http://head:8265"


def test_run_outputs_and_environments_are_not_uploaded():
    for pattern in ("runs/", ".venv/", ".git/", ".pytest_cache/"):
        assert pattern in WORKING_DIR_EXCLUDES
