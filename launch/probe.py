"""The served-adapter probe: does every engine serve the adapter the learner just exported?

At a hot-load, each rollout worker decodes a few fixed prompts greedily under its newest adapter, and the learner
scores the same tokens. Greedy decoding makes the engine report raw (temperature-1) logprobs, which the learner
computes at temperature 1. A difference beyond `tolerance` means an engine is serving something else (a stale
version, a failed load): the run stops loudly instead of training on a policy it does not report.
"""

from __future__ import annotations

import ray

from shared.records import SamplingSpec


class StaleAdapterError(RuntimeError):
    """A rollout worker's logprobs under the new adapter do not match the learner's."""


def probe_served_adapter(workers: list, learner, prompts: list[str], max_tokens: int, tolerance: float) -> float:
    """Largest |engine logprob - learner logprob| over workers and probe tokens; raises past `tolerance`."""
    greedy = SamplingSpec(n=1, max_tokens=max_tokens, temperature=0.0)
    per_worker = ray.get([w.generate.remote(prompts, greedy) for w in workers])
    worst = 0.0
    for i, groups in enumerate(per_worker):
        prompt_ids = [list(g.prompt_token_ids) for g in groups]
        completion_ids = [list(g.completions[0].token_ids) for g in groups]
        expected = ray.get(learner.completion_logprobs.remote(prompt_ids, completion_ids))
        for g, want in zip(groups, expected, strict=True):
            got = g.completions[0].logprobs
            diff = max((abs(a - b) for a, b in zip(got, want, strict=True)), default=0.0)
            if diff > tolerance:
                raise StaleAdapterError(
                    f"rollout worker {i} serves adapter version {g.completions[0].adapter_version} but its "
                    f"logprobs differ from the learner's by {diff:.4f} (> rollout.probe_tolerance={tolerance}) "
                    f"on probe prompt {g.prompt!r}: the engine is not serving the adapter the learner trained"
                )
            worst = max(worst, diff)
    return worst
