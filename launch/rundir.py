"""The run directory: resolved config, metrics, rollouts and adapters of one run.

Layout (later tools read these names):
    config.yaml       the resolved config
    rewards.yaml      the reward set in force; edit it to change rewards while the run goes on (learner/rewards/swap.py)
    data.json         row numbers of the user's own prompts (files, data set splits) skipped as too long (only when
                      some were)
    logs/             actors.log (vLLM, Ray and library output of the actors) and driver.log (the driver's library
                      logs); not written with log.verbose, which prints them instead (launch/progress.py)
    metrics.jsonl     one JSON object per step, eval records with "eval": true, and reward-swap records with
                      "reward_swap": true
    prompt_history.jsonl  one JSON object per prompt visit: step, prompt, samples, passes, retired
    tensorboard/      TensorBoard event files (only with log.tensorboard)
    wandb/            W&B files (only with log.wandb)
    rollouts/         step_<N>.parquet, one row per completion (schema in shared/metrics.py)
    adapters/         latest/, final/ and step_<N>/ peft adapters (loadable by peft and by vLLM); reference/ is the
                      KL reference after the last ProRL reset (absent while the reference is the base model)
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from launch.prompts import PromptVisit
from launch.sinks import open_sinks
from shared.config import Config, config_to_yaml
from shared.errors import UserError
from shared.metrics import MetricsSink, MetricsWriter, add_reward_columns, rollout_reward_names, write_rollouts
from shared.records import Group, Payload, RewardScores


class RunDirError(UserError):
    """The run directory cannot be used (it holds another run)."""


def resolve_model_path(path: str) -> str:
    """`builtin:<task>` builds (once, cached) the project's tiny warm-started model, `builtin:<task>@large` the
    randomly initialised ~25M-parameter one the benchmark uses; anything else must be a local directory or a hub
    name (`owner/name`)."""
    if path.startswith("builtin:"):
        from launch.basemodel import SIZES, ensure_base_model

        task, _, size = path.removeprefix("builtin:").partition("@")
        if size and size not in SIZES:
            raise UserError(f"model.path {path!r}: unknown size {size!r}; sizes: {', '.join(SIZES)}")
        return str(ensure_base_model(task, size=size or "default"))
    if not Path(path).is_dir() and not looks_like_hub_name(path):
        raise UserError(
            f"model.path {path!r} does not exist (expected a Hugging Face model directory or a hub name such as "
            "'Qwen/Qwen2.5-0.5B-Instruct')"
        )
    return path


def looks_like_hub_name(path: str) -> bool:
    """`owner/name` with no local-path marks: transformers and vLLM download it where the hub is reachable."""
    owner, sep, name = path.partition("/")
    return bool(sep and owner and name and "/" not in name and not owner.startswith((".", "~")))


class RunDir:
    def __init__(self, path: Path, sinks: Sequence[MetricsSink] = ()) -> None:
        self.path = path
        self.rollouts = path / "rollouts"
        self.adapters = path / "adapters"
        self.rollouts.mkdir(parents=True, exist_ok=True)
        self.adapters.mkdir(exist_ok=True)
        self.metrics = MetricsWriter(path / "metrics.jsonl", sinks)
        self.prompt_history = MetricsWriter(path / "prompt_history.jsonl")
        # Every reward that has a rollout column, in order of first use (read back from the files on resume).
        self._reward_names = rollout_reward_names(self.rollouts)

    @classmethod
    def create(cls, config: Config) -> RunDir:
        path = Path(config.run.run_dir or f"runs/{config.run.name}-{time.strftime('%Y%m%d-%H%M%S')}")
        if (path / "config.yaml").exists() or (path / "metrics.jsonl").exists():
            raise RunDirError(f"run directory {path} already holds a run; choose another --run-dir")
        path.mkdir(parents=True, exist_ok=True)
        (path / "config.yaml").write_text(config_to_yaml(config))
        path = path.resolve()
        return cls(path, open_sinks(config, path))

    @classmethod
    def reopen(cls, config: Config) -> RunDir:
        """An existing run directory, for --resume."""
        path = Path(config.run.run_dir or "")
        if not config.run.run_dir or not (path / "config.yaml").is_file():
            raise RunDirError(f"--resume: {path} is not a prolora run directory (no config.yaml)")
        path = path.resolve()
        return cls(path, open_sinks(config, path))

    def truncate_after(self, step: int) -> None:
        """Drop what a crashed run wrote after the checkpoint of `step`, so resumed steps are not doubled."""
        lines = (self.path / "metrics.jsonl").read_text().splitlines()
        kept = [line for line in lines if line.strip() and json.loads(line).get("step", 0) <= step]
        tmp = self.path / "metrics.jsonl.tmp"
        tmp.write_text("".join(line + "\n" for line in kept))
        tmp.replace(self.path / "metrics.jsonl")
        self.metrics.reopen()
        for file in self.rollouts.glob("step_*.parquet"):
            if int(file.stem.removeprefix("step_")) > step:
                file.unlink()

    def save_adapter(self, payload: Payload, name: str, keep_copy: bool = False) -> Path:
        """Write the adapter (or a weights payload's tensors) atomically as adapters/<name>; with keep_copy also as
        adapters/step_<version>."""
        target = self.adapters / name
        tmp = self.adapters / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        payload.write(tmp)
        (tmp / "VERSION").write_text(f"{payload.version}\n")
        if keep_copy:
            shutil.copytree(tmp, self.adapters / f"step_{payload.version:06d}", dirs_exist_ok=True)
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
        return target

    def write_rollouts(self, step: int, groups: list[Group], scores: RewardScores, advantages_PG: torch.Tensor) -> Path:
        flat = [(g, c) for g in groups for c in g.completions]
        columns: dict[str, list[Any]] = {
            "step": [step] * len(flat),
            "prompt": [g.prompt for g, _ in flat],
            "messages": [None if g.messages is None else json.dumps(list(g.messages)) for g, _ in flat],
            "prompt_token_ids": [list(g.prompt_token_ids) for g, _ in flat],
            "completion": [c.text for _, c in flat],
            "completion_token_ids": [list(c.token_ids) for _, c in flat],
            "sampling_logprobs": [list(c.logprobs) for _, c in flat],
            "finish_reason": [c.finish_reason for _, c in flat],
            "reward": list(scores.total),
            "advantage": advantages_PG.flatten().tolist(),
            "adapter_version": [c.adapter_version for _, c in flat],
            "log_extra": _logged_per_row(scores.logged_columns, len(flat)),
        }
        for name, values in scores.components.items():
            columns[f"reward/{name}"] = list(values)
        new_names = [name for name in scores.components if name not in self._reward_names]
        if new_names:  # a reward swap brought in a reward: keep one schema across all files
            add_reward_columns(self.rollouts, new_names)
            self._reward_names += new_names
        return write_rollouts(self.rollouts, step, columns, self._reward_names)

    def write_prompt_visits(self, visits: Iterable[PromptVisit]) -> None:
        for visit in visits:
            self.prompt_history.write(asdict(visit))

    def close(self) -> None:
        self.metrics.close()
        self.prompt_history.close()


def _logged_per_row(columns: dict[str, tuple], n: int) -> list[str | None]:
    """Rewards' `log_extra` columns as one JSON object per completion (null where nothing was logged)."""
    rows: list[str | None] = []
    for i in range(n):
        values = {name: column[i] for name, column in columns.items() if column[i] is not None}
        rows.append(json.dumps(values, default=str) if values else None)
    return rows
