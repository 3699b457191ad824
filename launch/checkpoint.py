"""The run's state between steps: atomic checkpoints, finding the last good one, and how a run stops.

A checkpoint is a directory `checkpoints/step_<N>/` holding:
    learner.pt      the learner's state (adapter, reference adapter, optimiser, RNG) as saved by Learner.state()
    driver.json     the driver's state (`DriverState`): step, data order position, per-prompt statistics, reward set,
                    eval history
    manifest.json   step, the SHA-256 of every other file, and the config fields a resume must not change
                    (`identity(config)`: resuming with any of them changed is refused)

It is written under a temporary name and renamed into place, so a crash mid-write leaves no directory that looks
complete. On resume every candidate is verified against its manifest, newest first; one that is incomplete or
fails its checksum is reported and skipped, and the previous one is used.

A run stops early on SIGINT/SIGTERM (`StopSignals`), too many non-finite updates, or a fleet that cannot recover,
each after a checkpoint (`RunStopped`); a learner that dies takes its state with it (`LearnerDied`, no checkpoint).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from shared.config import Config
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
    run_dir: Path,
    step: int,
    learner_state: bytes,
    driver_state: dict[str, Any],
    identity: dict[str, Any],
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


class RunStopped(RuntimeError):
    """The run stopped before its last step, after writing a checkpoint; the message says how to resume."""

    exit_code = 1


class Interrupted(RunStopped):
    exit_code = 130


class LearnerDied(RunStopped):
    """The learner actor died. Its state (adapter, optimizer) died with it, so no checkpoint is written: the run
    continues from the last one."""


def learner_died_message(run_dir: Path, last_checkpoint: int | None, cause: Exception) -> str:
    """What the user reads when the learner died: what happened, where the run can continue, and how."""
    if last_checkpoint is None:
        where = "no checkpoint was written yet, so the run cannot be resumed; start it again"
    else:
        where = f"the last checkpoint is of step {last_checkpoint}; continue with: prolora train --resume {run_dir}"
    return (
        f"the learner actor died ({type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}); "
        f"its state is lost, so no checkpoint was written now. {where}"
    )


def next_nonfinite_streak(streak: int, optimizer_steps: int, skipped_nonfinite: int) -> int:
    """`DriverState.nonfinite_streak` after a step: reset by any update made, one longer when every update was
    skipped as non-finite, unchanged by a step that had nothing to train on."""
    if optimizer_steps:
        return 0
    return streak + 1 if skipped_nonfinite else streak


@dataclass
class DriverState:
    step: int = 0
    """Last completed step."""
    first_eval: dict[str, Any] | None = None
    last_eval: dict[str, Any] | None = None
    nonfinite_streak: int = 0
    """Consecutive steps whose every optimiser step was skipped for a non-finite loss or gradient."""
    worker_restarts: int = 0
    reward_restarts: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    """State owned by other parts of the driver: the curriculum (data order position, retired prompts, per-prompt
    pass rates, reference-reset history), the reward set in force."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DriverState:
        return cls(**data)


def identity(config: Config) -> dict[str, Any]:
    """Config fields a checkpoint depends on (model, LoRA shape, task)."""
    return {
        "model.path": config.model.path,
        "model.dtype": config.model.dtype,
        **({"model.quantization": config.model.quantization} if config.model.quantization != "none" else {}),
        "lora.rank": config.lora.rank,
        "lora.alpha": config.lora.alpha,
        "lora.target_modules": config.lora.target_modules,
        **_lora_identity(config),
        "task.name": config.task.name,
        "task.train_size": config.task.train_size,
        **({"task.train_file": config.task.train_file} if config.task.train_file else {}),
        **_dataset_identity(config),
    }


def _lora_identity(config: Config) -> dict[str, Any]:
    """The lora fields added later, only when not at their defaults (so older checkpoints still match)."""
    lora = config.lora
    fields = {
        "lora.mode": (lora.mode, "lora"),
        "lora.layers": (lora.layers, None),
        "lora.use_dora": (lora.use_dora, False),
    }
    return {key: value for key, (value, default) in fields.items() if value != default}


def _dataset_identity(config: Config) -> dict[str, Any]:
    """What picks the training rows of task.dataset (nothing when it is not set, so older checkpoints still match)."""
    t = config.task
    if not t.dataset:
        return {}
    carved = not (t.heldout_split or t.heldout_file)
    return {
        "task.dataset": t.dataset,
        "task.train_split": t.train_split,
        "task.columns": dict(t.columns),
        **({"task.heldout_size": t.heldout_size, "run.seed": config.run.seed} if carved else {}),
    }


class StopSignals:
    """While active, SIGINT and SIGTERM only set `requested`: the current step finishes, then the driver writes a
    checkpoint and stops. A second signal restores the default behaviour (so a stuck run can still be killed)."""

    def __init__(self) -> None:
        self.requested: str | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, _frame) -> None:
        self.requested = signal.Signals(signum).name
        print(f"\n[prolora] {self.requested}: finishing the current step, then writing a checkpoint", flush=True)
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def __enter__(self) -> StopSignals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
