"""launch/tools/summarize.py on a hand-made run directory."""

from __future__ import annotations

import json

from launch.tools.summarize import summarize


def test_summary_windows_evals_resets_and_prompts(tmp_path):
    steps = [
        {
            "step": s,
            "reward_mean": s / 10,
            "entropy": 1.0,
            "kl": 0.1 * s,
            "zero_std_frac": 0.5,
            "clip_frac_low": 0.0,
            "clip_frac_high": 0.0,
            "dropped_frac": 0.0,
            "ref_reset": s == 3,
            "ref_reset_cause": "kl" if s == 3 else None,
        }
        for s in range(1, 5)
    ]
    evals = [
        {"eval": True, "step": 0, "pass@1": 0.25, "pass@8": 0.5},
        {"eval": True, "step": 4, "pass@1": 0.5, "pass@8": 0.75},
    ]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in [evals[0], *steps, evals[1]]))
    visits = [("a", 0, False), ("b", 4, False), ("a", 2, False), ("b", 8, True), ("c", 0, False)]
    (tmp_path / "prompt_history.jsonl").write_text(
        "\n".join(json.dumps({"step": 1, "prompt": p, "samples": 8, "passes": k, "retired": r}) for p, k, r in visits)
    )
    text = summarize(tmp_path, window=2)
    rows = [line for line in text.splitlines() if line.strip()[:1].isdigit() and "-" in line.split()[0]]
    assert [row.split()[0] for row in rows] == ["1-2", "3-4"]
    assert rows[0].split()[1] == "0.1500" and rows[1].split()[1] == "0.3500"  # mean reward per window
    assert "3:kl" in rows[1] and "3:kl" not in rows[0]
    assert "step     4  pass@1 0.500  pass@8 0.750" in text
    assert "3 prompts visited, 2 more than once: pass rate up on 2, down on 0" in text
    assert "1 of 1 first seen unsolved in every sample were later solved; 1 retired" in text
