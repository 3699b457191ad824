"""Atomic checkpoints of a run, and finding the last good one.

A checkpoint is a directory `checkpoints/step_<N>/` holding:
    learner.pt      the learner's state (adapter, reference adapter, optimiser, RNG) as saved by Learner.state()
    driver.json     the driver's state: step, data order position, per-prompt statistics, reward set, eval history
    manifest.json   step, the SHA-256 of every other file, and the config fields a resume must not change

It is written under a temporary name and renamed into place, so a crash mid-write leaves no directory that looks
complete. On resume every candidate is verified against its manifest, newest first; one that is incomplete or
fails its checksum is reported and skipped, and the previous one is used.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.errors import UserError

MANIFEST = "manifest.json"


class CheckpointError(UserError):
    """No usable checkpoint, or one that does not fit the run being resumed."""


@dataclass(frozen=True)
class Checkpoint:
    step: int
    path: Path
    learner_state: bytes
    driver_state: dict[str, Any]
    identity: dict[str, Any]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save_checkpoint(
    run_dir: Path, step: int, learner_state: bytes, driver_state: dict[str, Any], identity: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Write checkpoint `step` atomically; keep only the newest `keep` checkpoints."""
    root = run_dir / "checkpoints"
    root.mkdir(exist_ok=True)
    final = root / f"step_{step:06d}"
    tmp = root / f".step_{step:06d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    (tmp / "learner.pt").write_bytes(learner_state)
    (tmp / "driver.json").write_text(json.dumps(driver_state))
    files = {name: _sha256(tmp / name) for name in ("learner.pt", "driver.json")}
    (tmp / MANIFEST).write_text(json.dumps({"step": step, "files": files, "identity": identity}, indent=1))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in sorted(root.glob("step_*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _verify(path: Path) -> str | None:
    """None if the checkpoint at `path` is complete and intact, else why not."""
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        return "no manifest (incomplete write)"
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError:
        return "manifest is not valid JSON"
    for name, digest in manifest.get("files", {}).items():
        if not (path / name).is_file():
            return f"{name} is missing"
        if _sha256(path / name) != digest:
            return f"{name} fails its checksum"
    return None


def load_latest_checkpoint(run_dir: Path, warn=print) -> Checkpoint:
    """The newest intact checkpoint of `run_dir`; damaged ones are reported through `warn` and skipped."""
    candidates = sorted((run_dir / "checkpoints").glob("step_*"), reverse=True)
    for path in candidates:
        problem = _verify(path)
        if problem:
            warn(f"checkpoint {path} refused: {problem}; trying the previous one")
            continue
        manifest = json.loads((path / MANIFEST).read_text())
        return Checkpoint(
            step=manifest["step"],
            path=path,
            learner_state=(path / "learner.pt").read_bytes(),
            driver_state=json.loads((path / "driver.json").read_text()),
            identity=manifest["identity"],
        )
    raise CheckpointError(f"no usable checkpoint in {run_dir / 'checkpoints'} (found {len(candidates)} damaged)")


def check_identity(saved: dict[str, Any], current: dict[str, Any]) -> None:
    """Refuse to resume when the model, LoRA shape or task changed; the message names every changed field."""
    changed = [key for key in sorted(set(saved) | set(current)) if saved.get(key) != current.get(key)]
    if changed:
        details = "; ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in changed)
        raise CheckpointError(f"cannot resume: the config changes fields a checkpoint depends on ({details})")
