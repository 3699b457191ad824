"""Optional places metrics go besides `metrics.jsonl`: TensorBoard event files and Weights & Biases.

Both are off by default and optional dependencies (`pip install prolora[tensorboard]` / `prolora[wandb]`). A
switch that is on while its package is missing prints one note and the run goes on: metrics.jsonl stays the
record of truth, these are viewers. Each sink gets the records `MetricsWriter` writes and logs every numeric field
under `train/<key>` (step records) or `eval/<key>` (held-out evaluations) at the record's step.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

from shared.config import Config
from shared.metrics import MetricsSink


def scalars(record: dict[str, Any]) -> tuple[int, dict[str, float]]:
    """(step, {tag: value}) for the numeric fields of one metrics record."""
    prefix = "eval" if record.get("eval") else "train"
    values = {
        f"{prefix}/{key}": float(value)
        for key, value in record.items()
        if key not in ("step", "eval") and isinstance(value, int | float)
    }
    return int(record["step"]), values


class TensorBoardSink:
    """Event files under <run dir>/tensorboard; `tensorboard --logdir runs/` shows every run side by side."""

    def __init__(self, log_dir: Path) -> None:
        if importlib.util.find_spec("tensorboard") is not None:
            from torch.utils.tensorboard import SummaryWriter
        else:
            from tensorboardX import SummaryWriter  # type: ignore[no-redef]  # the same writer API, other package
        self._writer = SummaryWriter(log_dir=str(log_dir))

    def write(self, record: dict[str, Any]) -> None:
        step, values = scalars(record)
        for tag, value in values.items():
            self._writer.add_scalar(tag, value, step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class WandbSink:
    """One W&B run per prolora run, named after the run directory, with the resolved config attached."""

    def __init__(self, config: Config, run_dir: Path) -> None:
        import wandb

        self._wandb = wandb
        self._run = wandb.init(
            project=config.log.wandb_project,
            name=run_dir.name,
            dir=str(run_dir),
            mode=config.log.wandb_mode,
            config=config.model_dump(mode="json"),
        )

    def write(self, record: dict[str, Any]) -> None:
        step, values = scalars(record)
        self._run.log(values, step=step)

    def close(self) -> None:
        self._run.finish()


def open_sinks(config: Config, run_dir: Path) -> list[MetricsSink]:
    """The sinks the config turns on and whose packages are installed."""
    sinks: list[MetricsSink] = []
    if config.log.tensorboard:
        if _installed("tensorboard") or _installed("tensorboardX"):
            sinks.append(TensorBoardSink(run_dir / "tensorboard"))
        else:
            _note(
                "log.tensorboard is on but neither tensorboard nor tensorboardX is installed; "
                "skipping (pip install 'prolora[tensorboard]')"
            )
    if config.log.wandb:
        if _installed("wandb"):
            sinks.append(WandbSink(config, run_dir))
        else:
            _note("log.wandb is on but wandb is not installed; skipping (pip install 'prolora[wandb]')")
    return sinks


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _note(message: str) -> None:
    print(f"prolora: note: {message}", file=sys.stderr, flush=True)
