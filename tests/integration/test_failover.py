"""Actors that die are restarted by Ray and the lost request is retried: a rollout worker gets its adapter back,
a reward actor the reward set in force (not the one it was started with). A dead learner (never restarted: its
state is gone) stops the run with a message naming the last checkpoint, also while a resume is starting and when
it is one rank of a learner group (train.num_learners=2, the base sharded or not); actors
that die more often than their limit allows stop it with a checkpoint of the last finished step."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray
from ray.exceptions import ActorUnavailableError, RayActorError

from launch.actors import start_learner, start_reward_actors, start_rollout_workers
from launch.checkpoint import LearnerDied, save_checkpoint
from launch.driver import stop_if_learner_dies
from learner.rewards.pool import RewardPool
from rollout.fleet import RolloutFleet
from shared.config import RewardSpec, load_config
from shared.records import Completion, Group, RewardBatch, SamplingSpec, TrainBatch, TrainSample
from shared.restarts import TooManyRestarts
from tests.live_run import records, wait_for_step

PROMPTS = ["12+34=", "500+500=", "7+8="]


def _wait_until_killed(answers_as_before) -> None:
    """ray.kill returns before the actor's process is gone, and a call made meanwhile still runs there: wait until
    the old process no longer answers (the call fails, or a restarted process answers differently)."""
    for _ in range(240):
        try:
            if not answers_as_before():
                return
        except (RayActorError, ActorUnavailableError):
            return
        time.sleep(0.5)
    raise AssertionError("the killed actor still answers as before")


def test_killed_worker_is_restarted_reloaded_and_request_retried(tiny_model, ray_session):
    config = load_config(overrides=["rollout.max_restarts=2", "train.lr=0.05"])
    workers = start_rollout_workers(config, str(tiny_model))
    group = start_learner(config, str(tiny_model))
    learner = group.ranks[0]
    fleet = RolloutFleet(workers, max_restarts=2)
    groups = fleet.generate(PROMPTS, SamplingSpec(n=2, max_tokens=6, seed=1))
    samples = tuple(
        TrainSample(g.prompt_token_ids, c.token_ids, c.logprobs, 1.0 if i else -1.0, 0)
        for g in groups
        for i, c in enumerate(g.completions)
    )
    ray.get(learner.train_step.remote(TrainBatch(samples, step=1)))
    fleet.publish(learner.export_adapter.remote())
    assert fleet.version == 1

    ray.kill(workers[0], no_restart=False)  # the engine process dies between two requests of a step
    _wait_until_killed(lambda: ray.get(workers[0].loaded_versions.remote()) == [1])
    groups = fleet.generate(PROMPTS, SamplingSpec(n=2, max_tokens=6, seed=2))

    assert fleet.restarts == 1
    assert all(c.adapter_version == 1 for g in groups for c in g.completions)
    assert ray.get(workers[0].loaded_versions.remote()) == [1]
    for actor in workers:
        ray.kill(actor)
    group.kill()


def _groups(texts_P_G: list[list[str]]) -> list[Group]:
    return [
        Group(f"p{p}", (1,), tuple(Completion(t, (5,) * len(t), (-0.1,) * len(t), "stop", 0) for t in texts))
        for p, texts in enumerate(texts_P_G)
    ]


def _wait_until_restarted(actor, first: list[RewardSpec]) -> None:
    """ray.kill returns before the actor is gone: wait until it is back with the reward set it was started with."""
    probe = RewardBatch(("p",), ("x",), {"answer": ("x",)})
    for _ in range(240):
        try:
            if list(ray.get(actor.score.remote(probe)).components) == [s.name for s in first]:
                return
        except ActorUnavailableError:
            pass
        time.sleep(0.5)
    raise AssertionError("the reward actor did not come back")


def test_killed_reward_actor_is_restarted_with_the_swapped_set_and_its_shard_rescored(ray_session):
    config = load_config(overrides=["rewards.num_actors=2", "rewards.max_restarts=2"])
    first = [RewardSpec(name="exact_match")]
    swapped = [RewardSpec(name="exact_match", weight=2.0), RewardSpec(name="repetition", weight=0.5)]
    actors = start_reward_actors(config, first)
    pool = RewardPool(actors, first, max_restarts=1)
    pool.set_specs(swapped)  # a reward swap: a restarted actor would come back with `first`
    rows = [{"prompt": "p0", "answer": "579"}, {"prompt": "p1", "answer": "15"}]
    groups = _groups([["579", "578"], ["15", "a a a a"]])
    expected = pool.score(rows, groups, max_tokens=6)
    assert expected.total[0] == 2.0

    ray.kill(actors[1], no_restart=False)  # dies between two scoring calls of a step
    _wait_until_restarted(actors[1], first)
    scores = pool.score(rows, groups, max_tokens=6)

    assert pool.restarts == 1
    assert scores == expected
    assert ray.get(actors[1].score.remote(RewardBatch(("p",), ("x",), {"answer": ("x",)}), swapped)).total == (2.0,)
    ray.kill(actors[0], no_restart=False)
    _wait_until_restarted(actors[0], first)
    with pytest.raises(TooManyRestarts, match=r"reward actors died 2 times \(limit rewards.max_restarts=1\)"):
        pool.score(rows, groups, max_tokens=6)
    for actor in actors:
        ray.kill(actor)


@pytest.mark.slow
def test_dead_learner_stops_the_run_naming_the_last_checkpoint(tiny_model, ray_session, tmp_path):
    config = load_config()
    group = start_learner(config, str(tiny_model))
    learner = group.ranks[0]
    save_checkpoint(tmp_path, 3, group.state(), {"step": 3}, {})
    ray.kill(learner)  # no restart: the learner's state is gone
    _wait_until_killed(lambda: ray.get(learner.current_version.remote()) == 0)

    with pytest.raises(LearnerDied) as stop, stop_if_learner_dies(group, tmp_path):
        group.train_step(TrainBatch((), step=4))

    assert f"the last checkpoint is of step 3; continue with: prolora train --resume {tmp_path}" in str(stop.value)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_000003"]  # nothing written now
    group.kill()


def _parent(pid: str) -> str | None:
    try:
        return (Path("/proc") / pid / "stat").read_text().rsplit(")", 1)[1].split()[1]
    except (OSError, IndexError):
        return None


def _descends_from(pid: str, ancestor: int) -> bool:
    while pid not in (None, "0", "1"):
        if pid == str(ancestor):
            return True
        pid = _parent(pid)
    return False


def _kill_actor_process(title: bytes, run: subprocess.Popen) -> bool:
    """SIGKILL a process of `run`'s own Ray (its driver starts the raylet, which forks the workers) whose title
    starts with `title` (Ray names actor processes ray::<Class>); whether one was found."""
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes() if proc.name.isdigit() else b""
        except OSError:
            continue
        if cmdline.startswith(title) and _descends_from(proc.name, run.pid):
            os.kill(int(proc.name), signal.SIGKILL)
            return True
    return False


@pytest.mark.slow
def test_learner_killed_while_a_resume_starts_stops_cleanly(tiny_model, tmp_path):
    """The learner dies as soon as its process exists, so a resume's load_state (or, on a slow start, the first step)
    meets a dead actor: exit 1 with the message naming the checkpoint, no traceback, nothing lost."""
    run_dir = tmp_path / "run"
    sets = [f"model.path={tiny_model}", "eval.size=8", "eval.n_samples=8", "rollout.prompts_per_step=4"]
    train = [sys.executable, "-m", "launch.cli", "train", *[a for s in sets for a in ("--set", s)]]
    first = subprocess.run([*train, "--steps", "1", "--run-dir", str(run_dir)], capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-3000:]
    metrics = (run_dir / "metrics.jsonl").read_text()

    proc = subprocess.Popen(
        [*train, "--steps", "3", "--resume", str(run_dir)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 600
        while proc.poll() is None and time.monotonic() < deadline and not _kill_actor_process(b"ray::Learner", proc):
            time.sleep(0.02)
        _, stderr = proc.communicate(timeout=600)
    finally:
        proc.kill()
    assert proc.returncode == 1, stderr[-3000:]
    assert f"the last checkpoint is of step 1; continue with: prolora train --resume {run_dir}" in stderr
    assert "Traceback" not in stderr, stderr[-3000:]
    assert (run_dir / "metrics.jsonl").read_text() == metrics


def _train_in_background(model: Path, run_dir: Path, steps: int, *sets: str) -> subprocess.Popen:
    """`prolora train` of a short-batch run on `model` as a child process, its output piped."""
    sets = (f"model.path={model}", "eval.size=8", "eval.n_samples=8", "rollout.prompts_per_step=4", *sets)
    train = [sys.executable, "-m", "launch.cli", "train", "--steps", str(steps), "--run-dir", str(run_dir)]
    return subprocess.Popen(
        [*train, *[a for s in sets for a in ("--set", s)]], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


@pytest.mark.slow
def test_reward_actors_that_stay_dead_stop_the_run_with_a_checkpoint(tiny_model, tmp_path):
    """Past rewards.max_restarts a dead reward actor stops the run: exit 1, the message says why and how to resume,
    and a checkpoint of the last finished step is written (the scheduled ones are 20 steps apart)."""
    run_dir = tmp_path / "run"
    proc = _train_in_background(tiny_model, run_dir, 19, "rewards.max_restarts=0", "run.checkpoint_every=20")
    try:
        wait_for_step(run_dir / "metrics.jsonl", 2, proc)
        assert _kill_actor_process(b"ray::RewardWorker", proc)
        _, stderr = proc.communicate(timeout=600)
    finally:
        proc.kill()

    assert proc.returncode == 1, stderr[-3000:]
    assert "reward actors died 1 times (limit rewards.max_restarts=0)" in stderr
    assert f"last checkpoint kept; continue with: prolora train --resume {run_dir}" in stderr
    assert "Traceback" not in stderr, stderr[-3000:]
    last = [r["step"] for r in records(run_dir / "metrics.jsonl") if "reward_mean" in r][-1]
    assert 2 <= last < 19
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == [f"step_{last:06d}"]


def _rank_pid(actors_log: Path, rank: int, world: int) -> int | None:
    """The pid a learner rank logged when it joined its group (Learner.join_group), once it has."""
    found = re.search(rf"\[learner\] rank {rank} of {world} \(pid (\d+)\)", actors_log.read_text(errors="replace"))
    return int(found.group(1)) if found else None


@pytest.mark.slow
def test_a_killed_learner_rank_stops_a_two_rank_run_naming_the_last_checkpoint(tiny_model, tmp_path):
    """`prolora train` with train.num_learners=2: SIGKILL of rank 1 after step 2 stops the run with exit 1 and the
    message naming the newest checkpoint, no traceback, and no hang on the surviving rank, which waits in a
    collective for the dead one. The driver notices the dead actor whatever the ranks compute (a sharded base or
    not), so one configuration is tested."""
    run_dir = tmp_path / "run"
    proc = _train_in_background(tiny_model, run_dir, 40, "run.checkpoint_every=1", "train.num_learners=2")
    try:
        wait_for_step(run_dir / "metrics.jsonl", 2, proc)
        pid = _rank_pid(run_dir / "logs" / "actors.log", 1, 2)
        assert pid is not None and _descends_from(str(pid), proc.pid)
        os.kill(pid, signal.SIGKILL)
        _, stderr = proc.communicate(timeout=300)
    finally:
        proc.kill()

    assert proc.returncode == 1, stderr[-3000:]
    last = max(int(p.name.split("_")[1]) for p in (run_dir / "checkpoints").iterdir())
    assert 2 <= last < 40
    assert f"the last checkpoint is of step {last}; continue with: prolora train --resume {run_dir}" in stderr
    assert "Traceback" not in stderr, stderr[-3000:]
