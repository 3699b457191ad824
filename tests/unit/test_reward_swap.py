"""The reward-swap file (rewards.yaml) and the rollout schema that stays readable across swaps."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
import torch
import yaml

from launch.rundir import RunDir
from learner.rewards import RewardContextError, UnknownRewardError
from learner.rewards.swap import REWARDS_FILE, RewardSetError, RewardSwap, check_reward_specs, read_rewards_file
from shared.config import ConfigError, RewardSpec, load_config
from shared.metrics import MetricsWriter, read_metrics
from shared.records import Completion, Group, RewardScores
from shared.restarts import TooManyRestarts
from shared.tasks import back_translation


def test_open_writes_the_config_rewards_and_a_resumed_run_reads_the_set_in_force(tmp_path):
    config = load_config(overrides=["rewards.functions=[{name: exact_match, weight: 2}]"])
    swap = RewardSwap.open(tmp_path, config)
    assert swap.specs == [RewardSpec(name="exact_match", weight=2.0)]
    written = yaml.safe_load((tmp_path / REWARDS_FILE).read_text())
    assert written["functions"] == [{"name": "exact_match", "weight": 2.0}]

    (tmp_path / REWARDS_FILE).write_text("functions: [{name: repetition, weight: 0.5}]\n")
    resumed = RewardSwap.open(tmp_path, config)  # the file, not the config, holds the set in force
    assert resumed.specs == [RewardSpec(name="repetition", weight=0.5)]

    (tmp_path / REWARDS_FILE).write_text("functions: [{name: nope}]\n")
    with pytest.raises(UnknownRewardError, match="nope"):
        RewardSwap.open(tmp_path, config)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("functions: [{name: chrf, wieght: 1}]", "functions.0.wieght: Extra inputs are not permitted"),
        ("functions: [{name: chrf, weight: high}]", "functions.0.weight"),
        ("functions: [{name: chrf}\n", "cannot read"),
    ],
)
def test_unusable_rewards_file_names_the_problem(tmp_path, text, message):
    (tmp_path / REWARDS_FILE).write_text(text)
    with pytest.raises(RewardSetError, match=message):
        read_rewards_file(tmp_path / REWARDS_FILE)


def test_reward_set_checks_context_needs_against_the_run():
    arith = load_config()
    with pytest.raises(RewardContextError, match="task.name=translate"):
        check_reward_specs([RewardSpec(name="cycle_consistency")], arith)
    with pytest.raises(RewardContextError, match="rewards.reward_model.path"):
        check_reward_specs([RewardSpec(name="reward_model")], arith)
    with pytest.raises(RewardSetError, match="repeated: chrf"):
        check_reward_specs([RewardSpec(name="chrf"), RewardSpec(name="chrf", weight=2)], arith)
    with pytest.raises(RewardSetError, match="empty"):
        check_reward_specs([], arith)
    translate = load_config(overrides=["task.name=translate", "rewards.reward_model.path=/some/model"])
    check_reward_specs([RewardSpec(name="cycle_consistency"), RewardSpec(name="reward_model")], translate)
    # Any task's run can ask for cycle consistency once it says how to ask for a back-translation.
    own_data = load_config(overrides=["task.back_translation_prompt='Translate into Korean: {text}'"])
    check_reward_specs([RewardSpec(name="cycle_consistency")], own_data)


def test_back_translation_prompt_is_a_template_around_the_completion():
    assert (
        back_translation("arith", "Translate into Korean:\n\n{text}")(" Hello. ") == "Translate into Korean:\n\nHello."
    )
    assert back_translation("translate", None)("ab") == "T:ab\nS:"
    assert back_translation("arith", None) is None
    with pytest.raises(ConfigError, match="must contain {text}"):
        load_config(overrides=["task.back_translation_prompt=Translate into Korean"])


def _step(run: RunDir, step: int, components: dict[str, list]) -> None:
    completion = Completion("x", (5,), (-0.1,), "stop", step - 1)
    groups = [Group("p", (1, 2), (completion, completion))]
    total = tuple(sum(v[i] for v in components.values()) for i in range(2))
    scores = RewardScores(total=total, components={k: tuple(v) for k, v in components.items()})
    run.write_rollouts(step, groups, scores, torch.zeros(1, 2))


def test_rollouts_keep_one_schema_when_the_reward_set_changes(tmp_path):
    run = RunDir(tmp_path)
    _step(run, 1, {"exact_match": [1.0, 0.0]})
    _step(run, 2, {"repetition": [-0.5, 0.0]})
    resumed = RunDir(tmp_path)  # a resumed run learns the reward columns from the files
    _step(resumed, 3, {"exact_match": [0.0, 1.0], "chrf": [0.3, 0.4]})

    files = sorted((tmp_path / "rollouts").glob("step_*.parquet"))
    assert len({pq.read_schema(f) for f in files}) == 1
    table = pq.read_table(tmp_path / "rollouts")
    rows = {(r["step"], i): r for i, r in enumerate(table.to_pylist())}
    by_step = {s: [r for (step, _), r in rows.items() if step == s] for s in (1, 2, 3)}
    assert [r["reward/exact_match"] for r in by_step[1]] == [1.0, 0.0]
    assert [r["reward/repetition"] for r in by_step[1]] == [None, None]
    assert [r["reward/exact_match"] for r in by_step[2]] == [None, None]
    assert [r["reward/repetition"] for r in by_step[3]] == [None, None]
    assert [r["reward/chrf"] for r in by_step[3]] == [0.3, 0.4]
    assert [r["reward/chrf"] for r in by_step[1] + by_step[2]] == [None] * 4
    assert table.column_names[-3:] == ["reward/exact_match", "reward/repetition", "reward/chrf"]


def test_a_resumed_run_records_the_set_in_force_when_the_checkpoint_predates_its_swap(tmp_path):
    config = load_config()
    RewardSwap.open(tmp_path, config)
    metrics = MetricsWriter(tmp_path / "metrics.jsonl")
    metrics.write({"step": 1, "reward_mean": 0.5})
    # The user swapped after the last checkpoint (step 1); resuming truncated that swap's record away.
    (tmp_path / REWARDS_FILE).write_text("functions: [{name: repetition, weight: 0.5}]\n")
    resumed = RewardSwap.open(tmp_path, config)
    assert not resumed.poll(2, [], metrics)  # the file did not change since the resume read it
    again = RewardSwap.open(tmp_path, config)  # a second resume: the set in force is already recorded
    again.poll(3, [], metrics)
    metrics.close()
    swaps = [r for r in read_metrics(tmp_path / "metrics.jsonl") if r.get("reward_swap")]
    assert swaps == [{"reward_swap": True, "step": 2, "rewards": [{"name": "repetition", "weight": 0.5}]}]


class _Pool:
    """Stands in for RewardPool: records each set it is asked to install and fails the first install."""

    def __init__(self, error: Exception) -> None:
        self.error, self.installs = error, []

    def set_specs(self, specs) -> None:
        self.installs.append([s.name for s in specs])
        if len(self.installs) == 1:
            raise self.error


@pytest.mark.parametrize("dead", [False, True])
def test_a_failed_install_keeps_the_set_in_force_unless_the_actors_stay_dead(tmp_path, dead):
    swap = RewardSwap.open(tmp_path, load_config())
    metrics = MetricsWriter(tmp_path / "metrics.jsonl")
    (tmp_path / REWARDS_FILE).write_text("functions: [{name: repetition, weight: 0.5}]\n")
    pool = _Pool(TooManyRestarts("reward actors died 4 times") if dead else RuntimeError("no module named mine"))
    if dead:  # the driver turns this into a stop with a checkpoint; a second install would only fail again
        with pytest.raises(TooManyRestarts):
            swap.poll(2, pool, metrics)
        assert pool.installs == [["repetition"]]
    else:  # user code the actors cannot import: every actor goes back to the set in force
        assert not swap.poll(2, pool, metrics)
        assert pool.installs == [["repetition"], [s.name for s in load_config().rewards.functions]]
    assert swap.specs == load_config().rewards.functions
    metrics.close()
    assert not [r for r in read_metrics(tmp_path / "metrics.jsonl") if r.get("reward_swap")]


def test_a_set_that_fails_on_the_data_is_not_installed(tmp_path):
    """The driver's tryout (the first training row, as the run passes it) runs on every new set before install."""
    from learner.rewards.pool import RewardFormatError

    tried = []

    def tryout(specs):
        tried.append([s.name for s in specs])
        if any(s.name == "repetition" for s in specs):
            raise RewardFormatError("reward 'repetition' failed: TypeError: string indices must be integers")

    class Pool:
        installs: list[list[str]] = []

        def set_specs(self, specs) -> None:
            self.installs.append([s.name for s in specs])

    swap = RewardSwap.open(tmp_path, load_config(), tryout)
    metrics = MetricsWriter(tmp_path / "metrics.jsonl")
    pool = Pool()
    (tmp_path / REWARDS_FILE).write_text("functions: [{name: repetition, weight: 0.5}]\n")
    assert not swap.poll(2, pool, metrics)
    assert tried == [["repetition"]] and pool.installs == []
    assert swap.specs == load_config().rewards.functions
    (tmp_path / REWARDS_FILE).write_text("functions: [{name: exact_match, weight: 3}]\n")
    assert swap.poll(3, pool, metrics)
    assert tried[-1] == ["exact_match"] and pool.installs == [["exact_match"]]
    assert swap.specs == [RewardSpec(name="exact_match", weight=3.0)]
    metrics.close()
