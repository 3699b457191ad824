"""Held-out evaluation through the rollout workers: greedy pass@1 and unbiased pass@k.

It uses the same engines, prompt strings and tokenizer (BOS included) as the training rollouts, so an eval
number and a training reward measure the same thing. pass@k uses the unbiased estimator of Chen et al. (2021)
from `n_samples` samples per prompt at the eval temperature.
"""

from __future__ import annotations

from dataclasses import dataclass

from launch.fleet import RolloutFleet
from learner.grpo import pass_at_k
from shared.config import Config
from shared.records import SamplingSpec
from shared.tasks import Task


@dataclass(frozen=True)
class EvalResult:
    pass_at_1: float
    """Greedy accuracy on the held-out prompts."""
    pass_at_k: float
    k: int
    n_prompts: int

    def as_record(self) -> dict:
        return {"pass@1": self.pass_at_1, f"pass@{self.k}": self.pass_at_k, "n_prompts": self.n_prompts}


def evaluate(fleet: RolloutFleet, task: Task, rows: list[dict], config: Config, seed: int) -> EvalResult:
    prompts = [r["prompt"] for r in rows]
    max_tokens = config.rollout.max_new_tokens
    greedy = fleet.generate(prompts, SamplingSpec(n=1, max_tokens=max_tokens, temperature=0.0, seed=seed))
    sampled = fleet.generate(
        prompts,
        SamplingSpec(n=config.eval.n_samples, max_tokens=max_tokens, temperature=config.eval.temperature, seed=seed),
    )
    pass1 = sum(task.is_correct(g.completions[0].text, r["answer"]) for g, r in zip(greedy, rows, strict=True))
    passk = 0.0
    for group, row in zip(sampled, rows, strict=True):
        correct = sum(task.is_correct(c.text, row["answer"]) for c in group.completions)
        passk += pass_at_k(len(group.completions), correct, config.eval.k)
    return EvalResult(pass1 / len(rows), passk / len(rows), config.eval.k, len(rows))
