"""`prolora report` and `prolora eval` on a real short run made by the real `prolora train` (Ray, vLLM, peft)."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys

import pytest


def _prolora(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launch.cli", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def run_dir(tiny_model, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run") / "r"
    proc = _prolora(
        "train",
        "--steps",
        "3",
        "--run-dir",
        str(run_dir),
        "--set",
        f"model.path={tiny_model}",
        "--set",
        "eval.size=8",
        "--set",
        "eval.every=2",
        "--set",
        "rollout.prompts_per_step=4",
        "--set",
        "log.tensorboard=true",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Not a terminal: plain progress lines with the figures and an ETA.
    assert "[step 3/3] reward " in proc.stderr and " hotload_ms " in proc.stderr and " eta " in proc.stderr
    return run_dir


def test_report_from_a_real_run(run_dir):
    if importlib.util.find_spec("tensorboard"):  # log.tensorboard=true: event files beside metrics.jsonl
        assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    proc = _prolora("report", str(run_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = run_dir / "report"
    assert {p.stem for p in report.glob("*.png")} == {
        "reward",
        "heldout",
        "kl",
        "entropy",
        "response_length",
        "throughput",
        "hotload",
    }
    page = (report / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 7 and "model:" in page


def _pass_at_k(n: int, c: int, k: int) -> float:
    """Independent of shared.metrics: the estimator straight from its binomial definition."""
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def test_eval_of_a_real_adapter(run_dir):
    proc = _prolora("eval", str(run_dir), "--k", "1,4", "--n", "6", "--prompts", "8")
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = json.loads((run_dir / "eval_heldout.json").read_text())
    assert table["k"] == [1, 4] and table["n"] == 6 and table["n_prompts"] == 8
    assert [row["model"] for row in table["rows"]] == ["base", "final"]
    assert table["rows"][1]["adapter"] == str((run_dir / "adapters" / "final").resolve())
    for row in table["rows"]:
        counts = row["correct_counts"]
        assert len(counts) == 8 and all(0 <= c <= 6 for c in counts)
        for k in (1, 4):
            expected = sum(_pass_at_k(6, c, k) for c in counts) / len(counts)
            assert row["pass_at_k"][str(k)] == pytest.approx(expected)
    printed = [line.split() for line in proc.stdout.splitlines()]
    assert ["model", "pass@1", "pass@4"] in printed
    final = table["rows"][1]["pass_at_k"]
    assert ["final", f"{final['1']:.3f}", f"{final['4']:.3f}"] in printed


def test_eval_refuses_n_below_k(run_dir):
    proc = _prolora("eval", str(run_dir), "--k", "1,8", "--n", "4")
    assert proc.returncode == 2 and "--n 4 is smaller than the largest k (8)" in proc.stderr
