"""Changing the reward set of a running job: `rewards.yaml` in the run directory.

At start the driver writes the config's `rewards` section to `<run_dir>/rewards.yaml` (or, when the file is already
there because the run is resumed, reads the set in force from it). Before every step it checks the file's
modification time and size; when they changed it re-reads the file and, if `functions` (names and weights) differ
from the set in force, installs the new set on every reward actor with `RewardPool.set_specs` (which also
re-sends it to a reward actor Ray restarts later). Rollout workers and the learner are untouched. The step whose
completions are the first scored by the new set is recorded in `metrics.jsonl` as
`{"reward_swap": true, "step": S, "rewards": [{"name": ..., "weight": ...}, ...]}`.

A file that cannot be used (bad YAML, an unknown key, an unknown reward, a reward whose needs the run cannot meet, a
reward that raises when tried on the data's first row as the run passes it: the driver's `tryout`, the same check a
run makes before it starts) never stops the run: the set in force stays, and a warning says why. Only `functions`
is read from the file; a change to another key (failure_policy, timeout_s, ...) is reported and ignored (those come
from the config). The file
always holds what the user last wrote, so a resumed run reads the set in force from it (an unusable file is then
an error, before any actor starts). Resuming drops the records of steps after the checkpoint, a swap record among
them; so on its first step a resumed run compares the file's set with the last one metrics.jsonl records (or the
config's) and records a swap at that step if they differ.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import yaml
from pydantic import ValidationError

from learner.rewards.context import RewardContext, check_context, provided_fields
from learner.rewards.pool import RewardPool
from learner.rewards.registry import RewardSetError, check_reward_names, resolve_spec
from shared.config import Config, RewardsConfig, RewardSpec
from shared.errors import UserError
from shared.metrics import MetricsWriter, read_metrics
from shared.restarts import TooManyRestarts
from shared.tasks import back_translation

logger = logging.getLogger(__name__)

REWARDS_FILE = "rewards.yaml"


def check_reward_specs(specs: Sequence[RewardSpec], config: Config) -> None:
    """Raise a UserError unless every reward resolves and the run can give it the context it needs."""
    check_reward_names(specs)
    # What the run's RewardContext will hold: the actors do not exist yet, but there will be rollout workers.
    context = RewardContext(
        back_translation_prompt=back_translation(config.task.name, config.task.back_translation_prompt)
    )
    available = provided_fields(context) | {"rollout_workers"}
    if config.rewards.reward_model.path:
        available |= {"reward_model"}
    if config.rewards.bertscore.model:
        available |= {"bertscore"}
    for spec in specs:
        check_context(spec.name, resolve_spec(spec), available)


def read_rewards_file(path: Path) -> RewardsConfig:
    """Parse and validate a rewards.yaml (the `rewards` section of a config); a UserError says what is wrong."""
    try:
        data = yaml.safe_load(path.read_text())
        return RewardsConfig.model_validate(data or {})
    except (OSError, yaml.YAMLError) as err:
        raise RewardSetError(f"{path}: cannot read: {err}") from None
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(top)'}: {e['msg']}" for e in err.errors())
        raise RewardSetError(f"{path}: {problems}") from None


class RewardSwap:
    """Watches one run's rewards.yaml and installs changed reward sets between steps."""

    def __init__(
        self,
        path: Path,
        config: Config,
        rewards: RewardsConfig,
        resumed: bool = False,
        tryout: Callable[[Sequence[RewardSpec]], None] | None = None,
    ) -> None:
        self.path = path
        self._config = config
        self._tryout = tryout
        self._rewards = rewards
        self._signature = _signature(path)
        self._resumed = resumed

    @classmethod
    def open(
        cls, run_dir: Path, config: Config, tryout: Callable[[Sequence[RewardSpec]], None] | None = None
    ) -> RewardSwap:
        """Write the config's rewards to run_dir/rewards.yaml, or take the set in force from it when it exists.
        `tryout(specs)` raises a UserError for a set that fails on the run's data; every new set is tried with it."""
        path = run_dir / REWARDS_FILE
        resumed = path.exists()
        if resumed:
            functions = read_rewards_file(path).functions
            check_reward_specs(functions, config)
            rewards = config.rewards.model_copy(update={"functions": functions})
        else:
            rewards = config.rewards
            path.write_text(yaml.safe_dump(rewards.model_dump(mode="json", exclude_none=True), sort_keys=False))
        return cls(path, config, rewards, resumed, tryout)

    @property
    def specs(self) -> list[RewardSpec]:
        """The reward set in force."""
        return list(self._rewards.functions)

    def poll(self, step: int, rewarders: RewardPool, metrics: MetricsWriter) -> bool:
        """Before `step`: install the file's reward set if it changed; True when a changed file was installed."""
        if self._resumed:
            self._resumed = False
            if self.specs != _last_recorded_set(metrics.path, self._config):
                self._record(step, metrics)
        signature = _signature(self.path)
        if signature == self._signature:
            return False
        self._signature = signature
        try:
            new = read_rewards_file(self.path)
            check_reward_specs(new.functions, self._config)
            if self._tryout is not None and list(new.functions) != self.specs:
                self._tryout(new.functions)
        except UserError as err:
            logger.warning("step %d: %s; keeping rewards %s", step, err, _describe(self.specs))
            return False
        _warn_ignored_keys(step, self._rewards, new)
        if list(new.functions) == self.specs:
            return False
        try:
            rewarders.set_specs(new.functions)
        except TooManyRestarts:  # actors that stay dead: the driver stops with a checkpoint of the last step
            raise
        except Exception as err:  # e.g. user code importable here but not in the actor: keep every actor on one set
            rewarders.set_specs(self.specs)
            logger.warning(
                "step %d: reward actors refused %s (%s); keeping rewards %s",
                step,
                _describe(new.functions),
                err,
                _describe(self.specs),
            )
            return False
        self._rewards = self._rewards.model_copy(update={"functions": list(new.functions)})
        self._record(step, metrics)
        return True

    def _record(self, step: int, metrics: MetricsWriter) -> None:
        metrics.write(
            {"reward_swap": True, "step": step, "rewards": [s.model_dump(exclude_none=True) for s in self.specs]}
        )
        print(f"[rewards] from step {step}: {_describe(self.specs)} (from {self.path})", flush=True)


def _last_recorded_set(metrics_path: Path, config: Config) -> list[RewardSpec]:
    """The reward set of the last swap record in metrics.jsonl, or the config's when there is none."""
    records = read_metrics(metrics_path) if metrics_path.exists() else []
    swaps = [r["rewards"] for r in records if r.get("reward_swap")]
    return [RewardSpec(**spec) for spec in swaps[-1]] if swaps else list(config.rewards.functions)


def _signature(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_mtime_ns, stat.st_size


def _describe(specs: Sequence[RewardSpec]) -> str:
    return ", ".join(f"{s.name} x{s.weight:g}" for s in specs)


def _warn_ignored_keys(step: int, current: RewardsConfig, new: RewardsConfig) -> None:
    changed = [k for k in RewardsConfig.model_fields if k != "functions" and getattr(current, k) != getattr(new, k)]
    if changed:
        logger.warning(
            "step %d: %s: only 'functions' can change while running; ignoring changes to %s "
            "(they come from the run's config)",
            step,
            REWARDS_FILE,
            ", ".join(changed),
        )
