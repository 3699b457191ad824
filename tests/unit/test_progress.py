"""Plain progress lines (what a Ray job's log shows): the figures and a sane ETA."""

from __future__ import annotations

import io

from launch.evaluate import EvalResult
from launch.progress import Progress, format_duration


def _record(step: int) -> dict:
    return {"step": step, "reward_mean": 0.5, "gen_tokens": 1000, "gen_s": 0.5, "sync_ms": 42.4}


def test_format_duration():
    assert [format_duration(s) for s in (0, 12.4, 185, 7620)] == ["0s", "12s", "3m05s", "2h07m"]


def test_plain_lines_show_step_reward_pass1_throughput_hotload_eta():
    out = io.StringIO()  # not a terminal
    first = EvalResult(n_prompts=16, pass_at_1=0.25, pass_at_k=0.5, k=8)
    progress = Progress(total_steps=20, first_eval=first, log_every=10, stream=out)
    for step in range(1, 21):
        progress.update(_record(step))
        if step == 10:
            progress.eval(EvalResult(n_prompts=16, pass_at_1=0.375, pass_at_k=0.625, k=8), step)
    progress.close()
    lines = out.getvalue().splitlines()
    assert lines[0] == "[eval] step 0: pass@1 0.250  pass@8 0.500"
    steps = [line for line in lines if line.startswith("[step")]
    assert [line.split("]")[0] for line in steps] == ["[step 1/20", "[step 10/20", "[step 20/20"]
    assert "reward 0.500  pass@1 0.250  tok/s 2000  hotload_ms 42" in steps[0]
    assert "pass@1 0.375" in steps[2]  # the latest held-out figure
    assert steps[2].endswith("eta 0s") and " eta " in steps[0]
    assert "[eval] step 10: pass@1 0.375  pass@8 0.625" in lines


def test_a_resumed_run_counts_from_its_checkpoint():
    out = io.StringIO()
    first = EvalResult(n_prompts=16, pass_at_1=0.5, pass_at_k=0.75, k=4)
    progress = Progress(total_steps=8, first_eval=first, log_every=10, start=5, stream=out)
    for step in (6, 7, 8):
        progress.update(_record(step))
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("[eval] step 5:")
    assert [line.split("]")[0] for line in lines[1:]] == ["[step 6/8", "[step 8/8"]


def test_failed_reward_calls_are_noted_once():
    out = io.StringIO()
    progress = Progress(
        total_steps=5, first_eval=EvalResult(n_prompts=4, pass_at_1=0.5, pass_at_k=0.75, k=4), stream=out
    )
    for step, failures in ((1, 0), (2, 3), (3, 2)):
        progress.update(_record(step) | {"reward_failures": failures})
    noted = [line for line in out.getvalue().splitlines() if "reward calls failed" in line]
    assert noted == [
        "[prolora] step 2: 3 reward calls failed (rewards.failure_policy decides what they score); each reward's "
        "first error is in <run dir>/logs/actors.log, the count per step in metrics.jsonl (reward_failures)"
    ]


def test_hacking_shows_on_the_line_and_warns_when_the_signatures_change():
    out = io.StringIO()
    first = EvalResult(n_prompts=16, pass_at_1=0.5, pass_at_k=0.75, k=4)
    progress = Progress(total_steps=4, first_eval=first, log_every=1, stream=out)
    evidence = {"hacking/length_growth": 0.5, "hacking/reward_growth": 0.1, "hacking/fired": ["length"]}
    for step, extra in [(1, {}), (2, evidence), (3, evidence), (4, {"hacking/fired": []})]:
        progress.update({**_record(step), **extra})
    lines = out.getvalue().splitlines()
    warnings = [line for line in lines if line.startswith("[hacking]")]
    assert warnings == ["[hacking] step 2: reward hacking suspected: length: length +50% vs reward +10%"]
    steps = [line for line in lines if line.startswith("[step")]
    assert ["hacking length" in line for line in steps] == [False, True, True, False]
