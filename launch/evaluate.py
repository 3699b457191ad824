"""Held-out evaluation through the rollout workers: greedy pass@1, unbiased pass@k, and the task's own metrics.

It uses the same engines, rendered prompts (chat template, BOS) and stop tokens as the training rollouts, so an eval
number and a training reward measure the same thing. pass@k uses the unbiased estimator of Chen et al. (2021)
from `n_samples` samples per prompt at the eval temperature. Held-out rows with a `reference` column (translation,
or the user's own data) also get corpus chrF++ and BLEU of the same greedy completions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rollout.fleet import RolloutFleet
from shared.chat import PromptRenderer
from shared.config import Config
from shared.metrics import pass_at_k, reference_metrics
from shared.records import SamplingSpec
from shared.tasks import Task, correct_counts


@dataclass(frozen=True)
class EvalResult:
    pass_at_1: float
    """Greedy accuracy on the held-out prompts."""
    pass_at_k: float
    k: int
    n_prompts: int
    task_metrics: dict[str, float] = field(default_factory=dict)
    """Corpus metrics of the greedy completions against the rows' `reference` ({"chrf": ..., "bleu": ...}); empty
    when the rows have none (arithmetic)."""

    def as_record(self) -> dict:
        return {
            "pass@1": self.pass_at_1,
            f"pass@{self.k}": self.pass_at_k,
            "n_prompts": self.n_prompts,
            **self.task_metrics,
        }

    def summary(self) -> str:
        """One line for logs: pass@1, pass@k and the reference metrics."""
        extra = "".join(f"  {name} {value:.2f}" for name, value in self.task_metrics.items())
        return f"pass@1 {self.pass_at_1:.3f}  pass@{self.k} {self.pass_at_k:.3f}{extra}"


def evaluate(
    fleet: RolloutFleet, task: Task, rows: list[dict], config: Config, seed: int, renderer: PromptRenderer
) -> EvalResult:
    prompts = [renderer.render(r["prompt"]) for r in rows]
    max_tokens, stop, n = config.rollout.max_new_tokens, tuple(config.rollout.stop), config.eval.n_samples
    greedy = fleet.generate(prompts, SamplingSpec(n=1, max_tokens=max_tokens, temperature=0.0, seed=seed, stop=stop))
    sampled = fleet.generate(
        prompts,
        SamplingSpec(n=n, max_tokens=max_tokens, temperature=config.eval.temperature, seed=seed, stop=stop),
    )
    pass1 = sum(correct_counts(task, greedy, rows))
    passk = sum(pass_at_k(config.eval.n_samples, c, config.eval.k) for c in correct_counts(task, sampled, rows))
    texts = [g.completions[0].text for g in greedy]
    return EvalResult(pass1 / len(rows), passk / len(rows), config.eval.k, len(rows), reference_metrics(texts, rows))
