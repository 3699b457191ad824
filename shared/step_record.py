"""One training step's record: the typed form of a step line of `metrics.jsonl`.

The driver builds a `StepRecord` after every step and writes `to_json()`; the learner's `TrainStats` and the
per-reward means are flattened into the same JSON object. Everything else derives from these two dataclasses:
the metrics table in shared/README.md is `metrics_table()` (a test keeps the two equal; regenerate it with
`python -m shared.step_record shared/README.md`), and the report's panels read keys a test checks against
`json_keys()`.
"""

from __future__ import annotations

import ast
import inspect
import sys
import textwrap
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from shared.hacking import HackingSignals
from shared.records import DpoStats, TrainStats

REWARD_PREFIX = "reward/"
"""A step record's per-reward means are keys `reward/<name>`."""
HACKING_PREFIX = "hacking/"
"""A step record's reward-hacking figures (`HackingSignals`) are keys `hacking/<field>`."""
REWARD_LOG_PREFIX = "reward_log/"
"""What rewards reported with `log_metric(name, value)` is keys `reward_log/<name>`."""
PREFIXED = {"reward_components": REWARD_PREFIX, "reward_log": REWARD_LOG_PREFIX}
"""Mapping fields written as one key per entry, `<prefix><name>`."""


@dataclass(frozen=True)
class StepRecord:
    """What one GRPO step did, as written to `metrics.jsonl` (non-finite floats are written as null)."""

    step: int
    """GRPO step, from 1; step s trains on top of adapter version s-1 and produces version s."""
    reward_mean: float
    """Mean total reward over the step's scored completions (NaN, written null, when every reward failed)."""
    reward_std: float
    """Population std of the total reward over the same completions."""
    adapter_version: int
    """Adapter version that generated the batch (0: the base model)."""
    sync_ms: float | None
    """The hot-load made just before this batch was generated: the slowest worker's load; null when none."""
    publish_ms: float | None
    """Wall time of that hot-load, probe included; null when none."""
    probe_max_diff: float | None
    """Largest |engine - learner| probe token logprob of that hot-load; null when it carried no probe."""
    gen_tokens: int
    """Completion tokens generated for the batch, over every dynamic-sampling round."""
    gen_s: float
    """Seconds spent generating the batch (not scoring)."""
    train_s: float
    """Seconds of the learner update and the adapter export."""
    step_s: float
    """Wall time of the whole step in the driver."""
    wait_s: float
    """Seconds the trainer waited for the batch (0 when the producer made it ahead)."""
    response_len_mean: float
    """Mean completion length in tokens."""
    truncated_frac: float
    """Fraction of completions that hit rollout.max_new_tokens (finish_reason "length")."""
    repetition_frac: float
    """Mean fraction of repeated whitespace trigrams per completion (minus the `repetition` reward's penalty): 0
    without repeats, near 1 for a completion stuck in a loop."""
    overlong_penalty_mean: float
    """Mean DAPO soft overlong penalty added to the rewards (0 when off)."""
    zero_std_frac: float
    """Fraction of groups whose rewards were all equal (no gradient)."""
    sample_rounds: int
    """Generation rounds the batch took (more than 1 only with dynamic sampling)."""
    train_groups: int
    """Groups in the training batch."""
    dropped_frac: float
    """Fraction of generated groups left out of the batch (dynamic sampling)."""
    staleness_mean: float
    """Mean of (step - 1 - adapter version) over the batch's samples (0 when synchronous)."""
    staleness_max: int
    """Largest staleness in the batch (at most rollout.max_staleness)."""
    train: TrainStats
    """The learner's statistics of the update; flattened into the record (see `TrainStats`)."""
    ref_reset: bool
    """Whether the KL reference was reset after this step (ProRL)."""
    ref_reset_cause: str | None
    """Which trigger reset it: schedule, kl or plateau; null when none."""
    reward_components: Mapping[str, float | None]
    """Mean of each reward function's score, written as `reward/<name>`; null where it never applied."""
    reward_failures: int
    """Reward calls that raised or timed out during the step (handled by rewards.failure_policy)."""
    worker_restarts: int
    """Rollout worker restarts so far in the run."""
    reward_restarts: int
    """Reward actor restarts so far in the run."""
    reward_log: Mapping[str, float] = field(default_factory=dict)
    """Scalars reward functions reported with `log_metric(name, value)` (TRL's argument), mean of the step's calls,
    written as `reward_log/<name>`."""
    hacking: HackingSignals = HackingSignals()
    """The reward-hacking watch after this step (shared/hacking.py); flattened as `hacking/<field>`."""

    def to_json(self) -> dict[str, Any]:
        """The metrics.jsonl object: own fields, then `TrainStats` in place of `train`, `reward/<name>` per reward,
        `hacking/<field>` in place of `hacking`."""
        record: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "train":
                record.update(asdict(value))
            elif f.name in PREFIXED:
                record.update({PREFIXED[f.name] + name: v for name, v in value.items()})
            elif f.name == "hacking":
                record.update({HACKING_PREFIX + k: list(v) if k == "fired" else v for k, v in asdict(value).items()})
            else:
                record[f.name] = value
        return record


