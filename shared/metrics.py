"""What a run writes: `metrics.jsonl` (one JSON object per step or eval) and `rollouts/` (Parquet, one row per
completion).

Plain JSON lines rather than a metrics service because every later tool (report, resume, tests) only needs to read
a file; pyarrow writes the rollouts because they are columnar and large. Optional viewers (TensorBoard, W&B) are
sinks the writer forwards each record to (launch/sinks.py), so the driver loop only ever calls `write`.

Rollout schema (`ROLLOUT_SCHEMA`), one row per completion:
    step                  int64    GRPO step whose batch held this completion
    prompt                string
    completion            string
    completion_token_ids  list<int32>
    sampling_logprobs     list<float32>  engine logprob of each generated token
    finish_reason         string   "stop" or "length"
    reward                float64  weighted total (null when the sample was skipped)
    reward/<name>         float64  one column per reward function (null where it did not apply)
    advantage             float64
    adapter_version       int64    version of the adapter that generated the completion
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.parquet as pq

ROLLOUT_SCHEMA = pa.schema(
    [
        ("step", pa.int64()),
        ("prompt", pa.string()),
        ("completion", pa.string()),
        ("completion_token_ids", pa.list_(pa.int32())),
        ("sampling_logprobs", pa.list_(pa.float32())),
        ("finish_reason", pa.string()),
        ("reward", pa.float64()),
        ("advantage", pa.float64()),
        ("adapter_version", pa.int64()),
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
    the record to every sink."""

    def __init__(self, path: Path, sinks: Sequence[MetricsSink] = ()) -> None:
        self.path = path
        self._file = path.open("a", encoding="utf-8")
        self._sinks = list(sinks)

    def write(self, record: dict[str, Any]) -> None:
        clean = {k: _clean(v) for k, v in record.items()}
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


def write_rollouts(directory: Path, step: int, columns: dict[str, list], reward_names: list[str]) -> Path:
    """Write one step's completions as `rollouts/step_<step>.parquet` (schema above plus reward/<name> columns)."""
    fields = list(ROLLOUT_SCHEMA) + [pa.field(f"reward/{n}", pa.float64()) for n in reward_names]
    table = pa.table({f.name: columns[f.name] for f in fields}, schema=pa.schema(fields))
    path = directory / f"step_{step:06d}.parquet"
    tmp = path.with_suffix(".parquet.tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)
    return path
