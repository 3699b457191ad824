"""What a run asks the Ray cluster for, and whether a cluster can give it.

`run_demands` is the one table of per-actor resource asks; `launch/actors.py` applies it with `ray.remote` and
`check_fits` compares it with a cluster's nodes, both before `prolora submit` creates a job and when a driver joins
an existing cluster. Why check at all: Ray keeps an actor whose ask no node can meet pending forever (with a
warning in a log nobody reads), so a run that asks for a GPU on a CPU-only cluster would hang instead of failing.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from shared.config import Config
from shared.errors import UserError


@dataclass(frozen=True)
class Demand:
    """One actor's resource ask (Ray logical resources)."""

    role: str
    """rollout, learner, reward or reward_model."""
    cpus: float
    gpus: float
    config_keys: str
    """The config fields that set this ask, for the error message."""


def run_demands(config: Config) -> list[Demand]:
    """Every actor a run starts, with its ask."""
    rollout = Demand("rollout", 1.0, config.rollout.num_gpus, "rollout.num_workers, rollout.num_gpus")
    learner = Demand("learner", 1.0, config.train.num_gpus, "train.num_gpus")
    reward = Demand("reward", 1.0, 0.0, "rewards.num_actors")
    demands = [rollout] * config.rollout.num_workers + [learner] + [reward] * config.rewards.num_actors
    if config.rewards.reward_model.path:
        rm_keys = "rewards.reward_model.path, rewards.reward_model.num_gpus"
        demands.append(Demand("reward_model", 1.0, config.rewards.reward_model.num_gpus, rm_keys))
    return demands


def unmet_demands(demands: list[Demand], nodes: list[dict[str, float]]) -> list[str]:
    """Why `demands` cannot all be placed on `nodes` (each a node's total resources); empty when they can.

    Checks cluster totals per resource and that every single actor fits on some node. It does not solve the full
    packing problem (Ray's scheduler does), so it catches every impossible ask but can miss a tight one.
    """
    problems = []
    for resource, attr in (("CPU", "cpus"), ("GPU", "gpus")):
        need = sum(getattr(d, attr) for d in demands)
        have = sum(n.get(resource, 0.0) for n in nodes)
        if need > have + 1e-9:
            parts = Counter((d.role, getattr(d, attr), d.config_keys) for d in demands if getattr(d, attr))
            detail = ", ".join(f"{count} {role} x {amount:g} ({keys})" for (role, amount, keys), count in parts.items())
            problems.append(f"{resource}: the run needs {need:g} ({detail}) but the cluster has {have:g}")
    largest = max((n.get("GPU", 0.0) for n in nodes), default=0.0)
    for d in {d for d in demands if d.gpus > largest + 1e-9}:
        problems.append(f"GPU: one {d.role} actor asks for {d.gpus:g} GPU ({d.config_keys}) but the largest node "
                        f"has {largest:g}")
    return problems


def check_fits(config: Config, nodes: list[dict[str, float]], where: str) -> None:
    """Raise a UserError naming every resource `where` (a cluster address) lacks for this run."""
    problems = unmet_demands(run_demands(config), nodes)
    if problems:
        summary = "; ".join(_describe_node(n) for n in nodes) or "no alive nodes"
        raise UserError(
            f"the cluster at {where} cannot hold this run:\n  " + "\n  ".join(problems)
            + f"\ncluster nodes: {summary}\nlower the settings named above, or add nodes with those resources"
        )


def _describe_node(node: dict[str, float]) -> str:
    return "{" + ", ".join(f"{k} {node.get(k, 0.0):g}" for k in ("CPU", "GPU")) + "}"
