"""The step record is the one description of a metrics.jsonl step line: its JSON form, the docs table, the report."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from launch.tools import report
from shared.hacking import HackingSignals
from shared.records import TrainStats
from shared.step_record import REWARD_PREFIX, StepRecord, field_docs, json_keys, metrics_table, replace_table

ROOT = Path(__file__).resolve().parents[2]


def _record(**changes) -> StepRecord:
    stats = TrainStats(0.1, None, 1.2, 0.0, 0.0, 0.0, 0.5, 1.0, 1.0, 0.0, 1, 0)
    values = dict(
        step=3, reward_mean=0.5, reward_std=0.1, adapter_version=2, sync_ms=None, publish_ms=None,
        probe_max_diff=None, gen_tokens=100, gen_s=0.2, train_s=0.3, step_s=0.6, wait_s=0.0,
        response_len_mean=4.0, truncated_frac=0.0, repetition_frac=0.0, overlong_penalty_mean=0.0, zero_std_frac=0.25,
        sample_rounds=1, train_groups=4, dropped_frac=0.0, staleness_mean=0.0, staleness_max=0, train=stats,
        ref_reset=False, ref_reset_cause=None, reward_components={"exact_match": 0.5, "format": None},
        reward_failures=0, worker_restarts=0, reward_restarts=0,
    )  # fmt: skip
    return StepRecord(**{**values, **changes})


def test_json_flattens_train_stats_and_reward_components():
    record = _record().to_json()
    assert record["entropy"] == 1.2 and record["kl"] is None and "train" not in record
    assert record[REWARD_PREFIX + "exact_match"] == 0.5 and record[REWARD_PREFIX + "format"] is None
    assert set(record) - {k for k in record if k.startswith(REWARD_PREFIX)} == json_keys()


def test_every_field_is_documented():
    for cls in (StepRecord, TrainStats, HackingSignals):
        docs = field_docs(cls)
        missing = [f for f in cls.__dataclass_fields__ if not docs.get(f)]
        assert not missing, f"{cls.__name__} fields without a docstring: {missing}"


def test_the_docs_table_is_the_generated_one():
    readme = (ROOT / "shared" / "README.md").read_text()
    assert replace_table(readme) == readme, "regenerate with: python -m shared.step_record shared/README.md"
    assert "`" + REWARD_PREFIX + "<name>`" in metrics_table()


def test_the_report_reads_only_step_record_keys():
    assert report.STEP_KEYS == json_keys()
    with pytest.raises(KeyError, match="not a step-record key"):
        report._steps([{"step": 1, "kll": 0.1}], "kll")
    assert math.isclose(report._steps([{"step": 1, "kl": 0.1}], "kl")[0].values[0], 0.1)
