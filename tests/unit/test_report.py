"""`prolora report` on a synthetic metrics.jsonl: which plots it draws, reset markers, and the self-contained page.

The real-run check (report from a real short run through the CLI) is in tests/integration/test_report_eval_cli.py.
"""

from __future__ import annotations

import base64
import json
import math

import pytest

from launch.tools.report import write_plots, write_report
from shared.errors import UserError

ALL_PANELS = {"reward", "heldout", "kl", "entropy", "response_length", "throughput", "hotload"}


def _records(steps: int, resets: tuple[int, ...] | None) -> list[dict]:
    records = [{"eval": True, "step": 0, "pass@1": 0.2, "pass@8": 0.5, "n_prompts": 8}]
    for s in range(1, steps + 1):
        record = {
            "step": s,
            "reward_mean": 0.35 + 0.005 * s,
            "reward/exact_match": 0.3 + 0.005 * s,
            "reward/format": 0.9 if s % 2 else None,
            "kl": 0.001 * s,
            "entropy": 1.5 - 0.01 * s,
            "response_len_mean": 4.5,
            "gen_tokens": 640,
            "gen_s": 0.3,
            "step_s": 0.9,
            "sync_ms": 20 + math.sin(s),
        }
        if resets is not None:
            record["ref_reset"] = s in resets
        records.append(record)
        if s % 10 == 0:
            records.append({"eval": True, "step": s, "pass@1": 0.2 + 0.005 * s, "pass@8": 0.5, "n_prompts": 8})
    return records


def _run_dir(tmp_path, records):
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (tmp_path / "config.yaml").write_text("run:\n  name: arith <test>\n")
    return tmp_path


@pytest.mark.parametrize("resets", [None, (30, 60)], ids=["no ref_reset field", "two resets"])
def test_report_writes_every_panel_and_a_self_contained_page(tmp_path, resets):
    run_dir = _run_dir(tmp_path, _records(80, resets))
    (run_dir / "eval_heldout.json").write_text(
        json.dumps(
            {
                "split": "heldout",
                "n": 8,
                "n_prompts": 8,
                "k": [1, 8],
                "rows": [{"model": "base", "pass_at_k": {"1": 0.2, "8": 0.5}}],
            }
        )
    )
    page = write_report(run_dir)
    assert page == run_dir / "report" / "report.html"
    pngs = {p.stem for p in (run_dir / "report").glob("*.png")}
    assert pngs == ALL_PANELS
    text = page.read_text()
    assert text.count('src="data:image/png;base64,') == len(ALL_PANELS)
    assert 'src="http' not in text and "<link" not in text  # nothing outside the page
    embedded = text.split('src="data:image/png;base64,')[1].split('"')[0]
    assert base64.b64decode(embedded).startswith(b"\x89PNG")
    assert "arith &lt;test&gt;" in text  # the config, escaped
    assert "reference resets</td><td>" + ("2" if resets else "0") in text
    assert "eval_heldout.json" in text


def test_resets_are_drawn_on_every_plot(tmp_path, monkeypatch):
    import matplotlib.axes

    drawn = []
    original = matplotlib.axes.Axes.axvline

    def spy(self, x, **kwargs):
        drawn.append(x)
        return original(self, x, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "axvline", spy)
    written = write_plots(_records(40, (15, 31)), tmp_path)
    assert drawn == [15, 31] * len(written)


def test_panels_without_data_are_left_out(tmp_path):
    records = [{"eval": True, "step": 0, "pass@1": 0.1, "pass@8": 0.3}, {"step": 1, "reward_mean": 0.5}]
    assert {p.name for p, _ in write_plots(records, tmp_path)} == {"reward", "heldout"}


def test_not_a_run_directory(tmp_path):
    with pytest.raises(UserError, match="no metrics.jsonl"):
        write_report(tmp_path)


def test_a_lone_reward_equal_to_the_total_is_drawn_once():
    from launch.tools.report import PANELS

    steps = [{"step": s, "reward_mean": 0.1 * s, "reward/exact_match": 0.1 * s} for s in (1, 2, 3)]
    reward_panel = next(p for p in PANELS if p.name == "reward")
    assert [line.label for line in reward_panel.series(steps, [])] == ["total (= exact_match)"]


def test_hacking_section_shows_when_what_and_the_completions(tmp_path):
    from shared.metrics import write_rollouts

    records = _records(12, None)
    for r in records:
        if not r.get("eval"):
            fired = ["length"] if r["step"] >= 10 else []
            r.update({"hacking/length_growth": 0.05 * r["step"], "hacking/reward_growth": 0.01, "hacking/fired": fired})
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (tmp_path / "rollouts").mkdir()
    texts = ["1 1 1 1 1 1 1 1", "12", "padding padding padding"]
    columns = {
        "step": [10] * 3,
        "completion": texts,
        "completion_token_ids": [[1] * 8, [1, 2], [3] * 3],
        "reward": [0.9, 0.1, 0.5],
    }
    write_rollouts(tmp_path / "rollouts", 10, columns, [])
    page = write_report(tmp_path).read_text()
    assert "Reward-hacking watch" in page and '<img alt="hacking"' in page
    assert "<td>length</td><td>3</td><td>10</td><td>12</td>" in page
    assert "length +50% vs reward +1%" in page
    shown = page[page.index("best-rewarded completions at step 10") :]
    assert shown.index("1 1 1 1") < shown.index("padding") < shown.index("12</code>")  # best reward first
    assert (tmp_path / "report" / "hacking.png").is_file()


def test_no_hacking_section_without_the_watch_and_a_quiet_one_with_it(tmp_path):
    records = _records(3, None)
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert "Reward-hacking watch" not in write_report(tmp_path).read_text()
    for r in records:
        r["hacking/fired"] = []
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert "No signature fired in 3 steps" in write_report(tmp_path).read_text()