@dataclass(frozen=True)
class DpoStepRecord:
    """What one DPO step did (algo.objective=dpo), as written to `metrics.jsonl`: no rollouts, so no rewards or
    generation figures; `DpoStats` is flattened into the record. Evaluation records are the same as a GRPO run's."""

    step: int
    """DPO step, from 1; step s trains on top of adapter version s-1 and produces version s."""
    pairs: int
    """Preference pairs in the step's batch."""
    train_s: float
    """Seconds of the learner update and the adapter export."""
    step_s: float
    """Wall time of the whole step in the driver."""
    train: DpoStats
    objective: str = "dpo"
    hacking: HackingSignals = HackingSignals()
    """Not watched under DPO (there are no rewards); kept so the driver treats both records alike."""

    def to_json(self) -> dict[str, Any]:
        """The metrics.jsonl object: own fields, then `DpoStats` in place of `train`."""
        record = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("train", "hacking")}
        return {**record, **asdict(self.train)}


def json_keys() -> set[str]:
    """Every fixed key of a step record in metrics.jsonl (the `reward/<name>` keys vary with the reward set)."""
    return {key for key, _ in _documented_keys() if not key.startswith(tuple(PREFIXED.values()))}


def metrics_table() -> str:
    """The markdown table of a step record's keys and their meaning, from the field docstrings."""
    rows = [f"| `{key}` | {doc.replace('|', chr(92) + '|')} |" for key, doc in _documented_keys()]
    return "\n".join(["| key | meaning |", "|---|---|", *rows])


def _documented_keys() -> list[tuple[str, str]]:
    step_docs, train_docs, hacking_docs = field_docs(StepRecord), field_docs(TrainStats), field_docs(HackingSignals)
    keys: list[tuple[str, str]] = []
    for f in fields(StepRecord):
        if f.name == "train":
            keys += [(t.name, train_docs.get(t.name, "")) for t in fields(TrainStats)]
        elif f.name == "hacking":
            keys += [(HACKING_PREFIX + h.name, hacking_docs.get(h.name, "")) for h in fields(HackingSignals)]
        elif f.name in PREFIXED:
            keys.append((f"{PREFIXED[f.name]}<name>", step_docs[f.name]))
        else:
            keys.append((f.name, step_docs[f.name]))
    return keys


def field_docs(cls: type) -> dict[str, str]:
    """{field: its docstring} of a dataclass whose fields carry attribute docstrings (one line each in a table)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for node, nxt in zip(body, body[1:], strict=False):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


START, END = "<!-- step-record:start -->", "<!-- step-record:end -->"


def replace_table(text: str) -> str:
    """`text` with the block between the step-record markers replaced by `metrics_table()`."""
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{metrics_table()}\n{END}{tail}"


if __name__ == "__main__":
    # python -m shared.step_record FILE.md: regenerate the table between the markers in FILE.md.
    path = Path(sys.argv[1])
    path.write_text(replace_table(path.read_text()))
