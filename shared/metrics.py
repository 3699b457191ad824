"""What a run writes: `metrics.jsonl` (one JSON object per step or eval) and `rollouts/` (Parquet, one row per
completion).

Plain JSON lines rather than a metrics service because every later tool (report, resume, tests) only needs to read
a file; pyarrow writes the rollouts because they are columnar and large. Optional viewers (TensorBoard, W&B) are
sinks the writer forwards each record to (launch/sinks.py), so the driver loop only ever calls `write`.

Rollout schema (`ROLLOUT_SCHEMA`), one row per completion:
    step                  int64    GRPO step whose batch held this completion
    prompt                string   the prompt text the model read (the chat template's output for messages)
    messages              string   the chat messages it was rendered from, as JSON (null for a plain prompt)
    prompt_token_ids      list<int32>  the prompt's token ids as the engine got them
    completion            string   the raw completion text
    completion_token_ids  list<int32>
    sampling_logprobs     list<float32>  engine logprob of each generated token
    finish_reason         string   "stop" or "length"
    reward                float64  weighted total (null when the sample was skipped)
    reward/<name>         float64  one column per reward function ever used in the run (null where it did not
                                   apply, failed, or was not in the reward set of that step)
    advantage             float64
    adapter_version       int64    version of the adapter that generated the completion
    log_extra             string   what rewards reported for it with `log_extra(column, values)`, as a JSON
                                   object {column: value} (null when none did)

All files of a run share one schema, so `pyarrow.parquet.read_table(run_dir / "rollouts")` reads them all: when a
reward swap brings in a reward not seen before, `add_reward_columns` rewrites the earlier files with a null column
for it (a reader such as pyarrow takes the schema of the first file and would silently drop the new column).
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.parquet as pq

ROLLOUT_SCHEMA = pa.schema(
    [
        ("step", pa.int64()),
        ("prompt", pa.string()),
        ("messages", pa.string()),
        ("prompt_token_ids", pa.list_(pa.int32())),
        ("completion", pa.string()),
        ("completion_token_ids", pa.list_(pa.int32())),
        ("sampling_logprobs", pa.list_(pa.float32())),
        ("finish_reason", pa.string()),
        ("reward", pa.float64()),
        ("advantage", pa.float64()),
        ("adapter_version", pa.int64()),
        ("log_extra", pa.string()),
    ]
)


def _clean(value: Any) -> Any:
    # JSON has no NaN/inf; write null so every reader (jq, pandas, browsers) can parse the file.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsSink(Protocol):
    """Somewhere else a metrics record goes (TensorBoard, W&B); gets the same cleaned records as the file."""

    def write(self, record: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


class MetricsWriter:
    """Appends one JSON object per line and flushes, so a crash loses at most the line being written; then hands
    the record to every sink. Thread-safe: with asynchronous rollouts the producer thread records reward swaps."""

    def __init__(self, path: Path, sinks: Sequence[MetricsSink] = ()) -> None:
        self.path = path
        self._file = path.open("a", encoding="utf-8")
        self._sinks = list(sinks)
        self._lock = threading.Lock()

    def write(self, record: dict[str, Any]) -> None:
        clean = {k: _clean(v) for k, v in record.items()}
        with self._lock:
            self._file.write(json.dumps(clean) + "\n")
            self._file.flush()
            for sink in self._sinks:
                sink.write(clean)

    def reopen(self) -> None:
        """Append to the file again after it was replaced on disk (a resume dropping records); sinks stay open."""
        self._file.close()
        self._file = self.path.open("a", encoding="utf-8")

    def close(self) -> None:
        self._file.close()
        for sink in self._sinks:
            sink.close()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_rollouts(directory: Path, step: int, columns: dict[str, list[Any]], reward_names: list[str]) -> Path:
    """Write one step's completions as `rollouts/step_<step>.parquet` (schema above plus reward/<name> columns).

    A name in `reward_names` without a column in `columns` (a reward not in this step's set) is written as nulls.
    """
    fields = list(ROLLOUT_SCHEMA) + [pa.field(f"reward/{n}", pa.float64()) for n in reward_names]
    n_rows = len(columns["step"])
    table = pa.table({f.name: columns.get(f.name, [None] * n_rows) for f in fields}, schema=pa.schema(fields))
    path = directory / f"step_{step:06d}.parquet"
    _write_atomic(table, path)
    return path


def _write_atomic(table: pa.Table, path: Path) -> None:
    tmp = path.with_suffix(".parquet.tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)


def rollout_reward_names(directory: Path) -> list[str]:
    """The reward names of the newest rollout file (every reward the run used so far), in column order."""
    files = sorted(directory.glob("step_*.parquet"))
    if not files:
        return []
    return [name.removeprefix("reward/") for name in pq.read_schema(files[-1]).names if name.startswith("reward/")]


def add_reward_columns(directory: Path, names: list[str]) -> None:
    """Give every rollout file a null `reward/<name>` column for each of `names` it lacks (appended at the end)."""
    for path in sorted(directory.glob("step_*.parquet")):
        table = pq.read_table(path)
        missing = [n for n in names if f"reward/{n}" not in table.column_names]
        for name in missing:
            nulls = pa.nulls(table.num_rows, pa.float64())
            table = table.append_column(pa.field(f"reward/{name}", pa.float64()), nulls)
        if missing:
            _write_atomic(table, path)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (Chen et al. 2021): 1 - C(n-c, k) / C(n, k).

    Computed as 1 - prod_{i=n-c+1}^{n} (1 - k / i), which avoids huge binomials.
    """
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def reference_metrics(completions: Sequence[str], rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Corpus chrF++ (sacrebleu CHRF(word_order=2)) and BLEU, 0..100, of the completions (stripped) against the
    rows' `reference`; empty unless every row has a string reference (a partial corpus would not compare across
    evaluations)."""
    references = [row["reference"] for row in rows if isinstance(row.get("reference"), str)]
    if not references or len(references) < len(rows):
        return {}
    from sacrebleu.metrics import BLEU, CHRF

    hypotheses = [c.strip() for c in completions]
    return {
        "chrf": CHRF(word_order=2).corpus_score(hypotheses, [references]).score,
        "bleu": BLEU().corpus_score(hypotheses, [references]).score,
    }
