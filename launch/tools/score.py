"""`prolora score`: score a JSONL file of prompts and completions with a reward set, one JSON line per row.

Users check a reward before they train with it. Each input line is a JSON object with `prompt`, `completion` and the
columns the rewards read (`answer`, `reference`, `source`, ... as in learner/rewards/README.md); a prompt may be a list
of chat messages and a completion a list holding one assistant message (TRL's conversational format), and rewards then
get them as TRL passes them. Blank lines are skipped. Each output line is `{"line": N, "<reward>": value, ...,
"total": weighted sum}` for input line N. Rows are checked before anything is scored: a line that is not a JSON object,
lacks `prompt` or `completion`, or lacks a column a chosen built-in reads is an error naming the line and the column.

User rewards (`module:function`) get TRL's `completion_ids` too: each completion's text encoded by the run's tokenizer
(`model.tokenizer`, else `model.path`'s) without special tokens, since a file holds text and not the ids that were
sampled. Built-in rewards read no ids, so a set of built-ins loads no tokenizer.

The rewards run in this process through the same `RewardWorker` a run uses (same weights, timeout and failure
policy, from the config or `--set rewards.…`). Rewards that need actors get them: `cycle_consistency` starts
rollout workers on `model.path` (the base model, no adapter) and `reward_model` starts the reward-model actor
on `rewards.reward_model.path`, `bertscore` the BERTScore actor on `rewards.bertscore.model`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, TextIO

from launch import datafiles
from learner.rewards.context import RewardContext
from learner.rewards.registry import BUILTIN_COLUMNS, BUILTIN_REWARDS, resolve_spec
from learner.rewards.worker import RewardFailure, score_rows
from shared.chat import check_messages, is_conversational
from shared.config import Config, RewardSpec
from shared.errors import UserError


class ScoreInputError(UserError):
    """An input file or row that cannot be scored; the message names the line and the column."""


def parse_reward_arg(text: str) -> list[RewardSpec]:
    """`NAME[=WEIGHT][,NAME[=WEIGHT]...]` as reward specs (weight 1.0 when left out)."""
    specs = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, weight = item.partition("=")
        try:
            specs.append(RewardSpec(name=name.strip(), weight=float(weight) if sep else 1.0))
        except ValueError:
            raise ScoreInputError(f"--reward {item!r}: the weight after '=' must be a number") from None
    if not specs:
        raise ScoreInputError("--reward needs at least one reward name, e.g. --reward chrf or --reward chrf=0.5,bleu")
    return specs


def read_rows(path: Path, specs: list[RewardSpec]) -> tuple[list[int], list[dict[str, Any]]]:
    """The file's rows (JSONL or Parquet, read by launch/datafiles.py) and their line or row numbers, each checked
    for the columns the rewards read."""
    data = datafiles.read_rows(path)
    needed = {column: spec.name for spec in specs for column in BUILTIN_COLUMNS.get(spec.name, ())}
    for number, row in zip(data.numbers, data.rows, strict=True):
        _check_row(data.at(number), data.unit, row, needed)
    if not data.rows:
        raise ScoreInputError(f"{path}: no rows to score")
    return data.numbers, data.rows


def _check_row(at: str, where: str, row: dict[str, Any], needed: dict[str, str]) -> None:
    have = ", ".join(row) or "nothing"
    for column in ("prompt", "completion"):
        if column not in row:
            raise ScoreInputError(
                f"{at}: missing column {column!r} (every row needs prompt and completion); this {where} has: {have}"
            )
        value = row[column]
        if not (isinstance(value, str) or (is_conversational(value) and check_messages(value) is None)):
            raise ScoreInputError(
                f"{at}: column {column!r} must be a string or a list of chat messages "
                f'([{{"role": ..., "content": ...}}]), got {value!r:.80}'
            )
    for column, reward in needed.items():
        if column not in row:
            raise ScoreInputError(
                f"{at}: missing column {column!r}, needed by reward {reward!r}; this {where} has: {have} "
                f"(use null where the reward does not apply)"
            )


def score_file(config: Config, specs: list[RewardSpec], path: Path, out: TextIO = sys.stdout) -> int:
    """Score every row of `path` with `specs` and write one JSON line per row to `out`; returns the row count."""
    from learner.rewards.swap import check_reward_specs

    check_reward_specs(specs, config)
    line_numbers, rows = read_rows(path, specs)
    completion_ids = None
    if any(spec.name not in BUILTIN_REWARDS for spec in specs):
        completion_ids = encode_completions(config, rows)
    context, own_ray = _start_context(config, specs)
    try:
        scored = score_rows(
            specs,
            rows,
            failure_policy=config.rewards.failure_policy,
            timeout_s=config.rewards.timeout_s,
            context=context,
            completion_ids=completion_ids,
        )
    except RewardFailure as err:
        raise ScoreInputError(
            f"{err} (with --set rewards.failure_policy=zero it scores 0 and the traceback is logged)"
        ) from None
    finally:
        if own_ray:  # a caller's Ray stays up; one started here for the rewards is shut down
            import ray

            ray.shutdown()
    for number, values in zip(line_numbers, scored, strict=True):
        out.write(json.dumps({"line": number, **values}) + "\n")
    return len(rows)


def encode_completions(config: Config, rows: list[dict[str, Any]]) -> list[list[int]]:
    """Each row's completion text as the run's tokenizer encodes it (no BOS or other added special tokens)."""
    from launch.rundir import resolve_model_path
    from shared.chat import load_tokenizer, message_text

    tokenizer = load_tokenizer(
        config.model.tokenizer or resolve_model_path(config.model.path), config.model.trust_remote_code
    )
    return [tokenizer.encode(message_text(row["completion"]), add_special_tokens=False) for row in rows]


def _start_context(config: Config, specs: list[RewardSpec]) -> tuple[RewardContext, bool]:
    """Start the actors the rewards need (none for most rewards, and then no Ray either); also says whether Ray was
    started here."""
    from launch.actors import reward_context

    required = {field for spec in specs for field in getattr(resolve_spec(spec), "context_requires", ())}
    if not required:
        return reward_context(config, []), False
    import ray

    from launch.actors import start_bertscore, start_ray, start_reward_model, start_rollout_workers
    from launch.rundir import resolve_model_path

    own_ray = start_ray(config)
    workers = []
    model_path = resolve_model_path(config.model.path) if "rollout_workers" in required else None
    if model_path:
        workers = start_rollout_workers(config, model_path)
    reward_model = start_reward_model(config) if "reward_model" in required else None
    bertscore = start_bertscore(config) if "bertscore" in required else None
    # Wait for the engines and models to load here, so their start-up does not count against rewards.timeout_s.
    ray.get([actor.__ray_ready__.remote() for actor in [*workers, reward_model, bertscore] if actor is not None])
    return reward_context(config, workers, reward_model, bertscore, model_path), own_ray
